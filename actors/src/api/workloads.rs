//! Workloads in the store (SPEC §5, §8.6) and the user API calls about them: apply a
//! bundle (create or update; every change of the spec is a new generation, the last
//! [`KEEP_REVISIONS`] kept for rollback), get, list, delete, status, instances.
//!
//! Keys: `/kat/workloads/<ns>/<name>` (the current Quadlet), `/kat/revisions/<ns>/<name>/
//! <generation, 20 digits>` (every kept generation, the current one included, which is
//! what agents run instances from), `/kat/instances/<ns>/<name>/<id>` (placement and
//! desired state, written by the scheduler) and `/kat/status/instances/<node>/<id>`
//! (what the node reports).

use std::collections::HashMap;
use std::time::SystemTime;

use kat_proto::bundle::Limits;
use kat_proto::v1alpha1::{
    DesiredState, Event, EventSeverity, Instance, InstancePhase, InstanceStatus, JobState,
    ObjectReference, Quadlet, WorkloadStatus, WorkloadStatusResponse, WorkloadType,
};
use prost::Message;
use tonic::Status;

use super::node_api::NodeApiContext;
use crate::leader::node_monitor::object_event;
use crate::store::{Compare, StateStore, Txn, TxnOp};

pub const WORKLOADS_PREFIX: &str = "/kat/workloads/";
pub const REVISIONS_PREFIX: &str = "/kat/revisions/";
pub const INSTANCES_PREFIX: &str = "/kat/instances/";
pub const INSTANCE_STATUS_PREFIX: &str = "/kat/status/instances/";
pub const JOBS_PREFIX: &str = "/kat/jobs/";
/// Generations kept for rollback (SPEC §5).
pub const KEEP_REVISIONS: i64 = 10;

pub fn workload_key(ns: &str, name: &str) -> String {
    format!("{WORKLOADS_PREFIX}{ns}/{name}")
}

pub fn revision_key(ns: &str, name: &str, generation: i64) -> String {
    format!("{REVISIONS_PREFIX}{ns}/{name}/{generation:020}")
}

pub fn instance_key(ns: &str, name: &str, id: &str) -> String {
    format!("{INSTANCES_PREFIX}{ns}/{name}/{id}")
}

/// `/kat/jobs/<ns>/<name>`: a JOB's progress.
pub fn job_key(ns: &str, name: &str) -> String {
    format!("{JOBS_PREFIX}{ns}/{name}")
}

pub fn instance_status_key(node: &str, id: &str) -> String {
    format!("{INSTANCE_STATUS_PREFIX}{node}/{id}")
}

fn unavailable(e: crate::store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

fn not_leading() -> Status {
    Status::unavailable("this member is no longer the leader; ask again")
}

/// The workload's namespace and name.
pub fn quadlet_name(q: &Quadlet) -> (String, String) {
    let meta = q.workload.as_ref().and_then(|w| w.metadata.as_ref());
    (
        meta.map(|m| m.namespace.clone()).unwrap_or_default(),
        meta.map(|m| m.name.clone()).unwrap_or_default(),
    )
}

pub fn generation_of(q: &Quadlet) -> i64 {
    q.workload
        .as_ref()
        .and_then(|w| w.metadata.as_ref())
        .map_or(0, |m| m.generation)
}

/// The Quadlet without what the server sets (uid, generation, times, status): what
/// decides whether an apply changes anything.
fn user_part(q: &Quadlet) -> Quadlet {
    let mut q = q.clone();
    if let Some(w) = q.workload.as_mut() {
        w.status = None;
        if let Some(m) = w.metadata.as_mut() {
            m.uid.clear();
            m.generation = 0;
            m.created_at = None;
            m.updated_at = None;
        }
    }
    q
}

/// What an apply is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Must not exist yet.
    Create,
    /// Must exist, with this name.
    Update,
    /// Either.
    Apply,
}

/// Parses a bundle and stores it as the workload's next generation (or leaves an
/// unchanged one alone), in one fenced transaction with an event. Bad bundles are
/// refused with every problem and change nothing.
pub async fn apply_bundle(
    ctx: &NodeApiContext,
    namespace: &str,
    name: Option<&str>,
    bundle: &[u8],
    mode: ApplyMode,
    now: SystemTime,
) -> Result<Quadlet, Status> {
    let quadlet = kat_proto::quadlet::parse_bundle("bundle", bundle, &Limits::default())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let (ns, wl) = quadlet_name(&quadlet);
    if !namespace.is_empty() && namespace != ns {
        return Err(Status::invalid_argument(format!(
            "bundle/workload.kat: metadata.namespace: {ns:?} differs from the request's namespace {namespace:?}"
        )));
    }
    if let Some(name) = name
        && name != wl
    {
        return Err(Status::invalid_argument(format!(
            "bundle/workload.kat: metadata.name: {wl:?} differs from the workload being updated ({name:?})"
        )));
    }
    store_generation(ctx, quadlet, mode, None, now).await
}

/// Stores `quadlet` as its workload's next generation (or leaves an unchanged one
/// alone), with the kept generations trimmed and an event, in one fenced
/// transaction. `rolled_back_to` names the generation a rollback re-applies.
async fn store_generation(
    ctx: &NodeApiContext,
    mut quadlet: Quadlet,
    mode: ApplyMode,
    rolled_back_to: Option<i64>,
    now: SystemTime,
) -> Result<Quadlet, Status> {
    let (ns, wl) = quadlet_name(&quadlet);
    let key = workload_key(&ns, &wl);
    let existing = ctx.store.get(&key).await.map_err(unavailable)?;
    let previous = match &existing {
        Some(kv) => Some(Quadlet::decode(kv.value.as_slice()).map_err(|e| {
            Status::internal(format!("workload {ns}/{wl}: stored record unreadable: {e}"))
        })?),
        None => None,
    };
    match (mode, &previous) {
        (ApplyMode::Create, Some(_)) => {
            return Err(Status::already_exists(format!(
                "workload {ns}/{wl} exists; update it (katcall apply)"
            )));
        }
        (ApplyMode::Update, None) => {
            return Err(Status::not_found(format!("workload {ns}/{wl} not found")));
        }
        _ => {}
    }
    if let Some(prev) = &previous
        && user_part(prev) == user_part(&quadlet)
    {
        return Ok(prev.clone());
    }
    let generation = previous.as_ref().map_or(0, generation_of) + 1;
    let prev_meta = previous
        .as_ref()
        .and_then(|q| q.workload.as_ref())
        .and_then(|w| w.metadata.clone());
    if let Some(meta) = quadlet.workload.as_mut().and_then(|w| w.metadata.as_mut()) {
        meta.generation = generation;
        meta.uid = match &prev_meta {
            Some(m) => m.uid.clone(),
            None => {
                crate::pki::tokens::random_hex(8).map_err(|e| Status::internal(e.to_string()))?
            }
        };
        meta.created_at = prev_meta
            .as_ref()
            .and_then(|m| m.created_at)
            .or(Some(kat_proto::timestamp(now)));
        meta.updated_at = Some(kat_proto::timestamp(now));
    }
    let bytes = quadlet.encode_to_vec();
    let unchanged = match &existing {
        Some(kv) => Compare::unchanged(&key, kv.mod_revision),
        None => Compare::absent(&key),
    };
    let mut ops = vec![
        TxnOp::put(&key, bytes.clone()),
        TxnOp::put(revision_key(&ns, &wl, generation), bytes),
    ];
    let (old, _) = ctx
        .store
        .list(&format!("{REVISIONS_PREFIX}{ns}/{wl}/"))
        .await
        .map_err(unavailable)?;
    for kv in old {
        let gen_of_key = kv
            .key
            .rsplit('/')
            .next()
            .and_then(|g| g.parse::<i64>().ok())
            .unwrap_or(0);
        if gen_of_key <= generation - KEEP_REVISIONS {
            ops.push(TxnOp::delete(kv.key));
        }
    }
    let (reason, message) = if let Some(target) = rolled_back_to {
        (
            "RolledBack",
            format!("generation {generation} re-applies generation {target}"),
        )
    } else if previous.is_some() {
        (
            "WorkloadUpdated",
            format!("generation {generation} applied"),
        )
    } else {
        ("WorkloadCreated", "generation 1 applied".to_owned())
    };
    let (event_key, event) = workload_event(&ns, &wl, reason, EventSeverity::Normal, message, now);
    let lease = ctx.events.get(ctx.store.as_ref()).await;
    ops.push(TxnOp::put_leased(event_key, event.encode_to_vec(), lease));
    let txn = Txn::new()
        .when([ctx.leader.fence(), unchanged])
        .and_then(ops);
    if !ctx.store.txn(txn).await.map_err(unavailable)?.succeeded {
        return Err(Status::aborted(format!(
            "workload {ns}/{wl} changed meanwhile (or this member stopped leading); apply again"
        )));
    }
    tracing::info!(namespace = %ns, workload = %wl, generation, "workload applied");
    Ok(quadlet)
}

/// Re-applies a kept generation (`to_generation`, or the one before the current when
/// 0) as a new generation, rolled out with the workload's update strategy.
pub async fn rollback(
    ctx: &NodeApiContext,
    ns: &str,
    name: &str,
    to_generation: i64,
    now: SystemTime,
) -> Result<Quadlet, Status> {
    let current = get_quadlet(ctx.store.as_ref(), ns, name).await?;
    let generation = generation_of(&current);
    let (kept, _) = ctx
        .store
        .list(&format!("{REVISIONS_PREFIX}{ns}/{name}/"))
        .await
        .map_err(unavailable)?;
    let kept: Vec<(i64, Quadlet)> = kept
        .iter()
        .filter_map(|kv| Quadlet::decode(kv.value.as_slice()).ok())
        .map(|q| (generation_of(&q), q))
        .collect();
    // The generation before the current one is the newest kept one with another spec.
    let target = if to_generation > 0 {
        to_generation
    } else {
        kept.iter()
            .filter(|(g, q)| *g < generation && user_part(q) != user_part(&current))
            .map(|(g, _)| *g)
            .max()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "workload {ns}/{name} has no earlier generation to roll back to"
                ))
            })?
    };
    if target == generation {
        return Err(Status::failed_precondition(format!(
            "generation {target} is the current one"
        )));
    }
    let (_, old) = kept.into_iter().find(|(g, _)| *g == target).ok_or_else(|| {
        Status::not_found(format!(
            "generation {target} of workload {ns}/{name} is not kept (the last {KEEP_REVISIONS} are)"
        ))
    })?;
    store_generation(ctx, old, ApplyMode::Update, Some(target), now).await
}

/// An event about a workload.
pub fn workload_event(
    ns: &str,
    name: &str,
    reason: &str,
    severity: EventSeverity,
    message: String,
    now: SystemTime,
) -> (String, Event) {
    object_event(
        ObjectReference {
            kind: "Workload".to_owned(),
            namespace: ns.to_owned(),
            name: name.to_owned(),
            uid: String::new(),
        },
        "",
        reason,
        severity,
        message,
        now,
    )
}

/// The stored workload.
pub async fn get_quadlet(store: &dyn StateStore, ns: &str, name: &str) -> Result<Quadlet, Status> {
    let kv = store
        .get(&workload_key(ns, name))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("workload {ns}/{name} not found")))?;
    Quadlet::decode(kv.value.as_slice()).map_err(|e| {
        Status::internal(format!(
            "workload {ns}/{name}: stored record unreadable: {e}"
        ))
    })
}

/// Every workload (of `ns`, or of every namespace when empty), with its status.
pub async fn list_quadlets(store: &dyn StateStore, ns: &str) -> Result<Vec<Quadlet>, Status> {
    let prefix = if ns.is_empty() {
        WORKLOADS_PREFIX.to_owned()
    } else {
        format!("{WORKLOADS_PREFIX}{ns}/")
    };
    let (kvs, _) = store.list(&prefix).await.map_err(unavailable)?;
    let instances = list_instances(store, ns, "", "").await?;
    let jobs = job_states(store, ns).await?;
    let mut out = Vec::new();
    for kv in kvs {
        if let Ok(mut q) = Quadlet::decode(kv.value.as_slice()) {
            let (qns, qname) = quadlet_name(&q);
            let mine: Vec<&Instance> = instances
                .iter()
                .filter(|i| i.namespace == qns && i.workload == qname)
                .collect();
            let status = workload_status(
                &q,
                &mine,
                jobs.get(&format!("{qns}/{qname}")),
                SystemTime::now(),
            );
            if let Some(w) = q.workload.as_mut() {
                w.status = Some(status);
            }
            out.push(q);
        }
    }
    Ok(out)
}

fn q_spec_type(w: &kat_proto::v1alpha1::Workload) -> WorkloadType {
    w.spec
        .as_ref()
        .map_or(WorkloadType::Service, |s| s.r#type())
}

fn generation_of_w(w: &kat_proto::v1alpha1::Workload) -> i64 {
    w.metadata.as_ref().map_or(0, |m| m.generation)
}

/// Counts of a workload's instances (for a JOB, of its current execution), and a
/// JOB's state.
pub fn workload_status(
    q: &Quadlet,
    instances: &[&Instance],
    job: Option<&JobState>,
    now: SystemTime,
) -> WorkloadStatus {
    let w = q.workload.clone().unwrap_or_default();
    let kind = q_spec_type(&w);
    let generation = generation_of_w(&w);
    let phase = |i: &Instance| {
        i.status
            .as_ref()
            .map_or(InstancePhase::Pending, |s| s.phase())
    };
    let count = |keep: &dyn Fn(&Instance) -> bool| {
        u32::try_from(instances.iter().filter(|i| keep(i)).count()).unwrap_or(u32::MAX)
    };
    if kind == WorkloadType::Job {
        let execution = job.map_or(0, |j| j.execution);
        let mine = |i: &Instance| execution > 0 && i.job_run == execution;
        let scheduled = q
            .job
            .as_ref()
            .and_then(|j| j.spec.as_ref())
            .is_some_and(|s| !s.schedule.trim().is_empty());
        return WorkloadStatus {
            observed_generation: generation,
            desired_instances: q
                .job
                .as_ref()
                .and_then(|j| j.spec.as_ref())
                .map_or(1, |s| s.completions.max(1)),
            ready_instances: count(&|i| mine(i) && phase(i) == InstancePhase::Running),
            pending_instances: count(&|i| mine(i) && phase(i) == InstancePhase::Pending),
            succeeded: count(&|i| mine(i) && phase(i) == InstancePhase::Succeeded),
            failed: count(&|i| mine(i) && phase(i) == InstancePhase::Failed),
            active: count(&|i| {
                mine(i) && !matches!(phase(i), InstancePhase::Succeeded | InstancePhase::Failed)
            }),
            job_state: crate::leader::scheduler::jobs::describe(job, scheduled),
            ..Default::default()
        };
    }
    let current =
        |i: &Instance| i.generation == generation && i.desired_state() != DesiredState::Stop;
    let old_generations: Vec<i64> = instances
        .iter()
        .filter(|i| i.generation != generation)
        .map(|i| i.generation)
        .collect();
    let rolling = w
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .is_none_or(|u| u.r#type() != kat_proto::v1alpha1::UpdateStrategyType::Simultaneous);
    let paused = if rolling && !old_generations.is_empty() {
        crate::leader::scheduler::rollout_stuck(
            instances.iter().copied().filter(|i| current(i)),
            now,
        )
    } else {
        None
    };
    let ready_current = count(&|i| current(i) && crate::leader::scheduler::ready(i));
    let replicas = w
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .map_or(1, |r| u32::try_from(r.max(0)).unwrap_or(0));
    WorkloadStatus {
        observed_generation: generation,
        desired_instances: count(&current),
        ready_instances: ready_current,
        pending_instances: count(&|i| current(i) && phase(i) == InstancePhase::Pending),
        rollout: Some(kat_proto::v1alpha1::RolloutStatus {
            from_generation: old_generations.iter().copied().min().unwrap_or(generation),
            to_generation: generation,
            updated: ready_current,
            total: if kind == WorkloadType::DaemonService {
                count(&current)
            } else {
                replicas
            },
            paused: paused.is_some(),
            message: paused.unwrap_or_default(),
            started_at: w.metadata.as_ref().and_then(|m| m.updated_at),
        }),
        ..Default::default()
    }
}

/// JOB progress of every workload (of `ns`), by `ns/name`.
async fn job_states(store: &dyn StateStore, ns: &str) -> Result<HashMap<String, JobState>, Status> {
    let (kvs, _) = store
        .list(&format!("{JOBS_PREFIX}{ns}"))
        .await
        .map_err(unavailable)?;
    Ok(kvs
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key.strip_prefix(JOBS_PREFIX)?.to_owned(),
                JobState::decode(kv.value.as_slice()).ok()?,
            ))
        })
        .collect())
}

/// Instances (filtered by namespace, workload, node; empty: any), each with the status
/// its node last reported (or, before that, the scheduler's: Pending with a reason).
pub async fn list_instances(
    store: &dyn StateStore,
    ns: &str,
    workload: &str,
    node: &str,
) -> Result<Vec<Instance>, Status> {
    let prefix = match (ns.is_empty(), workload.is_empty()) {
        (true, _) => INSTANCES_PREFIX.to_owned(),
        (false, true) => format!("{INSTANCES_PREFIX}{ns}/"),
        (false, false) => format!("{INSTANCES_PREFIX}{ns}/{workload}/"),
    };
    let (kvs, _) = store.list(&prefix).await.map_err(unavailable)?;
    let status_prefix = if node.is_empty() {
        INSTANCE_STATUS_PREFIX.to_owned()
    } else {
        format!("{INSTANCE_STATUS_PREFIX}{node}/")
    };
    let (statuses, _) = store.list(&status_prefix).await.map_err(unavailable)?;
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
                && let Some(s) = reported.get(instance_status_key(&i.node, &i.id).as_str())
            {
                i.status = Some(s.clone());
            }
            i
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.workload, &a.id).cmp(&(&b.namespace, &b.workload, &b.id)));
    Ok(out)
}

/// The workload with its status, its instances and its recent events.
pub async fn workload_status_response(
    store: &dyn StateStore,
    ns: &str,
    name: &str,
) -> Result<WorkloadStatusResponse, Status> {
    let q = get_quadlet(store, ns, name).await?;
    let instances = list_instances(store, ns, name, "").await?;
    let refs: Vec<&Instance> = instances.iter().collect();
    let job = store
        .get(&job_key(ns, name))
        .await
        .map_err(unavailable)?
        .and_then(|kv| JobState::decode(kv.value.as_slice()).ok());
    let status = workload_status(&q, &refs, job.as_ref(), SystemTime::now());
    let mut workload = q.workload.unwrap_or_default();
    workload.status = Some(status);
    let events = super::user_api::list_events(
        store,
        &kat_proto::v1alpha1::ListEventsRequest {
            namespace: ns.to_owned(),
            involved: format!("workload/{name}"),
            since: None,
        },
    )
    .await?;
    let recent = events.into_iter().rev().take(20).rev().collect();
    Ok(WorkloadStatusResponse {
        workload: Some(workload),
        instances,
        recent_events: recent,
    })
}

/// Deletes the workload, its kept generations and its instances (their nodes stop
/// them), in one fenced transaction with an event.
pub async fn delete_workload(
    ctx: &NodeApiContext,
    ns: &str,
    name: &str,
    now: SystemTime,
) -> Result<(), Status> {
    let key = workload_key(ns, name);
    let kv = ctx
        .store
        .get(&key)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("workload {ns}/{name} not found")))?;
    let (revisions, _) = ctx
        .store
        .list(&format!("{REVISIONS_PREFIX}{ns}/{name}/"))
        .await
        .map_err(unavailable)?;
    let (instances, _) = ctx
        .store
        .list(&format!("{INSTANCES_PREFIX}{ns}/{name}/"))
        .await
        .map_err(unavailable)?;
    let mut ops = vec![TxnOp::delete(&key), TxnOp::delete(job_key(ns, name))];
    ops.extend(revisions.into_iter().map(|kv| TxnOp::delete(kv.key)));
    ops.extend(instances.into_iter().map(|kv| TxnOp::delete(kv.key)));
    let (event_key, event) = workload_event(
        ns,
        name,
        "WorkloadDeleted",
        EventSeverity::Normal,
        "deleted; its instances are stopped".to_owned(),
        now,
    );
    let lease = ctx.events.get(ctx.store.as_ref()).await;
    ops.push(TxnOp::put_leased(event_key, event.encode_to_vec(), lease));
    let txn = Txn::new()
        .when([
            ctx.leader.fence(),
            Compare::unchanged(&key, kv.mod_revision),
        ])
        .and_then(ops);
    if !ctx.store.txn(txn).await.map_err(unavailable)?.succeeded {
        return Err(not_leading());
    }
    tracing::info!(namespace = %ns, workload = %name, "workload deleted");
    Ok(())
}
