//! The Heartbeat actor (SPEC §3, §6), on every node: every `agentTickSeconds` it
//! reports this node's status to the leader, trying each known control-plane API
//! address in turn, so it follows the leader when leadership moves.
//!
//! If no leader answers for `nodeLossTimeoutSeconds` it fails. Its supervisor
//! (`agent@N`) reacts to that failure by switching the node to [`AgentMode::Detached`]
//! and restarting it; a Heartbeat started in Detached mode keeps retrying with
//! exponential backoff, and its first accepted heartbeat says `rejoining`, after which
//! the node is Attached again. Local work keeps running throughout: nothing here stops
//! anything.

use std::sync::Arc;
use std::time::Duration;

use kat_proto::v1alpha1::{
    HeartbeatRequest, HeartbeatResponse, NodeState, NodeStatus, SyncRequest,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::link::{LeaderLink, LinkError};
use super::view::{AgentMode, NodeView, publish};

#[derive(Clone)]
pub struct HeartbeatArgs {
    pub node: String,
    /// Control-plane API addresses (HOST:PORT), tried in turn; the one that answered
    /// last is tried first.
    pub targets: Vec<String>,
    pub tick: Duration,
    pub loss_timeout: Duration,
    /// Longest wait between attempts while Detached.
    pub max_backoff: Duration,
    pub link: Arc<dyn LeaderLink>,
    /// Writes the mode, what the sync stream says, the learned control-plane
    /// addresses and the leader's name; reads the Runtime's instance reports.
    pub view: NodeView,
    /// Told the full address list whenever a new control-plane member is learned, so
    /// the node still finds a leader after a restart when the one it joined is gone.
    pub remember_targets: Option<RememberTargets>,
    /// Measures what this host has (CPU, memory, GPUs), reported with heartbeats and
    /// measured again every [`CAPACITY_REFRESH`]; `None`: not reported (simulations,
    /// whose nodes have the capacity they joined with).
    pub capacity: Option<CapacityProbe>,
}

/// See [`HeartbeatArgs::capacity`].
pub type CapacityProbe = fn() -> kat_proto::v1alpha1::NodeResources;

/// How often a node measures its capacity again (GPU discovery runs `nvidia-smi`).
pub const CAPACITY_REFRESH: Duration = Duration::from_secs(300);

/// See [`HeartbeatArgs::remember_targets`].
pub type RememberTargets = Arc<dyn Fn(&[String]) + Send + Sync>;

pub enum HeartbeatMsg {
    Tick,
    /// The Runtime's instance reports changed: report them now (at most once a
    /// second), not at the next tick.
    ReportsChanged,
    /// Internal: the report held back by the one-second gap is due.
    ReportsDue,
    /// Replies with the last accepted response and how long ago it came.
    Last(ractor::RpcReplyPort<Option<(HeartbeatResponse, Duration)>>),
}

pub struct HeartbeatState {
    args: HeartbeatArgs,
    current: usize,
    last_ok: Instant,
    last_response: Option<HeartbeatResponse>,
    delay: Duration,
    /// The sync stream being followed, and from which address.
    sync: Option<(String, tokio::task::JoinHandle<()>)>,
    /// When the last heartbeat went out.
    last_sent: Instant,
    /// A report is already queued for when the minimum gap has passed.
    report_queued: bool,
    /// Follows the reports cell.
    reports_watch: tokio::task::JoinHandle<()>,
    /// The last measured capacity, and when.
    capacity: Option<(Instant, kat_proto::v1alpha1::NodeResources)>,
}

impl Drop for HeartbeatState {
    fn drop(&mut self) {
        self.reports_watch.abort();
        if let Some((_, task)) = self.sync.take() {
            task.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Heartbeat;

impl Heartbeat {
    pub fn name(node: &str) -> String {
        format!("heartbeat@{node}")
    }
}

impl HeartbeatState {
    fn request(&self, rejoining: bool) -> HeartbeatRequest {
        let view = &self.args.view;
        let mut request = HeartbeatRequest {
            node_name: self.args.node.clone(),
            node_status: Some(NodeStatus {
                state: NodeState::Ready.into(),
                ..Default::default()
            }),
            rejoining,
            allocatable: self.capacity.as_ref().map(|(_, c)| c.clone()),
            synced_revision: view.synced.borrow().revision,
            instances: view.reports.borrow().values().cloned().collect(),
        };
        // A container's error text can be long: cut as the leader would, so the
        // heartbeat stays within what the node API takes.
        kat_proto::limits::cut_heartbeat(&mut request);
        request
    }

    /// Measures the host's capacity again when it is due.
    async fn refresh_capacity(&mut self) {
        let Some(probe) = self.args.capacity else {
            return;
        };
        if self
            .capacity
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < CAPACITY_REFRESH)
        {
            return;
        }
        if let Ok(measured) = tokio::task::spawn_blocking(probe).await {
            self.capacity = Some((Instant::now(), measured));
        }
    }

    /// One round: each known address once, starting with the last that answered; a
    /// member that points to the leader is followed at once.
    async fn send(&mut self, rejoining: bool) -> Option<HeartbeatResponse> {
        self.refresh_capacity().await;
        let n = self.args.targets.len() + 1;
        for _ in 0..n {
            let target = self.args.targets[self.current].clone();
            match self
                .args
                .link
                .heartbeat(&target, self.request(rejoining))
                .await
            {
                Ok(response) => {
                    let mut learned = false;
                    for api in &response.control_plane_apis {
                        if !self.args.targets.contains(api) {
                            tracing::info!(node = %self.args.node, address = %api, "control-plane member learned");
                            self.args.targets.push(api.clone());
                            learned = true;
                        }
                    }
                    if learned {
                        publish(&self.args.view.control_plane, self.args.targets.clone());
                        if let Some(remember) = &self.args.remember_targets {
                            remember(&self.args.targets);
                        }
                    }
                    if !response.leader_node.is_empty() {
                        publish(&self.args.view.leader, response.leader_node.clone());
                    }
                    self.follow(&target, &response.leader_address);
                    return Some(response);
                }
                Err(LinkError::NotLeader(leader)) if leader != target => {
                    tracing::debug!(node = %self.args.node, %target, %leader, "following the leader");
                    self.follow(&target, &leader);
                }
                Err(e) => {
                    tracing::debug!(node = %self.args.node, %target, error = %e, "heartbeat not accepted");
                    self.current = (self.current + 1) % self.args.targets.len();
                }
            }
        }
        None
    }

    /// Follows the sync stream of the leader at the current address, (re)opening it
    /// from the last applied revision when it is not open there.
    fn ensure_sync(&mut self) {
        let target = self.args.targets[self.current].clone();
        if let Some((from, task)) = &self.sync
            && *from == target
            && !task.is_finished()
        {
            return;
        }
        if let Some((_, task)) = self.sync.take() {
            task.abort();
        }
        let (link, synced, node) = (
            self.args.link.clone(),
            self.args.view.synced.clone(),
            self.args.node.clone(),
        );
        let addr = target.clone();
        let task = tokio::spawn(async move {
            let request = SyncRequest {
                node_name: node.clone(),
                from_revision: synced.borrow().revision,
            };
            match link.sync(&addr, request).await {
                Ok(mut rx) => {
                    while let Some(item) = rx.recv().await {
                        match item {
                            Ok(event) => synced.send_modify(|s| s.apply(event)),
                            Err(e) => {
                                tracing::debug!(%node, leader = %addr, error = %e, "sync stream ended");
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%node, leader = %addr, error = %e, "sync stream not opened")
                }
            }
        });
        self.sync = Some((target, task));
    }

    /// Remembers a leader address the answer pointed to.
    fn follow(&mut self, answered: &str, leader: &str) {
        if leader.is_empty() || leader == answered {
            return;
        }
        let i = match self.args.targets.iter().position(|t| t == leader) {
            Some(i) => i,
            None => {
                self.args.targets.push(leader.to_owned());
                self.args.targets.len() - 1
            }
        };
        self.current = i;
    }
}

impl Actor for Heartbeat {
    type Msg = HeartbeatMsg;
    type State = HeartbeatState;
    type Arguments = HeartbeatArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HeartbeatMsg>,
        mut args: HeartbeatArgs,
    ) -> Result<HeartbeatState, ActorProcessingErr> {
        let learned = args.view.control_plane.borrow().clone();
        for target in learned {
            if !args.targets.contains(&target) {
                args.targets.push(target);
            }
        }
        if args.targets.is_empty() {
            return Err("no leader API address known".into());
        }
        let _ = myself.cast(HeartbeatMsg::Tick);
        let reports_watch = {
            let mut changes = args.view.reports.subscribe();
            let me = myself.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    // A burst of changes (several instances starting) makes one report.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    changes.borrow_and_update();
                    if me.cast(HeartbeatMsg::ReportsChanged).is_err() {
                        return;
                    }
                }
            })
        };
        Ok(HeartbeatState {
            last_sent: Instant::now(),
            report_queued: false,
            reports_watch,
            delay: args.tick,
            args,
            current: 0,
            last_ok: Instant::now(),
            last_response: None,
            sync: None,
            capacity: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HeartbeatMsg>,
        msg: HeartbeatMsg,
        state: &mut HeartbeatState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HeartbeatMsg::Last(reply) => {
                let last = state
                    .last_response
                    .clone()
                    .map(|r| (r, state.last_ok.elapsed()));
                let _ = reply.send(last);
                return Ok(());
            }
            HeartbeatMsg::ReportsChanged | HeartbeatMsg::ReportsDue => {
                const MIN_GAP: Duration = Duration::from_secs(1);
                if matches!(msg, HeartbeatMsg::ReportsDue) {
                    // Whatever happened meanwhile (a tick sent), a later change must
                    // be able to queue its own report again.
                    state.report_queued = false;
                }
                if state.args.view.mode() != AgentMode::Attached {
                    return Ok(()); // the next tick (or rejoin) carries them
                }
                let since = state.last_sent.elapsed();
                if since < MIN_GAP {
                    if !state.report_queued {
                        state.report_queued = true;
                        myself.send_after(MIN_GAP - since, || HeartbeatMsg::ReportsDue);
                    }
                    return Ok(());
                }
                state.report_queued = false;
                state.last_sent = Instant::now();
                if let Some(response) = state.send(false).await {
                    state.last_ok = Instant::now();
                    state.last_response = Some(response);
                }
                return Ok(());
            }
            HeartbeatMsg::Tick => {}
        }
        state.last_sent = Instant::now();
        let mode = state.args.view.mode();
        let detached = mode == AgentMode::Detached;
        if let Some(response) = state.send(detached).await {
            state.last_ok = Instant::now();
            state.last_response = Some(response);
            state.delay = state.args.tick;
            state.ensure_sync();
            if mode != AgentMode::Attached {
                state.args.view.mode.send_replace(AgentMode::Attached);
                let target = &state.args.targets[state.current];
                if detached {
                    tracing::info!(node = %state.args.node, leader = %target, "leader answered; rejoined");
                } else {
                    tracing::info!(node = %state.args.node, leader = %target, "attached to the leader");
                }
            }
        } else if detached {
            state.delay = (state.delay * 2).min(state.args.max_backoff);
        } else if state.last_ok.elapsed() >= state.args.loss_timeout {
            return Err(format!(
                "no leader answered for {:?} (tried {})",
                state.args.loss_timeout,
                state.args.targets.join(", ")
            )
            .into());
        } else if mode == AgentMode::Starting {
            // Until the first answer (e.g. init's own leader still starting), ask
            // every second rather than every tick.
            state.delay = state.args.tick.min(Duration::from_secs(1));
        }
        myself.send_after(state.delay, || HeartbeatMsg::Tick);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
    use super::*;
    use crate::agent::link::SyncReceiver;
    use kat_proto::v1alpha1::{
        InstancePhase, InstanceReport, InstanceStatus, RenewCertificateRequest,
        RenewCertificateResponse, SyncEvent,
    };
    use std::sync::Mutex;

    /// A leader that answers every heartbeat and records when each came and the
    /// phase of instance `i1` it carried.
    #[derive(Default)]
    struct Recorder {
        beats: Mutex<Vec<(Instant, Option<i32>)>>,
        streams: Mutex<Vec<tokio::sync::mpsc::Sender<Result<SyncEvent, LinkError>>>>,
    }

    #[async_trait::async_trait]
    impl LeaderLink for Recorder {
        async fn heartbeat(
            &self,
            _target: &str,
            request: HeartbeatRequest,
        ) -> Result<HeartbeatResponse, LinkError> {
            let phase = request
                .instances
                .iter()
                .find(|i| i.id == "i1")
                .and_then(|i| i.status.as_ref())
                .map(|s| s.phase);
            self.beats.lock().unwrap().push((Instant::now(), phase));
            Ok(HeartbeatResponse::default())
        }

        async fn renew(
            &self,
            _target: &str,
            _request: RenewCertificateRequest,
        ) -> Result<RenewCertificateResponse, LinkError> {
            Err(LinkError::Refused("not in this test".into()))
        }

        async fn sync(
            &self,
            _target: &str,
            _request: SyncRequest,
        ) -> Result<SyncReceiver, LinkError> {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            self.streams.lock().unwrap().push(tx);
            Ok(rx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_after_a_tick_that_overtook_a_held_back_report_is_still_sent_early() {
        let link = Arc::new(Recorder::default());
        let view = NodeView::new();
        let set = |phase: InstancePhase| {
            let report = InstanceReport {
                id: "i1".to_owned(),
                status: Some(InstanceStatus {
                    phase: phase.into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            view.reports
                .send_replace([("i1".to_owned(), report)].into());
        };
        let start = Instant::now();
        let (actor, handle) = Actor::spawn(
            None,
            Heartbeat,
            HeartbeatArgs {
                node: "w1".into(),
                targets: vec!["leader:1".into()],
                tick: Duration::from_secs(15),
                loss_timeout: Duration::from_secs(60),
                max_backoff: Duration::from_secs(30),
                link: link.clone(),
                view: view.clone(),
                remember_targets: None,
                capacity: None,
            },
        )
        .await
        .unwrap();
        // Ticks at 0 s and 15 s. A change at 13.9 s is sent at once (14.1 s, after the
        // 200 ms that gathers a burst); one at 14.4 s is held back to 15.1 s by the
        // one-second gap, and the 15 s tick overtakes it.
        tokio::time::sleep_until(start + Duration::from_millis(13_900)).await;
        set(InstancePhase::Starting);
        tokio::time::sleep_until(start + Duration::from_millis(14_400)).await;
        set(InstancePhase::Starting);
        // RUNNING at 15.5 s must not wait for the 30 s tick.
        tokio::time::sleep_until(start + Duration::from_millis(15_500)).await;
        set(InstancePhase::Running);
        tokio::time::sleep_until(start + Duration::from_secs(20)).await;
        let beats = link.beats.lock().unwrap().clone();
        let running = beats
            .iter()
            .find(|(_, phase)| *phase == Some(InstancePhase::Running.into()))
            .map(|(at, _)| *at - start);
        assert!(
            running.is_some_and(|at| at < Duration::from_millis(17_000)),
            "RUNNING reported at {running:?}; beats at {:?}",
            beats.iter().map(|(at, _)| *at - start).collect::<Vec<_>>()
        );
        actor.stop(None);
        handle.await.unwrap();
    }
}
