//! Shared pieces of the two binaries: output formats, logging setup, manual pages; and
//! `katcall`'s commands
//! ([`commands`], one module per command), its connection to the cluster ([`remote`])
//! and how it prints ([`output`]).

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

/// The most a token file is read for: a token is about 120 characters, and a file like
/// `/dev/zero` must not hold the program.
pub const MAX_TOKEN_FILE: u64 = 4096;

/// The token in `path` (`-`: standard input), read at most [`MAX_TOKEN_FILE`] bytes
/// and trimmed; `flag` names the option in errors. A token kept in a file stays out of
/// the process list, which every local user can read.
pub fn read_token_file(flag: &str, path: &std::path::Path) -> Result<String, String> {
    use std::io::Read as _;
    let what = format!("{flag} {}", path.display());
    let source: Box<dyn std::io::Read> = if path == std::path::Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| format!("{what}: {e}"))?)
    };
    let mut bytes = Vec::new();
    source
        .take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{what}: {e}"))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(format!(
            "{what}: longer than {MAX_TOKEN_FILE} bytes; not a token"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{what}: not text; not a token"))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(format!("{what}: holds no token"));
    }
    Ok(token)
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
