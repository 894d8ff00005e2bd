//! The `Election` actor (SPEC §3, §5): campaigns for leadership with a lease, keeps the
//! lease alive, tells subscribers who leads ([`LeaderChanged`]), and starts the leader
//! subtree in its parent supervisor when this node wins.
//!
//! Losing the lease (keep-alives failing past the TTL, or the store saying it is gone)
//! stops the leader subtree first, tells subscribers, and fails the actor; the
//! supervisor restarts it with a new lease and a new campaign. On shutdown the lease
//! is revoked, which deletes the election key at once so another member can lead.
//!
//! Every leader-only write carries [`crate::store::election::LeaderKey::fence`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort, call_t};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::state::Leadership;
use crate::store::election::{self, LeaderKey};
use crate::store::{
    Compare, EventKind, Lease, LeaseId, StateStore, StoreError, StoreMsg, Txn, TxnOp,
};
use crate::supervision::{ChildSpec, SupervisorMsg};

/// Who leads now, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderChanged {
    /// The leading node's name, if any node leads.
    pub leader: Option<String>,
    /// Whether that is this node.
    pub this_node_leads: bool,
}

/// Builds the leader subtree's child spec for a won election.
pub type LeaderSubtree = Arc<dyn Fn(Leadership) -> ChildSpec + Send + Sync>;

#[derive(Clone)]
pub struct ElectionArgs {
    pub node: String,
    /// Actor name of this node's Store, asked for the store handle at start.
    pub store_actor: String,
    /// Election key prefix, e.g. `/kat/election`.
    pub election: String,
    pub lease_ttl: Duration,
    pub leader_subtree: Option<LeaderSubtree>,
}

pub enum ElectionMsg {
    Subscribe(DerivedActorRef<LeaderChanged>),
    Snapshot(RpcReplyPort<ElectionSnapshot>),
    /// Internal: keep the lease alive.
    KeepAlive,
    /// Internal: the campaign finished.
    Won(Result<LeaderKey, String>),
    /// Internal: the leader seen in the store changed.
    Observed(Option<String>),
    /// Internal: the lease's deadline may have passed.
    CheckDeadline,
    /// Internal: the parent supervisor answered the request to start the leader subtree.
    SubtreeStarted(Result<(), String>),
    /// Internal: the leader subtree exited on its own (failed, or gave up restarting).
    SubtreeExited,
}

/// The Election actor's state, for tests and `katcall describe node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionSnapshot {
    pub leading: bool,
    pub leader: Option<String>,
    pub lease_id: i64,
    pub keep_alive_failures: u64,
}

pub struct ElectionState {
    args: ElectionArgs,
    store: Arc<dyn StateStore>,
    lease: Lease,
    lease_deadline: Instant,
    leading: Option<LeaderKey>,
    /// Mirrors `leading` for the leader watchdog task.
    leading_flag: Arc<AtomicBool>,
    leader: Option<String>,
    subscribers: Vec<DerivedActorRef<LeaderChanged>>,
    tasks: Vec<JoinHandle<()>>,
    keep_alive_failures: u64,
}

impl Drop for ElectionState {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Election;

impl Election {
    pub fn name(node: &str) -> String {
        format!("election@{node}")
    }
}

impl ElectionState {
    fn publish(&mut self) {
        let event = LeaderChanged {
            leader: self.leader.clone(),
            this_node_leads: self.leading.is_some(),
        };
        self.subscribers
            .retain(|s| s.send_message(event.clone()).is_ok());
    }

    /// Gives up leadership: the leader subtree stops before anything else.
    /// Gives up leadership and revokes the lease, so that another member can lead at
    /// once. The caller then fails the actor: its supervisor (rest_for_one) stops the
    /// leader subtree, a later sibling, before it restarts Election — so the subtree
    /// is stopped first without Election waiting on its own supervisor.
    async fn step_down(&mut self, why: &str) {
        self.leading_flag.store(false, Ordering::SeqCst);
        if self.leading.take().is_none() {
            return;
        }
        tracing::warn!(node = %self.args.node, %why, "lost leadership");
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.store.revoke_lease(self.lease.id),
        )
        .await;
        if self.leader.as_deref() == Some(self.args.node.as_str()) {
            self.leader = None;
        }
        self.publish();
    }
}

/// How long Election rides out a store that answers nothing (an etcd stall, a member
/// restarting, a lost quorum) before it fails and lets its supervisor restart it.
/// Failing at once would spend the control-plane supervisor's restart intensity in
/// seconds and take the whole node down with a short outage.
const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `op` until it succeeds, fails other than with `Unavailable`, or has failed for
/// [`STORE_PATIENCE`] since the first of a run of quick failures; waits 100 ms,
/// doubling to 2 s, between tries. `op` must be safe to repeat.
async fn patiently<T, Fut>(
    node: &str,
    what: &str,
    mut op: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    loop {
        let began = Instant::now();
        let result = op().await;
        // An attempt that ran a while before it failed (a campaign waiting its turn
        // for hours) got somewhere: this failure starts a new count.
        if began.elapsed() > Duration::from_secs(2) {
            failing_since = None;
            pause = Duration::from_millis(100);
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        match result {
            Err(StoreError::Unavailable(e)) if since.elapsed() < STORE_PATIENCE => {
                tracing::debug!(%node, %what, error = %e, ?pause, "store unavailable; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Removes candidate keys an earlier incarnation of this node left behind (its lease may
/// still run for a few seconds), so a restarted Election does not queue behind itself.
async fn clear_stale_candidacy(
    store: &dyn StateStore,
    election: &str,
    node: &str,
) -> Result<(), StoreError> {
    let prefix = format!("{}/", election.trim_end_matches('/'));
    let (candidates, _) = store.list(&prefix).await?;
    for kv in candidates
        .into_iter()
        .filter(|kv| kv.value == node.as_bytes())
    {
        let txn = Txn::new()
            .when([Compare::unchanged(kv.key.clone(), kv.mod_revision)])
            .and_then([TxnOp::delete(kv.key)]);
        store.txn(txn).await?;
    }
    Ok(())
}

/// Reports the current leader whenever the election keys change.
async fn observe(store: Arc<dyn StateStore>, election: String, myself: ActorRef<ElectionMsg>) {
    let prefix = format!("{}/", election.trim_end_matches('/'));
    loop {
        let Ok((candidates, revision)) = store.list(&prefix).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let leader = candidates
            .iter()
            .min_by_key(|kv| kv.create_revision)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        if myself.send_message(ElectionMsg::Observed(leader)).is_err() {
            return;
        }
        let Ok(mut watch) = store.watch(&prefix, revision + 1).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        // Any put or delete may change who leads; re-read then.
        match watch.recv().await {
            Some(Ok(e)) if matches!(e.kind, EventKind::Put | EventKind::Delete) => {}
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// How often followers probe the leader's etcd member, and how many failed probes in a
/// row make them revoke its lease.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
const PROBE_FAILURES: u32 = 3;

/// The followers' fast failure detector. A leader writes only through its own etcd
/// member, so once that member stops answering the leader cannot commit anything: its
/// lease can be revoked at once instead of waiting out the TTL, and the next candidate
/// leads. A leader that was only slow loses leadership and campaigns again; its
/// fenced writes fail meanwhile, so nothing is written twice.
async fn watch_leader_member(
    store: Arc<dyn StateStore>,
    election: String,
    node: String,
    leading: Arc<AtomicBool>,
) {
    let mut known: Option<(String, LeaseId)> = None;
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        if leading.load(Ordering::SeqCst) {
            failures = 0;
            known = None;
            continue;
        }
        // Reading the leader needs quorum; while etcd re-elects, keep the last one seen.
        if let Ok(Ok(Some(kv))) =
            tokio::time::timeout(PROBE_INTERVAL, election::leader(store.as_ref(), &election)).await
        {
            let name = String::from_utf8_lossy(&kv.value).into_owned();
            if known
                .as_ref()
                .is_some_and(|(n, l)| *n != name || *l != kv.lease)
            {
                failures = 0;
            }
            known = Some((name, kv.lease));
        }
        let Some((leader, lease)) = known.clone() else {
            continue;
        };
        if leader == node {
            continue;
        }
        match tokio::time::timeout(PROBE_INTERVAL * 2, store.member_reachable(&leader)).await {
            Ok(Ok(Some(false))) => failures += 1,
            Ok(Ok(Some(true))) => failures = 0,
            _ => {}
        }
        if failures >= PROBE_FAILURES {
            tracing::warn!(%node, %leader, "the leader's etcd member does not answer; revoking its lease");
            match tokio::time::timeout(PROBE_INTERVAL * 4, store.revoke_lease(lease)).await {
                Ok(Ok(())) | Ok(Err(StoreError::LeaseNotFound(_))) => {
                    failures = 0;
                    known = None;
                }
                _ => {}
            }
        }
    }
}

impl Actor for Election {
    type Msg = ElectionMsg;
    type State = ElectionState;
    type Arguments = ElectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ElectionMsg>,
        args: ElectionArgs,
    ) -> Result<ElectionState, ActorProcessingErr> {
        let store_actor = ractor::registry::where_is(args.store_actor.clone())
            .ok_or_else(|| format!("{} is not running", args.store_actor))?;
        let store: Arc<dyn StateStore> = call_t!(
            ActorRef::<StoreMsg>::from(store_actor),
            StoreMsg::Handle,
            10_000
        )?;
        let node = args.node.as_str();
        patiently(node, "clearing a stale candidacy", || {
            clear_stale_candidacy(store.as_ref(), &args.election, node)
        })
        .await?;
        let lease = patiently(node, "granting the election lease", || {
            store.grant_lease(args.lease_ttl)
        })
        .await?;

        let campaign = {
            let (store, election, node, me) = (
                store.clone(),
                args.election.clone(),
                args.node.clone(),
                myself.clone(),
            );
            tokio::spawn(async move {
                // Campaigning again with the same lease keeps the place in line.
                let won = patiently(&node, "campaigning", || {
                    election::campaign(
                        store.as_ref(),
                        &election,
                        node.clone().into_bytes(),
                        lease.id,
                    )
                })
                .await;
                let _ = me.send_message(ElectionMsg::Won(won.map_err(|e| e.to_string())));
            })
        };
        let observer = tokio::spawn(observe(
            store.clone(),
            args.election.clone(),
            myself.clone(),
        ));
        let leading_flag = Arc::new(AtomicBool::new(false));
        let watchdog = tokio::spawn(watch_leader_member(
            store.clone(),
            args.election.clone(),
            args.node.clone(),
            leading_flag.clone(),
        ));
        let interval = (lease.ttl / 3).max(Duration::from_millis(100));
        myself.send_interval(interval, || ElectionMsg::KeepAlive);
        tracing::info!(node = %args.node, lease = format!("{:x}", lease.id), ttl = ?lease.ttl, "campaigning");
        Ok(ElectionState {
            lease_deadline: Instant::now() + lease.ttl,
            args,
            store,
            lease,
            leading: None,
            leading_flag,
            leader: None,
            subscribers: Vec::new(),
            tasks: vec![campaign, observer, watchdog],
            keep_alive_failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ElectionMsg>,
        msg: ElectionMsg,
        state: &mut ElectionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ElectionMsg::Subscribe(subscriber) => {
                let _ = subscriber.send_message(LeaderChanged {
                    leader: state.leader.clone(),
                    this_node_leads: state.leading.is_some(),
                });
                state.subscribers.push(subscriber);
            }
            ElectionMsg::Snapshot(reply) => {
                let _ = reply.send(ElectionSnapshot {
                    leading: state.leading.is_some(),
                    leader: state.leader.clone(),
                    lease_id: state.lease.id,
                    keep_alive_failures: state.keep_alive_failures,
                });
            }
            ElectionMsg::KeepAlive => {
                // etcd's clock for the lease starts no earlier than the request leaves.
                let sent_at = Instant::now();
                let attempt = tokio::time::timeout(
                    state.lease.ttl / 3,
                    state.store.keep_alive(state.lease.id),
                )
                .await;
                match attempt {
                    Ok(Ok(ttl)) => {
                        // Margin for clock drift between this node and etcd's leader.
                        state.lease_deadline = sent_at + ttl - ttl / 10;
                        let wait = state
                            .lease_deadline
                            .saturating_duration_since(Instant::now());
                        myself.send_after(wait, || ElectionMsg::CheckDeadline);
                    }
                    Ok(Err(crate::store::StoreError::LeaseNotFound(_))) => {
                        state.step_down("lease expired").await;
                        return Err("election lease expired".into());
                    }
                    failed => {
                        state.keep_alive_failures += 1;
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "keep-alive timed out".to_owned(),
                        };
                        tracing::warn!(node = %state.args.node, %why, "lease keep-alive failed");
                        if Instant::now() >= state.lease_deadline {
                            state
                                .step_down("lease ran out while the store was unreachable")
                                .await;
                            return Err(format!("election lease lost: {why}").into());
                        }
                    }
                }
            }
            ElectionMsg::Won(Ok(key)) => {
                tracing::info!(node = %state.args.node, key = %key.key, "became leader");
                state.leading = Some(key.clone());
                state.leading_flag.store(true, Ordering::SeqCst);
                state.leader = Some(state.args.node.clone());
                if let (Some(build), Some(parent)) =
                    (&state.args.leader_subtree, myself.try_get_supervisor())
                {
                    let mut spec =
                        build(Leadership::new(&state.args.node, key, state.store.clone()));
                    let me = myself.clone();
                    spec.on_exit = Some(Arc::new(move |_, _| {
                        let _ = me.send_message(ElectionMsg::SubtreeExited);
                    }));
                    // Ask without waiting: the supervisor may be busy stopping us. If we
                    // are gone before it answers, the dropped reply port withdraws the
                    // request (see SupervisorMsg::AddChild).
                    let parent = ActorRef::<SupervisorMsg>::from(parent);
                    let me = myself.clone();
                    state.tasks.push(tokio::spawn(async move {
                        let result = match call_t!(parent, SupervisorMsg::AddChild, 30_000, spec) {
                            Ok(result) => result,
                            Err(e) => Err(e.to_string()),
                        };
                        let _ = me.send_message(ElectionMsg::SubtreeStarted(result));
                    }));
                }
                state.publish();
            }
            ElectionMsg::Won(Err(e)) => return Err(format!("campaign failed: {e}").into()),
            ElectionMsg::CheckDeadline => {
                if state.leading.is_some() && Instant::now() >= state.lease_deadline {
                    state
                        .step_down("lease deadline passed without a keep-alive")
                        .await;
                    return Err("election lease ran out".into());
                }
            }
            ElectionMsg::SubtreeStarted(Ok(())) => {}
            ElectionMsg::SubtreeStarted(Err(e)) => {
                state.step_down("the leader subtree did not start").await;
                return Err(format!("leader subtree failed to start: {e}").into());
            }
            ElectionMsg::SubtreeExited => {
                if state.leading.is_some() {
                    state.step_down("the leader subtree stopped").await;
                    return Err("the leader subtree stopped; campaigning again".into());
                }
            }
            ElectionMsg::Observed(leader) => {
                if state.leading.is_some()
                    && let Some(other) = leader.as_ref().filter(|l| **l != state.args.node)
                {
                    // The observation may predate our win; believe the store as it is now.
                    let now = election::leader(state.store.as_ref(), &state.args.election).await;
                    // A failed read says nothing; the keep-alive deals with an unreachable store.
                    let deposed = match &now {
                        Ok(Some(kv)) => kv.lease != state.lease.id,
                        Ok(None) => true,
                        Err(_) => false,
                    };
                    if deposed {
                        let why = format!("the store shows {other} as leader");
                        state.step_down(&why).await;
                        return Err(format!("deposed: {why}").into());
                    }
                    return Ok(());
                }
                if leader != state.leader {
                    if let Some(l) = &leader
                        && state.leading.is_none()
                        && *l != state.args.node
                    {
                        tracing::info!(node = %state.args.node, leader = %l, "following leader");
                    }
                    state.leader = leader;
                    state.publish();
                }
            }
        }
        Ok(())
    }

    /// Revokes the lease so the election key goes at once and another member can lead.
    async fn post_stop(
        &self,
        _myself: ActorRef<ElectionMsg>,
        state: &mut ElectionState,
    ) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        let revoke = tokio::time::timeout(
            Duration::from_secs(2),
            state.store.revoke_lease(state.lease.id),
        )
        .await;
        if state.leading.take().is_some() {
            tracing::info!(node = %state.args.node, resigned = matches!(revoke, Ok(Ok(()))), "resigned leadership");
        }
        Ok(())
    }
}
