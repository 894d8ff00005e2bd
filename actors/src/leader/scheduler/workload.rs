//! Planning the whole world, one workload at a time: every workload's instances are
//! sorted into those that stay, those on lost nodes (replaced elsewhere) and those on
//! draining nodes, and handed to the planning of the workload's kind ([`super::service`],
//! [`super::daemon`], [`super::jobs`]) over one shared [`Snapshot`], so each workload
//! sees the room the ones before it took.

use std::collections::HashMap;
use std::time::SystemTime;

use kat_proto::v1alpha1::{
    EventSeverity, Instance, JobState, Quadlet, UpdateStrategyType, WorkloadType,
};

use super::daemon::plan_daemon;
use super::jobs::plan_job;
use super::place::{Demand, Snapshot};
use super::plan::{IdMaker, Subject, WorkloadPlan, demand_of, node_info};
use super::service::plan_service;
use super::world::World;
use crate::state::workloads::quadlet_name;

/// Decides what one workload's instances should become. `instances` are the
/// workload's (with reported statuses); `snapshot` has every placed instance counted
/// in and is updated with what this plan places and removes. Instances on a node that
/// is gone (not Ready) are replaced elsewhere, unless it is held in a disruption.
pub fn plan_workload(
    quadlet: &Quadlet,
    instances: &[Instance],
    job: Option<&JobState>,
    snapshot: &mut Snapshot,
    now: SystemTime,
    new_id: IdMaker<'_>,
) -> WorkloadPlan {
    let s = Subject::new(quadlet, now);
    let spec = &s.spec;
    let mut plan = WorkloadPlan::default();

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
        // A node held during a disruption keeps its instances (node_monitor), unless
        // the operator drains it.
        if i.node.is_empty() || node.is_some_and(|n| (n.ready || n.held) && !n.draining) {
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
        plan.remove(snapshot, &s.demand, i);
    }

    match spec.r#type() {
        WorkloadType::DaemonService => plan_daemon(&s, alive, snapshot, new_id, &mut plan),
        WorkloadType::Job => plan_job(&s, alive, job, snapshot, new_id, &mut plan),
        _ => plan_service(&s, alive, drained, snapshot, new_id, &mut plan),
    }
    plan
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
        if !plan.is_empty() {
            plans.push((ns, name, plan));
        }
    }
    plans
}
