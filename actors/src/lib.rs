//! KAT's supervision tree (SPEC §3): `NodeSupervisor` with the control-plane subtree
//! (Store, Election, and the leader's Pki, Scheduler, Ipam, NodeMonitor, Api, Backup)
//! and the agent subtree (Heartbeat, Runtime, WireGuard, Dns, NodeCerts).
//!
//! Empty for now: the actors arrive with the supervision issue. The crate exists so the
//! dependency direction `cli → actors → {runtime, net, proto}` is fixed from the start.
