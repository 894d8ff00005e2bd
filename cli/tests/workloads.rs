//! Workloads end to end across processes (issue 6): three nodes (`kat-agent init` on
//! 127.0.0.1, joins on .2 and .3; real etcd, real TLS) running the fake runtime
//! (`--runtime fake`); `katcall apply -f examples/web --wait` → three RUNNING
//! instances, one per node; a changed image rolls out step by step within maxSurge;
//! `rollback` brings the previous spec back as a new generation;
//! `katcall logs`/`exec` reach an instance on another node through the leader;
//! a SIGKILLed node's instance is replaced elsewhere; a DAEMON_SERVICE has one
//! instance per Ready node; labels, taints, drain and uncordon act on nodes; a JOB
//! runs its completions and completes; `delete` removes the instances. Every agent is stopped by
//! PID when its guard drops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, api_port, cluster_file_with, join_args, katcall, ok};
use kat_tests::programs::find_program;
use nix::sys::signal::Signal;

const TICK: u64 = 1;
const LOSS: u64 = 3;

/// One instance as `katcall get instances -o json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    id: String,
    node: String,
    phase: String,
    generation: i64,
}

fn instances(config: &Path, workload: &str) -> Vec<Seen> {
    let text = ok(&katcall(
        config,
        &["get", "instances", workload, "-o", "json"],
    ));
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| Seen {
                    id: i["id"].as_str().unwrap_or_default().to_owned(),
                    node: i["node"].as_str().unwrap_or_default().to_owned(),
                    phase: i["status"]["phase"].as_str().unwrap_or_default().to_owned(),
                    generation: i["generation"]
                        .as_str()
                        .and_then(|g| g.parse().ok())
                        .or_else(|| i["generation"].as_i64())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

/// `kat-agent join` on the fake runtime.
fn join_fake<'a>(
    leader: &'a str,
    token: &'a str,
    state: &'a str,
    name: &'a str,
    addr: &'a str,
) -> Vec<&'a str> {
    let mut args = join_args(leader, token, state, name, addr);
    args.extend(["--runtime", "fake"]);
    args
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn workloads_run_roll_out_move_off_lost_nodes_and_go_away() {
    if find_program("etcd").is_none() {
        return;
    }
    eprintln!(
        "NOTE: this test runs the fake runtime; tests/tests/agent_podman.rs runs real Podman"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file_with(
        dir.path(),
        &format!("  agentTickSeconds: {TICK}\n  nodeLossTimeoutSeconds: {LOSS}\n"),
    );
    let leader = format!("127.0.0.1:{}", api_port(&config));
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (s1, s2, s3) = (path("n1"), path("n2"), path("n3"));
    let mut n1 = Agent::start(
        &[
            "init",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            &s1,
            "--node-name",
            "n1",
            "--advertise-address",
            "127.0.0.1",
            "--runtime",
            "fake",
        ],
        &dir.path().join("n1.log"),
    );
    n1.wait_for(
        "katcall configuration written (admin API token)",
        1,
        Duration::from_secs(10),
    );
    let kc = dir.path().join("n1/katcall.yaml");
    let token = |kc: &Path| {
        ok(&katcall(kc, &["token", "create", "join"]))
            .trim()
            .to_owned()
    };
    let t2 = token(&kc);
    let mut n2 = Agent::start(
        &join_fake(&leader, &t2, &s2, "n2", "127.0.0.2"),
        &dir.path().join("n2.log"),
    );
    n2.wait_for("joined the cluster", 1, Duration::from_secs(10));
    let t3 = token(&kc);
    let mut n3 = Agent::start(
        &join_fake(&leader, &t3, &s3, "n3", "127.0.0.3"),
        &dir.path().join("n3.log"),
    );
    n3.wait_for("joined the cluster", 1, Duration::from_secs(10));
    wait_until("three Ready nodes", Duration::from_secs(15), || {
        let text = ok(&katcall(&kc, &["get", "nodes", "-o", "json"]));
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["status"]["state"] == "READY")
            .count()
            == 3
    });

    // apply --wait: three instances, RUNNING, one per node.
    let started = Instant::now();
    let applied = katcall(
        &kc,
        &[
            "apply",
            "-f",
            examples().join("web").to_str().unwrap(),
            "--wait",
        ],
    );
    let text = ok(&applied);
    assert!(
        text.contains("workload default/web applied (generation 1)"),
        "{text}"
    );
    eprintln!("apply --wait took {:?}", started.elapsed());
    let web = instances(&kc, "web");
    assert_eq!(web.len(), 3, "{web:?}");
    assert!(web.iter().all(|i| i.phase == "RUNNING"), "{web:?}");
    let mut nodes: Vec<&str> = web.iter().map(|i| i.node.as_str()).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["n1", "n2", "n3"], "spread over the nodes");
    let listed = ok(&katcall(&kc, &["get", "workloads"]));
    assert!(listed.lines().nth(1).unwrap().contains("3/3"), "{listed}");
    let described = ok(&katcall(&kc, &["describe", "workload", "web"]));
    assert!(described.contains("Scheduled"), "{described}");
    assert!(described.contains("ROLLING (maxSurge 1)"), "{described}");

    // Logs and exec of an instance on another node, through the leader.
    let on_n2 = web.iter().find(|i| i.node == "n2").unwrap().id.clone();
    let logs = ok(&katcall(&kc, &["logs", &on_n2, "--tail", "10"]));
    assert!(logs.contains("fake container started"), "{logs}");
    let exec = katcall(&kc, &["exec", &format!("web/{on_n2}"), "--", "true"]);
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );

    // A new image: a rolling update, one surge instance at a time.
    let web2 = dir.path().join("web2");
    std::fs::create_dir(&web2).unwrap();
    for f in ["workload.kat", "VirtualLoadBalancer.kat"] {
        let text = std::fs::read_to_string(examples().join("web").join(f)).unwrap();
        std::fs::write(web2.join(f), text.replace("nginx:1.27", "nginx:1.28")).unwrap();
    }
    let mut rollout = Command::new(env!("CARGO_BIN_EXE_katcall"))
        .arg("--config")
        .arg(&kc)
        .args(["apply", "-f", web2.to_str().unwrap(), "--wait"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut steps: Vec<(usize, usize)> = Vec::new();
    let done = loop {
        let now = instances(&kc, "web");
        let old = now.iter().filter(|i| i.generation == 1).count();
        let new = now.iter().filter(|i| i.generation == 2).count();
        if steps.last() != Some(&(old, new)) {
            steps.push((old, new));
        }
        assert!(
            old + new <= 4,
            "never more than replicas + maxSurge: {now:?}"
        );
        if let Some(status) = rollout.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(150));
    };
    assert!(done.success(), "rollout --wait failed");
    eprintln!("rollout steps (old, new): {steps:?}");
    assert_eq!(steps.last(), Some(&(0, 3)));
    // Step by step: the old generation went down one at a time.
    let olds: Vec<usize> = steps.iter().map(|s| s.0).collect();
    assert!(
        olds.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1),
        "{steps:?}"
    );
    assert!(olds.contains(&2) && olds.contains(&1), "{steps:?}");
    let events = ok(&katcall(&kc, &["get", "events"]));
    assert!(events.contains("WorkloadUpdated"), "{events}");
    assert!(events.contains("Replaced"), "{events}");

    // Rollback: the previous generation's spec comes back as generation 3.
    let rolled = ok(&katcall(&kc, &["rollback", "workload", "web"]));
    assert!(rolled.contains("now generation 3"), "{rolled}");
    let status = ok(&katcall(&kc, &["rollout", "status", "web"]));
    assert!(status.contains("generation 3 rolled out"), "{status}");
    let back = instances(&kc, "web");
    assert!(
        back.iter().all(|i| i.generation == 3) && back.len() == 3,
        "{back:?}"
    );
    let described = ok(&katcall(&kc, &["describe", "workload", "web"]));
    assert!(described.contains("nginx:1.27"), "{described}");
    assert!(described.contains("RolledBack"), "{described}");
    let none_older = katcall(
        &kc,
        &["rollback", "workload", "web", "--to-generation", "99"],
    );
    assert!(!none_older.status.success());
    assert!(
        String::from_utf8_lossy(&none_older.stderr)
            .contains("generation 99 of workload default/web is not kept"),
        "{}",
        String::from_utf8_lossy(&none_older.stderr)
    );

    // A node dies: its instance is replaced on the others.
    let before = instances(&kc, "web");
    let on_n3: Vec<String> = before
        .iter()
        .filter(|i| i.node == "n3")
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(on_n3.len(), 1);
    n3.signal(Signal::SIGKILL);
    let _ = n3.child.wait();
    let moved = wait_until(
        "n3's instance replaced",
        Duration::from_secs(LOSS + TICK + 15),
        || {
            let now = instances(&kc, "web");
            now.len() == 3
                && now.iter().all(|i| i.node != "n3" && i.phase == "RUNNING")
                && !now.iter().any(|i| on_n3.contains(&i.id))
        },
    );
    eprintln!("n3's instance running elsewhere {moved:?} after SIGKILL");

    // A DAEMON_SERVICE: one instance on every Ready node.
    ok(&katcall(
        &kc,
        &[
            "apply",
            "-f",
            examples().join("node-exporter").to_str().unwrap(),
            "--wait",
        ],
    ));
    let daemons = instances(&kc, "node-exporter");
    let per_node: BTreeMap<&str, usize> = daemons.iter().fold(BTreeMap::new(), |mut m, i| {
        *m.entry(i.node.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        per_node,
        BTreeMap::from([("n1", 1), ("n2", 1)]),
        "{daemons:?}"
    );

    // Node verbs: labels and taints show; draining n2 moves its instances to n1.
    ok(&katcall(&kc, &["label", "node", "n1", "disktype=ssd"]));
    ok(&katcall(
        &kc,
        &["taint", "node", "n1", "spot:PreferNoSchedule"],
    ));
    let shown = ok(&katcall(&kc, &["get", "node", "n1", "-o", "json"]));
    assert!(shown.contains("\"disktype\": \"ssd\""), "{shown}");
    assert!(shown.contains("PREFER_NO_SCHEDULE"), "{shown}");
    ok(&katcall(&kc, &["taint", "node", "n1", "spot-"]));
    let drained = katcall(&kc, &["drain", "n2"]);
    ok(&drained);
    assert!(
        String::from_utf8_lossy(&drained.stderr).contains("node n2 drained"),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let web = instances(&kc, "web");
    assert!(web.iter().all(|i| i.node == "n1"), "{web:?}");
    assert!(
        instances(&kc, "node-exporter")
            .iter()
            .all(|i| i.node == "n1")
    );
    let nodes = ok(&katcall(&kc, &["get", "nodes"]));
    assert!(nodes.contains("Draining"), "{nodes}");
    ok(&katcall(&kc, &["uncordon", "n2"]));
    wait_until("the daemon back on n2", Duration::from_secs(15), || {
        instances(&kc, "node-exporter")
            .iter()
            .any(|i| i.node == "n2" && i.phase == "RUNNING")
    });

    // A JOB: two runs, one at a time (each fake run exits 0 after a second).
    let job = dir.path().join("count");
    std::fs::create_dir(&job).unwrap();
    std::fs::write(
        job.join("workload.kat"),
        "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: count
spec:
  type: JOB
  source:
    image: localhost/busybox:latest
  restartPolicy:
    condition: NEVER
  container:
    command: [\"sh\", \"-c\", \"echo counted\"]
    env:
      - name: KAT_FAKE_EXIT
        value: \"1\"
",
    )
    .unwrap();
    std::fs::write(
        job.join("job.kat"),
        "apiVersion: kat.dws.rip/v1alpha1
kind: JobDefinition
metadata:
  name: count
spec:
  completions: 2
  parallelism: 1
  backoffLimit: 1
",
    )
    .unwrap();
    let ran = Instant::now();
    ok(&katcall(
        &kc,
        &[
            "apply",
            "-f",
            job.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ],
    ));
    eprintln!("JOB with two runs completed in {:?}", ran.elapsed());
    let described = ok(&katcall(&kc, &["describe", "workload", "count"]));
    assert!(
        described.contains("State:          Complete"),
        "{described}"
    );
    assert!(
        described.contains("2 succeeded, 0 failed, 0 active"),
        "{described}"
    );
    assert!(described.contains("JobCompleted"), "{described}");
    let runs = instances(&kc, "count");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.phase == "SUCCEEDED"), "{runs:?}");

    // Delete: the instances go.
    let deleted = ok(&katcall(&kc, &["delete", "workload", "web"]));
    assert!(
        deleted.contains("workload default/web deleted"),
        "{deleted}"
    );
    assert!(instances(&kc, "web").is_empty());
    let missing = katcall(&kc, &["get", "workload", "web"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    for agent in [&mut n1, &mut n2] {
        agent.signal(Signal::SIGTERM);
    }
    for agent in [&mut n2, &mut n1] {
        assert!(agent.child.wait().unwrap().success());
    }
}
