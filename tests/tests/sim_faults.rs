//! The seeded fault matrix (issue 15): in the simulated cluster (three control-plane
//! nodes and two workers on the fake runtime, tokio's paused clock), a seed chooses
//! faults at random moments — kill -9 of the leader's tree or of any node's, a
//! container killed, a node partitioned and healed, the leader's wall clock stepped,
//! the store unavailable for seconds, an actor killed — while a service is applied,
//! rolled to a new generation, a job runs and a worker is drained. After the last
//! fault the checks are:
//!
//! - every workload converges to its spec within 2 × the loss timeout: the service's
//!   three replicas of the last acknowledged generation run and are ready, none on the
//!   drained node; the daemon runs once on every other node; the job is complete;
//! - no instance is assigned twice: across every node's machine, each running
//!   container of the service is a distinct instance's, on the node the instance is
//!   assigned to, and exactly three run;
//! - no two leaders write in the same term: the election keys guarding the store's
//!   successful writes never interleave ([`MemoryStore::fenced_writers`]);
//! - nothing acknowledged to a client is lost: the last acknowledged generation (or a
//!   later one) is the service's, with its image; the job and the drain stand.
//!
//! 100 seeds per run, in four tests of 25 that run in parallel; simulated time makes
//! each seed take milliseconds. A failing seed prints itself and its plan; the same
//! faults at the same simulated moments come back with
//! `KAT_FAULT_SEED=N cargo nextest run -p kat-tests --test sim_faults`.
//!
//! [`MemoryStore::fenced_writers`]: kat_actors::store::MemoryStore::fenced_writers

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use kat_actors::state::keys;
use kat_actors::store::StateStore;
use kat_proto::v1alpha1::{ClusterConfiguration, JobState, NodeState};
use kat_runtime::{ContainerRuntime, ContainerState};
use kat_tests::sim::{SimCluster, step_wall_clock, wait_until};
use prost::Message;
use tokio::time::Instant;

const TICK: u64 = 1;
const LOSS: u64 = 10;
const SEEDS: u64 = 100;
const CONTROL_PLANE: [&str; 3] = ["cp1", "cp2", "cp3"];
const WORKERS: [&str; 2] = ["w1", "w2"];
/// Faults begin within this window; each ends (heals, restarts) within `MAX_DOWN`.
const WINDOW: u64 = 60;
const MAX_DOWN: u64 = 20;

fn cluster() -> ClusterConfiguration {
    let yaml = format!(
        "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: sim}}\n\
         spec: {{agentTickSeconds: {TICK}, nodeLossTimeoutSeconds: {LOSS}}}\n"
    );
    kat_proto::quadlet::parse_cluster_config("sim.kat", yaml.as_bytes()).unwrap()
}

fn service(image: &str) -> String {
    format!(
        "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {{name: web, namespace: default}}
spec:
  type: SERVICE
  source: {{image: {image}}}
  replicas: 3
  updateStrategy: {{type: ROLLING, maxSurge: 1}}
  container:
    command: [sleep, '100000']
"
    )
}

/// examples/node-exporter: a DAEMON_SERVICE.
const DAEMON: &str = include_str!("../../examples/node-exporter/workload.kat");

const JOB: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {name: count, namespace: default}
spec:
  type: JOB
  source: {image: localhost/busybox:latest}
  restartPolicy: {condition: NEVER}
  container:
    command: [sh, -c, 'echo counted']
    env:
      - {name: KAT_FAKE_EXIT, value: '2'}
";
const JOB_DEF: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: JobDefinition
metadata: {name: count}
spec: {completions: 2, parallelism: 1, backoffLimit: 20}
";

/// A small deterministic generator (SplitMix64): the same seed, the same plan.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn secs(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from * 1000 + self.below((to - from) * 1000 + 1))
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[usize::try_from(self.below(of.len() as u64)).unwrap()]
    }
}

#[derive(Debug, Clone)]
enum Fault {
    /// kill -9 of the leading node's whole tree; it starts again after `down`.
    CrashLeader { down: Duration },
    /// kill -9 of one node's tree (its containers run on); back after `down`.
    CrashNode { node: &'static str, down: Duration },
    /// One running container on `node` dies (exit 137).
    KillContainer { node: &'static str },
    /// `node` cut off from every leader; healed after `down`.
    Partition { node: &'static str, down: Duration },
    /// Every wall clock steps forward by more than the loss timeout.
    ClockJump,
    /// The store answers nothing for `down`.
    StoreOutage { down: Duration },
    /// One actor killed (its supervisor restarts it).
    KillActor { actor: String },
}

#[derive(Clone)]
struct Plan {
    seed: u64,
    /// When (simulated, from the first apply) each fault starts.
    faults: Vec<(Duration, Fault)>,
    update_at: Duration,
    job_at: Duration,
    drain_at: Duration,
    drained: &'static str,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: update at {:?}, job at {:?}, drain {} at {:?}",
            self.seed, self.update_at, self.job_at, self.drained, self.drain_at
        )?;
        for (at, fault) in &self.faults {
            writeln!(f, "  at {at:?}: {fault:?}")?;
        }
        Ok(())
    }
}

const ALL: [&str; 5] = ["cp1", "cp2", "cp3", "w1", "w2"];

fn plan(seed: u64) -> Plan {
    let mut rng = Rng(seed);
    let count = 1 + rng.below(4);
    let mut faults = Vec::new();
    for _ in 0..count {
        let at = rng.secs(0, WINDOW);
        let down = rng.secs(1, MAX_DOWN);
        let fault = match rng.below(7) {
            0 => Fault::CrashLeader { down },
            1 => Fault::CrashNode {
                node: rng.pick(&ALL),
                down,
            },
            2 => Fault::KillContainer {
                node: rng.pick(&ALL),
            },
            3 => Fault::Partition {
                node: rng.pick(&ALL),
                down,
            },
            4 => Fault::ClockJump,
            5 => Fault::StoreOutage {
                down: rng.secs(1, 12),
            },
            _ => {
                let node = rng.pick(&ALL);
                let kind = rng.pick(&["heartbeat", "runtime", "scheduler", "node-monitor"]);
                Fault::KillActor {
                    actor: format!("{kind}@{node}"),
                }
            }
        };
        faults.push((at, fault));
    }
    faults.sort_by_key(|(at, _)| *at);
    Plan {
        seed,
        faults,
        update_at: rng.secs(5, 40),
        job_at: rng.secs(0, 30),
        drain_at: rng.secs(10, 50),
        drained: rng.pick(&WORKERS),
    }
}

/// What the simulated clients were told succeeded.
#[derive(Debug, Default)]
struct Acknowledged {
    /// (generation, image) of the service's applies.
    service: Vec<(i64, String)>,
    /// The daemon's generation, as its last acknowledged apply made it.
    daemon: i64,
    job: bool,
    drained: Option<String>,
}

/// Something to do at a moment: a client operation, or the end of a fault.
#[derive(Debug, Clone)]
enum Step {
    Fault(Fault),
    Update,
    /// The daemon rolled to a new image (while nodes may be lost).
    DaemonUpdate,
    Job,
    Drain,
    Restart(&'static str),
    RestartLeader,
    Heal(&'static str),
    StoreBack,
}

async fn leader_name(sim: &SimCluster) -> Option<String> {
    sim.leader().await
}

/// Starts node `name` again once its tree is down (a tree just killed takes a moment
/// to finish); a tree still running after 5 s is left alone, and the final check
/// that every node runs catches a node that never came back.
async fn restart_if_down(sim: &mut SimCluster, name: &str) {
    for _ in 0..50 {
        if sim.nodes[name].handle.is_finished() {
            sim.start_node(name, CONTROL_PLANE.contains(&name)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a client keeps retrying an operation no leader takes.
const CLIENT_PATIENCE: Duration = Duration::from_secs(60);

/// One attempt at applying the service; acknowledged on success.
async fn apply_service(
    sim: &SimCluster,
    image: &str,
    ack: &mut Acknowledged,
) -> Result<(), String> {
    let applied = sim
        .apply(&[("workload.kat", service(image).as_str())])
        .await
        .map_err(|e| e.to_string())?;
    let generation = applied.workload.unwrap().metadata.unwrap().generation;
    ack.service.push((generation, image.to_owned()));
    Ok(())
}

/// Who leads, for a failure message.
async fn members(sim: &SimCluster) -> String {
    let mut members = Vec::new();
    for cp in CONTROL_PLANE {
        let election = kat_tests::cluster::election_of(cp).await;
        members.push(format!(
            "{cp}: tree {}, election {election:?}",
            if sim.nodes[cp].handle.is_finished() {
                "down"
            } else {
                "up"
            }
        ));
    }
    members.join("; ")
}

/// Runs one seed: the plan, then the checks; panics (naming the seed) on a violation.
async fn run_seed(seed: u64) {
    let plan = plan(seed);
    let guard = SeedGuard(plan.clone());
    let mut sim = SimCluster::start(cluster(), CONTROL_PLANE.len(), WORKERS.len()).await;
    sim.wait_states(Duration::from_secs(30), |s| {
        s.len() == ALL.len() && s.values().all(|st| *st == NodeState::Ready)
    })
    .await;
    let mut ack = Acknowledged::default();
    apply_service(&sim, "docker.io/library/nginx:1.27", &mut ack)
        .await
        .expect("the first apply");
    let daemon = sim
        .apply(&[("workload.kat", DAEMON)])
        .await
        .expect("the daemon's apply");
    ack.daemon = daemon.workload.unwrap().metadata.unwrap().generation;

    // The timeline: faults, their ends, and the client operations, in time order.
    let mut steps: Vec<(Duration, Step)> = vec![
        (plan.update_at, Step::Update),
        (plan.update_at + Duration::from_secs(1), Step::DaemonUpdate),
        (plan.job_at, Step::Job),
        (plan.drain_at, Step::Drain),
    ];
    for (at, fault) in &plan.faults {
        steps.push((*at, Step::Fault(fault.clone())));
        match fault {
            Fault::CrashNode { node, down } => steps.push((*at + *down, Step::Restart(node))),
            Fault::CrashLeader { down } => steps.push((*at + *down, Step::RestartLeader)),
            Fault::Partition { node, down } => steps.push((*at + *down, Step::Heal(node))),
            Fault::StoreOutage { down } => steps.push((*at + *down, Step::StoreBack)),
            _ => {}
        }
    }
    steps.sort_by_key(|(at, _)| *at);
    let start = Instant::now();
    let mut crashed_leaders: Vec<String> = Vec::new();
    // A client operation no leader took is tried again half a second later (the
    // timeline goes on meanwhile), for up to a minute.
    let mut first_tried: BTreeMap<String, Duration> = BTreeMap::new();
    while !steps.is_empty() {
        let (at, step) = steps.remove(0);
        tokio::time::sleep_until(start + at).await;
        let client = match &step {
            Step::Update => {
                Some(apply_service(&sim, "docker.io/library/nginx:1.28", &mut ack).await)
            }
            Step::DaemonUpdate => {
                let text = DAEMON.replace("localhost/busybox:latest", "localhost/busybox:1.37");
                Some(
                    sim.apply(&[("workload.kat", text.as_str())])
                        .await
                        .map(|q| ack.daemon = q.workload.unwrap().metadata.unwrap().generation)
                        .map_err(|e| e.to_string()),
                )
            }
            Step::Job => Some(
                sim.apply(&[("workload.kat", JOB), ("job.kat", JOB_DEF)])
                    .await
                    .map(|_| ack.job = true)
                    .map_err(|e| e.to_string()),
            ),
            Step::Drain => {
                let node = plan.drained.to_owned();
                let drained = match sim.leader_ctx() {
                    None => Err("no leader".to_owned()),
                    Some(ctx) => {
                        kat_actors::leader::drain::drain(ctx, node.clone(), Duration::from_secs(1))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                };
                Some(drained.map(|()| ack.drained = Some(node)))
            }
            _ => None,
        };
        if let Some(result) = client {
            if let Err(e) = result {
                let what = format!("{step:?}");
                let first = *first_tried.entry(what.clone()).or_insert(at);
                assert!(
                    at - first < CLIENT_PATIENCE,
                    "{what}: no leader took it within a minute; last: {e}; {}",
                    members(&sim).await
                );
                let again = at + Duration::from_millis(500);
                let i = steps.partition_point(|(t, _)| *t <= again);
                steps.insert(i, (again, step));
            }
            continue;
        }
        match step {
            Step::Fault(Fault::CrashLeader { .. }) => {
                if let Some(leader) = leader_name(&sim).await
                    && !crashed_leaders.contains(&leader)
                {
                    sim.crash(&leader);
                    crashed_leaders.push(leader);
                } else {
                    crashed_leaders.push(String::new());
                }
            }
            Step::RestartLeader => {
                let name = crashed_leaders.remove(0);
                if !name.is_empty() {
                    restart_if_down(&mut sim, &name).await;
                }
            }
            Step::Fault(Fault::CrashNode { node, .. }) => sim.crash(node),
            Step::Restart(node) => {
                if crashed_leaders.iter().any(|n| n == node) {
                    // Also the crashed leader: its own restart brings it back.
                    continue;
                }
                restart_if_down(&mut sim, node).await;
            }
            Step::Fault(Fault::KillContainer { node }) => {
                let machine = sim.nodes[node].containers();
                let running = machine.list(&BTreeMap::new()).await.unwrap();
                if let Some(c) = running.iter().find(|c| c.state == ContainerState::Running) {
                    let _ = machine.exit(&c.id, 137);
                }
            }
            Step::Fault(Fault::Partition { node, .. }) => sim.partition(node),
            Step::Heal(node) => sim.heal(node),
            Step::Fault(Fault::ClockJump) => step_wall_clock(Duration::from_secs(LOSS + 1)),
            Step::Fault(Fault::StoreOutage { .. }) => sim.store.set_available(false),
            Step::StoreBack => sim.store.set_available(true),
            Step::Fault(Fault::KillActor { actor }) => {
                sim.kill_actor(&actor);
            }
            Step::Update | Step::DaemonUpdate | Step::Job | Step::Drain => {}
        }
    }
    // Every node up again (a fault may have hit one twice).
    for name in ALL {
        if sim.nodes[name].handle.is_finished() {
            restart_if_down(&mut sim, name).await;
        }
    }
    for name in ALL {
        assert!(
            !sim.nodes[name].handle.is_finished(),
            "{name}'s tree is down after the faults ended"
        );
    }

    // Convergence within 2 × the loss timeout after the last fault ended.
    let (generation, image) = ack.service.last().cloned().unwrap();
    let drained = ack.drained.clone().unwrap();
    let converged = |i: &kat_tests::sim::Instances| {
        let counted: Vec<_> = i.iter().filter(|x| !x.node_lost).collect();
        counted.len() == 3
            && i.ready() == 3
            && counted.iter().all(|x| x.generation == generation)
            && counted.iter().all(|x| x.node != drained)
            && i.iter().all(|x| !x.node_lost)
    };
    let within = Duration::from_secs(2 * LOSS);
    let instances = sim
        .wait_instances("default", "web", within, converged)
        .await;
    // The daemon: one ready instance on every node but the drained one.
    wait_until(
        "one daemon instance on every node but the drained one",
        within,
        async || sim.instances("default", "node-exporter").await,
        |i| {
            let counted: Vec<_> = i.iter().filter(|x| !x.node_lost).collect();
            let nodes: BTreeSet<&str> = counted.iter().map(|x| x.node.as_str()).collect();
            counted.len() == ALL.len() - 1
                && nodes.len() == counted.len()
                && !nodes.contains(drained.as_str())
                && i.ready() == counted.len()
                && counted.iter().all(|x| x.generation == ack.daemon)
                && i.iter().all(|x| !x.node_lost)
        },
    )
    .await;
    let job_done = wait_until(
        "the job complete",
        within,
        async || {
            let state = sim
                .store
                .get(&keys::job("default", "count"))
                .await
                .ok()
                .flatten()
                .map(|kv| JobState::decode(kv.value.as_slice()).unwrap());
            (state, sim.instances("default", "count").await)
        },
        |(state, _)| state.as_ref().is_some_and(|s| s.complete),
    )
    .await
    .0;
    assert!(
        !job_done.unwrap().failed,
        "the job failed (backoff limit 20)"
    );

    // No instance assigned twice: each running web container is one instance's, on its
    // node, and there are exactly three (after the nodes have caught up).
    let assigned: BTreeMap<String, String> = instances
        .iter()
        .map(|i| (i.id.clone(), i.node.clone()))
        .collect();
    let running = wait_until(
        "exactly the assigned web containers running",
        within,
        async || running_web(&sim).await,
        |running| {
            running.len() == 3
                && running
                    .iter()
                    .all(|(id, node)| assigned.get(id) == Some(node))
        },
    )
    .await;
    let distinct: BTreeSet<&String> = running.iter().map(|(id, _)| id).collect();
    assert_eq!(
        distinct.len(),
        running.len(),
        "an instance runs twice: {running:?}"
    );

    // No two leaders in one term: guard keys never come back once replaced.
    let writers = sim.store.fenced_writers();
    let mut seen = BTreeSet::new();
    for w in &writers {
        assert!(
            seen.insert(w.clone()),
            "writes under leader key {w} resumed after another leader's: {writers:?}"
        );
    }

    // Nothing acknowledged lost.
    let status = sim.workload("default", "web").await;
    let workload = status.workload.unwrap();
    assert!(workload.metadata.unwrap().generation >= generation);
    let spec_image = workload.spec.unwrap().source.unwrap().kind;
    assert_eq!(
        spec_image,
        Some(kat_proto::v1alpha1::source::Kind::Image(image)),
        "the last acknowledged apply's image"
    );
    let node = kat_actors::state::nodes::list(sim.store.as_ref())
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.metadata.as_ref().unwrap().name == drained)
        .unwrap();
    assert!(node.spec.unwrap().draining, "the drain stands");

    sim.stop().await;
    std::mem::forget(guard);
}

/// The running containers of the service on every machine: (instance ID, node).
async fn running_web(sim: &SimCluster) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for node in sim.nodes.values() {
        for c in node.containers().list(&BTreeMap::new()).await.unwrap() {
            if c.state == ContainerState::Running
                && let Some(id) = c.name.strip_prefix("kat-default-web-")
            {
                out.push((id.to_owned(), node.name.clone()));
            }
        }
    }
    out.sort();
    out
}

/// Prints the seed and its plan when a seed fails (a panic unwinds through it).
struct SeedGuard(Plan);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        eprintln!(
            "fault matrix: seed {} FAILED; replay it with KAT_FAULT_SEED={} cargo nextest run \
             -p kat-tests --test sim_faults\n{:?}",
            self.0.seed, self.0.seed, self.0
        );
    }
}

/// The seeds of this run: `KAT_FAULT_SEED=N` (one), else `range`.
fn seeds(range: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("KAT_FAULT_SEED") {
        Ok(seed) => {
            let seed: u64 = seed.parse().expect("KAT_FAULT_SEED: a number");
            if range.contains(&seed) {
                vec![seed]
            } else {
                Vec::new()
            }
        }
        Err(_) => range.collect(),
    }
}

async fn run_seeds(range: std::ops::Range<u64>) {
    // `KAT_FAULT_LOG=info` (or any filter) shows the nodes' logs of a replayed seed.
    if let Ok(filter) = std::env::var("KAT_FAULT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let started = std::time::Instant::now();
    let list = seeds(range);
    for seed in &list {
        run_seed(*seed).await;
    }
    eprintln!(
        "fault matrix: {} seeds passed in {:?}",
        list.len(),
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn fault_matrix_seeds_0_to_24() {
    run_seeds(0..SEEDS / 4).await;
}

#[tokio::test(start_paused = true)]
async fn fault_matrix_seeds_25_to_49() {
    run_seeds(SEEDS / 4..SEEDS / 2).await;
}

#[tokio::test(start_paused = true)]
async fn fault_matrix_seeds_50_to_74() {
    run_seeds(SEEDS / 2..SEEDS * 3 / 4).await;
}

#[tokio::test(start_paused = true)]
async fn fault_matrix_seeds_75_to_99() {
    run_seeds(SEEDS * 3 / 4..SEEDS).await;
}

/// A store that answers nothing for longer than the leader's lease (an etcd stall, a
/// lost quorum) costs the leadership, not the nodes: every tree stays up and a leader
/// is back soon after the store.
#[tokio::test(start_paused = true)]
async fn a_long_store_outage_leaves_every_node_running_and_a_leader_after() {
    let sim = SimCluster::start(cluster(), CONTROL_PLANE.len(), WORKERS.len()).await;
    sim.wait_states(Duration::from_secs(30), |s| {
        s.len() == ALL.len() && s.values().all(|st| *st == NodeState::Ready)
    })
    .await;
    sim.store.set_available(false);
    tokio::time::sleep(Duration::from_secs(20)).await;
    sim.store.set_available(true);
    let back = Instant::now();
    wait_until(
        "a leader again",
        Duration::from_secs(20),
        async || sim.leader_ctx().is_some(),
        |leads| *leads,
    )
    .await;
    eprintln!("a leader {:?} after the store came back", back.elapsed());
    for name in ALL {
        assert!(
            !sim.nodes[name].handle.is_finished(),
            "{name}'s tree stopped: {}",
            members(&sim).await
        );
    }
    sim.wait_states(Duration::from_secs(2 * LOSS), |s| {
        s.values().all(|st| *st == NodeState::Ready)
    })
    .await;
    sim.stop().await;
}

#[test]
fn a_seed_makes_the_same_plan_every_time() {
    let a = format!("{:?}", plan(42));
    assert_eq!(a, format!("{:?}", plan(42)));
    assert_ne!(a, format!("{:?}", plan(43)));
}
