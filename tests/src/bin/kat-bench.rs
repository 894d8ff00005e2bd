//! KAT's benchmarks (results go to docs/benchmarks.md; these are measurements, not tests).
//!
//! ```text
//! kat-bench idle --agent target/release/kat-agent [--seconds 30]
//!     idle RSS and CPU of `kat-agent init` after it leads (etcd excluded, shown apart)
//! kat-bench failover [--runs 5] [--lease-ttl-secs 5]
//!     three control-plane members on real etcd; kill the leader's tree; time until
//!     another member leads and its fenced write succeeds
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: a panic is a failed run

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kat_actors::node::ELECTION_PREFIX;
use kat_actors::store::election as store_election;
use kat_actors::store::{CmpOp, Compare, EtcdStore, StateStore, Txn, TxnOp};
use kat_tests::cluster::{EtcdTrio, wait_for_leader};
use kat_tests::programs::{find_program, free_port};

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
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(failover(runs, Duration::from_secs(ttl)));
        }
        _ => {
            eprintln!(
                "usage: kat-bench idle --agent PATH [--seconds N] | failover [--runs N] [--lease-ttl-secs N]"
            );
            std::process::exit(2);
        }
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
