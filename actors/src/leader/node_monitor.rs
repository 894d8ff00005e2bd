//! `NodeMonitor` (leader; SPEC §6 failure detection): every `agentTickSeconds` it
//! reads the nodes' last heartbeats and marks a Ready node NotReady once it has been
//! silent for `nodeLossTimeoutSeconds`, recording a `NodeLost` event. A heartbeat
//! makes the node Ready again (the node API does that).
//!
//! The decision is the pure [`lost_nodes`]; the actor feeds it and writes the result
//! in one fenced transaction per node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::{EventSeverity, NodeState, NodeStatus};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::state::events::node_event;
use crate::state::{Leadership, keys};
use crate::store::{Compare, KeyValue, TxnOp};

fn seconds(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()).unwrap_or(i64::MAX)
}

/// The Ready nodes whose last heartbeat is `timeout` or more before `now`.
pub fn lost_nodes(
    statuses: &[(String, NodeStatus)],
    now: SystemTime,
    timeout: Duration,
) -> Vec<&str> {
    let limit = seconds(now) - i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
    statuses
        .iter()
        .filter(|(_, s)| s.state() == NodeState::Ready)
        .filter(|(_, s)| s.last_heartbeat.as_ref().is_none_or(|t| t.seconds <= limit))
        .map(|(name, _)| name.as_str())
        .collect()
}

#[derive(Clone)]
pub struct NodeMonitorArgs {
    pub leadership: Leadership,
    pub settings: ClusterSettings,
    /// The wall clock (heartbeats carry wall-clock times); tests pass their own.
    pub now: fn() -> SystemTime,
}

pub enum NodeMonitorMsg {
    Tick,
}

pub struct NodeMonitorState {
    args: NodeMonitorArgs,
    timeout: Duration,
    /// Nodes marked NotReady since this leader started (for tests and metrics).
    marked: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct NodeMonitor;

impl NodeMonitor {
    pub fn name(node: &str) -> String {
        format!("node-monitor@{node}")
    }
}

impl NodeMonitorState {
    async fn check(&mut self) -> Result<(), ActorProcessingErr> {
        let leadership = &self.args.leadership;
        let (kvs, _) = leadership.store().list(keys::NODE_STATUS_PREFIX).await?;
        let mut statuses = Vec::new();
        let mut by_name: Vec<(String, KeyValue)> = Vec::new();
        for kv in kvs {
            let Some(name) = kv
                .key
                .strip_prefix(keys::NODE_STATUS_PREFIX)
                .map(str::to_owned)
            else {
                continue;
            };
            let Ok(status) = NodeStatus::decode(kv.value.as_slice()) else {
                continue;
            };
            statuses.push((name.clone(), status));
            by_name.push((name, kv));
        }
        let now = (self.args.now)();
        for name in lost_nodes(&statuses, now, self.timeout) {
            let Some((_, kv)) = by_name.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let Some((_, status)) = statuses.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let mut status = status.clone();
            status.set_state(NodeState::NotReady);
            let event = node_event(
                name,
                "NodeLost",
                EventSeverity::Warning,
                format!(
                    "no heartbeat from {name} for {} s; marked NotReady",
                    self.timeout.as_secs()
                ),
                now,
            );
            // A heartbeat that lands meanwhile wins: the compare on the status fails.
            let ops = [
                TxnOp::put(kv.key.clone(), status.encode_to_vec()),
                leadership.event_op(event).await,
            ];
            if leadership
                .commit([Compare::unchanged(kv.key.clone(), kv.mod_revision)], ops)
                .await?
            {
                self.marked += 1;
                tracing::warn!(node = %name, timeout = ?self.timeout, "node lost: marked NotReady");
            }
        }
        Ok(())
    }
}

/// Makes every started etcd learner (a control-plane member that joined) a voting
/// member; etcd refuses until the learner has caught up, so this is retried each tick.
async fn promote_learners(store: &dyn crate::store::StateStore) {
    let Ok(members) = store.members().await else {
        return;
    };
    for m in members.iter().filter(|m| m.learner && !m.name.is_empty()) {
        match store.promote(m.id).await {
            Ok(()) => tracing::info!(member = %m.name, "etcd learner promoted to voting member"),
            Err(e) => {
                tracing::debug!(member = %m.name, error = %e, "etcd learner not promoted yet")
            }
        }
    }
}

impl Actor for NodeMonitor {
    type Msg = NodeMonitorMsg;
    type State = NodeMonitorState;
    type Arguments = NodeMonitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMonitorMsg>,
        args: NodeMonitorArgs,
    ) -> Result<NodeMonitorState, ActorProcessingErr> {
        let tick = args.settings.agent_tick;
        myself.send_interval(tick, || NodeMonitorMsg::Tick);
        Ok(NodeMonitorState {
            timeout: args.settings.node_loss_timeout,
            args,
            marked: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeMonitorMsg>,
        msg: NodeMonitorMsg,
        state: &mut NodeMonitorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMonitorMsg::Tick => {
                // A failed round is logged and retried at the next tick, not fatal.
                if let Err(e) = state.check().await {
                    tracing::warn!(error = %e, "node check failed; retrying next tick");
                }
                promote_learners(state.args.leadership.store.as_ref()).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: NodeState, last: Option<i64>) -> NodeStatus {
        let mut s = NodeStatus {
            last_heartbeat: last.map(|seconds| pbjson_types::Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        };
        s.set_state(state);
        s
    }

    #[test]
    fn only_ready_nodes_silent_for_the_timeout_are_lost() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let nodes = vec![
            ("fresh".to_owned(), status(NodeState::Ready, Some(990))),
            ("edge".to_owned(), status(NodeState::Ready, Some(940))),
            ("stale".to_owned(), status(NodeState::Ready, Some(900))),
            ("never".to_owned(), status(NodeState::Ready, None)),
            ("already".to_owned(), status(NodeState::NotReady, Some(100))),
        ];
        assert_eq!(
            lost_nodes(&nodes, now, Duration::from_secs(60)),
            ["edge", "stale", "never"]
        );
        assert_eq!(
            lost_nodes(&nodes, now, Duration::from_secs(61)),
            ["stale", "never"]
        );
    }
}
