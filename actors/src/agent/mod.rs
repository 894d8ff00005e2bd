//! The agent subtree (SPEC §3): `agent@N`, on every node, one_for_one over the node's
//! own work.
//!
//! | child | what it does |
//! |---|---|
//! | `heartbeat@N` ([`heartbeat`]) | reports to the leader every tick; follows its sync stream |
//! | `node-certs@N` ([`certs`]) | renews `DIR/pki/node.crt` past two thirds of its life (real nodes) |
//! | `runtime@N` ([`runtime`]) | makes the node's instances what the leader assigned (nodes with a runtime) |
//! | `agent-api@N` ([`api`]) | logs, exec and volume purges for the leader on `agentPort` |
//!
//! Restart: 10 in 60 s (a detach costs one restart; flapping links get some slack),
//! backoff 100 ms → 5 s. When Heartbeat fails (no leader answered for the loss
//! timeout), this supervisor's policy switches the node to Detached before restarting
//! it; local work continues. The actors share the node's view ([`view`]); they reach
//! the leader through a [`link::LeaderLink`].

pub mod api;
pub mod certs;
pub mod heartbeat;
pub mod link;
pub mod runtime;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use kat_proto::quadlet::ClusterSettings;

use crate::supervision::{Backoff, ChildSpec, Intensity, Strategy, SupervisorArgs};
use certs::{NodeCerts, NodeCertsArgs};
use heartbeat::{CapacityProbe, Heartbeat, HeartbeatArgs, RememberTargets};
use link::LeaderLink;
use runtime::{Runtime, RuntimeArgs};
use view::{AgentMode, NodeView};

/// What every node's agent subtree runs.
#[derive(Clone)]
pub struct AgentOptions {
    pub node: String,
    /// Control-plane API addresses Heartbeat tries.
    pub leader_api: Vec<String>,
    pub tick: Duration,
    pub loss_timeout: Duration,
    pub link: Arc<dyn LeaderLink>,
    /// The node's shared view (mode, what the sync stream said, instances).
    pub view: NodeView,
    /// `DIR/pki` of a real node: NodeCerts renews the certificate there.
    pub pki_dir: Option<std::path::PathBuf>,
    /// The node's instances, when it runs a Runtime actor.
    pub runtime: Option<RuntimeSetup>,
    /// Persists learned control-plane addresses (`agent.json` of a real node).
    pub remember_targets: Option<RememberTargets>,
    /// Where the agent API listens (advertise address, `agentPort`); served when the
    /// node has a runtime and a `pki_dir`.
    pub agent_api: Option<std::net::SocketAddr>,
    /// Measures the host's capacity for heartbeats (real nodes only).
    pub capacity: Option<CapacityProbe>,
    /// The wall clock the node's actors stamp times with (simulations pass their own).
    pub clock: fn() -> std::time::SystemTime,
    /// Bumped by NodeCerts at each renewal of the node certificate; the agent API
    /// serves the new one from then on.
    pub node_cert_renewed: certs::RenewedSignal,
}

/// What the Runtime actor of a node works with.
#[derive(Clone)]
pub struct RuntimeSetup {
    pub host: Arc<dyn kat_runtime::host::InstanceHost>,
    /// `DIR/runtime/desired.json`.
    pub cache: Option<std::path::PathBuf>,
    pub tick: Duration,
    /// What the node adds to the instances the sync stream assigns.
    pub spec: kat_runtime::spec::SpecContext,
}

impl AgentOptions {
    /// Options with the cluster's tick and loss timeout.
    pub fn new(
        node: &str,
        settings: &ClusterSettings,
        leader_api: Vec<String>,
        link: Arc<dyn LeaderLink>,
    ) -> Self {
        Self {
            node: node.to_owned(),
            leader_api,
            tick: settings.agent_tick,
            loss_timeout: settings.node_loss_timeout,
            link,
            view: NodeView::new(),
            pki_dir: None,
            runtime: None,
            remember_targets: None,
            agent_api: None,
            capacity: None,
            clock: std::time::SystemTime::now,
            node_cert_renewed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

/// Name of node `node`'s agent supervisor.
pub fn supervisor_name(node: &str) -> String {
    format!("agent@{node}")
}

/// `agent@N`; see the module docs.
pub fn spec(opts: &AgentOptions) -> ChildSpec {
    let heartbeat_args = HeartbeatArgs {
        node: opts.node.clone(),
        targets: opts.leader_api.clone(),
        tick: opts.tick,
        loss_timeout: opts.loss_timeout,
        max_backoff: Duration::from_secs(30).max(opts.tick),
        link: opts.link.clone(),
        view: opts.view.clone(),
        remember_targets: opts.remember_targets.clone(),
        capacity: opts.capacity,
    };
    let mut heartbeat = ChildSpec::actor(Heartbeat::name(&opts.node), Heartbeat, move || {
        heartbeat_args.clone()
    });
    let mode = opts.view.mode.clone();
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
            now: opts.clock,
            renewed: opts.node_cert_renewed.clone(),
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
            source: runtime::DesiredSource::Assignments(rt.spec.clone()),
            host: rt.host.clone(),
            view: opts.view.clone(),
            cache: rt.cache.clone(),
            tick: rt.tick,
            clock: opts.clock,
        };
        children.push(
            ChildSpec::actor(Runtime::name(&opts.node), Runtime, move || {
                runtime_args.clone()
            })
            .shutdown_timeout(Duration::from_secs(30)),
        );
    }
    if let (Some(rt), Some(pki_dir), Some(addr)) = (&opts.runtime, &opts.pki_dir, opts.agent_api) {
        let api_args = api::AgentApiArgs {
            service: api::AgentApiService {
                node: opts.node.clone(),
                host: rt.host.clone(),
                view: opts.view.clone(),
                volume_base: Some(rt.spec.volume_base.clone()),
                log_streams: api::LogStreams::default(),
            },
            addr,
            pki_dir: pki_dir.clone(),
            renewed: opts.node_cert_renewed.clone(),
        };
        children.push(
            ChildSpec::actor(
                api::AgentApiServer::name(&opts.node),
                api::AgentApiServer,
                move || api_args.clone(),
            )
            .shutdown_timeout(Duration::from_secs(10)),
        );
    }
    let args = SupervisorArgs {
        strategy: Strategy::OneForOne,
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
    ChildSpec::supervisor(supervisor_name(&opts.node), args)
        .shutdown_timeout(Duration::from_secs(30))
}
