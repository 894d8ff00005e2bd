//! The node's supervision tree (SPEC §3), as far as it exists:
//!
//! | supervisor | strategy | intensity | children |
//! |---|---|---|---|
//! | `node@N` (NodeSupervisor) | one_for_one | 3 in 5 min, then the agent exits non-zero | `control-plane@N` |
//! | `control-plane@N` | rest_for_one | 5 in 60 s; backoff 100 ms → 5 s | `store@N`, `election@N`, `api-server@N`, then `leader@N` while leading |
//! | `leader@N` (LeaderSupervisor) | one_for_one | 5 in 60 s | `bootstrap@N`, `node-monitor@N`, `scheduler@N`, `api@N`, `backups@N` |
//! | `agent@N` (AgentSupervisor) | one_for_one | 10 in 60 s | `heartbeat@N`, `node-certs@N`, `runtime@N`, `agent-api@N` |
//!
//! Every node runs `agent@N`; control-plane members also run `control-plane@N` (first).
//! When Heartbeat fails (no leader answered for the loss timeout), `agent@N`'s policy
//! switches the node to Detached before restarting it (see [`crate::heartbeat`]).
//!
//! rest_for_one in the control plane: if the Store (etcd) restarts, Election restarts
//! after it with a fresh lease, and the leader subtree is dropped until Election wins
//! again. Names carry the node so several nodes can share one process (simulation).

use std::sync::Arc;
use std::time::Duration;

use kat_proto::v1alpha1::ClusterConfiguration;
use ractor::{Actor, ActorRef, SpawnErr};
use tokio::task::JoinHandle;

use crate::api::{ApiEndpoint, ApiServer, ApiServerArgs};
use crate::election::{Election, ElectionArgs};
use crate::heartbeat::{
    AgentMode, Heartbeat, HeartbeatArgs, LeaderLink, ModeCell, SyncedCell, new_mode_cell,
    new_synced_cell,
};
use crate::leader::{LocalFiles, leader_subtree};
use crate::node_certs::{NodeCerts, NodeCertsArgs};
use crate::runtime::{Runtime, RuntimeArgs};
use crate::store::{Store, StoreArgs, StoreBackend};
use crate::supervision::{
    Backoff, ChildSpec, Intensity, Strategy, Supervisor, SupervisorArgs, SupervisorMsg,
};

/// Key prefix of the leader election.
pub const ELECTION_PREFIX: &str = "/kat/election";

/// What a control-plane node runs.
#[derive(Clone)]
pub struct ControlPlaneOptions {
    pub node: String,
    pub backend: StoreBackend,
    pub cluster: ClusterConfiguration,
    /// Election lease TTL (about 5 s: failover time is at most this plus a campaign).
    pub lease_ttl: Duration,
    /// How long etcd may take to become healthy at each (re)start.
    pub etcd_health_timeout: Duration,
    /// Where this node keeps its certificate and the first join token (init's node).
    pub local_files: Option<LocalFiles>,
    /// Where the leader's API is served when this node leads (TCP: advertise address
    /// and apiPort).
    pub api: Option<ApiEndpoint>,
    /// The wall clock heartbeat times are compared on (simulations pass their own).
    pub clock: fn() -> std::time::SystemTime,
}

impl ControlPlaneOptions {
    pub fn new(node: &str, backend: StoreBackend, cluster: ClusterConfiguration) -> Self {
        Self {
            node: node.to_owned(),
            backend,
            cluster,
            lease_ttl: Duration::from_secs(5),
            etcd_health_timeout: Duration::from_secs(30),
            local_files: None,
            api: None,
            clock: std::time::SystemTime::now,
        }
    }
}

/// Name of node `node`'s NodeSupervisor.
pub fn node_supervisor_name(node: &str) -> String {
    format!("node@{node}")
}

fn control_plane_spec(opts: &ControlPlaneOptions) -> ChildSpec {
    let node = opts.node.clone();
    let store_args = StoreArgs {
        node: node.clone(),
        backend: opts.backend.clone(),
        health_timeout: opts.etcd_health_timeout,
    };
    let store = ChildSpec::actor(Store::name(&node), Store, move || store_args.clone())
        .shutdown_timeout(Duration::from_secs(10));
    let election_args = ElectionArgs {
        node: node.clone(),
        store_actor: Store::name(&node),
        election: ELECTION_PREFIX.to_owned(),
        lease_ttl: opts.lease_ttl,
        leader_subtree: Some(leader_subtree(
            opts.cluster.clone(),
            opts.local_files.clone(),
            opts.api.clone(),
            opts.clock,
        )),
    };
    let election = ChildSpec::actor(Election::name(&node), Election, move || {
        election_args.clone()
    });
    let name = format!("control-plane@{node}");
    let mut children = vec![store, election];
    // Every member listens on apiPort; it serves as leader while it leads and points
    // to the leader otherwise.
    if let Some(ApiEndpoint::Tcp { addr, slot }) = &opts.api {
        let server_args = ApiServerArgs {
            node: node.clone(),
            store_actor: Store::name(&node),
            addr: *addr,
            slot: slot.clone(),
            local_ca_dir: opts.local_files.as_ref().map(|l| l.state_dir.clone()),
        };
        children.push(
            ChildSpec::actor(ApiServer::name(&node), ApiServer, move || {
                server_args.clone()
            })
            .shutdown_timeout(Duration::from_secs(10)),
        );
    }
    let args = SupervisorArgs {
        strategy: Strategy::RestForOne,
        intensity: Intensity {
            max_restarts: 5,
            window: Duration::from_secs(60),
        },
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        },
        children,
    };
    // Children's timeouts and kill waits add up to about 45 s.
    ChildSpec::supervisor(name, args).shutdown_timeout(Duration::from_secs(60))
}

/// What every node's agent subtree runs.
#[derive(Clone)]
pub struct AgentOptions {
    pub node: String,
    /// Control-plane API addresses Heartbeat tries.
    pub leader_api: Vec<String>,
    pub tick: Duration,
    pub loss_timeout: Duration,
    pub link: Arc<dyn LeaderLink>,
    /// The node's Attached/Detached mode; created with [`new_mode_cell`].
    pub mode: ModeCell,
    /// What the sync stream told this node.
    pub synced: SyncedCell,
    /// `DIR/pki` of a real node: NodeCerts renews the certificate there.
    pub pki_dir: Option<std::path::PathBuf>,
    /// The node's instances, when it runs a Runtime actor.
    pub runtime: Option<RuntimeSetup>,
    /// Persists learned control-plane addresses (`agent.json` of a real node).
    pub remember_targets: Option<crate::heartbeat::RememberTargets>,
    /// Where the agent API listens (advertise address, `agentPort`); served when the
    /// node has a runtime and a `pki_dir`.
    pub agent_api: Option<std::net::SocketAddr>,
    /// The leader's node name as heartbeats learn it (the agent API's one caller).
    pub leader_node: crate::heartbeat::LeaderNodeCell,
    /// Measures the host's capacity for heartbeats (real nodes only).
    pub capacity: Option<crate::heartbeat::CapacityProbe>,
}

/// What the Runtime actor of a node works with.
#[derive(Clone)]
pub struct RuntimeSetup {
    pub host: Arc<dyn kat_runtime::host::InstanceHost>,
    pub desired: crate::runtime::DesiredCell,
    pub reports: crate::runtime::ReportsCell,
    /// `DIR/runtime/desired.json`.
    pub cache: Option<std::path::PathBuf>,
    pub tick: Duration,
    /// Take the desired set from the sync stream's assignments, with this context
    /// (else only `desired` says).
    pub spec: Option<crate::runtime_spec::SpecContext>,
}

impl AgentOptions {
    /// Options with the cluster's tick and loss timeout.
    pub fn new(
        node: &str,
        cluster: &ClusterConfiguration,
        leader_api: Vec<String>,
        link: Arc<dyn LeaderLink>,
    ) -> Self {
        let spec = cluster.spec.clone().unwrap_or_default();
        Self {
            node: node.to_owned(),
            leader_api,
            tick: Duration::from_secs(u64::from(spec.agent_tick_seconds.max(1))),
            loss_timeout: Duration::from_secs(u64::from(spec.node_loss_timeout_seconds.max(1))),
            link,
            mode: new_mode_cell(),
            synced: new_synced_cell(),
            pki_dir: None,
            runtime: None,
            remember_targets: None,
            agent_api: None,
            leader_node: Arc::default(),
            capacity: None,
        }
    }
}

/// Name of node `node`'s agent supervisor.
pub fn agent_supervisor_name(node: &str) -> String {
    format!("agent@{node}")
}

/// `agent@N`: one_for_one over the node's own work. A failed Heartbeat (no leader
/// answered for the loss timeout) switches the node to Detached before it restarts.
fn agent_spec(opts: &AgentOptions) -> ChildSpec {
    let heartbeat_args = HeartbeatArgs {
        node: opts.node.clone(),
        targets: opts.leader_api.clone(),
        tick: opts.tick,
        loss_timeout: opts.loss_timeout,
        max_backoff: Duration::from_secs(30).max(opts.tick),
        link: opts.link.clone(),
        mode: opts.mode.clone(),
        synced: opts.synced.clone(),
        reports: opts.runtime.as_ref().map(|r| r.reports.clone()),
        remember_targets: opts.remember_targets.clone(),
        learned: Arc::default(),
        leader_node: opts.leader_node.clone(),
        capacity: opts.capacity,
    };
    let mut heartbeat = ChildSpec::actor(Heartbeat::name(&opts.node), Heartbeat, move || {
        heartbeat_args.clone()
    });
    let mode = opts.mode.clone();
    let node = opts.node.clone();
    heartbeat.on_restart = Some(Arc::new(move |_, reason| {
        if *mode.borrow() != AgentMode::Detached {
            tracing::warn!(%node, %reason, "no leader reachable: node is Detached; local work continues");
            mode.send_replace(AgentMode::Detached);
        }
    }));
    let mut children = vec![heartbeat];
    if let Some(pki_dir) = &opts.pki_dir {
        let certs_args = NodeCertsArgs {
            node: opts.node.clone(),
            pki_dir: pki_dir.clone(),
            targets: opts.leader_api.clone(),
            link: opts.link.clone(),
            check_every: Duration::from_secs(3600),
            now: std::time::SystemTime::now,
        };
        children.push(ChildSpec::actor(
            NodeCerts::name(&opts.node),
            NodeCerts,
            move || certs_args.clone(),
        ));
    }
    if let Some(rt) = &opts.runtime {
        let runtime_args = RuntimeArgs {
            node: opts.node.clone(),
            feed: rt.spec.clone().map(|ctx| crate::runtime::AssignmentFeed {
                synced: opts.synced.clone(),
                ctx,
            }),
            host: rt.host.clone(),
            desired: rt.desired.clone(),
            cache: rt.cache.clone(),
            reports: rt.reports.clone(),
            tick: rt.tick,
        };
        children.push(
            ChildSpec::actor(Runtime::name(&opts.node), Runtime, move || {
                runtime_args.clone()
            })
            .shutdown_timeout(Duration::from_secs(30)),
        );
    }
    if let (Some(rt), Some(pki_dir), Some(addr)) = (&opts.runtime, &opts.pki_dir, opts.agent_api) {
        let api_args = crate::agent_api::AgentApiArgs {
            service: crate::agent_api::AgentApiService {
                node: opts.node.clone(),
                host: rt.host.clone(),
                desired: rt.desired.clone(),
                leader_node: opts.leader_node.clone(),
                volume_base: rt.spec.as_ref().map(|s| s.volume_base.clone()),
            },
            addr,
            pki_dir: pki_dir.clone(),
        };
        children.push(
            ChildSpec::actor(
                crate::agent_api::AgentApiServer::name(&opts.node),
                crate::agent_api::AgentApiServer,
                move || api_args.clone(),
            )
            .shutdown_timeout(Duration::from_secs(10)),
        );
    }
    let args = SupervisorArgs {
        strategy: Strategy::OneForOne,
        // A detach costs one restart; flapping links get some slack.
        intensity: Intensity {
            max_restarts: 10,
            window: Duration::from_secs(60),
        },
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        },
        children,
    };
    ChildSpec::supervisor(agent_supervisor_name(&opts.node), args)
        .shutdown_timeout(Duration::from_secs(30))
}

/// Starts a control-plane node's tree; the handle ends when the tree has stopped.
pub async fn start_control_plane_node(
    opts: &ControlPlaneOptions,
) -> Result<(ActorRef<SupervisorMsg>, JoinHandle<()>), SpawnErr> {
    start_node(&opts.node, Some(opts), None).await
}

/// Starts node `node`'s tree: the control-plane subtree on control-plane members, then
/// the agent subtree. The handle ends when the tree has stopped.
pub async fn start_node(
    node: &str,
    control_plane: Option<&ControlPlaneOptions>,
    agent: Option<&AgentOptions>,
) -> Result<(ActorRef<SupervisorMsg>, JoinHandle<()>), SpawnErr> {
    let mut children = Vec::new();
    if let Some(cp) = control_plane {
        children.push(control_plane_spec(cp));
    }
    if let Some(agent) = agent {
        children.push(agent_spec(agent));
    }
    let args = SupervisorArgs {
        strategy: Strategy::OneForOne,
        intensity: Intensity {
            max_restarts: 3,
            window: Duration::from_secs(300),
        },
        backoff: Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        },
        children,
    };
    Actor::spawn(Some(node_supervisor_name(node)), Supervisor, args).await
}

/// This host's CPU (millicores), memory and GPUs, as the capacity a node reports at
/// join.
pub fn host_capacity() -> kat_proto::v1alpha1::NodeResources {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .unwrap_or_default();
    kat_proto::v1alpha1::NodeResources {
        cpu_millis: i64::try_from(cpus).unwrap_or(1) * 1000,
        memory_bytes: memory * 1024,
        gpus: crate::gpus::discover(),
    }
}
