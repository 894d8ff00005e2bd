//! Instances in the store: placements and desired state (`/kat/instances/<ns>/<wl>/<id>`,
//! written by the scheduler) and what their nodes report (`/kat/status/instances/
//! <node>/<id>`, written with heartbeats). Reads join the two; the heartbeat's writes
//! and the events a status change makes (SPEC §12) are built here.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::instance_status::Health;
use kat_proto::v1alpha1::{
    Assignment, AssignmentSet, DesiredState, EventSeverity, Instance, InstancePhase,
    InstanceReport, InstanceStatus,
};
use prost::Message;

use super::error::{StateError, StateResult};
use super::events::{EventRecord, workload_event};
use super::keys;
use crate::store::{StateStore, TxnOp};

/// Instances (filtered by namespace, workload, node; empty: any), each with the status
/// its node last reported (or, before that, the scheduler's: Pending with a reason).
pub async fn list(
    store: &dyn StateStore,
    ns: &str,
    workload: &str,
    node: &str,
) -> StateResult<Vec<Instance>> {
    let prefix = match (ns.is_empty(), workload.is_empty()) {
        (true, _) => keys::INSTANCES_PREFIX.to_owned(),
        (false, true) => format!("{}{ns}/", keys::INSTANCES_PREFIX),
        (false, false) => keys::instances_of(ns, workload),
    };
    let (kvs, _) = store.list(&prefix).await?;
    let status_prefix = if node.is_empty() {
        keys::INSTANCE_STATUS_PREFIX.to_owned()
    } else {
        keys::instance_statuses_on(node)
    };
    let (statuses, _) = store.list(&status_prefix).await?;
    let reported: HashMap<&str, InstanceStatus> = statuses
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key.as_str(),
                InstanceStatus::decode(kv.value.as_slice()).ok()?,
            ))
        })
        .collect();
    let mut out: Vec<Instance> = kvs
        .iter()
        .filter_map(|kv| Instance::decode(kv.value.as_slice()).ok())
        .filter(|i| workload.is_empty() || i.workload == workload)
        .filter(|i| node.is_empty() || i.node == node)
        .map(|mut i| {
            if !i.node.is_empty()
                && let Some(s) = reported.get(keys::instance_status(&i.node, &i.id).as_str())
            {
                i.status = Some(s.clone());
            }
            i
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.workload, &a.id).cmp(&(&b.namespace, &b.workload, &b.id)));
    Ok(out)
}

/// The instance a request names: by namespace, workload and ID, or — with no
/// workload — by ID alone within the namespace (all namespaces when that is empty).
pub async fn find(
    store: &dyn StateStore,
    ns: &str,
    workload: &str,
    id: &str,
) -> StateResult<Instance> {
    if id.is_empty() {
        return Err(StateError::invalid("instanceId", "must not be empty"));
    }
    let found: Vec<Instance> = list(store, ns, workload, "")
        .await?
        .into_iter()
        .filter(|i| i.id == id)
        .collect();
    let scope = match (ns.is_empty(), workload.is_empty()) {
        (true, _) => "any namespace".to_owned(),
        (false, true) => format!("namespace {ns}"),
        (false, false) => format!("workload {ns}/{workload}"),
    };
    match found.as_slice() {
        [] => Err(StateError::NotFound(format!(
            "no instance {id} in {scope} (katcall get instances lists them)"
        ))),
        [one] => Ok(one.clone()),
        _ => Err(StateError::Precondition(format!(
            "instance ID {id} is in several workloads; name the workload too"
        ))),
    }
}

/// The instances assigned to `node` (placed there, to run), each with the Quadlet of
/// its generation, by instance ID; and the store revision they were read at.
pub async fn assignments_for(
    store: &dyn StateStore,
    node: &str,
) -> StateResult<(AssignmentSet, i64)> {
    let (kvs, revision) = store.list(keys::INSTANCES_PREFIX).await?;
    let mut mine: Vec<Instance> = kvs
        .iter()
        .filter_map(|kv| Instance::decode(kv.value.as_slice()).ok())
        .filter(|i| i.node == node && i.desired_state() != DesiredState::Stop)
        .collect();
    mine.sort_by(|a, b| a.id.cmp(&b.id));
    let mut quadlets: HashMap<String, Vec<u8>> = HashMap::new();
    let mut assignments = Vec::new();
    for mut instance in mine {
        let key = keys::revision(&instance.namespace, &instance.workload, instance.generation);
        if !quadlets.contains_key(&key) {
            let Some(kv) = store.get(&key).await? else {
                // The generation is gone (the workload was deleted meanwhile).
                continue;
            };
            quadlets.insert(key.clone(), kv.value);
        }
        // The agent reports status; the leader's view of it is not part of the order.
        instance.status = None;
        assignments.push(Assignment {
            instance: Some(instance),
            quadlet: quadlets.get(&key).cloned().unwrap_or_default(),
        });
    }
    Ok((AssignmentSet { assignments }, revision))
}

/// The events a changed instance status makes (SPEC §12): started, failed, restarted,
/// unhealthy — each under the instance's workload, so `describe workload` shows them.
fn status_events(
    node: &str,
    report: &InstanceReport,
    old: Option<&InstanceStatus>,
) -> Vec<(&'static str, EventSeverity, String)> {
    let new = report.status.clone().unwrap_or_default();
    let default = InstanceStatus::default();
    let old = old.unwrap_or(&default);
    let id = &report.id;
    let mut events = Vec::new();
    let became = |phase: InstancePhase| new.phase() == phase && old.phase() != phase;
    if became(InstancePhase::Running) {
        events.push((
            "InstanceStarted",
            EventSeverity::Normal,
            format!("instance {id} running on {node}"),
        ));
    }
    if became(InstancePhase::Failed) {
        let why = [new.reason.as_str(), new.message.as_str()]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        let mut message = format!("instance {id} on {node} failed");
        if new.exit_code != 0 {
            message.push_str(&format!(" (exit code {})", new.exit_code));
        }
        if !why.is_empty() {
            message.push_str(&format!(": {why}"));
        }
        events.push(("InstanceFailed", EventSeverity::Warning, message));
    }
    if new.restarts > old.restarts {
        let mut message = format!(
            "instance {id} on {node} restarted ({} restarts)",
            new.restarts
        );
        // The node's account of why (the unit's state and Podman's last complaint).
        if !new.message.is_empty() {
            message.push_str(&format!(": {}", new.message));
        }
        events.push(("InstanceRestarted", EventSeverity::Warning, message));
    }
    if new.health() == Health::Unhealthy && old.health() != Health::Unhealthy {
        events.push((
            "InstanceUnhealthy",
            EventSeverity::Warning,
            format!("instance {id} on {node} failed its health check"),
        ));
    }
    events
}

/// Whether the instance `report` names was placed on `node` (a node reports, and makes
/// events, only for its own instances).
async fn placed_on(
    store: &dyn StateStore,
    node: &str,
    report: &InstanceReport,
) -> StateResult<bool> {
    let names = [&report.namespace, &report.workload];
    if names
        .iter()
        .any(|n| kat_proto::names::dns_label_problem(n).is_some())
    {
        return Ok(false);
    }
    let key = keys::instance(&report.namespace, &report.workload, &report.id);
    Ok(store
        .get(&key)
        .await?
        .and_then(|kv| Instance::decode(kv.value.as_slice()).ok())
        .is_some_and(|i| i.node == node))
}

/// The writes that make `/kat/status/instances/<node>/` what the node reports:
/// changed statuses put, statuses of instances it no longer has deleted; and the
/// events the changes make. A changed report is taken only for an instance placed
/// on `node` (or, without namespace and workload, one whose status is already kept):
/// a node cannot fill the store with statuses, or other workloads with events, for
/// instances that are not its own.
pub async fn report_ops(
    store: &dyn StateStore,
    node: &str,
    reports: &[InstanceReport],
    now: SystemTime,
) -> StateResult<(Vec<TxnOp>, Vec<EventRecord>)> {
    let (stored, _) = store.list(&keys::instance_statuses_on(node)).await?;
    let stored: HashMap<String, Vec<u8>> =
        stored.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let mut ops = Vec::new();
    let mut events = Vec::new();
    let mut reported = HashSet::new();
    for r in reports {
        // IDs become key segments: anything but a DNS label is not ours.
        if kat_proto::names::dns_label_problem(&r.id).is_some() {
            continue;
        }
        let key = keys::instance_status(node, &r.id);
        let value = r.status.clone().unwrap_or_default().encode_to_vec();
        if stored.get(&key) != Some(&value) {
            // A report without namespace and workload (an instance the node is
            // retiring) may update a status already taken, never start one.
            let unnamed = r.namespace.is_empty() && r.workload.is_empty();
            if unnamed && !stored.contains_key(&key) {
                continue;
            }
            if !unnamed && !placed_on(store, node, r).await? {
                continue;
            }
            if !unnamed {
                let old = stored
                    .get(&key)
                    .and_then(|v| InstanceStatus::decode(v.as_slice()).ok());
                for (reason, severity, message) in status_events(node, r, old.as_ref()) {
                    // Distinct times, so events of one heartbeat get distinct keys.
                    let at = now + Duration::from_nanos(events.len() as u64);
                    events.push(workload_event(
                        &r.namespace,
                        &r.workload,
                        reason,
                        severity,
                        message,
                        at,
                    ));
                }
            }
            ops.push(TxnOp::put(&key, value));
        }
        reported.insert(key);
    }
    for key in stored.keys() {
        if !reported.contains(key) {
            ops.push(TxnOp::delete(key));
        }
    }
    Ok((ops, events))
}

/// Running, and healthy where a health check says so.
pub fn ready(i: &Instance) -> bool {
    !i.node_lost
        && i.status.as_ref().is_some_and(|s| {
            s.phase() == InstancePhase::Running
                && !matches!(s.health(), Health::Starting | Health::Unhealthy)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_node_reports_only_for_instances_placed_on_it() {
        let store = MemoryStore::new();
        let instance = Instance {
            id: "a1".to_owned(),
            namespace: "default".to_owned(),
            workload: "web".to_owned(),
            node: "n1".to_owned(),
            ..Default::default()
        };
        store
            .put(
                &keys::instance("default", "web", "a1"),
                instance.encode_to_vec(),
                None,
            )
            .await
            .unwrap();
        let report = |id: &str, ns: &str| InstanceReport {
            id: id.to_owned(),
            namespace: ns.to_owned(),
            workload: "web".to_owned(),
            status: Some(InstanceStatus {
                phase: InstancePhase::Running.into(),
                ..Default::default()
            }),
        };
        let now = SystemTime::now();
        // n2 reports n1's instance, one that does not exist, and a bad namespace.
        let (ops, events) = report_ops(
            &store,
            "n2",
            &[
                report("a1", "default"),
                report("zz", "default"),
                report("a1", "a/b"),
            ],
            now,
        )
        .await
        .unwrap();
        assert!(ops.is_empty() && events.is_empty(), "{} ops", ops.len());
        // n1 reports its own: a status and a started event.
        let (ops, events) = report_ops(&store, "n1", &[report("a1", "default")], now)
            .await
            .unwrap();
        assert_eq!(ops.len(), 1);
        assert!(!events.is_empty());
        // Retiring it, n1 reports it without names: the kept status is updated (no
        // events); an unnamed report of an unknown ID starts nothing.
        let key = keys::instance_status("n1", "a1");
        store.put(&key, b"old".to_vec(), None).await.unwrap();
        let mut unnamed = report("a1", "");
        unnamed.workload.clear();
        let mut stranger = report("b2", "");
        stranger.workload.clear();
        let (ops, events) = report_ops(&store, "n1", &[unnamed, stranger], now)
            .await
            .unwrap();
        assert_eq!(ops.len(), 1, "the kept status only");
        assert!(events.is_empty());
    }
}
