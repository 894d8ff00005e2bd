//! The runtime's vocabulary (SPEC §8.1): what to create, what a container's state is.
//! Plain data; the Podman backend turns it into arguments and back.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Labels every KAT container carries (SPEC §8.2).
pub const LABEL_WORKLOAD: &str = "kat.dws.rip/workload-name";
pub const LABEL_NAMESPACE: &str = "kat.dws.rip/namespace";
pub const LABEL_INSTANCE: &str = "kat.dws.rip/instance-id";

/// What KAT does when an instance's process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    Never,
    /// Restart on failure, at most `max_restarts` times within `reset_seconds`.
    MaxCount {
        max_restarts: u32,
        reset_seconds: u32,
    },
}

/// CPU and memory limits, and GPUs by device index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub gpus: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A container port, published on the host when `host_port` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: Option<u16>,
    pub protocol: Protocol,
}

/// A host directory bound into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything needed to create one instance's container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCreateOptions {
    pub instance_id: String,
    pub namespace: String,
    pub workload: String,
    /// Container name (the unit and container share it: `kat-<ns>-<workload>-<id>`).
    pub name: String,
    pub image: String,
    pub hostname: Option<String>,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Replaces the image's default arguments when not empty.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Extra labels; the three KAT labels are always added.
    pub labels: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    pub resources: ResourceSpec,
    pub ports: Vec<PortMapping>,
    pub volumes: Vec<VolumeMount>,
    /// Podman network name; `None`: Podman's default.
    pub network: Option<String>,
    pub ip: Option<IpAddr>,
    pub dns_servers: Vec<IpAddr>,
    pub dns_search: Vec<String>,
    pub user: Option<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opts: Vec<String>,
    /// Run under a systemd unit: restarts are systemd's, not Podman's.
    pub systemd_mode: bool,
}

impl ContainerCreateOptions {
    /// The labels the container gets: the extra ones plus the three KAT labels.
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(LABEL_WORKLOAD.to_owned(), self.workload.clone());
        labels.insert(LABEL_NAMESPACE.to_owned(), self.namespace.clone());
        labels.insert(LABEL_INSTANCE.to_owned(), self.instance_id.clone());
        labels
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Starting,
    /// No health check.
    None,
}

/// A container as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub state: ContainerState,
    /// Set once the container has exited.
    pub exit_code: Option<i32>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub health: Health,
    pub image: String,
    pub image_id: String,
    /// The container's address on its network (the overlay IP), if it has one.
    pub ip: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub pid: Option<u32>,
}

/// A container in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub state: ContainerState,
    pub exit_code: Option<i32>,
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

/// `podman build` inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    pub context: PathBuf,
    /// Relative to the context; `None`: `Containerfile` / `Dockerfile` there.
    pub containerfile: Option<PathBuf>,
    pub tag: String,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
}

/// Which lines of a container's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    /// Only lines newer than this.
    pub since: Option<Duration>,
    /// Only the last N lines.
    pub tail: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of a container's log (without its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: Vec<u8>,
}

/// What an exec returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("no such container or image: {0}")]
    NotFound(String),
    #[error("{field}: {reason}")]
    InvalidOptions { field: String, reason: String },
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` timed out after {after:?}")]
    Timeout { command: String, after: Duration },
    #[error("cannot pull image {image}: {reason}")]
    ImagePull { image: String, reason: String },
    #[error("unreadable output of `{command}`: {reason}")]
    Parse { command: String, reason: String },
}
