//! `NodeMonitor` (leader; SPEC §6 failure detection): every `agentTickSeconds` it
//! reads the nodes' last heartbeats and marks a Ready node NotReady once it has been
//! silent for `nodeLossTimeoutSeconds`, recording a `NodeLost` event. A heartbeat
//! makes the node Ready again (the node API does that).
//!
//! The decision is the pure [`lost_nodes`]; the actor feeds it and writes the result
//! in one fenced transaction per node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kat_proto::v1alpha1::{
    ClusterConfiguration, Event, EventSeverity, NodeState, NodeStatus, ObjectReference,
};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::election::Leadership;
use crate::store::{Compare, KeyValue, LeaseId, StateStore, Txn, TxnOp};

/// Prefix of the nodes' reported status.
pub const NODE_STATUS_PREFIX: &str = "/kat/status/nodes/";
/// Prefix of recorded events.
pub const EVENTS_PREFIX: &str = "/kat/events/";

fn seconds(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()).unwrap_or(i64::MAX)
}

/// Events live about an hour (SPEC §5): they are written under a shared lease of
/// 70 minutes that is replaced by a fresh one every 10 minutes, so each event lasts
/// 60 to 70 minutes and the leader holds at most a handful of leases.
#[derive(Clone, Default)]
pub struct EventLease(std::sync::Arc<std::sync::Mutex<Option<(LeaseId, tokio::time::Instant)>>>);

impl EventLease {
    const TTL: Duration = Duration::from_secs(70 * 60);
    const FRESH_FOR: Duration = Duration::from_secs(10 * 60);

    /// The lease to write events under; `None` if none can be granted (the event is
    /// then written without one rather than lost).
    pub async fn get(&self, store: &dyn StateStore) -> Option<LeaseId> {
        if let Ok(cached) = self.0.lock()
            && let Some((id, at)) = *cached
            && at.elapsed() < Self::FRESH_FOR
        {
            return Some(id);
        }
        match store.grant_lease(Self::TTL).await {
            Ok(lease) => {
                if let Ok(mut cached) = self.0.lock() {
                    *cached = Some((lease.id, tokio::time::Instant::now()));
                }
                Some(lease.id)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot grant the events lease; events kept without expiry");
                None
            }
        }
    }
}

/// An event about node `name` and the key it is stored under. Ids sort by time.
pub fn node_event(
    name: &str,
    reason: &str,
    severity: EventSeverity,
    message: String,
    now: SystemTime,
) -> (String, Event) {
    let involved = ObjectReference {
        kind: "Node".to_owned(),
        name: name.to_owned(),
        ..Default::default()
    };
    object_event(involved, name, reason, severity, message, now)
}

/// An event about `involved` (on `node`, if any) and the key it is stored under. Ids
/// sort by time.
pub fn object_event(
    involved: ObjectReference,
    node: &str,
    reason: &str,
    severity: EventSeverity,
    message: String,
    now: SystemTime,
) -> (String, Event) {
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let who = if involved.namespace.is_empty() {
        involved.name.clone()
    } else {
        format!("{}.{}", involved.namespace, involved.name)
    };
    let id = format!("{nanos:020}-{who}-{}", reason.to_ascii_lowercase());
    let event = Event {
        id: id.clone(),
        time: Some(kat_proto::timestamp(now)),
        severity: severity.into(),
        reason: reason.to_owned(),
        message,
        involved_object: Some(involved),
        node: node.to_owned(),
    };
    (format!("{EVENTS_PREFIX}{id}"), event)
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
    pub cluster: ClusterConfiguration,
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
    events: EventLease,
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
        let store = self.args.leadership.store.clone();
        let (kvs, _) = store.list(NODE_STATUS_PREFIX).await?;
        let mut statuses = Vec::new();
        let mut by_name: Vec<(String, KeyValue)> = Vec::new();
        for kv in kvs {
            let Some(name) = kv.key.strip_prefix(NODE_STATUS_PREFIX).map(str::to_owned) else {
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
            let lease = self.events.get(store.as_ref()).await;
            let (event_key, event) = node_event(
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
            let txn = Txn::new()
                .when([
                    self.args.leadership.key.fence(),
                    Compare::unchanged(kv.key.clone(), kv.mod_revision),
                ])
                .and_then([
                    TxnOp::put(kv.key.clone(), status.encode_to_vec()),
                    TxnOp::put_leased(event_key, event.encode_to_vec(), lease),
                ]);
            if store.txn(txn).await?.succeeded {
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
        let spec = args.cluster.spec.clone().unwrap_or_default();
        let tick = Duration::from_secs(u64::from(spec.agent_tick_seconds.max(1)));
        myself.send_interval(tick, || NodeMonitorMsg::Tick);
        Ok(NodeMonitorState {
            timeout: Duration::from_secs(u64::from(spec.node_loss_timeout_seconds)),
            args,
            marked: 0,
            events: EventLease::default(),
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

    #[tokio::test(start_paused = true)]
    async fn events_expire_after_about_an_hour_and_share_a_lease() {
        #![allow(clippy::unwrap_used)]
        use crate::store::MemoryStore;
        let store = MemoryStore::new();
        let events = EventLease::default();
        let first = events.get(&store).await.unwrap();
        assert_eq!(events.get(&store).await, Some(first), "shared while fresh");
        let txn = Txn::new().and_then([TxnOp::put_leased(
            "/kat/events/e1",
            b"x".to_vec(),
            Some(first),
        )]);
        store.txn(txn).await.unwrap();
        tokio::time::sleep(Duration::from_secs(11 * 60)).await;
        let second = events.get(&store).await.unwrap();
        assert_ne!(second, first, "a fresh lease after 10 minutes");
        tokio::time::sleep(Duration::from_secs(50 * 60)).await;
        assert!(
            store.get("/kat/events/e1").await.unwrap().is_some(),
            "61 minutes: still there"
        );
        tokio::time::sleep(Duration::from_secs(10 * 60)).await;
        assert!(
            store.get("/kat/events/e1").await.unwrap().is_none(),
            "71 minutes: gone"
        );
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
