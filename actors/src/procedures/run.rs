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
    raise_open_file_limit();
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
        _ = &mut join => Err(AgentError::Failed(format!(
            "restart intensity exhausted: {}",
            crate::supervision::last_escalation().unwrap_or_else(|| "see the log above".to_owned())
        ))),
    }
}

/// Raises this process's open-file limit to its hard limit: every connection the API
/// holds is a descriptor, and the default soft limit (often 1024) is below what the
/// servers' connection limits allow (`crate::listener::ConnectionLimits`). Returns the
/// soft limit in force afterwards.
pub fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "open-file limit raised");
                return Some(hard);
            }
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit};
        let now = super::raise_open_file_limit().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        assert_eq!(now, hard);
    }
}
