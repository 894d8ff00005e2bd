//! `NodeMonitor` (leader; SPEC §6 failure detection): every `agentTickSeconds` it
//! asks the leader's memory ([`crate::state::Liveness`], monotonic clock) how long each
//! node has been silent, and marks a Ready node NotReady once that reaches
//! `nodeLossTimeoutSeconds`, recording a `NodeLost` event. A heartbeat makes the node
//! Ready again (the node API does that).
//!
//! **Disruption guard** (issue 15): when more than half of the nodes, and more than
//! one, are silent at the same time (for half the timeout or more), the cause is far more likely on this side (the
//! leader's network, a stalled store, a resumed VM) than in the nodes. They are still
//! marked NotReady, but with the [`DISRUPTED`] condition, which tells the scheduler to
//! keep their instances where they are rather than replace them; one
//! `ClusterDisrupted` event says why. Once no more than half are silent, nodes still
//! silent lose the condition (one `DisruptionOver` event) and are replaced as usual.
//!
//! The decision is the pure [`assess`]; the actor feeds it and writes the result in one
//! fenced transaction per node.

use std::time::{Duration, SystemTime};

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::{EventSeverity, NodeCondition, NodeState, NodeStatus};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::state::events::{EventRecord, node_event};
use crate::state::{Leadership, keys};
use crate::store::{Compare, KeyValue, TxnOp};

/// The condition of a node marked NotReady during a disruption: its instances stay.
pub const DISRUPTED: &str = "Disrupted";

/// Whether a status carries the [`DISRUPTED`] condition.
pub fn disrupted(status: &NodeStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.r#type == DISRUPTED && c.status)
}

/// What one round decides.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Ready nodes to mark NotReady, and whether as [`DISRUPTED`].
    pub lost: Vec<String>,
    /// More than half (and more than one) of the nodes are silent.
    pub disruption: bool,
    /// NotReady nodes whose [`DISRUPTED`] condition goes (the disruption is over).
    pub released: Vec<String>,
    /// The nodes counted towards a disruption (silent Ready nodes and held ones), of
    /// `counted` (Ready and held).
    pub suspect: usize,
    pub counted: usize,
}

/// Decides a round: `statuses` are every node's stored status; `silent_for` how long
/// a node has been silent; see the module docs.
///
/// The disruption counts the nodes that were up or are held: Ready nodes silent for
/// half the timeout or more (nodes cut off together heartbeat at different moments of
/// a tick, so they cross the timeout in different rounds, and the first must not be
/// replaced before the others are seen), and nodes already held as [`DISRUPTED`]
/// whatever the leader's memory says (a new leader has heard nobody yet; a heartbeat
/// would have made them Ready). Nodes lost earlier, and not held, count for nothing:
/// a node dead for days does not make the next loss a disruption.
pub fn assess(
    statuses: &[(String, NodeStatus)],
    silent_for: impl Fn(&str) -> Duration,
    timeout: Duration,
) -> Assessment {
    let ready = |s: &NodeStatus| s.state() == NodeState::Ready;
    let held = |s: &NodeStatus| !ready(s) && disrupted(s);
    let counted = statuses.iter().filter(|(_, s)| ready(s) || held(s)).count();
    let suspect = statuses
        .iter()
        .filter(|(name, s)| held(s) || (ready(s) && silent_for(name) >= timeout / 2))
        .count();
    let disruption = suspect > 1 && suspect * 2 > counted;
    Assessment {
        lost: statuses
            .iter()
            .filter(|(name, s)| ready(s) && silent_for(name) >= timeout)
            .map(|(name, _)| name.clone())
            .collect(),
        disruption,
        suspect,
        counted,
        released: if disruption {
            Vec::new()
        } else {
            statuses
                .iter()
                .filter(|(_, s)| held(s))
                .map(|(name, _)| name.clone())
                .collect()
        },
    }
}

#[derive(Clone)]
pub struct NodeMonitorArgs {
    pub leadership: Leadership,
    pub settings: ClusterSettings,
    /// The wall clock, for event times only; tests pass their own.
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
    /// Whether a disruption was announced and is not over (one event each).
    in_disruption: bool,
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
        let live = &leadership.liveness;
        let round = assess(&statuses, |n| live.silent_for(n), self.timeout);
        let mut first_event = None;
        // Said once, with the first nodes it holds.
        if round.disruption && !self.in_disruption && !round.lost.is_empty() {
            let (silent, counted) = (round.suspect, round.counted);
            // The leader reports it, a moment after the round's NodeLost events.
            first_event = Some(node_event(
                &leadership.node,
                "ClusterDisrupted",
                EventSeverity::Warning,
                format!(
                    "{silent} of {counted} nodes went silent together; more likely this side \
                     (network, store, clock) than the nodes: they are marked NotReady but their \
                     instances stay until they return or no more than half are silent"
                ),
                now + Duration::from_nanos(1),
            ));
            tracing::warn!(
                silent,
                nodes = counted,
                "disruption: instances of silent nodes are kept"
            );
        }
        if !round.disruption && self.in_disruption {
            tracing::info!("disruption over");
            self.in_disruption = false;
        }
        for name in &round.lost {
            let message = if round.disruption {
                format!(
                    "no heartbeat from {name} for {} s during a disruption; marked NotReady, \
                     its instances kept",
                    self.timeout.as_secs()
                )
            } else {
                format!(
                    "no heartbeat from {name} for {} s; marked NotReady",
                    self.timeout.as_secs()
                )
            };
            let event = node_event(name, "NodeLost", EventSeverity::Warning, message, now);
            let change = |status: &mut NodeStatus| {
                status.set_state(NodeState::NotReady);
                if round.disruption {
                    status.conditions.retain(|c| c.r#type != DISRUPTED);
                    status.conditions.push(NodeCondition {
                        r#type: DISRUPTED.to_owned(),
                        status: true,
                        reason: "ClusterDisrupted".to_owned(),
                        message: "most nodes went silent together; instances kept".to_owned(),
                        last_transition: Some(kat_proto::timestamp(now)),
                    });
                }
            };
            // Tell the leader's memory first: a heartbeat heard from here on writes
            // its status even if it thinks nothing changed (its compare then decides).
            if !live.mark_lost(name, self.timeout) {
                continue;
            }
            let mut events = vec![event];
            let announces = first_event.is_some();
            events.extend(first_event.take());
            if self
                .write(&by_name, &statuses, name, change, events)
                .await?
            {
                self.in_disruption |= announces;
                self.marked += 1;
                tracing::warn!(node = %name, timeout = ?self.timeout, disruption = round.disruption, "node lost: marked NotReady");
            }
        }
        for name in &round.released {
            let event = node_event(
                name,
                "DisruptionOver",
                EventSeverity::Warning,
                format!(
                    "{name} is still silent while most nodes are back; its instances are replaced elsewhere"
                ),
                now,
            );
            let change = |status: &mut NodeStatus| {
                status.conditions.retain(|c| c.r#type != DISRUPTED);
            };
            self.write(&by_name, &statuses, name, change, vec![event])
                .await?;
        }
        Ok(())
    }

    /// Writes node `name`'s status changed by `change`, with `events`, if the stored
    /// status is still the one read (a heartbeat that lands meanwhile wins).
    async fn write(
        &self,
        by_name: &[(String, KeyValue)],
        statuses: &[(String, NodeStatus)],
        name: &str,
        change: impl FnOnce(&mut NodeStatus),
        events: Vec<EventRecord>,
    ) -> Result<bool, ActorProcessingErr> {
        let leadership = &self.args.leadership;
        let (Some((_, kv)), Some((_, status))) = (
            by_name.iter().find(|(n, _)| n == name),
            statuses.iter().find(|(n, _)| n == name),
        ) else {
            return Ok(false);
        };
        let mut status = status.clone();
        change(&mut status);
        let mut ops = vec![TxnOp::put(kv.key.clone(), status.encode_to_vec())];
        for e in events {
            ops.push(leadership.event_op(e).await);
        }
        Ok(leadership
            .commit([Compare::unchanged(kv.key.clone(), kv.mod_revision)], ops)
            .await?)
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
            in_disruption: false,
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

    fn status(state: NodeState, disrupted: bool) -> NodeStatus {
        let mut s = NodeStatus::default();
        s.set_state(state);
        if disrupted {
            s.conditions.push(NodeCondition {
                r#type: DISRUPTED.to_owned(),
                status: true,
                ..Default::default()
            });
        }
        s
    }

    fn silence(table: &'static [(&'static str, u64)]) -> impl Fn(&str) -> Duration {
        move |n| {
            Duration::from_secs(
                table
                    .iter()
                    .find(|(name, _)| *name == n)
                    .map_or(0, |(_, s)| *s),
            )
        }
    }

    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn only_ready_nodes_silent_for_the_timeout_are_lost() {
        let nodes = vec![
            ("fresh".to_owned(), status(NodeState::Ready, false)),
            ("edge".to_owned(), status(NodeState::Ready, false)),
            ("already".to_owned(), status(NodeState::NotReady, false)),
            ("a".to_owned(), status(NodeState::Ready, false)),
            ("b".to_owned(), status(NodeState::Ready, false)),
        ];
        let silent = silence(&[("fresh", 10), ("edge", 60), ("already", 900)]);
        let round = assess(&nodes, &silent, Duration::from_secs(60));
        assert_eq!(names(&round.lost), ["edge"]);
        assert!(!round.disruption, "2 of 5 silent is not a disruption");
        let round = assess(&nodes, &silent, Duration::from_secs(61));
        assert!(round.lost.is_empty());
    }

    #[test]
    fn most_nodes_silent_at_once_is_a_disruption_and_its_end_releases_them() {
        let nodes = vec![
            ("a".to_owned(), status(NodeState::Ready, false)),
            ("b".to_owned(), status(NodeState::Ready, false)),
            ("c".to_owned(), status(NodeState::Ready, false)),
            ("d".to_owned(), status(NodeState::Ready, false)),
        ];
        // 3 of 4: a disruption, all three marked (as disrupted, by the caller).
        let round = assess(
            &nodes,
            silence(&[("a", 70), ("b", 70), ("c", 70)]),
            Duration::from_secs(60),
        );
        assert!(round.disruption);
        assert_eq!(names(&round.lost), ["a", "b", "c"]);
        // Cut off together but heard at different moments: the first to cross the
        // timeout is already part of a disruption.
        let round = assess(
            &nodes,
            silence(&[("a", 61), ("b", 57), ("c", 56)]),
            Duration::from_secs(60),
        );
        assert!(round.disruption);
        assert_eq!(names(&round.lost), ["a"]);
        // Exactly half is not more than half.
        let round = assess(
            &nodes,
            silence(&[("a", 70), ("b", 70)]),
            Duration::from_secs(60),
        );
        assert!(!round.disruption);
        // One node alone is never a disruption, even of a cluster of one.
        let one = vec![("a".to_owned(), status(NodeState::Ready, false))];
        assert!(!assess(&one, silence(&[("a", 70)]), Duration::from_secs(60)).disruption);
        // A new leader has heard nobody for long: the held nodes still count, so the
        // disruption goes on rather than releasing them all at once.
        let held = vec![
            ("a".to_owned(), status(NodeState::NotReady, true)),
            ("b".to_owned(), status(NodeState::NotReady, true)),
            ("c".to_owned(), status(NodeState::Ready, false)),
        ];
        let round = assess(&held, silence(&[]), Duration::from_secs(60));
        assert!(round.disruption);
        assert!(round.released.is_empty());
        // Nodes lost long ago (not held) do not count: one more loss of three live
        // nodes is ordinary.
        let old_losses = vec![
            ("dead1".to_owned(), status(NodeState::NotReady, false)),
            ("dead2".to_owned(), status(NodeState::NotReady, false)),
            ("a".to_owned(), status(NodeState::Ready, false)),
            ("b".to_owned(), status(NodeState::Ready, false)),
            ("c".to_owned(), status(NodeState::Ready, false)),
        ];
        let round = assess(
            &old_losses,
            silence(&[("dead1", 9000), ("dead2", 9000), ("a", 70)]),
            Duration::from_secs(60),
        );
        assert!(!round.disruption);
        assert_eq!(names(&round.lost), ["a"]);
        // Back to one silent of four: the disrupted ones still down are released.
        let after = vec![
            ("a".to_owned(), status(NodeState::NotReady, true)),
            ("b".to_owned(), status(NodeState::Ready, false)),
            ("c".to_owned(), status(NodeState::Ready, false)),
            ("d".to_owned(), status(NodeState::Ready, false)),
        ];
        let round = assess(&after, silence(&[("a", 300)]), Duration::from_secs(60));
        assert!(!round.disruption);
        assert_eq!(names(&round.released), ["a"]);
        assert!(round.lost.is_empty());
    }
}
