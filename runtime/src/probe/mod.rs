//! What this host has, as a node reports it (SPEC §7): CPU (millicores), memory and
//! GPUs ([`gpus`]). Read at join and measured again with heartbeats.

pub mod gpus;

use kat_proto::v1alpha1::NodeResources;

/// This host's CPU (millicores), memory and GPUs.
pub fn host_capacity() -> NodeResources {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .unwrap_or_default();
    NodeResources {
        cpu_millis: i64::try_from(cpus).unwrap_or(1) * 1000,
        memory_bytes: memory * 1024,
        gpus: gpus::discover(),
    }
}
