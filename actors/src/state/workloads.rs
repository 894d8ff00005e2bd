//! Workloads in the store (SPEC §5, §8.6): `/kat/workloads/<ns>/<name>` holds the
//! current Quadlet; `/kat/revisions/<ns>/<name>/<generation>` every kept generation
//! (the last [`KEEP_REVISIONS`], the current one included, which is what agents run
//! instances from); `/kat/jobs/<ns>/<name>` a JOB's progress.
//!
//! Every change of the spec is a new generation, written with its event in one fenced
//! transaction; the status users see ([`status`]) is computed from the instances.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use kat_proto::bundle::Limits;
use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::{
    DesiredState, EventSeverity, Instance, InstancePhase, JobState, ListEventsRequest, Quadlet,
    RolloutStatus, UpdateStrategyType, WorkloadStatus, WorkloadStatusResponse, WorkloadType,
    volume,
};
use prost::Message;

use super::error::{StateError, StateResult};
use super::events::workload_event;
use super::instances::ready;
use super::keys;
use super::leadership::Leadership;
use crate::store::{Compare, StateStore, TxnOp};

/// Generations kept for rollback (SPEC §5).
pub const KEEP_REVISIONS: i64 = 10;

/// How long a new instance of a rolling update may take to become ready before the
/// rollout pauses (SPEC §8.6).
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(300);

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

/// [`user_part`] without `replicas`: what the instances run. Two specs that differ only
/// in replicas are one generation, scaled.
fn template_part(q: &Quadlet) -> Quadlet {
    let mut q = user_part(q);
    if let Some(spec) = q.workload.as_mut().and_then(|w| w.spec.as_mut()) {
        spec.replicas = None;
    }
    q
}

fn replicas_of(q: &Quadlet) -> Option<i32> {
    q.workload.as_ref()?.spec.as_ref()?.replicas
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

/// Every `hostMount` of `q` this cluster does not allow, as `bundle/workload.kat:
/// <field>: <reason>` lines ([`ClusterSettings::host_mount_problem`]).
fn host_mount_problems(q: &Quadlet, settings: &ClusterSettings) -> Vec<String> {
    let volumes = q
        .workload
        .as_ref()
        .and_then(|w| w.spec.as_ref())
        .map(|s| s.volumes.as_slice())
        .unwrap_or_default();
    volumes
        .iter()
        .enumerate()
        .filter_map(|(i, v)| match &v.source {
            Some(volume::Source::HostMount(h)) => settings
                .host_mount_problem(&h.host_path)
                .map(|p| format!("bundle/workload.kat: spec.volumes[{i}].hostMount.hostPath: {p}")),
            _ => None,
        })
        .collect()
}

/// Parses a bundle and stores it as the workload's next generation (or leaves an
/// unchanged one alone), in one fenced transaction with an event. Bad bundles, and
/// host mounts `settings` does not allow, are refused with every problem and change
/// nothing.
pub async fn apply_bundle(
    leadership: &Leadership,
    settings: &ClusterSettings,
    namespace: &str,
    name: Option<&str>,
    bundle: &[u8],
    mode: ApplyMode,
    now: SystemTime,
) -> StateResult<Quadlet> {
    let quadlet = kat_proto::quadlet::parse_bundle("bundle", bundle, &Limits::default())
        .map_err(|e| StateError::BadRequest(e.to_string()))?;
    let problems = host_mount_problems(&quadlet, settings);
    if !problems.is_empty() {
        return Err(StateError::BadRequest(problems.join("\n")));
    }
    let (ns, wl) = quadlet_name(&quadlet);
    if !namespace.is_empty() && namespace != ns {
        return Err(StateError::invalid(
            "bundle/workload.kat: metadata.namespace",
            format!("{ns:?} differs from the request's namespace {namespace:?}"),
        ));
    }
    if let Some(name) = name
        && name != wl
    {
        return Err(StateError::invalid(
            "bundle/workload.kat: metadata.name",
            format!("{wl:?} differs from the workload being updated ({name:?})"),
        ));
    }
    store_generation(leadership, quadlet, mode, None, now).await
}

/// Stores `quadlet` as its workload's next generation (or leaves an unchanged one
/// alone), with the kept generations trimmed and an event, in one fenced
/// transaction. `rolled_back_to` names the generation a rollback re-applies.
async fn store_generation(
    leadership: &Leadership,
    mut quadlet: Quadlet,
    mode: ApplyMode,
    rolled_back_to: Option<i64>,
    now: SystemTime,
) -> StateResult<Quadlet> {
    let store = leadership.store();
    let (ns, wl) = quadlet_name(&quadlet);
    let key = keys::workload(&ns, &wl);
    let existing = store.get(&key).await?;
    let previous = match &existing {
        Some(kv) => Some(
            Quadlet::decode(kv.value.as_slice())
                .map_err(|e| StateError::corrupt(format!("workload {ns}/{wl}"), e))?,
        ),
        None => None,
    };
    match (mode, &previous) {
        (ApplyMode::Create, Some(_)) => {
            return Err(StateError::AlreadyExists(format!(
                "workload {ns}/{wl} exists; update it (katcall apply)"
            )));
        }
        (ApplyMode::Update, None) => {
            return Err(StateError::NotFound(format!(
                "workload {ns}/{wl} not found"
            )));
        }
        _ => {}
    }
    if let Some(prev) = &previous
        && user_part(prev) == user_part(&quadlet)
    {
        return Ok(prev.clone());
    }
    // Only the replicas changed: the same generation, scaled (instances are added or
    // removed; the others run on untouched).
    if let Some(prev) = &previous
        && rolled_back_to.is_none()
        && template_part(prev) == template_part(&quadlet)
    {
        return scale_in_place(leadership, prev, existing.as_ref(), &quadlet, now).await;
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
            None => crate::pki::tokens::random_hex(8)
                .map_err(|e| StateError::Internal(e.to_string()))?,
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
        TxnOp::put(keys::revision(&ns, &wl, generation), bytes),
    ];
    let (old, _) = store.list(&keys::revisions_of(&ns, &wl)).await?;
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
    let event = workload_event(&ns, &wl, reason, EventSeverity::Normal, message, now);
    ops.push(leadership.event_op(event).await);
    if !leadership.commit([unchanged], ops).await? {
        return Err(StateError::Conflict(format!(
            "workload {ns}/{wl} changed meanwhile; apply again"
        )));
    }
    tracing::info!(namespace = %ns, workload = %wl, generation, "workload applied");
    Ok(quadlet)
}

/// Stores `wanted`'s replicas into the current generation `prev` (the workload and its
/// kept revision), with a `Scaled` event, in one fenced transaction.
async fn scale_in_place(
    leadership: &Leadership,
    prev: &Quadlet,
    existing: Option<&crate::store::KeyValue>,
    wanted: &Quadlet,
    now: SystemTime,
) -> StateResult<Quadlet> {
    let (ns, wl) = quadlet_name(prev);
    let key = keys::workload(&ns, &wl);
    let generation = generation_of(prev);
    let (from, to) = (replicas_of(prev), replicas_of(wanted));
    let mut scaled = prev.clone();
    if let Some(w) = scaled.workload.as_mut() {
        if let Some(spec) = w.spec.as_mut() {
            spec.replicas = to;
        }
        if let Some(meta) = w.metadata.as_mut() {
            meta.updated_at = Some(kat_proto::timestamp(now));
        }
    }
    let bytes = scaled.encode_to_vec();
    let unchanged = match existing {
        Some(kv) => Compare::unchanged(&key, kv.mod_revision),
        None => Compare::absent(&key),
    };
    let message = format!(
        "replicas {} → {} (generation {generation}, no rollout)",
        from.unwrap_or_default(),
        to.unwrap_or_default()
    );
    let event = workload_event(&ns, &wl, "Scaled", EventSeverity::Normal, message, now);
    let ops = vec![
        TxnOp::put(&key, bytes.clone()),
        TxnOp::put(keys::revision(&ns, &wl, generation), bytes),
        leadership.event_op(event).await,
    ];
    if !leadership.commit([unchanged], ops).await? {
        return Err(StateError::Conflict(format!(
            "workload {ns}/{wl} changed meanwhile; try again"
        )));
    }
    tracing::info!(namespace = %ns, workload = %wl, generation, replicas = to.unwrap_or_default(), "workload scaled");
    Ok(scaled)
}

/// Sets a SERVICE's replicas (`katcall scale`): the same generation, instances added
/// or removed, no rollout.
pub async fn scale(
    leadership: &Leadership,
    ns: &str,
    name: &str,
    replicas: i64,
    now: SystemTime,
) -> StateResult<Quadlet> {
    let max = kat_proto::quadlet::defaults::MAX_REPLICAS;
    if !(0..=max).contains(&replicas) {
        return Err(StateError::BadRequest(format!(
            "replicas: {replicas} is not between 0 and {max}"
        )));
    }
    let mut wanted = get(leadership.store(), ns, name).await?;
    let spec = wanted
        .workload
        .as_mut()
        .and_then(|w| w.spec.as_mut())
        .ok_or_else(|| StateError::corrupt(format!("workload {ns}/{name}"), "no spec"))?;
    if !matches!(
        spec.r#type(),
        WorkloadType::Service | WorkloadType::Unspecified
    ) {
        return Err(StateError::Precondition(format!(
            "workload {ns}/{name} is a {}: only a SERVICE has replicas",
            spec.r#type().as_str_name()
        )));
    }
    spec.replicas = i32::try_from(replicas).ok();
    store_generation(leadership, wanted, ApplyMode::Update, None, now).await
}

/// Re-applies a kept generation (`to_generation`, or the one before the current when
/// 0) as a new generation, rolled out with the workload's update strategy; the
/// current replicas are kept (a rollback changes what runs, not how many).
pub async fn rollback(
    leadership: &Leadership,
    settings: &ClusterSettings,
    ns: &str,
    name: &str,
    to_generation: i64,
    now: SystemTime,
) -> StateResult<Quadlet> {
    let current = get(leadership.store(), ns, name).await?;
    let generation = generation_of(&current);
    let (kept, _) = leadership
        .store()
        .list(&keys::revisions_of(ns, name))
        .await?;
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
            .filter(|(g, q)| *g < generation && template_part(q) != template_part(&current))
            .map(|(g, _)| *g)
            .max()
            .ok_or_else(|| {
                StateError::Precondition(format!(
                    "workload {ns}/{name} has no earlier generation to roll back to"
                ))
            })?
    };
    if target == generation {
        return Err(StateError::Precondition(format!(
            "generation {target} is the current one"
        )));
    }
    let (_, mut old) = kept.into_iter().find(|(g, _)| *g == target).ok_or_else(|| {
        StateError::NotFound(format!(
            "generation {target} of workload {ns}/{name} is not kept (the last {KEEP_REVISIONS} are)"
        ))
    })?;
    // A generation kept from before a check existed is held to today's rules.
    let problems = host_mount_problems(&old, settings);
    if !problems.is_empty() {
        return Err(StateError::Precondition(format!(
            "generation {target} cannot be restored as it is:\n{}",
            problems.join("\n")
        )));
    }
    if let Some(spec) = old.workload.as_mut().and_then(|w| w.spec.as_mut()) {
        spec.replicas = replicas_of(&current);
    }
    store_generation(leadership, old, ApplyMode::Update, Some(target), now).await
}

/// The stored workload.
pub async fn get(store: &dyn StateStore, ns: &str, name: &str) -> StateResult<Quadlet> {
    let kv = store
        .get(&keys::workload(ns, name))
        .await?
        .ok_or_else(|| StateError::NotFound(format!("workload {ns}/{name} not found")))?;
    Quadlet::decode(kv.value.as_slice())
        .map_err(|e| StateError::corrupt(format!("workload {ns}/{name}"), e))
}

/// Every workload (of `ns`, or of every namespace when empty), with its status.
pub async fn list(store: &dyn StateStore, ns: &str) -> StateResult<Vec<Quadlet>> {
    let prefix = if ns.is_empty() {
        keys::WORKLOADS_PREFIX.to_owned()
    } else {
        format!("{}{ns}/", keys::WORKLOADS_PREFIX)
    };
    let (kvs, _) = store.list(&prefix).await?;
    let instances = super::instances::list(store, ns, "", "").await?;
    let jobs = job_states(store, ns).await?;
    let mut out = Vec::new();
    for kv in kvs {
        if let Ok(mut q) = Quadlet::decode(kv.value.as_slice()) {
            let (qns, qname) = quadlet_name(&q);
            let mine: Vec<&Instance> = instances
                .iter()
                .filter(|i| i.namespace == qns && i.workload == qname)
                .collect();
            let status = status(
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

/// The names of the workloads of namespace `ns`.
pub async fn names_in(store: &dyn StateStore, ns: &str) -> StateResult<Vec<String>> {
    let prefix = format!("{}{ns}/", keys::WORKLOADS_PREFIX);
    let (kvs, _) = store.list(&prefix).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_owned))
        .collect())
}

/// The reason a rolling update is paused, if it is: some instance of the new
/// generation has not become ready within [`ROLLOUT_DEADLINE`] of its creation.
pub fn rollout_stuck<'a>(
    current: impl IntoIterator<Item = &'a Instance>,
    now: SystemTime,
) -> Option<String> {
    let stuck: Vec<String> = current
        .into_iter()
        .filter(|i| !ready(i))
        .filter(|i| {
            i.created_at.as_ref().is_some_and(|t| {
                let created = std::time::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(t.seconds).unwrap_or(0));
                now.duration_since(created)
                    .is_ok_and(|age| age >= ROLLOUT_DEADLINE)
            })
        })
        .map(|i| {
            let why = i.status.as_ref().map_or_else(String::new, |s| {
                let reason = if s.reason.is_empty() {
                    s.phase().as_str_name().to_owned()
                } else {
                    s.reason.clone()
                };
                format!(" ({reason})")
            });
            format!("{}{why}", i.id)
        })
        .collect();
    (!stuck.is_empty()).then(|| {
        format!(
            "rollout paused: {} not ready after {} min; apply a fixed spec or katcall rollback",
            stuck.join(", "),
            ROLLOUT_DEADLINE.as_secs() / 60
        )
    })
}

/// What a JOB's progress says to a user.
pub fn job_state_text(state: Option<&JobState>, scheduled: bool) -> String {
    match state {
        None if scheduled => "Waiting".to_owned(),
        None => "Pending".to_owned(),
        Some(s) if s.failed => format!("Failed: {}", s.message),
        Some(s) if s.complete && scheduled => "Waiting".to_owned(),
        Some(s) if s.complete => "Complete".to_owned(),
        Some(_) => "Running".to_owned(),
    }
}

fn workload_type(w: &kat_proto::v1alpha1::Workload) -> WorkloadType {
    w.spec
        .as_ref()
        .map_or(WorkloadType::Service, |s| s.r#type())
}

/// Counts of a workload's instances (for a JOB, of its current execution), and a
/// JOB's state.
pub fn status(
    q: &Quadlet,
    instances: &[&Instance],
    job: Option<&JobState>,
    now: SystemTime,
) -> WorkloadStatus {
    let w = q.workload.clone().unwrap_or_default();
    let kind = workload_type(&w);
    let generation = w.metadata.as_ref().map_or(0, |m| m.generation);
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
        let job_spec = q.job.as_ref().and_then(|j| j.spec.as_ref());
        let scheduled = job_spec.is_some_and(|s| !s.schedule.trim().is_empty());
        return WorkloadStatus {
            observed_generation: generation,
            desired_instances: job_spec.map_or(1, |s| s.completions.max(1)),
            ready_instances: count(&|i| mine(i) && phase(i) == InstancePhase::Running),
            pending_instances: count(&|i| mine(i) && phase(i) == InstancePhase::Pending),
            succeeded: count(&|i| mine(i) && phase(i) == InstancePhase::Succeeded),
            failed: count(&|i| mine(i) && phase(i) == InstancePhase::Failed),
            active: count(&|i| {
                mine(i) && !matches!(phase(i), InstancePhase::Succeeded | InstancePhase::Failed)
            }),
            job_state: job_state_text(job, scheduled),
            ..Default::default()
        };
    }
    // Instances kept on a lost node are not counted (their replacements are).
    let current = |i: &Instance| {
        i.generation == generation && i.desired_state() != DesiredState::Stop && !i.node_lost
    };
    let old_generations: Vec<i64> = instances
        .iter()
        .filter(|i| i.generation != generation && !i.node_lost)
        .map(|i| i.generation)
        .collect();
    let rolling = w
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .is_none_or(|u| u.r#type() != UpdateStrategyType::Simultaneous);
    let paused = if rolling && !old_generations.is_empty() {
        rollout_stuck(instances.iter().copied().filter(|i| current(i)), now)
    } else {
        None
    };
    let ready_current = count(&|i| current(i) && ready(i));
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
        rollout: Some(RolloutStatus {
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
async fn job_states(store: &dyn StateStore, ns: &str) -> StateResult<HashMap<String, JobState>> {
    let prefix = if ns.is_empty() {
        keys::JOBS_PREFIX.to_owned()
    } else {
        format!("{}{ns}/", keys::JOBS_PREFIX)
    };
    let (kvs, _) = store.list(&prefix).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key.strip_prefix(keys::JOBS_PREFIX)?.to_owned(),
                JobState::decode(kv.value.as_slice()).ok()?,
            ))
        })
        .collect())
}

/// The workload with its status, its instances and its recent events.
pub async fn status_response(
    store: &dyn StateStore,
    ns: &str,
    name: &str,
) -> StateResult<WorkloadStatusResponse> {
    let q = get(store, ns, name).await?;
    let instances = super::instances::list(store, ns, name, "").await?;
    let refs: Vec<&Instance> = instances.iter().collect();
    let job = store
        .get(&keys::job(ns, name))
        .await?
        .and_then(|kv| JobState::decode(kv.value.as_slice()).ok());
    let status = status(&q, &refs, job.as_ref(), SystemTime::now());
    let mut workload = q.workload.unwrap_or_default();
    workload.status = Some(status);
    let events = super::events::list(
        store,
        &ListEventsRequest {
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
pub async fn delete(
    leadership: &Leadership,
    ns: &str,
    name: &str,
    now: SystemTime,
) -> StateResult<()> {
    let store = leadership.store();
    let key = keys::workload(ns, name);
    let kv = store
        .get(&key)
        .await?
        .ok_or_else(|| StateError::NotFound(format!("workload {ns}/{name} not found")))?;
    let (revisions, _) = store.list(&keys::revisions_of(ns, name)).await?;
    let (instances, _) = store.list(&keys::instances_of(ns, name)).await?;
    let mut ops = vec![TxnOp::delete(&key), TxnOp::delete(keys::job(ns, name))];
    ops.extend(revisions.into_iter().map(|kv| TxnOp::delete(kv.key)));
    ops.extend(instances.into_iter().map(|kv| TxnOp::delete(kv.key)));
    let event = workload_event(
        ns,
        name,
        "WorkloadDeleted",
        EventSeverity::Normal,
        "deleted; its instances are stopped".to_owned(),
        now,
    );
    ops.push(leadership.event_op(event).await);
    if !leadership
        .commit([Compare::unchanged(&key, kv.mod_revision)], ops)
        .await?
    {
        return Err(StateError::Conflict(format!(
            "workload {ns}/{name} changed meanwhile; delete again"
        )));
    }
    tracing::info!(namespace = %ns, workload = %name, "workload deleted");
    Ok(())
}
