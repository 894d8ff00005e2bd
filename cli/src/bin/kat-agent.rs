//! `kat-agent`: the KAT node daemon (SPEC §2, §6, §11).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kat_actors::procedures as agent;
use kat_cli::{LogFormat, init_logging};

/// The KAT node daemon: runs on every node, supervising its etcd member (on
/// control-plane nodes), containers, WireGuard interface and DNS server.
#[derive(Debug, Parser)]
#[command(name = "kat-agent", version = kat_proto::VERSION, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (e.g. info, kat=debug); overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct StateDir {
    /// Directory holding all of this node's files (etcd data, keys, certs, caches).
    #[arg(long, default_value = "/var/lib/kat", value_name = "DIR")]
    state_dir: PathBuf,
}

#[derive(Debug, Args)]
struct NodeOptions {
    #[command(flatten)]
    state: StateDir,
    /// Name of this node (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Address other nodes reach this one at; every listener binds to it.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Name of the WireGuard interface.
    #[arg(long, default_value = "kat0")]
    wg_interface: String,
    /// Extra DNS listener (repeatable), e.g. 127.0.0.1:5353.
    #[arg(long, value_name = "ADDR:PORT")]
    dns_listen: Vec<String>,
    /// Container runtime: podman (containers as systemd units), or fake (in-memory,
    /// for demos and simulations).
    #[arg(long, value_enum, default_value_t = RuntimeKind::Podman)]
    runtime: RuntimeKind,
    /// D-Bus address of the systemd manager that runs the instances' units.
    #[arg(
        long,
        env = "KAT_SYSTEMD_BUS",
        default_value = "unix:path=/run/dbus/system_bus_socket",
        value_name = "ADDRESS"
    )]
    systemd_bus: String,
    /// Where instance unit files are written in rootful mode (a directory the system
    /// manager loads units from).
    #[arg(long, default_value = "/run/systemd/system", value_name = "DIR")]
    unit_dir: PathBuf,
    /// rootless: each workload runs as its own unprivileged user (kat_wl_<ns>_<name>)
    /// in that user's systemd manager; rootful: as root, in the system manager (for
    /// hosts where rootless Podman cannot work). See docs/runtime.md.
    #[arg(long, value_enum, default_value_t = ModeKind::Rootless)]
    runtime_mode: ModeKind,
    /// Rootless: how workload users' systemd managers run. logind: lingering; agent:
    /// kat-agent starts them (hosts without logind); auto: logind on hosts booted with
    /// systemd, else agent.
    #[arg(long, value_enum, default_value_t = ManagersKind::Auto)]
    user_managers: ManagersKind,
    /// Podman network instances join (default: Podman's own default; `none` for no
    /// network, e.g. where rootless networking cannot open /dev/net/tun).
    #[arg(long, value_name = "NAME")]
    instance_network: Option<String>,
    /// Path to the etcd binary (default: etcd on PATH).
    #[arg(long, value_name = "PATH")]
    etcd_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeKind {
    Podman,
    Fake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeKind {
    Rootless,
    Rootful,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ManagersKind {
    Auto,
    Logind,
    Agent,
}

/// How a node runs its instances, as `init`/`join` were told and `run` reuses
/// (`DIR/runtime.json`): a node started with `--runtime fake` must not come back on
/// real Podman (and make host users) because `run` was given no flags.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RuntimeSettings {
    runtime: String,
    systemd_bus: String,
    unit_dir: PathBuf,
    runtime_mode: String,
    user_managers: String,
    instance_network: Option<String>,
}

/// Where [`RuntimeSettings`] are kept in the state directory.
const RUNTIME_FILE: &str = "runtime.json";

fn value_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

fn parse_value<T: clap::ValueEnum>(
    file: &std::path::Path,
    field: &str,
    text: &str,
) -> anyhow::Result<T> {
    T::from_str(text, false)
        .map_err(|_| anyhow::anyhow!("{}: {field}: {text:?} is not a known value", file.display()))
}

impl RuntimeSettings {
    fn choice(&self) -> agent::RuntimeChoice {
        // Parsed from what this program wrote (or refused when loaded).
        let runtime = <RuntimeKind as clap::ValueEnum>::from_str(&self.runtime, false)
            .unwrap_or(RuntimeKind::Podman);
        let mode = <ModeKind as clap::ValueEnum>::from_str(&self.runtime_mode, false)
            .unwrap_or(ModeKind::Rootless);
        let managers = <ManagersKind as clap::ValueEnum>::from_str(&self.user_managers, false)
            .unwrap_or(ManagersKind::Auto);
        match runtime {
            RuntimeKind::Fake => agent::RuntimeChoice::Fake,
            RuntimeKind::Podman => agent::RuntimeChoice::Podman {
                bus: self.systemd_bus.clone(),
                unit_dir: self.unit_dir.clone(),
                podman: None,
                network: self.instance_network.clone(),
                mode: match mode {
                    ModeKind::Rootful => agent::RuntimeMode::Rootful,
                    ModeKind::Rootless => agent::RuntimeMode::Rootless(match managers {
                        ManagersKind::Auto => agent::UserManagerChoice::Auto,
                        ManagersKind::Logind => agent::UserManagerChoice::Logind,
                        ManagersKind::Agent => agent::UserManagerChoice::Agent,
                    }),
                },
            },
        }
    }

    /// What `DIR/runtime.json` says; `None` for a node made before it was kept.
    fn load(dir: &std::path::Path) -> anyhow::Result<Option<Self>> {
        let file = dir.join(RUNTIME_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::Error::from(e).context(file.display().to_string())),
        };
        let saved: Self = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not the runtime settings kat-agent writes",
                file.display()
            )
        })?;
        parse_value::<RuntimeKind>(&file, "runtime", &saved.runtime)?;
        parse_value::<ModeKind>(&file, "runtime_mode", &saved.runtime_mode)?;
        parse_value::<ManagersKind>(&file, "user_managers", &saved.user_managers)?;
        Ok(Some(saved))
    }

    fn save(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let file = dir.join(RUNTIME_FILE);
        let partial = dir.join(format!("{RUNTIME_FILE}.new"));
        let text = serde_json::to_string_pretty(self)?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| partial.display().to_string())?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&partial, &file).with_context(|| file.display().to_string())?;
        Ok(())
    }
}

impl NodeOptions {
    /// The settings these flags say.
    fn settings(&self) -> RuntimeSettings {
        RuntimeSettings {
            runtime: value_name(&self.runtime),
            systemd_bus: self.systemd_bus.clone(),
            unit_dir: self.unit_dir.clone(),
            runtime_mode: value_name(&self.runtime_mode),
            user_managers: value_name(&self.user_managers),
            instance_network: self.instance_network.clone(),
        }
    }

    /// `run`'s settings: the node's kept ones, with each flag given on the command line
    /// (or by its environment variable) in place of what was kept.
    fn settings_for_run(
        &self,
        matches: Option<&clap::ArgMatches>,
        kept: Option<RuntimeSettings>,
    ) -> RuntimeSettings {
        let given = self.settings();
        let Some(mut kept) = kept else { return given };
        let said = |id: &str| {
            matches.is_some_and(|m| {
                matches!(
                    m.value_source(id),
                    Some(
                        clap::parser::ValueSource::CommandLine
                            | clap::parser::ValueSource::EnvVariable
                    )
                )
            })
        };
        // Each setting's flag has the field's name as its id.
        macro_rules! from_flags {
            ($($field:ident),*) => {
                $(if said(stringify!($field)) {
                    kept.$field = given.$field;
                })*
            };
        }
        from_flags!(
            runtime,
            systemd_bus,
            unit_dir,
            runtime_mode,
            user_managers,
            instance_network
        );
        kept
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new cluster with this node as its first control-plane member.
    Init {
        /// The cluster configuration (cluster.kat).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        node: NodeOptions,
    },
    /// Join an existing cluster with a join token.
    #[command(group(clap::ArgGroup::new("join_token").required(true).args(["token", "token_file"])))]
    Join {
        /// The leader's API address.
        #[arg(long, value_name = "HOST:PORT")]
        leader_api: String,
        /// Join token: the content of the init node's DIR/join-token, or what
        /// `katcall token create join` prints (<id>.<secret>.<CA hash>). The CA hash
        /// lets this node check the leader before it sends the secret. On the command
        /// line it stays visible in the process list for as long as the agent runs:
        /// prefer --token-file or KAT_JOIN_TOKEN.
        #[arg(long, env = "KAT_JOIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A file holding the join token (e.g. the init node's DIR/join-token), or -
        /// to read it from standard input.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        node: NodeOptions,
    },
    /// Restart an initialised node from its state directory (what the systemd unit runs).
    ///
    /// The node runs its instances as init or join set it up (DIR/runtime.json:
    /// --runtime, --runtime-mode, --instance-network, ...); a runtime flag given here
    /// changes that setting, and is kept for the next run.
    Run {
        #[command(flatten)]
        node: NodeOptions,
    },
    /// Bring a lost control plane back from a backup, as this node's only member.
    ///
    /// Rebuilds DIR from an etcd snapshot (katcall backup, or the leader's timer in
    /// backupPath): same cluster UID, cluster CA, nodes, workloads and tokens; a new
    /// member list with this node alone, under a new etcd CA (former members become
    /// workers). Then start it with `kat-agent run --state-dir DIR`:
    /// joined nodes reattach with their certificates and keep their containers.
    /// Restore onto the lost member's address (or the joined nodes cannot find it).
    /// Never overwrites DIR/etcd. See docs/operations.md, "Restore".
    Restore {
        /// The snapshot: a kat-<time>-<revision>.db file from backupPath.
        #[arg(long, value_name = "FILE")]
        snapshot: PathBuf,
        /// The cluster's CAs: the pki directory the leader keeps beside its backups, or
        /// a copy of a control-plane member's DIR/pki (default: DIR/pki if it holds
        /// them, else the pki directory beside --snapshot).
        #[arg(long, value_name = "DIR")]
        pki: Option<PathBuf>,
        #[command(flatten)]
        node: NodeOptions,
    },
    /// Print the ETCDCTL_* settings that reach this node's etcd member.
    EtcdEnv {
        #[command(flatten)]
        state: StateDir,
    },
    /// Print kat-agent's version.
    Version,
    /// Print this manual page (roff): kat-agent man > kat-agent.8; man -l kat-agent.8
    Man,
}

/// The join token: given, or read from `file` (`-`: standard input, at most
/// [`kat_cli::MAX_TOKEN_FILE`] bytes), trimmed.
fn join_token(given: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let token = match (given, file) {
        (Some(token), _) => token.trim().to_owned(),
        (None, Some(path)) => kat_cli::read_token_file("--token-file", path)
            .map_err(|e| anyhow::anyhow!(e.replace("not a token", "not a join token")))?,
        (None, None) => anyhow::bail!("--token or --token-file: a join token is needed"),
    };
    if token.is_empty() {
        anyhow::bail!("--token: holds no token");
    }
    Ok(token)
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.log_format, cli.log_level.as_deref());
    match cli.command {
        Command::Version => {
            println!("kat-agent {}", kat_proto::VERSION);
            ExitCode::SUCCESS
        }
        Command::Man => {
            print!(
                "{}",
                kat_cli::man::render(
                    &Cli::command(),
                    8,
                    kat_proto::VERSION,
                    &[
                        (
                            "FILES",
                            ".TP\n\\fISTATE_DIR\\fR (default /var/lib/kat)\nAll of a node's files: etcd data, keys and certificates, caches, \\fBkatcall.yaml\\fR and \\fBjoin\\-token\\fR (init).",
                        ),
                        ("SEE ALSO", "\\fBkatcall\\fR(1)"),
                    ],
                )
            );
            ExitCode::SUCCESS
        }
        Command::Init { config, node } => {
            let result = etcd_binary(node.etcd_bin.as_deref()).and_then(|etcd_bin| {
                let opts = agent::InitOptions {
                    state_dir: node.state.state_dir.clone(),
                    config,
                    node_name: node.node_name.clone(),
                    advertise_address: node.advertise_address,
                    etcd_bin,
                };
                agent::prepare_init(&opts).map_err(anyhow::Error::from)
            });
            serve(result, node.settings())
        }
        Command::Run { node } => {
            // Only control-plane members need etcd.
            let etcd = etcd_binary(node.etcd_bin.as_deref());
            let bin = etcd
                .as_ref()
                .map_or_else(|_| PathBuf::from("etcd"), Clone::clone);
            let kept = match RuntimeSettings::load(&node.state.state_dir) {
                Ok(kept) => kept,
                Err(e) => return fail(&e),
            };
            let settings = node.settings_for_run(matches.subcommand_matches("run"), kept);
            let result = agent::prepare_run(&node.state.state_dir, &bin)
                .map_err(anyhow::Error::from)
                .and_then(|prepared| match etcd {
                    Err(e) if prepared.control_plane.is_some() => Err(e),
                    _ => Ok(prepared),
                });
            serve(result, settings)
        }
        Command::EtcdEnv { state } => match agent::etcd_env(&state.state_dir) {
            Ok(lines) => {
                print!("{lines}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&anyhow::Error::from(e)),
        },
        Command::Restore {
            snapshot,
            pki,
            node,
        } => {
            let kept = match RuntimeSettings::load(&node.state.state_dir) {
                Ok(kept) => kept,
                Err(e) => return fail(&e),
            };
            let settings = node.settings_for_run(matches.subcommand_matches("restore"), kept);
            let result = etcd_binary(node.etcd_bin.as_deref()).and_then(|etcd_bin| {
                let opts = agent::RestoreOptions {
                    state_dir: node.state.state_dir.clone(),
                    snapshot,
                    pki,
                    node_name: node.node_name.clone(),
                    advertise_address: node.advertise_address,
                    etcd_bin,
                };
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the async runtime")?
                    .block_on(agent::restore(&opts))
                    .map_err(anyhow::Error::from)
            });
            match result.and_then(|restored| {
                settings.save(&node.state.state_dir)?;
                Ok(restored)
            }) {
                Ok(restored) => {
                    print_restored(&restored, &node.state.state_dir);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Join {
            leader_api,
            token,
            token_file,
            node,
        } => {
            let token = match join_token(token, token_file.as_deref()) {
                Ok(token) => token,
                Err(e) => return fail(&e),
            };
            // Joined nodes are workers for now: etcd is needed only if one is given.
            let etcd_bin = match &node.etcd_bin {
                Some(_) => match etcd_binary(node.etcd_bin.as_deref()) {
                    Ok(bin) => bin,
                    Err(e) => return fail(&e),
                },
                None => etcd_binary(None).unwrap_or_else(|_| PathBuf::from("etcd")),
            };
            let opts = agent::JoinOptions {
                state_dir: node.state.state_dir.clone(),
                leader_api,
                token,
                node_name: node.node_name.clone(),
                advertise_address: node.advertise_address,
                etcd_bin,
            };
            let settings = node.settings();
            serve_after(settings, move || async move { agent::join(&opts).await })
        }
    }
}

/// What `kat-agent restore` did, and what the operator does next.
fn print_restored(restored: &agent::Restored, dir: &std::path::Path) {
    println!(
        "restored cluster {:?} ({}) on node {} ({}), store at revision {}",
        restored.cluster_name,
        restored.cluster_uid,
        restored.node_name,
        restored.advertise_address,
        restored.revision
    );
    if !restored.former_members.is_empty() {
        println!(
            "former control-plane members, now listed as workers: {}; stop them and \
             remove their state directories before they start again; katcall delete node \
             removes them, and they can join anew",
            restored.former_members.join(", ")
        );
    }
    println!(
        "start it:       kat-agent run --state-dir {}",
        dir.display()
    );
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("kat-agent: {e:#}");
    ExitCode::FAILURE
}

/// The etcd binary: `--etcd-bin`, else `etcd` on PATH.
fn etcd_binary(flag: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        anyhow::ensure!(
            path.is_file(),
            "--etcd-bin {}: no such file",
            path.display()
        );
        return Ok(path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .context(
            "etcd not found on PATH (install it with scripts/install-deps.sh, or pass --etcd-bin)",
        )
}

/// Runs a prepared node until SIGTERM or SIGINT; exits non-zero if its tree fails.
fn serve(prepared: anyhow::Result<agent::PreparedNode>, settings: RuntimeSettings) -> ExitCode {
    match prepared {
        Ok(node) => serve_after(settings, move || async move { Ok(node) }),
        Err(e) => fail(&e),
    }
}

/// Prepares the node inside the async runtime (joining needs the network), then runs it.
fn serve_after<F, Fut>(settings: RuntimeSettings, prepare: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<agent::PreparedNode, agent::AgentError>>,
{
    let runtime_choice = settings.choice();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e).context("cannot start the async runtime")),
    };
    let mut node = match runtime.block_on(prepare()) {
        Ok(node) => node,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    // `kat-agent run` starts the node the same way again.
    if let Err(e) = settings.save(&node.state_dir) {
        return fail(&e);
    }
    runtime.block_on(agent::attach_runtime(&mut node, &runtime_choice));
    let outcome = runtime.block_on(async {
        tracing::info!(
            node = %node.identity.node_name,
            address = %node.identity.advertise_address,
            state_dir = %node.state_dir.display(),
            "kat-agent {} starting", kat_proto::VERSION
        );
        agent::run_until(&node, shutdown_signal()).await
    });
    match outcome {
        Ok(agent::Outcome::Stopped) => ExitCode::SUCCESS,
        Err(e) => fail(&anyhow::Error::from(e)),
    }
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn run_with(args: &[&str], kept: Option<RuntimeSettings>) -> RuntimeSettings {
        let matches = Cli::command()
            .try_get_matches_from(["kat-agent", "run", "--state-dir", "/x"].iter().chain(args))
            .unwrap();
        let Command::Run { node } = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!("not run");
        };
        node.settings_for_run(matches.subcommand_matches("run"), kept)
    }

    #[test]
    fn run_keeps_the_kept_settings_and_takes_only_the_flags_given() {
        let kept = RuntimeSettings {
            runtime: "podman".to_owned(),
            systemd_bus: "unix:path=/kept".to_owned(),
            unit_dir: PathBuf::from("/kept/units"),
            runtime_mode: "rootful".to_owned(),
            user_managers: "agent".to_owned(),
            instance_network: Some("none".to_owned()),
        };
        assert_eq!(run_with(&[], Some(kept.clone())), kept, "no flags: as kept");
        let changed = run_with(&["--instance-network", "kat"], Some(kept.clone()));
        assert_eq!(changed.instance_network.as_deref(), Some("kat"));
        assert_eq!(changed.runtime_mode, "rootful", "the rest as kept");
        // A node made before settings were kept: the flags and their defaults.
        let fresh = run_with(&["--runtime", "fake"], None);
        assert_eq!(
            (fresh.runtime.as_str(), fresh.runtime_mode.as_str()),
            ("fake", "rootless")
        );
    }
}
