//! Nodes in the store: registrations (`/kat/nodes/<name>`) and reported status
//! (`/kat/status/nodes/<name>`), the node as users see it, and the operator verbs
//! (SPEC §10, §11: cordon, uncordon, drain, labels, taints, delete), each one fenced
//! transaction on the registration (compared against the version read) with an event.
//! The scheduler acts on the result (cordoned: no new instances; draining: its
//! instances are replaced elsewhere).

use std::time::SystemTime;

use kat_proto::v1alpha1::{EventSeverity, Node, NodeRole, NodeState, NodeStatus, TaintEffect};
use prost::Message;

use super::error::{StateError, StateResult};
use super::events::node_event;
use super::keys;
use super::leadership::Leadership;
use crate::store::{Compare, KeyValue, StateStore, TxnOp};

/// A node as users see it: its registration with its last reported status. A node
/// that never reported is NotReady.
pub fn node_view(mut node: Node, status: Option<NodeStatus>) -> Node {
    let mut status = status.unwrap_or_else(|| NodeStatus {
        state: NodeState::NotReady.into(),
        ..Default::default()
    });
    if let Some(spec) = &node.spec {
        // Operator verbs outrank a healthy heartbeat in what is shown.
        if status.state() == NodeState::Ready {
            if spec.draining {
                status.set_state(NodeState::Draining);
            } else if spec.unschedulable {
                status.set_state(NodeState::Cordoned);
            }
        }
    }
    node.status = Some(status);
    node
}

fn name_of(node: &Node) -> &str {
    node.metadata.as_ref().map_or("", |m| m.name.as_str())
}

/// Every registered node (without status).
pub async fn registrations(store: &dyn StateStore) -> StateResult<(Vec<Node>, i64)> {
    let (kvs, revision) = store.list(keys::NODES_PREFIX).await?;
    let nodes = kvs
        .iter()
        .filter_map(|kv| Node::decode(kv.value.as_slice()).ok())
        .collect();
    Ok((nodes, revision))
}

/// Every registered node with its status, by name.
pub async fn list(store: &dyn StateStore) -> StateResult<Vec<Node>> {
    let (registrations, _) = store.list(keys::NODES_PREFIX).await?;
    let (statuses, _) = store.list(keys::NODE_STATUS_PREFIX).await?;
    let mut nodes = Vec::new();
    for kv in registrations {
        let Ok(node) = Node::decode(kv.value.as_slice()) else {
            continue;
        };
        let name = kv.key.trim_start_matches(keys::NODES_PREFIX);
        let status = statuses
            .iter()
            .find(|s| s.key == keys::node_status(name))
            .and_then(|s| NodeStatus::decode(s.value.as_slice()).ok());
        nodes.push(node_view(node, status));
    }
    nodes.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    Ok(nodes)
}

/// A node's registration with the stored key-value (for its revision).
pub async fn read(store: &dyn StateStore, name: &str) -> StateResult<(Node, KeyValue)> {
    let kv = store
        .get(&keys::node(name))
        .await?
        .ok_or_else(|| StateError::NotFound(format!("node {name:?} not found")))?;
    let node = Node::decode(kv.value.as_slice())
        .map_err(|e| StateError::Internal(format!("node {name:?}: unreadable record: {e}")))?;
    Ok((node, kv))
}

/// Whether a node of that name is registered.
pub async fn exists(store: &dyn StateStore, name: &str) -> StateResult<bool> {
    Ok(store.get(&keys::node(name)).await?.is_some())
}

/// One node with its status.
pub async fn get(store: &dyn StateStore, name: &str) -> StateResult<Node> {
    let (node, _) = read(store, name).await?;
    let status = store
        .get(&keys::node_status(name))
        .await?
        .and_then(|kv| NodeStatus::decode(kv.value.as_slice()).ok());
    Ok(node_view(node, status))
}

/// Changes node `name`'s registration with `change` (which returns the event's
/// message) and records `reason`; returns the node as users see it.
pub async fn update(
    leadership: &Leadership,
    name: &str,
    reason: &str,
    change: impl Fn(&mut Node) -> StateResult<String>,
    now: SystemTime,
) -> StateResult<Node> {
    let key = keys::node(name);
    for _ in 0..3 {
        let (mut node, kv) = read(leadership.store(), name).await?;
        let message = change(&mut node)?;
        let event = node_event(name, reason, EventSeverity::Normal, message, now);
        let ops = [
            TxnOp::put(&key, node.encode_to_vec()),
            leadership.event_op(event).await,
        ];
        if leadership
            .commit([Compare::unchanged(&key, kv.mod_revision)], ops)
            .await?
        {
            tracing::info!(node = %name, %reason, "node changed");
            return get(leadership.store(), name).await;
        }
    }
    Err(StateError::Conflict(format!(
        "node {name:?} kept changing; try again"
    )))
}

/// Removes a node that runs nothing (drain it first): its registration, its status
/// and its instances' reported status, in one fenced transaction with an event.
/// Control-plane members are refused (they are etcd members; removing those is not
/// built). A removed node's heartbeats are refused from then on; it can join again
/// with a new token and a fresh state directory.
pub async fn delete(leadership: &Leadership, name: &str, now: SystemTime) -> StateResult<()> {
    let key = keys::node(name);
    let (node, kv) = read(leadership.store(), name).await?;
    if node
        .spec
        .as_ref()
        .is_some_and(|s| s.role() == NodeRole::ControlPlane)
    {
        return Err(StateError::Precondition(format!(
            "node {name} is a control-plane member (it hosts an etcd member); removing members is not supported in this build"
        )));
    }
    // Instances kept on a lost node (replaced elsewhere) go with it.
    let (lost, running): (Vec<_>, Vec<_>) =
        super::instances::list(leadership.store(), "", "", name)
            .await?
            .into_iter()
            .partition(|i| i.node_lost);
    if !running.is_empty() {
        return Err(StateError::Precondition(format!(
            "node {name} still has {} instance(s); drain it first (katcall drain {name})",
            running.len()
        )));
    }
    let (reported, _) = leadership
        .store()
        .list(&keys::instance_statuses_on(name))
        .await?;
    let event = node_event(
        name,
        "NodeDeleted",
        EventSeverity::Normal,
        "removed from the cluster".to_owned(),
        now,
    );
    let mut ops = vec![
        TxnOp::delete(&key),
        TxnOp::delete(keys::node_status(name)),
        leadership.event_op(event).await,
    ];
    ops.extend(reported.into_iter().map(|kv| TxnOp::delete(kv.key)));
    ops.extend(
        lost.iter()
            .map(|i| TxnOp::delete(keys::instance(&i.namespace, &i.workload, &i.id))),
    );
    if !leadership
        .commit([Compare::unchanged(&key, kv.mod_revision)], ops)
        .await?
    {
        return Err(StateError::Conflict(format!(
            "node {name:?} changed meanwhile; try again"
        )));
    }
    leadership.liveness.forget(name);
    tracing::info!(node = %name, "node deleted");
    Ok(())
}

/// How many instances are placed on `node` and counted (not those kept there while it
/// was lost).
pub async fn instances_on(store: &dyn StateStore, node: &str) -> StateResult<u32> {
    let list = super::instances::list(store, "", "", node).await?;
    let counted = list.iter().filter(|i| !i.node_lost).count();
    Ok(u32::try_from(counted).unwrap_or(u32::MAX))
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

/// Applies label changes (an empty value removes the key); returns the event message.
pub fn set_labels(
    node: &mut Node,
    labels: &std::collections::BTreeMap<String, String>,
) -> StateResult<String> {
    for (k, v) in labels {
        if let Some(problem) = label_problem(k, v) {
            return Err(StateError::BadRequest(problem));
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

/// Replaces the taint list; returns the event message.
pub fn set_taints(node: &mut Node, taints: &[kat_proto::v1alpha1::Taint]) -> StateResult<String> {
    for (i, t) in taints.iter().enumerate() {
        if let Some(problem) = label_problem(&t.key, &t.value) {
            return Err(StateError::invalid(format!("taints[{i}]"), problem));
        }
        if !matches!(
            t.effect(),
            TaintEffect::NoSchedule | TaintEffect::PreferNoSchedule
        ) {
            return Err(StateError::invalid(
                format!("taints[{i}].effect"),
                "must be NO_SCHEDULE or PREFER_NO_SCHEDULE",
            ));
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

/// Cordon: no new instances.
pub fn cordon(node: &mut Node) -> StateResult<String> {
    node.spec.get_or_insert_with(Default::default).unschedulable = true;
    Ok("cordoned: no new instances".to_owned())
}

/// Uncordon: schedulable again (and no longer draining).
pub fn uncordon(node: &mut Node) -> StateResult<String> {
    let spec = node.spec.get_or_insert_with(Default::default);
    spec.unschedulable = false;
    spec.draining = false;
    Ok("uncordoned: schedulable again".to_owned())
}

/// Drain: cordoned, and its instances move to other nodes.
pub fn start_draining(node: &mut Node) -> StateResult<String> {
    let spec = node.spec.get_or_insert_with(Default::default);
    spec.unschedulable = true;
    spec.draining = true;
    Ok("draining: its instances move to other nodes".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test
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
