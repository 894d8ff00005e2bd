//! KAT's one supervision mechanism (SPEC §3): a `Supervisor` actor with OTP-style
//! strategies (`OneForOne`, `RestForOne`, `OneForAll`), restart policies, restart
//! intensity (more than N restarts in T: the supervisor stops its children and fails
//! itself, escalating to its parent), per-child exponential backoff, and ordered
//! shutdown: children start in list order and stop in reverse order, each given its
//! shutdown timeout for a graceful stop (its `post_stop` runs) before it is killed.
//!
//! Why not `ractor-supervisor` is in `docs/decisions.md`: it kills siblings rather than
//! stopping them (their `post_stop` never runs, which matters for actors that own etcd
//! or wireguard-go), in start order rather than reverse, and has no ordered shutdown.
//!
//! Children are added in the supervisor's arguments or later with
//! [`SupervisorMsg::AddChild`] (the control-plane supervisor adds and removes the
//! leader subtree that way). Every supervisor answers [`SupervisorMsg::Snapshot`].

pub mod policy;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use tokio::time::Instant;

pub use policy::{Backoff, Intensity, Meltdown, Restart, RestartLog, Strategy};

/// What starting a child returns: the child's cell, already linked to the supervisor.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// The latest escalation in this process (a supervisor whose restart intensity was
/// exceeded): what it says, down to the first failure that caused it.
static LAST_ESCALATION: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// The latest escalation's reason, e.g. `more than 3 restarts within 300s; last:
/// control-plane@n1: … api-server@n1 failed to start: … Address already in use`; for
/// the agent's last words when its tree gives up.
pub fn last_escalation() -> Option<String> {
    LAST_ESCALATION
        .lock()
        .ok()
        .map(|s| s.clone())
        .filter(|s| !s.is_empty())
}

/// Starts one child linked to the given supervisor cell; called again for every restart.
#[derive(Clone)]
pub struct StartFn(Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>);

impl StartFn {
    pub fn new<F, Fut>(start: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self(Arc::new(move |supervisor| Box::pin(start(supervisor))))
    }
}

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// The child's actor name; unique in the process (scope it by node: `store@n1`).
    pub name: String,
    pub restart: Restart,
    /// How long a graceful stop may take before the child is killed.
    pub shutdown_timeout: Duration,
    pub start: StartFn,
    /// Called when the child exits on its own and is not restarted (a temporary or
    /// transient child), e.g. so Election learns that its leader subtree is gone.
    pub on_exit: Option<ExitNotify>,
    /// Called when the child failed and is about to be restarted, with its failure
    /// reason: a policy hook (the agent subtree switches to Detached this way).
    pub on_restart: Option<RestartNotify>,
}

/// Told a child's name and failure reason before it is restarted.
pub type RestartNotify = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Told a child's name and whether it failed, when it exits for good.
pub type ExitNotify = Arc<dyn Fn(&str, bool) + Send + Sync>;

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("name", &self.name)
            .field("restart", &self.restart)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A permanent child running actor `actor` with arguments made by `args` at each start.
    pub fn actor<A, F>(name: impl Into<String>, actor: A, args: F) -> Self
    where
        A: Actor + Clone + Sync,
        F: Fn() -> A::Arguments + Send + Sync + 'static,
    {
        let name = name.into();
        let actor_name = name.clone();
        let args = Arc::new(args);
        Self {
            name,
            restart: Restart::Permanent,
            shutdown_timeout: Duration::from_secs(5),
            on_exit: None,
            on_restart: None,
            start: StartFn::new(move |supervisor| {
                let (actor, args, name) = (actor.clone(), args(), actor_name.clone());
                async move {
                    let (child, _join) =
                        Actor::spawn_linked(Some(name), actor, args, supervisor).await?;
                    Ok(child.get_cell())
                }
            }),
        }
    }

    /// A permanent child that is itself a [`Supervisor`] with `args`.
    pub fn supervisor(name: impl Into<String>, args: SupervisorArgs) -> Self {
        Self::actor(name, Supervisor, move || args.clone())
    }

    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}

/// How a supervisor runs its children.
#[derive(Debug, Clone)]
pub struct SupervisorArgs {
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub backoff: Backoff,
    pub children: Vec<ChildSpec>,
}

/// Messages a supervisor accepts.
pub enum SupervisorMsg {
    /// Starts a new child after the existing ones.
    AddChild(ChildSpec, RpcReplyPort<Result<(), String>>),
    /// Stops a child (gracefully, within its timeout) and forgets it; replies whether it existed.
    RemoveChild(String, RpcReplyPort<bool>),
    Snapshot(RpcReplyPort<SupervisorSnapshot>),
    /// Internal: start these children now (after a backoff delay).
    StartChildren(Vec<String>),
}

/// A supervisor's state, for tests and `katcall describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorSnapshot {
    /// Children in start order, with whether each is running.
    pub children: Vec<(String, bool)>,
    /// Restarts since the supervisor started.
    pub restarts: u64,
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    started_at: Instant,
    /// Restarts in a row that came soon after the previous start (for backoff).
    quick_restarts: u32,
}

pub struct SupervisorState {
    strategy: Strategy,
    intensity: Intensity,
    backoff: Backoff,
    children: Vec<Child>,
    log: RestartLog,
    restarts: u64,
    /// The latest child failure, named in the escalation if the intensity is exceeded.
    last_failure: String,
    /// Exits the supervisor caused itself (stops for a restart or removal): not failures.
    expected_exits: HashSet<ActorId>,
}

/// The supervisor actor; spawn it with [`SupervisorArgs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisor;

impl SupervisorState {
    fn name_of(myself: &ActorRef<SupervisorMsg>) -> String {
        myself
            .get_name()
            .unwrap_or_else(|| myself.get_id().to_string())
    }

    /// Starts the named children that are not running, in list order. A start that
    /// fails counts as a restart; the rest are retried after a backoff.
    async fn start_children(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        names: &[String],
    ) -> Result<(), ActorProcessingErr> {
        for i in 0..self.children.len() {
            let child = &self.children[i];
            if child.cell.is_some() || !names.contains(&child.spec.name) {
                continue;
            }
            match (child.spec.start.0)(myself.get_cell()).await {
                Ok(cell) => {
                    let child = &mut self.children[i];
                    child.cell = Some(cell);
                    child.started_at = Instant::now();
                }
                Err(e) => {
                    let name = self.children[i].spec.name.clone();
                    tracing::warn!(supervisor = %Self::name_of(myself), child = %name, error = %e, "child failed to start");
                    self.last_failure = format!("{name} failed to start: {e}");
                    self.record_restart(myself).await?;
                    let remaining: Vec<String> = self.children[i..]
                        .iter()
                        .map(|c| c.spec.name.clone())
                        .filter(|n| names.contains(n))
                        .collect();
                    let delay = self.next_backoff(i);
                    myself.send_after(delay.max(Duration::from_millis(1)), move || {
                        SupervisorMsg::StartChildren(remaining)
                    });
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Counts a restart against the intensity; on meltdown stops every child and fails.
    async fn record_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.restarts += 1;
        if let Err(meltdown) = self.log.record(&self.intensity, Instant::now()) {
            tracing::error!(supervisor = %Self::name_of(myself), %meltdown, last = %self.last_failure, "restart intensity exceeded; stopping children and escalating");
            self.stop_all().await;
            let escalation = format!("{meltdown}; last: {}", self.last_failure);
            if let Ok(mut last) = LAST_ESCALATION.lock() {
                last.clone_from(&escalation);
            }
            return Err(escalation.into());
        }
        Ok(())
    }

    fn next_backoff(&mut self, i: usize) -> Duration {
        let window = self.intensity.window;
        let child = &mut self.children[i];
        if child.started_at.elapsed() < window {
            child.quick_restarts += 1;
        } else {
            child.quick_restarts = 1;
        }
        self.backoff.delay(child.quick_restarts)
    }

    /// Stops child `i` gracefully within its timeout, then kills it if it hangs.
    async fn stop_child(&mut self, i: usize) {
        let Some(cell) = self.children[i].cell.take() else {
            return;
        };
        self.expected_exits.insert(cell.get_id());
        let timeout = self.children[i].spec.shutdown_timeout;
        if cell
            .stop_and_wait(Some("stopped by supervisor".to_owned()), Some(timeout))
            .await
            .is_err()
        {
            tracing::warn!(child = %self.children[i].spec.name, ?timeout, "child did not stop in time; killing it");
            let _ = cell.kill_and_wait(Some(Duration::from_secs(5))).await;
        }
    }

    /// Stops every running child in reverse start order.
    async fn stop_all(&mut self) {
        for i in (0..self.children.len()).rev() {
            self.stop_child(i).await;
        }
    }

    async fn child_exited(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        cell: &ActorCell,
        failed: bool,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        if self.expected_exits.remove(&cell.get_id()) {
            return Ok(());
        }
        let Some(i) = self
            .children
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        self.children[i].cell = None;
        let spec = self.children[i].spec.clone();
        let supervisor = Self::name_of(myself);
        if !spec.restart.restarts_after(failed) {
            tracing::info!(%supervisor, child = %spec.name, failed, %reason, "child exited; not restarted ({:?})", spec.restart);
            if spec.restart == Restart::Temporary {
                self.children.remove(i);
            }
            if let Some(notify) = &spec.on_exit {
                notify(&spec.name, failed);
            }
            return Ok(());
        }
        tracing::warn!(%supervisor, child = %spec.name, failed, %reason, strategy = ?self.strategy, "child exited; restarting");
        crate::metrics::global().inc(
            "kat_actor_restarts_total",
            "Children restarted by their supervisor, by child.",
            &[("actor", &spec.name)],
            1.0,
        );
        if let Some(notify) = &spec.on_restart {
            notify(&spec.name, &reason);
        }
        self.last_failure = format!("{}: {reason}", spec.name);
        self.record_restart(myself).await?;
        let affected = policy::affected(self.strategy, i, self.children.len());
        for j in affected.clone().rev() {
            self.stop_child(j).await;
        }
        // As in OTP, temporary siblings caught up in a restart are stopped and dropped,
        // not restarted (the leader subtree is one: only a new election brings it back).
        let mut names = Vec::new();
        for j in affected.clone() {
            let c = &self.children[j];
            if j == i || c.spec.restart != Restart::Temporary {
                names.push(c.spec.name.clone());
            }
        }
        let mut j = affected.end;
        while j > affected.start {
            j -= 1;
            if j != i && self.children[j].spec.restart == Restart::Temporary {
                self.children.remove(j);
            }
        }
        let i = self
            .children
            .iter()
            .position(|c| c.spec.name == spec.name)
            .unwrap_or(i);
        let delay = self.next_backoff(i);
        if delay.is_zero() {
            self.start_children(myself, &names).await
        } else {
            myself.send_after(delay, move || SupervisorMsg::StartChildren(names));
            Ok(())
        }
    }

    fn snapshot(&self) -> SupervisorSnapshot {
        SupervisorSnapshot {
            children: self
                .children
                .iter()
                .map(|c| (c.spec.name.clone(), c.cell.is_some()))
                .collect(),
            restarts: self.restarts,
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut names = HashSet::new();
        if let Some(dup) = args.children.iter().find(|c| !names.insert(c.name.clone())) {
            return Err(format!("two children are named {:?}", dup.name).into());
        }
        Ok(SupervisorState {
            strategy: args.strategy,
            intensity: args.intensity,
            backoff: args.backoff,
            children: args
                .children
                .into_iter()
                .map(|spec| Child {
                    spec,
                    cell: None,
                    started_at: Instant::now(),
                    quick_restarts: 0,
                })
                .collect(),
            log: RestartLog::default(),
            restarts: 0,
            last_failure: String::new(),
            expected_exits: HashSet::new(),
        })
    }

    /// Starts the children in order; if one cannot start, the ones started are stopped
    /// again and the supervisor fails to start (its parent decides what next).
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for i in 0..state.children.len() {
            match (state.children[i].spec.start.0)(myself.get_cell()).await {
                Ok(cell) => {
                    state.children[i].cell = Some(cell);
                    state.children[i].started_at = Instant::now();
                }
                Err(e) => {
                    let name = state.children[i].spec.name.clone();
                    state.stop_all().await;
                    return Err(format!("child {name} failed to start: {e}").into());
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartChildren(names) => state.start_children(&myself, &names).await?,
            SupervisorMsg::AddChild(spec, reply) => {
                // Whoever asked has gone (e.g. an Election restarted meanwhile): a
                // child started now would serve a request nobody stands behind.
                if reply.is_closed() {
                    tracing::info!(child = %spec.name, "not adding child: the request was withdrawn");
                    return Ok(());
                }
                if state.children.iter().any(|c| c.spec.name == spec.name) {
                    let _ = reply.send(Err(format!("a child named {:?} exists", spec.name)));
                    return Ok(());
                }
                let result = (spec.start.0)(myself.get_cell()).await;
                let answer = match result {
                    Ok(cell) => {
                        state.children.push(Child {
                            spec,
                            cell: Some(cell),
                            started_at: Instant::now(),
                            quick_restarts: 0,
                        });
                        Ok(())
                    }
                    Err(e) => Err(format!("child {} failed to start: {e}", spec.name)),
                };
                let _ = reply.send(answer);
            }
            SupervisorMsg::RemoveChild(name, reply) => {
                let found = state.children.iter().position(|c| c.spec.name == name);
                if let Some(i) = found {
                    state.stop_child(i).await;
                    state.children.remove(i);
                }
                let _ = reply.send(found.is_some());
            }
            SupervisorMsg::Snapshot(reply) => {
                let _ = reply.send(state.snapshot());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                state
                    .child_exited(
                        &myself,
                        &cell,
                        false,
                        reason.unwrap_or_else(|| "stopped".to_owned()),
                    )
                    .await
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                state
                    .child_exited(&myself, &cell, true, error.to_string())
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Ordered shutdown: children stop in reverse start order.
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_all().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
