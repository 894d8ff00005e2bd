//! `katcall rollback`: a stored previous generation of a workload applied again.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use kat_proto::v1alpha1 as api;

use super::GlobalArgs;
use crate::OutputFormat;
use crate::output::emit;
use crate::remote::{Client, CmdError, CmdResult, remote};

/// Re-apply a stored previous generation of a workload.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[arg(value_enum)]
    kind: WorkloadKind,
    name: String,
    #[arg(long, value_name = "N")]
    to_generation: Option<i64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WorkloadKind {
    Workload,
}

pub fn run(args: RollbackArgs, globals: &GlobalArgs) -> ExitCode {
    let RollbackArgs {
        kind: WorkloadKind::Workload,
        name,
        to_generation,
    } = args;
    remote(&globals.config_source(), "rollback", |client| {
        rollback(
            client,
            globals.namespace(),
            name.clone(),
            to_generation,
            globals.output,
        )
    })
}

/// `katcall rollback workload NAME [--to-generation N]`: re-applies a kept
/// generation; with `wait`, follows the rollout.
async fn rollback(
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
