//! `katcall`: the KAT command-line client (SPEC §11). `main` only dispatches: each
//! command's flags, checks and calls live in its module under `kat_cli::commands`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use kat_cli::commands::{
    GlobalArgs, apply, backup, completion, delete, describe, exec, get, logs, man, nodes, rollback,
    rollout, scale, token, validate, version,
};

/// Drive a KAT cluster.
///
/// katcall talks to the leader's API with the server, CA and token from its config file
/// (~/.config/kat/config, or the katcall.yaml that `kat-agent init` writes). `validate`
/// works offline.
#[derive(Debug, Parser)]
#[command(name = "katcall", version = kat_proto::VERSION, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    globals: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

// The commands in `--help` order; each one's help text is the doc comment of its type.
// (Plain comments here and on `GlobalArgs`: clap would read doc comments as help text.)
#[derive(Debug, Subcommand)]
enum Command {
    Validate(validate::ValidateArgs),
    Apply(apply::ApplyArgs),
    Get(get::GetArgs),
    Describe(describe::DescribeArgs),
    #[command(subcommand)]
    Delete(delete::DeleteCommand),
    Logs(logs::LogsArgs),
    Exec(exec::ExecArgs),
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    Rollback(rollback::RollbackArgs),
    Scale(scale::ScaleArgs),
    Cordon(nodes::CordonArgs),
    Uncordon(nodes::UncordonArgs),
    Drain(nodes::DrainArgs),
    Label(nodes::LabelArgs),
    Taint(nodes::TaintArgs),
    #[command(subcommand)]
    Token(token::TokenCommand),
    Backup(backup::BackupArgs),
    Version(version::VersionArgs),
    Completion(completion::CompletionArgs),
    Man(man::ManArgs),
}

fn main() -> ExitCode {
    let Cli { globals, command } = Cli::parse();
    let globals = &globals;
    match command {
        Command::Validate(args) => validate::run(args, globals),
        Command::Apply(args) => apply::run(args, globals),
        Command::Get(args) => get::run(args, globals),
        Command::Describe(args) => describe::run(args, globals),
        Command::Delete(command) => delete::run(command, globals),
        Command::Logs(args) => logs::run(args, globals),
        Command::Exec(args) => exec::run(args, globals),
        Command::Rollout(command) => rollout::run(command, globals),
        Command::Rollback(args) => rollback::run(args, globals),
        Command::Scale(args) => scale::run(args, globals),
        Command::Cordon(args) => nodes::run_cordon(args, globals),
        Command::Uncordon(args) => nodes::run_uncordon(args, globals),
        Command::Drain(args) => nodes::run_drain(args, globals),
        Command::Label(args) => nodes::run_label(args, globals),
        Command::Taint(args) => nodes::run_taint(args, globals),
        Command::Token(command) => token::run(command, globals),
        Command::Backup(args) => backup::run(args, globals),
        Command::Version(args) => version::run(args, globals),
        Command::Completion(args) => completion::run(args, Cli::command()),
        Command::Man(args) => man::run(args, &Cli::command()),
    }
}
