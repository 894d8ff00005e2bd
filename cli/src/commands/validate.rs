//! `katcall validate`: Quadlet files checked offline, every problem at once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use kat_proto::quadlet::{self, Document};

use super::{GlobalArgs, fail};
use crate::OutputFormat;

/// Check Quadlet files offline: a directory, a bundle (.tar.gz) or one .kat file.
///
/// Prints every problem as `FILE: FIELD.PATH: reason` and exits 1; prints a one-line
/// summary and exits 0 when everything is valid.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Quadlet directory, bundle or .kat file (repeatable).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "DIR|BUNDLE|FILE",
        required = true
    )]
    paths: Vec<PathBuf>,
}

/// Every error of every path, then a summary; exit 1 on any error.
pub fn run(args: ValidateArgs, globals: &GlobalArgs) -> ExitCode {
    let output = globals.output;
    let mut failed = 0usize;
    for path in &args.paths {
        match quadlet::load_path(path) {
            Ok(doc) => match output {
                OutputFormat::Table => println!("{}: valid {}", path.display(), doc.summary()),
                OutputFormat::Json | OutputFormat::Yaml => {
                    if let Err(e) = print_document(&doc, output) {
                        eprintln!("katcall validate: {}: cannot print: {e}", path.display());
                        failed += 1;
                    }
                }
            },
            Err(errors) => {
                for e in &errors.errors {
                    println!("{e}");
                }
                failed += errors.errors.len();
            }
        }
    }
    if failed > 0 {
        let s = if failed == 1 { "" } else { "s" };
        fail("validate", format!("{failed} error{s}"))
    } else {
        ExitCode::SUCCESS
    }
}

/// The normalised document, every default filled in, as JSON or YAML.
fn print_document(doc: &Document, output: OutputFormat) -> anyhow::Result<()> {
    let text = match (doc, output) {
        (Document::Cluster(c), OutputFormat::Json) => quadlet::to_json(c)?,
        (Document::Namespace(n), OutputFormat::Json) => quadlet::to_json(n)?,
        (Document::Quadlet(q), OutputFormat::Json) => quadlet::to_json(q)?,
        (Document::Cluster(c), _) => quadlet::to_yaml(c)?,
        (Document::Namespace(n), _) => quadlet::to_yaml(n)?,
        (Document::Quadlet(q), _) => quadlet::to_yaml(q)?,
    };
    println!("{}", text.trim_end());
    Ok(())
}
