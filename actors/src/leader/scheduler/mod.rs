//! The scheduler (leader; SPEC §7, §8.4, §8.6): the [`Scheduler`] actor reads the
//! world from the store ([`world`]), plans every workload ([`workload`]: by kind,
//! [`service`], [`daemon`], [`jobs`], over the shared pieces of [`plan`] and the pure
//! placement of [`place`]), and writes each workload's changes in one fenced
//! transaction. Everything but the actor is pure and tested without a store.
//!
//! Rounds run when workloads, nodes or reported instance states change (debounced)
//! and every `agentTickSeconds` (node readiness changes with heartbeats).

pub mod daemon;
pub mod jobs;
pub mod place;
pub mod plan;
pub mod service;
pub mod workload;
pub mod world;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::{EventSeverity, InstancePhase};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};

pub use plan::{IdMaker, WorkloadPlan, demand_of, max_surge, node_info};
pub use workload::{plan_workload, plan_world};
pub use world::{World, read_world};

use crate::state::Leadership;
use crate::state::events::workload_event;
use crate::state::keys::{self, INSTANCE_STATUS_PREFIX, NODES_PREFIX, WORKLOADS_PREFIX};
use crate::state::workloads::quadlet_name;
use crate::store::TxnOp;

#[derive(Clone)]
pub struct SchedulerArgs {
    pub leadership: Leadership,
    pub settings: ClusterSettings,
    pub now: fn() -> SystemTime,
}

pub enum SchedulerMsg {
    /// Something changed (or the tick): run a round soon.
    Poke,
    Round,
}

pub struct SchedulerState {
    args: SchedulerArgs,
    /// `ns/name@generation` of the rollouts paused in the last round (so each pause
    /// is recorded once).
    paused: HashSet<String>,
    round_queued: bool,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SchedulerState {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Scheduler;

impl Scheduler {
    pub fn name(node: &str) -> String {
        format!("scheduler@{node}")
    }
}

/// Rounds start this long after the change that triggers them (a burst of changes
/// makes one round).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// A random number for an instance ID (the time's nanoseconds if no randomness can be
/// had).
fn random_instance_number() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u32::from_be_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos(),
    }
}

impl SchedulerState {
    async fn round(&mut self) -> Result<(), ActorProcessingErr> {
        let store = self.args.leadership.store.clone();
        let started = std::time::Instant::now();
        let world = read_world(store.as_ref()).await?;
        let now = (self.args.now)();
        let existing = world.instances.iter().map(|i| i.id.as_str());
        let mut unique = plan::UniqueIds::new(existing, random_instance_number);
        let plans = plan_world(&world, now, &mut || unique.next_id());
        let mut paused = HashSet::new();
        for (ns, name, mut plan) in plans {
            if let Some(why) = plan.paused.take() {
                let generation = world
                    .workloads
                    .iter()
                    .find(|q| quadlet_name(q) == (ns.clone(), name.clone()))
                    .and_then(|q| q.workload.as_ref()?.metadata.as_ref().map(|m| m.generation))
                    .unwrap_or_default();
                let key = format!("{ns}/{name}@{generation}");
                if !self.paused.contains(&key) {
                    tracing::warn!(namespace = %ns, workload = %name, %why, "rollout paused");
                    plan.events
                        .push(("RolloutPaused".to_owned(), EventSeverity::Warning, why));
                }
                paused.insert(key);
            }
            if plan.put.is_empty()
                && plan.delete.is_empty()
                && plan.events.is_empty()
                && plan.job_state.is_none()
            {
                continue;
            }
            self.write(&ns, &name, plan, now).await?;
        }
        self.paused = paused;
        let m = crate::metrics::global();
        m.observe(
            "kat_scheduler_round_seconds",
            "Scheduling rounds: read the world, plan, write the changes.",
            &[],
            started.elapsed(),
        );
        Ok(())
    }

    async fn write(
        &self,
        ns: &str,
        name: &str,
        plan: WorkloadPlan,
        now: SystemTime,
    ) -> Result<(), ActorProcessingErr> {
        let mut ops: Vec<TxnOp> = Vec::new();
        for i in &plan.delete {
            ops.push(TxnOp::delete(keys::instance(ns, name, &i.id)));
        }
        for i in &plan.put {
            ops.push(TxnOp::put(
                keys::instance(ns, name, &i.id),
                i.encode_to_vec(),
            ));
        }
        if let Some(job) = &plan.job_state {
            ops.push(TxnOp::put(keys::job(ns, name), job.encode_to_vec()));
        }
        let leadership = &self.args.leadership;
        if !plan.events.is_empty() {
            let lease = leadership.events.get(leadership.store()).await;
            for (reason, severity, message) in &plan.events {
                let event = workload_event(ns, name, reason, *severity, message.clone(), now);
                ops.push(event.put(lease));
            }
        }
        for chunk in ops.chunks(crate::store::MAX_TXN_OPS - 1) {
            leadership.commit([], chunk.to_vec()).await?;
        }
        tracing::info!(namespace = %ns, workload = %name, created_or_changed = plan.put.len(), removed = plan.delete.len(), "scheduled");
        let placed = plan.put.iter().filter(|i| {
            i.status
                .as_ref()
                .is_some_and(|s| s.phase() == InstancePhase::Scheduled)
        });
        crate::metrics::global().inc(
            "kat_scheduler_placements_total",
            "Instances placed on a node by the scheduler.",
            &[],
            placed.count() as f64,
        );
        Ok(())
    }
}

/// Pokes the scheduler at every change under `prefix`, for as long as it lives. A
/// watch that breaks (the store restarted, the watch fell behind) is opened again,
/// after a pause that grows to 10 s while it keeps failing, with a poke each time it
/// opens, since changes in between were missed.
async fn poke_on_changes(
    store: std::sync::Arc<dyn crate::store::StateStore>,
    prefix: &'static str,
    me: ActorRef<SchedulerMsg>,
) {
    let mut pause = Duration::from_millis(200);
    loop {
        match store.watch(prefix, 0).await {
            Ok(mut watch) => {
                if me.cast(SchedulerMsg::Poke).is_err() {
                    return;
                }
                loop {
                    match watch.recv().await {
                        Some(Ok(_)) => {
                            pause = Duration::from_millis(200);
                            if me.cast(SchedulerMsg::Poke).is_err() {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(prefix, error = %e, "scheduler's watch broke; opening it again");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(prefix, error = %e, "scheduler cannot watch; trying again");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let store = args.leadership.store.clone();
        let mut watchers = Vec::new();
        for prefix in [WORKLOADS_PREFIX, NODES_PREFIX, INSTANCE_STATUS_PREFIX] {
            watchers.push(tokio::spawn(poke_on_changes(
                store.clone(),
                prefix,
                myself.clone(),
            )));
        }
        let tick = args.settings.agent_tick;
        myself.send_interval(tick, || SchedulerMsg::Poke);
        let _ = myself.cast(SchedulerMsg::Poke);
        Ok(SchedulerState {
            args,
            paused: Default::default(),
            round_queued: false,
            watchers,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Poke => {
                if !state.round_queued {
                    state.round_queued = true;
                    myself.send_after(DEBOUNCE, || SchedulerMsg::Round);
                }
            }
            SchedulerMsg::Round => {
                state.round_queued = false;
                // A failed round is retried at the next change or tick.
                if let Err(e) = state.round().await {
                    tracing::warn!(error = %e, "scheduling round failed; retrying");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
