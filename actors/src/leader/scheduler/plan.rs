//! What a plan is made of, and the pieces every kind of workload's planning shares:
//! what one instance asks of a node, how a node looks to the scheduler, new instances,
//! placing the pending ones, the order instances go in, `maxSurge`.

use std::collections::HashSet;
use std::time::SystemTime;

use kat_proto::v1alpha1::{
    DesiredState, EventSeverity, Instance, InstancePhase, InstanceStatus, JobState, Node,
    NodeState, NodeStatus, Quadlet, WorkloadSpec,
};

use super::place::{Demand, GpuNeed, NodeInfo, NodeTaint, Snapshot};
use crate::state::instances::ready;
use crate::state::workloads::quadlet_name;

/// The workload a plan is made for, read once from its Quadlet.
pub struct Subject<'q> {
    pub quadlet: &'q Quadlet,
    pub ns: String,
    pub name: String,
    pub generation: i64,
    pub spec: WorkloadSpec,
    /// What each of its instances asks of a node.
    pub demand: Demand,
    pub now: SystemTime,
}

impl<'q> Subject<'q> {
    pub fn new(quadlet: &'q Quadlet, now: SystemTime) -> Self {
        let (ns, name) = quadlet_name(quadlet);
        let workload = quadlet.workload.clone().unwrap_or_default();
        let spec = workload.spec.unwrap_or_default();
        let generation = workload.metadata.as_ref().map_or(0, |m| m.generation);
        let demand = demand_of(&ns, &name, &spec);
        Self {
            quadlet,
            ns,
            name,
            generation,
            spec,
            demand,
            now,
        }
    }

    /// A new instance of the current generation (not placed yet).
    pub fn new_instance(&self, id: String) -> Instance {
        new_instance(&self.ns, &self.name, self.generation, self.now, id)
    }
}

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
        held: status.is_some_and(|s| {
            s.state() != NodeState::Ready && crate::leader::node_monitor::disrupted(s)
        }),
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
    /// A rolling update waiting on a new instance past
    /// [`crate::state::workloads::ROLLOUT_DEADLINE`]: why. No
    /// new instances are started while it stays so (the Scheduler records one
    /// `RolloutPaused` event when it starts).
    pub paused: Option<String>,
}

/// Which of `candidates` to remove first: pending ones, then not ready ones, then the
/// newest.
pub fn removal_order(candidates: &mut [Instance]) {
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

/// Instance IDs that no instance has yet: 8 hex digits of a number drawn from `random`,
/// drawn again on a collision with an existing instance or an ID made before. An ID
/// names an instance across the cluster (`katcall logs ID`, a node's status keys), and
/// random 32-bit IDs collide among a million instances (about a hundred pairs), so
/// uniqueness is checked, not hoped for. The numbers are kept, not the strings: a round
/// may hold a million. The set is built on the first draw, so a round that makes no
/// instance (the steady state) does not build it.
pub struct UniqueIds<I, R> {
    existing: Option<I>,
    taken: HashSet<u32>,
    random: R,
}

impl<'a, I: Iterator<Item = &'a str>, R: FnMut() -> u32> UniqueIds<I, R> {
    pub fn new(existing: impl IntoIterator<IntoIter = I>, random: R) -> Self {
        Self {
            existing: Some(existing.into_iter()),
            taken: HashSet::new(),
            random,
        }
    }

    pub fn next_id(&mut self) -> String {
        if let Some(existing) = self.existing.take() {
            // An ID that is not 8 hex digits cannot equal one made here.
            let number = |id: &str| (id.len() == 8).then(|| u32::from_str_radix(id, 16).ok());
            self.taken = existing.filter_map(number).flatten().collect();
        }
        loop {
            let n = (self.random)();
            if self.taken.insert(n) {
                return format!("{n:08x}");
            }
        }
    }
}

pub fn new_instance(
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

/// Places the unplaced ones among `instances` (in ID order); records changed ones.
pub fn place_pending(
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

impl WorkloadPlan {
    /// Whether the plan changes or records anything.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty()
            && self.delete.is_empty()
            && self.events.is_empty()
            && self.job_state.is_none()
            && self.paused.is_none()
    }

    /// Removes `i` (its node stops it), taking it out of `snapshot`.
    pub fn remove(&mut self, snapshot: &mut Snapshot, demand: &Demand, i: Instance) {
        if !i.node.is_empty() {
            snapshot.remove(&i.node, demand, None);
        }
        self.delete.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_never_repeat_an_existing_or_earlier_one() {
        let mut draws = [0xa, 0xb, 0xa, 0xb, 0xc, 0xc, 0xd].into_iter();
        let existing = ["0000000b", "web-1"];
        let mut ids = UniqueIds::new(existing, move || draws.next().unwrap_or_default());
        assert_eq!(ids.next_id(), "0000000a");
        assert_eq!(
            ids.next_id(),
            "0000000c",
            "0000000b exists and 0000000a was made: both drawn again"
        );
        assert_eq!(ids.next_id(), "0000000d");
    }
}
