//! Any bytes as a bundle: unpacking must refuse or return bounded files, never panic,
//! and whatever it returns must go through the Quadlet parser without panicking.
#![no_main]

use kat_proto::bundle::{self, Limits};
use kat_proto::quadlet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(files) = bundle::unpack(data, &limits) {
        let total: usize = files.iter().map(|f| f.data.len()).sum();
        assert!(total as u64 <= limits.max_uncompressed_bytes);
        let _ = quadlet::parse_bundle_files("fuzz", files);
    }
});
