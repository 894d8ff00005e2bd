//! KAT's supervision tree (SPEC §3): `NodeSupervisor` with the control-plane subtree
//! (Store, Election, and the leader's Pki, Scheduler, Ipam, NodeMonitor, Api, Backup)
//! and the agent subtree (Heartbeat, Runtime, WireGuard, Dns, NodeCerts).
//!
//! So far: [`store`], the state layer every actor uses, and [`supervision`], the one
//! supervisor every subtree is built from. The actors arrive next.

pub mod agent;
pub mod agent_api;
pub mod api;
pub mod client;
pub mod election;
pub mod files;
pub mod gpus;
pub mod heartbeat;
pub mod leader;
pub mod metrics;
pub mod node;
pub mod node_certs;
pub mod pki;
pub mod runtime;
pub mod runtime_spec;
pub mod store;
pub mod supervision;
