//! A workload on real Podman through `kat-agent` (issues 5 and 6): a single node,
//! with the default runtime (Podman, rootless: the agent makes the workload's user and
//! starts that user's systemd manager), `katcall apply --wait` runs the instance as
//! the workload user; the agent is restarted in the middle and the running instance
//! is adopted (same container); `katcall logs` and `katcall exec` reach it through
//! the agent API; `katcall delete` stops and removes it. Skipped with a
//! printed reason where etcd, Podman, systemd or useradd are missing. The agent is
//! stopped by PID; the workload user, its processes, home and cgroups are removed
//! when the test ends, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Agent, RemovedDir, cluster_file_with, katcall, ok};
use kat_runtime::ContainerRuntime;
use kat_runtime::podman::{Podman, RunAs};
use kat_runtime::rootless::lookup_user;
use kat_runtime::users::workload_user;
use kat_tests::programs::{BUSYBOX_IMAGE, find_program, podman_with_busybox};
use kat_tests::systemd::WorkloadUserCleanup;
use nix::sys::signal::Signal;

fn bundle(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir(&path).unwrap();
    std::fs::write(
        path.join("workload.kat"),
        format!(
            "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: {name}
spec:
  type: SERVICE
  source:
    image: {BUSYBOX_IMAGE}
  replicas: 1
  container:
    command: [\"sh\", \"-c\"]
    args: [\"echo hello from $(id -u); trap 'exit 0' TERM; while true; do sleep 0.2; done\"]
"
        ),
    )
    .unwrap();
    path
}

fn instance_ids(kc: &Path, name: &str) -> Vec<(String, String)> {
    let text = ok(&katcall(kc, &["get", "instances", name, "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or_default().to_owned(),
                        i["status"]["phase"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_workload_runs_rootless_on_podman_survives_an_agent_restart_and_goes() {
    if find_program("etcd").is_none()
        || find_program("useradd").is_none()
        || find_program("setsid").is_none()
        || kat_runtime::rootless::systemd_binary().is_none()
    {
        eprintln!("SKIPPED: needs etcd, useradd, setsid and systemd");
        return;
    }
    let Some(podman_bin) = podman_with_busybox() else {
        return;
    };
    let pid = std::process::id();
    let node = format!("pn{pid}");
    let name = format!("pw{pid}");
    let user = workload_user("default", &name);
    let _user_cleanup = WorkloadUserCleanup(user.clone());
    let _run_cleanup = RemovedDir(Path::new("/run/kat").join(&node));
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file_with(dir.path(), "  agentTickSeconds: 1\n");
    let state = dir.path().join("n1");
    let state = state.to_str().unwrap();
    let mut agent = Agent::start(
        &[
            "init",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state,
            "--node-name",
            &node,
            "--advertise-address",
            "127.0.0.1",
            // No /dev/net/tun for rootless networking in the test sandbox.
            "--instance-network",
            "none",
        ],
        &dir.path().join("agent.log"),
    );
    agent.wait_for(
        "katcall configuration written (admin API token)",
        1,
        Duration::from_secs(10),
    );
    let kc = dir.path().join("n1/katcall.yaml");

    let started = Instant::now();
    let path = bundle(dir.path(), &name);
    let applied = katcall(
        &kc,
        &[
            "apply",
            "-f",
            path.to_str().unwrap(),
            "--wait",
            "--timeout",
            "2m",
        ],
    );
    if !applied.status.success() {
        let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "apply --wait failed: {}\nagent log (last lines, newest first):\n{}",
            String::from_utf8_lossy(&applied.stderr),
            tail.join("\n")
        );
    }
    eprintln!("apply → running on Podman in {:?}", started.elapsed());
    let ids = instance_ids(&kc, &name);
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].1, "RUNNING");
    let id = ids[0].0.clone();

    // It runs as the workload user the agent made.
    let u = block(lookup_user(&user))
        .unwrap()
        .expect("the agent made the workload user");
    let podman = Podman::new(&podman_bin).as_user(RunAs {
        uid: u.uid,
        gid: u.gid,
        home: u.home.clone(),
        runtime_dir: Path::new("/run/kat").join(&node).join("users").join(&user),
    });
    let container = format!("kat-default-{name}-{id}");
    let status = block(podman.status(&container)).unwrap();
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", status.pid.unwrap())).unwrap();
    assert!(
        proc_status
            .lines()
            .any(|l| l.starts_with("Uid:")
                && l.split_whitespace().nth(1) == Some(&u.uid.to_string())),
        "{proc_status}"
    );

    // Logs and exec through the leader and the node's agent API, from Podman.
    // (The first line can reach the log a moment after the container counts as started.)
    let started = Instant::now();
    let logs = loop {
        let logs = ok(&katcall(&kc, &["logs", &id]));
        if !logs.trim().is_empty() || started.elapsed() > Duration::from_secs(15) {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        logs.trim(),
        "hello from 0",
        "root inside the user namespace"
    );
    let exec = katcall(
        &kc,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(exec.status.code(), Some(3), "the command's exit status");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&exec.stderr), "err\n");

    // The agent restarts: the instance is adopted, not restarted.
    agent.signal(Signal::SIGTERM);
    assert!(agent.child.wait().unwrap().success());
    drop(agent);
    let mut agent = Agent::start(
        &["run", "--state-dir", state, "--instance-network", "none"],
        &dir.path().join("agent-run.log"),
    );
    agent.wait_for("instance ensured", 1, Duration::from_secs(30));
    let adopted = agent.records("instance ensured");
    assert_eq!(adopted[0]["fields"]["outcome"], "Adopted", "{adopted:?}");
    assert_eq!(block(podman.status(&container)).unwrap().id, status.id);

    // Delete: the container goes.
    agent.wait_for("API serving as leader", 1, Duration::from_secs(30));
    ok(&katcall(&kc, &["delete", "workload", &name]));
    let gone = Instant::now();
    while block(podman.status(&container)).is_ok() {
        assert!(
            gone.elapsed() < Duration::from_secs(30),
            "container still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A JOB of the same workload user's kind: its run ends, and the job completes.
    let job = dir.path().join("job");
    std::fs::create_dir(&job).unwrap();
    std::fs::write(
        job.join("workload.kat"),
        format!(
            "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: {name}
spec:
  type: JOB
  source:
    image: {BUSYBOX_IMAGE}
  container:
    command: [\"sh\", \"-c\", \"echo done\"]
"
        ),
    )
    .unwrap();
    ok(&katcall(
        &kc,
        &[
            "apply",
            "-f",
            job.to_str().unwrap(),
            "--wait",
            "--timeout",
            "2m",
        ],
    ));
    let described = ok(&katcall(&kc, &["describe", "workload", &name]));
    assert!(
        described.contains("State:          Complete"),
        "{described}"
    );
    // A finished run keeps its container until retired: its log is still there.
    let run = instance_ids(&kc, &name);
    let logs = ok(&katcall(&kc, &["logs", &format!("{name}/{}", run[0].0)]));
    assert_eq!(logs.trim(), "done");
    ok(&katcall(&kc, &["delete", "workload", &name]));

    agent.signal(Signal::SIGTERM);
    assert!(agent.child.wait().unwrap().success());
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
