//! `katcall`: the KAT command-line client (SPEC §11).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use kat_cli::output::{self, emit};
use kat_cli::remote::{
    Client, CmdError, CmdResult, ConfigSource, load_config, remote, remote_with,
};
use kat_cli::{OutputFormat, workloads};
use kat_proto::quadlet::{self, Document};
use kat_proto::v1alpha1 as api;

/// Drive a KAT cluster.
///
/// katcall talks to the leader's API with the server, CA and token from its config file
/// (~/.config/kat/config, or the katcall.yaml that `kat-agent init` writes). `validate`
/// works offline.
#[derive(Debug, Parser)]
#[command(name = "katcall", version = kat_proto::VERSION, propagate_version = true)]
struct Cli {
    /// Config file with server, CA and token (e.g. STATE_DIR/katcall.yaml).
    #[arg(long, global = true, env = "KAT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Context (cluster) to use from the config file.
    #[arg(long, global = true, env = "KAT_CONTEXT")]
    context: Option<String>,
    /// API server URL, overriding the config file.
    #[arg(long, global = true, env = "KAT_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Bearer token, overriding the config file.
    #[arg(long, global = true, env = "KAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Namespace (default: "default"; for apply, the bundle's; for lists, all).
    #[arg(short, long, global = true, env = "KAT_NAMESPACE")]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check Quadlet files offline: a directory, a bundle (.tar.gz) or one .kat file.
    ///
    /// Prints every problem as `FILE: FIELD.PATH: reason` and exits 1; prints a one-line
    /// summary and exits 0 when everything is valid.
    Validate {
        /// Quadlet directory, bundle or .kat file (repeatable).
        #[arg(
            short = 'f',
            long = "file",
            value_name = "DIR|BUNDLE|FILE",
            required = true
        )]
        paths: Vec<PathBuf>,
    },
    /// Create or update a workload from a Quadlet directory or bundle (or create a
    /// namespace from a namespace.kat).
    Apply {
        #[arg(short = 'f', long = "file", value_name = "DIR|BUNDLE.tar.gz")]
        path: PathBuf,
        /// Wait until the workload's instances are running (or healthy).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 90s, 10m.
        #[arg(long, default_value = "10m", requires = "wait")]
        timeout: String,
    },
    /// List or show resources.
    ///
    /// For events, NAME picks those of one object (KIND/NAME, e.g. workload/web or
    /// node/n1); newest last.
    Get {
        #[arg(value_enum)]
        resource: Resource,
        name: Option<String>,
        /// Events only: those newer than this (e.g. 10m, 2h).
        #[arg(long)]
        since: Option<String>,
        /// Events only: keep printing new ones as they are recorded (Ctrl-C ends).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show a resource's spec, status, instances, recent events and pending reasons.
    Describe {
        #[arg(value_enum)]
        kind: DescribeKind,
        name: String,
    },
    /// Delete a workload, namespace or node.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// Print an instance's logs, from its node through the leader.
    Logs {
        /// ID (katcall get instances), WORKLOAD/ID or the container name.
        instance: String,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only lines newer than this (e.g. 10m, 2h).
        #[arg(long)]
        since: Option<String>,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u32>,
        /// The build log instead of the container's.
        #[arg(long)]
        build: bool,
    },
    /// Run a command in an instance's container; exits with the command's status.
    Exec {
        /// ID, WORKLOAD/ID or the container name.
        instance: String,
        /// How long the command may run (at most 5m).
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// The command and its arguments (no shell: use sh -c '...' for one).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Follow a workload's rollout.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Re-apply a stored previous generation of a workload.
    Rollback {
        #[arg(value_enum)]
        kind: WorkloadKind,
        name: String,
        #[arg(long, value_name = "N")]
        to_generation: Option<i64>,
    },
    /// Stop new placements on a node.
    Cordon { node: String },
    /// Allow placements on a node again.
    Uncordon { node: String },
    /// Cordon a node and move its instances away.
    Drain { node: String },
    /// Set labels on a node (k=v; k= or k- removes).
    Label {
        #[arg(value_enum)]
        kind: NodeKind,
        node: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Add or replace taints on a node (k=v:NoSchedule, k:PreferNoSchedule; k- removes).
    Taint {
        #[arg(value_enum)]
        kind: NodeKind,
        node: String,
        #[arg(required = true, value_name = "KEY=VALUE:EFFECT")]
        taints: Vec<String>,
    },
    /// Create join or API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Make an etcd snapshot now, or list the kept ones.
    Backup {
        /// List the snapshots the leader keeps instead of making one.
        #[arg(long)]
        list: bool,
    },
    /// Print katcall's version (and the server's, when reachable).
    Version,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print this manual page (roff): katcall man > katcall.1; man -l katcall.1
    Man,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Resource {
    Workloads,
    Workload,
    Nodes,
    Node,
    Namespaces,
    Namespace,
    Events,
    Instances,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DescribeKind {
    Workload,
    Node,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WorkloadKind {
    Workload,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NodeKind {
    Node,
}

#[derive(Debug, Subcommand)]
enum DeleteCommand {
    /// Delete a workload and its instances.
    Workload {
        name: String,
        /// Also remove its simpleClusterStorage volumes.
        #[arg(long)]
        purge_volumes: bool,
    },
    /// Delete a namespace (refused while it has workloads, unless --cascade).
    Namespace {
        name: String,
        #[arg(long)]
        cascade: bool,
    },
    /// Remove a drained node from the cluster.
    Node { name: String },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Show a rollout's progress until it completes or pauses.
    Status { workload: String },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token.
    Create(TokenCreate),
}

#[derive(Debug, Clone, Args)]
struct TokenCreate {
    #[arg(value_enum)]
    kind: TokenKind,
    /// Lifetime, e.g. 24h (join tokens default to 24h).
    #[arg(long)]
    ttl: Option<String>,
    /// Allow the token to be used more than once.
    #[arg(long)]
    reusable: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TokenKind {
    Join,
    Api,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ns = cli.namespace.as_deref();
    let source = ConfigSource {
        file: cli.config.clone(),
        context: cli.context.clone(),
        server: cli.server.clone(),
        token: cli.token.clone(),
    };
    if let Command::Get {
        resource,
        since,
        watch,
        ..
    } = &cli.command
        && !matches!(resource, Resource::Events)
        && (since.is_some() || *watch)
    {
        eprintln!("katcall get: --since and --watch are for events only");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Validate { paths } => validate(&paths, cli.output),
        Command::Version => {
            println!("katcall {}", kat_proto::VERSION);
            // The server's too, when a configuration names one (quietly skipped if not).
            if load_config(&source).is_ok() {
                // Unreachable: said on stderr; the local version still stands.
                let _ = remote(&source, "version", |mut client| async move {
                    let v = client
                        .get_version(api::GetVersionRequest {})
                        .await
                        .map_err(CmdError::from)?
                        .into_inner();
                    println!("server {} (API {})", v.version, v.api_version);
                    Ok(())
                });
            }
            ExitCode::SUCCESS
        }
        Command::Man => {
            print!(
                "{}",
                kat_cli::man::render(
                    &Cli::command(),
                    1,
                    kat_proto::VERSION,
                    &[
                        (
                            "FILES",
                            ".TP\n\\fI~/.config/kat/config\\fR\nServer URL, CA certificate and token (contexts for several clusters).\n\
                             .TP\n\\fISTATE_DIR/katcall.yaml\\fR\nThe admin configuration \\fBkat\\-agent init\\fR writes (mode 0600).",
                        ),
                        (
                            "EXIT STATUS",
                            "0 on success; 1 with a one\\-line error on stderr; 2 for bad arguments; \\fBexec\\fR exits with the command's status.",
                        ),
                        ("SEE ALSO", "\\fBkat\\-agent\\fR(8)"),
                    ],
                )
            );
            ExitCode::SUCCESS
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "katcall",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Apply {
            path,
            wait,
            timeout,
        } => match output::parse_duration(&timeout) {
            Err(e) => {
                eprintln!("katcall apply: --timeout {e}");
                ExitCode::FAILURE
            }
            // A single namespace.kat creates a namespace; anything else is a workload.
            Ok(_) if path.is_file() && path.extension().is_some_and(|e| e == "kat") => {
                match quadlet::load_path(&path) {
                    Ok(Document::Namespace(n)) => remote(&source, "apply", |client| {
                        workloads::apply_namespace(client, n.clone(), cli.output)
                    }),
                    Ok(Document::Cluster(_)) => {
                        eprintln!(
                            "katcall apply: {} is a ClusterConfiguration; it is given to `kat-agent init --config`, not applied",
                            path.display()
                        );
                        ExitCode::FAILURE
                    }
                    Ok(Document::Quadlet(_)) => {
                        eprintln!(
                            "katcall apply: {}: a workload is applied as its directory (or a bundle), e.g. katcall apply -f {}",
                            path.display(),
                            path.parent()
                                .map_or_else(|| ".".into(), |p| p.display().to_string())
                        );
                        ExitCode::FAILURE
                    }
                    Err(errors) => {
                        for e in &errors.errors {
                            eprintln!("{e}");
                        }
                        ExitCode::FAILURE
                    }
                }
            }
            Ok(timeout) => remote(&source, "apply", |client| {
                workloads::apply(client, &path, ns, wait.then_some(timeout), cli.output)
            }),
        },
        Command::Get {
            resource: resource @ (Resource::Nodes | Resource::Node),
            name,
            ..
        } => remote(&source, "get", |client| {
            get_nodes(client, resource, name.clone(), cli.output)
        }),
        Command::Get {
            resource: Resource::Workloads,
            name,
            ..
        } => remote(&source, "get", |client| {
            workloads::get_workloads(client, ns, name.clone(), cli.output)
        }),
        Command::Get {
            resource: Resource::Workload,
            name: None,
            ..
        } => {
            eprintln!("katcall get: which workload? (katcall get workload NAME)");
            ExitCode::FAILURE
        }
        Command::Get {
            resource: Resource::Workload,
            name,
            ..
        } => remote(&source, "get", |client| {
            workloads::get_workloads(client, ns, name.clone(), cli.output)
        }),
        Command::Get {
            resource: Resource::Instances,
            name,
            ..
        } => remote(&source, "get", |client| {
            workloads::get_instances(client, ns, name.clone(), cli.output)
        }),
        Command::Get {
            resource: Resource::Events,
            name,
            since,
            watch,
        } => {
            let since = match since.as_deref().map(output::parse_duration) {
                None => None,
                Some(Ok(d)) => Some(std::time::SystemTime::now() - d),
                Some(Err(e)) => {
                    eprintln!("katcall get events: --since {e}");
                    return ExitCode::FAILURE;
                }
            };
            let filter = workloads::EventFilter {
                involved: name.unwrap_or_default(),
                since,
                watch,
            };
            remote(&source, "get", |client| {
                workloads::get_events(client, ns, &filter, cli.output)
            })
        }
        Command::Get {
            resource: Resource::Namespace,
            name: None,
            ..
        } => {
            eprintln!("katcall get: which namespace? (katcall get namespace NAME)");
            ExitCode::FAILURE
        }
        Command::Get {
            resource: Resource::Namespaces | Resource::Namespace,
            name,
            ..
        } => remote(&source, "get", |client| {
            workloads::get_namespaces(client, name.clone(), cli.output)
        }),
        Command::Describe {
            kind: DescribeKind::Node,
            name,
        } => remote(&source, "describe", |client| {
            describe_node(client, name.clone(), cli.output)
        }),
        Command::Describe {
            kind: DescribeKind::Workload,
            name,
        } => remote(&source, "describe", |client| {
            workloads::describe_workload(client, ns, name.clone(), cli.output)
        }),
        Command::Delete(DeleteCommand::Workload {
            name,
            purge_volumes,
        }) => remote(&source, "delete", |client| {
            workloads::delete_workload(client, ns, name.clone(), purge_volumes)
        }),
        Command::Delete(DeleteCommand::Namespace { name, cascade }) => {
            remote(&source, "delete", |client| {
                workloads::delete_namespace(client, name.clone(), cascade)
            })
        }
        Command::Delete(DeleteCommand::Node { name }) => remote(&source, "delete", |client| {
            workloads::delete_node(client, name.clone())
        }),
        Command::Logs {
            instance,
            follow,
            since,
            tail,
            build,
        } => {
            let since_seconds = match since.as_deref().map(output::parse_duration) {
                None => 0,
                Some(Ok(d)) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
                Some(Err(e)) => {
                    eprintln!("katcall logs: --since {e}");
                    return ExitCode::FAILURE;
                }
            };
            let target = match kat_cli::instances::parse_instance(&instance) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("katcall logs: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let args = kat_cli::instances::LogsArgs {
                follow,
                since_seconds,
                tail: tail.unwrap_or(0),
                build,
            };
            remote(&source, "logs", |client| {
                kat_cli::instances::logs(client, ns, &target, &args, cli.output)
            })
        }
        Command::Exec {
            instance,
            timeout,
            command,
        } => {
            let limit = match output::parse_duration(&timeout) {
                Ok(d) if d.as_secs() >= 1 && d.as_secs() <= 300 => d,
                Ok(_) => {
                    eprintln!("katcall exec: --timeout must be between 1s and 5m");
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("katcall exec: --timeout {e}");
                    return ExitCode::FAILURE;
                }
            };
            let target = match kat_cli::instances::parse_instance(&instance) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("katcall exec: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let status = std::sync::atomic::AtomicI32::new(0);
            let secs = u32::try_from(limit.as_secs()).unwrap_or(300);
            let code = remote_with(
                &source,
                "exec",
                limit + Duration::from_secs(15),
                |client| async {
                    let code =
                        kat_cli::instances::exec(client, ns, &target, &command, secs, cli.output)
                            .await?;
                    status.store(code, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                },
            );
            match status.load(std::sync::atomic::Ordering::Relaxed) {
                0 => code,
                // The command's own status (as a shell reports it: 1–255).
                n => ExitCode::from(u8::try_from(n.clamp(1, 255)).unwrap_or(1)),
            }
        }
        Command::Rollout(RolloutCommand::Status { workload }) => {
            remote(&source, "rollout status", |client| {
                workloads::rollout_status(client, ns, workload.clone(), Duration::from_secs(600))
            })
        }
        Command::Rollback {
            name,
            to_generation,
            ..
        } => remote(&source, "rollback", |client| {
            workloads::rollback(client, ns, name.clone(), to_generation, cli.output)
        }),
        Command::Cordon { node } => remote(&source, "cordon", |client| {
            kat_cli::nodes::cordon(client, node.clone(), true, cli.output)
        }),
        Command::Uncordon { node } => remote(&source, "uncordon", |client| {
            kat_cli::nodes::cordon(client, node.clone(), false, cli.output)
        }),
        Command::Drain { node } => remote(&source, "drain", |client| {
            kat_cli::nodes::drain(client, node.clone())
        }),
        Command::Label { node, labels, .. } => remote(&source, "label", |client| {
            kat_cli::nodes::label(client, node.clone(), &labels, cli.output)
        }),
        Command::Taint { node, taints, .. } => remote(&source, "taint", |client| {
            kat_cli::nodes::taint(client, node.clone(), &taints, cli.output)
        }),
        Command::Token(TokenCommand::Create(create)) => remote(&source, "token create", |client| {
            create_token(client, create.clone(), cli.output)
        }),
        Command::Backup { list } => {
            remote_with(&source, "backup", Duration::from_secs(300), |client| {
                workloads::backup(client, list, cli.output)
            })
        }
    }
}

/// `katcall validate`: every error of every path, then a summary; exit 1 on any error.
fn validate(paths: &[PathBuf], output: OutputFormat) -> ExitCode {
    let mut failed = 0usize;
    for path in paths {
        match quadlet::load_path(path) {
            Ok(doc) => match output {
                OutputFormat::Table => println!("{}: valid {}", path.display(), doc.summary()),
                OutputFormat::Json | OutputFormat::Yaml => {
                    if let Err(e) = print_document(&doc, output) {
                        eprintln!("katcall validate: {}: cannot print: {e}", path.display());
                        failed += 1;
                    }
                }
            },
            Err(errors) => {
                for e in &errors.errors {
                    println!("{e}");
                }
                failed += errors.errors.len();
            }
        }
    }
    if failed > 0 {
        let s = if failed == 1 { "" } else { "s" };
        eprintln!("katcall validate: {failed} error{s}");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_document(doc: &Document, output: OutputFormat) -> anyhow::Result<()> {
    let text = match (doc, output) {
        (Document::Cluster(c), OutputFormat::Json) => quadlet::to_json(c)?,
        (Document::Namespace(n), OutputFormat::Json) => quadlet::to_json(n)?,
        (Document::Quadlet(q), OutputFormat::Json) => quadlet::to_json(q)?,
        (Document::Cluster(c), _) => quadlet::to_yaml(c)?,
        (Document::Namespace(n), _) => quadlet::to_yaml(n)?,
        (Document::Quadlet(q), _) => quadlet::to_yaml(q)?,
    };
    println!("{}", text.trim_end());
    Ok(())
}

async fn get_nodes(
    mut client: Client,
    resource: Resource,
    name: Option<String>,
    format: OutputFormat,
) -> CmdResult {
    let now = std::time::SystemTime::now();
    match (resource, name) {
        (Resource::Node, None) => Err("get node: which node? (katcall get node NAME)".into()),
        (_, Some(name)) => {
            let node = client
                .get_node(api::GetNodeRequest { name })
                .await
                .map_err(CmdError::from)?
                .into_inner();
            match format {
                OutputFormat::Table => {
                    print!("{}", output::nodes_table(std::slice::from_ref(&node), now));
                    Ok(())
                }
                _ => emit(&node, format),
            }
        }
        (_, None) => {
            let list = client
                .list_nodes(api::ListNodesRequest {})
                .await
                .map_err(CmdError::from)?
                .into_inner();
            match format {
                OutputFormat::Table => {
                    print!("{}", output::nodes_table(&list.items, now));
                    Ok(())
                }
                _ => emit(&list, format),
            }
        }
    }
}

async fn describe_node(mut client: Client, name: String, format: OutputFormat) -> CmdResult {
    let node = client
        .get_node(api::GetNodeRequest { name: name.clone() })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    if format != OutputFormat::Table {
        return emit(&node, format);
    }
    let events = client
        .list_events(api::ListEventsRequest {
            involved: format!("node/{name}"),
            ..Default::default()
        })
        .await
        .map_err(CmdError::from)?
        .into_inner()
        .items;
    let recent = &events[events.len().saturating_sub(10)..];
    print!(
        "{}",
        output::describe_node(&node, recent, std::time::SystemTime::now())
    );
    Ok(())
}

async fn create_token(mut client: Client, create: TokenCreate, format: OutputFormat) -> CmdResult {
    let ttl_seconds = match &create.ttl {
        Some(text) => {
            let ttl = output::parse_duration(text).map_err(|e| format!("--ttl {e}"))?;
            u32::try_from(ttl.as_secs()).map_err(|_| format!("--ttl {text:?}: too long"))?
        }
        None => 0,
    };
    let request = api::CreateTokenRequest {
        ttl_seconds,
        reusable: create.reusable,
        description: String::new(),
    };
    let response = match create.kind {
        TokenKind::Join => client.create_join_token(request).await,
        TokenKind::Api => client.create_api_token(request).await,
    }
    .map_err(CmdError::from)?
    .into_inner();
    match format {
        OutputFormat::Table => {
            println!("{}", response.token);
            match create.kind {
                TokenKind::Join => eprintln!(
                    "join a node with: kat-agent join --leader-api HOST:PORT --token <the line above> --state-dir DIR"
                ),
                TokenKind::Api => {
                    eprintln!("shown once; use it as the token in a katcall config or KAT_TOKEN")
                }
            }
            Ok(())
        }
        _ => emit(&response, format),
    }
}
