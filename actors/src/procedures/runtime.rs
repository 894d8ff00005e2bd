//! `--runtime`: what runs a node's instances (Podman under systemd, rootless or
//! rootful, or the in-memory fake), attached to a prepared node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::prepared::PreparedNode;

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
    node.agent.runtime = Some(crate::agent::RuntimeSetup {
        host,
        cache: Some(runtime_dir.join("desired.json")),
        tick: Duration::from_secs(5),
        spec: kat_runtime::spec::SpecContext {
            volume_base: node.settings.volume_base.clone(),
            protected_paths: protected_paths(&[
                &node.state_dir,
                &node.settings.backup_dir,
                &node.settings.volume_base,
            ]),
            network: match choice {
                RuntimeChoice::Podman { network, .. } => network.clone(),
                RuntimeChoice::Fake => None,
            },
        },
    });
    tracing::info!(node = %node.identity.node_name, runtime = ?choice, "container runtime ready");
}

/// KAT's directories on this node as no `hostMount` may name them: each as given
/// (made absolute) and, where it exists, as it really is — a state directory moved
/// to `/data/kat` and reached through a link `/var/lib/kat` is protected under both
/// names.
pub fn protected_paths(dirs: &[&std::path::Path]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for dir in dirs {
        let given = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        if let Ok(real) = std::fs::canonicalize(&given)
            && real != given
        {
            out.push(real);
        }
        out.push(given);
    }
    out
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
            trusted_base: None,
            owner: None,
            podman: podman.binary().to_path_buf(),
            cgroups: kat_runtime::systemd::unit::CgroupsMode::default(),
            stop_timeout: Duration::from_secs(10),
        },
        podman,
        image_source: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_state_dir_reached_through_a_link_is_protected_as_it_really_is() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("data/kat");
        std::fs::create_dir_all(&real).unwrap();
        let link = root.path().join("kat-link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let real = std::fs::canonicalize(&real).unwrap();
        let protected = protected_paths(&[&link, std::path::Path::new("relative/state")]);
        assert!(protected.contains(&real), "{protected:?}");
        assert!(protected.contains(&link), "{protected:?}");
        assert!(
            protected.iter().all(|p| p.is_absolute()),
            "a relative --state-dir is made absolute: {protected:?}"
        );
        // And a hostMount of the real directory is then refused by the node.
        let denied: Vec<String> = protected.iter().map(|p| p.display().to_string()).collect();
        let denied: Vec<&str> = denied.iter().map(String::as_str).collect();
        let pki = real.join("pki").display().to_string();
        assert!(kat_proto::names::host_path_problem(&pki, &denied).is_some());
    }
}
