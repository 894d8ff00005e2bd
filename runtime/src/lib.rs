//! The container runtime (SPEC §8): the [`ContainerRuntime`] trait, its Podman
//! backend ([`podman::Podman`]) and the in-memory fake ([`fake::FakeRuntime`]) used by
//! simulations and by demos on machines without Podman (`--runtime fake`).
//!
//! Instances as systemd units over D-Bus, rootless per-workload users and the Runtime
//! actor that reconciles them build on this trait (see `docs/runtime.md`). [`spec`]
//! turns what the leader assigns into what the runtime runs; [`probe`] measures what
//! the host has.

pub mod fake;
pub mod host;
pub mod podman;
pub mod probe;
pub mod rootless;
pub mod safe_fs;
pub mod spec;
pub mod systemd;
pub mod types;
pub mod users;
pub mod volumes;

use std::collections::BTreeMap;
use std::time::Duration;

pub use types::*;

/// The lines of a container's log; ends when the log does (or, when following, when
/// the container is gone). Dropping it stops reading.
pub type LogReceiver = tokio::sync::mpsc::Receiver<Result<LogLine, RuntimeError>>;

/// What KAT needs from a container engine (SPEC §8.1).
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    async fn pull_image(&self, image: &str, platform: Option<&str>) -> Result<(), RuntimeError>;

    /// Builds an image; returns its ID.
    async fn build_image(&self, opts: &BuildOptions) -> Result<String, RuntimeError>;

    async fn images(&self) -> Result<Vec<ImageSummary>, RuntimeError>;

    /// Creates (does not start) a container; returns its ID.
    async fn create(&self, opts: &ContainerCreateOptions) -> Result<String, RuntimeError>;

    async fn start(&self, id: &str) -> Result<(), RuntimeError>;

    /// Asks the container to stop, killing it after `timeout`.
    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError>;

    async fn remove(&self, id: &str, force: bool, remove_volumes: bool)
    -> Result<(), RuntimeError>;

    async fn status(&self, id_or_name: &str) -> Result<ContainerStatus, RuntimeError>;

    async fn logs(&self, id: &str, opts: &LogOptions) -> Result<LogReceiver, RuntimeError>;

    /// Runs `cmd` in the container (health checks); a command that runs and fails is
    /// `Ok` with its exit code.
    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;

    /// Containers carrying all of `labels` (every container when empty).
    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError>;
}
