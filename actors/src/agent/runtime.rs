//! The Runtime actor (SPEC §3, §8), on every node: makes the node's instances what
//! they should be and says how they are.
//!
//! Every tick (and at once when the desired set changes) it ensures each desired
//! instance exists as desired — adopting one that already does, e.g. after a
//! `kat-agent` restart, without restarting it — retires instances that are not
//! desired, observes each (phase, restarts, exit code, IP), runs exec health checks
//! on each probe's schedule, and publishes the reports (each with its instance's
//! namespace and workload) in the node's view, where Heartbeat picks them up. The
//! desired set comes from the sync stream's assignments (or, in tests, a given list);
//! it is cached on disk, so after a restart while no leader answers the node keeps
//! running what it last knew (detached operation). What it makes run is published as
//! the view's `running`, which the agent API serves logs and exec from.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kat_proto::v1alpha1::InstanceReport;
use kat_proto::v1alpha1::instance_status::Health as ProtoHealth;
use kat_proto::v1alpha1::{InstancePhase, InstanceStatus};
use kat_runtime::host::{DesiredInstance, Ensured, InstanceHost, Phase};
use kat_runtime::spec::{SpecContext, SpecError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::view::{Cell, NodeView, Reports, publish};

/// Where the desired instances come from.
#[derive(Clone)]
pub enum DesiredSource {
    /// The sync stream's assignments in the node's view, turned into instances with
    /// the node's context (real and simulated nodes).
    Assignments(SpecContext),
    /// A list kept by someone else (tests): `None` until they say.
    Given(Cell<Option<Vec<DesiredInstance>>>),
}

#[derive(Clone)]
pub struct RuntimeArgs {
    pub node: String,
    pub source: DesiredSource,
    pub host: Arc<dyn InstanceHost>,
    /// Where it publishes what runs and the reports (and reads the assignments).
    pub view: NodeView,
    /// Where the last known desired set is kept (`DIR/runtime/desired.json`).
    pub cache: Option<PathBuf>,
    pub tick: Duration,
    /// The wall clock an ended instance's `finished_at` is stamped with.
    pub clock: fn() -> std::time::SystemTime,
}

pub enum RuntimeMsg {
    Reconcile,
    Snapshot(RpcReplyPort<RuntimeSnapshot>),
}

/// What the Runtime has done, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeSnapshot {
    /// Reconcile rounds since the actor started.
    pub rounds: u64,
    /// Instances it makes run (or tries to).
    pub desired: usize,
    /// Preparations (image pulls) still running.
    pub preparing: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug)]
struct HealthTrack {
    next: Instant,
    successes: u32,
    failures: u32,
    health: Health,
    /// The container the counters are about (a restart starts over).
    container: Option<String>,
}

/// An instance's preparation (image pull) running in the background.
struct Preparing {
    image: String,
    task: tokio::task::JoinHandle<Result<(), kat_runtime::RuntimeError>>,
}

pub struct RuntimeState {
    args: RuntimeArgs,
    myself: ActorRef<RuntimeMsg>,
    desired: Vec<DesiredInstance>,
    /// Assigned instances that cannot run as specified: their report (namespace,
    /// workload) and why.
    rejected: Vec<(InstanceReport, SpecError)>,
    rounds: u64,
    /// Preparations under way, by instance ID.
    preparing: HashMap<String, Preparing>,
    /// The image each instance was prepared with.
    prepared: HashMap<String, String>,
    /// When each instance was first seen ended (reported as `finished_at`).
    finished: HashMap<String, pbjson_types::Timestamp>,
    health: HashMap<String, HealthTrack>,
    announced: HashMap<String, Ensured>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeState {
    fn drop(&mut self) {
        self.watcher.abort();
        for p in self.preparing.values() {
            p.task.abort();
        }
    }
}

fn failed_report(e: &kat_runtime::RuntimeError) -> InstanceStatus {
    InstanceStatus {
        phase: InstancePhase::Failed.into(),
        reason: match e {
            kat_runtime::RuntimeError::ImagePull { .. } => "ImagePullFailed",
            _ => "StartFailed",
        }
        .to_owned(),
        message: e.to_string(),
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Runtime;

impl Runtime {
    pub fn name(node: &str) -> String {
        format!("runtime@{node}")
    }
}

fn read_cache(path: &PathBuf) -> Option<Vec<DesiredInstance>> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(list) => Some(list),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable instance cache; ignored");
            None
        }
    }
}

fn phase_of(phase: Phase) -> InstancePhase {
    match phase {
        Phase::Starting => InstancePhase::Starting,
        Phase::Running => InstancePhase::Running,
        Phase::Exited => InstancePhase::Succeeded,
        Phase::Failed => InstancePhase::Failed,
        Phase::Unknown => InstancePhase::Unspecified,
    }
}

fn health_of(h: Health) -> ProtoHealth {
    match h {
        Health::None => ProtoHealth::None,
        Health::Starting => ProtoHealth::Starting,
        Health::Healthy => ProtoHealth::Healthy,
        Health::Unhealthy => ProtoHealth::Unhealthy,
    }
}

/// A report of instance `d` with `status`.
fn report_of(d: &DesiredInstance, status: InstanceStatus) -> InstanceReport {
    InstanceReport {
        id: d.id().to_owned(),
        status: Some(status),
        namespace: d.opts.namespace.clone(),
        workload: d.opts.workload.clone(),
    }
}

impl RuntimeState {
    /// The desired set from the source when it knows one (cached to disk, and
    /// published as what runs), else the cache's.
    fn refresh_desired(&mut self) {
        let known = match self.args.source.clone() {
            DesiredSource::Assignments(ctx) => {
                let assigned = self.args.view.synced.borrow().assignments.clone();
                assigned.map(|assignments| self.instances_assigned(&assignments, &ctx))
            }
            DesiredSource::Given(cell) => cell.borrow().clone(),
        };
        if let Some(list) = known {
            if list != self.desired
                && let Some(path) = &self.args.cache
                && let Ok(json) = serde_json::to_vec_pretty(&list)
                && let Err(e) = crate::files::write_atomic(path, &json, 0o600)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the instance cache");
            }
            publish(&self.args.view.running, Some(list.clone()));
            self.desired = list;
        }
    }

    /// The instances `assignments` ask for; those that cannot run are kept as rejected.
    fn instances_assigned(
        &mut self,
        assignments: &[kat_proto::v1alpha1::Assignment],
        ctx: &SpecContext,
    ) -> Vec<DesiredInstance> {
        let (ok, bad) = kat_runtime::spec::desired_set(assignments, ctx);
        let owner = |id: &str| {
            assignments
                .iter()
                .filter_map(|a| a.instance.as_ref())
                .find(|i| i.id == id)
                .map(|i| (i.namespace.clone(), i.workload.clone()))
                .unwrap_or_default()
        };
        let mut rejected = Vec::new();
        for (id, e) in bad {
            if !self.rejected.iter().any(|(r, _)| r.id == id) {
                tracing::warn!(node = %self.args.node, instance = %id, error = %e, "assigned instance cannot run");
            }
            let (namespace, workload) = owner(&id);
            let report = InstanceReport {
                id,
                status: None,
                namespace,
                workload,
            };
            rejected.push((report, e));
        }
        self.rejected = rejected;
        ok
    }

    async fn reconcile(&mut self) {
        self.refresh_desired();
        self.forget_undesired_preparations();
        let node = self.args.node.clone();
        let host = self.args.host.clone();
        self.rounds += 1;
        let mut reports = Reports::new();
        for (rejected, e) in &self.rejected {
            let mut report = rejected.clone();
            report.status = Some(InstanceStatus {
                phase: InstancePhase::Failed.into(),
                reason: "InvalidSpec".to_owned(),
                message: e.to_string(),
                ..Default::default()
            });
            reports.insert(report.id.clone(), report);
        }
        let desired = self.desired.clone();
        for d in &desired {
            if let Some(status) = self.preparation(d).await {
                reports.insert(d.id().to_owned(), report_of(d, status));
                continue;
            }
            match host.ensure(d).await {
                Ok(how) => {
                    if self.announced.get(d.id()) != Some(&how) || how != Ensured::Adopted {
                        tracing::info!(%node, instance = %d.id(), outcome = ?how, "instance ensured");
                    }
                    self.announced.insert(d.id().to_owned(), how);
                    if how != Ensured::Adopted {
                        // Look again soon: a new unit is usually running within a
                        // second, and the report should not wait a whole tick.
                        self.myself
                            .send_after(Duration::from_secs(1), || RuntimeMsg::Reconcile);
                    }
                }
                Err(e) => {
                    tracing::warn!(%node, instance = %d.id(), error = %e, "cannot run instance");
                    reports.insert(d.id().to_owned(), report_of(d, failed_report(&e)));
                }
            }
        }
        if let Ok(present) = host.present().await {
            for id in present {
                if !self.desired.iter().any(|d| d.id() == id) {
                    match host.retire(&id).await {
                        Ok(()) => tracing::info!(%node, instance = %id, "instance retired"),
                        Err(e) => {
                            tracing::warn!(%node, instance = %id, error = %e, "cannot retire instance")
                        }
                    }
                    self.health.remove(&id);
                    self.announced.remove(&id);
                    self.prepared.remove(&id);
                    self.finished.remove(&id);
                }
            }
        }
        for d in &desired {
            if reports.contains_key(d.id()) {
                continue;
            }
            let obs = match host.observe(d).await {
                Ok(obs) => obs,
                Err(e) => {
                    let status = InstanceStatus {
                        phase: InstancePhase::Unspecified.into(),
                        message: e.to_string(),
                        ..Default::default()
                    };
                    reports.insert(d.id().to_owned(), report_of(d, status));
                    continue;
                }
            };
            let health = self.check_health(d, &obs).await;
            let finished_at = if matches!(obs.phase, Phase::Exited | Phase::Failed) {
                Some(
                    *self
                        .finished
                        .entry(d.id().to_owned())
                        .or_insert_with(|| kat_proto::timestamp((self.args.clock)())),
                )
            } else {
                self.finished.remove(d.id());
                None
            };
            let status = InstanceStatus {
                phase: phase_of(obs.phase).into(),
                health: health_of(health).into(),
                restarts: obs.restarts,
                exit_code: obs.exit_code.unwrap_or_default(),
                ip: obs.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                message: obs.message.clone(),
                finished_at,
                container_id: obs.container_id.clone().unwrap_or_default(),
                ..Default::default()
            };
            reports.insert(d.id().to_owned(), report_of(d, status));
        }
        // Only a change is published: the Heartbeat reports changes at once.
        publish(&self.args.view.reports, reports);
    }

    /// Whether the instance is ready to be ensured (`None`), or the report to give
    /// while its preparation runs or after it failed. Starts the preparation in the
    /// background when it is needed; its end triggers a reconcile.
    async fn preparation(&mut self, d: &DesiredInstance) -> Option<InstanceStatus> {
        let image = &d.opts.image;
        if self.prepared.get(d.id()) == Some(image) {
            return None;
        }
        let pulling = || InstanceStatus {
            phase: InstancePhase::Pulling.into(),
            reason: "Pulling".to_owned(),
            message: format!("getting image {image}"),
            ..Default::default()
        };
        match self.preparing.get(d.id()) {
            Some(p) if p.image == *image && !p.task.is_finished() => return Some(pulling()),
            Some(p) if p.image == *image => {
                let p = self.preparing.remove(d.id())?;
                return match p.task.await {
                    Ok(Ok(())) => {
                        self.prepared.insert(d.id().to_owned(), image.clone());
                        None
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(node = %self.args.node, instance = %d.id(), error = %e, "cannot prepare instance");
                        Some(failed_report(&e))
                    }
                    Err(e) => Some(InstanceStatus {
                        phase: InstancePhase::Failed.into(),
                        reason: "StartFailed".to_owned(),
                        message: format!("preparation ended: {e}"),
                        ..Default::default()
                    }),
                };
            }
            Some(p) => p.task.abort(),
            None => {}
        }
        let host = self.args.host.clone();
        let me = self.myself.clone();
        let instance = d.clone();
        let task = tokio::spawn(async move {
            let result = host.prepare(&instance).await;
            let _ = me.cast(RuntimeMsg::Reconcile);
            result
        });
        self.preparing.insert(
            d.id().to_owned(),
            Preparing {
                image: image.clone(),
                task,
            },
        );
        Some(pulling())
    }

    /// Drops preparations of instances no longer desired.
    fn forget_undesired_preparations(&mut self) {
        let desired = &self.desired;
        self.preparing.retain(|id, p| {
            let keep = desired.iter().any(|d| d.id() == id);
            if !keep {
                p.task.abort();
            }
            keep
        });
    }

    /// Runs the instance's health check if one is due; returns its health.
    async fn check_health(
        &mut self,
        d: &DesiredInstance,
        obs: &kat_runtime::host::Observation,
    ) -> Health {
        let Some(probe) = &d.health else {
            return Health::None;
        };
        if obs.phase != Phase::Running {
            self.health.remove(d.id());
            return Health::Starting;
        }
        let now = Instant::now();
        let track = self
            .health
            .entry(d.id().to_owned())
            .or_insert_with(|| HealthTrack {
                next: now + probe.initial_delay,
                successes: 0,
                failures: 0,
                health: Health::Starting,
                container: obs.container_id.clone(),
            });
        if track.container != obs.container_id {
            // A restarted container starts over.
            *track = HealthTrack {
                next: now + probe.initial_delay,
                successes: 0,
                failures: 0,
                health: Health::Starting,
                container: obs.container_id.clone(),
            };
        }
        if now < track.next {
            return track.health;
        }
        track.next = now + probe.period.max(Duration::from_millis(100));
        let ok = matches!(
            self.args.host.exec(d, &probe.command, probe.timeout).await,
            Ok(out) if out.exit_code == 0
        );
        let Some(track) = self.health.get_mut(d.id()) else {
            return Health::Starting;
        };
        if ok {
            track.successes += 1;
            track.failures = 0;
            if track.successes >= probe.success_threshold.max(1) && track.health != Health::Healthy
            {
                track.health = Health::Healthy;
                tracing::info!(node = %self.args.node, instance = %d.id(), "instance healthy");
            }
        } else {
            track.failures += 1;
            track.successes = 0;
            if track.failures >= probe.failure_threshold.max(1) && track.health != Health::Unhealthy
            {
                track.health = Health::Unhealthy;
                tracing::warn!(node = %self.args.node, instance = %d.id(), failures = track.failures, "instance unhealthy");
            }
        }
        track.health
    }
}

/// A subscription to the Runtime's source of desired instances.
enum SourceChanges {
    Assignments(tokio::sync::watch::Receiver<super::view::Synced>),
    Given(tokio::sync::watch::Receiver<Option<Vec<DesiredInstance>>>),
}

impl SourceChanges {
    /// Waits for the next change; `false` once the source is gone.
    async fn changed(&mut self) -> bool {
        match self {
            Self::Assignments(rx) => rx.changed().await.is_ok(),
            Self::Given(rx) => rx.changed().await.is_ok(),
        }
    }
}

impl Actor for Runtime {
    type Msg = RuntimeMsg;
    type State = RuntimeState;
    type Arguments = RuntimeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RuntimeMsg>,
        args: RuntimeArgs,
    ) -> Result<RuntimeState, ActorProcessingErr> {
        let known = match &args.source {
            DesiredSource::Assignments(_) => args.view.synced.borrow().assignments.is_some(),
            DesiredSource::Given(cell) => cell.borrow().is_some(),
        };
        let desired = if known {
            Vec::new()
        } else {
            let cached = args.cache.as_ref().and_then(read_cache).unwrap_or_default();
            if !cached.is_empty() {
                tracing::info!(node = %args.node, instances = cached.len(), "running the cached instances until the leader says otherwise");
            }
            cached
        };
        // Woken by its source only (never by what it publishes itself).
        let mut changes = match &args.source {
            DesiredSource::Assignments(_) => {
                SourceChanges::Assignments(args.view.synced.subscribe())
            }
            DesiredSource::Given(cell) => SourceChanges::Given(cell.subscribe()),
        };
        let me = myself.clone();
        let watcher = tokio::spawn(async move {
            while changes.changed().await && me.cast(RuntimeMsg::Reconcile).is_ok() {}
        });
        myself.send_interval(args.tick, || RuntimeMsg::Reconcile);
        let _ = myself.cast(RuntimeMsg::Reconcile);
        Ok(RuntimeState {
            args,
            myself: myself.clone(),
            desired,
            rejected: Vec::new(),
            rounds: 0,
            preparing: HashMap::new(),
            prepared: HashMap::new(),
            finished: HashMap::new(),
            health: HashMap::new(),
            announced: HashMap::new(),
            watcher,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RuntimeMsg>,
        msg: RuntimeMsg,
        state: &mut RuntimeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RuntimeMsg::Reconcile => state.reconcile().await,
            RuntimeMsg::Snapshot(reply) => {
                let preparing = state.preparing.values();
                let _ = reply.send(RuntimeSnapshot {
                    rounds: state.rounds,
                    desired: state.desired.len(),
                    preparing: preparing.filter(|p| !p.task.is_finished()).count(),
                });
            }
        }
        Ok(())
    }
}
