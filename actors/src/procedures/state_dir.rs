//! A node's state directory: who the node is (`agent.json`), its cluster
//! configuration (`cluster.kat`), and the errors of the procedures that set it up.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use kat_proto::quadlet::{self, ValidationErrors};
use kat_proto::v1alpha1::ClusterConfiguration;
use serde::{Deserialize, Serialize};

pub(super) const IDENTITY_FILE: &str = "agent.json";
pub(super) const CLUSTER_FILE: &str = "cluster.kat";

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
    #[error("restore: {0}")]
    Restore(String),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// This host's name, as a node name.
pub(super) fn default_node_name() -> Result<String, AgentError> {
    let host = nix::unistd::gethostname()
        .map_err(|e| AgentError::NodeName(format!("cannot read the host name: {e}")))?;
    let host = host.to_string_lossy().to_ascii_lowercase();
    Ok(host.split('.').next().unwrap_or_default().to_owned())
}

/// The first non-loopback IPv4 address of an interface that is up, else 127.0.0.1.
pub(super) fn default_advertise_address() -> IpAddr {
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

pub(super) fn read_identity(state_dir: &Path) -> Result<Option<AgentIdentity>, AgentError> {
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

pub(super) fn write_private(path: &Path, data: &[u8]) -> Result<(), AgentError> {
    crate::files::write_atomic(path, data, 0o600).map_err(io_err(path))
}

pub(super) fn read_cluster(dir: &Path) -> Result<ClusterConfiguration, AgentError> {
    let path = dir.join(CLUSTER_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    quadlet::parse_cluster_config(&path.display().to_string(), &bytes).map_err(AgentError::Config)
}

/// Refuses flags that name another node than the one `dir` holds (`--node-name`,
/// `--advertise-address`): init and restore never change who a node is.
pub(super) fn same_node(
    dir: &Path,
    identity: &AgentIdentity,
    node_name: Option<&str>,
    advertise_address: Option<IpAddr>,
) -> Result<(), AgentError> {
    if let Some(name) = node_name
        && name != identity.node_name
    {
        return Err(AgentError::Conflict(format!(
            "{} belongs to node {:?}, not {name:?}; use another --state-dir",
            dir.display(),
            identity.node_name
        )));
    }
    if let Some(addr) = advertise_address
        && addr != identity.advertise_address
    {
        return Err(AgentError::Conflict(format!(
            "{} was initialised with --advertise-address {}, not {addr}",
            dir.display(),
            identity.advertise_address
        )));
    }
    Ok(())
}
