//! Where a node's instances live, as the Runtime actor sees it: make an instance
//! exist as desired (adopting one that already does), retire one, observe one, exec
//! in one. [`SystemdHost`] keeps instances as systemd units of Podman containers
//! (systemd applies restart policies); [`FakeHost`] keeps them in the fake runtime and
//! applies restart policies itself, standing in for systemd.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fake::FakeRuntime;
use crate::podman::Podman;
use crate::systemd::Units;
use crate::systemd::unit::{render_unit, unit_name};
use crate::types::{
    ContainerCreateOptions, ContainerState, ExecOutput, LogOptions, RestartPolicy, RuntimeError,
};
use crate::{ContainerRuntime, LogReceiver};

/// An exec health check (from `VirtualLoadBalancer.kat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthProbe {
    pub command: Vec<String>,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// One instance this node should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstance {
    pub opts: ContainerCreateOptions,
    pub health: Option<HealthProbe>,
    /// What must exist on the node before it starts (its volumes).
    #[serde(default)]
    pub ensure: Vec<crate::volumes::Ensure>,
}

impl DesiredInstance {
    pub fn id(&self) -> &str {
        &self.opts.instance_id
    }
}

/// What [`InstanceHost::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It was there as desired (e.g. after an agent restart): left alone.
    Adopted,
    Started,
    /// It was there with another spec: replaced.
    Replaced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    /// Ended and will not be restarted (policy, or restarts used up).
    Exited,
    Failed,
    Unknown,
}

/// An instance as observed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub phase: Phase,
    pub container_id: Option<String>,
    pub restarts: u32,
    pub exit_code: Option<i32>,
    pub ip: Option<IpAddr>,
    pub message: String,
}

#[async_trait::async_trait]
pub trait InstanceHost: Send + Sync {
    /// IDs of the instances this host has now (desired or not).
    async fn present(&self) -> Result<Vec<String>, RuntimeError>;
    /// Whether the host still has an instance of the workload (desired or not): a
    /// purge waits until the Runtime actor has retired them all.
    async fn has_workload(&self, namespace: &str, workload: &str) -> Result<bool, RuntimeError>;
    /// Gets what the instance needs before it can start — its image, pulled (which
    /// may take minutes) — so that `ensure` is quick. The Runtime actor runs it in
    /// the background.
    async fn prepare(&self, desired: &DesiredInstance) -> Result<(), RuntimeError>;
    async fn ensure(&self, desired: &DesiredInstance) -> Result<Ensured, RuntimeError>;
    async fn retire(&self, instance_id: &str) -> Result<(), RuntimeError>;
    async fn observe(&self, desired: &DesiredInstance) -> Result<Observation, RuntimeError>;
    async fn exec(
        &self,
        desired: &DesiredInstance,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;
    /// The instance's container log (`katcall logs`).
    async fn logs(
        &self,
        desired: &DesiredInstance,
        opts: &LogOptions,
    ) -> Result<LogReceiver, RuntimeError>;
    /// Removes what the host keeps for a workload deleted for good (`katcall delete
    /// --purge-volumes`), once its instances are retired: rootless, the workload's
    /// user with its image storage and systemd manager. Names what it removed.
    async fn remove_workload(
        &self,
        _namespace: &str,
        _workload: &str,
    ) -> Result<Option<String>, RuntimeError> {
        Ok(None)
    }
}

/// Instances as systemd units of Podman containers.
#[derive(Debug, Clone)]
pub struct SystemdHost {
    pub units: Units,
    pub podman: Podman,
    /// Where images missing from `podman`'s storage are copied from before pulling
    /// (root's storage, for a rootless user).
    pub image_source: Option<Podman>,
}

/// The namespace, workload and instance ID a unit file was written for (its first
/// line says).
fn instance_of_unit(text: &str) -> Option<UnitOwner> {
    let first = text.lines().next()?;
    let rest = first.strip_prefix("# Written by kat-agent for instance ")?;
    let mut ids = rest.split(';').next()?.splitn(3, '/');
    Some(UnitOwner {
        namespace: ids.next()?.to_owned(),
        workload: ids.next()?.to_owned(),
        instance: ids.next()?.to_owned(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct UnitOwner {
    namespace: String,
    workload: String,
    instance: String,
}

impl SystemdHost {
    /// (instance ID, unit name) of each unit file kat-agent wrote.
    fn unit_files(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        Ok(self
            .owned_unit_files()?
            .into_iter()
            .map(|(owner, name)| (owner.instance, name))
            .collect())
    }

    fn owned_unit_files(&self) -> Result<Vec<(UnitOwner, String)>, RuntimeError> {
        let dir = &self.units.unit_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(RuntimeError::Spawn {
                    program: dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        let mut units = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("kat-") && name.ends_with(".service")) {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(entry.path())
                && let Some(owner) = instance_of_unit(&text)
            {
                units.push((owner, name));
            }
        }
        Ok(units)
    }
}

#[async_trait::async_trait]
impl InstanceHost for SystemdHost {
    async fn present(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.unit_files()?.into_iter().map(|(id, _)| id).collect())
    }

    async fn has_workload(&self, namespace: &str, workload: &str) -> Result<bool, RuntimeError> {
        Ok(self
            .owned_unit_files()?
            .iter()
            .any(|(owner, _)| owner.namespace == namespace && owner.workload == workload))
    }

    async fn prepare(&self, desired: &DesiredInstance) -> Result<(), RuntimeError> {
        let owner = self.podman.run_as().map(|u| crate::volumes::Owner {
            uid: u.uid,
            gid: u.gid,
        });
        crate::volumes::apply(&desired.ensure, owner)?;
        self.podman
            .ensure_image_from(&desired.opts.image, self.image_source.as_ref())
            .await
    }

    async fn ensure(&self, desired: &DesiredInstance) -> Result<Ensured, RuntimeError> {
        let o = &desired.opts;
        let name = unit_name(&o.namespace, &o.workload, &o.instance_id);
        let path = self.units.unit_dir.join(&name);
        let want = render_unit(
            o,
            &self.units.podman,
            self.units.cgroups,
            self.units.stop_timeout,
            self.units.env_file(o).as_deref(),
            Some(&self.units.err_file(&name)),
        );
        match std::fs::read_to_string(&path) {
            // Same unit: systemd has it (and applies its restart policy); adopt it,
            // unless this manager never started it (it restarted since): start it.
            Ok(have) if have == want => {
                let state = self.units.systemd.state(&name).await?;
                if state.ever_started {
                    Ok(Ensured::Adopted)
                } else if o.restart == RestartPolicy::Never
                    && self.podman.status(&o.name).await.is_ok()
                {
                    // A run-once unit that ran and ended: systemd may have unloaded it
                    // (and forgotten it started), but its container is kept and says
                    // how it ended. Running it again would run the JOB twice.
                    Ok(Ensured::Adopted)
                } else {
                    self.units.run(o).await?;
                    Ok(Ensured::Started)
                }
            }
            // Only how the unit is run changed, not what runs (a unit written by an
            // older agent, without `StandardError=`): the file is rewritten for the
            // next start, and the container runs on. Restarting it would restart
            // every instance of a node at once on an upgrade, and run finished JOB
            // runs again.
            Ok(have) if same_container(&have, &want) => {
                self.units.write_unit_file(&name, &want)?;
                self.units.systemd.reload().await?;
                Ok(Ensured::Adopted)
            }
            Ok(_) => {
                // Images are pulled before the unit starts (SPEC §8.2).
                self.podman
                    .ensure_image_from(&o.image, self.image_source.as_ref())
                    .await?;
                self.units.remove(&name).await?;
                self.units.run(o).await?;
                Ok(Ensured::Replaced)
            }
            Err(_) => {
                self.podman
                    .ensure_image_from(&o.image, self.image_source.as_ref())
                    .await?;
                self.units.run(o).await?;
                Ok(Ensured::Started)
            }
        }
    }

    async fn retire(&self, instance_id: &str) -> Result<(), RuntimeError> {
        for (id, unit) in self.unit_files()? {
            if id == instance_id {
                self.units.remove(&unit).await?;
                // A run-once unit keeps its container (for the exit code): remove it.
                let container = unit.trim_end_matches(".service");
                match self.podman.remove(container, true, false).await {
                    Ok(()) | Err(RuntimeError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn observe(&self, desired: &DesiredInstance) -> Result<Observation, RuntimeError> {
        let o = &desired.opts;
        let unit = unit_name(&o.namespace, &o.workload, &o.instance_id);
        let state = self.units.systemd.state(&unit).await?;
        let container = self.podman.status(&o.name).await.ok();
        let running = container
            .as_ref()
            .is_some_and(|c| c.state == ContainerState::Running);
        let exited = container
            .as_ref()
            .filter(|c| c.state == ContainerState::Exited && o.restart == RestartPolicy::Never);
        let phase = match (state.active.as_str(), state.sub.as_str()) {
            // A run-once container that ended: its own exit code says how.
            _ if exited.is_some() => {
                if exited.and_then(|c| c.exit_code) == Some(0) {
                    Phase::Exited
                } else {
                    Phase::Failed
                }
            }
            ("active", "running") if running => Phase::Running,
            ("active" | "activating" | "reloading", _) => Phase::Starting,
            ("failed", _) => Phase::Failed,
            ("inactive" | "deactivating", _) => Phase::Exited,
            _ => Phase::Unknown,
        };
        let exit_code = match exited {
            Some(c) => c.exit_code,
            None => matches!(phase, Phase::Exited | Phase::Failed).then_some(state.exit_status),
        };
        Ok(Observation {
            phase,
            container_id: container.as_ref().map(|c| c.id.clone()),
            restarts: state.restarts,
            exit_code,
            ip: container.as_ref().and_then(|c| c.ip),
            message: {
                let mut message = if state.restarts > 0
                    && state.exit_status != 0
                    && phase != Phase::Running
                {
                    format!(
                        "unit {}/{} ({}); restarted {} times, last exit status {}",
                        state.active, state.sub, state.result, state.restarts, state.exit_status
                    )
                } else {
                    format!("unit {}/{} ({})", state.active, state.sub, state.result)
                };
                // Why it does not run, in Podman's words (a start refused before the
                // container ran leaves nothing in the container's log).
                let failing = phase == Phase::Failed
                    || (phase != Phase::Running && state.restarts > 0 && state.exit_status != 0);
                if failing && let Some(why) = self.units.start_error(&unit) {
                    message.push_str(": ");
                    message.push_str(&why);
                }
                message
            },
        })
    }

    async fn exec(
        &self,
        desired: &DesiredInstance,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.podman.exec(&desired.opts.name, cmd, timeout).await
    }

    async fn logs(
        &self,
        desired: &DesiredInstance,
        opts: &LogOptions,
    ) -> Result<LogReceiver, RuntimeError> {
        self.podman.logs(&desired.opts.name, opts).await
    }
}

/// Whether two unit texts run the same container: equal but for the settings that
/// only say where the unit's own output goes.
fn same_container(have: &str, want: &str) -> bool {
    let runs = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with("StandardError="))
            .map(str::to_owned)
            .collect()
    };
    runs(have) == runs(want)
}

#[derive(Debug)]
struct FakeEntry {
    desired: DesiredInstance,
    container: String,
    restarts: u32,
}

/// Instances in the fake runtime, restart policies applied here.
#[derive(Debug, Default)]
pub struct FakeHost {
    pub runtime: Arc<FakeRuntime>,
    entries: Mutex<HashMap<String, FakeEntry>>,
}

impl FakeHost {
    pub fn new(runtime: Arc<FakeRuntime>) -> Self {
        Self {
            runtime,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, FakeEntry>>, RuntimeError> {
        self.entries.lock().map_err(|_| RuntimeError::Spawn {
            program: "fake host".to_owned(),
            reason: "lock poisoned".to_owned(),
        })
    }

    async fn pull(&self, desired: &DesiredInstance) -> Result<(), RuntimeError> {
        let image = &desired.opts.image;
        self.runtime
            .pull_image(image, None)
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::ImagePull {
                image: image.clone(),
                reason: e.to_string(),
            })
    }

    async fn launch(&self, desired: &DesiredInstance) -> Result<(), RuntimeError> {
        self.pull(desired).await?;
        let id = self.runtime.create(&desired.opts).await?;
        self.runtime.start(&id).await?;
        self.lock()?.insert(
            desired.id().to_owned(),
            FakeEntry {
                desired: desired.clone(),
                container: id,
                restarts: 0,
            },
        );
        Ok(())
    }
}

#[async_trait::async_trait]
impl InstanceHost for FakeHost {
    async fn present(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.lock()?.keys().cloned().collect())
    }

    async fn has_workload(&self, namespace: &str, workload: &str) -> Result<bool, RuntimeError> {
        Ok(self
            .lock()?
            .values()
            .any(|e| e.desired.opts.namespace == namespace && e.desired.opts.workload == workload))
    }

    async fn prepare(&self, desired: &DesiredInstance) -> Result<(), RuntimeError> {
        self.pull(desired).await
    }

    async fn ensure(&self, desired: &DesiredInstance) -> Result<Ensured, RuntimeError> {
        let same = self
            .lock()?
            .get(desired.id())
            .map(|e| e.desired.opts == desired.opts);
        match same {
            Some(true) => Ok(Ensured::Adopted),
            Some(false) => {
                self.retire(desired.id()).await?;
                self.launch(desired).await?;
                Ok(Ensured::Replaced)
            }
            None => {
                self.launch(desired).await?;
                Ok(Ensured::Started)
            }
        }
    }

    async fn retire(&self, instance_id: &str) -> Result<(), RuntimeError> {
        let container = self.lock()?.remove(instance_id).map(|e| e.container);
        if let Some(c) = container {
            let _ = self.runtime.stop(&c, Duration::from_secs(10)).await;
            self.runtime.remove(&c, true, false).await?;
        }
        Ok(())
    }

    async fn observe(&self, desired: &DesiredInstance) -> Result<Observation, RuntimeError> {
        let (container, restarts, policy) = {
            let entries = self.lock()?;
            let e = entries
                .get(desired.id())
                .ok_or_else(|| RuntimeError::NotFound(desired.id().to_owned()))?;
            (e.container.clone(), e.restarts, e.desired.opts.restart)
        };
        let mut status = self.runtime.status(&container).await?;
        let mut restarts = restarts;
        if status.state == ContainerState::Exited {
            let code = status.exit_code.unwrap_or(0);
            let again = match policy {
                RestartPolicy::Always => true,
                RestartPolicy::Never => false,
                RestartPolicy::MaxCount { max_restarts, .. } => {
                    code != 0 && restarts < max_restarts
                }
            };
            if again {
                self.runtime.start(&container).await?;
                restarts += 1;
                if let Some(e) = self.lock()?.get_mut(desired.id()) {
                    e.restarts = restarts;
                }
                status = self.runtime.status(&container).await?;
            }
        }
        let phase = match status.state {
            ContainerState::Running => Phase::Running,
            ContainerState::Created => Phase::Starting,
            ContainerState::Exited if status.exit_code == Some(0) => Phase::Exited,
            ContainerState::Exited => Phase::Failed,
            _ => Phase::Unknown,
        };
        Ok(Observation {
            phase,
            container_id: Some(status.id),
            restarts,
            exit_code: status.exit_code,
            ip: status.ip,
            message: String::new(),
        })
    }

    async fn exec(
        &self,
        desired: &DesiredInstance,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let container = self
            .lock()?
            .get(desired.id())
            .map(|e| e.container.clone())
            .ok_or_else(|| RuntimeError::NotFound(desired.id().to_owned()))?;
        self.runtime.exec(&container, cmd, timeout).await
    }

    async fn logs(
        &self,
        desired: &DesiredInstance,
        opts: &LogOptions,
    ) -> Result<LogReceiver, RuntimeError> {
        let container = self
            .lock()?
            .get(desired.id())
            .map(|e| e.container.clone())
            .ok_or_else(|| RuntimeError::NotFound(desired.id().to_owned()))?;
        self.runtime.logs(&container, opts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_that_differs_only_in_where_podman_complains_runs_the_same_container() {
        let opts = ContainerCreateOptions {
            instance_id: "x9".into(),
            namespace: "ns".into(),
            workload: "w".into(),
            name: "kat-ns-w-x9".into(),
            image: "i".into(),
            ..Default::default()
        };
        let podman = std::path::Path::new("/usr/bin/podman");
        let mode = crate::systemd::unit::CgroupsMode::NoConmon;
        let old = render_unit(&opts, podman, mode, Duration::from_secs(5), None, None);
        let err = std::path::Path::new("/run/u/kat-ns-w-x9.err");
        let new = render_unit(&opts, podman, mode, Duration::from_secs(5), None, Some(err));
        assert_ne!(old, new);
        assert!(same_container(&old, &new));
        let mut other = opts.clone();
        other.image = "j".into();
        let changed = render_unit(
            &other,
            podman,
            mode,
            Duration::from_secs(5),
            None,
            Some(err),
        );
        assert!(!same_container(&old, &changed));
    }

    #[test]
    fn a_unit_file_names_its_instance() {
        let unit = render_unit(
            &ContainerCreateOptions {
                instance_id: "x9".into(),
                namespace: "ns".into(),
                workload: "w".into(),
                name: "kat-ns-w-x9".into(),
                image: "i".into(),
                ..Default::default()
            },
            std::path::Path::new("/usr/bin/podman"),
            crate::systemd::unit::CgroupsMode::NoConmon,
            Duration::from_secs(5),
            None,
            None,
        );
        assert_eq!(
            instance_of_unit(&unit),
            Some(UnitOwner {
                namespace: "ns".into(),
                workload: "w".into(),
                instance: "x9".into(),
            })
        );
        assert_eq!(instance_of_unit("[Unit]\n"), None);
    }
}
