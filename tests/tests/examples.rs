//! The shipped examples: every one validates, and a bundle made from a directory
//! parses to the same Quadlet as the directory itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};

use kat_proto::bundle;
use kat_proto::quadlet::{self, Document};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn example_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_example_validates() {
    let dirs = example_dirs();
    assert!(
        dirs.len() >= 5,
        "expected the shipped examples, found {dirs:?}"
    );
    for dir in dirs.iter().chain([&examples().join("cluster.kat")]) {
        if let Err(e) = quadlet::load_path(dir) {
            panic!("{} does not validate:\n{e}", dir.display());
        }
    }
}

#[test]
fn examples_cover_each_kind_of_workload() {
    let mut seen = Vec::new();
    for dir in example_dirs() {
        if let Document::Quadlet(q) = quadlet::load_path(&dir).unwrap() {
            let spec = q.workload.unwrap().spec.unwrap();
            let git = matches!(
                spec.source.unwrap().kind,
                Some(kat_proto::v1alpha1::source::Kind::Git(_))
            );
            seen.push((
                spec.r#type,
                q.virtual_load_balancer.is_some(),
                q.job.is_some(),
                git,
            ));
        }
    }
    use kat_proto::v1alpha1::WorkloadType as T;
    assert!(
        seen.iter().any(|s| s.0 == T::Service as i32 && s.1),
        "a SERVICE with a VirtualLoadBalancer"
    );
    assert!(
        seen.iter().any(|s| s.0 == T::Job as i32 && s.2),
        "a JOB with job.kat"
    );
    assert!(
        seen.iter().any(|s| s.0 == T::DaemonService as i32),
        "a DAEMON_SERVICE"
    );
    assert!(seen.iter().any(|s| s.3), "a git-built workload");
}

#[test]
fn a_bundle_of_an_example_parses_like_the_directory() {
    for dir in example_dirs() {
        let Ok(Document::Quadlet(from_dir)) = quadlet::load_path(&dir) else {
            continue;
        };
        let packed = bundle::pack_dir(&dir).unwrap();
        let from_bundle =
            quadlet::parse_bundle("bundle", &packed, &bundle::Limits::default()).unwrap();
        assert_eq!(from_bundle, *from_dir, "{}", dir.display());
    }
}
