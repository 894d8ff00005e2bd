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
use kat_proto::v1alpha1::{EventSeverity, Namespace, NamespaceStatus, ObjectMeta, ObjectReference};
use prost::Message;
use tonic::Status;

use super::node_api::NodeApiContext;
use super::workloads::{self, WORKLOADS_PREFIX};
use crate::leader::node_monitor::object_event;
use crate::store::{Compare, StateStore, Txn, TxnOp};

pub const NAMESPACES_PREFIX: &str = "/kat/namespaces/";

pub fn namespace_key(name: &str) -> String {
    format!("{NAMESPACES_PREFIX}{name}")
}

fn unavailable(e: crate::store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

fn not_leading() -> Status {
    Status::unavailable("this member is no longer the leader; ask again")
}

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
async fn workload_counts(store: &dyn StateStore) -> Result<BTreeMap<String, u32>, Status> {
    let (kvs, _) = store.list(WORKLOADS_PREFIX).await.map_err(unavailable)?;
    let mut counts = BTreeMap::new();
    for kv in kvs {
        if let Some((ns, _)) = kv
            .key
            .strip_prefix(WORKLOADS_PREFIX)
            .and_then(|rest| rest.split_once('/'))
        {
            *counts.entry(ns.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Every namespace: `default`, the created ones, and those that only have workloads.
pub async fn list(store: &dyn StateStore) -> Result<Vec<Namespace>, Status> {
    let (kvs, _) = store.list(NAMESPACES_PREFIX).await.map_err(unavailable)?;
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

pub async fn get(store: &dyn StateStore, name: &str) -> Result<Namespace, Status> {
    list(store)
        .await?
        .into_iter()
        .find(|n| n.metadata.as_ref().is_some_and(|m| m.name == name))
        .ok_or_else(|| Status::not_found(format!("namespace {name} not found")))
}

fn namespace_event(
    name: &str,
    reason: &str,
    message: String,
    now: SystemTime,
) -> (String, kat_proto::v1alpha1::Event) {
    object_event(
        ObjectReference {
            kind: "Namespace".to_owned(),
            namespace: String::new(),
            name: name.to_owned(),
            uid: String::new(),
        },
        "",
        reason,
        EventSeverity::Normal,
        message,
        now,
    )
}

/// Creates a namespace; one that exists (created, or with workloads) is refused.
pub async fn create(
    ctx: &NodeApiContext,
    namespace: Option<Namespace>,
    now: SystemTime,
) -> Result<Namespace, Status> {
    let namespace = namespace.ok_or_else(|| Status::invalid_argument("namespace: missing"))?;
    if !namespace.kind.is_empty() && namespace.kind != "Namespace" {
        return Err(Status::invalid_argument(format!(
            "kind: {:?} is not Namespace",
            namespace.kind
        )));
    }
    if !namespace.api_version.is_empty() && namespace.api_version != kat_proto::quadlet::API_VERSION
    {
        return Err(Status::invalid_argument(format!(
            "apiVersion: {:?} is not {}",
            namespace.api_version,
            kat_proto::quadlet::API_VERSION
        )));
    }
    let meta = namespace.metadata.clone().unwrap_or_default();
    if let Some(problem) = kat_proto::names::dns_label_problem(&meta.name) {
        return Err(Status::invalid_argument(format!(
            "metadata.name: {problem}"
        )));
    }
    if get(ctx.store.as_ref(), &meta.name).await.is_ok() {
        return Err(Status::already_exists(format!(
            "namespace {} already exists",
            meta.name
        )));
    }
    let stored = Namespace {
        api_version: kat_proto::quadlet::API_VERSION.to_owned(),
        kind: "Namespace".to_owned(),
        metadata: Some(ObjectMeta {
            name: meta.name.clone(),
            labels: meta.labels,
            created_at: Some(kat_proto::timestamp(now)),
            ..Default::default()
        }),
        status: None,
    };
    let key = namespace_key(&meta.name);
    let (event_key, event) =
        namespace_event(&meta.name, "NamespaceCreated", "created".to_owned(), now);
    let lease = ctx.events.get(ctx.store.as_ref()).await;
    let txn = Txn::new()
        .when([ctx.leader.fence(), Compare::absent(&key)])
        .and_then([
            TxnOp::put(&key, stored.encode_to_vec()),
            TxnOp::put_leased(event_key, event.encode_to_vec(), lease),
        ]);
    if !ctx.store.txn(txn).await.map_err(unavailable)?.succeeded {
        // Lost the race to another create, or no longer leading.
        return match get(ctx.store.as_ref(), &meta.name).await {
            Ok(_) => Err(Status::already_exists(format!(
                "namespace {} already exists",
                meta.name
            ))),
            Err(_) => Err(not_leading()),
        };
    }
    tracing::info!(namespace = %meta.name, "namespace created");
    Ok(stored)
}

/// Deletes a namespace (with its workloads when `cascade`).
pub async fn delete(
    ctx: &NodeApiContext,
    name: &str,
    cascade: bool,
    now: SystemTime,
) -> Result<(), Status> {
    if name == DEFAULT_NAMESPACE {
        return Err(Status::failed_precondition(
            "namespace default always exists and cannot be deleted",
        ));
    }
    get(ctx.store.as_ref(), name).await?;
    let in_it = workloads::list_quadlets(ctx.store.as_ref(), name).await?;
    let names: Vec<String> = in_it
        .iter()
        .filter_map(|q| {
            q.workload
                .as_ref()?
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
        })
        .collect();
    if !names.is_empty() && !cascade {
        return Err(Status::failed_precondition(format!(
            "namespace {name} has {} workload(s): {}; delete them first or use --cascade",
            names.len(),
            names.join(", ")
        )));
    }
    for workload in &names {
        match workloads::delete_workload(ctx, name, workload, now).await {
            // Deleted meanwhile by someone else: fine.
            Ok(()) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
    }
    let (event_key, event) = namespace_event(
        name,
        "NamespaceDeleted",
        if names.is_empty() {
            "deleted".to_owned()
        } else {
            format!("deleted with its workloads {}", names.join(", "))
        },
        now,
    );
    let lease = ctx.events.get(ctx.store.as_ref()).await;
    let txn = Txn::new().when([ctx.leader.fence()]).and_then([
        TxnOp::delete(namespace_key(name)),
        TxnOp::put_leased(event_key, event.encode_to_vec(), lease),
    ]);
    if !ctx.store.txn(txn).await.map_err(unavailable)?.succeeded {
        return Err(not_leading());
    }
    tracing::info!(namespace = %name, workloads = names.len(), "namespace deleted");
    Ok(())
}
