//! KAT's supervision tree (SPEC §3) and everything it runs. The modules read top-down;
//! each depends only on those below it (a test, `tests/module_layers.rs`, holds this):
//!
//! | layer | modules | what they own |
//! |---|---|---|
//! | procedures | [`procedures`] | `kat-agent init / join / run / etcd-env`: a state directory becomes a running node |
//! | tree | [`tree`] | `node@N`, the node's root supervisor |
//! | subtrees | [`control_plane`] | `control-plane@N`: the etcd member, the election, the API server |
//! | | [`api`] | the API's adapters: gRPC and REST over the leader's behaviours, the in-process link |
//! | | [`leader`] | `leader@N`: bootstrap, node monitor, scheduler, backups; join, heartbeat intake, sync |
//! | | [`agent`] | `agent@N`: heartbeat, the leader link, runtime, certificates, the agent API |
//! | state | [`state`] | every etcd key, events, typed reads and fenced writes, [`state::StateError`] |
//! | store and services | [`store`], [`supervision`], [`client`], [`listener`] | the `StateStore` trait over etcd and memory, leader election, the etcd process; the supervisor; TLS clients and listeners |
//! | pki | [`pki`] | the CAs, certificates and their files, tokens |
//! | foundations | [`metrics`], [`files`] | metrics, atomic files |
//!
//! Within the subtrees the order is control_plane → api → leader → agent (the leader's
//! relay respects the agent API's limits).

pub mod agent;
pub mod api;
pub mod client;
pub mod control_plane;
pub mod files;
pub mod leader;
pub mod listener;
pub mod metrics;
pub mod pki;
pub mod procedures;
pub mod state;
pub mod store;
pub mod supervision;
pub mod tree;
