//! A node's state directory and the `kat-agent init | run | etcd-env` procedures
//! (SPEC §6, §11). The CLI parses flags and calls these; everything a node keeps lives
//! under its state directory, so several nodes can run on one machine:
//!
//! ```text
//! DIR/agent.json     node name, advertise address, role (written once by init)
//! DIR/cluster.kat    the cluster configuration init was given (never overwritten)
//! DIR/etcd/          the etcd member's data (control-plane nodes)
//! DIR/logs/etcd.log  etcd's own log
//! DIR/pki/           ca.crt, node.crt, node.key (0600): this node's identity
//! DIR/join-token     the first join token with the CA hash (0600), written by init's leader
//! DIR/katcall.yaml   katcall's server URL, cluster CA and admin API token (0600), init only
//! ```
//!
//! `kat-agent join` writes `agent.json` (role worker, the leader's API address),
//! `cluster.kat` (as the leader sent it) and `pki/`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kat_proto::quadlet::{self, ValidationErrors};
use kat_proto::v1alpha1::node_api_client::NodeApiClient;
use kat_proto::v1alpha1::{ClusterConfiguration, JoinRequest};
use serde::{Deserialize, Serialize};

use crate::api::{ApiEndpoint, new_api_slot};
use crate::client::{api_channel_with_timeout, fetch_pinned_ca};
use crate::heartbeat::TlsLeaderLink;
use crate::leader::LocalFiles;
use crate::node::{AgentOptions, ControlPlaneOptions, start_node};
use crate::pki::ca::{ClusterCa, NODE_CERT_VALIDITY, generate_ca, node_key_and_csr};
use crate::pki::pin::JoinCredential;
use crate::store::StoreBackend;
use crate::store::etcd_process::{ClusterState, EtcdMemberConfig, EtcdTls};

const IDENTITY_FILE: &str = "agent.json";
const CLUSTER_FILE: &str = "cluster.kat";

/// Who this node is; fixed at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    pub node_name: String,
    pub advertise_address: IpAddr,
    pub control_plane: bool,
    /// Control-plane API addresses (HOST:PORT) this node reports to; a control-plane
    /// member also tries its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leader_api: Vec<String>,
    /// A control-plane member that joined: the etcd `--initial-cluster` it was given
    /// (it starts with `--initial-cluster-state=existing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_initial_cluster: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(ValidationErrors),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{0} is not an initialised state directory (run kat-agent init first)")]
    NotInitialised(String),
    #[error("{0}")]
    Conflict(String),
    #[error("--node-name: {0}")]
    NodeName(String),
    #[error("the node's supervision tree failed: {0}")]
    Failed(String),
    #[error("--token: {0}")]
    Token(String),
    #[error("join refused by {leader}: {message}")]
    JoinRefused { leader: String, message: String },
    #[error("--leader-api {0}")]
    Leader(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Flags of `kat-agent init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub node_name: Option<String>,
    pub advertise_address: Option<IpAddr>,
    pub etcd_bin: PathBuf,
}

/// A node ready to start: who it is and what its tree runs.
#[derive(Clone)]
pub struct PreparedNode {
    pub identity: AgentIdentity,
    pub state_dir: PathBuf,
    /// Control-plane members only.
    pub control_plane: Option<ControlPlaneOptions>,
    pub agent: AgentOptions,
}

/// This host's name, as a node name.
fn default_node_name() -> Result<String, AgentError> {
    let host = nix::unistd::gethostname()
        .map_err(|e| AgentError::NodeName(format!("cannot read the host name: {e}")))?;
    let host = host.to_string_lossy().to_ascii_lowercase();
    Ok(host.split('.').next().unwrap_or_default().to_owned())
}

/// The first non-loopback IPv4 address of an interface that is up, else 127.0.0.1.
fn default_advertise_address() -> IpAddr {
    use nix::net::if_::InterfaceFlags;
    let found = nix::ifaddrs::getifaddrs().ok().and_then(|addrs| {
        addrs
            .filter(|a| {
                a.flags.contains(InterfaceFlags::IFF_UP)
                    && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            })
            .find_map(|a| {
                a.address
                    .and_then(|s| s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())))
            })
    });
    found.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn read_identity(state_dir: &Path) -> Result<Option<AgentIdentity>, AgentError> {
    let path = state_dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), AgentError> {
    crate::files::write_atomic(path, data, 0o600).map_err(io_err(path))
}

/// `kat-agent init`: validates the configuration and records the node in its state
/// directory, or — on a directory init already set up — checks that nothing
/// conflicts and resumes. Nothing is overwritten.
pub fn prepare_init(opts: &InitOptions) -> Result<PreparedNode, AgentError> {
    let config_bytes = std::fs::read(&opts.config).map_err(io_err(&opts.config))?;
    let cluster = quadlet::parse_cluster_config(&opts.config.display().to_string(), &config_bytes)
        .map_err(AgentError::Config)?;
    let dir = &opts.state_dir;
    if let Some(identity) = read_identity(dir)? {
        if let Some(name) = &opts.node_name
            && *name != identity.node_name
        {
            return Err(AgentError::Conflict(format!(
                "{} belongs to node {:?}, not {name:?}; use another --state-dir",
                dir.display(),
                identity.node_name
            )));
        }
        if let Some(addr) = opts.advertise_address
            && addr != identity.advertise_address
        {
            return Err(AgentError::Conflict(format!(
                "{} was initialised with --advertise-address {}, not {addr}",
                dir.display(),
                identity.advertise_address
            )));
        }
        let stored = read_cluster(dir)?;
        if stored != cluster {
            return Err(AgentError::Conflict(format!(
                "{} was initialised with a different cluster configuration ({}); \
                 init never overwrites it — use `kat-agent run --state-dir {}`",
                dir.display(),
                dir.join(CLUSTER_FILE).display(),
                dir.display()
            )));
        }
        tracing::info!(node = %identity.node_name, state_dir = %dir.display(), "state directory already initialised; resuming");
        return Ok(prepared(identity, dir, cluster, &opts.etcd_bin));
    }

    let node_name = match &opts.node_name {
        Some(name) => name.clone(),
        None => default_node_name()?,
    };
    if let Some(problem) = kat_proto::names::dns_label_problem(&node_name) {
        return Err(AgentError::NodeName(problem));
    }
    let identity = AgentIdentity {
        node_name,
        advertise_address: opts
            .advertise_address
            .unwrap_or_else(default_advertise_address),
        control_plane: true,
        leader_api: Vec::new(),
        etcd_initial_cluster: None,
    };
    crate::files::private_dir(dir).map_err(io_err(dir))?;
    write_private(&dir.join(CLUSTER_FILE), &config_bytes)?;
    let name = cluster
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    write_init_pki(dir, &name, &identity)?;
    let json =
        serde_json::to_vec_pretty(&identity).map_err(|e| AgentError::Failed(e.to_string()))?;
    write_private(&dir.join(IDENTITY_FILE), &json)?;
    tracing::info!(node = %identity.node_name, address = %identity.advertise_address, state_dir = %dir.display(), "state directory initialised");
    Ok(prepared(identity, dir, cluster, &opts.etcd_bin))
}

/// init's PKI, made before etcd starts so etcd can serve with mTLS from its first
/// start: the cluster CA (`ca.key` 0600; the leader stores it in etcd for every
/// control-plane member) and this node's key and certificate.
fn write_init_pki(
    dir: &Path,
    cluster_name: &str,
    identity: &AgentIdentity,
) -> Result<(), AgentError> {
    let pki = dir.join("pki");
    crate::files::private_dir(&pki).map_err(io_err(&pki))?;
    let failed = |e: crate::pki::ca::PkiError| AgentError::Failed(e.to_string());
    let ca = generate_ca(cluster_name).map_err(failed)?;
    let (key_pem, csr_pem) = node_key_and_csr(&identity.node_name).map_err(failed)?;
    let cert_pem = ClusterCa::from_pem(&ca)
        .and_then(|signer| {
            signer.sign_node_csr(
                &csr_pem,
                &identity.node_name,
                identity.advertise_address,
                NODE_CERT_VALIDITY,
            )
        })
        .map_err(failed)?;
    write_private(&pki.join("ca.key"), ca.key_pem.as_bytes())?;
    write_private(&pki.join("node.key"), key_pem.as_bytes())?;
    let public = |path: &Path, data: &str| {
        crate::files::write_atomic(path, data.as_bytes(), 0o644).map_err(io_err(path))
    };
    public(&pki.join("ca.crt"), &ca.cert_pem)?;
    public(&pki.join("node.crt"), &cert_pem)?;
    Ok(())
}

fn read_cluster(dir: &Path) -> Result<ClusterConfiguration, AgentError> {
    let path = dir.join(CLUSTER_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    quadlet::parse_cluster_config(&path.display().to_string(), &bytes).map_err(AgentError::Config)
}

/// `kat-agent run`: restarts an initialised node from its state directory.
pub fn prepare_run(state_dir: &Path, etcd_bin: &Path) -> Result<PreparedNode, AgentError> {
    let identity = read_identity(state_dir)?
        .ok_or_else(|| AgentError::NotInitialised(state_dir.display().to_string()))?;
    let cluster = read_cluster(state_dir)?;
    Ok(prepared(identity, state_dir, cluster, etcd_bin))
}

fn etcd_member(
    identity: &AgentIdentity,
    dir: &Path,
    cluster: &ClusterConfiguration,
    etcd_bin: &Path,
) -> EtcdMemberConfig {
    let spec = cluster.spec.clone().unwrap_or_default();
    let port = |p: u32| u16::try_from(p).unwrap_or_default();
    let mut member = EtcdMemberConfig::single_tls(
        etcd_bin.to_path_buf(),
        &identity.node_name,
        dir.join("etcd"),
        SocketAddr::new(identity.advertise_address, port(spec.etcd_client_port)),
        SocketAddr::new(identity.advertise_address, port(spec.etcd_peer_port)),
        EtcdTls::in_pki_dir(&dir.join("pki")),
    );
    member.log_file = Some(dir.join("logs").join("etcd.log"));
    if let Some(initial) = &identity.etcd_initial_cluster {
        member.initial_cluster.clone_from(initial);
        member.cluster_state = ClusterState::Existing;
    }
    member
}

fn prepared(
    identity: AgentIdentity,
    dir: &Path,
    cluster: ClusterConfiguration,
    etcd_bin: &Path,
) -> PreparedNode {
    let api_port = u16::try_from(cluster_api_port(&cluster)).unwrap_or_default();
    let own_api = SocketAddr::new(identity.advertise_address, api_port);
    let control_plane = identity.control_plane.then(|| {
        let member = etcd_member(&identity, dir, &cluster, etcd_bin);
        let backend = StoreBackend::Etcd(Box::new(member));
        let mut options = ControlPlaneOptions::new(&identity.node_name, backend, cluster.clone());
        options.api = Some(ApiEndpoint::Tcp {
            addr: own_api,
            slot: new_api_slot(),
        });
        // init's node only: the files its leader writes (katcall.yaml, join-token)
        // and the CA it made before etcd existed.
        if identity.etcd_initial_cluster.is_none() {
            options.local_files = Some(LocalFiles {
                state_dir: dir.to_path_buf(),
                advertise_address: identity.advertise_address,
                api_port,
            });
        }
        options
    });
    let mut leader_api = identity.leader_api.clone();
    if identity.control_plane && !leader_api.contains(&own_api.to_string()) {
        leader_api.insert(0, own_api.to_string());
    }
    let link = Arc::new(TlsLeaderLink::new(dir.join("pki")));
    let mut agent = AgentOptions::new(&identity.node_name, &cluster, leader_api, link);
    agent.pki_dir = Some(dir.join("pki"));
    let agent_port = cluster.spec.as_ref().map_or(0, |s| s.agent_port);
    agent.agent_api = Some(SocketAddr::new(
        identity.advertise_address,
        u16::try_from(agent_port).unwrap_or_default(),
    ));
    agent.remember_targets = Some(remember_targets(dir, &identity));
    agent.capacity = Some(crate::node::host_capacity);
    PreparedNode {
        identity,
        state_dir: dir.to_path_buf(),
        control_plane,
        agent,
    }
}

/// Records learned control-plane API addresses in `agent.json` (its other fields as
/// they were), so a restarted node can reach a leader even if the one it joined is gone.
fn remember_targets(dir: &Path, identity: &AgentIdentity) -> crate::heartbeat::RememberTargets {
    let path = dir.join(IDENTITY_FILE);
    let identity = identity.clone();
    Arc::new(move |targets: &[String]| {
        let mut updated = identity.clone();
        updated.leader_api = targets.to_vec();
        match serde_json::to_vec_pretty(&updated) {
            Ok(json) => {
                if let Err(e) = crate::files::write_atomic(&path, &json, 0o600) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot record the control-plane addresses");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode agent.json"),
        }
    })
}

fn cluster_api_port(cluster: &ClusterConfiguration) -> u32 {
    cluster
        .spec
        .as_ref()
        .map(|s| s.api_port)
        .unwrap_or_default()
}

/// `kat-agent etcd-env`: shell lines with which `etcdctl` reaches this node's member.
pub fn etcd_env(state_dir: &Path) -> Result<String, AgentError> {
    let identity = read_identity(state_dir)?
        .ok_or_else(|| AgentError::NotInitialised(state_dir.display().to_string()))?;
    if !identity.control_plane {
        return Err(AgentError::Conflict(format!(
            "node {:?} ({}) is not a control-plane member: it runs no etcd member",
            identity.node_name,
            state_dir.display()
        )));
    }
    let cluster = read_cluster(state_dir)?;
    let port = cluster.spec.map(|s| s.etcd_client_port).unwrap_or_default();
    let endpoint = SocketAddr::new(
        identity.advertise_address,
        u16::try_from(port).unwrap_or_default(),
    );
    let pki = std::fs::canonicalize(state_dir)
        .unwrap_or_else(|_| state_dir.to_path_buf())
        .join("pki");
    Ok(format!(
        "export ETCDCTL_API=3\n\
         export ETCDCTL_ENDPOINTS=https://{endpoint}\n\
         export ETCDCTL_CACERT={}\n\
         export ETCDCTL_CERT={}\n\
         export ETCDCTL_KEY={}\n",
        pki.join("ca.crt").display(),
        pki.join("node.crt").display(),
        pki.join("node.key").display(),
    ))
}

/// Flags of `kat-agent join`.
#[derive(Clone)]
pub struct JoinOptions {
    pub state_dir: PathBuf,
    /// The leader's API, HOST:PORT.
    pub leader_api: String,
    /// The join credential: `<id>.<secret>.<CA hash>` (DIR/join-token of the init node).
    pub token: String,
    pub node_name: Option<String>,
    pub advertise_address: Option<IpAddr>,
    pub etcd_bin: PathBuf,
}

/// How long `join` keeps asking a leader that cannot take the join yet, and how often.
const JOIN_RETRY: Duration = Duration::from_secs(30);
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// `kat-agent join`: checks the leader against the CA hash in the token, makes this
/// node's key and CSR here, joins, and records the certificate, CA, cluster
/// configuration and identity in the state directory (identity last: a join that fails
/// half-way leaves a directory `run` refuses and `join` can retry).
pub async fn join(opts: &JoinOptions) -> Result<PreparedNode, AgentError> {
    let dir = &opts.state_dir;
    if let Some(identity) = read_identity(dir)? {
        return Err(AgentError::Conflict(format!(
            "{} already belongs to node {:?}; start it with `kat-agent run --state-dir {}`",
            dir.display(),
            identity.node_name,
            dir.display()
        )));
    }
    let credential =
        JoinCredential::parse(&opts.token).map_err(|e| AgentError::Token(e.to_string()))?;
    let node_name = match &opts.node_name {
        Some(name) => name.clone(),
        None => default_node_name()?,
    };
    if let Some(problem) = kat_proto::names::dns_label_problem(&node_name) {
        return Err(AgentError::NodeName(problem));
    }
    let advertise_address = opts
        .advertise_address
        .unwrap_or_else(default_advertise_address);
    let leader = opts.leader_api.clone();
    if leader.parse::<SocketAddr>().is_err() && !leader.contains(':') {
        return Err(AgentError::Leader(format!(
            "{leader:?}: expected HOST:PORT"
        )));
    }
    let (key_pem, csr_pem) =
        node_key_and_csr(&node_name).map_err(|e| AgentError::Failed(e.to_string()))?;
    let request = JoinRequest {
        token: credential.token.clone(),
        node_name: node_name.clone(),
        csr_pem,
        advertise_address: advertise_address.to_string(),
        capacity: Some(crate::node::host_capacity()),
        agent_version: kat_proto::VERSION.to_owned(),
        ..Default::default()
    };
    // A leader that does not listen yet, or was elected and still starts its leader
    // services, is asked again for a while: nothing was stored for those answers.
    let started = tokio::time::Instant::now();
    let mut pinned: Option<String> = None;
    let response = loop {
        let retry = |why: String| {
            if started.elapsed() < JOIN_RETRY {
                tracing::info!(leader = %leader, reason = %why, "the leader is not ready for the join; trying again");
                Ok(why)
            } else {
                Err(why)
            }
        };
        // The CA is checked against the pin once; later tries reuse it.
        let ca_pem = match &pinned {
            Some(pem) => pem.clone(),
            None => match fetch_pinned_ca(&leader, &credential.ca_sha256).await {
                Ok(pem) => pinned.insert(pem).clone(),
                Err(e @ crate::client::ClientError::Connect { .. }) => {
                    retry(e.to_string()).map_err(AgentError::Leader)?;
                    tokio::time::sleep(JOIN_RETRY_PAUSE).await;
                    continue;
                }
                Err(e) => return Err(AgentError::Leader(e.to_string())),
            },
        };
        // A control-plane join waits while an earlier member catches up in etcd.
        let channel = api_channel_with_timeout(&leader, &ca_pem, None, Duration::from_secs(60))
            .map_err(|e| AgentError::Leader(e.to_string()))?;
        match NodeApiClient::new(channel).join(request.clone()).await {
            Ok(response) => break response.into_inner(),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && status
                        .metadata()
                        .get(crate::api::LEADER_API_METADATA)
                        .is_none() =>
            {
                retry(status.message().to_owned()).map_err(|message| AgentError::JoinRefused {
                    leader: leader.clone(),
                    message,
                })?;
                tokio::time::sleep(JOIN_RETRY_PAUSE).await;
            }
            Err(status) => {
                return Err(AgentError::JoinRefused {
                    leader: leader.clone(),
                    message: status.message().to_owned(),
                });
            }
        }
    };
    let cluster = response
        .cluster
        .clone()
        .ok_or_else(|| AgentError::JoinRefused {
            leader: leader.clone(),
            message: "the answer carried no cluster configuration".to_owned(),
        })?;

    crate::files::private_dir(dir).map_err(io_err(dir))?;
    let pki = dir.join("pki");
    crate::files::private_dir(&pki).map_err(io_err(&pki))?;
    write_private(&pki.join("node.key"), key_pem.as_bytes())?;
    let public = |path: &Path, data: &str| {
        crate::files::write_atomic(path, data.as_bytes(), 0o644).map_err(io_err(path))
    };
    public(&pki.join("node.crt"), &response.certificate_pem)?;
    public(&pki.join("ca.crt"), &response.ca_pem)?;
    let yaml = quadlet::to_yaml(&cluster).map_err(|e| AgentError::Failed(e.to_string()))?;
    write_private(&dir.join(CLUSTER_FILE), yaml.as_bytes())?;
    let identity = AgentIdentity {
        node_name,
        advertise_address,
        control_plane: response.etcd.is_some(),
        leader_api: vec![leader],
        etcd_initial_cluster: response.etcd.map(|e| e.initial_cluster),
    };
    let json =
        serde_json::to_vec_pretty(&identity).map_err(|e| AgentError::Failed(e.to_string()))?;
    write_private(&dir.join(IDENTITY_FILE), &json)?;
    tracing::info!(node = %identity.node_name, address = %identity.advertise_address, state_dir = %dir.display(), "joined the cluster");
    Ok(prepared(identity, dir, cluster, &opts.etcd_bin))
}

/// How a node's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop; everything stopped in order.
    Stopped,
}

/// Runs the node until `shutdown` resolves (then stops the tree in order) or the tree
/// fails (restart intensity exhausted at the top: the caller exits non-zero so the
/// host's systemd restarts the agent).
pub async fn run_until(
    node: &PreparedNode,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, AgentError> {
    std::fs::create_dir_all(node.state_dir.join("logs")).map_err(io_err(&node.state_dir))?;
    let (supervisor, join) = start_node(
        &node.identity.node_name,
        node.control_plane.as_ref(),
        Some(&node.agent),
    )
    .await
    .map_err(|e| AgentError::Failed(e.to_string()))?;
    tokio::pin!(join);
    tokio::select! {
        () = shutdown => {
            tracing::info!(node = %node.identity.node_name, "stopping");
            let _ = supervisor.stop_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(90))).await;
            let _ = join.await;
            tracing::info!(node = %node.identity.node_name, "stopped");
            Ok(Outcome::Stopped)
        }
        _ = &mut join => Err(AgentError::Failed("restart intensity exhausted; see the log above".to_owned())),
    }
}

/// Runtime directories of the workload users' managers kat-agent starts itself, as
/// `/run/kat/<node>/users` (a tmpfs: a reboot leaves no stale units behind; one per
/// node, for nodes sharing a host).
pub const AGENT_MANAGERS_DIR: &str = "/run/kat";

/// `--runtime`: what runs this node's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Podman containers as units of the systemd manager on `bus`, unit files in
    /// `unit_dir` (rootful: the system manager).
    Podman {
        bus: String,
        unit_dir: PathBuf,
        podman: Option<PathBuf>,
        mode: RuntimeMode,
        /// The Podman network instances join (`None`: Podman's default).
        network: Option<String>,
    },
    /// The in-memory runtime (demos, simulations).
    Fake,
}

/// `--runtime-mode`: whose containers the instances are (docs/runtime.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeMode {
    /// Each workload runs as its own unprivileged user, in that user's systemd manager.
    Rootless(UserManagerChoice),
    /// Root's Podman, units of the system manager on the bus.
    Rootful,
}

/// `--user-managers`: how workload users' systemd managers are kept running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserManagerChoice {
    /// logind's lingering where the host was booted with systemd, else the agent's own.
    Auto,
    Logind,
    /// The agent starts them (hosts without logind: containers, minimal systems).
    Agent,
}

/// Gives the node its Runtime actor. A Podman host that cannot be reached (no Podman,
/// no systemd manager on the bus) leaves the node without one, with a warning: it
/// still joins and reports, but runs no instances.
pub async fn attach_runtime(node: &mut PreparedNode, choice: &RuntimeChoice) {
    use kat_runtime::host::{FakeHost, InstanceHost};
    let host: Arc<dyn InstanceHost> = match choice {
        RuntimeChoice::Fake => Arc::new(FakeHost::new(Arc::new(
            kat_runtime::fake::FakeRuntime::new(),
        ))),
        RuntimeChoice::Podman {
            bus,
            unit_dir,
            podman,
            mode,
            network: _,
        } => {
            let Some(podman) = podman
                .clone()
                .map(kat_runtime::podman::Podman::new)
                .or_else(kat_runtime::podman::Podman::find)
            else {
                tracing::warn!(node = %node.identity.node_name, "no container runtime: podman is not installed (install it, or run with --runtime fake)");
                return;
            };
            if let RuntimeMode::Rootless(managers) = mode {
                use kat_runtime::rootless::{AgentStarted, Logind, RootlessHost, UserManagers};
                let booted = std::path::Path::new("/run/systemd/system").is_dir();
                let managers: Box<dyn UserManagers> = match managers {
                    UserManagerChoice::Logind => Box::new(Logind {
                        system_bus: bus.clone(),
                    }),
                    UserManagerChoice::Auto if booted => Box::new(Logind {
                        system_bus: bus.clone(),
                    }),
                    UserManagerChoice::Agent | UserManagerChoice::Auto => Box::new(AgentStarted {
                        base: PathBuf::from(AGENT_MANAGERS_DIR)
                            .join(&node.identity.node_name)
                            .join("users"),
                        tag: node.identity.node_name.clone(),
                    }),
                };
                tracing::info!(node = %node.identity.node_name, ?managers, "rootless: each workload runs as its own user");
                Arc::new(RootlessHost::new(podman.binary().to_path_buf(), managers))
            } else {
                let Some(host) = rootful_host(node, bus, unit_dir, podman).await else {
                    return;
                };
                Arc::new(host)
            }
        }
    };
    let runtime_dir = node.state_dir.join("runtime");
    if let Err(e) = crate::files::private_dir(&runtime_dir) {
        tracing::warn!(path = %runtime_dir.display(), error = %e, "cannot create the runtime directory; instances are not cached");
    }
    node.agent.runtime = Some(crate::node::RuntimeSetup {
        host,
        desired: crate::runtime::new_desired_cell(),
        reports: crate::runtime::new_reports_cell(),
        cache: Some(runtime_dir.join("desired.json")),
        tick: Duration::from_secs(5),
        spec: Some(crate::runtime_spec::SpecContext {
            volume_base: read_cluster(&node.state_dir)
                .ok()
                .and_then(|c| c.spec)
                .map_or_else(
                    || PathBuf::from(kat_proto::quadlet::defaults::VOLUME_BASE_PATH),
                    |s| PathBuf::from(s.volume_base_path),
                ),
            network: match choice {
                RuntimeChoice::Podman { network, .. } => network.clone(),
                RuntimeChoice::Fake => None,
            },
        }),
    });
    tracing::info!(node = %node.identity.node_name, runtime = ?choice, "container runtime ready");
}

/// Root's Podman, instances as units of the (system) manager on `bus`.
async fn rootful_host(
    node: &PreparedNode,
    bus: &str,
    unit_dir: &std::path::Path,
    podman: kat_runtime::podman::Podman,
) -> Option<kat_runtime::host::SystemdHost> {
    let systemd = match kat_runtime::systemd::Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(node = %node.identity.node_name, %bus, error = %e, "no container runtime: cannot reach systemd (set --systemd-bus, or run with --runtime fake)");
            return None;
        }
    };
    Some(kat_runtime::host::SystemdHost {
        units: kat_runtime::systemd::Units {
            systemd,
            unit_dir: unit_dir.to_path_buf(),
            podman: podman.binary().to_path_buf(),
            cgroups: kat_runtime::systemd::unit::CgroupsMode::default(),
            stop_timeout: Duration::from_secs(10),
        },
        podman,
        image_source: None,
    })
}
