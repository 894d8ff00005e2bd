//! The node's supervision tree (SPEC §3): `node@N`, one_for_one over the control-plane
//! subtree (`crate::control_plane`, control-plane members only, started first) and the
//! agent subtree (`crate::agent`, every node).
//!
//! | supervisor | strategy | intensity | children |
//! |---|---|---|---|
//! | `node@N` | one_for_one | 3 in 5 min, backoff 1 s → 30 s; then the agent exits non-zero | `control-plane@N`, `agent@N` |
//! | `control-plane@N` | rest_for_one | 5 in 60 s; backoff 100 ms → 5 s | `store@N`, `election@N`, `api-server@N`, then `leader@N` while leading |
//! | `leader@N` | one_for_one | 5 in 60 s; backoff 200 ms → 10 s | `bootstrap@N`, `node-monitor@N`, `scheduler@N`, `api@N`, `backups@N` |
//! | `agent@N` | one_for_one | 10 in 60 s; backoff 100 ms → 5 s | `heartbeat@N`, `node-certs@N`, `runtime@N`, `agent-api@N` |
//!
//! Names carry the node so several nodes can share one process (simulation).

use std::time::Duration;

use ractor::{Actor, ActorRef, SpawnErr};
use tokio::task::JoinHandle;

use crate::agent::AgentOptions;
use crate::control_plane::ControlPlaneOptions;
use crate::supervision::{Backoff, Intensity, Strategy, Supervisor, SupervisorArgs, SupervisorMsg};

/// Name of node `node`'s NodeSupervisor.
pub fn node_supervisor_name(node: &str) -> String {
    format!("node@{node}")
}

/// Starts a control-plane node's tree; the handle ends when the tree has stopped.
pub async fn start_control_plane_node(
    opts: &ControlPlaneOptions,
) -> Result<(ActorRef<SupervisorMsg>, JoinHandle<()>), SpawnErr> {
    start_node(&opts.node, Some(opts), None).await
}

/// Starts node `node`'s tree: the control-plane subtree on control-plane members, then
/// the agent subtree. The handle ends when the tree has stopped.
pub async fn start_node(
    node: &str,
    control_plane: Option<&ControlPlaneOptions>,
    agent: Option<&AgentOptions>,
) -> Result<(ActorRef<SupervisorMsg>, JoinHandle<()>), SpawnErr> {
    let mut children = Vec::new();
    if let Some(cp) = control_plane {
        children.push(crate::control_plane::spec(cp));
    }
    if let Some(agent) = agent {
        children.push(crate::agent::spec(agent));
    }
    let args = SupervisorArgs {
        strategy: Strategy::OneForOne,
        intensity: Intensity {
            max_restarts: 3,
            window: Duration::from_secs(300),
        },
        backoff: Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        },
        children,
    };
    Actor::spawn(Some(node_supervisor_name(node)), Supervisor, args).await
}
