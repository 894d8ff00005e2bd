//! Workloads end to end across processes (issue 6): three nodes (`kat-agent init` on
//! 127.0.0.1, joins on .2 and .3; real etcd, real TLS). `katcall apply -f
//! examples/web --wait` → three RUNNING instances, one per node; `get`/`describe`/
//! `logs`/`exec` (an instance on another node, through the leader); a changed image
//! tag rolls out step by step within maxSurge; `rollback` brings the previous spec
//! back as a new generation; a SIGKILLed node's instance is replaced elsewhere; a
//! DAEMON_SERVICE has one instance per Ready node; labels, taints, drain and uncordon
//! act on nodes; a JOB runs its completions and completes; `delete` removes the
//! instances.
//!
//! The flow runs twice: on real Podman and systemd (rootless: each workload as its own
//! user, each node with its own user managers; the images are the test's busybox
//! under two tags, as nothing can be pulled here, and examples/web becomes a busybox
//! httpd with the same volumes and health check), and on the fake runtime
//! (`--runtime fake`, examples/web as it is). Where Podman or systemd is missing the
//! Podman run is skipped with a printed note and only the fake run counts. Agents are
//! stopped by PID when their guards drop; workload users, their processes, the
//! managers' runtime directories and the extra image tag are removed when the test
//! ends, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    Agent, RemovedDir, api_port, cluster_file_with, fails_saying, join_args, katcall, ok,
};
use kat_runtime::ContainerRuntime;
use kat_runtime::podman::{Podman, RunAs};
use kat_runtime::rootless::lookup_user;
use kat_runtime::users::workload_user;
use kat_tests::programs::{BUSYBOX_IMAGE, find_program, podman_with_busybox};
use kat_tests::systemd::WorkloadUserCleanup;
use nix::sys::signal::Signal;
use serde_yaml_ng::Value;

const TICK: u64 = 1;

/// examples/web's nginx, as a busybox httpd: it logs a line, serves `/` on port 80
/// (what the example's health check fetches) and ends on SIGTERM.
const WEB_SCRIPT: &str = "echo web serving on :80; mkdir -p /tmp/www; echo hello > /tmp/www/index.html; \
     /bin/busybox httpd -f -p 80 -h /tmp/www & trap 'exit 0' TERM; wait";

/// examples/node-exporter's loop, ending on SIGTERM rather than after a stop timeout.
const DAEMON_SCRIPT: &str =
    "trap 'exit 0' TERM; while true; do cat /proc/loadavg; sleep 15 & wait $!; done";

/// What runs the instances.
enum Backend {
    Fake,
    /// Real rootless Podman under systemd; the binary.
    Podman(PathBuf),
}

/// One instance as `katcall get instances -o json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    id: String,
    node: String,
    phase: String,
    /// Kept on a lost node, not counted (replaced elsewhere).
    node_lost: bool,
    generation: i64,
}

/// Removes an image tag from root's Podman storage when dropped.
struct ImageTag(PathBuf, String);

impl Drop for ImageTag {
    fn drop(&mut self) {
        // `untag IMAGE` alone would remove every name of the image.
        let _ = Command::new(&self.0)
            .args(["untag", &self.1, &self.1])
            .output();
    }
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn read_yaml(path: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_yaml(path: &Path, value: &Value) {
    std::fs::write(path, serde_yaml_ng::to_string(value).unwrap()).unwrap();
}

fn strings(items: &[&str]) -> Value {
    Value::Sequence(items.iter().map(|s| Value::from(*s)).collect())
}

/// The flow's cluster: names, where things are, and how instances run.
struct Flow {
    backend: Backend,
    dir: tempfile::TempDir,
    ns: String,
    nodes: [String; 3],
    /// Images before and after the rolling update.
    images: [String; 2],
    /// The test's katcall configuration (the init node's).
    kc: PathBuf,
}

impl Flow {
    fn new(backend: Backend) -> Flow {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let (ns, nodes, images) = match &backend {
            Backend::Fake => (
                "default".to_owned(),
                ["n1", "n2", "n3"].map(str::to_owned),
                ["nginx:1.27", "nginx:1.28"].map(str::to_owned),
            ),
            // Names of this run only: they name host users, cgroups and directories.
            Backend::Podman(_) => (
                format!("e2e{pid}"),
                ["n1", "n2", "n3"].map(|n| format!("e{pid}{n}")),
                [
                    BUSYBOX_IMAGE.to_owned(),
                    format!("localhost/busybox:e2e-{pid}"),
                ],
            ),
        };
        if matches!(backend, Backend::Podman(_)) {
            // Workload users reach their volumes below it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let kc = dir.path().join(&nodes[0]).join("katcall.yaml");
        Flow {
            backend,
            dir,
            ns,
            nodes,
            images,
            kc,
        }
    }

    fn podman(&self) -> bool {
        matches!(self.backend, Backend::Podman(_))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kat-agent` arguments choosing this flow's runtime.
    fn runtime_args(&self) -> Vec<&'static str> {
        match self.backend {
            Backend::Fake => vec!["--runtime", "fake"],
            // No /dev/net/tun for rootless networking in the test sandbox.
            Backend::Podman(_) => vec!["--instance-network", "none"],
        }
    }

    /// `katcall --config KC -n NS ARGS…`.
    fn kat(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        katcall(&self.kc, &all)
    }

    /// `katcall logs ARGS` once `done` holds for them (a container's first lines can
    /// reach its log a moment after it counts as started), or the last read after 15 s.
    fn logs_until(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        let started = Instant::now();
        loop {
            let logs = ok(&self.kat(&all));
            if done(&logs) || started.elapsed() > Duration::from_secs(15) {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn instances(&self, workload: &str) -> Vec<Seen> {
        let text = ok(&self.kat(&["get", "instances", workload, "-o", "json"]));
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
                        node_lost: i["nodeLost"].as_bool().unwrap_or(false),
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

    /// examples/web with image `image`. The fake runtime runs the example as it is
    /// (image tags changed); Podman runs it in this run's namespace as a busybox
    /// httpd.
    fn web_bundle(&self, image: &str) -> PathBuf {
        let web = examples().join("web");
        if !self.podman() && image == self.images[0] {
            return web;
        }
        let out = self.path(&format!("web-{}", image.replace([':', '/'], "_")));
        std::fs::create_dir(&out).unwrap();
        let mut w = read_yaml(&web.join("workload.kat"));
        w["spec"]["source"]["image"] = image.into();
        if self.podman() {
            w["metadata"]["namespace"] = self.ns.as_str().into();
            w["spec"]["container"]["command"] = strings(&["/bin/sh", "-c"]);
            w["spec"]["container"]["args"] = strings(&[WEB_SCRIPT]);
        }
        write_yaml(&out.join("workload.kat"), &w);
        let mut vlb = read_yaml(&web.join("VirtualLoadBalancer.kat"));
        if self.podman() {
            // A rootless `podman exec` on a loaded 2-core machine can take longer
            // than the example's 3 s.
            vlb["spec"]["healthCheck"]["timeoutSeconds"] = 10.into();
        }
        write_yaml(&out.join("VirtualLoadBalancer.kat"), &vlb);
        out
    }

    /// examples/node-exporter (in this run's namespace on Podman, ending on SIGTERM).
    fn daemon_bundle(&self) -> PathBuf {
        let example = examples().join("node-exporter");
        if !self.podman() {
            return example;
        }
        let out = self.path("node-exporter");
        std::fs::create_dir(&out).unwrap();
        let mut w = read_yaml(&example.join("workload.kat"));
        w["metadata"]["namespace"] = self.ns.as_str().into();
        w["spec"]["container"]["command"] = strings(&["/bin/sh", "-c", DAEMON_SCRIPT]);
        write_yaml(&out.join("workload.kat"), &w);
        out
    }

    /// A JOB of two runs, one at a time, each ending after about a second (the fake
    /// runtime's because KAT_FAKE_EXIT says so).
    fn job_bundle(&self) -> PathBuf {
        let job = self.path("count");
        std::fs::create_dir(&job).unwrap();
        let env = if self.podman() {
            ""
        } else {
            "    env:\n      - name: KAT_FAKE_EXIT\n        value: \"1\"\n"
        };
        std::fs::write(
            job.join("workload.kat"),
            format!(
                "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: count
  namespace: {}
spec:
  type: JOB
  source:
    image: {BUSYBOX_IMAGE}
  restartPolicy:
    condition: NEVER
  container:
    command: [\"sh\", \"-c\", \"sleep 1; echo counted\"]
{env}",
                self.ns
            ),
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
        job
    }

    /// The Podman container of `instance` of `workload` on `node`, as its workload
    /// user's Podman sees it (`None` on the fake runtime).
    fn container(
        &self,
        workload: &str,
        node: &str,
        instance: &str,
    ) -> Option<Result<kat_runtime::ContainerStatus, kat_runtime::RuntimeError>> {
        let Backend::Podman(podman) = &self.backend else {
            return None;
        };
        let name = workload_user(&self.ns, workload);
        let user = block(lookup_user(&name)).unwrap()?;
        let podman = Podman::new(podman).as_user(RunAs {
            uid: user.uid,
            gid: user.gid,
            home: user.home.clone(),
            runtime_dir: Path::new(kat_actors::procedures::runtime::AGENT_MANAGERS_DIR)
                .join(node)
                .join("users")
                .join(&name),
        });
        Some(block(
            podman.status(&format!("kat-{}-{workload}-{instance}", self.ns)),
        ))
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn workloads_end_to_end_on_the_fake_runtime() {
    if find_program("etcd").is_none() {
        eprintln!("SKIPPED: etcd is not installed");
        return;
    }
    run(&Flow::new(Backend::Fake));
}

#[test]
fn workloads_end_to_end_on_podman_and_systemd() {
    let missing: Vec<&str> = [
        ("etcd", find_program("etcd").is_none()),
        ("useradd", find_program("useradd").is_none()),
        ("setsid", find_program("setsid").is_none()),
        ("systemd", kat_runtime::rootless::systemd_binary().is_none()),
    ]
    .into_iter()
    .filter_map(|(p, gone)| gone.then_some(p))
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "NOTE: {} missing: the end-to-end flow runs on the fake runtime only \
             (workloads_end_to_end_on_the_fake_runtime)",
            missing.join(", ")
        );
        return;
    }
    let Some(podman) = podman_with_busybox() else {
        eprintln!(
            "NOTE: no Podman with the busybox image: the end-to-end flow runs on the fake runtime only"
        );
        return;
    };
    let flow = Flow::new(Backend::Podman(podman.clone()));
    let tagged = Command::new(&podman)
        .args(["tag", BUSYBOX_IMAGE, &flow.images[1]])
        .output()
        .unwrap();
    assert!(
        tagged.status.success(),
        "{}",
        String::from_utf8_lossy(&tagged.stderr)
    );
    let _tag = ImageTag(podman, flow.images[1].clone());
    let _runtime_dirs: Vec<RemovedDir> = flow
        .nodes
        .iter()
        .map(|n| RemovedDir(Path::new(kat_actors::procedures::runtime::AGENT_MANAGERS_DIR).join(n)))
        .collect();
    let _users: Vec<WorkloadUserCleanup> = ["web", "node-exporter", "count"]
        .into_iter()
        .map(|w| WorkloadUserCleanup(workload_user(&flow.ns, w)))
        .collect();
    run(&flow);
}

/// The flow, on `flow`'s runtime.
#[allow(clippy::too_many_lines)]
fn run(flow: &Flow) {
    let (ns, kc) = (flow.ns.as_str(), flow.kc.as_path());
    let [n1, n2, n3] = &flow.nodes;
    let [image1, image2] = &flow.images;
    // Real containers take longer to start and stop, and load the machine more.
    let loss = if flow.podman() { 6 } else { 3 };
    let slow = if flow.podman() { 4 } else { 1 };
    eprintln!(
        "runtime: {}",
        if flow.podman() {
            "Podman + systemd (rootless)"
        } else {
            "fake (the Podman run of this flow and cli/tests/agent_podman.rs use real Podman)"
        }
    );
    let config = cluster_file_with(
        flow.dir.path(),
        &format!(
            "  agentTickSeconds: {TICK}\n  nodeLossTimeoutSeconds: {loss}\n  volumeBasePath: {}\n",
            flow.path("volumes").display()
        ),
    );
    let leader = format!("127.0.0.1:{}", api_port(&config));
    let state = |n: &str| flow.path(n).to_str().unwrap().to_owned();
    let (s1, s2, s3) = (state(n1), state(n2), state(n3));
    let mut init = vec![
        "init",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        &s1,
        "--node-name",
        n1,
        "--advertise-address",
        "127.0.0.1",
    ];
    init.extend(flow.runtime_args());
    let mut a1 = Agent::start(&init, &flow.path("n1.log"));
    a1.wait_for(
        "katcall configuration written (admin API token)",
        1,
        Duration::from_secs(10),
    );
    let token = || {
        ok(&katcall(kc, &["token", "create", "join"]))
            .trim()
            .to_owned()
    };
    let join = |token: &str, state: &str, name: &str, addr: &str, log: &str| {
        let mut args = join_args(&leader, token, state, name, addr);
        args.extend(flow.runtime_args());
        let mut agent = Agent::start(&args, &flow.path(log));
        agent.wait_for("joined the cluster", 1, Duration::from_secs(10));
        agent
    };
    let mut a2 = join(&token(), &s2, n2, "127.0.0.2", "n2.log");
    let mut a3 = join(&token(), &s3, n3, "127.0.0.3", "n3.log");
    wait_until("three Ready nodes", Duration::from_secs(15), || {
        let text = ok(&flow.kat(&["get", "nodes", "-o", "json"]));
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
    let applied = flow.kat(&[
        "apply",
        "-f",
        flow.web_bundle(image1).to_str().unwrap(),
        "--wait",
        "--timeout",
        "3m",
    ]);
    let text = ok(&applied);
    assert!(
        text.contains(&format!("workload {ns}/web applied (generation 1)")),
        "{text}"
    );
    eprintln!("apply --wait took {:?}", started.elapsed());
    let web = flow.instances("web");
    assert_eq!(web.len(), 3, "{web:?}");
    assert!(web.iter().all(|i| i.phase == "RUNNING"), "{web:?}");
    let mut on: Vec<&str> = web.iter().map(|i| i.node.as_str()).collect();
    on.sort_unstable();
    assert_eq!(on, [n1, n2, n3], "spread over the nodes");
    for i in &web {
        // Each a container of the workload's user, kept by that node's manager.
        if let Some(status) = flow.container("web", &i.node, &i.id) {
            let status = status.unwrap_or_else(|e| panic!("{i:?}: {e}"));
            assert_eq!(status.state, kat_runtime::ContainerState::Running, "{i:?}");
        }
    }
    let listed = ok(&flow.kat(&["get", "workloads"]));
    assert!(listed.lines().nth(1).unwrap().contains("3/3"), "{listed}");
    let described = ok(&flow.kat(&["describe", "workload", "web"]));
    assert!(described.contains("Scheduled"), "{described}");
    assert!(described.contains("InstanceStarted"), "{described}");
    assert!(described.contains("ROLLING (maxSurge 1)"), "{described}");

    // Logs and exec of an instance on another node, through the leader.
    let on_n2 = web.iter().find(|i| &i.node == n2).unwrap().id.clone();
    let first_line = if flow.podman() {
        "web serving on :80"
    } else {
        "fake container started"
    };
    let logs = flow.logs_until(&[&on_n2, "--tail", "10"], |l| l.contains(first_line));
    assert!(logs.contains(first_line), "{logs}");
    let exec = flow.kat(&["exec", &format!("web/{on_n2}"), "--", "true"]);
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    if flow.podman() {
        let served = flow.kat(&["exec", &on_n2, "--", "wget", "-qO-", "localhost:80/"]);
        assert_eq!(ok(&served), "hello\n", "the instance serves");
    }

    // A new image tag: a rolling update, one surge instance at a time.
    let web2 = flow.web_bundle(image2);
    let mut rollout = Command::new(env!("CARGO_BIN_EXE_katcall"))
        .arg("--config")
        .arg(kc)
        .args(["-n", ns, "apply", "-f", web2.to_str().unwrap(), "--wait"])
        .args(["--timeout", "3m"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut steps: Vec<(usize, usize)> = Vec::new();
    let done = loop {
        let now = flow.instances("web");
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
    // The rollout may have ended between the last sample and the exit check.
    let now = flow.instances("web");
    let last = (
        now.iter().filter(|i| i.generation == 1).count(),
        now.iter().filter(|i| i.generation == 2).count(),
    );
    if steps.last() != Some(&last) {
        steps.push(last);
    }
    eprintln!("rollout steps (old, new): {steps:?}");
    assert_eq!(steps.last(), Some(&(0, 3)));
    // Step by step: the old generation went down one at a time.
    let olds: Vec<usize> = steps.iter().map(|s| s.0).collect();
    assert!(
        olds.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1),
        "{steps:?}"
    );
    assert!(olds.contains(&2) && olds.contains(&1), "{steps:?}");
    let events = ok(&flow.kat(&["get", "events"]));
    assert!(events.contains("WorkloadUpdated"), "{events}");
    assert!(events.contains("Replaced"), "{events}");
    if flow.podman() {
        let now = flow.instances("web");
        let i = &now[0];
        let status = flow.container("web", &i.node, &i.id).unwrap().unwrap();
        assert_eq!(status.image, *image2, "{status:?}");
    }

    // Rollback: the previous generation's spec comes back as generation 3.
    let rolled = ok(&flow.kat(&["rollback", "workload", "web"]));
    assert!(rolled.contains("now generation 3"), "{rolled}");
    let status = ok(&flow.kat(&["rollout", "status", "web"]));
    assert!(status.contains("generation 3 rolled out"), "{status}");
    let back = flow.instances("web");
    assert!(
        back.iter().all(|i| i.generation == 3) && back.len() == 3,
        "{back:?}"
    );
    let described = ok(&flow.kat(&["describe", "workload", "web"]));
    assert!(described.contains(image1.as_str()), "{described}");
    assert!(described.contains("RolledBack"), "{described}");
    let none_older = flow.kat(&["rollback", "workload", "web", "--to-generation", "99"]);
    fails_saying(
        &none_older,
        &format!("generation 99 of workload {ns}/web is not kept"),
    );

    // A node dies: its instance is replaced on the others, and stays assigned to the
    // dead node, not counted, until it returns or is deleted.
    let before = flow.instances("web");
    let on_n3: Vec<String> = before
        .iter()
        .filter(|i| &i.node == n3)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(on_n3.len(), 1, "{before:?}");
    a3.signal(Signal::SIGKILL);
    let _ = a3.child.wait();
    let moved = wait_until(
        "n3's instance replaced",
        Duration::from_secs(loss + TICK + 15 * slow),
        || {
            let now = flow.instances("web");
            let counted: Vec<&Seen> = now.iter().filter(|i| !i.node_lost).collect();
            counted.len() == 3
                && counted
                    .iter()
                    .all(|i| &i.node != n3 && i.phase == "RUNNING")
                && now
                    .iter()
                    .filter(|i| on_n3.contains(&i.id))
                    .all(|i| i.node_lost && &i.node == n3)
        },
    );
    eprintln!("n3's instance running elsewhere {moved:?} after SIGKILL");
    // Events of one object, and only recent ones.
    let joined = ok(&katcall(kc, &["get", "events", &format!("node/{n2}")]));
    assert!(joined.contains("NodeJoined"), "{joined}");
    // (Nodes are in no namespace: no -n.)
    let lost = ok(&katcall(
        kc,
        &["get", "events", &format!("node/{n3}"), "-o", "json"],
    ));
    let lost: serde_json::Value = serde_json::from_str(&lost).unwrap();
    let items = lost["items"].as_array().unwrap();
    assert!(items.iter().any(|e| e["reason"] == "NodeLost"), "{items:?}");
    assert!(
        items
            .iter()
            .all(|e| e["involvedObject"]["name"] == n3.as_str()),
        "{items:?}"
    );
    let all = ok(&flow.kat(&["get", "events", "-o", "json"]));
    let recent = ok(&flow.kat(&["get", "events", "--since", "5s", "-o", "json"]));
    let count = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap()["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(count(&recent) < count(&all), "{recent}");

    // A DAEMON_SERVICE: one instance on every Ready node.
    ok(&flow.kat(&[
        "apply",
        "-f",
        flow.daemon_bundle().to_str().unwrap(),
        "--wait",
        "--timeout",
        "3m",
    ]));
    let daemons = flow.instances("node-exporter");
    let per_node: BTreeMap<&str, usize> = daemons.iter().fold(BTreeMap::new(), |mut m, i| {
        *m.entry(i.node.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        per_node,
        BTreeMap::from([(n1.as_str(), 1), (n2.as_str(), 1)]),
        "{daemons:?}"
    );
    if flow.podman() {
        // It reads the host's load (/proc/loadavg is not namespaced).
        let d = &daemons[0];
        let logs = flow.logs_until(&[&format!("node-exporter/{}", d.id)], |l| {
            l.split_whitespace().count() >= 5
        });
        assert!(
            logs.split_whitespace().count() >= 5,
            "a loadavg line: {logs}"
        );
    }

    // Node verbs: labels and taints show; draining n2 moves its instances to n1.
    let labeled = ok(&flow.kat(&["label", "node", n1, "disktype=ssd", "-o", "json"]));
    let labeled: serde_json::Value = serde_json::from_str(&labeled).unwrap();
    assert_eq!(
        labeled["metadata"]["labels"]["disktype"], "ssd",
        "{labeled}"
    );
    let described = ok(&flow.kat(&["describe", "node", n1, "-o", "yaml"]));
    assert!(described.contains("disktype: ssd"), "{described}");
    ok(&flow.kat(&["taint", "node", n1, "spot:PreferNoSchedule"]));
    let shown = ok(&flow.kat(&["get", "node", n1, "-o", "json"]));
    assert!(shown.contains("\"disktype\": \"ssd\""), "{shown}");
    assert!(shown.contains("PREFER_NO_SCHEDULE"), "{shown}");
    ok(&flow.kat(&["taint", "node", n1, "spot-"]));

    // A workload that fits nowhere stays Pending, saying which filter each node failed.
    let huge = flow.path("huge");
    std::fs::create_dir(&huge).unwrap();
    std::fs::write(
        huge.join("workload.kat"),
        format!(
            "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: huge
  namespace: {ns}
spec:
  type: SERVICE
  source:
    image: {BUSYBOX_IMAGE}
  replicas: 1
  nodeSelector:
    disktype: ssd
  container:
    command: [\"sleep\", \"1000\"]
    resources:
      requests: {{cpu: \"1000\"}}
"
        ),
    )
    .unwrap();
    ok(&flow.kat(&["apply", "-f", huge.to_str().unwrap()]));
    let why = "0/3 nodes: 1 insufficient cpu, 1 node selector mismatch, 1 not ready";
    wait_until("huge pending", Duration::from_secs(10), || {
        let text = ok(&flow.kat(&["get", "instances", "huge", "-o", "json"]));
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        list["items"][0]["status"]["phase"] == "PENDING"
            && list["items"][0]["status"]["reason"] == why
    });
    let described = ok(&flow.kat(&["describe", "workload", "huge"]));
    assert!(
        described.contains("FailedScheduling") && described.contains(why),
        "{described}"
    );
    ok(&flow.kat(&["delete", "workload", "huge"]));
    let drained = flow.kat(&["drain", n2]);
    ok(&drained);
    assert!(
        String::from_utf8_lossy(&drained.stderr).contains(&format!("node {n2} drained")),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    // (Instances still kept on the dead n3 are not counted.)
    let web = flow.instances("web");
    assert!(
        web.iter().filter(|i| !i.node_lost).all(|i| &i.node == n1),
        "{web:?}"
    );
    assert!(
        flow.instances("node-exporter")
            .iter()
            .filter(|i| !i.node_lost)
            .all(|i| &i.node == n1)
    );
    let nodes = ok(&flow.kat(&["get", "nodes"]));
    assert!(nodes.contains("Draining"), "{nodes}");
    ok(&flow.kat(&["uncordon", n2]));
    wait_until(
        "the daemon back on n2",
        Duration::from_secs(15 * slow),
        || {
            flow.instances("node-exporter")
                .iter()
                .any(|i| &i.node == n2 && i.phase == "RUNNING")
        },
    );

    // A JOB: two runs, one at a time; an event watch started before sees it complete.
    let watched = flow.path("events.ndjson");
    let mut watch = Command::new(env!("CARGO_BIN_EXE_katcall"))
        .arg("--config")
        .arg(kc)
        .args([
            "-n",
            ns,
            "get",
            "events",
            "workload/count",
            "--watch",
            "-o",
            "json",
        ])
        .stdout(std::fs::File::create(&watched).unwrap())
        .stderr(std::fs::File::create(flow.path("events.err")).unwrap())
        .spawn()
        .unwrap();
    let ran = Instant::now();
    ok(&flow.kat(&[
        "apply",
        "-f",
        flow.job_bundle().to_str().unwrap(),
        "--wait",
        "--timeout",
        "2m",
    ]));
    eprintln!("JOB with two runs completed in {:?}", ran.elapsed());
    let described = ok(&flow.kat(&["describe", "workload", "count"]));
    assert!(
        described.contains("State:          Complete"),
        "{described}"
    );
    assert!(
        described.contains("2 succeeded, 0 failed, 0 active"),
        "{described}"
    );
    assert!(described.contains("JobCompleted"), "{described}");
    let runs = flow.instances("count");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.phase == "SUCCEEDED"), "{runs:?}");
    if flow.podman() {
        let logs = ok(&flow.kat(&["logs", &format!("count/{}", runs[0].id)]));
        assert_eq!(logs.trim(), "counted");
    }
    wait_until(
        "the watch sees JobCompleted",
        Duration::from_secs(10),
        || std::fs::read_to_string(&watched).is_ok_and(|t| t.contains("JobCompleted")),
    );
    // Ctrl-C ends the watch with a word that nothing was undone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(watch.id()).unwrap()),
        Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(watch.wait().unwrap().code(), Some(130));
    let said = std::fs::read_to_string(flow.path("events.err")).unwrap();
    assert!(
        said.contains("katcall get: interrupted; the cluster carries on"),
        "{said}"
    );
    let seen: Vec<serde_json::Value> = std::fs::read_to_string(&watched)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        seen.iter().all(|e| e["involvedObject"]["name"] == "count"),
        "{seen:?}"
    );

    // Delete: the instances go, and on Podman their containers; the volumes go on
    // the Ready nodes, and the dead one is named as keeping its own.
    let last = flow.instances("web");
    let deleted = flow.kat(&["delete", "workload", "web", "--purge-volumes"]);
    let (out, err) = (
        String::from_utf8_lossy(&deleted.stdout),
        String::from_utf8_lossy(&deleted.stderr),
    );
    assert_eq!(deleted.status.code(), Some(1), "{out}{err}");
    assert!(out.contains(&format!("workload {ns}/web deleted")), "{out}");
    assert!(
        err.contains(&format!("{n3}: not Ready; its volumes are left in place"))
            && err.contains("volumes are left on 1 node(s)"),
        "{err}"
    );
    assert!(flow.instances("web").is_empty());
    let missing = flow.kat(&["get", "workload", "web"]);
    fails_saying(&missing, "NotFound");
    // A purge is finished by asking again (n3 is still away here, and said to be);
    // a plain delete of what is gone is still NotFound.
    let again = flow.kat(&["delete", "workload", "web", "--purge-volumes"]);
    let (out, err) = (
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr),
    );
    assert!(
        out.contains(&format!(
            "workload {ns}/web was already deleted; purging what it left"
        )),
        "{out}{err}"
    );
    assert!(err.contains(&format!("{n3}: not Ready")), "{err}");
    fails_saying(&flow.kat(&["delete", "workload", "web"]), "NotFound");
    if flow.podman() {
        assert!(!flow.path("volumes").join(ns).join("web").exists());
        // With the workload's user, its storage (the containers) and its managers.
        let user = workload_user(ns, "web");
        assert_eq!(block(lookup_user(&user)).unwrap(), None, "{last:?}");
        for n in [n1, n2] {
            let dir = Path::new(kat_actors::procedures::runtime::AGENT_MANAGERS_DIR)
                .join(n)
                .join("users")
                .join(&user);
            assert!(!dir.exists(), "{}", dir.display());
        }
    }

    // Node removal: the dead worker goes; a node with instances and the
    // control-plane member are refused, saying why.
    let busy = flow.kat(&["delete", "node", n2]);
    fails_saying(&busy, "drain it first");
    let member = flow.kat(&["delete", "node", n1]);
    fails_saying(&member, "is a control-plane member");
    ok(&flow.kat(&["delete", "node", n3]));
    let left = ok(&flow.kat(&["get", "nodes", "-o", "json"]));
    let left: serde_json::Value = serde_json::from_str(&left).unwrap();
    let names: Vec<&str> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, [n1.as_str(), n2.as_str()]);

    for agent in [&mut a1, &mut a2] {
        agent.signal(Signal::SIGTERM);
    }
    for agent in [&mut a2, &mut a1] {
        assert!(agent.child.wait().unwrap().success());
    }
}
