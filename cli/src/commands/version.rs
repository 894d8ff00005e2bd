//! `katcall version`: katcall's version, and the server's when a configuration names one.

use std::process::ExitCode;

use clap::Args;
use kat_proto::v1alpha1 as api;

use super::GlobalArgs;
use crate::remote::{CmdError, load_config, remote};

/// Print katcall's version (and the server's, when reachable).
#[derive(Debug, Args)]
pub struct VersionArgs {}

pub fn run(_args: VersionArgs, globals: &GlobalArgs) -> ExitCode {
    println!("katcall {}", kat_proto::VERSION);
    let source = globals.config_source();
    // The server's too, when a configuration names one (quietly skipped if not).
    if load_config(&source).is_ok() {
        // Unreachable: said on stderr; the local version still stands.
        let _ = remote(&source, "version", |mut client| async move {
            let v = client
                .get_version(api::GetVersionRequest {})
                .await
                .map_err(CmdError::from)?
                .into_inner();
            println!("server {} (API {})", v.version, v.api_version);
            Ok(())
        });
    }
    ExitCode::SUCCESS
}
