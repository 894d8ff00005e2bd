//! The node's etcd member as a child process: its command line, start, health wait and
//! stop. The Store actor owns one of these on control-plane nodes; tests use it to run
//! a real etcd on random loopback ports.
//!
//! The child is killed when its handle is dropped (`kill_on_drop`), gets SIGKILL from
//! the kernel if the agent dies without cleaning up (`PR_SET_PDEATHSIG`), and runs in
//! its own process group so a terminal's Ctrl-C reaches the agent first, which then
//! stops etcd in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::etcd_tls::EtcdTls;
use super::{EtcdStore, StateStore};

/// Whether the member starts a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// How long one health probe of a starting member may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// How to run one etcd member.
#[derive(Debug, Clone)]
pub struct EtcdMemberConfig {
    pub binary: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// `name=http://addr:port,...` of every member, this one included.
    pub initial_cluster: String,
    pub cluster_state: ClusterState,
    /// Raft heartbeat and election timeout; etcd's defaults are 100 ms and 1000 ms.
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// Where etcd's own log goes; `None` discards it.
    pub log_file: Option<PathBuf>,
    /// mTLS on both ports (production); `None`: plain HTTP (tests on loopback).
    pub tls: Option<EtcdTls>,
    /// `--quota-backend-bytes`: past this the member raises NOSPACE and takes no more
    /// writes until the leader compacts, defragments and disarms
    /// (`leader::maintenance`).
    pub quota_bytes: u64,
}

/// The database size etcd stops writing at (etcd's own default, said explicitly so
/// it is known and tested: `leader::maintenance` keeps well below it).
pub const QUOTA_BYTES: u64 = 2 << 30;

impl EtcdMemberConfig {
    /// A one-member cluster with etcd's default timings.
    pub fn single(
        binary: PathBuf,
        name: &str,
        data_dir: PathBuf,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) -> Self {
        Self {
            binary,
            name: name.to_owned(),
            data_dir,
            client_addr,
            peer_addr,
            initial_cluster: format!("{name}=http://{peer_addr}"),
            cluster_state: ClusterState::New,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            log_file: None,
            tls: None,
            quota_bytes: QUOTA_BYTES,
        }
    }

    /// A one-member cluster served with mTLS.
    pub fn single_tls(
        binary: PathBuf,
        name: &str,
        data_dir: PathBuf,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
        tls: EtcdTls,
    ) -> Self {
        let mut config = Self::single(binary, name, data_dir, client_addr, peer_addr);
        config.tls = Some(tls);
        config.initial_cluster = format!("{name}={}", config.peer_url());
        config
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn client_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.client_addr)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.peer_addr)
    }

    /// The etcd command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let state = match self.cluster_state {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        };
        let mut args = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={}", self.client_url()),
            format!("--advertise-client-urls={}", self.client_url()),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-state={state}"),
            format!(
                "--heartbeat-interval={}",
                self.heartbeat_interval.as_millis()
            ),
            format!("--election-timeout={}", self.election_timeout.as_millis()),
            // Compaction is the leader's job (`leader::maintenance`: an hour of history
            // kept), not etcd's auto-compactor's.
            "--auto-compaction-retention=0".to_owned(),
            format!("--quota-backend-bytes={}", self.quota_bytes),
            // The scheduler writes a workload's changes in one transaction (etcd's
            // default allows 128 operations).
            format!("--max-txn-ops={}", super::MAX_TXN_OPS),
        ];
        if let Some(tls) = &self.tls {
            args.extend(tls.args());
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdProcessError {
    #[error("cannot start etcd ({binary}): {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("cannot open etcd log file {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("etcd exited during start-up with {status}")]
    Exited { status: std::process::ExitStatus },
    #[error("etcd at {url} not healthy after {waited:?}: {last_error}")]
    NotHealthy {
        url: String,
        waited: Duration,
        last_error: String,
    },
}

/// A running etcd member. Dropping it kills the process.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Child,
    pid: u32,
    client_url: String,
    tls: Option<EtcdTls>,
}

impl EtcdProcess {
    /// Starts the member; it is not serving until [`EtcdProcess::wait_healthy`] says so.
    pub fn spawn(config: &EtcdMemberConfig) -> Result<Self, EtcdProcessError> {
        let (stdout, stderr) = match &config.log_file {
            Some(path) => {
                let log_err = |source| EtcdProcessError::Log {
                    path: path.display().to_string(),
                    source,
                };
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(log_err)?;
                let clone = file.try_clone().map_err(log_err)?;
                (Stdio::from(file), Stdio::from(clone))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut command = Command::new(&config.binary);
        command
            .args(config.args())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|source| EtcdProcessError::Spawn {
            binary: config.binary.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        Ok(Self {
            child,
            pid,
            client_url: config.client_url(),
            tls: config.tls.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// Polls until the member answers a read, then returns a connected store.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<EtcdStore, EtcdProcessError> {
        let started = Instant::now();
        let mut last_error = String::from("not tried");
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EtcdProcessError::Exited { status });
            }
            // Probe with a short timeout (a starting member may accept connections
            // before it answers), then connect for real with the normal one.
            let endpoints = std::slice::from_ref(&self.client_url);
            let probe = EtcdStore::connect_tls(endpoints, PROBE_TIMEOUT, self.tls.as_ref()).await;
            match probe {
                Ok(store) => match store.get("/kat/health").await {
                    Ok(_) => {
                        return EtcdStore::connect_tls(
                            endpoints,
                            Duration::from_secs(1),
                            self.tls.as_ref(),
                        )
                        .await
                        .map_err(|e| EtcdProcessError::NotHealthy {
                            url: self.client_url.clone(),
                            waited: started.elapsed(),
                            last_error: e.to_string(),
                        });
                    }
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(EtcdProcessError::NotHealthy {
            url: self.client_url.clone(),
            waited: timeout,
            last_error,
        })
    }

    /// Waits for the process to exit (for supervision: etcd died).
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Stops the member in order (SIGTERM: etcd finishes what it applies and closes its
    /// files), or kills it if it has not exited `within`; reaps it either way.
    pub async fn stop(&mut self, within: Duration) -> std::io::Result<()> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.map(|_| ()),
            Err(_) => self.child.kill().await,
        }
    }

    /// Kills the member (SIGKILL, like a crash; etcd recovers from its WAL) and reaps it.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it dies, so a
/// crashed or SIGKILLed agent never leaves an orphan etcd. Spawn from a long-lived
/// thread (a runtime worker), as the signal follows the spawning thread.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the hook runs in the forked child before exec and calls only prctl(2),
    // getppid(2) and _exit(2), which are async-signal-safe; it touches no memory of
    // the parent and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent may have died between fork and prctl: then nobody would signal us.
            if libc::getppid() != parent as libc::pid_t {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
