//! `katcall apply`: a workload from a Quadlet directory or bundle (optionally waiting
//! until it runs), or a namespace from a namespace.kat.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kat_proto::quadlet::{self, Document};
use kat_proto::v1alpha1 as api;

use super::{GlobalArgs, fail, rollout};
use crate::OutputFormat;
use crate::output::{emit, parse_duration};
use crate::remote::{Client, CmdError, CmdResult, remote};

/// Create or update a workload from a Quadlet directory or bundle (or create a
/// namespace from a namespace.kat).
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[arg(short = 'f', long = "file", value_name = "DIR|BUNDLE.tar.gz")]
    path: PathBuf,
    /// Wait until the workload's instances are running (or healthy).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, e.g. 90s, 10m.
    #[arg(long, default_value = "10m", requires = "wait")]
    timeout: String,
}

pub fn run(args: ApplyArgs, globals: &GlobalArgs) -> ExitCode {
    let ApplyArgs {
        path,
        wait,
        timeout,
    } = args;
    let timeout = match parse_duration(&timeout) {
        Ok(timeout) => timeout,
        Err(e) => return fail("apply", format!("--timeout {e}")),
    };
    let source = globals.config_source();
    let format = globals.output;
    // A single namespace.kat creates a namespace; anything else is a workload.
    if path.is_file() && path.extension().is_some_and(|e| e == "kat") {
        return match quadlet::load_path(&path) {
            Ok(Document::Namespace(n)) => remote(&source, "apply", |client| {
                apply_namespace(client, n.clone(), format)
            }),
            Ok(Document::Cluster(_)) => fail(
                "apply",
                format!(
                    "{} is a ClusterConfiguration; it is given to `kat-agent init --config`, not applied",
                    path.display()
                ),
            ),
            Ok(Document::Quadlet(_)) => fail(
                "apply",
                format!(
                    "{}: a workload is applied as its directory (or a bundle), e.g. katcall apply -f {}",
                    path.display(),
                    path.parent()
                        .map_or_else(|| ".".into(), |p| p.display().to_string())
                ),
            ),
            Err(errors) => {
                for e in &errors.errors {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }
        };
    }
    remote(&source, "apply", |client| {
        apply(
            client,
            &path,
            globals.namespace(),
            wait.then_some(timeout),
            format,
        )
    })
}

/// The bundle to send for `path`: a Quadlet directory is checked offline first (so
/// errors name its files) and packed; a `.tar.gz` is sent as it is.
fn bundle_for(path: &Path) -> Result<Vec<u8>, CmdError> {
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
async fn apply(
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
        rollout::wait_ready(
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

/// `katcall apply -f namespace.kat`: creates the namespace.
async fn apply_namespace(
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
