//! Heartbeat intake (SPEC §6), as the leader handles a node's heartbeat: the node is
//! heard (in the leader's memory, [`crate::state::Liveness`]); its status becomes Ready
//! (NodeReady / NodeRejoined on a transition), what it reports of its instances is
//! stored with the events their changes make, a changed capacity updates its
//! registration, and the answer names every control-plane member's API. Only a change
//! is written: a heartbeat that changes nothing makes no etcd revision. What one
//! heartbeat may carry is bounded (`kat_proto::limits`; the node API refuses messages
//! over 512 KiB, `api::server::NODE_MESSAGE_LIMIT`) and a node heartbeating faster than twice a
//! tick is heard but not recorded ([`crate::state::Liveness::may_record`]). A node may
//! report only for itself.

use std::time::SystemTime;

use kat_proto::limits::{MAX_CONDITIONS, MAX_INSTANCE_REPORTS};
use kat_proto::v1alpha1::{
    EventSeverity, HeartbeatRequest, HeartbeatResponse, Node, NodeResources, NodeState, NodeStatus,
};
use prost::Message;

use super::context::{LeaderContext, confirm_certificate, key_is_listed, speaks_for};
use crate::state::events::node_event;
use crate::state::{self, StateError, StateResult, keys};
use crate::store::{Compare, KeyValue, TxnOp};

/// Refuses a heartbeat with more conditions or reports than any node has, and cuts
/// long texts, so what one heartbeat can make the leader store is bounded.
fn bound(req: &mut HeartbeatRequest) -> StateResult<()> {
    if let Some(status) = &req.node_status
        && status.conditions.len() > MAX_CONDITIONS
    {
        return Err(StateError::invalid(
            "node_status.conditions",
            format!(
                "{} conditions; at most {MAX_CONDITIONS}",
                status.conditions.len()
            ),
        ));
    }
    if req.instances.len() > MAX_INSTANCE_REPORTS {
        return Err(StateError::invalid(
            "instances",
            format!(
                "{} instance reports; at most {MAX_INSTANCE_REPORTS}",
                req.instances.len()
            ),
        ));
    }
    kat_proto::limits::cut_heartbeat(req);
    Ok(())
}

/// Records node `caller`'s heartbeat; see the module docs.
/// `caller_key`: the public-key hash of the certificate the call came with (`None` in
/// process): checked against the record read here anyway
/// (`super::context::certificate_is_current`), not in a read of its own.
pub async fn heartbeat(
    ctx: &LeaderContext,
    caller: &str,
    caller_key: Option<&str>,
    mut req: HeartbeatRequest,
    now: SystemTime,
) -> StateResult<HeartbeatResponse> {
    speaks_for(caller, &req.node_name, "report")?;
    bound(&mut req)?;
    let Some(registered) = ctx.store().get(&keys::node(caller)).await? else {
        return Err(StateError::NotFound(format!(
            "node {caller:?} is not registered (join first)"
        )));
    };
    if let Some(key) = caller_key {
        let node = Node::decode(registered.value.as_slice())
            .map_err(|e| StateError::Internal(format!("node {caller:?}'s record: {e}")))?;
        if key_is_listed(&node, key)? {
            confirm_certificate(ctx, caller, key, now).await?;
        }
    }
    let liveness = &ctx.leadership.liveness;
    let marked_lost = liveness.heard(caller, now);
    // Heard, but what it says waits for a later heartbeat when it comes too often
    // (the agent reports changes at most once a second, and every tick).
    let every = (ctx.settings.agent_tick / 2).min(std::time::Duration::from_secs(1));
    if !marked_lost && !liveness.may_record(caller, every) {
        return Ok(HeartbeatResponse {
            revision: registered.mod_revision,
            leader_address: String::new(),
            control_plane_apis: ctx.control_plane.get(ctx.store()).await,
            leader_node: ctx.node().to_owned(),
        });
    }
    if let Some(reported) = &req.allocatable {
        update_capacity(ctx, caller, &registered, reported, now).await;
    }
    let (mut instance_ops, instance_events) =
        state::instances::report_ops(ctx.store(), caller, &req.instances, now).await?;
    if !instance_events.is_empty() {
        let lease = ctx.leadership.events.get(ctx.store()).await;
        instance_ops.extend(instance_events.iter().map(|e| e.put(lease)));
    }
    let mut status = req.node_status.unwrap_or_default();
    status.state = NodeState::Ready.into();
    status.last_heartbeat = Some(kat_proto::timestamp(now));
    let key = keys::node_status(caller);
    // NodeMonitor may mark the node NotReady at the same moment: the write compares the
    // status it read, and is tried again on a race.
    for _ in 0..3 {
        let previous = ctx.store().get(&key).await?;
        let stored = previous
            .as_ref()
            .and_then(|kv| NodeStatus::decode(kv.value.as_slice()).ok());
        let was = stored.as_ref().map(NodeStatus::state);
        if !req.rejoining
            && !marked_lost
            && instance_ops.is_empty()
            && stored.as_ref().is_some_and(|s| same_but_time(s, &status))
        {
            // Nothing changed: the heartbeat is in the leader's memory only.
            return Ok(HeartbeatResponse {
                revision: previous.as_ref().map_or(0, |kv| kv.mod_revision),
                leader_address: String::new(),
                control_plane_apis: ctx.control_plane.get(ctx.store()).await,
                leader_node: ctx.node().to_owned(),
            });
        }
        let mut ops = vec![TxnOp::put(&key, status.encode_to_vec())];
        ops.extend(instance_ops.iter().cloned());
        let event = if req.rejoining {
            Some((
                "NodeRejoined",
                "rejoined after running detached; the leader's view wins",
            ))
        } else if was != Some(NodeState::Ready) {
            Some(("NodeReady", "heartbeats arrive; Ready"))
        } else {
            None
        };
        if let Some((reason, message)) = event {
            let event = node_event(
                caller,
                reason,
                EventSeverity::Normal,
                message.to_owned(),
                now,
            );
            ops.push(ctx.leadership.event_op(event).await);
        }
        let unchanged = match &previous {
            Some(kv) => Compare::unchanged(&key, kv.mod_revision),
            None => Compare::absent(&key),
        };
        let result = ctx.leadership.commit_txn([unchanged], ops).await?;
        if result.succeeded {
            if was != Some(NodeState::Ready) || req.rejoining {
                tracing::info!(node = %caller, rejoining = req.rejoining, "node Ready");
            }
            return Ok(HeartbeatResponse {
                revision: result.revision,
                leader_address: String::new(),
                control_plane_apis: ctx.control_plane.get(ctx.store()).await,
                leader_node: ctx.node().to_owned(),
            });
        }
    }
    Err(StateError::Unavailable(
        "the status write kept conflicting; ask again".to_owned(),
    ))
}

/// Whether two statuses differ in no more than the time they were written.
fn same_but_time(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| NodeStatus {
        last_heartbeat: None,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Records what a node reports it has (CPU, memory, GPUs: SPEC §7) when that differs
/// from its registration, with a NodeCapacityChanged event (the node verbs' fenced
/// registration update). A failed write is left to the next heartbeat.
async fn update_capacity(
    ctx: &LeaderContext,
    caller: &str,
    registered: &KeyValue,
    reported: &NodeResources,
    now: SystemTime,
) {
    let same = Node::decode(registered.value.as_slice())
        .ok()
        .and_then(|n| n.spec)
        .is_some_and(|s| s.capacity.as_ref() == Some(reported));
    if same {
        return;
    }
    if let Some(problem) = super::join::capacity_problem(reported) {
        // Not written, not an event (it would be one per heartbeat): the log says it.
        tracing::warn!(node = %caller, %problem, "capacity from a heartbeat ignored");
        return;
    }
    let gpus: Vec<String> = reported
        .gpus
        .iter()
        .map(|g| format!("{:?} {}", g.driver(), g.model).trim().to_owned())
        .collect();
    let message = format!(
        "capacity now {} millicores, {} MiB{}",
        reported.cpu_millis,
        reported.memory_bytes / (1024 * 1024),
        if gpus.is_empty() {
            String::new()
        } else {
            format!(", GPUs: {}", gpus.join(", "))
        }
    );
    let change = |node: &mut Node| {
        let spec = node.spec.get_or_insert_with(Default::default);
        spec.capacity = Some(reported.clone());
        spec.allocatable = Some(reported.clone());
        Ok(message.clone())
    };
    match state::nodes::update(&ctx.leadership, caller, "NodeCapacityChanged", change, now).await {
        Ok(_) => tracing::info!(node = %caller, "node capacity updated from its heartbeat"),
        Err(e) => tracing::debug!(node = %caller, error = %e, "capacity update not written"),
    }
}
