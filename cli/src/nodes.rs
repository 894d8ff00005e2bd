//! `katcall` node verbs: cordon, uncordon, drain, label, taint.

use std::collections::BTreeMap;

use kat_proto::v1alpha1 as api;
use kat_proto::v1alpha1::TaintEffect;

use crate::OutputFormat;
use crate::remote::{Client, CmdError, CmdResult};

/// One `k=v:EFFECT`, `k:EFFECT` or `k-` (remove every taint with key k).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaintArg {
    Set(api::Taint),
    Remove(String),
}

/// Parses a taint argument; the error names it and says the form.
pub fn parse_taint(text: &str) -> Result<TaintArg, String> {
    if let Some(key) = text.strip_suffix('-') {
        return Ok(TaintArg::Remove(key.to_owned()));
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
    Ok(TaintArg::Set(api::Taint {
        key: key.to_owned(),
        value: value.to_owned(),
        effect: effect.into(),
    }))
}

/// `k=v` (or `k=` / `k-` to remove).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
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
    if format == OutputFormat::Table {
        let name = node.metadata.as_ref().map_or("", |m| m.name.as_str());
        println!("node {name} {what}");
    } else {
        print!("{}", crate::output::encode(node, format)?);
    }
    Ok(())
}

pub async fn cordon(mut client: Client, name: String, on: bool, format: OutputFormat) -> CmdResult {
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
pub async fn drain(mut client: Client, name: String) -> CmdResult {
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

pub async fn label(
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

pub async fn taint(
    mut client: Client,
    name: String,
    args: &[String],
    format: OutputFormat,
) -> CmdResult {
    let parsed: Vec<TaintArg> = args
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
            TaintArg::Remove(key) => taints.retain(|t| t.key != key),
            TaintArg::Set(t) => {
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
            Ok(TaintArg::Set(api::Taint {
                key: "gpu".into(),
                value: "true".into(),
                effect: TaintEffect::NoSchedule.into(),
            }))
        );
        assert!(matches!(
            parse_taint("spot:PREFER_NO_SCHEDULE"),
            Ok(TaintArg::Set(t)) if t.key == "spot" && t.effect() == TaintEffect::PreferNoSchedule
        ));
        assert_eq!(parse_taint("gpu-"), Ok(TaintArg::Remove("gpu".into())));
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
