//! Workloads in the simulated cluster (issue 13): every node runs its Runtime over a
//! fake host, workloads are applied through the leader as `katcall apply` applies
//! them, and what the API shows is what the nodes reported in their heartbeats. On
//! tokio's paused clock: minutes of cluster time in milliseconds. The same flows run
//! across real processes in `cli/tests/workloads.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use kat_actors::leader::scheduler::jobs::backoff;
use kat_proto::v1alpha1::instance_status::Health;
use kat_proto::v1alpha1::{ClusterConfiguration, Instance, InstancePhase, NodeState};
use kat_runtime::ContainerRuntime;
use kat_runtime::spec::container_name;
use kat_tests::sim::{Instances, SimCluster, wait_until};
use tokio::time::Instant;

const TICK: u64 = 5;
const LOSS: u64 = 20;

/// examples/web: a SERVICE of three replicas, ROLLING with maxSurge 1, with an exec
/// health check (5 s initial delay) in its VirtualLoadBalancer.
const WEB: &str = include_str!("../../examples/web/workload.kat");
const WEB_LB: &str = include_str!("../../examples/web/VirtualLoadBalancer.kat");
const WEB_IMAGE: &str = "docker.io/library/nginx:1.27";
/// examples/node-exporter: a DAEMON_SERVICE.
const DAEMON: &str = include_str!("../../examples/node-exporter/workload.kat");

/// A JOB of one run, retried after failures up to three times.
const JOB: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {name: count, namespace: default}
spec:
  type: JOB
  source: {image: localhost/busybox:latest}
  restartPolicy: {condition: NEVER}
  container:
    command: [sh, -c, 'echo counted']
";
const JOB_DEF: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: JobDefinition
metadata: {name: count}
spec: {completions: 1, parallelism: 1, backoffLimit: 3}
";

fn cluster() -> ClusterConfiguration {
    let yaml = format!(
        "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: sim}}\n\
         spec: {{agentTickSeconds: {TICK}, nodeLossTimeoutSeconds: {LOSS}}}\n"
    );
    kat_proto::quadlet::parse_cluster_config("sim.kat", yaml.as_bytes()).unwrap()
}

/// A cluster of one control-plane node and `workers` workers, all Ready.
async fn ready_cluster(workers: usize) -> SimCluster {
    let sim = SimCluster::start(cluster(), 1, workers).await;
    sim.wait_states(Duration::from_secs(30), |s| {
        s.len() == workers + 1 && s.values().all(|st| *st == NodeState::Ready)
    })
    .await;
    sim
}

/// Applies examples/web with `image`; returns the generation it became.
async fn apply_web(sim: &SimCluster, image: &str) -> i64 {
    let applied = sim
        .apply(&[
            ("workload.kat", &WEB.replace(WEB_IMAGE, image)),
            ("VirtualLoadBalancer.kat", WEB_LB),
        ])
        .await
        .unwrap();
    applied.workload.unwrap().metadata.unwrap().generation
}

/// Applies examples/web with `image` as generation `generation` and waits until its
/// three replicas of it are ready; returns them.
async fn web_ready(sim: &SimCluster, image: &str, generation: i64) -> Instances {
    assert_eq!(apply_web(sim, image).await, generation);
    sim.wait_instances("default", "web", Duration::from_secs(60), |i| {
        i.all_ready(3, generation)
    })
    .await
}

/// Images of the containers running on each node.
async fn running_images(sim: &SimCluster) -> BTreeMap<String, Vec<String>> {
    let mut images = BTreeMap::new();
    for node in sim.nodes.values() {
        let containers = node.containers().list(&BTreeMap::new()).await.unwrap();
        let running = containers
            .into_iter()
            .filter(|c| c.state == kat_runtime::ContainerState::Running)
            .map(|c| c.image);
        images.insert(node.name.clone(), running.collect());
    }
    images
}

fn reasons(events: &[kat_proto::v1alpha1::Event]) -> Vec<&str> {
    events.iter().map(|e| e.reason.as_str()).collect()
}

/// How many of `reasons` are `reason`.
fn count(reasons: &[&str], reason: &str) -> usize {
    reasons.iter().filter(|r| **r == reason).count()
}

#[tokio::test(start_paused = true)]
async fn an_applied_service_runs_all_its_instances() {
    let sim = ready_cluster(2).await;
    let applied_at = Instant::now();
    let web = web_ready(&sim, WEB_IMAGE, 1).await;
    eprintln!(
        "3 instances ready {:?} (simulated) after apply",
        applied_at.elapsed()
    );
    // Spread one per node; RUNNING and healthy as the nodes reported it.
    for node in ["cp1", "w1", "w2"] {
        assert_eq!(web.on(node), 1, "{node}: {web:?}");
    }
    assert_eq!(web.in_phase(InstancePhase::Running), 3, "{web:?}");
    let healthy = web.iter().map(|i| i.status.as_ref().unwrap().health());
    assert!(healthy.into_iter().all(|h| h == Health::Healthy), "{web:?}");
    let described = sim.workload("default", "web").await;
    let status = described.workload.unwrap().status.unwrap();
    assert_eq!(
        (status.desired_instances, status.ready_instances),
        (3, 3),
        "{status:?}"
    );
    // Each node runs the container it was assigned, with the workload's image.
    for (node, images) in running_images(&sim).await {
        assert_eq!(images, [WEB_IMAGE], "{node}");
    }
    let events = sim.workload_events("default", "web").await;
    let reasons = reasons(&events);
    assert_eq!(reasons[0], "WorkloadCreated", "{reasons:?}");
    assert!(reasons.contains(&"Scheduled"), "{reasons:?}");
    assert_eq!(count(&reasons, "InstanceStarted"), 3, "{reasons:?}");
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_nodes_service_instances_are_replaced_elsewhere() {
    let mut sim = ready_cluster(3).await;
    let before = web_ready(&sim, WEB_IMAGE, 1).await;
    let victim = ["w1", "w2", "w3"]
        .into_iter()
        .find(|n| before.on(n) == 1)
        .expect("a worker with an instance");
    let lost: Vec<String> = before
        .iter()
        .filter(|i| i.node == victim)
        .map(|i| i.id.clone())
        .collect();
    sim.crash(victim);
    let crashed_at = Instant::now();
    let on_victim_lost = |i: &Instances| {
        i.iter()
            .filter(|x| x.node == victim)
            .all(|x| x.node_lost && lost.contains(&x.id))
    };
    let after = sim
        .wait_instances(
            "default",
            "web",
            Duration::from_secs(LOSS + 6 * TICK),
            |i| i.ready() == 3 && i.len() == 4 && on_victim_lost(i),
        )
        .await;
    let took = crashed_at.elapsed();
    eprintln!("{victim}'s instance replaced and ready {took:?} (simulated) after the crash");
    // Not before the node counted as lost; then within a few ticks.
    assert!(
        took >= Duration::from_secs(LOSS - TICK),
        "replaced after {took:?}, before the loss timeout"
    );
    // The lost node's instance is kept assigned there (marked, not counted) while
    // its replacement runs elsewhere.
    assert_eq!(after.on(victim), 1, "{after:?}");
    // ... and the workload reads 3/3, not 3/4: `get workloads`, `rollout status` and
    // `apply --wait` count the replacements, not what waits on the lost node.
    let status = sim
        .workload("default", "web")
        .await
        .workload
        .unwrap()
        .status
        .unwrap();
    assert_eq!((status.desired_instances, status.ready_instances), (3, 3));
    assert!(!status.rollout.unwrap().paused);
    assert_eq!(sim.states().await[victim], NodeState::NotReady);
    assert!(sim.events_of(victim).await.contains(&"NodeLost".to_owned()));
    let events = sim.workload_events("default", "web").await;
    let rescheduled = events
        .iter()
        .find(|e| e.reason == "InstancesRescheduled")
        .expect("an InstancesRescheduled event");
    assert!(
        rescheduled
            .message
            .contains(&format!("{} on {victim}", lost[0])),
        "{rescheduled:?}"
    );
    assert_eq!(count(&reasons(&events), "InstancesRescheduled"), 1, "once");
    // The replacement runs on a live node's machine; the lost node's machine still
    // runs its container (an agent that is only cut off is not told to stop it).
    let images = running_images(&sim).await;
    let live: usize = images
        .iter()
        .filter(|(n, _)| n.as_str() != victim)
        .map(|(_, i)| i.len())
        .sum();
    assert_eq!(live, 3, "{images:?}");
    assert_eq!(images[victim].len(), 1, "{images:?}");

    // The node comes back: its instance, replaced, is retired, and its container stops.
    sim.start_node(victim, false).await;
    let back = sim
        .wait_instances("default", "web", Duration::from_secs(10 * TICK), |i| {
            i.all_ready(3, 1) && i.on(victim) == 0
        })
        .await;
    assert!(back.iter().all(|i| !lost.contains(&i.id)), "{back:?}");
    let images = wait_until(
        "the returned node's container stopped",
        Duration::from_secs(10 * TICK),
        async || running_images(&sim).await,
        |images| images[victim].is_empty(),
    )
    .await;
    assert_eq!(
        images.values().map(Vec::len).sum::<usize>(),
        3,
        "{images:?}"
    );
    let events = sim.workload_events("default", "web").await;
    assert!(reasons(&events).contains(&"InstanceRetired"), "{events:?}");
    sim.stop().await;
}

/// (old generation, new generation, ready) instances.
type Step = (usize, usize, usize);

#[tokio::test(start_paused = true)]
async fn a_rolling_update_replaces_instances_one_at_a_time() {
    let sim = ready_cluster(2).await;
    web_ready(&sim, WEB_IMAGE, 1).await;
    let new_image = "docker.io/library/nginx:1.28";
    assert_eq!(apply_web(&sim, new_image).await, 2);

    // Watch the rollout every 100 ms of simulated time until all are new and ready.
    let mut steps: Vec<Step> = Vec::new();
    let mut too_many = Vec::new();
    let mut sample = async || {
        let now = sim.instances("default", "web").await;
        let step = (now.of_generation(1), now.of_generation(2), now.ready());
        if steps.last() != Some(&step) {
            steps.push(step);
        }
        if now.len() > 3 + 1 {
            too_many.push(now.clone());
        }
        now
    };
    wait_until(
        "the rollout",
        Duration::from_secs(300),
        &mut sample,
        |now| now.all_ready(3, 2),
    )
    .await;
    eprintln!("rollout steps (old, new, ready): {steps:?}");
    assert!(
        too_many.is_empty(),
        "more than replicas + maxSurge: {too_many:?}"
    );
    // Never fewer ready than replicas: an old instance goes only once a new one is
    // ready (each sample is one consistent read of the store).
    assert!(steps.iter().all(|s| s.2 >= 3), "{steps:?}");
    // The old generation went down one at a time, through 2 and 1.
    let olds: Vec<usize> = steps.iter().map(|s| s.0).collect();
    assert!(
        olds.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1),
        "{steps:?}"
    );
    assert!(olds.contains(&2) && olds.contains(&1), "{steps:?}");
    assert_eq!(steps.last(), Some(&(0, 3, 3)));
    // The machines run the new image only: old containers were retired.
    let images = running_images(&sim).await;
    for (node, images) in &images {
        assert_eq!(images, &[new_image], "{node}: {images:?}");
    }
    let events = sim.workload_events("default", "web").await;
    let reasons = reasons(&events);
    assert!(reasons.contains(&"WorkloadUpdated"), "{reasons:?}");
    let replaced = count(&reasons, "Replaced");
    assert_eq!(replaced, 3, "one old instance at a time: {reasons:?}");
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_daemon_service_follows_a_node_that_joins() {
    let mut sim = ready_cluster(1).await;
    sim.apply(&[("workload.kat", DAEMON)]).await.unwrap();
    let one_each = |nodes: &'static [&'static str]| {
        move |i: &Instances| {
            i.len() == nodes.len()
                && i.in_phase(InstancePhase::Running) == nodes.len()
                && nodes.iter().all(|n| i.on(n) == 1)
        }
    };
    let before = sim
        .wait_instances(
            "default",
            "node-exporter",
            Duration::from_secs(60),
            one_each(&["cp1", "w1"]),
        )
        .await;

    sim.add_worker("w2").await;
    let joined_at = Instant::now();
    let after = sim
        .wait_instances(
            "default",
            "node-exporter",
            Duration::from_secs(30),
            one_each(&["cp1", "w1", "w2"]),
        )
        .await;
    eprintln!(
        "w2's daemon instance running {:?} (simulated) after it joined",
        joined_at.elapsed()
    );
    // The nodes that had one keep it.
    for i in before.iter() {
        assert!(
            after.iter().any(|a| a.id == i.id),
            "{before:?} -> {after:?}"
        );
    }
    let images = running_images(&sim).await;
    assert_eq!(images["w2"], ["localhost/busybox:latest"], "{images:?}");
    sim.stop().await;
}

/// The run of the job's execution 1 that is not finished yet, once it runs.
async fn running_run(sim: &SimCluster, runs: usize) -> Instance {
    let now = sim
        .wait_instances("default", "count", Duration::from_secs(300), |i| {
            i.len() == runs && i.in_phase(InstancePhase::Running) == 1
        })
        .await;
    now.iter()
        .find(|i| i.status.as_ref().unwrap().phase() == InstancePhase::Running)
        .unwrap()
        .clone()
}

/// Ends the run's container with `code`, as its process would.
fn end_run(sim: &SimCluster, run: &Instance, code: i32) {
    let name = container_name(&run.namespace, &run.workload, &run.id);
    sim.nodes[&run.node].containers().exit(&name, code).unwrap();
}

/// Seconds from `a` to `b`.
fn seconds_between(a: Option<pbjson_types::Timestamp>, b: Option<pbjson_types::Timestamp>) -> i64 {
    b.unwrap().seconds - a.unwrap().seconds
}

#[tokio::test(start_paused = true)]
async fn a_job_is_retried_after_backoff_and_completes() {
    let sim = ready_cluster(2).await;
    sim.apply(&[("workload.kat", JOB), ("job.kat", JOB_DEF)])
        .await
        .unwrap();
    // Two runs fail (exit 1); the third succeeds.
    let mut runs: Vec<Instance> = Vec::new();
    for (n, code) in [1, 1, 0].into_iter().enumerate() {
        let run = running_run(&sim, n + 1).await;
        assert_eq!(run.job_run, 1, "every run belongs to execution 1");
        if let Some(failed) = runs.last() {
            // A failed run is retried after 10 s, then 20 s (in the leader's time, from
            // when the node saw it end).
            let failed = sim
                .instances("default", "count")
                .await
                .iter()
                .find(|i| i.id == failed.id)
                .cloned()
                .unwrap();
            let waited = seconds_between(failed.status.unwrap().finished_at, run.created_at);
            let wanted = i64::try_from(backoff(u32::try_from(n).unwrap()).as_secs()).unwrap();
            eprintln!("run {} started {waited} s after run {n} failed", n + 1);
            assert!(
                (wanted..wanted + 3 * i64::try_from(TICK).unwrap()).contains(&waited),
                "run {n} started {waited} s after the failure; backoff is {wanted} s"
            );
        }
        end_run(&sim, &run, code);
        runs.push(run);
    }
    let done = sim
        .wait_instances("default", "count", Duration::from_secs(60), |i| {
            i.in_phase(InstancePhase::Succeeded) == 1
        })
        .await;
    assert_eq!(done.len(), 3, "the failed runs are kept: {done:?}");
    assert_eq!(done.in_phase(InstancePhase::Failed), 2, "{done:?}");
    let mut exit_codes: Vec<i32> = done
        .iter()
        .map(|i| i.status.as_ref().unwrap().exit_code)
        .collect();
    exit_codes.sort_unstable();
    assert_eq!(exit_codes, [0, 1, 1], "{done:?}");
    // As `katcall describe workload count` shows it.
    let status = wait_until(
        "count complete",
        Duration::from_secs(30),
        async || {
            let described = sim.workload("default", "count").await;
            described.workload.unwrap().status.unwrap()
        },
        |s| s.job_state == "Complete",
    )
    .await;
    assert_eq!((status.succeeded, status.failed), (1, 2), "{status:?}");
    let events = sim.workload_events("default", "count").await;
    let reasons = reasons(&events);
    assert_eq!(count(&reasons, "InstanceFailed"), 2, "{reasons:?}");
    let completed = events.iter().find(|e| e.reason == "JobCompleted").unwrap();
    assert_eq!(completed.message, "execution 1: 1 of 1 runs succeeded");
    sim.stop().await;
}

/// A workload mounting `path` from the host.
fn host_mount_workload(name: &str, path: &str) -> String {
    format!(
        "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: default}}
spec:
  type: SERVICE
  source: {{image: localhost/busybox:latest}}
  container:
    volumeMounts: [{{name: files, mountPath: /files}}]
  volumes:
    - name: files
      hostMount: {{hostPath: {path}}}
"
    )
}

#[tokio::test(start_paused = true)]
async fn a_host_mount_outside_the_clusters_allowed_paths_is_refused_at_apply() {
    let yaml = "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\n\
                metadata: {name: sim}\nspec:\n  volumeBasePath: /tank/volumes\n  \
                hostMounts: {allowedPaths: [/tank]}\n";
    let cluster = kat_proto::quadlet::parse_cluster_config("sim.kat", yaml.as_bytes()).unwrap();
    let sim = SimCluster::start(cluster, 1, 0).await;
    for (path, says) in [
        // The default list (/srv, ...) is not this cluster's.
        (
            "/srv/media",
            "outside this cluster's hostMounts.allowedPaths (/tank)",
        ),
        (
            "/tankard",
            "outside this cluster's hostMounts.allowedPaths (/tank)",
        ),
        // Allowed, but other workloads' storage.
        (
            "/tank/volumes/default/other",
            "/tank/volumes, which no workload may mount",
        ),
        ("/tank", "/tank/volumes, which no workload may mount"),
    ] {
        let file = host_mount_workload("files", path);
        match sim.apply(&[("workload.kat", &file)]).await {
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("bundle/workload.kat: spec.volumes[0].hostMount.hostPath:"),
                    "{path}: {e}"
                );
                assert!(e.contains(says), "{path}: {e}");
            }
            Ok(q) => panic!("{path} was stored: {q:?}"),
        }
    }
    // Nothing of the refused applies was stored: the allowed one is generation 1.
    let file = host_mount_workload("files", "/tank/media");
    let stored = sim.apply(&[("workload.kat", &file)]).await.unwrap();
    let generation = stored.workload.unwrap().metadata.unwrap().generation;
    assert_eq!(generation, 1);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_default_allowed_paths_take_a_home_labs_data_directories_only() {
    let sim = SimCluster::start(cluster(), 1, 0).await;
    for (i, path) in ["/srv/web", "/mnt/disk1", "/data/media/library"]
        .iter()
        .enumerate()
    {
        let file = host_mount_workload(&format!("ok{i}"), path);
        sim.apply(&[("workload.kat", &file)]).await.unwrap();
    }
    for (i, path) in [
        "/tmp/x",
        "/var/log/web",
        "/home/alice",
        "/opt/cni/bin",
        "/srv/../etc",
    ]
    .iter()
    .enumerate()
    {
        let file = host_mount_workload(&format!("bad{i}"), path);
        assert!(
            sim.apply(&[("workload.kat", &file)]).await.is_err(),
            "{path} was accepted"
        );
    }
    sim.stop().await;
}

/// Instance IDs by node.
fn placement(instances: &Instances) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in instances.iter() {
        out.entry(i.node.clone()).or_default().push(i.id.clone());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_step_of_the_leaders_wall_clock_reschedules_nothing() {
    let sim = ready_cluster(2).await;
    let before = placement(&web_ready(&sim, WEB_IMAGE, 1).await);
    // Three loss timeouts at once, as an NTP step or a resumed VM.
    kat_tests::sim::step_wall_clock(Duration::from_secs(3 * LOSS + 1));
    tokio::time::sleep(Duration::from_secs(3 * LOSS)).await;
    let after = sim.instances("default", "web").await;
    assert_eq!(placement(&after), before, "nothing moved");
    assert!(after.all_ready(3, 1), "{after:?}");
    let states = sim.states().await;
    assert!(
        states.values().all(|s| *s == NodeState::Ready),
        "{states:?}"
    );
    for node in ["cp1", "w1", "w2"] {
        assert!(!sim.events_of(node).await.contains(&"NodeLost".to_owned()));
    }
    sim.stop().await;
}

/// etcd answering nothing for longer than a loss timeout (a stalled disk) loses no
/// node and moves no instance: liveness is kept in the leader's memory, and every node
/// was heard from throughout.
#[tokio::test(start_paused = true)]
async fn a_store_stall_longer_than_the_loss_timeout_reschedules_nothing() {
    let sim = ready_cluster(2).await;
    let before = placement(&web_ready(&sim, WEB_IMAGE, 1).await);
    sim.store.set_available(false);
    tokio::time::sleep(Duration::from_secs(LOSS + 5)).await;
    sim.store.set_available(true);
    tokio::time::sleep(Duration::from_secs(4 * TICK)).await;
    let after = sim
        .wait_instances("default", "web", Duration::from_secs(LOSS), |i| {
            i.all_ready(3, 1)
        })
        .await;
    assert_eq!(placement(&after), before, "nothing moved");
    let events = sim.workload_events("default", "web").await;
    assert!(
        !events.iter().any(|e| e.reason == "InstancesRescheduled"),
        "{events:?}"
    );
    for node in ["cp1", "w1", "w2"] {
        assert!(!sim.events_of(node).await.contains(&"NodeLost".to_owned()));
    }
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn most_nodes_cut_off_at_once_keep_their_instances_and_come_back_to_them() {
    let sim = ready_cluster(4).await;
    let before = placement(&web_ready(&sim, WEB_IMAGE, 1).await);
    // Three of five nodes go silent together (the leader's own link, a switch).
    let cut = ["w1", "w2", "w3"];
    for n in cut {
        sim.partition(n);
    }
    sim.wait_states(Duration::from_secs(LOSS + 4 * TICK), |s| {
        cut.iter().all(|n| s[*n] == NodeState::NotReady)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4 * TICK)).await;
    let during = sim.instances("default", "web").await;
    assert_eq!(placement(&during), before, "kept where they were");
    let events = sim.workload_events("default", "web").await;
    assert!(
        !events.iter().any(|e| e.reason == "InstancesRescheduled"),
        "{events:?}"
    );
    assert!(
        sim.events_of("cp1")
            .await
            .contains(&"ClusterDisrupted".to_owned())
    );
    // They come back to the same instances, which run on.
    for n in cut {
        sim.heal(n);
    }
    let back = sim
        .wait_instances("default", "web", Duration::from_secs(6 * TICK), |i| {
            i.all_ready(3, 1)
        })
        .await;
    assert_eq!(placement(&back), before);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_rollback_to_a_generation_outside_todays_allowed_paths_is_refused() {
    use kat_actors::state::workloads::{ApplyMode, apply_bundle, rollback};
    let sim = SimCluster::start(cluster(), 1, 0).await;
    let ctx = sim.leader_ctx().unwrap();
    // Generation 1 was stored under laxer rules (before the check, say).
    let mut lax = ctx.settings.clone();
    lax.host_mount_allowed = vec!["/".to_owned()];
    let bundle = |path: &str| {
        let files = [kat_proto::bundle::BundleFile {
            name: "workload.kat".to_owned(),
            data: host_mount_workload("files", path).into_bytes(),
        }];
        kat_proto::bundle::pack(&files, &Default::default()).unwrap()
    };
    let now = kat_tests::sim::sim_now();
    apply_bundle(
        &ctx.leadership,
        &lax,
        "",
        None,
        &bundle("/var/log/web"),
        ApplyMode::Apply,
        now,
    )
    .await
    .unwrap();
    let current = sim
        .apply(&[("workload.kat", &host_mount_workload("files", "/srv/web"))])
        .await
        .unwrap();
    assert_eq!(current.workload.unwrap().metadata.unwrap().generation, 2);
    match rollback(&ctx.leadership, &ctx.settings, "default", "files", 0, now).await {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("generation 1 cannot be restored"), "{e}");
            assert!(e.contains("spec.volumes[0].hostMount.hostPath"), "{e}");
        }
        Ok(q) => panic!("rolled back to {q:?}"),
    }
    let still = sim.workload("default", "files").await;
    assert_eq!(still.workload.unwrap().metadata.unwrap().generation, 2);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_store_outage_the_scheduler_still_reacts_to_changes_at_once() {
    let sim = ready_cluster(1).await;
    // A short outage breaks every watch (as an etcd restart would).
    sim.store.set_available(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.store.set_available(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Three workloads applied 1.3 s apart: each is placed within 0.5 s, which the
    // scheduler's 5 s tick alone could not do for all three; its watches came back.
    for (i, at) in ["one", "two", "three"].iter().enumerate() {
        let file = host_mount_workload(at, &format!("/srv/{at}"));
        let applied = Instant::now();
        sim.apply(&[("workload.kat", &file)]).await.unwrap();
        sim.wait_instances("default", at, Duration::from_millis(500), |i| {
            i.iter().any(|x| !x.node.is_empty())
        })
        .await;
        eprintln!("workload {i} placed {:?} after apply", applied.elapsed());
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn changing_only_the_replicas_scales_without_a_rollout() {
    use kat_actors::state::workloads::{rollback, scale};
    let sim = ready_cluster(3).await;
    let before = web_ready(&sim, WEB_IMAGE, 1).await;
    let ids = |list: &Instances| -> Vec<String> { list.iter().map(|i| i.id.clone()).collect() };
    let first = ids(&before);
    // The same file with replicas 5: generation 1 still, two instances more, the
    // first three untouched.
    let applied = sim
        .apply(&[
            ("workload.kat", &WEB.replace("replicas: 3", "replicas: 5")),
            ("VirtualLoadBalancer.kat", WEB_LB),
        ])
        .await
        .unwrap();
    assert_eq!(applied.workload.unwrap().metadata.unwrap().generation, 1);
    let five = sim
        .wait_instances("default", "web", Duration::from_secs(60), |i| {
            i.all_ready(5, 1)
        })
        .await;
    assert!(first.iter().all(|id| ids(&five).contains(id)), "{five:?}");
    // katcall scale down to 2: two of the instances stay, nothing new starts.
    let ctx = sim.leader_ctx().unwrap();
    let scaled = scale(
        &ctx.leadership,
        "default",
        "web",
        2,
        kat_tests::sim::sim_now(),
    )
    .await
    .unwrap();
    assert_eq!(scaled.workload.unwrap().metadata.unwrap().generation, 1);
    let two = sim
        .wait_instances("default", "web", Duration::from_secs(60), |i| {
            i.all_ready(2, 1)
        })
        .await;
    assert!(
        ids(&two).iter().all(|id| ids(&five).contains(id)),
        "{two:?}"
    );
    let events = sim.workload_events("default", "web").await;
    assert_eq!(count(&reasons(&events), "Scaled"), 2, "{events:?}");
    assert!(
        !reasons(&events).contains(&"WorkloadUpdated"),
        "no new generation: {events:?}"
    );
    // Bad requests change nothing.
    let err = scale(
        &ctx.leadership,
        "default",
        "web",
        1001,
        kat_tests::sim::sim_now(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("replicas: 1001"), "{err}");
    // A rollback changes what runs, not how many: a new image, then back, at 2.
    assert_eq!(apply_web(&sim, "docker.io/library/nginx:1.28").await, 2);
    sim.wait_instances("default", "web", Duration::from_secs(60), |i| {
        i.all_ready(3, 2)
    })
    .await;
    scale(
        &ctx.leadership,
        "default",
        "web",
        2,
        kat_tests::sim::sim_now(),
    )
    .await
    .unwrap();
    let back = rollback(
        &ctx.leadership,
        &ctx.settings,
        "default",
        "web",
        0,
        kat_tests::sim::sim_now(),
    )
    .await
    .unwrap();
    let spec = back.workload.unwrap().spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    sim.wait_instances("default", "web", Duration::from_secs(60), |i| {
        i.all_ready(2, 3)
    })
    .await;
    sim.stop().await;
}
