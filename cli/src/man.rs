//! Manual pages (roff) of the binaries, made from their clap definitions, so they say
//! what `--help` says: `katcall man > katcall.1`, `man -l katcall.1`.

use std::fmt::Write as _;

/// Text as roff: backslashes and hyphens escaped, no line starting with a control
/// character.
fn roff(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.trim().is_empty() {
                return ".PP".to_owned();
            }
            let escaped = line.replace('\\', "\\e").replace('-', "\\-");
            if escaped.starts_with('.') || escaped.starts_with('\'') {
                format!("\\&{escaped}")
            } else {
                escaped
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` ending like a sentence (clap drops a doc comment's last full stop).
fn sentence(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('.') {
        text.push('.');
    }
    text
}

fn help_of(arg: &clap::Arg) -> String {
    let mut help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    help = sentence(help);
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_owned())
        .collect();
    if !values.is_empty() && arg.get_action().takes_values() {
        let _ = write!(help, " One of: {}.", values.join(", "));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() {
        let _ = write!(help, " Default: {}.", defaults.join(", "));
    }
    if let Some(env) = arg.get_env() {
        let _ = write!(help, " Environment: {}.", env.to_string_lossy());
    }
    help
}

/// `.TP` entries of `cmd`'s own arguments (positionals first), skipping hidden ones
/// and, unless `globals`, those global to every subcommand.
fn arguments(out: &mut String, cmd: &clap::Command, globals: bool) {
    let mut args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.is_global_set() == globals)
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    args.sort_by_key(|a| !a.is_positional());
    for arg in args {
        let value = arg
            .get_value_names()
            .map(|names| {
                names
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| arg.get_id().as_str().to_ascii_uppercase());
        let name = if arg.is_positional() {
            format!("\\fI{}\\fR", roff(&value))
        } else {
            let mut flags = Vec::new();
            if let Some(s) = arg.get_short() {
                flags.push(format!("\\fB\\-{s}\\fR"));
            }
            if let Some(l) = arg.get_long() {
                flags.push(format!("\\fB\\-\\-{}\\fR", roff(l)));
            }
            let takes = arg.get_action().takes_values();
            format!(
                "{}{}",
                flags.join(", "),
                if takes {
                    format!(" \\fI{}\\fR", roff(&value))
                } else {
                    String::new()
                }
            )
        };
        let help = help_of(arg);
        let _ = writeln!(out, ".TP\n{name}");
        if !help.is_empty() {
            let _ = writeln!(out, "{}", roff(&help));
        }
    }
}

/// Every subcommand below `cmd`, depth first, with its full name.
fn subcommands(out: &mut String, cmd: &clap::Command, path: &str) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{path} {}", sub.get_name());
        if sub.get_name() == "help" {
            continue;
        }
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(ToString::to_string)
            .map(sentence)
            .unwrap_or_default();
        let _ = writeln!(out, ".SS \"{}\"\n{}", roff(&name), roff(&about));
        let mut own = String::new();
        arguments(&mut own, sub, false);
        if !own.is_empty() {
            let _ = writeln!(out, ".RS\n{own}.RE");
        }
        subcommands(out, sub, &name);
    }
}

/// The manual page of `cmd` in `section`, with extra sections (title, roff body).
pub fn render(cmd: &clap::Command, section: u8, version: &str, extra: &[(&str, &str)]) -> String {
    let name = cmd.get_name();
    let about = cmd.get_about().map(ToString::to_string).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".TH {} {section} \"\" \"{name} {version}\" \"KAT\"",
        name.to_ascii_uppercase()
    );
    let _ = writeln!(
        out,
        ".SH NAME\n{} \\- {}",
        roff(name),
        roff(about.trim_end_matches('.'))
    );
    let _ = writeln!(
        out,
        ".SH SYNOPSIS\n.B {}\n[\\fIOPTIONS\\fR] \\fICOMMAND\\fR",
        roff(name)
    );
    if let Some(long) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        let _ = writeln!(out, ".SH DESCRIPTION\n{}", roff(&long.to_string()));
    }
    let mut globals = String::new();
    arguments(&mut globals, cmd, true);
    arguments(&mut globals, cmd, false);
    if !globals.is_empty() {
        let _ = write!(out, ".SH OPTIONS\n{globals}");
    }
    let _ = writeln!(out, ".SH COMMANDS");
    subcommands(&mut out, cmd, name);
    for (title, body) in extra {
        let _ = writeln!(out, ".SH {title}\n{body}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(name = "demo", about = "Do demo things.")]
    struct Demo {
        /// Where .conf files are, e.g. /etc/demo-1.
        #[arg(long, global = true, env = "DEMO_CONFIG")]
        config: Option<String>,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        /// Run it.
        Run {
            /// How many.
            #[arg(short, long, default_value = "3")]
            count: u32,
            target: String,
        },
    }

    #[test]
    fn pages_list_global_options_and_each_command_with_its_own() {
        use clap::CommandFactory;
        let page = render(&Demo::command(), 1, "1.0", &[("FILES", "none")]);
        assert!(
            page.starts_with(".TH DEMO 1 \"\" \"demo 1.0\" \"KAT\"\n"),
            "{page}"
        );
        assert!(
            page.contains(".SH NAME\ndemo \\- Do demo things\n"),
            "{page}"
        );
        assert!(
            page.contains(".TP\n\\fB\\-\\-config\\fR \\fICONFIG\\fR\nWhere .conf files are, e.g. /etc/demo\\-1. Environment: DEMO_CONFIG.\n"),
            "{page}"
        );
        assert!(
            page.contains(".SS \"demo run\"\nRun it.\n.RS\n.TP\n\\fITARGET\\fR\n"),
            "{page}"
        );
        assert!(
            page.contains(
                ".TP\n\\fB\\-c\\fR, \\fB\\-\\-count\\fR \\fICOUNT\\fR\nHow many. Default: 3.\n"
            ),
            "{page}"
        );
        assert!(page.ends_with(".SH FILES\nnone\n"), "{page}");
        // No line may start with a roff control character unless it is one.
        assert!(!page.contains("\n.conf"), "{page}");
    }

    #[test]
    fn text_starting_with_a_dot_is_not_a_request() {
        assert_eq!(
            roff(".hidden\n\nok - fine\\"),
            "\\&.hidden\n.PP\nok \\- fine\\e"
        );
    }
}
