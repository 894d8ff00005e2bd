//! `katcall` node verbs: cordon, uncordon, drain, label, taint.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use kat_proto::v1alpha1 as api;
use kat_proto::v1alpha1::TaintEffect;

use super::GlobalArgs;
use crate::OutputFormat;
use crate::output::emit;
use crate::remote::{Client, CmdError, CmdResult, remote};

/// Stop new placements on a node.
#[derive(Debug, Args)]
pub struct CordonArgs {
    node: String,
}

/// Allow placements on a node again.
#[derive(Debug, Args)]
pub struct UncordonArgs {
    node: String,
}

/// Cordon a node and move its instances away.
#[derive(Debug, Args)]
pub struct DrainArgs {
    node: String,
}

/// Set labels on a node (k=v; k= or k- removes).
#[derive(Debug, Args)]
pub struct LabelArgs {
    #[arg(value_enum)]
    kind: NodeKind,
    node: String,
    #[arg(required = true, value_name = "KEY=VALUE")]
    labels: Vec<String>,
}

/// Add or replace taints on a node (k=v:NoSchedule, k:PreferNoSchedule; k- removes).
#[derive(Debug, Args)]
pub struct TaintArgs {
    #[arg(value_enum)]
    kind: NodeKind,
    node: String,
    #[arg(required = true, value_name = "KEY=VALUE:EFFECT")]
    taints: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NodeKind {
    Node,
}

pub fn run_cordon(args: CordonArgs, globals: &GlobalArgs) -> ExitCode {
    remote(&globals.config_source(), "cordon", |client| {
        cordon(client, args.node.clone(), true, globals.output)
    })
}

pub fn run_uncordon(args: UncordonArgs, globals: &GlobalArgs) -> ExitCode {
    remote(&globals.config_source(), "uncordon", |client| {
        cordon(client, args.node.clone(), false, globals.output)
    })
}

pub fn run_drain(args: DrainArgs, globals: &GlobalArgs) -> ExitCode {
    remote(&globals.config_source(), "drain", |client| {
        drain(client, args.node.clone())
    })
}

pub fn run_label(args: LabelArgs, globals: &GlobalArgs) -> ExitCode {
    remote(&globals.config_source(), "label", |client| {
        label(client, args.node.clone(), &args.labels, globals.output)
    })
}

pub fn run_taint(args: TaintArgs, globals: &GlobalArgs) -> ExitCode {
    remote(&globals.config_source(), "taint", |client| {
        taint(client, args.node.clone(), &args.taints, globals.output)
    })
}

/// One `k=v:EFFECT`, `k:EFFECT` or `k-` (remove every taint with key k).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TaintChange {
    Set(api::Taint),
    Remove(String),
}

/// Parses a taint argument; the error names it and says the form.
fn parse_taint(text: &str) -> Result<TaintChange, String> {
    if let Some(key) = text.strip_suffix('-') {
        return Ok(TaintChange::Remove(key.to_owned()));
    }
    let (kv, effect) = text.rsplit_once(':').ok_or_else(|| {
        format!("{text:?}: expected KEY[=VALUE]:EFFECT or KEY- (e.g. gpu=true:NoSchedule)")
    })?;
    let effect = match effect.to_ascii_lowercase().replace('_', "").as_str() {
        "noschedule" => TaintEffect::NoSchedule,
        "prefernoschedule" => TaintEffect::PreferNoSchedule,
        _ => {
            return Err(format!(
                "{text:?}: effect {effect:?} must be NoSchedule or PreferNoSchedule"
            ));
        }
    };
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        return Err(format!("{text:?}: the key is empty"));
    }
    Ok(TaintChange::Set(api::Taint {
        key: key.to_owned(),
        value: value.to_owned(),
        effect: effect.into(),
    }))
}

/// `k=v` (or `k=` / `k-` to remove).
fn parse_label(text: &str) -> Result<(String, String), String> {
    if let Some(key) = text.strip_suffix('-')
        && !key.contains('=')
    {
        return Ok((key.to_owned(), String::new()));
    }
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE (KEY= or KEY- removes)"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// What a node verb prints: a line, or (`-o json|yaml`) the node as it is now.
fn done(node: &api::Node, what: &str, format: OutputFormat) -> CmdResult {
    if format != OutputFormat::Table {
        return emit(node, format);
    }
    let name = node.metadata.as_ref().map_or("", |m| m.name.as_str());
    println!("node {name} {what}");
    Ok(())
}

/// `katcall cordon NODE` (`on`) or `uncordon NODE`.
async fn cordon(mut client: Client, name: String, on: bool, format: OutputFormat) -> CmdResult {
    let request = api::GetNodeRequest { name };
    let node = if on {
        client.cordon_node(request).await
    } else {
        client.uncordon_node(request).await
    }
    .map_err(CmdError::from)?
    .into_inner();
    done(&node, if on { "cordoned" } else { "uncordoned" }, format)
}

/// `katcall drain NODE`: follows the drain until the node is empty; Ctrl-C leaves it
/// draining (and cordoned), which `uncordon` ends.
async fn drain(mut client: Client, name: String) -> CmdResult {
    let mut stream = client
        .drain_node(api::GetNodeRequest { name })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    while let Some(p) = stream.message().await.map_err(CmdError::from)? {
        eprintln!("{}", p.message);
        if p.done {
            return Ok(());
        }
    }
    Err("the drain stream ended early; the node stays draining".into())
}

/// `katcall label node NODE KEY=VALUE...`.
async fn label(
    mut client: Client,
    name: String,
    args: &[String],
    format: OutputFormat,
) -> CmdResult {
    let mut labels = BTreeMap::new();
    for a in args {
        let (k, v) = parse_label(a)?;
        labels.insert(k, v);
    }
    let node = client
        .set_node_labels(api::SetNodeLabelsRequest { name, labels })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    done(&node, "labeled", format)
}

/// `katcall taint node NODE KEY=VALUE:EFFECT...`: the node's taints with these
/// changes made.
async fn taint(
    mut client: Client,
    name: String,
    args: &[String],
    format: OutputFormat,
) -> CmdResult {
    let parsed: Vec<TaintChange> = args
        .iter()
        .map(|a| parse_taint(a))
        .collect::<Result<_, _>>()?;
    let node = client
        .get_node(api::GetNodeRequest { name: name.clone() })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    let mut taints = node.spec.map(|s| s.taints).unwrap_or_default();
    for p in parsed {
        match p {
            TaintChange::Remove(key) => taints.retain(|t| t.key != key),
            TaintChange::Set(t) => {
                taints.retain(|old| !(old.key == t.key && old.effect == t.effect));
                taints.push(t);
            }
        }
    }
    let node = client
        .set_node_taints(api::SetNodeTaintsRequest { name, taints })
        .await
        .map_err(CmdError::from)?
        .into_inner();
    done(&node, "tainted", format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_arguments_parse() {
        assert_eq!(
            parse_taint("gpu=true:NoSchedule"),
            Ok(TaintChange::Set(api::Taint {
                key: "gpu".into(),
                value: "true".into(),
                effect: TaintEffect::NoSchedule.into(),
            }))
        );
        assert!(matches!(
            parse_taint("spot:PREFER_NO_SCHEDULE"),
            Ok(TaintChange::Set(t)) if t.key == "spot" && t.effect() == TaintEffect::PreferNoSchedule
        ));
        assert_eq!(parse_taint("gpu-"), Ok(TaintChange::Remove("gpu".into())));
        assert!(parse_taint("gpu").is_err());
        assert!(parse_taint("gpu:Sometimes").is_err());
        assert!(parse_taint("=x:NoSchedule").is_err());
    }

    #[test]
    fn label_arguments_parse() {
        assert_eq!(
            parse_label("disktype=ssd"),
            Ok(("disktype".into(), "ssd".into()))
        );
        assert_eq!(
            parse_label("disktype="),
            Ok(("disktype".into(), String::new()))
        );
        assert_eq!(
            parse_label("disktype-"),
            Ok(("disktype".into(), String::new()))
        );
        assert!(parse_label("disktype").is_err());
    }
}
