//! `katcall scale`: a SERVICE's replicas set in its current generation.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use kat_proto::v1alpha1 as api;

use super::GlobalArgs;
use crate::OutputFormat;
use crate::output::emit;
use crate::remote::{Client, CmdError, CmdResult, remote};

/// Set a SERVICE's replicas: instances are added or removed, the others run on (no
/// new generation, no rollout).
#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[arg(value_enum)]
    kind: WorkloadKind,
    name: String,
    /// How many instances (0 to 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..=1000))]
    replicas: i32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WorkloadKind {
    Workload,
}

pub fn run(args: ScaleArgs, globals: &GlobalArgs) -> ExitCode {
    let ScaleArgs {
        kind: WorkloadKind::Workload,
        name,
        replicas,
    } = args;
    remote(&globals.config_source(), "scale", |client| {
        scale(
            client,
            globals.namespace(),
            name.clone(),
            replicas,
            globals.output,
        )
    })
}

/// `katcall scale workload NAME --replicas N`.
async fn scale(
    mut client: Client,
    namespace: Option<&str>,
    name: String,
    replicas: i32,
    format: OutputFormat,
) -> CmdResult {
    let q = client
        .scale_workload(api::ScaleWorkloadRequest {
            namespace: namespace.unwrap_or("default").to_owned(),
            name,
            replicas: Some(replicas),
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
            "workload {}/{} scaled to {replicas} (generation {}, no rollout)",
            meta.namespace, meta.name, meta.generation
        ),
        _ => emit(&q, format)?,
    }
    Ok(())
}
