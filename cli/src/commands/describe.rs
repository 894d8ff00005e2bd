//! `katcall describe`: one workload or node in full, for people.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, ValueEnum};
use kat_proto::v1alpha1 as api;

use super::GlobalArgs;
use crate::OutputFormat;
use crate::output::{self, emit};
use crate::remote::{Client, CmdError, CmdResult, remote};

/// Show a resource's spec, status, instances, recent events and pending reasons.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[arg(value_enum)]
    kind: DescribeKind,
    name: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DescribeKind {
    Workload,
    Node,
}

pub fn run(args: DescribeArgs, globals: &GlobalArgs) -> ExitCode {
    let DescribeArgs { kind, name } = args;
    let source = globals.config_source();
    let format = globals.output;
    match kind {
        DescribeKind::Node => remote(&source, "describe", |client| {
            describe_node(client, name.clone(), format)
        }),
        DescribeKind::Workload => remote(&source, "describe", |client| {
            describe_workload(client, globals.namespace(), name.clone(), format)
        }),
    }
}

/// `katcall describe node NAME`: spec, status and the last ten events.
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
        output::describe_node(&node, recent, SystemTime::now())
    );
    Ok(())
}

/// `katcall describe workload NAME`.
async fn describe_workload(
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
