//! `katcall get`: lists of nodes, workloads, instances, namespaces and events, or one
//! of them; events can be followed as they are recorded.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, ValueEnum};
use kat_proto::v1alpha1 as api;

use super::{GlobalArgs, fail};
use crate::OutputFormat;
use crate::output::{self, emit, encode};
use crate::remote::{Client, CmdError, CmdResult, remote};

/// List or show resources.
///
/// For events, NAME picks those of one object (KIND/NAME, e.g. workload/web or
/// node/n1); newest last.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[arg(value_enum)]
    resource: Resource,
    name: Option<String>,
    /// Events only: those newer than this (e.g. 10m, 2h).
    #[arg(long)]
    since: Option<String>,
    /// Events only: keep printing new ones as they are recorded (Ctrl-C ends).
    #[arg(short = 'w', long)]
    watch: bool,
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

pub fn run(args: GetArgs, globals: &GlobalArgs) -> ExitCode {
    let GetArgs {
        resource,
        name,
        since,
        watch,
    } = args;
    if !matches!(resource, Resource::Events) && (since.is_some() || watch) {
        return fail("get", "--since and --watch are for events only");
    }
    let source = globals.config_source();
    let ns = globals.namespace();
    let format = globals.output;
    match (resource, name) {
        (Resource::Nodes | Resource::Node, name) => remote(&source, "get", |client| {
            get_nodes(client, resource, name.clone(), format)
        }),
        (Resource::Workload, None) => fail("get", "which workload? (katcall get workload NAME)"),
        (Resource::Workloads | Resource::Workload, name) => remote(&source, "get", |client| {
            get_workloads(client, ns, name.clone(), format)
        }),
        (Resource::Instances, name) => remote(&source, "get", |client| {
            get_instances(client, ns, name.clone(), format)
        }),
        (Resource::Events, name) => {
            let since = match since.as_deref().map(output::parse_duration) {
                None => None,
                Some(Ok(d)) => Some(SystemTime::now() - d),
                Some(Err(e)) => return fail("get events", format!("--since {e}")),
            };
            let filter = EventFilter {
                involved: name.unwrap_or_default(),
                since,
                watch,
            };
            remote(&source, "get", |client| {
                get_events(client, ns, &filter, format)
            })
        }
        (Resource::Namespace, None) => fail("get", "which namespace? (katcall get namespace NAME)"),
        (Resource::Namespaces | Resource::Namespace, name) => remote(&source, "get", |client| {
            get_namespaces(client, name.clone(), format)
        }),
    }
}

/// `katcall get nodes` / `get node NAME`.
async fn get_nodes(
    mut client: Client,
    resource: Resource,
    name: Option<String>,
    format: OutputFormat,
) -> CmdResult {
    let now = SystemTime::now();
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

/// `katcall get workloads` / `get workload NAME`.
async fn get_workloads(
    mut client: Client,
    namespace: Option<&str>,
    name: Option<String>,
    format: OutputFormat,
) -> CmdResult {
    let now = SystemTime::now();
    match name {
        Some(name) => {
            let q = client
                .get_workload(api::GetWorkloadRequest {
                    namespace: namespace.unwrap_or("default").to_owned(),
                    name,
                })
                .await
                .map_err(CmdError::from)?
                .into_inner();
            match format {
                OutputFormat::Table => {
                    print!("{}", output::workloads_table(std::slice::from_ref(&q), now));
                    Ok(())
                }
                _ => emit(&q, format),
            }
        }
        None => {
            let list = client
                .list_workloads(api::ListWorkloadsRequest {
                    namespace: namespace.unwrap_or_default().to_owned(),
                })
                .await
                .map_err(CmdError::from)?
                .into_inner();
            match format {
                OutputFormat::Table => {
                    print!("{}", output::workloads_table(&list.items, now));
                    Ok(())
                }
                _ => emit(&list, format),
            }
        }
    }
}

/// `katcall get instances [WORKLOAD]`.
async fn get_instances(
    mut client: Client,
    namespace: Option<&str>,
    workload: Option<String>,
    format: OutputFormat,
) -> CmdResult {
    let ns = match (namespace, &workload) {
        (Some(ns), _) => ns.to_owned(),
        (None, Some(_)) => "default".to_owned(),
        (None, None) => String::new(),
    };
    let list = client
        .list_instances(api::ListInstancesRequest {
            namespace: ns,
            workload: workload.unwrap_or_default(),
            node: String::new(),
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    match format {
        OutputFormat::Table => {
            print!("{}", output::instances_table(&list.items));
            Ok(())
        }
        _ => emit(&list, format),
    }
}

/// Which events `katcall get events` shows.
#[derive(Debug, Clone, Default)]
struct EventFilter {
    /// `kind/name` of the involved object; empty: all.
    involved: String,
    since: Option<SystemTime>,
    /// Keep printing new events.
    watch: bool,
}

/// `katcall get events [KIND/NAME] [--since D] [--watch]`.
async fn get_events(
    mut client: Client,
    namespace: Option<&str>,
    filter: &EventFilter,
    format: OutputFormat,
) -> CmdResult {
    let request = api::ListEventsRequest {
        namespace: namespace.unwrap_or_default().to_owned(),
        involved: filter.involved.clone(),
        since: filter.since.map(kat_proto::timestamp),
    };
    if filter.watch {
        // What there is, then each new event as it comes: one line (or one JSON
        // object, or one YAML document) per event.
        let mut stream = client
            .watch_events(request)
            .await
            .map_err(CmdError::from)?
            .into_inner();
        if format == OutputFormat::Table {
            println!("{}", output::event_line_header());
        }
        while let Some(e) = stream.message().await.map_err(CmdError::from)? {
            match format {
                OutputFormat::Table => println!("{}", output::event_line(&e)),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string(&e).map_err(|e| CmdError::from(e.to_string()))?
                ),
                OutputFormat::Yaml => print!("---\n{}", encode(&e, format)?),
            }
        }
        return Ok(());
    }
    let list = client
        .list_events(request)
        .await
        .map_err(CmdError::from)?
        .into_inner();
    match format {
        OutputFormat::Table => {
            print!("{}", output::events_table(&list.items, SystemTime::now()));
            Ok(())
        }
        _ => emit(&list, format),
    }
}

/// `katcall get namespaces | namespace NAME`.
async fn get_namespaces(
    mut client: Client,
    name: Option<String>,
    format: OutputFormat,
) -> CmdResult {
    let single = name.is_some();
    let items = match name {
        Some(name) => vec![
            client
                .get_namespace(api::GetNamespaceRequest { name })
                .await
                .map_err(CmdError::from)?
                .into_inner(),
        ],
        None => {
            client
                .list_namespaces(api::ListNamespacesRequest {})
                .await
                .map_err(CmdError::from)?
                .into_inner()
                .items
        }
    };
    match format {
        OutputFormat::Table => {
            print!("{}", output::namespaces_table(&items, SystemTime::now()));
            Ok(())
        }
        _ if single => emit(&items[0], format),
        _ => emit(&api::ListNamespacesResponse { items }, format),
    }
}
