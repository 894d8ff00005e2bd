//! `katcall logs` and `katcall exec`: an instance's log and commands in its container,
//! through the leader from the instance's node.

use std::io::Write;

use kat_proto::v1alpha1 as api;
use kat_proto::v1alpha1::log_chunk::Stream as ChunkStream;

use crate::OutputFormat;
use crate::output::encode;
use crate::remote::{Client, CmdError, CmdResult};

/// An instance as the user names it: `ID`, `WORKLOAD/ID`, or the container (and
/// unit) name `kat-<ns>-<workload>-<ID>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    pub workload: String,
    pub id: String,
}

pub fn parse_instance(text: &str) -> Result<InstanceRef, String> {
    let text = text.trim().trim_end_matches(".service");
    if text.is_empty() {
        return Err("INSTANCE: empty (katcall get instances lists them)".to_owned());
    }
    if let Some((workload, id)) = text.split_once('/') {
        if workload.is_empty() || id.is_empty() || id.contains('/') {
            return Err(format!(
                "INSTANCE: {text:?}: expected ID, WORKLOAD/ID or kat-<ns>-<workload>-<ID>"
            ));
        }
        return Ok(InstanceRef {
            workload: workload.to_owned(),
            id: id.to_owned(),
        });
    }
    // A container name ends with the ID; names may hold dashes, so the workload is
    // left for the server to find.
    if let Some(rest) = text.strip_prefix("kat-")
        && let Some((_, id)) = rest.rsplit_once('-')
    {
        return Ok(InstanceRef {
            workload: String::new(),
            id: id.to_owned(),
        });
    }
    Ok(InstanceRef {
        workload: String::new(),
        id: text.to_owned(),
    })
}

/// What `katcall logs` was asked.
#[derive(Debug, Clone, Default)]
pub struct LogsArgs {
    pub follow: bool,
    pub since_seconds: u32,
    pub tail: u32,
    pub build: bool,
}

/// `katcall logs INSTANCE [-f] [--since] [--tail]`: the container's stdout to stdout
/// and stderr to stderr (`-o json|yaml`: one chunk a document, with its stream).
pub async fn logs(
    mut client: Client,
    namespace: Option<&str>,
    instance: &InstanceRef,
    args: &LogsArgs,
    format: OutputFormat,
) -> CmdResult {
    let mut stream = client
        .stream_instance_logs(api::LogsRequest {
            namespace: namespace.unwrap_or_default().to_owned(),
            workload: instance.workload.clone(),
            instance_id: instance.id.clone(),
            follow: args.follow,
            since_seconds: args.since_seconds,
            tail: args.tail,
            build: args.build,
        })
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

/// `katcall exec INSTANCE -- CMD...`: prints the command's output and exits with its
/// exit status.
pub async fn exec(
    mut client: Client,
    namespace: Option<&str>,
    instance: &InstanceRef,
    command: &[String],
    timeout_seconds: u32,
    format: OutputFormat,
) -> Result<i32, CmdError> {
    let out = client
        .exec_instance(api::ExecRequest {
            namespace: namespace.unwrap_or_default().to_owned(),
            workload: instance.workload.clone(),
            instance_id: instance.id.clone(),
            command: command.to_vec(),
            timeout_seconds,
        })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    match format {
        OutputFormat::Table => {
            let _ = std::io::stdout().write_all(&out.stdout);
            let _ = std::io::stderr().write_all(&out.stderr);
            let _ = std::io::stdout().flush();
        }
        _ => print!("{}", encode(&out, format)?),
    }
    Ok(out.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_named_three_ways() {
        let r = |w: &str, id: &str| InstanceRef {
            workload: w.to_owned(),
            id: id.to_owned(),
        };
        assert_eq!(parse_instance("1a2b3c4d"), Ok(r("", "1a2b3c4d")));
        assert_eq!(parse_instance("web/1a2b3c4d"), Ok(r("web", "1a2b3c4d")));
        assert_eq!(
            parse_instance("kat-default-my-web-1a2b3c4d"),
            Ok(r("", "1a2b3c4d"))
        );
        assert_eq!(
            parse_instance("kat-default-web-1a2b3c4d.service"),
            Ok(r("", "1a2b3c4d"))
        );
        assert!(parse_instance("").is_err());
        assert!(parse_instance("web/").is_err());
        assert!(parse_instance("a/b/c").is_err());
    }
}
