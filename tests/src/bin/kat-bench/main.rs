//! KAT's benchmarks (results go to docs/benchmarks.md; these are measurements, not tests).
//!
//! ```text
//! kat-bench idle --agent target/release/kat-agent [--seconds 30]
//!     idle RSS and CPU of `kat-agent init` after it leads (etcd excluded, shown apart)
//! kat-bench failover [--runs 5] [--lease-ttl-secs 5]
//!     three control-plane members on real etcd; kill the leader's tree; time until
//!     another member leads and its fenced write succeeds
//! kat-bench heartbeats --agent target/release/kat-agent [--nodes 1000] [--seconds 60]
//!     `kat-agent init` as leader, N simulated nodes joined through the node API, each
//!     heartbeating at the cluster's default tick over its own mTLS connection; after a
//!     one-tick warm-up: the leader's (and its etcd's) CPU and RSS, heartbeat latency
//! kat-bench node-loss --agent target/release/kat-agent [--nodes 50]
//!     the same setup; once all N are Ready their heartbeats stop at staggered instants;
//!     per node, time from its last successful heartbeat until the user API shows it
//!     NotReady (default tick and nodeLossTimeoutSeconds)
//! kat-bench placement [--instances 200000] [--replicas 10]
//!     the pure placement function on snapshots of 100, 1,000 and 5,000 nodes (mixed
//!     sizes, labels, taints): placements per second, services of N replicas each
//! kat-bench c1m [--instances 1000000] [--nodes 5000] [--replicas 1000]
//!     the real Scheduler actor over the in-memory store: nodes joined through the
//!     node API, workloads applied as `katcall apply` does; time until every
//!     instance is placed in the store, CPU time and peak RSS (see c1m.rs)
//! kat-bench apply-latency --agent target/release/kat-agent --katcall target/release/katcall
//!         [--runs 10] [--tick-seconds 1]
//!     one rootful Podman node: `katcall apply` of a one-replica busybox workload until
//!     its instance is RUNNING, next to `podman run -d` of the same (see apply_latency.rs)
//! kat-bench hostile --agent target/release/kat-agent [--rounds 50]
//!     `kat-agent init` as leader, idle and then under 1,000 idle unauthenticated
//!     connections and 100 slow token-less 4 MiB bodies: its RSS and descriptors, and
//!     `ListNodes` latency on fresh connections (see hostile.rs)
//! ```
//!
//! The simulated nodes are tasks in this process (no containers, no agent of their
//! own): they join, then call `Heartbeat` like an agent's Heartbeat actor does. The
//! leader started here is killed by PID when the run ends, also when it panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a panic is a failed run

mod apply_latency;
mod c1m;
mod hostile;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kat_actors::client::{KatcallConfig, api_channel};
use kat_actors::pki::ca::{CertAndKey, node_key_and_csr};
use kat_actors::pki::pin::JoinCredential;
use kat_actors::state::keys::ELECTION_PREFIX;
use kat_actors::store::election as store_election;
use kat_actors::store::{CmpOp, Compare, EtcdStore, StateStore, Txn, TxnOp};
use kat_proto::v1alpha1::node_api_client::NodeApiClient;
use kat_proto::v1alpha1::user_api_client::UserApiClient;
use kat_proto::v1alpha1::{
    CreateTokenRequest, HeartbeatRequest, JoinRequest, ListNodesRequest, Node, NodeState,
    NodeStatus,
};
use kat_tests::cluster::{EtcdTrio, wait_for_leader};
use kat_tests::programs::{find_program, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::Channel;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("idle") => {
            let agent = PathBuf::from(
                arg(&args, "--agent").unwrap_or_else(|| "target/release/kat-agent".into()),
            );
            let seconds: u64 = arg(&args, "--seconds").map_or(30, |s| s.parse().unwrap());
            idle(&agent, seconds);
        }
        Some("failover") => {
            let runs: usize = arg(&args, "--runs").map_or(5, |s| s.parse().unwrap());
            let ttl: u64 = arg(&args, "--lease-ttl-secs").map_or(5, |s| s.parse().unwrap());
            runtime().block_on(failover(runs, Duration::from_secs(ttl)));
        }
        Some("heartbeats") => {
            let agent = agent_arg(&args);
            let nodes: usize = arg(&args, "--nodes").map_or(1000, |s| s.parse().unwrap());
            let seconds: u64 = arg(&args, "--seconds").map_or(60, |s| s.parse().unwrap());
            let tick: Option<u32> = arg(&args, "--tick-seconds").map(|s| s.parse().unwrap());
            raise_open_file_limit(nodes);
            runtime().block_on(heartbeats(&agent, nodes, seconds, tick));
        }
        Some("node-loss") => {
            let agent = agent_arg(&args);
            let nodes: usize = arg(&args, "--nodes").map_or(50, |s| s.parse().unwrap());
            raise_open_file_limit(nodes);
            runtime().block_on(node_loss(&agent, nodes));
        }
        Some("placement") => {
            let count: usize = arg(&args, "--instances").map_or(200_000, |s| s.parse().unwrap());
            let replicas: usize = arg(&args, "--replicas").map_or(10, |s| s.parse().unwrap());
            placement(count, replicas);
        }
        Some("c1m") => {
            let count: usize = arg(&args, "--instances").map_or(1_000_000, |s| s.parse().unwrap());
            let nodes: usize = arg(&args, "--nodes").map_or(5000, |s| s.parse().unwrap());
            let replicas: usize = arg(&args, "--replicas").map_or(1000, |s| s.parse().unwrap());
            runtime().block_on(c1m::c1m(count, nodes, replicas));
        }
        Some("hostile") => {
            let agent = agent_arg(&args);
            let rounds: usize = arg(&args, "--rounds").map_or(50, |s| s.parse().unwrap());
            raise_open_file_limit(1200);
            runtime().block_on(hostile::hostile(&agent, rounds));
        }
        Some("apply-latency") => {
            let agent = agent_arg(&args);
            let katcall = PathBuf::from(
                arg(&args, "--katcall").unwrap_or_else(|| "target/release/katcall".into()),
            );
            let runs: usize = arg(&args, "--runs").map_or(10, |s| s.parse().unwrap());
            let tick: u32 = arg(&args, "--tick-seconds").map_or(1, |s| s.parse().unwrap());
            apply_latency::apply_latency(&agent, &katcall, runs, tick);
        }
        _ => {
            eprintln!(
                "usage: kat-bench idle --agent PATH [--seconds N] | failover [--runs N] [--lease-ttl-secs N]"
            );
            eprintln!(
                "     | heartbeats --agent PATH [--nodes N] [--seconds N] [--tick-seconds N] | node-loss --agent PATH [--nodes N]"
            );
            eprintln!(
                "     | placement [--instances N] [--replicas N] | c1m [--instances N] [--nodes N] [--replicas N]"
            );
            eprintln!(
                "     | apply-latency --agent PATH --katcall PATH [--runs N] [--tick-seconds N]"
            );
            eprintln!("     | hostile --agent PATH [--rounds N]");
            std::process::exit(2);
        }
    }
}

fn agent_arg(args: &[String]) -> PathBuf {
    let agent =
        PathBuf::from(arg(args, "--agent").unwrap_or_else(|| "target/release/kat-agent".into()));
    assert!(
        agent.is_file(),
        "{} not found; build it with cargo build --release",
        agent.display()
    );
    agent
}

/// Two worker threads: the machine has two cores, shared with the leader under test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One connection per simulated node: raises this process's open-file limit to its
/// hard limit (the leader, started later, inherits it and holds the other ends).
fn raise_open_file_limit(nodes: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    println!("open-file limit          {hard} (soft was {soft})");
    if (nodes as u64) + 200 > hard {
        eprintln!(
            "warning: {nodes} connections need more than the hard open-file limit {hard} allows"
        );
    }
}

/// (resident KiB, CPU clock ticks used so far) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks)
}

/// (resident KiB, CPU seconds used so far) of this process.
fn usage_of_self() -> (u64, f64) {
    let (rss, ticks) = usage(std::process::id());
    #[allow(clippy::cast_precision_loss)]
    let seconds = ticks as f64 / clock_ticks_per_second();
    (rss, seconds)
}

fn idle(agent: &Path, seconds: u64) {
    assert!(
        agent.is_file(),
        "{} not found; build it with cargo build --release",
        agent.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.kat");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: bench}}\n\
             spec: {{etcdClientPort: {}, etcdPeerPort: {}}}\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let mut child = Command::new(agent)
        .args([
            "--log-format",
            "json",
            "init",
            "--node-name",
            "bench",
            "--advertise-address",
            "127.0.0.1",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut etcd_pid = None;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "agent did not lead"
        );
        let lines: Vec<serde_json::Value> =
            std::io::BufReader::new(std::fs::File::open(&log).unwrap())
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| serde_json::from_str(&l).ok())
                .collect();
        if etcd_pid.is_none() {
            etcd_pid = lines
                .iter()
                .find(|v| v["fields"]["message"] == "etcd member starting")
                .and_then(|v| v["fields"]["pid"].as_u64());
        }
        if lines
            .iter()
            .any(|v| v["fields"]["message"] == "became leader")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let to_leader = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let (_, t0) = usage(child.id());
    std::thread::sleep(Duration::from_secs(seconds));
    let (rss, t1) = usage(child.id());
    let etcd_rss = etcd_pid
        .map(|p| usage(u32::try_from(p).unwrap()).0)
        .unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as f64;
    let cpu = (t1 - t0) as f64 / hz / seconds as f64 * 100.0;
    println!(
        "leader after            {:.0} ms",
        to_leader.as_secs_f64() * 1000.0
    );
    println!("kat-agent RSS           {:.1} MiB", rss as f64 / 1024.0);
    println!("kat-agent CPU (idle)    {cpu:.2} % of one core over {seconds} s");
    println!(
        "etcd RSS (not counted)  {:.1} MiB",
        etcd_rss as f64 / 1024.0
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

async fn failover(runs: usize, ttl: Duration) {
    let etcd = find_program("etcd").expect("etcd on PATH");
    let mut times = Vec::new();
    for run in 0..runs {
        let trio = EtcdTrio::start(&etcd, &format!("r{run}m"), ttl, false).await;
        let leader = wait_for_leader(&trio.node_names(), Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = Instant::now();
        let index = trio.index_of(&leader);
        trio.supervisors[index].kill();
        let rest: Vec<&str> = trio
            .node_names()
            .into_iter()
            .filter(|n| *n != leader)
            .collect();
        let new_leader = wait_for_leader(&rest, Duration::from_secs(60)).await;
        // "Serving": the new leader's fenced write goes through.
        let store = EtcdStore::connect(
            &[trio.client_url(trio.index_of(&new_leader))],
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        let kv = store_election::leader(&store, ELECTION_PREFIX)
            .await
            .unwrap()
            .unwrap();
        let fence = Compare::CreateRevision(kv.key, CmpOp::Equal, kv.create_revision);
        let ok = store
            .txn(
                Txn::new()
                    .when([fence])
                    .and_then([TxnOp::put("/kat/bench", "x")]),
            )
            .await
            .unwrap();
        let elapsed = killed.elapsed();
        assert!(ok.succeeded);
        println!(
            "run {run}: {leader} killed, {new_leader} leads and writes after {:.2} s",
            elapsed.as_secs_f64()
        );
        times.push(elapsed.as_secs_f64());
        trio.stop().await;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "failover with a {} s lease over {runs} runs: min {:.2} s, median {:.2} s, max {:.2} s",
        ttl.as_secs(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

/// `(pid, command name)` of every process whose parent is `pid`.
fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            // After the name: state, then the parent's pid.
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some((p, comm))
        })
        .collect()
}

fn process_name(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, _) = stat.rsplit_once(')')?;
    Some(head.split_once('(')?.1.to_owned())
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as f64
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The value at quantile `q` (nearest rank) of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank]
}

/// A `kat-agent` child process: SIGTERM when dropped (SIGKILL after 15 s), and its
/// etcd killed too should it outlive the agent. Dropped also when the benchmark panics.
struct AgentProcess {
    child: std::process::Child,
}

impl AgentProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let pid = self.pid();
        let etcd: Vec<u32> = children(pid)
            .into_iter()
            .filter(|(_, name)| name == "etcd")
            .map(|(p, _)| p)
            .collect();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        // etcd dies with its agent (PR_SET_PDEATHSIG); this only makes sure.
        for p in etcd {
            if process_name(p).as_deref() == Some("etcd") {
                let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
            }
        }
    }
}

/// `kat-agent init` on free loopback ports, with the cluster's default tick and loss
/// timeout, and what the benchmarks need to talk to it.
struct Leader {
    process: AgentProcess,
    dir: tempfile::TempDir,
    /// HOST:PORT of the node and user API.
    addr: String,
    ca_pem: String,
    /// `Bearer <admin API token>` from `katcall.yaml`.
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    tick: Duration,
    loss_timeout: Duration,
    etcd_port: u16,
}

impl Leader {
    async fn start(agent: &Path) -> Self {
        Self::start_ticking(agent, None).await
    }

    /// A leader whose agentTickSeconds is `tick` (with a loss timeout of 5 ticks), or
    /// the defaults.
    async fn start_ticking(agent: &Path, tick: Option<u32>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cluster.kat");
        let timing = tick.map_or_else(String::new, |t| {
            format!(
                "  agentTickSeconds: {t}\n  nodeLossTimeoutSeconds: {}\n",
                5 * t
            )
        });
        let text = format!(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: bench}}\n\
             spec:\n  etcdClientPort: {}\n  etcdPeerPort: {}\n  apiPort: {}\n  agentPort: {}\n{timing}",
            free_port(),
            free_port(),
            free_port(),
            free_port()
        );
        std::fs::write(&config, &text).unwrap();
        let spec = kat_proto::quadlet::parse_cluster_config("cluster.kat", text.as_bytes())
            .unwrap()
            .spec
            .unwrap();
        let state = dir.path().join("state");
        let log = dir.path().join("agent.log");
        let child = Command::new(agent)
            .args(["--log-format", "json", "init", "--node-name", "n0"])
            .args(["--advertise-address", "127.0.0.1"])
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut process = AgentProcess { child };
        let started = Instant::now();
        let katcall_yaml = state.join("katcall.yaml");
        while !katcall_yaml.exists() {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "kat-agent init exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no katcall.yaml after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let katcall = KatcallConfig::parse(
            &katcall_yaml.display().to_string(),
            &std::fs::read_to_string(&katcall_yaml).unwrap(),
        )
        .unwrap();
        println!(
            "leader                   up after {:.2} s (pid {}), tick {} s, loss timeout {} s",
            started.elapsed().as_secs_f64(),
            process.pid(),
            spec.agent_tick_seconds,
            spec.node_loss_timeout_seconds
        );
        Self {
            process,
            dir,
            addr: katcall.server.strip_prefix("https://").unwrap().to_owned(),
            ca_pem: katcall.certificate_authority,
            bearer: format!("Bearer {}", katcall.token).parse().unwrap(),
            tick: Duration::from_secs(u64::from(spec.agent_tick_seconds)),
            loss_timeout: Duration::from_secs(u64::from(spec.node_loss_timeout_seconds)),
            etcd_port: u16::try_from(spec.etcd_client_port).unwrap(),
        }
    }

    /// A client of the leader's etcd member, with the member's own certificate.
    async fn etcd(&self) -> EtcdStore {
        let pki = kat_actors::pki::local::pki_dir(&self.dir.path().join("state"));
        let tls = kat_actors::store::EtcdTls::of_member(&pki);
        EtcdStore::connect_tls(
            &[format!("https://127.0.0.1:{}", self.etcd_port)],
            Duration::from_secs(5),
            Some(&tls),
        )
        .await
        .unwrap()
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn etcd_pid(&self) -> u32 {
        children(self.pid())
            .into_iter()
            .find(|(_, name)| name == "etcd")
            .map(|(p, _)| p)
            .unwrap_or_else(|| {
                panic!(
                    "no etcd child of {}; log in {}",
                    self.pid(),
                    self.dir.path().display()
                )
            })
    }

    fn user_api(&self) -> UserApiClient<Channel> {
        UserApiClient::new(api_channel(&self.addr, &self.ca_pem, None).unwrap())
            .max_decoding_message_size(256 << 20)
    }

    /// `message` with the admin token attached.
    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request
    }

    async fn list_nodes(&self, users: &mut UserApiClient<Channel>) -> Result<Vec<Node>, String> {
        users
            .list_nodes(self.authed(ListNodesRequest {}))
            .await
            .map(|r| r.into_inner().items)
            .map_err(|e| status_text(&e))
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn node_state(node: &Node) -> (&str, NodeState) {
    (
        node.metadata.as_ref().map_or("", |m| m.name.as_str()),
        node.status
            .as_ref()
            .map_or(NodeState::Unspecified, |s| s.state()),
    )
}

/// The leader reads at most 8 joins at a time (`api::gate::JOINS_AT_ONCE`).
const JOIN_CONCURRENCY: usize = 8;

/// A simulated node: joined, holding its own client certificate.
struct SimNode {
    name: String,
    identity: CertAndKey,
    /// Its own loopback address: its connections leave from there, as a real node's
    /// from its machine (the leader allows 128 connections per source address).
    address: std::net::IpAddr,
}

/// Creates one reusable join token and joins `sim-00001`… through the node API,
/// `JOIN_CONCURRENCY` at a time.
async fn join_nodes(leader: &Leader, n: usize) -> Vec<SimNode> {
    let mut users = leader.user_api();
    let asked = Instant::now();
    let credential = loop {
        let request = CreateTokenRequest {
            reusable: true,
            description: "kat-bench".to_owned(),
            ..Default::default()
        };
        match users.create_join_token(leader.authed(request)).await {
            Ok(response) => break response.into_inner().token,
            // The API may not serve yet right after katcall.yaml appears.
            Err(e) if asked.elapsed() < Duration::from_secs(30) => {
                eprintln!("create join token: {} (retrying)", status_text(&e));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("create join token: {}", status_text(&e)),
        }
    };
    let token = JoinCredential::parse(&credential).unwrap().token;
    let client = NodeApiClient::new(api_channel(&leader.addr, &leader.ca_pem, None).unwrap());
    let limit = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    let mut joins = JoinSet::new();
    let mut nodes = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 1..=n {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (mut client, token) = (client.clone(), token.clone());
        joins.spawn(async move {
            let _permit = permit;
            let name = format!("sim-{i:05}");
            let (key_pem, csr_pem) = node_key_and_csr(&name).unwrap();
            let request = JoinRequest {
                token,
                node_name: name.clone(),
                csr_pem,
                advertise_address: kat_tests::programs::loopback_address(i),
                ..Default::default()
            };
            // Other clients' joins may hold the leader's few join slots: wait.
            let response = loop {
                match client.join(request.clone()).await {
                    Ok(r) => break r,
                    Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("join {name}: {}", status_text(&e)),
                }
            };
            SimNode {
                name,
                identity: CertAndKey {
                    cert_pem: response.into_inner().certificate_pem,
                    key_pem,
                },
                address: kat_tests::programs::loopback_address(i).parse().unwrap(),
            }
        });
        while let Some(done) = joins.try_join_next() {
            nodes.push(done.unwrap());
        }
    }
    while let Some(done) = joins.join_next().await {
        nodes.push(done.unwrap());
    }
    let took = started.elapsed().as_secs_f64();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    println!(
        "joined                   {n} nodes in {took:.1} s ({:.0} joins/s, {JOIN_CONCURRENCY} at a time)",
        n as f64 / took
    );
    nodes
}

/// One heartbeat call of one simulated node.
struct Beat {
    agent: usize,
    sent: Instant,
    done: Instant,
    error: Option<String>,
}

/// The simulated nodes' heartbeat tasks and what they recorded.
struct Heartbeaters {
    tasks: JoinSet<()>,
    log: Arc<Mutex<Vec<Beat>>>,
    /// Per node, the instant from which it sends no more heartbeats; set once.
    stops: Arc<OnceLock<Vec<Instant>>>,
}

impl Heartbeaters {
    /// Node `i` of `n` beats first at `start + i/n` of a tick, then every tick, over
    /// its own long-lived mTLS channel (connected at the first beat).
    fn spawn(leader: &Leader, nodes: &[SimNode], start: Instant) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stops = Arc::new(OnceLock::new());
        let mut tasks = JoinSet::new();
        let n = nodes.len();
        for (agent, node) in nodes.iter().enumerate() {
            let channel = kat_actors::client::api_channel_from(
                &leader.addr,
                &leader.ca_pem,
                Some(&node.identity),
                kat_actors::client::CALL_TIMEOUT,
                Some(node.address),
            )
            .unwrap();
            let first = start + leader.tick.mul_f64(agent as f64 / n as f64);
            tasks.spawn(heartbeater(
                agent,
                node.name.clone(),
                NodeApiClient::new(channel),
                first,
                leader.tick,
                log.clone(),
                stops.clone(),
            ));
        }
        Self { tasks, log, stops }
    }

    /// Waits until every node has stopped (set `stops` first) and returns the log.
    async fn finish(mut self) -> Vec<Beat> {
        while let Some(done) = self.tasks.join_next().await {
            done.unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

async fn heartbeater(
    agent: usize,
    name: String,
    mut client: NodeApiClient<Channel>,
    first: Instant,
    tick: Duration,
    log: Arc<Mutex<Vec<Beat>>>,
    stops: Arc<OnceLock<Vec<Instant>>>,
) {
    let stopped = |at: Instant| stops.get().is_some_and(|s| at >= s[agent]);
    let mut at = first;
    loop {
        if stopped(at) {
            return;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        if stopped(at) {
            return;
        }
        let request = HeartbeatRequest {
            node_name: name.clone(),
            node_status: Some(NodeStatus {
                state: NodeState::Ready.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sent = Instant::now();
        let result = client.heartbeat(request).await;
        let done = Instant::now();
        log.lock().unwrap().push(Beat {
            agent,
            sent,
            done,
            error: result.err().map(|e| status_text(&e)),
        });
        at += tick;
    }
}

async fn heartbeats(agent: &Path, n: usize, seconds: u64, tick: Option<u32>) {
    let leader = Leader::start_ticking(agent, tick).await;
    let etcd = leader.etcd_pid();
    let store = leader.etcd().await;
    let db = |s: &kat_actors::store::StoreSpace| s.members.first().map_or(0, |m| m.db_size);
    let space = store.space().await.unwrap().unwrap();
    println!(
        "etcd before the joins    revision {}, db {:.0} KiB",
        space.revision,
        db(&space) as f64 / 1024.0
    );
    let nodes = join_nodes(&leader, n).await;
    let space = store.space().await.unwrap().unwrap();
    println!(
        "etcd after the joins     revision {}, db {:.0} KiB",
        space.revision,
        db(&space) as f64 / 1024.0
    );
    let tick = leader.tick;
    let start = Instant::now() + Duration::from_millis(500);
    let sim = Heartbeaters::spawn(&leader, &nodes, start);
    // Warm-up: one tick, in which every node connects and beats once.
    let t0 = start + tick;
    let t1 = t0 + Duration::from_secs(seconds);
    sim.stops.set(vec![t1; n]).unwrap();
    tokio::time::sleep_until(tokio::time::Instant::from_std(t0)).await;
    let me = std::process::id();
    let space0 = store.space().await.unwrap().unwrap();
    let ((rss0, cpu0), (etcd_rss0, etcd_cpu0), (_, me0)) =
        (usage(leader.pid()), usage(etcd), usage(me));
    let (mut rss_max, mut etcd_rss_max) = (rss0, etcd_rss0);
    // Open files mid-window: near its end the nodes stop and drop their connections.
    let mut leader_fds = open_files(leader.pid());
    while Instant::now() + Duration::from_secs(1) < t1 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(usage(leader.pid()).0);
        etcd_rss_max = etcd_rss_max.max(usage(etcd).0);
        leader_fds = leader_fds.max(open_files(leader.pid()));
    }
    tokio::time::sleep_until(tokio::time::Instant::from_std(t1)).await;
    let window = t0.elapsed().as_secs_f64();
    let ((rss1, cpu1), (etcd_rss1, etcd_cpu1), (me_rss, me1)) =
        (usage(leader.pid()), usage(etcd), usage(me));
    let space1 = store.space().await.unwrap().unwrap();
    // What was written in the window, by key prefix (`/kat/<kind>`).
    let (kvs, _) = store.list("/kat/").await.unwrap();
    let mut written: std::collections::BTreeMap<String, usize> = Default::default();
    for kv in kvs.iter().filter(|kv| kv.mod_revision > space0.revision) {
        let prefix: Vec<&str> = kv.key.split('/').take(3).collect();
        *written.entry(prefix.join("/")).or_default() += 1;
    }
    let log = sim.finish().await;

    let mut users = leader.user_api();
    let ready = leader
        .list_nodes(&mut users)
        .await
        .unwrap()
        .iter()
        .map(node_state)
        .filter(|(name, state)| name.starts_with("sim-") && *state == NodeState::Ready)
        .count();

    let in_window: Vec<&Beat> = log.iter().filter(|b| b.sent >= t0 && b.sent < t1).collect();
    let failed: Vec<&Beat> = in_window
        .iter()
        .copied()
        .filter(|b| b.error.is_some())
        .collect();
    let mut latencies: Vec<f64> = in_window
        .iter()
        .filter(|b| b.error.is_none())
        .map(|b| (b.done - b.sent).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let warm_up_failed = log
        .iter()
        .filter(|b| b.sent < t0 && b.error.is_some())
        .count();
    let hz = clock_ticks_per_second();
    let percent = |ticks: u64| ticks as f64 / hz / window * 100.0;

    println!(
        "window                   {window:.1} s after a one-tick warm-up ({} s)",
        tick.as_secs()
    );
    println!(
        "heartbeats sent          {} (expected {:.0}: {n} nodes x {seconds} s / {} s)",
        in_window.len(),
        n as f64 * seconds as f64 / tick.as_secs_f64(),
        tick.as_secs()
    );
    println!(
        "heartbeats failed        {}{}",
        failed.len(),
        failed
            .first()
            .and_then(|b| b.error.as_deref())
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if warm_up_failed > 0 {
        println!("failed during warm-up    {warm_up_failed}");
    }
    if !latencies.is_empty() {
        println!(
            "heartbeat latency        p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99),
            latencies[latencies.len() - 1]
        );
    }
    println!("Ready sim nodes at end   {ready} of {n}");
    println!(
        "etcd revisions           {} in the window ({:.4} per heartbeat; writing each would be 1)",
        space1.revision - space0.revision,
        (space1.revision - space0.revision) as f64 / in_window.len().max(1) as f64
    );
    println!("keys written in window   {written:?}");
    println!(
        "etcd db size             {:.0} KiB at start, {:.0} KiB at end",
        db(&space0) as f64 / 1024.0,
        db(&space1) as f64 / 1024.0
    );
    println!("leader open files        {leader_fds} (max during the window)");
    println!(
        "leader CPU               {:.1} % of one core",
        percent(cpu1 - cpu0)
    );
    println!(
        "leader RSS               {:.1} MiB at start, {:.1} MiB at end, {:.1} MiB max",
        mib(rss0),
        mib(rss1),
        mib(rss_max)
    );
    println!(
        "etcd CPU                 {:.1} % of one core",
        percent(etcd_cpu1 - etcd_cpu0)
    );
    println!(
        "etcd RSS                 {:.1} MiB at start, {:.1} MiB at end, {:.1} MiB max",
        mib(etcd_rss0),
        mib(etcd_rss1),
        mib(etcd_rss_max)
    );
    println!(
        "kat-bench itself         {:.1} % of one core, RSS {:.1} MiB",
        percent(me1 - me0),
        mib(me_rss)
    );
}

async fn node_loss(agent: &Path, n: usize) {
    const POLL: Duration = Duration::from_millis(200);
    let leader = Leader::start(agent).await;
    let nodes = join_nodes(&leader, n).await;
    let tick = leader.tick;
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| (node.name.as_str(), i))
        .collect();
    let start = Instant::now() + Duration::from_millis(500);
    let sim = Heartbeaters::spawn(&leader, &nodes, start);
    let mut users = leader.user_api();

    // Every simulated node Ready (each beats once within the first tick).
    let give_up = start + 2 * tick + Duration::from_secs(10);
    loop {
        tokio::time::sleep(POLL).await;
        let listed = leader.list_nodes(&mut users).await;
        let ready = listed
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(node_state)
            .filter(|(name, state)| index.contains_key(name) && *state == NodeState::Ready)
            .count();
        if ready == n {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "only {ready} of {n} nodes Ready ({listed:?})",
            listed = listed.err()
        );
    }
    println!(
        "all Ready                {:.1} s after the first heartbeat",
        start.elapsed().as_secs_f64()
    );

    // Node i stops at base + i/n of a tick; its last heartbeat is the one before.
    let base = Instant::now() + Duration::from_secs(1);
    let stops: Vec<Instant> = (0..n)
        .map(|i| base + tick.mul_f64(i as f64 / n as f64))
        .collect();
    sim.stops.set(stops.clone()).unwrap();
    let mut seen: Vec<Option<Instant>> = vec![None; n];
    let mut poll_errors = 0;
    let give_up = base + 2 * tick + leader.loss_timeout + Duration::from_secs(10);
    let mut polls = tokio::time::interval(POLL);
    polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while seen.iter().any(Option::is_none) {
        polls.tick().await;
        assert!(
            Instant::now() < give_up,
            "{} of {n} nodes still not NotReady",
            seen.iter().filter(|s| s.is_none()).count()
        );
        match leader.list_nodes(&mut users).await {
            Ok(listed) => {
                let at = Instant::now();
                for node in &listed {
                    let (name, state) = node_state(node);
                    if let Some(&i) = index.get(name)
                        && state == NodeState::NotReady
                    {
                        seen[i].get_or_insert(at);
                    }
                }
            }
            Err(e) => {
                poll_errors += 1;
                eprintln!("list nodes: {e}");
            }
        }
    }
    let log = sim.finish().await;

    let mut last_ok: Vec<Option<Instant>> = vec![None; n];
    for beat in log.iter().filter(|b| b.error.is_none()) {
        let last = &mut last_ok[beat.agent];
        *last = Some(last.map_or(beat.done, |t| t.max(beat.done)));
    }
    let failed: Vec<&Beat> = log.iter().filter(|b| b.error.is_some()).collect();
    let early = (0..n)
        .filter(|&i| seen[i].is_some_and(|s| s < stops[i]))
        .count();
    let mut detection: Vec<f64> = (0..n)
        .map(|i| (seen[i].unwrap() - last_ok[i].unwrap()).as_secs_f64())
        .collect();
    detection.sort_by(f64::total_cmp);
    println!(
        "heartbeats               {} sent, {} failed{}",
        log.len(),
        failed.len(),
        failed
            .first()
            .and_then(|b| b.error.as_deref())
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!("NotReady before stopping {early}");
    println!(
        "last heartbeat -> NotReady seen, {n} nodes: min {:.2} s, p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        detection[0],
        quantile(&detection, 0.5),
        quantile(&detection, 0.95),
        detection[n - 1]
    );
    println!(
        "bound                    loss timeout {} s + one NodeMonitor tick {} s = {} s \
         (heartbeat times are compared in whole seconds: from {} s); polled every {} ms, {poll_errors} poll errors",
        leader.loss_timeout.as_secs(),
        tick.as_secs(),
        (leader.loss_timeout + tick).as_secs(),
        leader.loss_timeout.as_secs() - 1,
        POLL.as_millis()
    );
}

/// Placements per second of the pure placement function.
fn placement(count: usize, replicas: usize) {
    use kat_actors::leader::scheduler::place::{Demand, NodeInfo, NodeTaint, Snapshot};
    use kat_proto::v1alpha1::{TaintEffect, Toleration, TolerationOperator};
    const GI: i64 = 1 << 30;
    for nodes in [100usize, 1000, 5000] {
        let infos: Vec<NodeInfo> = (0..nodes)
            .map(|i| {
                let mut n = NodeInfo {
                    name: format!("node-{i:05}"),
                    ready: i % 50 != 7,
                    // Enough room for every instance of the run.
                    cpu_millis: 1_000_000 + (i as i64 % 4) * 250_000,
                    memory_bytes: (1024 + (i as i64 % 3) * 512) * GI,
                    ..Default::default()
                };
                n.labels.insert("zone".into(), format!("z{}", i % 3));
                if i % 10 == 0 {
                    n.taints.push(NodeTaint {
                        key: "gpu".into(),
                        value: String::new(),
                        effect: TaintEffect::NoSchedule,
                    });
                }
                if i % 7 == 0 {
                    n.taints.push(NodeTaint {
                        key: "spot".into(),
                        value: String::new(),
                        effect: TaintEffect::PreferNoSchedule,
                    });
                }
                n
            })
            .collect();
        let mut snapshot = Snapshot::new(infos);
        let workloads = count.div_ceil(replicas);
        let demands: Vec<Demand> = (0..workloads)
            .map(|w| {
                let mut d = Demand {
                    workload: format!("default/w{w}"),
                    cpu_millis: 100,
                    memory_bytes: 64 << 20,
                    ..Default::default()
                };
                if w % 4 == 0 {
                    d.node_selector.insert("zone".into(), format!("z{}", w % 3));
                }
                if w % 5 == 0 {
                    d.tolerations.push(Toleration {
                        key: "gpu".into(),
                        operator: TolerationOperator::Exists.into(),
                        ..Default::default()
                    });
                }
                d
            })
            .collect();
        let started = Instant::now();
        let mut placed = 0usize;
        let mut pending = 0usize;
        for d in &demands {
            for r in snapshot.place_many(d, replicas) {
                match r {
                    Ok(_) => placed += 1,
                    Err(_) => pending += 1,
                }
            }
        }
        let took = started.elapsed();
        #[allow(clippy::cast_precision_loss)]
        let rate = (placed + pending) as f64 / took.as_secs_f64();
        println!(
            "nodes {nodes:>5}: {placed} placed, {pending} pending in {took:.2?}: {rate:.0} placements/s"
        );
    }
}
