//! Crafted bundles for the bundle attack tests.

use std::io::Write;

/// Builds a gzip'd tar from raw entries, including the malformed ones a hostile client
/// could send (absolute paths, `..`, links, devices), which `tar::Builder` refuses to
/// write through its safe API.
#[derive(Debug, Default)]
pub struct CraftedTar {
    tar: Vec<u8>,
}

impl CraftedTar {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one entry with the given raw name, type and contents.
    pub fn entry(mut self, name: &str, kind: tar::EntryType, data: &[u8]) -> Self {
        self.entry_with_link(name, kind, data, None);
        self
    }

    /// Appends a link entry pointing at `target`.
    pub fn link(mut self, name: &str, kind: tar::EntryType, target: &str) -> Self {
        self.entry_with_link(name, kind, &[], Some(target));
        self
    }

    fn entry_with_link(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        target: Option<&str>,
    ) {
        let mut header = tar::Header::new_old();
        {
            let bytes = header.as_old_mut();
            let n = name.len().min(99);
            bytes.name[..n].copy_from_slice(&name.as_bytes()[..n]);
            if let Some(target) = target {
                let t = target.len().min(99);
                bytes.linkname[..t].copy_from_slice(&target.as_bytes()[..t]);
            }
        }
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_entry_type(kind);
        header.set_mtime(0);
        header.set_cksum();
        self.tar.extend_from_slice(header.as_bytes());
        self.tar.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.tar.extend(std::iter::repeat_n(0u8, pad));
    }

    /// The finished tar (with its two zero end blocks), gzip'd.
    pub fn gzip(mut self) -> Vec<u8> {
        self.tar.extend(std::iter::repeat_n(0u8, 1024));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing into a Vec cannot fail.
        let _ = gz.write_all(&self.tar);
        gz.finish().unwrap_or_default()
    }
}

/// A minimal valid `workload.kat` for bundle tests.
pub const MINIMAL_WORKLOAD: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: web
spec:
  source:
    image: localhost/busybox:latest
";
