//! The disaster drill (issue 15): three nodes run a service (fake runtime), the
//! leader makes a backup, then the control-plane node dies with its state directory.
//! `kat-agent restore` rebuilds it from the backup directory alone (snapshot and
//! CAs); `kat-agent run` brings the cluster back: the workload and its instances are
//! there, the workers reattached with their certificates, and their containers are the
//! same ones (same IDs) — adopted, not restarted. A restore given the wrong CA, or
//! asked to overwrite etcd data, fails and leaves nothing in the way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, api_port, cluster_file_with, init_args, join_args, katcall, ok};
use kat_tests::programs::find_program;
use nix::sys::signal::Signal;

const REPLICAS: usize = 6;

/// Instance ID → (node, phase, container ID), from `katcall get instances -o json`.
fn instances(config: &Path) -> Option<BTreeMap<String, (String, String, String)>> {
    let out = katcall(config, &["get", "instances", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        list["items"]
            .as_array()?
            .iter()
            .map(|i| {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (
                    text(&i["id"]),
                    (
                        text(&i["node"]),
                        text(&i["status"]["phase"]),
                        text(&i["status"]["containerId"]),
                    ),
                )
            })
            .collect(),
    )
}

/// Waits until `done` holds for the instances; returns them.
fn wait_instances(
    config: &Path,
    within: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<String, (String, String, String)>) -> bool,
) -> BTreeMap<String, (String, String, String)> {
    let started = Instant::now();
    loop {
        let now = instances(config);
        if let Some(now) = &now
            && done(now)
        {
            return now.clone();
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; instances: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn all_running(list: &BTreeMap<String, (String, String, String)>) -> bool {
    list.len() == REPLICAS
        && list
            .values()
            .all(|(_, phase, container)| phase == "RUNNING" && !container.is_empty())
}

fn kat_agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_destroyed_control_plane_comes_back_from_its_backup_and_workers_keep_their_containers() {
    if find_program("etcd").is_none() {
        eprintln!("skipped: etcd is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    if find_program("etcdctl").is_none() && find_program("etcdutl").is_none() {
        eprintln!("skipped: neither etcdctl nor etcdutl is installed (restore runs one)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let config = cluster_file_with(
        dir.path(),
        &format!(
            "  agentTickSeconds: 1\n  nodeLossTimeoutSeconds: 30\n  backupPath: {}\n",
            backups.display()
        ),
    );
    let leader = format!("127.0.0.1:{}", api_port(&config));
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (s1, s2, s3) = (path("n1"), path("n2"), path("n3"));
    let fake = ["--runtime", "fake"];

    let mut args = init_args(config.to_str().unwrap(), &s1, "n1", "127.0.0.1");
    args.extend(fake);
    let mut n1 = Agent::start(&args, &dir.path().join("n1.log"));
    n1.wait_for("API listening", 1, Duration::from_secs(20));
    n1.wait_for(
        "katcall configuration written (admin API token)",
        1,
        Duration::from_secs(10),
    );
    let katcall_yaml = dir.path().join("n1/katcall.yaml");
    let token = ok(&katcall(
        &katcall_yaml,
        &["token", "create", "join", "--reusable"],
    ))
    .trim()
    .to_owned();
    let mut workers = Vec::new();
    for (name, state, addr) in [("n2", &s2, "127.0.0.2"), ("n3", &s3, "127.0.0.3")] {
        let mut args = join_args(&leader, &token, state, name, addr);
        args.extend(fake);
        let mut agent = Agent::start(&args, &dir.path().join(format!("{name}.log")));
        agent.wait_for("joined the cluster", 1, Duration::from_secs(30));
        workers.push(agent);
    }
    let workload = dir.path().join("web");
    std::fs::create_dir_all(&workload).unwrap();
    std::fs::write(
        workload.join("workload.kat"),
        format!(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata:\n  name: web\n\
             spec:\n  type: SERVICE\n  source:\n    image: localhost/kat-restore-test:1\n  \
             replicas: {REPLICAS}\n  container:\n    command: [\"sleep\", \"1000\"]\n"
        ),
    )
    .unwrap();
    ok(&katcall(
        &katcall_yaml,
        &["apply", "-f", workload.to_str().unwrap()],
    ));
    let before = wait_instances(
        &katcall_yaml,
        Duration::from_secs(60),
        "every instance running on the workers",
        |list| {
            all_running(list)
                && ["n2", "n3"]
                    .iter()
                    .all(|n| list.values().any(|(node, _, _)| node == n))
        },
    );
    let made = ok(&katcall(&katcall_yaml, &["backup"]));
    assert!(made.contains("backup kat-"), "{made}");
    let snapshot = kat_actors::leader::backups::list(&backups)
        .unwrap()
        .pop()
        .expect("a snapshot in backupPath");
    assert!(
        backups.join("pki/ca.key").exists(),
        "the CAs are kept beside the backups"
    );

    // The disaster: the control-plane node dies, and its state directory with it.
    n1.signal(Signal::SIGKILL);
    let _ = n1.child.wait();
    drop(n1);
    std::fs::remove_dir_all(&s1).unwrap();

    // A restore with the wrong CA (here the etcd CA stands in for the cluster CA) is
    // refused, names the reason, and leaves nothing that blocks the next try.
    let wrong = dir.path().join("wrong-pki");
    std::fs::create_dir_all(&wrong).unwrap();
    for (from, to) in [
        ("etcd-ca.crt", "ca.crt"),
        ("etcd-ca.key", "ca.key"),
        ("etcd-ca.crt", "etcd-ca.crt"),
        ("etcd-ca.key", "etcd-ca.key"),
    ] {
        std::fs::copy(backups.join("pki").join(from), wrong.join(to)).unwrap();
    }
    let wrong_pki = wrong.to_str().unwrap();
    let restore_args = |pki: Option<&'static str>| {
        let mut args: Vec<&str> = vec![
            "restore",
            "--snapshot",
            snapshot.path.as_str(),
            "--state-dir",
            s1.as_str(),
            "--node-name",
            "n1",
            "--advertise-address",
            "127.0.0.1",
            "--runtime",
            "fake",
        ];
        if pki.is_some() {
            args.extend(["--pki", wrong_pki]);
        }
        args
    };
    let refused = kat_agent(&restore_args(Some("wrong")));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not this snapshot's cluster CA"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&s1)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed restore left {left:?}");

    // The real restore: from the backup directory alone.
    let started = Instant::now();
    let restored = kat_agent(&restore_args(None));
    let stdout = String::from_utf8_lossy(&restored.stdout);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(stdout.contains("restored cluster \"test\""), "{stdout}");
    assert!(
        stdout.contains(&format!("kat-agent run --state-dir {s1}")),
        "{stdout}"
    );
    eprintln!("restore took {:?}", started.elapsed());
    // The cluster CA is the cluster's own; the etcd CA is new (no former member's etcd
    // certificate is trusted by the restored member).
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let restored_pki = Path::new(&s1).join("pki");
    assert_eq!(
        read(restored_pki.join("ca.crt")),
        read(backups.join("pki/ca.crt"))
    );
    assert_ne!(
        read(restored_pki.join("etcd-ca.crt")),
        read(backups.join("pki/etcd-ca.crt"))
    );
    // Never over etcd data.
    let again = kat_agent(&restore_args(None));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("holds an etcd member's data; restore never overwrites it"),
        "{stderr}"
    );

    let mut n1 = Agent::start(&["run", "--state-dir", &s1], &dir.path().join("n1-run.log"));
    n1.wait_for("API listening", 1, Duration::from_secs(20));
    // A new katcall.yaml (the old one went with the directory), for the same cluster.
    n1.wait_for(
        "katcall configuration written (admin API token)",
        1,
        Duration::from_secs(10),
    );
    let after = wait_instances(
        &katcall_yaml,
        Duration::from_secs(60),
        "the same instances running again",
        |list| all_running(list) && list.keys().eq(before.keys()),
    );
    for (id, (node, _, container)) in &before {
        let (node_after, _, container_after) = &after[id];
        assert_eq!(node, node_after, "instance {id} stayed where it was");
        if node != "n1" {
            assert_eq!(
                container, container_after,
                "instance {id} on {node} kept its container"
            );
        }
    }
    let workloads = ok(&katcall(&katcall_yaml, &["get", "workloads"]));
    assert!(
        workloads.contains(&format!("{REPLICAS}/{REPLICAS}")),
        "{workloads}"
    );
    let nodes = ok(&katcall(&katcall_yaml, &["get", "nodes"]));
    let ready = nodes
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
        .count();
    assert_eq!(ready, 3, "{nodes}");
    let events = ok(&katcall(&katcall_yaml, &["get", "events"]));
    assert!(events.contains("ClusterRestored"), "{events}");

    // The restored cluster takes changes: scaling down keeps the generation and
    // leaves the remaining instances as they were.
    let scaled = ok(&katcall(
        &katcall_yaml,
        &["scale", "workload", "web", "--replicas", "4"],
    ));
    assert!(
        scaled.contains("scaled to 4 (generation 1, no rollout)"),
        "{scaled}"
    );
    let four = wait_instances(
        &katcall_yaml,
        Duration::from_secs(30),
        "four instances after scaling",
        |list| list.len() == 4,
    );
    for (id, (_, _, container)) in &four {
        assert_eq!(
            &after[id].2, container,
            "instance {id} untouched by the scaling"
        );
    }
    for agent in workers.iter_mut().chain(std::iter::once(&mut n1)) {
        agent.signal(Signal::SIGTERM);
    }
    for agent in workers.iter_mut().chain(std::iter::once(&mut n1)) {
        assert!(agent.child.wait().unwrap().success());
    }
}
