//! `katcall logs`: an instance's log (or its build's), from its node through the leader.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use kat_proto::v1alpha1 as api;
use kat_proto::v1alpha1::log_chunk::Stream as ChunkStream;

use super::{GlobalArgs, fail, parse_instance};
use crate::OutputFormat;
use crate::output::{encode, parse_duration};
use crate::remote::{Client, CmdError, CmdResult, remote};

/// Print an instance's logs, from its node through the leader.
#[derive(Debug, Args)]
pub struct LogsArgs {
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
}

pub fn run(args: LogsArgs, globals: &GlobalArgs) -> ExitCode {
    let since_seconds = match args.since.as_deref().map(parse_duration) {
        None => 0,
        Some(Ok(d)) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
        Some(Err(e)) => return fail("logs", format!("--since {e}")),
    };
    let target = match parse_instance(&args.instance) {
        Ok(t) => t,
        Err(e) => return fail("logs", e),
    };
    let request = api::LogsRequest {
        namespace: globals.namespace().unwrap_or_default().to_owned(),
        workload: target.workload,
        instance_id: target.id,
        follow: args.follow,
        since_seconds,
        tail: args.tail.unwrap_or(0),
        build: args.build,
    };
    remote(&globals.config_source(), "logs", |client| {
        logs(client, request.clone(), globals.output)
    })
}

/// The container's stdout to stdout and stderr to stderr (`-o json|yaml`: one chunk a
/// document, with its stream).
async fn logs(mut client: Client, request: api::LogsRequest, format: OutputFormat) -> CmdResult {
    let mut stream = client
        .stream_instance_logs(request)
        .await
        .map_err(CmdError::from)?
        .into_inner();
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(chunk) = stream.message().await.map_err(CmdError::from)? {
        let written = match format {
            OutputFormat::Table => match chunk.stream() {
                ChunkStream::Stderr => stderr.write_all(&chunk.data).and_then(|()| stderr.flush()),
                _ => stdout.write_all(&chunk.data).and_then(|()| stdout.flush()),
            },
            _ => {
                let text = encode(&chunk, format)?;
                stdout
                    .write_all(text.as_bytes())
                    .and_then(|()| stdout.flush())
            }
        };
        if written.is_err() {
            break; // a closed pipe (`| head`): stop quietly
        }
    }
    Ok(())
}
