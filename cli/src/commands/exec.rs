//! `katcall exec`: a command in an instance's container, from its node through the
//! leader; katcall exits with the command's status.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use clap::Args;
use kat_proto::v1alpha1 as api;

use super::{GlobalArgs, fail, parse_instance};
use crate::OutputFormat;
use crate::output::{encode, parse_duration};
use crate::remote::{Client, CmdError, remote_with};

/// Run a command in an instance's container; exits with the command's status.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// ID, WORKLOAD/ID or the container name.
    instance: String,
    /// How long the command may run (at most 5m).
    #[arg(long, default_value = "30s")]
    timeout: String,
    /// The command and its arguments (no shell: use sh -c '...' for one).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(args: ExecArgs, globals: &GlobalArgs) -> ExitCode {
    let limit = match parse_duration(&args.timeout) {
        Ok(d) if d.as_secs() >= 1 && d.as_secs() <= 300 => d,
        Ok(_) => return fail("exec", "--timeout must be between 1s and 5m"),
        Err(e) => return fail("exec", format!("--timeout {e}")),
    };
    let target = match parse_instance(&args.instance) {
        Ok(t) => t,
        Err(e) => return fail("exec", e),
    };
    let request = api::ExecRequest {
        namespace: globals.namespace().unwrap_or_default().to_owned(),
        workload: target.workload,
        instance_id: target.id,
        command: args.command,
        timeout_seconds: u32::try_from(limit.as_secs()).unwrap_or(300),
    };
    let status = AtomicI32::new(0);
    let code = remote_with(
        &globals.config_source(),
        "exec",
        limit + Duration::from_secs(15),
        |client| async {
            let code = exec(client, request.clone(), globals.output).await?;
            status.store(code, Ordering::Relaxed);
            Ok(())
        },
    );
    match status.load(Ordering::Relaxed) {
        0 => code,
        // The command's own status (as a shell reports it: 1–255).
        n => ExitCode::from(u8::try_from(n.clamp(1, 255)).unwrap_or(1)),
    }
}

/// Prints the command's output and returns its exit status.
async fn exec(
    mut client: Client,
    request: api::ExecRequest,
    format: OutputFormat,
) -> Result<i32, CmdError> {
    let out = client
        .exec_instance(request)
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
