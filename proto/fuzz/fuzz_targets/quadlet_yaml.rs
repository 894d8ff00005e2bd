//! Any bytes as any `.kat` file: parsing must return values or errors, never panic,
//! hang or blow up memory (YAML aliases included).
#![no_main]

use kat_proto::quadlet::{self, SourceFile, WORKLOAD_FILE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = quadlet::parse_cluster_config("cluster.kat", data);
    let _ = quadlet::parse_namespace("namespace.kat", data);
    // The same bytes as a workload alone, and as every file of a directory at once.
    let file = |name: &str| SourceFile {
        name: name.to_owned(),
        display: name.to_owned(),
        data: data.to_vec(),
    };
    let _ = quadlet::parse_quadlet("fuzz", &[file(WORKLOAD_FILE)]);
    let all: Vec<SourceFile> = quadlet::QUADLET_FILES.iter().map(|n| file(n)).collect();
    if let Ok(q) = quadlet::parse_quadlet("fuzz", &all) {
        // Whatever parses must serialise.
        let _ = quadlet::to_yaml(&q);
    }
});
