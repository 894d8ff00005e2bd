//! `katcall rollout status`: following a workload's rollout until every instance of its
//! current generation is ready (also what `katcall apply --wait` does).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use kat_proto::v1alpha1 as api;

use super::GlobalArgs;
use crate::output;
use crate::remote::{Client, CmdError, CmdResult, remote};

/// Follow a workload's rollout.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show a rollout's progress until it completes or pauses.
    Status { workload: String },
}

pub fn run(command: RolloutCommand, globals: &GlobalArgs) -> ExitCode {
    match command {
        RolloutCommand::Status { workload } => {
            remote(&globals.config_source(), "rollout status", |client| {
                rollout_status(
                    client,
                    globals.namespace(),
                    workload.clone(),
                    Duration::from_secs(600),
                )
            })
        }
    }
}

/// `katcall rollout status NAME`: follows the current generation's rollout until
/// every instance of it is ready and no older one is left.
async fn rollout_status(
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
            .filter(|i| i.generation != generation && !i.node_lost)
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
