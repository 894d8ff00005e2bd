//! `katcall backup`: an etcd snapshot on the leader now, or the list of kept ones.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use kat_proto::v1alpha1 as api;

use super::GlobalArgs;
use crate::OutputFormat;
use crate::output::{self, emit};
use crate::remote::{Client, CmdError, CmdResult, remote_with};

/// Make an etcd snapshot now, or list the kept ones.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// List the snapshots the leader keeps instead of making one.
    #[arg(long)]
    list: bool,
}

pub fn run(args: BackupArgs, globals: &GlobalArgs) -> ExitCode {
    // Making a snapshot may take longer than an ordinary call.
    remote_with(
        &globals.config_source(),
        "backup",
        Duration::from_secs(300),
        |client| backup(client, args.list, globals.output),
    )
}

/// `katcall backup [--list]`: an etcd snapshot now, or the kept ones (on the leader).
async fn backup(mut client: Client, list: bool, format: OutputFormat) -> CmdResult {
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
