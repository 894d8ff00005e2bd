//! Shared pieces of the two binaries: output formats, logging setup, manual pages, and
//! the one way a command that is not built yet says so; and `katcall`'s commands
//! ([`commands`], one module per command), its connection to the cluster ([`remote`])
//! and how it prints ([`output`]).

use std::process::ExitCode;

/// Output format of `katcall` commands (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

/// Log format of `kat-agent` (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Exit status of a command that exists in the interface but not yet in this build.
pub const EXIT_NOT_IMPLEMENTED: u8 = 3;

/// Says plainly that `command` is not available in this build and returns a failing status.
pub fn not_implemented(program: &str, command: &str, needs: &str) -> ExitCode {
    eprintln!(
        "{program} {command}: not implemented in this build ({} {}); it needs {needs}",
        program,
        kat_proto::VERSION
    );
    ExitCode::from(EXIT_NOT_IMPLEMENTED)
}

/// Sets up `tracing` for a binary: level from `--log-level` or `RUST_LOG`.
pub fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    // Colours only for a person at a terminal; files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub mod commands;
pub mod man;
pub mod output;
pub mod remote;
