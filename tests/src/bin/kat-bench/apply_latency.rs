//! `kat-bench apply-latency`: how long `katcall apply` of a one-replica busybox
//! workload takes to become a RUNNING instance, next to a plain `podman run -d` of the
//! same image and command.
//!
//! A one-node cluster as the Podman tests run it: `kat-agent init` with real etcd on
//! free loopback ports, rootful Podman, the instances' units in a private systemd user
//! manager of root (`tests/src/systemd.rs`), no instance network (`--network none` for
//! the plain runs too). Each kat run: `katcall apply -f DIR`, then `katcall get
//! instances NAME -o json` polled until the instance is RUNNING, then `katcall delete
//! workload` and a wait until its container is gone. Each plain run: `podman run -d`,
//! then `podman inspect` polled until the container runs, then `podman rm`. The two
//! alternate, after one warm-up run of each that is not counted, each pair after a
//! pause of 0 to max(5 s, tick) (pseudo-random), so the kat runs meet the agent's
//! periodic timers at every phase. Besides the polled
//! times, each run records when the container itself started (Podman's
//! `State.StartedAt`), which no poll interval blurs.
//!
//! Everything started here stops when the run ends, also on a panic: the agent by PID
//! (and its etcd), the manager by PID (which stops its units), then every container
//! of the runs by name or workload label.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kat_tests::programs::{
    BUSYBOX_IMAGE, SERVE_UNTIL_TERM, find_program, free_port, podman_with_busybox,
};
use kat_tests::systemd::UserManager;

use crate::{AgentProcess, quantile};

/// How long one instance may take to run, or its container to go.
const WITHIN: Duration = Duration::from_secs(60);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(20);

/// Removes, when dropped, the containers of the plain runs (by name) and of the kat
/// runs (by workload label), whatever state the benchmark stopped in.
struct Containers {
    podman: PathBuf,
    names: Vec<String>,
    workloads: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        let mut names = self.names.clone();
        for workload in &self.workloads {
            let listed = Command::new(&self.podman)
                .args(["ps", "--all", "--quiet", "--filter"])
                .arg(format!("label={}={workload}", kat_runtime::LABEL_WORKLOAD))
                .output();
            if let Ok(out) = listed {
                names.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(str::to_owned),
                );
            }
        }
        for name in names {
            let _ = Command::new(&self.podman)
                .args(["rm", "--force", "--time=0", &name])
                .output();
        }
    }
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {}: {}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// When the container started, as Podman recorded it.
fn started_at(podman: &Path, container: &str) -> SystemTime {
    let nanos: u64 = ok(
        podman,
        &[
            "inspect",
            "--format",
            "{{.State.StartedAt.UnixNano}}",
            container,
        ],
    )
    .parse()
    .unwrap();
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn since(t0: SystemTime, t: SystemTime) -> f64 {
    t.duration_since(t0).unwrap_or_default().as_secs_f64()
}

/// One run's times in seconds: until the poll saw it running, until its container
/// started.
type Times = (f64, f64);

struct Kat<'a> {
    katcall: &'a Path,
    config: PathBuf,
    podman: &'a Path,
    dir: &'a Path,
}

impl Kat<'_> {
    fn katcall(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        run(self.katcall, &all)
    }

    /// (id, phase) of the workload's instances.
    fn instances(&self, name: &str) -> Vec<(String, String)> {
        let out = self.katcall(&["get", "instances", name, "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["id"].as_str().unwrap_or_default().to_owned(),
                    i["status"]["phase"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    fn once(&self, name: &str) -> Times {
        let bundle = self.dir.join(name);
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(
            bundle.join("workload.kat"),
            format!(
                "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata:\n  name: {name}\n\
                 spec:\n  type: SERVICE\n  source:\n    image: {BUSYBOX_IMAGE}\n  replicas: 1\n\
                 \x20 container:\n    command: [\"sh\", \"-c\"]\n    args: [{SERVE_UNTIL_TERM:?}]\n"
            ),
        )
        .unwrap();
        let wall = SystemTime::now();
        let clock = Instant::now();
        let applied = self.katcall(&["apply", "-f", bundle.to_str().unwrap()]);
        assert!(
            applied.status.success(),
            "katcall apply: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let id = loop {
            if let Some((id, _)) = self
                .instances(name)
                .into_iter()
                .find(|(_, phase)| phase == "RUNNING")
            {
                break id;
            }
            assert!(
                clock.elapsed() < WITHIN,
                "{name}: not RUNNING after {WITHIN:?}"
            );
            std::thread::sleep(POLL);
        };
        let running = clock.elapsed().as_secs_f64();
        let container = format!("kat-default-{name}-{id}");
        let started = since(wall, started_at(self.podman, &container));
        let deleted = self.katcall(&["delete", "workload", name]);
        assert!(deleted.status.success(), "katcall delete workload {name}");
        let gone = Instant::now();
        while run(self.podman, &["container", "exists", &container])
            .status
            .success()
        {
            assert!(gone.elapsed() < WITHIN, "{container} still there");
            std::thread::sleep(POLL);
        }
        (running, started)
    }
}

fn plain_once(podman: &Path, name: &str) -> Times {
    let wall = SystemTime::now();
    let clock = Instant::now();
    ok(
        podman,
        &[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            SERVE_UNTIL_TERM,
        ],
    );
    while run(podman, &["inspect", "--format", "{{.State.Running}}", name])
        .stdout
        .trim_ascii()
        != b"true"
    {
        assert!(clock.elapsed() < WITHIN, "{name}: not running");
        std::thread::sleep(POLL);
    }
    let running = clock.elapsed().as_secs_f64();
    let started = since(wall, started_at(podman, name));
    ok(podman, &["rm", "--force", "--time=0", name]);
    (running, started)
}

fn summary(label: &str, values: &[f64]) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{label:<44} min {:.3} s   p50 {:.3} s   max {:.3} s",
        sorted[0],
        quantile(&sorted, 0.5),
        sorted[sorted.len() - 1]
    );
}

pub fn apply_latency(agent: &Path, katcall: &Path, runs: usize, tick: u32) {
    if find_program("etcd").is_none() || find_program("unshare").is_none() {
        println!("SKIPPED: needs etcd and unshare (bash scripts/install-deps.sh --for-tests)");
        return;
    }
    let Some(podman) = podman_with_busybox() else {
        println!("SKIPPED: needs Podman and busybox (bash scripts/install-deps.sh --for-tests)");
        return;
    };
    assert!(
        katcall.is_file(),
        "{} not found; build it with cargo build --release",
        katcall.display()
    );
    let pid = std::process::id();
    // Declared first, dropped last: after the agent and the manager are gone.
    let mut containers = Containers {
        podman: podman.clone(),
        names: Vec::new(),
        workloads: Vec::new(),
    };
    let Some(manager) = UserManager::start() else {
        println!("SKIPPED: no private systemd manager here (see the message above)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.kat");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: latency}}\n\
             spec:\n  etcdClientPort: {}\n  etcdPeerPort: {}\n  apiPort: {}\n  agentPort: {}\n  agentTickSeconds: {tick}\n",
            free_port(),
            free_port(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("agent.log");
    let child = Command::new(agent)
        .args(["--log-format", "json", "init", "--node-name"])
        .arg(format!("lat{pid}"))
        .args(["--advertise-address", "127.0.0.1"])
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .args(["--runtime-mode", "rootful", "--instance-network", "none"])
        .arg("--systemd-bus")
        .arg(manager.bus_address())
        .arg("--unit-dir")
        .arg(manager.unit_dir())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut process = AgentProcess { child };
    let kat = Kat {
        katcall,
        config: state.join("katcall.yaml"),
        podman: &podman,
        dir: dir.path(),
    };
    let up = Instant::now();
    while !kat.config.exists() {
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!(
                "kat-agent init exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(up.elapsed() < WITHIN, "no katcall.yaml");
        std::thread::sleep(POLL);
    }
    println!(
        "cluster                  one node, rootful Podman, agentTickSeconds {tick}, up after {:.2} s (agent pid {})",
        up.elapsed().as_secs_f64(),
        process.pid()
    );

    let (mut kat_times, mut plain_times) = (Vec::new(), Vec::new());
    let mut jitter = u64::from(pid) | 1;
    for i in 0..=runs {
        // Runs take about as long as one period of the agent's timers (its Runtime
        // actor observes every 5 s, its heartbeat every tick): without a pause of
        // varying length they would all catch those timers in one phase.
        jitter = jitter
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let period_ms = 1000 * u64::from(tick.max(5));
        std::thread::sleep(Duration::from_millis((jitter >> 33) % period_ms));
        let name = format!("lat{pid}x{i}");
        containers.workloads.push(name.clone());
        let k = kat.once(&name);
        let plain = format!("kat-bench-plain-{pid}-{i}");
        containers.names.push(plain.clone());
        let p = plain_once(&podman, &plain);
        let warm = if i == 0 {
            " (warm-up, not counted)"
        } else {
            ""
        };
        println!(
            "run {i:>2}: kat running seen {:.3} s (container started {:.3} s); \
             podman running seen {:.3} s (started {:.3} s){warm}",
            k.0, k.1, p.0, p.1
        );
        if i > 0 {
            kat_times.push(k);
            plain_times.push(p);
        }
    }
    summary(
        "katcall apply -> RUNNING in katcall get",
        &kat_times.iter().map(|t| t.0).collect::<Vec<_>>(),
    );
    summary(
        "katcall apply -> container started",
        &kat_times.iter().map(|t| t.1).collect::<Vec<_>>(),
    );
    summary(
        "podman run -d -> running in podman inspect",
        &plain_times.iter().map(|t| t.0).collect::<Vec<_>>(),
    );
    summary(
        "podman run -d -> container started",
        &plain_times.iter().map(|t| t.1).collect::<Vec<_>>(),
    );
    drop(process);
    drop(manager);
    drop(containers);
}
