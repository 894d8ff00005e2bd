//! `kat-agent run`: a node restarts from its state directory, and runs until asked to
//! stop or until its tree gives up.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use super::prepared::{PreparedNode, prepared};
use super::state_dir::{AgentError, io_err, read_cluster, read_identity};
use crate::tree::start_node;

/// `kat-agent run`: restarts an initialised node from its state directory.
pub fn prepare_run(state_dir: &Path, etcd_bin: &Path) -> Result<PreparedNode, AgentError> {
    let identity = read_identity(state_dir)?
        .ok_or_else(|| AgentError::NotInitialised(state_dir.display().to_string()))?;
    let cluster = read_cluster(state_dir)?;
    prepared(identity, state_dir, cluster, etcd_bin)
}

/// How a node's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop; everything stopped in order.
    Stopped,
}

/// Runs the node until `shutdown` resolves (then stops the tree in order) or the tree
/// fails (restart intensity exhausted at the top: the caller exits non-zero so the
/// host's systemd restarts the agent).
pub async fn run_until(
    node: &PreparedNode,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, AgentError> {
    std::fs::create_dir_all(node.state_dir.join("logs")).map_err(io_err(&node.state_dir))?;
    let (supervisor, join) = start_node(
        &node.identity.node_name,
        node.control_plane.as_ref(),
        Some(&node.agent),
    )
    .await
    .map_err(|e| AgentError::Failed(e.to_string()))?;
    tokio::pin!(join);
    tokio::select! {
        () = shutdown => {
            tracing::info!(node = %node.identity.node_name, "stopping");
            let _ = supervisor.stop_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(90))).await;
            let _ = join.await;
            tracing::info!(node = %node.identity.node_name, "stopped");
            Ok(Outcome::Stopped)
        }
        _ = &mut join => Err(AgentError::Failed("restart intensity exhausted; see the log above".to_owned())),
    }
}
