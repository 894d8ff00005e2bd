//! Planning a SERVICE (SPEC §8.4, §8.6): the replicas of the current generation; a
//! ROLLING update replaces old instances as new ones become ready, within `maxSurge`,
//! and pauses on a new instance that does not become ready in time; SIMULTANEOUS
//! replaces them all at once. Instances on a draining node move the same way.

use std::collections::HashSet;

use kat_proto::v1alpha1::{EventSeverity, Instance, UpdateStrategyType};

use super::place::Snapshot;
use super::plan::{IdMaker, Subject, WorkloadPlan, max_surge, place_pending, removal_order};
use crate::state::instances::ready;
use crate::state::workloads::rollout_stuck;

/// Plans a SERVICE: `alive` are its instances on Ready nodes (or unplaced), `drained`
/// those on a draining node, which move like an update.
pub fn plan_service(
    s: &Subject<'_>,
    alive: Vec<Instance>,
    drained: Vec<Instance>,
    snapshot: &mut Snapshot,
    new_id: IdMaker<'_>,
    plan: &mut WorkloadPlan,
) {
    let spec = &s.spec;
    let generation = s.generation;
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
    let moving: HashSet<String> = drained.iter().map(|i| i.id.clone()).collect();
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
            plan.remove(snapshot, &s.demand, i);
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
            plan.remove(snapshot, &s.demand, i);
        }
    }
    // Missing ones of the current generation, within the surge while old ones remain;
    // none while the rollout is paused on a new instance that never became ready.
    let missing = (replicas as usize).saturating_sub(current.len());
    if rolling && !old.is_empty() {
        plan.paused = rollout_stuck(&current, s.now);
    }
    let room = if plan.paused.is_some() {
        0
    } else if rolling && !old.is_empty() {
        (replicas + surge) as usize - (current.len() + old.len()).min((replicas + surge) as usize)
    } else {
        missing
    };
    for _ in 0..missing.min(room) {
        current.push(s.new_instance(new_id()));
    }
    place_pending(&s.demand, current, snapshot, plan);
}
