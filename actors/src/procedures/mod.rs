//! The `kat-agent` procedures (SPEC §6, §11): [`init`] (a new cluster), [`join`] (a
//! node joins one), [`run`] (a node restarts from its state directory), [`etcd_env`]
//! and [`runtime`] (choosing what runs a node's instances), [`restore`] (a lost
//! control plane back from a backup). The CLI parses flags and calls these; init,
//! join and run end in a [`PreparedNode`] that [`run::run_until`] starts.
//!
//! Everything a node keeps lives under its state directory, so several nodes can run on
//! one machine:
//!
//! ```text
//! DIR/agent.json     node name, advertise address, role (written once by init)
//! DIR/cluster.kat    the cluster configuration init was given (never overwritten)
//! DIR/etcd/          the etcd member's data (control-plane nodes)
//! DIR/logs/etcd.log  etcd's own log
//! DIR/pki/           ca.crt, node.crt, node.key (0600): this node's identity
//! DIR/join-token     the first join token with the CA hash (0600), written by init's leader
//! DIR/katcall.yaml   katcall's server URL, cluster CA and admin API token (0600), init only
//! DIR/runtime/       the Runtime actor's cache of the desired instances
//! ```
//!
//! `kat-agent restore` writes what init does (from a backup: `DIR/etcd` from the
//! snapshot, the CAs from the backup's `pki/`), then `kat-agent run` starts the node.
//!
//! `kat-agent join` writes `agent.json` (role worker, the leader's API address),
//! `cluster.kat` (as the leader sent it) and `pki/`.

pub mod etcd_env;
pub mod init;
pub mod join;
mod prepared;
pub mod restore;
pub mod run;
pub mod runtime;
mod state_dir;

pub use etcd_env::etcd_env;
pub use init::{InitOptions, prepare_init};
pub use join::{JoinOptions, join};
pub use prepared::PreparedNode;
pub use restore::{RestoreOptions, Restored, restore};
pub use run::{Outcome, prepare_run, run_until};
pub use runtime::{RuntimeChoice, RuntimeMode, UserManagerChoice, attach_runtime};
pub use state_dir::{AgentError, AgentIdentity};
