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
use crate::state::instances::ready;
use crate::state::workloads::quadlet_name;

/// Decides what one workload's instances should become. `instances` are the
/// workload's (with reported statuses); `snapshot` has every placed instance counted
/// in and is updated with what this plan places and removes. Instances on a node that
/// is lost (not Ready, and not held in a disruption) are replaced elsewhere and kept
/// there until it returns or is deleted (`Instance.node_lost`).
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

    // Instances on lost nodes are replaced elsewhere (and kept there, marked). Those on
    // a draining node of a ROLLING service move like an update: they stay until
    // replacements elsewhere are ready, within maxSurge (SPEC §6).
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
    let mut returned = Vec::new();
    let mut moved = Vec::new();
    for i in instances {
        let node = snapshot.node(&i.node);
        if i.node_lost && node.is_some_and(|n| n.ready) {
            returned.push(i.clone());
        } else if i.node_lost {
            // Still lost (or its node held since): stays marked, not counted.
            lost.push(i.clone());
        } else if i.node.is_empty() || node.is_some_and(|n| (n.ready || n.held) && !n.draining) {
            // A node held during a disruption keeps its instances (node_monitor),
            // unless the operator drains it.
            alive.push(i.clone());
        } else if node.is_some_and(|n| n.ready) {
            // Draining: a ROLLING service's move like an update; others' at once.
            if rolling_service {
                drained.push(i.clone());
            } else {
                moved.push(i.clone());
            }
        } else {
            lost.push(i.clone());
        }
    }
    // Back from a lost node: retired where the replacements are ready, else counted
    // again (the usual scale-down then removes the extras, pending ones first).
    let ready_now = alive
        .iter()
        .filter(|i| i.generation == s.generation && ready(i))
        .count();
    let replicas = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let retire = matches!(
        spec.r#type(),
        WorkloadType::Service | WorkloadType::Unspecified
    ) && ready_now >= replicas;
    for mut i in returned {
        if retire {
            plan.events.push((
                "InstanceRetired".to_owned(),
                EventSeverity::Normal,
                format!(
                    "{} on {}: its node is back, and its replacement runs",
                    i.id, i.node
                ),
            ));
            plan.remove(snapshot, &s.demand, i);
            continue;
        }
        i.node_lost = false;
        let draining = snapshot.node(&i.node).is_some_and(|n| n.draining);
        if !draining {
            plan.put.push(i.clone());
            alive.push(i);
        } else if rolling_service {
            plan.put.push(i.clone());
            drained.push(i);
        } else {
            moved.push(i);
        }
    }
    // On a lost node: a JOB's runs are run again elsewhere (removed here: a job run
    // must not run twice); a SERVICE's and a DAEMON_SERVICE's instances stay assigned
    // there, marked and not counted, and a SERVICE gets replacements. The node's own
    // record gone: they go too.
    let mut newly_lost = Vec::new();
    for i in moved {
        newly_lost.push(format!("{} on {}", i.id, i.node));
        plan.remove(snapshot, &s.demand, i);
    }
    for i in lost {
        let gone = snapshot.node(&i.node).is_none();
        if gone || spec.r#type() == WorkloadType::Job {
            newly_lost.push(format!("{} on {}", i.id, i.node));
            plan.remove(snapshot, &s.demand, i);
        } else if !i.node_lost {
            newly_lost.push(format!("{} on {}", i.id, i.node));
            let mut marked = i;
            marked.node_lost = true;
            plan.put.push(marked);
        }
    }
    if !newly_lost.is_empty() && spec.r#type() != WorkloadType::DaemonService {
        plan.events.push((
            "InstancesRescheduled".to_owned(),
            EventSeverity::Warning,
            format!(
                "node lost or drained; replacing {} (kept on a lost node until it returns)",
                newly_lost.join(", ")
            ),
        ));
    }

    match spec.r#type() {
        WorkloadType::DaemonService => plan_daemon(&s, alive, snapshot, new_id, &mut plan),
        WorkloadType::Job => plan_job(&s, alive, job, snapshot, new_id, &mut plan),
        _ => plan_service(&s, alive, drained, snapshot, new_id, &mut plan),
    }
    // An instance back from a lost node is un-marked above and may then be removed
    // by the planning of its kind (a new generation, a node no longer eligible): the
    // removal wins. etcd refuses a transaction that writes one key twice, and a
    // refused write would stop this and every later workload's scheduling.
    let deleted: std::collections::HashSet<&str> =
        plan.delete.iter().map(|i| i.id.as_str()).collect();
    let kept: Vec<Instance> = plan
        .put
        .drain(..)
        .filter(|i| !deleted.contains(i.id.as_str()))
        .collect();
    plan.put = kept;
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
