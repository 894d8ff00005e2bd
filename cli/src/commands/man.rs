//! `katcall man`: katcall's manual page, section 1, made from its clap definition by
//! [`crate::man::render`], with what `--help` cannot say (files, exit status).

use std::process::ExitCode;

use clap::Args;

/// Print this manual page (roff): katcall man > katcall.1; man -l katcall.1
#[derive(Debug, Args)]
pub struct ManArgs {}

/// Prints the page of `cli`, katcall's whole command line.
pub fn run(_args: ManArgs, cli: &clap::Command) -> ExitCode {
    print!(
        "{}",
        crate::man::render(
            cli,
            1,
            kat_proto::VERSION,
            &[
                (
                    "FILES",
                    ".TP\n\\fI~/.config/kat/config\\fR\nServer URL, CA certificate and token (contexts for several clusters).\n\
                     .TP\n\\fISTATE_DIR/katcall.yaml\\fR\nThe admin configuration \\fBkat\\-agent init\\fR writes (mode 0600).",
                ),
                (
                    "EXIT STATUS",
                    "0 on success; 1 with a one\\-line error on stderr; 2 for bad arguments; \\fBexec\\fR exits with the command's status.",
                ),
                ("SEE ALSO", "\\fBkat\\-agent\\fR(8)"),
            ],
        )
    );
    ExitCode::SUCCESS
}
