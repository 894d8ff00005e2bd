//! KAT's test harness: helpers shared by the integration and end-to-end tests under
//! `tests/tests/` — crafted bundles, real programs (etcd) started on random loopback
//! ports and stopped by PID, and the `StateStore` contract suite, and the simulated cluster
//! ([`sim`]: N nodes' supervision trees in one process, with fault injection).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a panic is a failed test

mod bundle;
pub mod cluster;
pub mod programs;
pub mod sim;
pub mod store_contract;
pub mod systemd;

pub use bundle::{CraftedTar, MINIMAL_WORKLOAD};
