//! The scheduler (leader; SPEC §7, §8.4, §8.6). [`place`] is the pure placement
//! function; [`plan_workload`] decides, purely, what a workload's instances should
//! become (create, place, replace, remove) given a snapshot; the [`Scheduler`] actor
//! feeds both from the store and writes each workload's changes in one fenced
//! transaction.
//!
//! Rounds run when workloads, nodes or reported instance states change (debounced)
//! and every `agentTickSeconds` (node readiness changes with heartbeats).

pub mod jobs;
pub mod place;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::instance_status::Health;
use kat_proto::v1alpha1::{
    ClusterConfiguration, DesiredState, EventSeverity, Instance, InstancePhase, InstanceStatus,
    JobState, Node, NodeState, NodeStatus, Quadlet, UpdateStrategyType, WorkloadSpec, WorkloadType,
};
use place::{DaemonFit, Demand, GpuNeed, NodeInfo, NodeTaint, Snapshot};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::api::user_api::NODES_PREFIX;
use crate::api::workloads::{
    INSTANCE_STATUS_PREFIX, INSTANCES_PREFIX, JOBS_PREFIX, WORKLOADS_PREFIX, instance_key, job_key,
    quadlet_name, workload_event,
};
use crate::election::Leadership;
use crate::leader::node_monitor::{EventLease, NODE_STATUS_PREFIX};
use crate::store::{StateStore, Txn, TxnOp};

/// What one instance of the workload asks of its node.
pub fn demand_of(ns: &str, name: &str, spec: &WorkloadSpec) -> Demand {
    let resources = spec
        .container
        .as_ref()
        .and_then(|c| c.resources.clone())
        .unwrap_or_default();
    let requests = resources.requests.unwrap_or_default();
    let cpu = kat_proto::quantity::parse_cpu_millis(&requests.cpu).unwrap_or(0);
    let memory = kat_proto::quantity::parse_memory_bytes(&requests.memory).unwrap_or(0);
    Demand {
        workload: format!("{ns}/{name}"),
        cpu_millis: i64::try_from(cpu).unwrap_or(i64::MAX),
        memory_bytes: i64::try_from(memory).unwrap_or(i64::MAX),
        gpu: resources
            .gpu
            .filter(|g| g.driver() != kat_proto::v1alpha1::GpuDriver::Unspecified)
            .map(|g| GpuNeed {
                driver: g.driver(),
                min_vram_mb: g.min_vram_mb,
            }),
        node_selector: spec
            .node_selector
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tolerations: spec.tolerations.clone(),
    }
}

/// A node as the scheduler sees it, before instances are counted in.
pub fn node_info(node: &Node, status: Option<&NodeStatus>) -> NodeInfo {
    let meta = node.metadata.clone().unwrap_or_default();
    let spec = node.spec.clone().unwrap_or_default();
    let alloc = spec
        .allocatable
        .clone()
        .or(spec.capacity.clone())
        .unwrap_or_default();
    NodeInfo {
        name: meta.name,
        ready: status.is_some_and(|s| s.state() == NodeState::Ready),
        unschedulable: spec.unschedulable || spec.draining,
        draining: spec.draining,
        labels: meta.labels.into_iter().collect(),
        taints: spec
            .taints
            .iter()
            .map(|t| NodeTaint {
                key: t.key.clone(),
                value: t.value.clone(),
                effect: t.effect(),
            })
            .collect(),
        cpu_millis: alloc.cpu_millis,
        memory_bytes: alloc.memory_bytes,
        gpus: alloc.gpus,
        ..Default::default()
    }
}

/// `maxSurge` of `replicas`: an integer, or a percentage rounded up; at least 1.
pub fn max_surge(text: &str, replicas: u32) -> u32 {
    let text = text.trim();
    let n = if let Some(p) = text.strip_suffix('%') {
        let p: u64 = p.trim().parse().unwrap_or(25);
        u32::try_from((u64::from(replicas) * p).div_ceil(100)).unwrap_or(u32::MAX)
    } else {
        text.parse().unwrap_or(1)
    };
    n.max(1)
}

/// What should happen to a workload's instances.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadPlan {
    /// Instances to write (new ones, newly placed ones, changed pending reasons).
    pub put: Vec<Instance>,
    /// Instances to remove (their nodes stop them).
    pub delete: Vec<Instance>,
    /// Events to record: (reason, severity, message).
    pub events: Vec<(String, EventSeverity, String)>,
    /// A JOB's new progress, to store.
    pub job_state: Option<JobState>,
    /// A rolling update waiting on a new instance past [`ROLLOUT_DEADLINE`]: why. No
    /// new instances are started while it stays so (the Scheduler records one
    /// `RolloutPaused` event when it starts).
    pub paused: Option<String>,
}

/// How long a new instance of a rolling update may take to become ready before the
/// rollout pauses (SPEC §8.6).
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(300);

/// The reason a rolling update is paused, if it is: some instance of the new
/// generation has not become ready within [`ROLLOUT_DEADLINE`] of its creation.
pub fn rollout_stuck<'a>(
    current: impl IntoIterator<Item = &'a Instance>,
    now: SystemTime,
) -> Option<String> {
    let stuck: Vec<String> = current
        .into_iter()
        .filter(|i| !ready(i))
        .filter(|i| {
            i.created_at.as_ref().is_some_and(|t| {
                let created = std::time::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0));
                now.duration_since(created)
                    .is_ok_and(|age| age >= ROLLOUT_DEADLINE)
            })
        })
        .map(|i| {
            let why = i.status.as_ref().map_or_else(String::new, |s| {
                let reason = if s.reason.is_empty() {
                    s.phase().as_str_name().to_owned()
                } else {
                    s.reason.clone()
                };
                format!(" ({reason})")
            });
            format!("{}{why}", i.id)
        })
        .collect();
    (!stuck.is_empty()).then(|| {
        format!(
            "rollout paused: {} not ready after {} min; apply a fixed spec or katcall rollback",
            stuck.join(", "),
            ROLLOUT_DEADLINE.as_secs() / 60
        )
    })
}

/// Running, and healthy where a health check says so.
pub fn ready(i: &Instance) -> bool {
    i.status.as_ref().is_some_and(|s| {
        s.phase() == InstancePhase::Running
            && !matches!(s.health(), Health::Starting | Health::Unhealthy)
    })
}

/// Which of `candidates` to remove first: pending ones, then not ready ones, then the
/// newest.
fn removal_order(candidates: &mut [Instance]) {
    candidates.sort_by(|a, b| {
        let rank = |i: &Instance| (!i.node.is_empty(), ready(i));
        rank(a)
            .cmp(&rank(b))
            .then_with(|| {
                b.created_at
                    .map(|t| (t.seconds, t.nanos))
                    .cmp(&a.created_at.map(|t| (t.seconds, t.nanos)))
            })
            .then_with(|| b.id.cmp(&a.id))
    });
}

/// Makes a new instance ID.
pub type IdMaker<'a> = &'a mut dyn FnMut() -> String;

pub(crate) fn new_instance(
    ns: &str,
    name: &str,
    generation: i64,
    now: SystemTime,
    id: String,
) -> Instance {
    Instance {
        id,
        namespace: ns.to_owned(),
        workload: name.to_owned(),
        generation,
        desired_state: DesiredState::Run.into(),
        created_at: Some(kat_proto::timestamp(now)),
        status: Some(InstanceStatus {
            phase: InstancePhase::Pending.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Decides what one workload's instances should become. `instances` are the
/// workload's (with reported statuses); `snapshot` has every placed instance counted
/// in and is updated with what this plan places and removes; `lost` says whether a
/// node is gone (not Ready): its instances are replaced elsewhere.
pub fn plan_workload(
    quadlet: &Quadlet,
    instances: &[Instance],
    job: Option<&JobState>,
    snapshot: &mut Snapshot,
    now: SystemTime,
    new_id: IdMaker<'_>,
) -> WorkloadPlan {
    let (ns, name) = quadlet_name(quadlet);
    let workload = quadlet.workload.clone().unwrap_or_default();
    let spec = workload.spec.clone().unwrap_or_default();
    let generation = workload.metadata.as_ref().map_or(0, |m| m.generation);
    let demand = demand_of(&ns, &name, &spec);
    let mut plan = WorkloadPlan::default();
    let remove = |plan: &mut WorkloadPlan, snapshot: &mut Snapshot, i: Instance| {
        if !i.node.is_empty() {
            snapshot.remove(&i.node, &demand, None);
        }
        plan.delete.push(i);
    };

    // Instances on nodes that are gone are replaced elsewhere. Those on a draining
    // node of a ROLLING service move like an update: they stay until replacements
    // elsewhere are ready, within maxSurge (SPEC §6).
    let rolling_service = matches!(
        spec.r#type(),
        WorkloadType::Service | WorkloadType::Unspecified
    ) && spec
        .update_strategy
        .as_ref()
        .is_none_or(|u| u.r#type() != UpdateStrategyType::Simultaneous);
    let mut alive = Vec::new();
    let mut lost = Vec::new();
    let mut drained = Vec::new();
    for i in instances {
        let node = snapshot.node(&i.node);
        if i.node.is_empty() || node.is_some_and(|n| n.ready && !n.draining) {
            alive.push(i.clone());
        } else if rolling_service && node.is_some_and(|n| n.ready) {
            drained.push(i.clone());
        } else {
            lost.push(i.clone());
        }
    }
    if !lost.is_empty() && spec.r#type() != WorkloadType::DaemonService {
        let names: Vec<String> = lost
            .iter()
            .map(|i| format!("{} on {}", i.id, i.node))
            .collect();
        plan.events.push((
            "InstancesRescheduled".to_owned(),
            EventSeverity::Warning,
            format!("node lost or drained; replacing {}", names.join(", ")),
        ));
    }
    for i in lost {
        remove(&mut plan, snapshot, i);
    }

    match spec.r#type() {
        WorkloadType::DaemonService => {
            let strategy = spec.update_strategy.clone().unwrap_or_default();
            let rolling = strategy.r#type() != UpdateStrategyType::Simultaneous;
            let surge = rolling.then(|| {
                let eligible = u32::try_from(snapshot.nodes().len()).unwrap_or(u32::MAX);
                let text = if strategy.max_surge.is_empty() {
                    "1"
                } else {
                    strategy.max_surge.as_str()
                };
                max_surge(text, eligible)
            });
            plan_daemon(
                &ns, &name, generation, &demand, alive, surge, snapshot, now, new_id, &mut plan,
            );
            return plan;
        }
        WorkloadType::Job => {
            jobs::plan_job(
                quadlet, generation, &demand, alive, job, snapshot, now, new_id, &mut plan,
            );
            return plan;
        }
        _ => {}
    }

    let replicas = u32::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let rolling = spec
        .update_strategy
        .as_ref()
        .is_none_or(|u| u.r#type() != UpdateStrategyType::Simultaneous);
    let surge = max_surge(
        spec.update_strategy
            .as_ref()
            .map_or("1", |u| u.max_surge.as_str()),
        replicas,
    );
    let (mut current, mut old): (Vec<Instance>, Vec<Instance>) =
        alive.into_iter().partition(|i| i.generation == generation);
    let moving: std::collections::HashSet<String> = drained.iter().map(|i| i.id.clone()).collect();
    old.extend(drained);

    // Too many of the current generation: remove the extras.
    if current.len() > replicas as usize {
        removal_order(&mut current);
        let extra = current.len() - replicas as usize;
        let ids: Vec<String> = current[..extra].iter().map(|i| i.id.clone()).collect();
        plan.events.push((
            "ScaledDown".to_owned(),
            EventSeverity::Normal,
            format!("removing {}", ids.join(", ")),
        ));
        for i in current.drain(..extra) {
            remove(&mut plan, snapshot, i);
        }
    }
    // Old generations: all at once (SIMULTANEOUS), or as new ones become ready.
    let keep_old = if rolling {
        let ready_current = current.iter().filter(|i| ready(i)).count();
        (replicas as usize).saturating_sub(ready_current)
    } else {
        0
    };
    if old.len() > keep_old {
        removal_order(&mut old);
        let n = old.len() - keep_old;
        let (moved, replaced): (Vec<&Instance>, Vec<&Instance>) =
            old[..n].iter().partition(|i| moving.contains(&i.id));
        let ids = |list: &[&Instance]| {
            list.iter()
                .map(|i| format!("{} on {}", i.id, i.node))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !replaced.is_empty() {
            plan.events.push((
                "Replaced".to_owned(),
                EventSeverity::Normal,
                format!("generation {generation} replaces {}", ids(&replaced)),
            ));
        }
        if !moved.is_empty() {
            plan.events.push((
                "InstancesMoved".to_owned(),
                EventSeverity::Normal,
                format!(
                    "node draining; replacements ready elsewhere, removing {}",
                    ids(&moved)
                ),
            ));
        }
        for i in old.drain(..n) {
            remove(&mut plan, snapshot, i);
        }
    }
    // Missing ones of the current generation, within the surge while old ones remain;
    // none while the rollout is paused on a new instance that never became ready.
    let missing = (replicas as usize).saturating_sub(current.len());
    if rolling && !old.is_empty() {
        plan.paused = rollout_stuck(&current, now);
    }
    let room = if plan.paused.is_some() {
        0
    } else if rolling && !old.is_empty() {
        (replicas + surge) as usize - (current.len() + old.len()).min((replicas + surge) as usize)
    } else {
        missing
    };
    for _ in 0..missing.min(room) {
        current.push(new_instance(&ns, &name, generation, now, new_id()));
    }
    place_pending(&demand, current, snapshot, &mut plan);
    plan
}

/// Places the unplaced ones among `instances` (in ID order); records changed ones.
pub(crate) fn place_pending(
    demand: &Demand,
    mut instances: Vec<Instance>,
    snapshot: &mut Snapshot,
    plan: &mut WorkloadPlan,
) {
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances.retain(|i| i.node.is_empty());
    let mut placed = Vec::new();
    let mut pending_reason = None;
    let results = snapshot.place_many(demand, instances.len());
    for (mut i, result) in instances.into_iter().zip(results) {
        match result {
            Ok(p) => {
                i.node = p.node.clone();
                i.status = Some(InstanceStatus {
                    phase: InstancePhase::Scheduled.into(),
                    ..Default::default()
                });
                placed.push(format!("{} on {}", i.id, p.node));
                plan.put.push(i);
            }
            Err(why) => {
                let status = i.status.get_or_insert_with(Default::default);
                if status.reason != why.0 {
                    status.set_phase(InstancePhase::Pending);
                    status.reason = why.0.clone();
                    plan.put.push(i);
                    pending_reason = Some(why.0);
                }
            }
        }
    }
    if !placed.is_empty() {
        plan.events.push((
            "Scheduled".to_owned(),
            EventSeverity::Normal,
            format!("placed {}", placed.join(", ")),
        ));
    }
    if let Some(reason) = pending_reason {
        plan.events.push((
            "FailedScheduling".to_owned(),
            EventSeverity::Warning,
            reason,
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_daemon(
    ns: &str,
    name: &str,
    generation: i64,
    demand: &Demand,
    alive: Vec<Instance>,
    surge: Option<u32>,
    snapshot: &mut Snapshot,
    now: SystemTime,
    new_id: IdMaker<'_>,
    plan: &mut WorkloadPlan,
) {
    let mut by_node: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    for i in alive {
        by_node.entry(i.node.clone()).or_default().push(i);
    }
    // ROLLING (`surge: Some(n)`): at most n nodes at a time have their old instance
    // replaced by a new one that is not ready yet; the others keep the old one until
    // their turn. SIMULTANEOUS: every node at once.
    let updating: Vec<&Instance> = by_node
        .iter()
        .filter(|(node, _)| !node.is_empty())
        .filter_map(|(_, here)| here.iter().find(|i| i.generation == generation))
        .filter(|i| !ready(i))
        .collect();
    let old_left = by_node
        .values()
        .flatten()
        .any(|i| i.generation != generation);
    if surge.is_some() && old_left {
        plan.paused = rollout_stuck(updating.iter().copied(), now);
    }
    let mut budget = match (surge, &plan.paused) {
        (_, Some(_)) => 0,
        (Some(n), None) => (n as usize).saturating_sub(updating.len()),
        (None, None) => usize::MAX,
    };
    // Unplaced daemon instances are not kept: each round decides per node.
    for i in by_node.remove("").unwrap_or_default() {
        plan.delete.push(i);
    }
    let nodes: Vec<String> = snapshot.nodes().iter().map(|n| n.name.clone()).collect();
    let mut placed = Vec::new();
    let mut no_room = Vec::new();
    for node in nodes {
        let mut here = by_node.remove(&node).unwrap_or_default();
        // Judge the node without this workload's own instances there.
        for _ in &here {
            snapshot.remove(&node, demand, None);
        }
        let fit = snapshot.daemon_fit(&node, demand);
        let keep_current = matches!(fit, DaemonFit::Fits(_) | DaemonFit::NoRoom(_));
        here.sort_by(|a, b| a.id.cmp(&b.id));
        let has_current = keep_current && here.iter().any(|i| i.generation == generation);
        // An old instance waits for its node's turn (the node stays eligible).
        let wait_turn = keep_current
            && !has_current
            && here.iter().any(|i| i.generation != generation)
            && budget == 0;
        let mut kept = false;
        for i in here {
            let keep = if has_current {
                !kept && i.generation == generation
            } else {
                wait_turn && !kept
            };
            if keep {
                kept = true;
                snapshot.add(&node, demand, None);
            } else {
                plan.delete.push(i);
            }
        }
        if kept {
            continue;
        }
        if matches!(fit, DaemonFit::Fits(_)) && plan.delete.iter().any(|d| d.node == node) {
            // This node's turn: its old instance goes, a new one comes.
            budget = budget.saturating_sub(1);
        }
        match fit {
            DaemonFit::Fits(gpu) => {
                let mut i = new_instance(ns, name, generation, now, new_id());
                i.node = node.clone();
                i.status = Some(InstanceStatus {
                    phase: InstancePhase::Scheduled.into(),
                    ..Default::default()
                });
                snapshot.add(&node, demand, gpu);
                placed.push(format!("{} on {node}", i.id));
                plan.put.push(i);
            }
            DaemonFit::NoRoom(why) => no_room.push(format!("{node}: {why}")),
            DaemonFit::NotEligible => {}
        }
    }
    if !placed.is_empty() {
        plan.events.push((
            "Scheduled".to_owned(),
            EventSeverity::Normal,
            format!("placed {}", placed.join(", ")),
        ));
    }
    if !no_room.is_empty() {
        plan.events.push((
            "FailedScheduling".to_owned(),
            EventSeverity::Warning,
            no_room.join("; "),
        ));
    }
}

/// Everything a round needs, read from the store.
#[derive(Debug, Default)]
pub struct World {
    pub workloads: Vec<Quadlet>,
    /// Every instance, with the status its node reported (else its own).
    pub instances: Vec<Instance>,
    pub nodes: Vec<(Node, Option<NodeStatus>)>,
    /// JOB progress, by `ns/name`.
    pub jobs: HashMap<String, JobState>,
}

/// Reads the world.
pub async fn read_world(store: &dyn StateStore) -> Result<World, crate::store::StoreError> {
    let (w, _) = store.list(WORKLOADS_PREFIX).await?;
    let (i, _) = store.list(INSTANCES_PREFIX).await?;
    let (s, _) = store.list(INSTANCE_STATUS_PREFIX).await?;
    let (n, _) = store.list(NODES_PREFIX).await?;
    let (ns, _) = store.list(NODE_STATUS_PREFIX).await?;
    let (j, _) = store.list(JOBS_PREFIX).await?;
    let reported: HashMap<String, InstanceStatus> = s
        .iter()
        .filter_map(|kv| {
            let id = kv.key.rsplit('/').next()?.to_owned();
            Some((id, InstanceStatus::decode(kv.value.as_slice()).ok()?))
        })
        .collect();
    let statuses: HashMap<String, NodeStatus> = ns
        .iter()
        .filter_map(|kv| {
            let name = kv.key.strip_prefix(NODE_STATUS_PREFIX)?.to_owned();
            Some((name, NodeStatus::decode(kv.value.as_slice()).ok()?))
        })
        .collect();
    Ok(World {
        workloads: w
            .iter()
            .filter_map(|kv| Quadlet::decode(kv.value.as_slice()).ok())
            .collect(),
        instances: i
            .iter()
            .filter_map(|kv| Instance::decode(kv.value.as_slice()).ok())
            .map(|mut inst| {
                if let Some(s) = reported.get(&inst.id) {
                    inst.status = Some(s.clone());
                }
                inst
            })
            .collect(),
        jobs: j
            .iter()
            .filter_map(|kv| {
                let key = kv.key.strip_prefix(JOBS_PREFIX)?.to_owned();
                Some((key, JobState::decode(kv.value.as_slice()).ok()?))
            })
            .collect(),
        nodes: n
            .iter()
            .filter_map(|kv| Node::decode(kv.value.as_slice()).ok())
            .map(|node| {
                let name = node
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let status = statuses.get(&name).cloned();
                (node, status)
            })
            .collect(),
    })
}

/// Plans every workload of `world`; returns each workload's (namespace, name, plan).
pub fn plan_world(
    world: &World,
    now: SystemTime,
    new_id: IdMaker<'_>,
) -> Vec<(String, String, WorkloadPlan)> {
    let demands: HashMap<String, Demand> = world
        .workloads
        .iter()
        .map(|q| {
            let (ns, name) = quadlet_name(q);
            let spec = q
                .workload
                .as_ref()
                .and_then(|w| w.spec.clone())
                .unwrap_or_default();
            (format!("{ns}/{name}"), demand_of(&ns, &name, &spec))
        })
        .collect();
    let mut snapshot = Snapshot::new(
        world
            .nodes
            .iter()
            .map(|(n, s)| node_info(n, s.as_ref()))
            .collect(),
    );
    let mut by_workload: HashMap<String, Vec<Instance>> = HashMap::new();
    for i in &world.instances {
        let key = format!("{}/{}", i.namespace, i.workload);
        if !i.node.is_empty()
            && let Some(d) = demands.get(&key)
        {
            snapshot.add(&i.node, d, None);
        }
        by_workload.entry(key).or_default().push(i.clone());
    }
    let mut plans = Vec::new();
    let mut order: Vec<&Quadlet> = world.workloads.iter().collect();
    order.sort_by_key(|q| quadlet_name(q));
    for q in order {
        let (ns, name) = quadlet_name(q);
        let mine = by_workload
            .remove(&format!("{ns}/{name}"))
            .unwrap_or_default();
        let job = world.jobs.get(&format!("{ns}/{name}"));
        let plan = plan_workload(q, &mine, job, &mut snapshot, now, new_id);
        if !plan.put.is_empty()
            || !plan.delete.is_empty()
            || !plan.events.is_empty()
            || plan.job_state.is_some()
            || plan.paused.is_some()
        {
            plans.push((ns, name, plan));
        }
    }
    plans
}

#[derive(Clone)]
pub struct SchedulerArgs {
    pub leadership: Leadership,
    pub cluster: ClusterConfiguration,
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
    paused: std::collections::HashSet<String>,
    events: EventLease,
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

fn new_instance_id() -> String {
    crate::pki::tokens::random_hex(4).unwrap_or_else(|_| {
        format!(
            "{:08x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
        )
    })
}

impl SchedulerState {
    async fn round(&mut self) -> Result<(), ActorProcessingErr> {
        let store = self.args.leadership.store.clone();
        let started = std::time::Instant::now();
        let world = read_world(store.as_ref()).await?;
        let now = (self.args.now)();
        let mut ids = new_instance_id;
        let plans = plan_world(&world, now, &mut ids);
        let mut paused = std::collections::HashSet::new();
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
            self.write(store.as_ref(), &ns, &name, plan, now).await?;
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
        store: &dyn StateStore,
        ns: &str,
        name: &str,
        plan: WorkloadPlan,
        now: SystemTime,
    ) -> Result<(), ActorProcessingErr> {
        let mut ops: Vec<TxnOp> = Vec::new();
        for i in &plan.delete {
            ops.push(TxnOp::delete(instance_key(ns, name, &i.id)));
        }
        for i in &plan.put {
            ops.push(TxnOp::put(instance_key(ns, name, &i.id), i.encode_to_vec()));
        }
        if let Some(job) = &plan.job_state {
            ops.push(TxnOp::put(job_key(ns, name), job.encode_to_vec()));
        }
        if !plan.events.is_empty() {
            let lease = self.events.get(store).await;
            for (reason, severity, message) in &plan.events {
                let (key, event) =
                    workload_event(ns, name, reason, *severity, message.clone(), now);
                ops.push(TxnOp::put_leased(key, event.encode_to_vec(), lease));
            }
        }
        for chunk in ops.chunks(crate::store::MAX_TXN_OPS - 1) {
            let txn = Txn::new()
                .when([self.args.leadership.key.fence()])
                .and_then(chunk.to_vec());
            if !store.txn(txn).await?.succeeded {
                return Err("no longer the leader".into());
            }
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
            let mut watch = store.watch(prefix, 0).await?;
            let me = myself.clone();
            watchers.push(tokio::spawn(async move {
                while let Some(Ok(_)) = watch.recv().await {
                    if me.cast(SchedulerMsg::Poke).is_err() {
                        return;
                    }
                }
            }));
        }
        let spec = args.cluster.spec.clone().unwrap_or_default();
        let tick = Duration::from_secs(u64::from(spec.agent_tick_seconds.max(1)));
        myself.send_interval(tick, || SchedulerMsg::Poke);
        let _ = myself.cast(SchedulerMsg::Poke);
        Ok(SchedulerState {
            args,
            paused: Default::default(),
            events: EventLease::default(),
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
