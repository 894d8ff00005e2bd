//! `katcall` commands about workloads: apply (with `--wait`), get, describe, delete,
//! instances and events.

use std::path::Path;
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1 as api;

use crate::OutputFormat;
use crate::output::{self, emit, encode};
use crate::remote::{Client, CmdError, CmdResult};

/// The bundle to send for `path`: a Quadlet directory is checked offline first (so
/// errors name its files) and packed; a `.tar.gz` is sent as it is.
pub fn bundle_for(path: &Path) -> Result<Vec<u8>, CmdError> {
    if path.is_dir() {
        if let Err(errors) = kat_proto::quadlet::load_path(path) {
            let lines: Vec<String> = errors.errors.iter().map(ToString::to_string).collect();
            return Err(format!("{} is not valid:\n{}", path.display(), lines.join("\n")).into());
        }
        return kat_proto::bundle::pack_dir(path)
            .map_err(|e| format!("{}: cannot pack: {e}", path.display()).into());
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// `katcall apply -f DIR|BUNDLE [--wait]`.
pub async fn apply(
    mut client: Client,
    path: &Path,
    namespace: Option<&str>,
    wait: Option<Duration>,
    format: OutputFormat,
) -> CmdResult {
    let bundle = bundle_for(path)?;
    let q = client
        .create_workload(api::CreateWorkloadRequest {
            namespace: namespace.unwrap_or_default().to_owned(),
            bundle,
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    let meta = q
        .workload
        .as_ref()
        .and_then(|w| w.metadata.clone())
        .unwrap_or_default();
    match format {
        OutputFormat::Table => println!(
            "workload {}/{} applied (generation {})",
            meta.namespace, meta.name, meta.generation
        ),
        _ => emit(&q, format)?,
    }
    if let Some(timeout) = wait {
        wait_ready(
            &mut client,
            &meta.namespace,
            &meta.name,
            meta.generation,
            timeout,
        )
        .await?;
    }
    Ok(())
}

/// Waits until every instance of `generation` runs (healthy, where checked) and no
/// older one is left; shows progress on stderr. Gives up after `timeout`.
pub async fn wait_ready(
    client: &mut Client,
    ns: &str,
    name: &str,
    generation: i64,
    timeout: Duration,
) -> CmdResult {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let s = client
            .get_workload_status(api::GetWorkloadRequest {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
            .await
            .map_err(CmdError::from)?
            .into_inner();
        let status = s
            .workload
            .as_ref()
            .and_then(|w| w.status.clone())
            .unwrap_or_default();
        let old = s
            .instances
            .iter()
            .filter(|i| i.generation != generation)
            .count();
        let is_job = s
            .workload
            .as_ref()
            .and_then(|w| w.spec.as_ref())
            .is_some_and(|sp| sp.r#type() == api::WorkloadType::Job);
        let line = if is_job {
            format!(
                "{ns}/{name}: {} — {} succeeded, {} failed, {} active",
                status.job_state, status.succeeded, status.failed, status.active
            )
        } else {
            format!(
                "{ns}/{name}: {} {}/{} ready, {} pending, {old} old",
                output::progress_bar(status.ready_instances, status.desired_instances, 20),
                status.ready_instances,
                status.desired_instances,
                status.pending_instances
            )
        };
        if line != last {
            eprintln!("{line}");
            last.clone_from(&line);
        }
        let failed: Vec<String> = s
            .instances
            .iter()
            .filter(|i| {
                i.generation == generation
                    && i.status
                        .as_ref()
                        .is_some_and(|st| st.phase() == api::InstancePhase::Failed)
            })
            .map(|i| {
                let st = i.status.clone().unwrap_or_default();
                format!("{}: {} {}", i.id, st.reason, st.message)
            })
            .collect();
        if !failed.is_empty() && !is_job {
            return Err(format!("instances failed: {}", failed.join("; ")).into());
        }
        if let Some(r) = status.rollout.as_ref().filter(|r| r.paused) {
            return Err(format!("{ns}/{name}: {}", r.message).into());
        }
        let spec = s
            .workload
            .as_ref()
            .and_then(|w| w.spec.clone())
            .unwrap_or_default();
        let expected = match spec.r#type() {
            api::WorkloadType::DaemonService => status.desired_instances.max(1),
            api::WorkloadType::Job => {
                return match status.job_state.as_str() {
                    "Complete" | "Waiting" => Ok(()),
                    failed if failed.starts_with("Failed") => {
                        Err(format!("{ns}/{name}: {failed}").into())
                    }
                    _ if tokio::time::Instant::now() >= deadline => {
                        Err(format!("{line}: not done after {timeout:?}").into())
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
            }
            _ => u32::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0),
        };
        if status.desired_instances == expected && status.ready_instances == expected && old == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{line}: not ready after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `katcall get workloads` / `get workload NAME`.
pub async fn get_workloads(
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
pub async fn get_instances(
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

/// `katcall get events`.
/// Which events `katcall get events` shows.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `kind/name` of the involved object; empty: all.
    pub involved: String,
    pub since: Option<SystemTime>,
    /// Keep printing new events.
    pub watch: bool,
}

/// `katcall get events [KIND/NAME] [--since D] [--watch]`.
pub async fn get_events(
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

/// `katcall describe workload NAME`.
pub async fn describe_workload(
    mut client: Client,
    namespace: Option<&str>,
    name: String,
    format: OutputFormat,
) -> CmdResult {
    let s = client
        .get_workload_status(api::GetWorkloadRequest {
            namespace: namespace.unwrap_or("default").to_owned(),
            name,
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    match format {
        OutputFormat::Table => {
            print!("{}", output::describe_workload(&s, SystemTime::now()));
            Ok(())
        }
        _ => emit(&s, format),
    }
}

/// `katcall delete workload NAME [--purge-volumes]`.
pub async fn delete_workload(
    mut client: Client,
    namespace: Option<&str>,
    name: String,
    purge_volumes: bool,
) -> CmdResult {
    let ns = namespace.unwrap_or("default").to_owned();
    let answer = client
        .delete_workload(api::DeleteWorkloadRequest {
            namespace: ns.clone(),
            name: name.clone(),
            purge_volumes,
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    println!("workload {ns}/{name} deleted");
    if purge_volumes {
        if !answer.purged_nodes.is_empty() {
            println!("volumes removed on {}", answer.purged_nodes.join(", "));
        }
        for failure in &answer.purge_failures {
            eprintln!("volumes kept: {failure}");
        }
        if !answer.purge_failures.is_empty() {
            return Err(format!(
                "the workload is deleted, but volumes are left on {} node(s); remove volumeBasePath/{ns}/{name} there by hand",
                answer.purge_failures.len()
            )
            .into());
        }
    }
    Ok(())
}

/// `katcall rollback workload NAME [--to-generation N]`: re-applies a kept
/// generation; with `wait`, follows the rollout.
pub async fn rollback(
    mut client: Client,
    namespace: Option<&str>,
    name: String,
    to_generation: Option<i64>,
    format: OutputFormat,
) -> CmdResult {
    let q = client
        .rollback_workload(api::RollbackWorkloadRequest {
            namespace: namespace.unwrap_or("default").to_owned(),
            name,
            to_generation: to_generation.unwrap_or(0),
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    let meta = q
        .workload
        .as_ref()
        .and_then(|w| w.metadata.clone())
        .unwrap_or_default();
    match format {
        OutputFormat::Table => println!(
            "workload {}/{} rolled back (now generation {}); follow it with katcall rollout status {}",
            meta.namespace, meta.name, meta.generation, meta.name
        ),
        _ => emit(&q, format)?,
    }
    Ok(())
}

/// `katcall rollout status NAME`: follows the current generation's rollout until
/// every instance of it is ready and no older one is left.
pub async fn rollout_status(
    mut client: Client,
    namespace: Option<&str>,
    name: String,
    timeout: Duration,
) -> CmdResult {
    let ns = namespace.unwrap_or("default").to_owned();
    let q = client
        .get_workload(api::GetWorkloadRequest {
            namespace: ns.clone(),
            name: name.clone(),
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    let generation = q
        .workload
        .as_ref()
        .and_then(|w| w.metadata.as_ref())
        .map_or(0, |m| m.generation);
    wait_ready(&mut client, &ns, &name, generation, timeout).await?;
    println!("workload {ns}/{name}: generation {generation} rolled out");
    Ok(())
}

/// `katcall get namespaces | namespace NAME`.
pub async fn get_namespaces(
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

/// `katcall apply -f namespace.kat`: creates the namespace.
pub async fn apply_namespace(
    mut client: Client,
    namespace: api::Namespace,
    format: OutputFormat,
) -> CmdResult {
    let created = client
        .create_namespace(api::CreateNamespaceRequest {
            namespace: Some(namespace),
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    match format {
        OutputFormat::Table => {
            let name = created.metadata.map(|m| m.name).unwrap_or_default();
            println!("namespace {name} created");
            Ok(())
        }
        _ => emit(&created, format),
    }
}

/// `katcall delete namespace NAME [--cascade]`.
pub async fn delete_namespace(mut client: Client, name: String, cascade: bool) -> CmdResult {
    client
        .delete_namespace(api::DeleteNamespaceRequest {
            name: name.clone(),
            cascade,
        })
        .await
        .map_err(CmdError::from)?;
    println!("namespace {name} deleted");
    Ok(())
}

/// `katcall delete node NAME`.
pub async fn delete_node(mut client: Client, name: String) -> CmdResult {
    client
        .delete_node(api::GetNodeRequest { name: name.clone() })
        .await
        .map_err(CmdError::from)?;
    println!("node {name} removed from the cluster");
    Ok(())
}

/// `katcall backup [--list]`: an etcd snapshot now, or the kept ones (on the leader).
pub async fn backup(mut client: Client, list: bool, format: OutputFormat) -> CmdResult {
    if list {
        let kept = client
            .list_backups(api::ListBackupsRequest {})
            .await
            .map_err(CmdError::from)?
            .into_inner();
        return match format {
            OutputFormat::Table => {
                print!("{}", output::backups_table(&kept.items, SystemTime::now()));
                Ok(())
            }
            _ => emit(&kept, format),
        };
    }
    eprintln!("katcall backup: taking an etcd snapshot on the leader ...");
    let made = client
        .create_backup(api::CreateBackupRequest {})
        .await
        .map_err(CmdError::from)?
        .into_inner();
    match format {
        OutputFormat::Table => {
            println!(
                "backup {} made: {} bytes at revision {} ({} on the leader)",
                made.name, made.size_bytes, made.revision, made.path
            );
            Ok(())
        }
        _ => emit(&made, format),
    }
}
