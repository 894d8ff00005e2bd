//! The simulated cluster (SPEC §14): N nodes' supervision trees in one process, over
//! one in-memory store, on tokio's paused clock, with fault injection.
//!
//! Control-plane nodes run their real control-plane subtree (Store over the shared
//! [`MemoryStore`], Election, the leader subtree with NodeMonitor and the Api actor).
//! The Api actor serves in process: while a node leads, its context is entered in the
//! [`SimNetwork`]'s directory under the address `sim://<node>`, and every node's
//! Heartbeat reaches the leader's handlers through an [`InProcessLink`] — the same
//! handlers the TLS server calls, minus the sockets. Workers join through the leader's `Join` handler with a
//! CSR, as `kat-agent join` does.
//!
//! Faults: kill an actor ([`SimCluster::kill_actor`]), crash a node's whole tree
//! ([`SimCluster::crash`]), cut a node off from every leader ([`SimCluster::partition`],
//! [`SimCluster::heal`]), and lose the leader ([`SimCluster::crash_leader`]).
//!
//! Wall-clock times (heartbeat stamps, NodeMonitor's comparisons) come from
//! [`sim_now`], which moves with tokio's clock, so a paused test can skip minutes.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kat_actors::agent::AgentOptions;
use kat_actors::agent::view::AgentMode;
use kat_actors::api::in_process::{InProcessLink, SimNetwork};
use kat_actors::control_plane::ControlPlaneOptions;
use kat_actors::leader::{self, ApiEndpoint, LeaderContext};
use kat_actors::pki::ca::node_key_and_csr;
use kat_actors::pki::tokens;
use kat_actors::state::{self, StateError, keys};
use kat_actors::store::{MemoryStore, StateStore, StoreBackend};
use kat_actors::supervision::SupervisorMsg;
use kat_actors::tree::start_node;
use kat_proto::v1alpha1::{
    ClusterConfiguration, JoinRequest, Node, NodeRole, NodeSpec, NodeState, ObjectMeta, TokenKind,
};
use prost::Message;
use ractor::ActorRef;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{election_of, wait_for_leader};

/// The simulated wall clock: a fixed epoch plus tokio time elapsed since first use.
pub fn sim_now() -> SystemTime {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    UNIX_EPOCH + Duration::from_secs(1_800_000_000) + start.elapsed()
}

/// One simulated node.
pub struct SimNode {
    pub name: String,
    pub control_plane: bool,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub agent: AgentOptions,
    pub handle: JoinHandle<()>,
}

impl SimNode {
    pub fn mode(&self) -> AgentMode {
        self.agent.view.mode()
    }
}

/// A simulated cluster; see the module docs.
pub struct SimCluster {
    pub store: Arc<MemoryStore>,
    pub network: Arc<SimNetwork>,
    pub cluster: ClusterConfiguration,
    pub nodes: BTreeMap<String, SimNode>,
    /// Names of the control-plane nodes (`cp1..`).
    pub control_plane: Vec<String>,
    join_token: String,
}

/// The address a simulated control-plane node serves its API at.
pub fn sim_addr(node: &str) -> String {
    format!("sim://{node}")
}

impl SimCluster {
    /// Starts control-plane nodes `cp1..=cpN` (N = `control_plane`), waits for a leader,
    /// then joins workers `w1..=wM` through the leader's Join handler and starts them.
    pub async fn start(
        cluster: ClusterConfiguration,
        control_plane: usize,
        workers: usize,
    ) -> Self {
        let store = Arc::new(MemoryStore::new());
        let network = Arc::new(SimNetwork::default());
        let shared: Arc<dyn StateStore> = store.clone();
        // One reusable join token, stored as the leader would store it.
        let (token, record) =
            tokens::generate(TokenKind::Join, None, true, "simulation", sim_now()).expect("token");
        shared
            .put(
                &keys::token(TokenKind::Join, &record.id),
                record.encode_to_vec(),
                None,
            )
            .await
            .expect("store");
        let cps: Vec<String> = (1..=control_plane).map(|i| format!("cp{i}")).collect();
        let mut sim = Self {
            store,
            network,
            cluster,
            nodes: BTreeMap::new(),
            control_plane: cps.clone(),
            join_token: token,
        };
        for name in &cps {
            sim.register_control_plane(name).await;
            sim.start_node(name, true).await;
        }
        let names: Vec<&str> = cps.iter().map(String::as_str).collect();
        wait_for_leader(&names, Duration::from_secs(30)).await;
        for i in 1..=workers {
            let name = format!("w{i}");
            sim.join(&name).await.expect("worker joins");
            sim.start_node(&name, false).await;
        }
        sim
    }

    /// What init's Bootstrap does for its own node: a control-plane registration.
    async fn register_control_plane(&self, name: &str) {
        let node = Node {
            api_version: kat_proto::quadlet::API_VERSION.to_owned(),
            kind: "Node".to_owned(),
            metadata: Some(ObjectMeta {
                name: name.to_owned(),
                ..Default::default()
            }),
            spec: Some(NodeSpec {
                advertise_address: "127.0.0.1".to_owned(),
                role: NodeRole::ControlPlane.into(),
                ..Default::default()
            }),
            status: None,
        };
        self.store
            .put(&keys::node(name), node.encode_to_vec(), None)
            .await
            .expect("store");
        self.store
            .put(
                &keys::control_plane(name),
                sim_addr(name).into_bytes(),
                None,
            )
            .await
            .expect("store");
    }

    /// Joins `name` through the current leader's Join handler (CSR made here).
    pub async fn join(&self, name: &str) -> Result<(), StateError> {
        let ctx = self
            .leader_ctx()
            .ok_or_else(|| StateError::Unavailable("no leader".to_owned()))?;
        let (_key, csr) = node_key_and_csr(name).expect("csr");
        let request = JoinRequest {
            token: self.join_token.clone(),
            node_name: name.to_owned(),
            csr_pem: csr,
            advertise_address: "127.0.0.1".to_owned(),
            ..Default::default()
        };
        leader::join::join(&ctx, request, sim_now())
            .await
            .map(|_| ())
    }

    fn leader_ctx(&self) -> Option<LeaderContext> {
        self.network.any_leader()
    }

    /// Starts (or restarts) node `name`'s tree.
    pub async fn start_node(&mut self, name: &str, control_plane: bool) {
        let shared: Arc<dyn StateStore> = self.store.clone();
        let cp = control_plane.then(|| {
            let mut opts = ControlPlaneOptions::new(
                name,
                StoreBackend::Existing(shared),
                self.cluster.clone(),
            );
            opts.api = Some(ApiEndpoint::InProcess {
                addr: sim_addr(name),
                directory: self.network.directory.clone(),
            });
            opts.clock = sim_now;
            opts
        });
        // Every control-plane address, own first (as a real member tries its own).
        let mut targets: Vec<String> = self.control_plane.iter().map(|n| sim_addr(n)).collect();
        if let Some(i) = targets.iter().position(|t| *t == sim_addr(name)) {
            targets.swap(0, i);
        }
        let link = Arc::new(InProcessLink {
            node: name.to_owned(),
            network: self.network.clone(),
            clock: sim_now,
        });
        let settings = kat_proto::quadlet::ClusterSettings::from(&self.cluster);
        let agent = AgentOptions::new(name, &settings, targets, link);
        let (supervisor, handle) = start_node(name, cp.as_ref(), Some(&agent))
            .await
            .expect("node tree starts");
        self.nodes.insert(
            name.to_owned(),
            SimNode {
                name: name.to_owned(),
                control_plane,
                supervisor,
                agent,
                handle,
            },
        );
    }

    /// Crashes node `name`'s whole tree (no graceful stop, no resignation).
    pub fn crash(&self, name: &str) {
        if let Some(node) = self.nodes.get(name) {
            node.supervisor.kill();
        }
    }

    /// Kills one actor by name (e.g. `heartbeat@w1`); its supervisor reacts.
    pub fn kill_actor(&self, actor: &str) -> bool {
        match ractor::registry::where_is(actor) {
            Some(cell) => {
                cell.kill();
                true
            }
            None => false,
        }
    }

    /// Cuts `name` off from every leader (its heartbeats fail as unreachable).
    pub fn partition(&self, name: &str) {
        self.network.partition(name);
    }

    pub fn heal(&self, name: &str) {
        self.network.heal(name);
    }

    /// The node leading now, per the Election actors.
    pub async fn leader(&self) -> Option<String> {
        for node in self.nodes.values().filter(|n| n.control_plane) {
            if election_of(&node.name).await.is_some_and(|s| s.leading) {
                return Some(node.name.clone());
            }
        }
        None
    }

    /// Crashes the current leader's node and returns its name.
    pub async fn crash_leader(&self) -> String {
        let leader = self.leader().await.expect("a leader");
        self.crash(&leader);
        leader
    }

    /// The cluster's view of its nodes: name → state, as `katcall get nodes` shows it.
    pub async fn states(&self) -> BTreeMap<String, NodeState> {
        state::nodes::list(self.store.as_ref())
            .await
            .expect("store")
            .into_iter()
            .map(|n| {
                let state = n
                    .status
                    .as_ref()
                    .map_or(NodeState::Unspecified, |s| s.state());
                (n.metadata.unwrap_or_default().name, state)
            })
            .collect()
    }

    /// Waits (in simulated time) until `check` holds for the node states; fails the
    /// test with the last states otherwise. Returns how long it took.
    pub async fn wait_states(
        &self,
        within: Duration,
        check: impl Fn(&BTreeMap<String, NodeState>) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let states = self.states().await;
            if check(&states) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "states not reached within {within:?}: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until node `name`'s own mode is `mode`.
    pub async fn wait_mode(&self, name: &str, mode: AgentMode, within: Duration) -> Duration {
        let started = Instant::now();
        let node = self.nodes.get(name).expect("a node of the simulation");
        while node.mode() != mode {
            assert!(
                started.elapsed() < within,
                "{name} not {mode:?} within {within:?} (is {:?})",
                node.mode()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    /// Event reasons recorded about node `name`, oldest first.
    pub async fn events_of(&self, name: &str) -> Vec<String> {
        let req = kat_proto::v1alpha1::ListEventsRequest {
            involved: format!("node/{name}"),
            ..Default::default()
        };
        state::events::list(self.store.as_ref(), &req)
            .await
            .expect("store")
            .into_iter()
            .map(|e| e.reason)
            .collect()
    }

    /// Stops every node still running, workers first.
    pub async fn stop(&self) {
        for node in self.nodes.values().rev() {
            let _ = node
                .supervisor
                .stop_and_wait(None, Some(Duration::from_secs(30)))
                .await;
        }
    }
}
