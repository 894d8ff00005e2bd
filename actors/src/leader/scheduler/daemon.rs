//! Planning a DAEMON_SERVICE (SPEC §8.4): one instance on every eligible node, judged
//! node by node; a ROLLING update replaces at most `maxSurge` nodes' instances at a
//! time, the others keeping their old one until their turn.

use std::collections::BTreeMap;

use kat_proto::v1alpha1::{
    EventSeverity, Instance, InstancePhase, InstanceStatus, UpdateStrategyType,
};

use super::place::{DaemonFit, Snapshot};
use super::plan::{IdMaker, Subject, WorkloadPlan, max_surge};
use crate::state::instances::ready;
use crate::state::workloads::rollout_stuck;

/// Plans a DAEMON_SERVICE: `alive` are its instances not on lost nodes.
pub fn plan_daemon(
    s: &Subject<'_>,
    alive: Vec<Instance>,
    snapshot: &mut Snapshot,
    new_id: IdMaker<'_>,
    plan: &mut WorkloadPlan,
) {
    let (generation, demand, now) = (s.generation, &s.demand, s.now);
    let strategy = s.spec.update_strategy.clone().unwrap_or_default();
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
                let mut i = s.new_instance(new_id());
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
