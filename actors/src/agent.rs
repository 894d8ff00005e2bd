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
//! DIR/join-token     the first join token (0600), written by init's leader
//! ```

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kat_proto::quadlet::{self, ValidationErrors};
use kat_proto::v1alpha1::ClusterConfiguration;
use serde::{Deserialize, Serialize};

use crate::leader::LocalFiles;
use crate::node::{ControlPlaneOptions, start_control_plane_node};
use crate::store::StoreBackend;
use crate::store::etcd_process::EtcdMemberConfig;

const IDENTITY_FILE: &str = "agent.json";
const CLUSTER_FILE: &str = "cluster.kat";

/// Who this node is; fixed at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    pub node_name: String,
    pub advertise_address: IpAddr,
    pub control_plane: bool,
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
    pub options: ControlPlaneOptions,
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
    };
    crate::files::private_dir(dir).map_err(io_err(dir))?;
    write_private(&dir.join(CLUSTER_FILE), &config_bytes)?;
    let json =
        serde_json::to_vec_pretty(&identity).map_err(|e| AgentError::Failed(e.to_string()))?;
    write_private(&dir.join(IDENTITY_FILE), &json)?;
    tracing::info!(node = %identity.node_name, address = %identity.advertise_address, state_dir = %dir.display(), "state directory initialised");
    Ok(prepared(identity, dir, cluster, &opts.etcd_bin))
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
    let mut member = EtcdMemberConfig::single(
        etcd_bin.to_path_buf(),
        &identity.node_name,
        dir.join("etcd"),
        SocketAddr::new(identity.advertise_address, port(spec.etcd_client_port)),
        SocketAddr::new(identity.advertise_address, port(spec.etcd_peer_port)),
    );
    member.log_file = Some(dir.join("logs").join("etcd.log"));
    member
}

fn prepared(
    identity: AgentIdentity,
    dir: &Path,
    cluster: ClusterConfiguration,
    etcd_bin: &Path,
) -> PreparedNode {
    let member = etcd_member(&identity, dir, &cluster, etcd_bin);
    let backend = StoreBackend::Etcd(Box::new(member));
    let mut options = ControlPlaneOptions::new(&identity.node_name, backend, cluster);
    let api_port = u16::try_from(cluster_api_port(&options.cluster)).unwrap_or_default();
    options.api_addr = Some(SocketAddr::new(identity.advertise_address, api_port));
    options.local_files = Some(LocalFiles {
        state_dir: dir.to_path_buf(),
        advertise_address: identity.advertise_address,
    });
    PreparedNode {
        identity,
        state_dir: dir.to_path_buf(),
        options,
    }
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
    let cluster = read_cluster(state_dir)?;
    let port = cluster.spec.map(|s| s.etcd_client_port).unwrap_or_default();
    let endpoint = SocketAddr::new(
        identity.advertise_address,
        u16::try_from(port).unwrap_or_default(),
    );
    Ok(format!(
        "export ETCDCTL_API=3\n\
         export ETCDCTL_ENDPOINTS=http://{endpoint}\n\
         # etcd serves plain HTTP on the advertise address until the cluster PKI is in place;\n\
         # clear certificate settings left over from another cluster.\n\
         unset ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY\n"
    ))
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
    let (supervisor, join) = start_control_plane_node(&node.options)
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
