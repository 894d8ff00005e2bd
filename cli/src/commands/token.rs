//! `katcall token create`: join tokens for new nodes and API tokens for clients.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use kat_proto::v1alpha1 as api;

use super::GlobalArgs;
use crate::OutputFormat;
use crate::output::{self, emit};
use crate::remote::{Client, CmdError, CmdResult, remote};

/// Create join or API tokens.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token.
    Create(TokenCreate),
}

#[derive(Debug, Clone, Args)]
pub struct TokenCreate {
    #[arg(value_enum)]
    kind: TokenKind,
    /// Lifetime, e.g. 24h (join tokens default to 24h; API tokens to no expiry).
    #[arg(long)]
    ttl: Option<String>,
    /// Join tokens: allow more than one join (API tokens always are reusable, until
    /// they expire or are deleted).
    #[arg(long)]
    reusable: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TokenKind {
    Join,
    Api,
}

pub fn run(command: TokenCommand, globals: &GlobalArgs) -> ExitCode {
    match command {
        TokenCommand::Create(create) => {
            remote(&globals.config_source(), "token create", |client| {
                create_token(client, create.clone(), globals.output)
            })
        }
    }
}

/// Creates the token; prints it, and on stderr how to use it.
async fn create_token(mut client: Client, create: TokenCreate, format: OutputFormat) -> CmdResult {
    let ttl_seconds = match &create.ttl {
        Some(text) => {
            let ttl = output::parse_duration(text).map_err(|e| format!("--ttl {e}"))?;
            u32::try_from(ttl.as_secs()).map_err(|_| format!("--ttl {text:?}: too long"))?
        }
        None => 0,
    };
    let request = api::CreateTokenRequest {
        ttl_seconds,
        reusable: create.reusable,
        description: String::new(),
    };
    let response = match create.kind {
        TokenKind::Join => client.create_join_token(request).await,
        TokenKind::Api => client.create_api_token(request).await,
    }
    .map_err(CmdError::from)?
    .into_inner();
    match format {
        OutputFormat::Table => {
            println!("{}", response.token);
            match create.kind {
                TokenKind::Join => eprintln!(
                    "join a node with: kat-agent join --leader-api HOST:PORT --token-file FILE --state-dir DIR (FILE holding the line above, mode 0600)"
                ),
                TokenKind::Api => eprintln!(
                    "shown once; use it as the token in a katcall config or KAT_TOKEN; valid {}",
                    response.expires_at.as_ref().map_or_else(
                        || "until deleted (DELETE /v1alpha1/tokens/ID)".to_owned(),
                        |t| format!("until {}", output::rfc3339(t))
                    )
                ),
            }
            Ok(())
        }
        _ => emit(&response, format),
    }
}
