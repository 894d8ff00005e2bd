//! Namespaces (SPEC §4.6): `default` always exists; others are created from a
//! `namespace.kat` (`katcall apply -f namespace.kat`, `POST /v1alpha1/namespaces`) and
//! kept at `/kat/namespaces/<ns>`.
//!
//! A workload may also be applied into a namespace nobody created (docs/workloads.md:
//! namespaces are implicit for workloads); such a namespace is listed while it has
//! workloads. Deleting a namespace that has workloads is refused unless `cascade`,
//! which deletes them first (each in its own transaction, as `katcall delete
//! workload` does), then the namespace. `default` cannot be deleted.

use std::collections::BTreeMap;
use std::time::SystemTime;

use kat_proto::quadlet::defaults::DEFAULT_NAMESPACE;
use kat_proto::v1alpha1::{Namespace, NamespaceStatus, ObjectMeta};
use prost::Message;

use super::error::{StateError, StateResult};
use super::events::namespace_event;
use super::keys;
use super::leadership::Leadership;
use crate::store::{Compare, StateStore, TxnOp};

fn bare(name: &str) -> Namespace {
    Namespace {
        api_version: kat_proto::quadlet::API_VERSION.to_owned(),
        kind: "Namespace".to_owned(),
        metadata: Some(ObjectMeta {
            name: name.to_owned(),
            ..Default::default()
        }),
        status: None,
    }
}

/// Workloads per namespace.
async fn workload_counts(store: &dyn StateStore) -> StateResult<BTreeMap<String, u32>> {
    let (kvs, _) = store.list(keys::WORKLOADS_PREFIX).await?;
    let mut counts = BTreeMap::new();
    for kv in kvs {
        if let Some((ns, _)) = kv
            .key
            .strip_prefix(keys::WORKLOADS_PREFIX)
            .and_then(|rest| rest.split_once('/'))
        {
            *counts.entry(ns.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Every namespace: `default`, the created ones, and those that only have workloads.
pub async fn list(store: &dyn StateStore) -> StateResult<Vec<Namespace>> {
    let (kvs, _) = store.list(keys::NAMESPACES_PREFIX).await?;
    let mut all: BTreeMap<String, Namespace> = BTreeMap::new();
    all.insert(DEFAULT_NAMESPACE.to_owned(), bare(DEFAULT_NAMESPACE));
    for kv in kvs {
        if let Ok(ns) = Namespace::decode(kv.value.as_slice()) {
            let name = ns
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            all.insert(name, ns);
        }
    }
    let counts = workload_counts(store).await?;
    for name in counts.keys() {
        all.entry(name.clone()).or_insert_with(|| bare(name));
    }
    Ok(all
        .into_iter()
        .map(|(name, mut ns)| {
            ns.status = Some(NamespaceStatus {
                workloads: counts.get(&name).copied().unwrap_or(0),
                terminating: false,
            });
            ns
        })
        .collect())
}

pub async fn get(store: &dyn StateStore, name: &str) -> StateResult<Namespace> {
    list(store)
        .await?
        .into_iter()
        .find(|n| n.metadata.as_ref().is_some_and(|m| m.name == name))
        .ok_or_else(|| StateError::NotFound(format!("namespace {name} not found")))
}

/// Creates a namespace; one that exists (created, or with workloads) is refused.
pub async fn create(
    leadership: &Leadership,
    namespace: Option<Namespace>,
    now: SystemTime,
) -> StateResult<Namespace> {
    let store = leadership.store();
    let namespace = namespace.ok_or_else(|| StateError::invalid("namespace", "missing"))?;
    if !namespace.kind.is_empty() && namespace.kind != "Namespace" {
        return Err(StateError::invalid(
            "kind",
            format!("{:?} is not Namespace", namespace.kind),
        ));
    }
    if !namespace.api_version.is_empty() && namespace.api_version != kat_proto::quadlet::API_VERSION
    {
        return Err(StateError::invalid(
            "apiVersion",
            format!(
                "{:?} is not {}",
                namespace.api_version,
                kat_proto::quadlet::API_VERSION
            ),
        ));
    }
    let meta = namespace.metadata.clone().unwrap_or_default();
    if let Some(problem) = kat_proto::names::dns_label_problem(&meta.name) {
        return Err(StateError::invalid("metadata.name", problem));
    }
    let exists = || StateError::AlreadyExists(format!("namespace {} already exists", meta.name));
    if get(store, &meta.name).await.is_ok() {
        return Err(exists());
    }
    let stored = Namespace {
        api_version: kat_proto::quadlet::API_VERSION.to_owned(),
        kind: "Namespace".to_owned(),
        metadata: Some(ObjectMeta {
            name: meta.name.clone(),
            labels: meta.labels.clone(),
            created_at: Some(kat_proto::timestamp(now)),
            ..Default::default()
        }),
        status: None,
    };
    let key = keys::namespace(&meta.name);
    let event = namespace_event(&meta.name, "NamespaceCreated", "created".to_owned(), now);
    let ops = [
        TxnOp::put(&key, stored.encode_to_vec()),
        leadership.event_op(event).await,
    ];
    if !leadership.commit([Compare::absent(&key)], ops).await? {
        // Lost the race to another create.
        return Err(exists());
    }
    tracing::info!(namespace = %meta.name, "namespace created");
    Ok(stored)
}

/// Deletes a namespace (with its workloads when `cascade`).
pub async fn delete(
    leadership: &Leadership,
    name: &str,
    cascade: bool,
    now: SystemTime,
) -> StateResult<()> {
    if name == DEFAULT_NAMESPACE {
        return Err(StateError::Precondition(
            "namespace default always exists and cannot be deleted".to_owned(),
        ));
    }
    get(leadership.store(), name).await?;
    let names = super::workloads::names_in(leadership.store(), name).await?;
    if !names.is_empty() && !cascade {
        return Err(StateError::Precondition(format!(
            "namespace {name} has {} workload(s): {}; delete them first or use --cascade",
            names.len(),
            names.join(", ")
        )));
    }
    for workload in &names {
        match super::workloads::delete(leadership, name, workload, now).await {
            // Deleted meanwhile by someone else: fine.
            Ok(()) | Err(StateError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let event = namespace_event(
        name,
        "NamespaceDeleted",
        if names.is_empty() {
            "deleted".to_owned()
        } else {
            format!("deleted with its workloads {}", names.join(", "))
        },
        now,
    );
    let ops = [
        TxnOp::delete(keys::namespace(name)),
        leadership.event_op(event).await,
    ];
    leadership.commit([], ops).await?;
    tracing::info!(namespace = %name, workloads = names.len(), "namespace deleted");
    Ok(())
}
