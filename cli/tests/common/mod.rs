//! Helpers shared by the multi-process tests: a `kat-agent` child stopped by PID when
//! its guard drops, log waits on its JSON log, and a cluster file on free ports.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kat_tests::programs::free_port;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    pub fn start(args: &[&str], log: &Path) -> Agent {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kat-agent"))
            .args(["--log-format", "json"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Agent {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Log records (JSON lines) whose message is `message`.
    pub fn records(&self, message: &str) -> Vec<serde_json::Value> {
        let file = std::fs::File::open(&self.log).unwrap();
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    /// Waits until the log has `count` records with `message`; returns the last.
    pub fn wait_for(&mut self, message: &str, count: usize, within: Duration) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let found = self.records(message);
            if found.len() >= count {
                return found[count - 1].clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent exited ({status}) before logging {message:?}:\n{}",
                    std::fs::read_to_string(&self.log).unwrap()
                );
            }
            assert!(
                started.elapsed() < within,
                "no {message:?} (#{count}) within {within:?}:\n{}",
                std::fs::read_to_string(&self.log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet).
pub fn is_dead(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

pub fn wait_dead(pid: i64, within: Duration) {
    let started = Instant::now();
    while !is_dead(pid) {
        assert!(
            started.elapsed() < within,
            "process {pid} still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes a directory tree when dropped (e.g. `/run/kat/<node>`, where an agent's
/// workload-user managers keep their runtime directories).
pub struct RemovedDir(pub PathBuf);

impl Drop for RemovedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn cluster_file(dir: &Path) -> PathBuf {
    cluster_file_with(dir, "")
}

/// A cluster file on free ports with `extra` lines added to its spec (indented by two).
pub fn cluster_file_with(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("cluster.kat");
    let text = format!(
        "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: test}}\n\
         spec:\n  etcdClientPort: {}\n  etcdPeerPort: {}\n  apiPort: {}\n  agentPort: {}\n{extra}",
        free_port(),
        free_port(),
        free_port(),
        free_port()
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub fn settle(d: Duration) {
    std::thread::sleep(d);
}

pub fn etcd_pid(record: &serde_json::Value) -> i64 {
    record["fields"]["pid"]
        .as_i64()
        .expect("pid in the etcd start record")
}

/// The apiPort written into a cluster file by `cluster_file`.
pub fn api_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("apiPort: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs `katcall --config CONFIG ARGS…`.
pub fn katcall(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_katcall"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// The output's stdout, after asserting the command succeeded.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "katcall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that katcall failed and that its stderr says `what`; returns the stderr.
pub fn fails_saying(out: &std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "katcall succeeded; expected: {what}");
    assert!(stderr.contains(what), "{stderr}");
    stderr
}

/// The flags that say which node an agent is: its state directory, name and address.
fn node_flags<'a>(state: &'a str, name: &'a str, addr: &'a str) -> [&'a str; 6] {
    [
        "--state-dir",
        state,
        "--node-name",
        name,
        "--advertise-address",
        addr,
    ]
}

/// `kat-agent init` of node `name` on `addr` with `config`, its state in `state`.
pub fn init_args<'a>(
    config: &'a str,
    state: &'a str,
    name: &'a str,
    addr: &'a str,
) -> Vec<&'a str> {
    let mut args = vec!["init", "--config", config];
    args.extend(node_flags(state, name, addr));
    args
}

/// `kat-agent join` arguments.
pub fn join_args<'a>(
    leader: &'a str,
    token: &'a str,
    state: &'a str,
    name: &'a str,
    addr: &'a str,
) -> Vec<&'a str> {
    let mut args = vec!["join", "--leader-api", leader, "--token", token];
    args.extend(node_flags(state, name, addr));
    args
}
