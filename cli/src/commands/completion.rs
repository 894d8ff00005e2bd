//! `katcall completion SHELL`: a completion script made from katcall's clap definition.

use std::process::ExitCode;

use clap::Args;

/// Print a shell completion script.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Prints the script for `cli`, katcall's whole command line.
pub fn run(args: CompletionArgs, mut cli: clap::Command) -> ExitCode {
    clap_complete::generate(args.shell, &mut cli, "katcall", &mut std::io::stdout());
    ExitCode::SUCCESS
}
