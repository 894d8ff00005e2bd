//! The `Store` actor (SPEC §3): owns this node's `StateStore` handle and, on
//! control-plane nodes, the etcd member process behind it.
//!
//! If etcd exits, the actor fails; its supervisor (`ControlPlaneSupervisor`,
//! rest_for_one) restarts it, which starts etcd again on the same data dir, and then
//! restarts the siblings that depend on it (Election and the leader subtree). On stop,
//! etcd gets SIGTERM, then SIGKILL if it has not exited within the shutdown timeout.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::StateStore;
use super::etcd::EtcdStore;
use super::etcd_process::{EtcdMemberConfig, EtcdProcess};

/// Where the node's state lives.
#[derive(Clone)]
pub enum StoreBackend {
    /// Start and supervise this etcd member.
    Etcd(Box<EtcdMemberConfig>),
    /// Use a store that exists already (the simulated cluster, or tests).
    Existing(Arc<dyn StateStore>),
}

#[derive(Clone)]
pub struct StoreArgs {
    pub node: String,
    pub backend: StoreBackend,
    /// How long etcd may take to answer after starting.
    pub health_timeout: Duration,
}

pub enum StoreMsg {
    /// The store handle, for the actors that read and write state.
    Handle(RpcReplyPort<Arc<dyn StateStore>>),
    Snapshot(RpcReplyPort<StoreSnapshot>),
    /// Internal: the etcd process exited on its own.
    EtcdExited(String),
    /// The member's etcd certificate was renewed: connect again presenting it (a
    /// no-op for stores that are not etcd).
    Reconnect(RpcReplyPort<Result<(), String>>),
}

/// The Store actor's state, for tests and `katcall describe node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSnapshot {
    pub etcd_pid: Option<u32>,
    pub endpoint: Option<String>,
}

/// Runs the etcd process in a task that reports its exit; dropping it kills etcd.
struct EtcdMonitor {
    pid: u32,
    endpoint: String,
    stop: Option<oneshot::Sender<Duration>>,
    task: JoinHandle<()>,
}

impl Drop for EtcdMonitor {
    fn drop(&mut self) {
        // Aborting drops the EtcdProcess, whose kill_on_drop kills etcd.
        self.task.abort();
    }
}

pub struct StoreState {
    store: Arc<dyn StateStore>,
    etcd: Option<EtcdMonitor>,
    /// The same store as `store` when it is this node's etcd member.
    etcd_store: Option<EtcdStore>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Store;

impl Store {
    /// The actor name of node `node`'s Store.
    pub fn name(node: &str) -> String {
        format!("store@{node}")
    }
}

async fn run_etcd(
    mut process: EtcdProcess,
    myself: ActorRef<StoreMsg>,
    stop: oneshot::Receiver<Duration>,
) {
    tokio::select! {
        status = process.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let _ = myself.send_message(StoreMsg::EtcdExited(status));
        }
        grace = stop => {
            let grace = grace.unwrap_or(Duration::ZERO);
            let pid = nix::unistd::Pid::from_raw(process.pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(grace, process.wait()).await.is_err() {
                tracing::warn!(pid = process.pid(), ?grace, "etcd did not stop after SIGTERM; killing it");
                let _ = process.kill().await;
            }
        }
    }
}

impl Actor for Store {
    type Msg = StoreMsg;
    type State = StoreState;
    type Arguments = StoreArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<StoreMsg>,
        args: StoreArgs,
    ) -> Result<StoreState, ActorProcessingErr> {
        match args.backend {
            StoreBackend::Existing(store) => Ok(StoreState {
                store,
                etcd: None,
                etcd_store: None,
            }),
            StoreBackend::Etcd(config) => {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                    format!(
                        "cannot create etcd data dir {}: {e}",
                        config.data_dir.display()
                    )
                })?;
                // etcd reads its certificate files itself: finish a key replacement a
                // crash interrupted first (`crate::pki::local::read_pair`).
                if let Some(tls) = &config.tls {
                    crate::pki::local::read_pair(&tls.cert_file, &tls.key_file)?;
                }
                let mut process = EtcdProcess::spawn(&config)?;
                let pid = process.pid();
                tracing::info!(node = %args.node, pid, endpoint = %config.client_url(), "etcd member starting");
                let store = match process.wait_healthy(args.health_timeout).await {
                    Ok(store) => store,
                    Err(e) => {
                        let _ = process.kill().await;
                        return Err(e.into());
                    }
                };
                tracing::info!(node = %args.node, pid, "etcd member healthy");
                let (stop, stop_rx) = oneshot::channel();
                let task = tokio::spawn(run_etcd(process, myself, stop_rx));
                let etcd = EtcdMonitor {
                    pid,
                    endpoint: config.client_url(),
                    stop: Some(stop),
                    task,
                };
                Ok(StoreState {
                    store: Arc::new(store.clone()),
                    etcd: Some(etcd),
                    etcd_store: Some(store),
                })
            }
        }
    }

    async fn handle(
        &self,
        _myself: ActorRef<StoreMsg>,
        msg: StoreMsg,
        state: &mut StoreState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StoreMsg::Handle(reply) => {
                let _ = reply.send(state.store.clone());
            }
            StoreMsg::Snapshot(reply) => {
                let _ = reply.send(StoreSnapshot {
                    etcd_pid: state.etcd.as_ref().map(|e| e.pid),
                    endpoint: state.etcd.as_ref().map(|e| e.endpoint.clone()),
                });
            }
            StoreMsg::Reconnect(reply) => {
                let result = match &state.etcd_store {
                    Some(store) => store.reconnect().await.map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                let _ = reply.send(result);
            }
            StoreMsg::EtcdExited(status) => {
                // The process is gone; fail so the supervisor starts a new one.
                state.etcd = None;
                return Err(format!("etcd member exited ({status})").into());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StoreMsg>,
        state: &mut StoreState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(mut etcd) = state.etcd.take() {
            if let Some(stop) = etcd.stop.take() {
                let _ = stop.send(Duration::from_secs(5));
            }
            let _ = (&mut etcd.task).await;
            tracing::info!(pid = etcd.pid, "etcd member stopped");
        }
        Ok(())
    }
}
