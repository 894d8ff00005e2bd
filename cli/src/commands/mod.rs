//! `katcall`'s commands (SPEC §11), one module per command: each owns its flags (a clap
//! `Args` or `Subcommand` type whose doc comments are its `--help`), checks them, and
//! has a `run` that the binary's `main` dispatches to. Calls to the cluster go through
//! [`crate::remote::remote`]; what they print, through [`crate::output`].
//!
//! Here: the flags every command takes ([`GlobalArgs`]) and how a command names an
//! instance ([`parse_instance`], for `logs` and `exec`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::OutputFormat;
use crate::remote::ConfigSource;

pub mod apply;
pub mod backup;
pub mod completion;
pub mod delete;
pub mod describe;
pub mod exec;
pub mod get;
pub mod logs;
pub mod man;
pub mod nodes;
pub mod rollback;
pub mod rollout;
pub mod scale;
pub mod token;
pub mod validate;
pub mod version;

// Flags of every command: where the cluster is, how to print, which namespace. (Not a
// doc comment: clap would read it as help text.)
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file with server, CA and token (e.g. STATE_DIR/katcall.yaml).
    #[arg(long, global = true, env = "KAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Context (cluster) to use from the config file.
    #[arg(long, global = true, env = "KAT_CONTEXT")]
    pub context: Option<String>,
    /// API server URL, overriding the config file.
    #[arg(long, global = true, env = "KAT_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token, overriding the config file (visible in the process list: prefer
    /// --token-file, KAT_TOKEN or the config file).
    #[arg(long, global = true, env = "KAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (`-`: standard input), overriding --token and the
    /// config file.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Namespace (default: "default"; for apply, the bundle's; for lists, all).
    #[arg(short, long, global = true, env = "KAT_NAMESPACE")]
    pub namespace: Option<String>,
}

impl GlobalArgs {
    /// Where the configuration comes from, after flags and environment.
    pub fn config_source(&self) -> ConfigSource {
        ConfigSource {
            file: self.config.clone(),
            context: self.context.clone(),
            server: self.server.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
        }
    }

    /// `--namespace`, when given.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

/// Says `katcall COMMAND: MESSAGE` on stderr and returns a failing status.
pub fn fail(command: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("katcall {command}: {message}");
    ExitCode::FAILURE
}

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
