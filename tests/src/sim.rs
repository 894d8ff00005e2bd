//! The simulated cluster (SPEC §14): N nodes' supervision trees in one process, over
//! one in-memory store, on tokio's paused clock, with fault injection.
//!
//! Control-plane nodes run their real control-plane subtree (Store over the shared
//! [`MemoryStore`], Election, the leader subtree with NodeMonitor, the Scheduler and
//! the Api actor). Every node runs its agent subtree with a Runtime actor over a
//! [`FakeHost`]: the node's "machine", whose containers ([`SimNode::containers`]) take
//! injected faults and outlive a crash of the node's tree.
//! The Api actor serves in process: while a node leads, its context is entered in the
//! [`SimNetwork`]'s directory under the address `sim://<node>`, and every node's
//! Heartbeat reaches the leader's handlers through an [`InProcessLink`] — the same
//! handlers the TLS server calls, minus the sockets. Workers join through the leader's `Join` handler with a
//! CSR, as `kat-agent join` does.
//!
//! Workloads are applied through the leader as the user API applies them
//! ([`SimCluster::apply`]) and read back as the API shows them
//! ([`SimCluster::instances`], [`SimCluster::workload`]).
//!
//! Faults: kill an actor ([`SimCluster::kill_actor`]), crash a node's whole tree
//! ([`SimCluster::crash`]), cut a node off from every leader ([`SimCluster::partition`],
//! [`SimCluster::heal`]), lose the leader ([`SimCluster::crash_leader`]), and make
//! containers exit, crash-loop, hang or fail health checks ([`SimNode::containers`]).
//!
//! A test ends with [`SimCluster::stop`]; dropping a cluster that was not stopped fails
//! the test, naming the nodes still running (a test must not leave trees behind).
//!
//! Wall-clock times (heartbeat stamps, NodeMonitor's comparisons) come from
//! [`sim_now`], which moves with tokio's clock, so a paused test can skip minutes.
//! Tests wait for conditions with [`wait_until`], a poll with a deadline in simulated
//! time.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kat_actors::agent::view::AgentMode;
use kat_actors::agent::{AgentOptions, RuntimeSetup};
use kat_actors::api::in_process::{InProcessLink, SimNetwork};
use kat_actors::control_plane::ControlPlaneOptions;
use kat_actors::leader::{self, ApiEndpoint, LeaderContext};
use kat_actors::pki::ca::node_key_and_csr;
use kat_actors::pki::local::ClusterPki;
use kat_actors::pki::tokens;
use kat_actors::state::workloads::ApplyMode;
use kat_actors::state::{self, StateError, keys};
use kat_actors::store::{MemoryStore, StateStore, StoreBackend};
use kat_actors::supervision::SupervisorMsg;
use kat_actors::tree::start_node;
use kat_proto::bundle::BundleFile;
use kat_proto::v1alpha1::{
    ClusterConfiguration, Event, Instance, InstancePhase, JoinRequest, ListEventsRequest, Node,
    NodeResources, NodeRole, NodeSpec, NodeState, ObjectMeta, Quadlet, TokenKind,
    WorkloadStatusResponse,
};
use kat_runtime::fake::FakeRuntime;
use kat_runtime::host::FakeHost;
use kat_runtime::spec::SpecContext;
use prost::Message;
use ractor::ActorRef;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{election_of, wait_for_leader};

/// The simulated wall clock: a fixed epoch plus tokio time elapsed since first use.
/// Like a real clock read at different moments, no two reads are equal: on the paused
/// clock many things happen at one instant, and records keyed by time (events) of two
/// nodes' heartbeats in the same instant would otherwise collide.
pub fn sim_now() -> SystemTime {
    static START: OnceLock<Instant> = OnceLock::new();
    static LAST_NANOS: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(Instant::now);
    let elapsed = u64::try_from(start.elapsed().as_nanos()).expect("under 584 years");
    let prev = LAST_NANOS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(elapsed.max(last + 1))
        })
        .expect("the update always succeeds");
    UNIX_EPOCH
        + Duration::from_secs(1_800_000_000)
        + Duration::from_nanos(elapsed.max(prev + 1))
        + Duration::from_secs(WALL_STEP.load(Ordering::SeqCst))
}

/// Seconds the simulated wall clock has been stepped forward ([`step_wall_clock`]).
static WALL_STEP: AtomicU64 = AtomicU64::new(0);

/// Steps the simulated wall clock forward by `by` at once, as NTP or a resumed VM
/// would; tokio's (monotonic) clock does not move.
pub fn step_wall_clock(by: Duration) {
    WALL_STEP.fetch_add(by.as_secs(), Ordering::SeqCst);
}

/// What every simulated node offers the scheduler: 4 CPUs, 8 GiB.
pub fn node_capacity() -> NodeResources {
    NodeResources {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        gpus: Vec::new(),
    }
}

/// One simulated node.
pub struct SimNode {
    pub name: String,
    pub control_plane: bool,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub agent: AgentOptions,
    pub handle: JoinHandle<()>,
    /// The node's machine, where its Runtime runs instances: it outlives a crash of
    /// the node's tree (a restarted tree adopts what still runs).
    pub host: Arc<FakeHost>,
}

impl SimNode {
    pub fn mode(&self) -> AgentMode {
        self.agent.view.mode()
    }

    /// The node's containers, to inject faults into: [`FakeRuntime::exit`],
    /// [`FakeRuntime::set_behaviour`] (crash-loop, hang, unhealthy), refused pulls.
    pub fn containers(&self) -> &FakeRuntime {
        &self.host.runtime
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
    /// The cluster's CAs, which every control-plane node holds.
    pki: ClusterPki,
    /// Where nodes keep volumes; removed with the cluster.
    dir: tempfile::TempDir,
    /// Whether [`Self::stop`] ran (see the `Drop` guard).
    stopped: AtomicBool,
    /// Gives each node its own advertise address.
    addresses: std::sync::atomic::AtomicUsize,
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
            pki: ClusterPki::generate("sim").expect("the cluster's CAs"),
            dir: tempfile::tempdir().expect("a temporary directory"),
            stopped: AtomicBool::new(false),
            addresses: std::sync::atomic::AtomicUsize::new(0),
        };
        for name in &cps {
            sim.register_control_plane(name).await;
            sim.start_node(name, true).await;
        }
        let names: Vec<&str> = cps.iter().map(String::as_str).collect();
        wait_for_leader(&names, Duration::from_secs(30)).await;
        for i in 1..=workers {
            sim.add_worker(&format!("w{i}")).await;
        }
        sim
    }

    /// Joins worker `name` through the leader and starts its tree.
    pub async fn add_worker(&mut self, name: &str) {
        self.join(name).await.expect("worker joins");
        self.start_node(name, false).await;
    }

    fn next_address(&self) -> String {
        let i = self
            .addresses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::programs::loopback_address(i)
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
                advertise_address: self.next_address(),
                role: NodeRole::ControlPlane.into(),
                capacity: Some(node_capacity()),
                allocatable: Some(node_capacity()),
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
            advertise_address: self.next_address(),
            capacity: Some(node_capacity()),
            ..Default::default()
        };
        leader::join::join(&ctx, request, None, sim_now())
            .await
            .map(|_| ())
    }

    /// The leading node's context, for tests that call the leader's functions.
    pub fn leader_ctx(&self) -> Option<LeaderContext> {
        self.network.any_leader()
    }

    /// Starts (or restarts) node `name`'s tree, its Runtime over the node's machine
    /// (kept from before when it restarts).
    pub async fn start_node(&mut self, name: &str, control_plane: bool) {
        let shared: Arc<dyn StateStore> = self.store.clone();
        let cp = control_plane.then(|| {
            let mut opts = ControlPlaneOptions::new(
                name,
                StoreBackend::Existing(shared),
                self.cluster.clone(),
                self.pki.clone(),
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
        let host = self.nodes.get(name).map_or_else(
            || Arc::new(FakeHost::new(Arc::new(FakeRuntime::new()))),
            |old| old.host.clone(),
        );
        let mut agent = AgentOptions::new(name, &settings, targets, link);
        agent.clock = sim_now;
        agent.runtime = Some(RuntimeSetup {
            host: host.clone(),
            cache: None,
            tick: settings.agent_tick,
            spec: SpecContext {
                volume_base: self.dir.path().join(name).join("volumes"),
                protected_paths: vec![self.dir.path().join(name)],
                network: None,
            },
        });
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
                host,
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
        wait_until("node states", within, async || self.states().await, check).await;
        started.elapsed()
    }

    /// Waits until node `name`'s own mode is `mode`.
    pub async fn wait_mode(&self, name: &str, mode: AgentMode, within: Duration) -> Duration {
        let started = Instant::now();
        let node = self.nodes.get(name).expect("a node of the simulation");
        let what = format!("{name} {mode:?}");
        wait_until(&what, within, async || node.mode(), |m| *m == mode).await;
        started.elapsed()
    }

    /// Event reasons recorded about node `name`, oldest first.
    pub async fn events_of(&self, name: &str) -> Vec<String> {
        self.events(&format!("node/{name}"), "")
            .await
            .into_iter()
            .map(|e| e.reason)
            .collect()
    }

    /// Events recorded about workload `ns/name`, oldest first.
    pub async fn workload_events(&self, ns: &str, name: &str) -> Vec<Event> {
        self.events(&format!("workload/{name}"), ns).await
    }

    async fn events(&self, involved: &str, namespace: &str) -> Vec<Event> {
        let req = ListEventsRequest {
            involved: involved.to_owned(),
            namespace: namespace.to_owned(),
            ..Default::default()
        };
        state::events::list(self.store.as_ref(), &req)
            .await
            .expect("store")
    }

    /// Applies a bundle of `files` (name, text) through the leader, with the function
    /// the user API's `CreateWorkload` calls (`katcall apply`).
    pub async fn apply(&self, files: &[(&str, &str)]) -> Result<Quadlet, StateError> {
        let ctx = self
            .leader_ctx()
            .ok_or_else(|| StateError::Unavailable("no leader".to_owned()))?;
        let files: Vec<BundleFile> = files
            .iter()
            .map(|(name, text)| BundleFile {
                name: (*name).to_owned(),
                data: text.as_bytes().to_vec(),
            })
            .collect();
        let bundle = kat_proto::bundle::pack(&files, &Default::default())
            .map_err(|e| StateError::BadRequest(e.to_string()))?;
        state::workloads::apply_bundle(
            &ctx.leadership,
            &ctx.settings,
            "",
            None,
            &bundle,
            ApplyMode::Apply,
            sim_now(),
        )
        .await
    }

    /// Workload `ns/name`'s instances, each with the status its node last reported
    /// (`katcall get instances`).
    pub async fn instances(&self, ns: &str, name: &str) -> Instances {
        Instances(
            state::instances::list(self.store.as_ref(), ns, name, "")
                .await
                .expect("store"),
        )
    }

    /// Waits until `check` holds for workload `ns/name`'s instances and returns them;
    /// fails the test with the last ones seen otherwise.
    pub async fn wait_instances(
        &self,
        ns: &str,
        name: &str,
        within: Duration,
        check: impl Fn(&Instances) -> bool,
    ) -> Instances {
        let what = format!("instances of {ns}/{name}");
        wait_until(
            &what,
            within,
            async || self.instances(ns, name).await,
            check,
        )
        .await
    }

    /// Workload `ns/name` with its status, instances and recent events, as `katcall
    /// describe workload` shows it.
    pub async fn workload(&self, ns: &str, name: &str) -> WorkloadStatusResponse {
        state::workloads::status_response(self.store.as_ref(), ns, name)
            .await
            .expect("the workload exists")
    }

    /// Stops every node still running, workers first. Every test ends with it.
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for node in self.nodes.values().rev() {
            let _ = node
                .supervisor
                .stop_and_wait(None, Some(Duration::from_secs(30)))
                .await;
        }
    }
}

/// The harness guard: a test that ends without [`SimCluster::stop`] fails, naming the
/// nodes it left running (unless it is failing already).
impl Drop for SimCluster {
    fn drop(&mut self) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let running: Vec<&str> = self
            .nodes
            .values()
            .filter(|n| !n.handle.is_finished())
            .map(|n| n.name.as_str())
            .collect();
        for node in self.nodes.values() {
            node.supervisor.kill();
        }
        if !running.is_empty() && !std::thread::panicking() {
            panic!(
                "the simulated cluster was dropped with nodes still running: {running:?} \
                 (end the test with SimCluster::stop)"
            );
        }
    }
}

/// Polls `probe` (every 100 ms of simulated time) until `done` holds for what it
/// returns, and returns that; after `within`, fails the test with the last value seen.
pub async fn wait_until<T: fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let started = Instant::now();
    loop {
        let seen = probe().await;
        if done(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < within,
            "{what}: not as expected within {within:?}; last seen: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Instances as the API lists them; shown one line each in failure messages.
#[derive(Clone, Default)]
pub struct Instances(pub Vec<Instance>);

impl Instances {
    fn count(&self, keep: impl Fn(&Instance) -> bool) -> usize {
        self.0.iter().filter(|i| keep(i)).count()
    }

    /// How many are in `phase`.
    pub fn in_phase(&self, phase: InstancePhase) -> usize {
        self.count(|i| phase_of(i) == phase)
    }

    /// How many are ready (running, and healthy where a health check says so).
    pub fn ready(&self) -> usize {
        self.count(state::instances::ready)
    }

    /// How many are of `generation`.
    pub fn of_generation(&self, generation: i64) -> usize {
        self.count(|i| i.generation == generation)
    }

    /// How many are placed on `node`.
    pub fn on(&self, node: &str) -> usize {
        self.count(|i| i.node == node)
    }

    /// Whether there are `n`, all of `generation`, all ready.
    pub fn all_ready(&self, n: usize, generation: i64) -> bool {
        self.len() == n && self.ready() == n && self.of_generation(generation) == n
    }
}

fn phase_of(i: &Instance) -> InstancePhase {
    i.status
        .as_ref()
        .map_or(InstancePhase::Pending, |s| s.phase())
}

impl std::ops::Deref for Instances {
    type Target = Vec<Instance>;
    fn deref(&self) -> &Vec<Instance> {
        &self.0
    }
}

impl fmt::Debug for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for i in &self.0 {
            let status = i.status.clone().unwrap_or_default();
            list.entry(&format_args!(
                "{} on {:?}: generation {}, run {}, {:?}, health {:?}, exit {}{}",
                i.id,
                i.node,
                i.generation,
                i.job_run,
                phase_of(i),
                status.health(),
                status.exit_code,
                if status.reason.is_empty() {
                    String::new()
                } else {
                    format!(", {}: {}", status.reason, status.message)
                },
            ));
        }
        list.finish()
    }
}
