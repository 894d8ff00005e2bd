//! Operator verbs on nodes (SPEC §10, §11): cordon, uncordon, drain, labels, taints.
//! Each is one fenced transaction on the node's registration (compared against the
//! version read) with an event; the scheduler acts on the result (cordoned: no new
//! instances; draining: its instances are replaced elsewhere).

use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::{DrainProgress, EventSeverity, Node, TaintEffect};
use prost::Message;
use tonic::Status;

use super::node_api::{NodeApiContext, node_key};
use crate::leader::node_monitor::node_event;
use crate::store::{Compare, Txn, TxnOp};

fn unavailable(e: crate::store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

/// A node's registration with the stored key-value (for its revision).
async fn read_node(
    ctx: &NodeApiContext,
    name: &str,
) -> Result<(Node, crate::store::KeyValue), Status> {
    let kv = ctx
        .store
        .get(&node_key(name))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("node {name:?} not found")))?;
    let node = Node::decode(kv.value.as_slice())
        .map_err(|e| Status::internal(format!("node {name:?}: unreadable record: {e}")))?;
    Ok((node, kv))
}

/// Changes node `name`'s registration with `change` and records `reason`; returns the
/// node as users see it.
pub async fn update_node(
    ctx: &NodeApiContext,
    name: &str,
    reason: &str,
    change: impl Fn(&mut Node) -> Result<String, Status>,
    now: SystemTime,
) -> Result<Node, Status> {
    let key = node_key(name);
    for _ in 0..3 {
        let (mut node, kv) = read_node(ctx, name).await?;
        let message = change(&mut node)?;
        let (event_key, event) = node_event(name, reason, EventSeverity::Normal, message, now);
        let lease = ctx.events.get(ctx.store.as_ref()).await;
        let txn = Txn::new()
            .when([
                ctx.leader.fence(),
                Compare::unchanged(&key, kv.mod_revision),
            ])
            .and_then([
                TxnOp::put(&key, node.encode_to_vec()),
                TxnOp::put_leased(event_key, event.encode_to_vec(), lease),
            ]);
        if ctx.store.txn(txn).await.map_err(unavailable)?.succeeded {
            tracing::info!(node = %name, %reason, "node changed");
            return super::user_api::get_node(ctx.store.as_ref(), name).await;
        }
    }
    Err(Status::aborted(format!(
        "node {name:?} kept changing (or this member stopped leading); try again"
    )))
}

/// Removes a node that runs nothing (drain it first): its registration, its status
/// and its instances' reported status, in one fenced transaction with an event.
/// Control-plane members are refused (they are etcd members; removing those is not
/// built). A removed node's heartbeats are refused from then on; it can join again
/// with a new token and a fresh state directory.
pub async fn delete_node(ctx: &NodeApiContext, name: &str, now: SystemTime) -> Result<(), Status> {
    let key = node_key(name);
    let (node, kv) = read_node(ctx, name).await?;
    if node
        .spec
        .as_ref()
        .is_some_and(|s| s.role() == kat_proto::v1alpha1::NodeRole::ControlPlane)
    {
        return Err(Status::failed_precondition(format!(
            "node {name} is a control-plane member (it hosts an etcd member); removing members is not supported in this build"
        )));
    }
    let running = super::workloads::list_instances(ctx.store.as_ref(), "", "", name).await?;
    if !running.is_empty() {
        return Err(Status::failed_precondition(format!(
            "node {name} still has {} instance(s); drain it first (katcall drain {name})",
            running.len()
        )));
    }
    let (reported, _) = ctx
        .store
        .list(&format!(
            "{}{name}/",
            super::workloads::INSTANCE_STATUS_PREFIX
        ))
        .await
        .map_err(unavailable)?;
    let (event_key, event) = node_event(
        name,
        "NodeDeleted",
        EventSeverity::Normal,
        "removed from the cluster".to_owned(),
        now,
    );
    let lease = ctx.events.get(ctx.store.as_ref()).await;
    let mut ops = vec![
        TxnOp::delete(&key),
        TxnOp::delete(super::node_api::node_status_key(name)),
        TxnOp::put_leased(event_key, event.encode_to_vec(), lease),
    ];
    ops.extend(reported.into_iter().map(|kv| TxnOp::delete(kv.key)));
    let txn = Txn::new()
        .when([
            ctx.leader.fence(),
            Compare::unchanged(&key, kv.mod_revision),
        ])
        .and_then(ops);
    if !ctx.store.txn(txn).await.map_err(unavailable)?.succeeded {
        return Err(Status::aborted(format!(
            "node {name:?} changed meanwhile (or this member stopped leading); try again"
        )));
    }
    tracing::info!(node = %name, "node deleted");
    Ok(())
}

/// A label key or value problem, if any: keys are 1–63 characters of letters, digits,
/// `-`, `_`, `.` (optionally after a `prefix/`); values at most 63 of the same.
pub fn label_problem(key: &str, value: &str) -> Option<String> {
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let name = key.rsplit('/').next().unwrap_or(key);
    let prefix = key.strip_suffix(name).map(|p| p.trim_end_matches('/'));
    if name.is_empty() || name.len() > 63 || !ok(name) {
        return Some(format!(
            "label key {key:?}: 1-63 letters, digits, '-', '_' or '.' (after an optional prefix/)"
        ));
    }
    if let Some(p) = prefix
        && (p.len() > 253 || !ok(p))
    {
        return Some(format!("label key {key:?}: bad prefix {p:?}"));
    }
    if value.len() > 63 || !ok(value) {
        return Some(format!(
            "label {key:?}: value {value:?} must be at most 63 letters, digits, '-', '_' or '.'"
        ));
    }
    None
}

/// Applies label changes (an empty value removes the key).
pub fn set_labels(
    node: &mut Node,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<String, Status> {
    for (k, v) in labels {
        if let Some(problem) = label_problem(k, v) {
            return Err(Status::invalid_argument(problem));
        }
    }
    let meta = node.metadata.get_or_insert_with(Default::default);
    let mut changed = Vec::new();
    let mut keys: Vec<&String> = labels.keys().collect();
    keys.sort();
    for k in keys {
        let v = &labels[k];
        if v.is_empty() {
            meta.labels.remove(k);
            changed.push(format!("{k}-"));
        } else {
            meta.labels.insert(k.clone(), v.clone());
            changed.push(format!("{k}={v}"));
        }
    }
    Ok(format!("labels: {}", changed.join(", ")))
}

/// Replaces the taint list.
pub fn set_taints(
    node: &mut Node,
    taints: &[kat_proto::v1alpha1::Taint],
) -> Result<String, Status> {
    for (i, t) in taints.iter().enumerate() {
        if let Some(problem) = label_problem(&t.key, &t.value) {
            return Err(Status::invalid_argument(format!("taints[{i}]: {problem}")));
        }
        if !matches!(
            t.effect(),
            TaintEffect::NoSchedule | TaintEffect::PreferNoSchedule
        ) {
            return Err(Status::invalid_argument(format!(
                "taints[{i}].effect: must be NO_SCHEDULE or PREFER_NO_SCHEDULE"
            )));
        }
    }
    node.spec.get_or_insert_with(Default::default).taints = taints.to_vec();
    let shown: Vec<String> = taints
        .iter()
        .map(|t| {
            let effect = if t.effect() == TaintEffect::PreferNoSchedule {
                "PreferNoSchedule"
            } else {
                "NoSchedule"
            };
            if t.value.is_empty() {
                format!("{}:{effect}", t.key)
            } else {
                format!("{}={}:{effect}", t.key, t.value)
            }
        })
        .collect();
    Ok(if shown.is_empty() {
        "taints removed".to_owned()
    } else {
        format!("taints: {}", shown.join(", "))
    })
}

/// How many instances are still placed on `node`.
async fn instances_on(ctx: &NodeApiContext, node: &str) -> Result<u32, Status> {
    let list = super::workloads::list_instances(ctx.store.as_ref(), "", "", node).await?;
    Ok(u32::try_from(list.len()).unwrap_or(u32::MAX))
}

/// Drains `node`: marks it draining (and so cordoned; the scheduler moves its
/// instances), then reports progress until none is left there or `limit` passes.
pub async fn drain(
    ctx: NodeApiContext,
    name: String,
    limit: Duration,
) -> Result<tokio::sync::mpsc::Receiver<Result<DrainProgress, Status>>, Status> {
    update_node(
        &ctx,
        &name,
        "NodeDraining",
        |n| {
            let spec = n.spec.get_or_insert_with(Default::default);
            spec.unschedulable = true;
            spec.draining = true;
            Ok("draining: its instances move to other nodes".to_owned())
        },
        SystemTime::now(),
    )
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let first = instances_on(&ctx, &name).await.unwrap_or(0);
        let mut last = None;
        loop {
            let remaining = match instances_on(&ctx, &name).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let done = remaining == 0;
            if last != Some(remaining) || done {
                let progress = DrainProgress {
                    remaining,
                    moved: first.saturating_sub(remaining),
                    message: if done {
                        format!("node {name} drained")
                    } else {
                        format!("{remaining} instance(s) still on {name}")
                    },
                    done,
                };
                if tx.send(Ok(progress)).await.is_err() || done {
                    return;
                }
                last = Some(remaining);
            }
            if started.elapsed() > limit {
                let _ = tx
                    .send(Err(Status::deadline_exceeded(format!(
                        "{remaining} instance(s) still on {name} after {limit:?}; the node stays draining"
                    ))))
                    .await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_and_empty_values_remove() {
        assert_eq!(label_problem("disktype", "ssd"), None);
        assert_eq!(label_problem("kat.dws.rip/zone", "a-1"), None);
        assert!(label_problem("", "x").is_some());
        assert!(label_problem("bad key", "x").is_some());
        assert!(label_problem("k", "white space").is_some());
        assert!(label_problem(&"k".repeat(64), "").is_some());
        let mut node = Node::default();
        let set = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        set_labels(&mut node, &set(&[("a", "1"), ("b", "2")])).unwrap();
        let msg = set_labels(&mut node, &set(&[("a", "")])).unwrap();
        assert_eq!(msg, "labels: a-");
        let labels = &node.metadata.as_ref().unwrap().labels;
        assert_eq!(labels.len(), 1);
        assert_eq!(labels["b"], "2");
        assert!(set_labels(&mut node, &set(&[("x y", "1")])).is_err());
    }

    #[test]
    fn taints_need_a_key_and_an_effect() {
        use kat_proto::v1alpha1::Taint;
        let mut node = Node::default();
        let taint = |k: &str, v: &str, e: TaintEffect| Taint {
            key: k.into(),
            value: v.into(),
            effect: e.into(),
        };
        let msg = set_taints(&mut node, &[taint("gpu", "", TaintEffect::NoSchedule)]).unwrap();
        assert_eq!(msg, "taints: gpu:NoSchedule");
        assert!(set_taints(&mut node, &[taint("gpu", "", TaintEffect::Unspecified)]).is_err());
        assert!(set_taints(&mut node, &[taint("", "", TaintEffect::NoSchedule)]).is_err());
        assert_eq!(set_taints(&mut node, &[]).unwrap(), "taints removed");
    }
}
