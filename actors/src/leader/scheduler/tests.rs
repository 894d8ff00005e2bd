#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use super::*;
use crate::state::workloads::ROLLOUT_DEADLINE;
use kat_proto::v1alpha1::instance_status::Health;
use kat_proto::v1alpha1::{
    Container, InstancePhase, InstanceStatus, Node, NodeResources, NodeSpec, NodeState, NodeStatus,
    ObjectMeta, Quadlet, ResourceList, Resources, UpdateStrategy, UpdateStrategyType, Workload,
    WorkloadSpec, WorkloadType,
};

const GI: i64 = 1 << 30;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn node(name: &str, ready: bool) -> (Node, Option<NodeStatus>) {
    let mut status = NodeStatus::default();
    status.set_state(if ready {
        NodeState::Ready
    } else {
        NodeState::NotReady
    });
    (
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(NodeSpec {
                capacity: Some(NodeResources {
                    cpu_millis: 4000,
                    memory_bytes: 8 * GI,
                    gpus: Vec::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        Some(status),
    )
}

fn workload(
    kind: WorkloadType,
    replicas: i32,
    generation: i64,
    strategy: UpdateStrategyType,
) -> Quadlet {
    Quadlet {
        workload: Some(Workload {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                generation,
                ..Default::default()
            }),
            spec: Some(WorkloadSpec {
                r#type: kind.into(),
                replicas: Some(replicas),
                update_strategy: Some(UpdateStrategy {
                    r#type: strategy.into(),
                    max_surge: "1".into(),
                }),
                container: Some(Container {
                    resources: Some(Resources {
                        requests: Some(ResourceList {
                            cpu: "100m".into(),
                            memory: "64Mi".into(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A world of one workload and `nodes` Ready nodes n1, n2, ...
fn world_of(workload: Quadlet, nodes: usize) -> World {
    World {
        workloads: vec![workload],
        nodes: (1..=nodes).map(|i| node(&format!("n{i}"), true)).collect(),
        ..Default::default()
    }
}

fn ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("i{n:03}")
    }
}

/// Applies a plan to the world, as the store would after the actor writes it.
fn apply(world: &mut World, plans: &[(String, String, WorkloadPlan)]) {
    for (_, _, plan) in plans {
        for d in &plan.delete {
            world.instances.retain(|i| i.id != d.id);
        }
        for p in &plan.put {
            world.instances.retain(|i| i.id != p.id);
            world.instances.push(p.clone());
        }
    }
}

fn report_running(world: &mut World) {
    for i in &mut world.instances {
        if !i.node.is_empty() {
            i.status = Some(InstanceStatus {
                phase: InstancePhase::Running.into(),
                ..Default::default()
            });
        }
    }
}

fn nodes_of(world: &World) -> Vec<String> {
    let mut v: Vec<String> = world.instances.iter().map(|i| i.node.clone()).collect();
    v.sort();
    v
}

/// The nodes of the instances that count (not those kept on a lost node).
fn counted_nodes_of(world: &World) -> Vec<String> {
    let mut v: Vec<String> = world
        .instances
        .iter()
        .filter(|i| !i.node_lost)
        .map(|i| i.node.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn a_service_gets_its_replicas_spread_over_the_nodes() {
    let mut world = world_of(
        workload(WorkloadType::Service, 3, 1, UpdateStrategyType::Rolling),
        3,
    );
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n1", "n2", "n3"]);
    assert!(world.instances.iter().all(|i| i.generation == 1));
    assert_eq!(plans[0].2.events[0].0, "Scheduled");
    // Nothing to do once it is as it should be.
    assert!(plan_world(&world, now(), &mut id).is_empty());
}

#[test]
fn scaling_down_removes_pending_then_newest_instances() {
    let mut world = world_of(
        workload(WorkloadType::Service, 3, 1, UpdateStrategyType::Rolling),
        3,
    );
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    world.workloads = vec![workload(
        WorkloadType::Service,
        1,
        1,
        UpdateStrategyType::Rolling,
    )];
    let plans = plan_world(&world, now(), &mut id);
    assert_eq!(plans[0].2.delete.len(), 2);
    apply(&mut world, &plans);
    assert_eq!(world.instances.len(), 1);
    assert_eq!(world.instances[0].id, "i001", "the oldest by id stays");
}

#[test]
fn what_fits_nowhere_stays_pending_with_the_reason() {
    let mut big = workload(WorkloadType::Service, 1, 1, UpdateStrategyType::Rolling);
    if let Some(c) = big
        .workload
        .as_mut()
        .and_then(|w| w.spec.as_mut())
        .and_then(|s| s.container.as_mut())
    {
        c.resources = Some(Resources {
            requests: Some(ResourceList {
                cpu: "100m".into(),
                memory: "64Gi".into(),
            }),
            ..Default::default()
        });
    }
    let mut world = World {
        workloads: vec![big],
        nodes: vec![node("n1", true), node("n2", false)],
        ..Default::default()
    };
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    let i = &world.instances[0];
    assert_eq!(i.node, "");
    let status = i.status.as_ref().unwrap();
    assert_eq!(status.phase(), InstancePhase::Pending);
    assert_eq!(
        status.reason,
        "0/2 nodes: 1 insufficient memory, 1 not ready"
    );
    assert_eq!(plans[0].2.events[0].0, "FailedScheduling");
    // The same reason again is not written again.
    assert!(plan_world(&world, now(), &mut id).is_empty());
}

/// A ROLLING service of two replicas placed on n1 and n2 of three nodes.
fn two_replicas_on_three_nodes(id: IdMaker<'_>) -> World {
    let mut world = world_of(
        workload(WorkloadType::Service, 2, 1, UpdateStrategyType::Rolling),
        3,
    );
    let plans = plan_world(&world, now(), id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n1", "n2"]);
    world
}

#[test]
fn instances_on_a_lost_node_are_replaced_elsewhere() {
    let mut id = ids();
    let mut world = two_replicas_on_three_nodes(&mut id);
    world.nodes[0] = node("n1", false);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(counted_nodes_of(&world), ["n2", "n3"]);
    assert_eq!(nodes_of(&world), ["n1", "n2", "n3"], "kept on n1, marked");
    assert!(
        plans[0]
            .2
            .events
            .iter()
            .any(|e| e.0 == "InstancesRescheduled")
    );
    // n1 returns. While the replacement is not ready, n1's instance counts again and
    // the replacement goes; once it is ready, n1's is retired.
    report_running(&mut world);
    let mut not_yet = world.clone();
    for i in &mut not_yet.instances {
        if i.node == "n3" {
            i.status = None;
        }
    }
    not_yet.nodes[0] = node("n1", true);
    let plans = plan_world(&not_yet, now(), &mut id);
    apply(&mut not_yet, &plans);
    assert_eq!(nodes_of(&not_yet), ["n1", "n2"], "{:?}", not_yet.instances);
    assert!(not_yet.instances.iter().all(|i| !i.node_lost));
    world.nodes[0] = node("n1", true);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n2", "n3"], "retired on return");
    assert!(
        plans[0].2.events.iter().any(|e| e.0 == "InstanceRetired"),
        "{plans:?}"
    );
}

#[test]
fn a_node_held_in_a_disruption_keeps_its_instances_until_drained() {
    let mut id = ids();
    let mut world = two_replicas_on_three_nodes(&mut id);
    // NotReady, but with the Disrupted condition the node monitor gives in a
    // disruption: nothing moves, nothing new lands there.
    world.nodes[0] = node("n1", false);
    if let Some(status) = world.nodes[0].1.as_mut() {
        status.conditions.push(kat_proto::v1alpha1::NodeCondition {
            r#type: crate::leader::node_monitor::DISRUPTED.to_owned(),
            status: true,
            ..Default::default()
        });
    }
    let plans = plan_world(&world, now(), &mut id);
    assert!(plans.is_empty(), "{plans:?}");
    // The operator drains it: now its instance is replaced.
    if let Some(spec) = world.nodes[0].0.spec.as_mut() {
        spec.draining = true;
    }
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(counted_nodes_of(&world), ["n2", "n3"]);
}

#[test]
fn draining_moves_a_rolling_service_within_its_surge() {
    let mut world = world_of(
        workload(WorkloadType::Service, 1, 1, UpdateStrategyType::Rolling),
        2,
    );
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    report_running(&mut world);
    assert_eq!(nodes_of(&world), ["n1"]);
    if let Some(spec) = world.nodes[0].0.spec.as_mut() {
        spec.draining = true;
    }
    // The replacement comes first; the drained instance keeps serving meanwhile.
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n1", "n2"]);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n1", "n2"], "not ready yet: both stay");
    // Ready elsewhere: the drained one goes, with an event.
    report_running(&mut world);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n2"]);
    assert!(events(&plans).contains(&"InstancesMoved".to_owned()));

    // SIMULTANEOUS: moved at once, as from a lost node.
    let mut world = world_of(
        workload(
            WorkloadType::Service,
            1,
            1,
            UpdateStrategyType::Simultaneous,
        ),
        2,
    );
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    if let Some(spec) = world.nodes[0].0.spec.as_mut() {
        spec.draining = true;
    }
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n2"]);
}

/// Three running instances of generation 1 on three nodes, then generation 2 applied
/// (ROLLING, surge 1); the ID maker goes on from there.
fn three_running_then_generation_2() -> (World, impl FnMut() -> String) {
    let mut world = world_of(
        workload(WorkloadType::Service, 3, 1, UpdateStrategyType::Rolling),
        3,
    );
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    report_running(&mut world);
    world.workloads = vec![workload(
        WorkloadType::Service,
        3,
        2,
        UpdateStrategyType::Rolling,
    )];
    (world, id)
}

#[test]
fn a_rolling_update_surges_waits_for_ready_then_retires_old_ones() {
    let (mut world, mut id) = three_running_then_generation_2();
    let count = |w: &World, g: i64| w.instances.iter().filter(|i| i.generation == g).count();
    // Step 1: one new (surge 1), no old removed yet.
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!((count(&world, 1), count(&world, 2)), (3, 1));
    // Not ready yet: nothing more happens.
    assert!(plan_world(&world, now(), &mut id).is_empty());
    let mut steps = 1;
    while count(&world, 1) > 0 {
        report_running(&mut world);
        let plans = plan_world(&world, now(), &mut id);
        apply(&mut world, &plans);
        steps += 1;
        assert!(
            world.instances.len() <= 4,
            "never more than replicas + surge"
        );
        assert!(steps < 10);
    }
    assert_eq!(count(&world, 2), 3);
    report_running(&mut world);
    assert!(plan_world(&world, now(), &mut id).is_empty());
}

#[test]
fn a_rolling_update_pauses_on_a_new_instance_that_never_becomes_ready() {
    let (mut world, mut id) = three_running_then_generation_2();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    // The new instance runs but its health check keeps failing.
    for i in world.instances.iter_mut().filter(|i| i.generation == 2) {
        i.status = Some(InstanceStatus {
            phase: InstancePhase::Running.into(),
            health: Health::Unhealthy.into(),
            ..Default::default()
        });
    }
    let later = |secs| now() + Duration::from_secs(secs);
    // Within the deadline: waiting, not paused.
    assert!(plan_world(&world, later(299), &mut id).is_empty());
    // Past it: paused, with the instance named, and nothing new started.
    let plans = plan_world(&world, later(300), &mut id);
    assert_eq!(plans.len(), 1);
    let plan = &plans[0].2;
    let why = plan.paused.clone().unwrap_or_default();
    assert!(why.contains("not ready after 5 min"), "{why}");
    assert!(why.contains("i004"), "{why}");
    assert!(plan.put.is_empty() && plan.delete.is_empty(), "{plan:?}");
    let old = world.instances.iter().filter(|i| i.generation == 1).count();
    assert_eq!(old, 3, "old instances keep serving");
    // The new one turns healthy: the rollout goes on.
    report_running(&mut world);
    let plans = plan_world(&world, later(400), &mut id);
    assert!(plans.iter().all(|(_, _, p)| p.paused.is_none()));
    assert!(!plans.is_empty());
}

#[test]
fn a_simultaneous_update_replaces_everything_at_once() {
    let mut world = world_of(
        workload(
            WorkloadType::Service,
            3,
            1,
            UpdateStrategyType::Simultaneous,
        ),
        3,
    );
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    world.workloads = vec![workload(
        WorkloadType::Service,
        3,
        2,
        UpdateStrategyType::Simultaneous,
    )];
    let plans = plan_world(&world, now(), &mut id);
    assert_eq!((plans[0].2.delete.len(), plans[0].2.put.len()), (3, 3));
    apply(&mut world, &plans);
    assert!(world.instances.iter().all(|i| i.generation == 2));
    assert_eq!(nodes_of(&world), ["n1", "n2", "n3"]);
}

#[test]
fn a_daemon_runs_once_on_every_eligible_node_and_follows_them() {
    let mut world = world_of(
        workload(
            WorkloadType::DaemonService,
            0,
            1,
            UpdateStrategyType::Rolling,
        ),
        2,
    );
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n1", "n2"]);
    // A node joins: it gets one too; a node is lost: its instance stays assigned
    // there, marked lost (not counted), until the node returns or is deleted.
    world.nodes.push(node("n3", true));
    world.nodes[0] = node("n1", false);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n1", "n2", "n3"]);
    assert!(
        world
            .instances
            .iter()
            .all(|i| i.node_lost == (i.node == "n1")),
        "{:?}",
        world.instances
    );
    let again = plan_world(&world, now(), &mut id);
    assert!(again.is_empty(), "marked once: {again:?}");
    world.nodes.remove(0);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n2", "n3"], "deleted with its node");
    // Cordoned nodes keep theirs? No: a daemon follows eligibility.
    world.nodes[0].0.spec.as_mut().unwrap().unschedulable = true;
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n3"]);
    // A new generation replaces each node's instance.
    world.workloads = vec![workload(
        WorkloadType::DaemonService,
        0,
        2,
        UpdateStrategyType::Rolling,
    )];
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(nodes_of(&world), ["n3"]);
    assert_eq!(world.instances[0].generation, 2);
}

#[test]
fn a_daemon_rolls_out_one_node_at_a_time_or_all_at_once() {
    let daemon = |generation, strategy| {
        vec![workload(
            WorkloadType::DaemonService,
            0,
            generation,
            strategy,
        )]
    };
    let mut world = World {
        workloads: daemon(1, UpdateStrategyType::Rolling),
        nodes: vec![node("n1", true), node("n2", true), node("n3", true)],
        ..Default::default()
    };
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    report_running(&mut world);
    let generations = |world: &World| {
        let mut g: Vec<(String, i64)> = world
            .instances
            .iter()
            .map(|i| (i.node.clone(), i.generation))
            .collect();
        g.sort();
        g.into_iter().map(|(_, g)| g).collect::<Vec<_>>()
    };
    // ROLLING, maxSurge 1: one node's instance at a time, the next once it is ready.
    world.workloads = daemon(2, UpdateStrategyType::Rolling);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(generations(&world), [2, 1, 1]);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(generations(&world), [2, 1, 1], "waits for n1's new one");
    report_running(&mut world);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(generations(&world), [2, 2, 1]);
    report_running(&mut world);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(generations(&world), [2, 2, 2]);
    // A new one that never becomes ready pauses the rollout after the deadline.
    world.workloads = daemon(3, UpdateStrategyType::Rolling);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    let late = now() + ROLLOUT_DEADLINE + Duration::from_secs(1);
    let plans = plan_world(&world, late, &mut id);
    assert!(plans.iter().any(|p| p.2.paused.is_some()), "paused");
    apply(&mut world, &plans);
    assert_eq!(generations(&world), [3, 2, 2]);
    // SIMULTANEOUS: every node at once.
    world.workloads = daemon(4, UpdateStrategyType::Simultaneous);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert_eq!(generations(&world), [4, 4, 4]);
}

#[test]
fn max_surge_takes_integers_and_percentages() {
    assert_eq!(max_surge("2", 10), 2);
    assert_eq!(max_surge("25%", 10), 3, "rounded up");
    assert_eq!(max_surge("0", 10), 1, "at least one");
    assert_eq!(max_surge("0%", 10), 1);
    assert_eq!(max_surge("", 10), 1);
}

#[test]
fn requests_become_the_demand() {
    let q = workload(WorkloadType::Service, 1, 1, UpdateStrategyType::Rolling);
    let d = demand_of("default", "web", q.workload.unwrap().spec.as_ref().unwrap());
    assert_eq!((d.cpu_millis, d.memory_bytes), (100, 64 << 20));
    assert_eq!(d.workload, "default/web");
    assert!(d.gpu.is_none());
}

fn job(completions: u32, parallelism: u32, backoff: u32, deadline: u32, schedule: &str) -> Quadlet {
    let mut q = workload(WorkloadType::Job, 0, 1, UpdateStrategyType::Rolling);
    if let Some(m) = q.workload.as_mut().and_then(|w| w.metadata.as_mut()) {
        m.created_at = Some(kat_proto::timestamp(now()));
    }
    q.job = Some(kat_proto::v1alpha1::JobDefinition {
        spec: Some(kat_proto::v1alpha1::JobDefinitionSpec {
            schedule: schedule.into(),
            completions,
            parallelism,
            active_deadline_seconds: deadline,
            backoff_limit: Some(backoff),
        }),
        ..Default::default()
    });
    q
}

/// Applies plans including job states.
fn apply_jobs(world: &mut World, plans: &[(String, String, WorkloadPlan)]) {
    apply(world, plans);
    for (ns, name, plan) in plans {
        if let Some(s) = &plan.job_state {
            world.jobs.insert(format!("{ns}/{name}"), s.clone());
        }
    }
}

fn finish(world: &mut World, phase: InstancePhase, at: SystemTime) {
    for i in &mut world.instances {
        let running = i.status.as_ref().is_some_and(|s| {
            matches!(s.phase(), InstancePhase::Scheduled | InstancePhase::Running)
        });
        if running {
            i.status = Some(InstanceStatus {
                phase: phase.into(),
                finished_at: Some(kat_proto::timestamp(at)),
                ..Default::default()
            });
        }
    }
}

fn job_world(q: Quadlet) -> World {
    World {
        workloads: vec![q],
        nodes: vec![node("n1", true), node("n2", true)],
        ..Default::default()
    }
}

fn events(plans: &[(String, String, WorkloadPlan)]) -> Vec<String> {
    plans
        .iter()
        .flat_map(|(_, _, p)| p.events.iter().map(|e| e.0.clone()))
        .collect()
}

#[test]
fn a_job_runs_its_completions_within_parallelism_and_completes() {
    let mut world = job_world(job(3, 2, 1, 0, ""));
    let mut id = ids();
    let t = now();
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    assert_eq!(world.instances.len(), 2, "parallelism 2");
    assert!(world.instances.iter().all(|i| i.job_run == 1));
    assert_eq!(world.jobs["default/web"].execution, 1);
    finish(&mut world, InstancePhase::Succeeded, t);
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    assert_eq!(
        world.instances.len(),
        3,
        "one more for the third completion"
    );
    finish(&mut world, InstancePhase::Succeeded, t);
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    assert!(world.jobs["default/web"].complete);
    assert!(events(&plans).contains(&"JobCompleted".to_owned()));
    assert!(
        plan_world(&world, t, &mut id).is_empty(),
        "done: nothing more"
    );
}

#[test]
fn failed_runs_are_retried_with_backoff_until_the_limit() {
    let mut world = job_world(job(1, 1, 1, 0, ""));
    let mut id = ids();
    let t = now();
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    finish(&mut world, InstancePhase::Failed, t);
    // 10 s of backoff after the first failure.
    assert!(plan_world(&world, t + Duration::from_secs(5), &mut id).is_empty());
    let plans = plan_world(&world, t + Duration::from_secs(11), &mut id);
    apply_jobs(&mut world, &plans);
    assert_eq!(world.instances.len(), 2, "retried");
    finish(
        &mut world,
        InstancePhase::Failed,
        t + Duration::from_secs(12),
    );
    // Two failures > backoffLimit 1: the job fails.
    let plans = plan_world(&world, t + Duration::from_secs(60), &mut id);
    apply_jobs(&mut world, &plans);
    let st = &world.jobs["default/web"];
    assert!(st.failed);
    assert!(st.message.contains("backoffLimit 1"), "{}", st.message);
    assert!(events(&plans).contains(&"JobFailed".to_owned()));
    assert_eq!(jobs::backoff(1), Duration::from_secs(10));
    assert_eq!(jobs::backoff(3), Duration::from_secs(40));
    assert_eq!(
        jobs::backoff(20),
        Duration::from_secs(300),
        "capped at 5 min"
    );
}

#[test]
fn the_active_deadline_fails_the_job_and_stops_its_runs() {
    let mut world = job_world(job(1, 1, 3, 60, ""));
    let mut id = ids();
    let t = now();
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    report_running(&mut world);
    let plans = plan_world(&world, t + Duration::from_secs(61), &mut id);
    apply_jobs(&mut world, &plans);
    assert!(world.jobs["default/web"].failed);
    assert!(world.instances.is_empty(), "the running run is stopped");
}

#[test]
fn a_changed_job_runs_again_and_a_scheduled_one_runs_at_each_tick() {
    let mut world = job_world(job(1, 1, 0, 0, ""));
    let mut id = ids();
    let t = now();
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    finish(&mut world, InstancePhase::Succeeded, t);
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    assert!(world.jobs["default/web"].complete);
    // A new generation: a new execution.
    let mut q = job(1, 1, 0, 0, "");
    q.workload
        .as_mut()
        .unwrap()
        .metadata
        .as_mut()
        .unwrap()
        .generation = 2;
    world.workloads = vec![q];
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    assert_eq!(world.jobs["default/web"].execution, 2);
    assert_eq!(world.instances.iter().filter(|i| i.job_run == 2).count(), 1);

    // Every minute: nothing before the first tick, then one execution per tick; a
    // tick that finds the last one still running is skipped.
    let mut world = job_world(job(1, 1, 0, 0, "* * * * *"));
    let plans = plan_world(&world, t, &mut id);
    apply_jobs(&mut world, &plans);
    assert!(world.instances.is_empty(), "before the first tick");
    let minute = Duration::from_secs(60);
    let plans = plan_world(&world, t + minute, &mut id);
    apply_jobs(&mut world, &plans);
    assert_eq!(world.jobs["default/web"].execution, 1);
    assert_eq!(world.instances.len(), 1);
    report_running(&mut world);
    let plans = plan_world(&world, t + 2 * minute, &mut id);
    apply_jobs(&mut world, &plans);
    assert!(events(&plans).contains(&"JobTickSkipped".to_owned()));
    assert_eq!(world.jobs["default/web"].execution, 1);
    for k in 3..8 {
        finish(&mut world, InstancePhase::Succeeded, t + k * minute);
        let plans = plan_world(&world, t + k * minute, &mut id);
        apply_jobs(&mut world, &plans);
        let plans = plan_world(&world, t + k * minute + minute / 2, &mut id);
        apply_jobs(&mut world, &plans);
    }
    let runs: std::collections::BTreeSet<u32> = world.instances.iter().map(|i| i.job_run).collect();
    assert!(
        runs.len() <= 3,
        "history of the last three executions: {runs:?}"
    );

    // After hours without a leader: one execution for the latest tick, not one per
    // tick missed, and an event saying so.
    finish(&mut world, InstancePhase::Succeeded, t + 8 * minute);
    let before = world.jobs["default/web"].execution;
    let later = t + 8 * minute + Duration::from_secs(5 * 3600);
    let plans = plan_world(&world, later, &mut id);
    apply_jobs(&mut world, &plans);
    assert_eq!(world.jobs["default/web"].execution, before + 1);
    assert!(events(&plans).contains(&"JobTicksMissed".to_owned()));
    let plans = plan_world(&world, later + Duration::from_secs(1), &mut id);
    apply_jobs(&mut world, &plans);
    assert_eq!(world.jobs["default/web"].execution, before + 1, "no burst");
    assert!(!events(&plans).contains(&"JobTicksMissed".to_owned()));
}

/// An instance back from a lost node that its workload no longer wants (a daemon
/// rolled to a new generation meanwhile) is removed, not also written: etcd refuses a
/// transaction that writes a key twice, which would stop every later round.
#[test]
fn an_instance_back_from_a_lost_node_is_never_both_written_and_removed() {
    let mut world = world_of(
        workload(
            WorkloadType::DaemonService,
            0,
            1,
            UpdateStrategyType::Rolling,
        ),
        2,
    );
    let mut id = ids();
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    report_running(&mut world);
    world.nodes[0] = node("n1", false);
    let plans = plan_world(&world, now(), &mut id);
    apply(&mut world, &plans);
    assert!(
        world
            .instances
            .iter()
            .any(|i| i.node == "n1" && i.node_lost)
    );
    // A new generation while n1 is away; then n1 returns.
    world.workloads = vec![workload(
        WorkloadType::DaemonService,
        0,
        2,
        UpdateStrategyType::Rolling,
    )];
    for _ in 0..4 {
        report_running(&mut world);
        let plans = plan_world(&world, now(), &mut id);
        apply(&mut world, &plans);
    }
    world.nodes[0] = node("n1", true);
    for _ in 0..6 {
        let plans = plan_world(&world, now(), &mut id);
        for (_, _, plan) in &plans {
            let removed: Vec<&str> = plan.delete.iter().map(|i| i.id.as_str()).collect();
            assert!(
                plan.put.iter().all(|i| !removed.contains(&i.id.as_str())),
                "written and removed in one round: {plan:?}"
            );
        }
        apply(&mut world, &plans);
        report_running(&mut world);
    }
    assert_eq!(nodes_of(&world), ["n1", "n2"]);
    assert!(
        world
            .instances
            .iter()
            .all(|i| i.generation == 2 && !i.node_lost),
        "{:?}",
        world.instances
    );
}
