//! Bundle attack cases (SPEC §4.8): every rejection, each with a clear message, and
//! gzip bombs stopped early with bounded work.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::time::Instant;

use flate2::Compression;
use flate2::write::GzEncoder;
use kat_proto::bundle::{self, BundleError, BundleFile, Limits};
use kat_tests::{CraftedTar, MINIMAL_WORKLOAD};
use tar::EntryType;

fn unpack(data: &[u8]) -> Result<Vec<BundleFile>, BundleError> {
    bundle::unpack(data, &Limits::default())
}

fn rejected(data: &[u8]) -> String {
    match unpack(data) {
        Ok(files) => panic!(
            "bundle was accepted: {:?}",
            files.iter().map(|f| &f.name).collect::<Vec<_>>()
        ),
        Err(e) => e.to_string(),
    }
}

fn workload() -> &'static [u8] {
    MINIMAL_WORKLOAD.as_bytes()
}

#[test]
fn a_plain_bundle_is_accepted_at_the_root_or_under_one_folder() {
    for prefix in ["", "./", "web/", "./web/"] {
        let data = CraftedTar::new()
            .entry(
                &format!("{prefix}workload.kat"),
                EntryType::Regular,
                workload(),
            )
            .entry(&format!("{prefix}README.md"), EntryType::Regular, b"notes")
            .gzip();
        let files = unpack(&data).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert_eq!(
            files,
            [BundleFile {
                name: "workload.kat".into(),
                data: workload().to_vec()
            }],
            "{prefix}"
        );
    }
}

#[test]
fn rejects_bundle_with_parent_dir() {
    let data = CraftedTar::new()
        .entry("workload.kat", EntryType::Regular, workload())
        .entry("../../etc/passwd", EntryType::Regular, b"root:x:0:0")
        .gzip();
    assert_eq!(
        rejected(&data),
        "\"../../etc/passwd\": '..' is not allowed in a bundle path"
    );
    let hidden = CraftedTar::new()
        .entry("web/../../workload.kat", EntryType::Regular, workload())
        .gzip();
    assert!(rejected(&hidden).contains("'..' is not allowed"));
}

#[test]
fn rejects_bundle_with_absolute_path() {
    let data = CraftedTar::new()
        .entry("/etc/cron.d/evil", EntryType::Regular, b"* * * * * root sh")
        .gzip();
    assert_eq!(
        rejected(&data),
        "\"/etc/cron.d/evil\": absolute paths are not allowed in a bundle"
    );
}

#[test]
fn rejects_links_and_special_files() {
    for (kind, name, word) in [
        (EntryType::Symlink, "workload.kat", "symbolic link"),
        (EntryType::Link, "workload.kat", "hard link"),
        (EntryType::Char, "null", "device"),
        (EntryType::Block, "sda", "device"),
        (EntryType::Fifo, "pipe", "FIFO"),
    ] {
        let data = CraftedTar::new().link(name, kind, "/etc/passwd").gzip();
        let msg = rejected(&data);
        assert_eq!(
            msg,
            format!(
                "\"{name}\": {word} entries are not allowed in a bundle (only regular files and directories)"
            ),
        );
    }
}

#[test]
fn rejects_duplicate_entries() {
    let data = CraftedTar::new()
        .entry("workload.kat", EntryType::Regular, workload())
        .entry("./workload.kat", EntryType::Regular, b"kind: Other")
        .gzip();
    assert_eq!(
        rejected(&data),
        "\"./workload.kat\" appears twice in the bundle"
    );
}

#[test]
fn rejects_unknown_and_misplaced_kat_files() {
    let unknown = CraftedTar::new()
        .entry("workload.kat", EntryType::Regular, workload())
        .entry("secrets.kat", EntryType::Regular, b"x")
        .gzip();
    assert!(rejected(&unknown).starts_with("\"secrets.kat\": unknown Quadlet file"));
    let nested = CraftedTar::new()
        .entry("a/b/workload.kat", EntryType::Regular, workload())
        .gzip();
    assert!(rejected(&nested).contains("must sit at the bundle's root or in one top folder"));
    let mixed = CraftedTar::new()
        .entry("web/workload.kat", EntryType::Regular, workload())
        .entry("job.kat", EntryType::Regular, b"x")
        .gzip();
    assert!(rejected(&mixed).contains("all Quadlet files must sit in the same folder"));
}

#[test]
fn rejects_bundle_without_workload() {
    let data = CraftedTar::new()
        .entry("job.kat", EntryType::Regular, b"x")
        .gzip();
    assert_eq!(rejected(&data), "bundle has no workload.kat");
}

#[test]
fn rejects_what_is_not_a_gzipped_tar() {
    assert!(rejected(b"PK\x03\x04 not a tarball").starts_with("bundle is not a valid gzip'd tar"));
    let mut truncated = CraftedTar::new()
        .entry("workload.kat", EntryType::Regular, workload())
        .gzip();
    truncated.truncate(truncated.len() / 2);
    assert!(rejected(&truncated).starts_with("bundle is not a valid gzip'd tar"));
}

#[test]
fn rejects_bundle_over_the_compressed_limit() {
    // Incompressible bytes: a simple xorshift stream.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..1_200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    let data = CraftedTar::new()
        .entry("noise.bin", EntryType::Regular, &noise)
        .gzip();
    assert!(data.len() > 1024 * 1024);
    assert!(rejected(&data).contains("at most 1048576 bytes (compressed) are accepted"));
}

#[test]
fn rejects_bundle_whose_contents_exceed_the_uncompressed_limit() {
    // Each entry fits, together they do not: caught by counting the decompressed stream.
    let chunk = vec![b'a'; 3 * 1024 * 1024];
    let data = CraftedTar::new()
        .entry("workload.kat", EntryType::Regular, workload())
        .entry("a.bin", EntryType::Regular, &chunk)
        .entry("b.bin", EntryType::Regular, &chunk)
        .entry("c.bin", EntryType::Regular, &chunk)
        .gzip();
    assert!(data.len() < 1024 * 1024);
    assert_eq!(
        rejected(&data),
        "bundle expands to more than 8388608 bytes; at most 8388608 bytes (uncompressed) are accepted"
    );
}

/// 1 GiB of zeros, gzip'd at the best ratio (about 1 MB), preceded by `prefix`.
fn gzip_bomb(prefix: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(prefix).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(1024 - prefix.len().div_ceil(1 << 20)) {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap()
}

#[test]
fn gzip_bombs_are_stopped_early() {
    // A tar header announcing a 1 GiB workload.kat followed by 1 GiB of zeros, and a
    // bare gzip of 1 GiB of zeros (an empty tar followed by zeros).
    let mut header = tar::Header::new_ustar();
    header.set_path("workload.kat").unwrap();
    header.set_size(1 << 30);
    header.set_entry_type(EntryType::Regular);
    header.set_cksum();
    for (what, bomb) in [
        ("tar bomb", gzip_bomb(header.as_bytes())),
        ("zeros", gzip_bomb(&[])),
    ] {
        assert!(
            bomb.len() < 1024 * 1024,
            "{what}: the bomb must pass the compressed limit to test the other"
        );
        let started = Instant::now();
        let msg = rejected(&bomb);
        eprintln!(
            "{what}: {} compressed bytes rejected in {:?}",
            bomb.len(),
            started.elapsed()
        );
        assert!(
            msg.starts_with("bundle expands to more than 8388608 bytes"),
            "{what}: {msg}"
        );
    }
}

#[test]
fn pack_then_unpack_gives_the_same_files() {
    let files = vec![
        BundleFile {
            name: "VirtualLoadBalancer.kat".into(),
            data: b"a".to_vec(),
        },
        BundleFile {
            name: "workload.kat".into(),
            data: workload().to_vec(),
        },
    ];
    let packed = bundle::pack(&files, &Limits::default()).unwrap();
    assert_eq!(unpack(&packed).unwrap(), files);
    assert_eq!(
        bundle::pack(&files, &Limits::default()).unwrap(),
        packed,
        "packing is deterministic"
    );
}
