//! The world a scheduling round plans over, read from the store: workloads, instances
//! with their reported status, nodes with theirs, and JOB progress.

use std::collections::HashMap;

use kat_proto::v1alpha1::{Instance, InstanceStatus, JobState, Node, NodeStatus, Quadlet};
use prost::Message;

use crate::state::keys::{
    INSTANCE_STATUS_PREFIX, INSTANCES_PREFIX, JOBS_PREFIX, NODE_STATUS_PREFIX, NODES_PREFIX,
    WORKLOADS_PREFIX,
};
use crate::store::StateStore;

/// Everything a round needs, read from the store.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub workloads: Vec<Quadlet>,
    /// Every instance, with the status its node reported (else its own).
    pub instances: Vec<Instance>,
    pub nodes: Vec<(Node, Option<NodeStatus>)>,
    /// JOB progress, by `ns/name`.
    pub jobs: HashMap<String, JobState>,
}

/// Reads the world.
pub async fn read_world(store: &dyn StateStore) -> Result<World, crate::store::StoreError> {
    let (w, _) = store.list(WORKLOADS_PREFIX).await?;
    let (i, _) = store.list(INSTANCES_PREFIX).await?;
    let (s, _) = store.list(INSTANCE_STATUS_PREFIX).await?;
    let (n, _) = store.list(NODES_PREFIX).await?;
    let (ns, _) = store.list(NODE_STATUS_PREFIX).await?;
    let (j, _) = store.list(JOBS_PREFIX).await?;
    let reported: HashMap<String, InstanceStatus> = s
        .iter()
        .filter_map(|kv| {
            let id = kv.key.rsplit('/').next()?.to_owned();
            Some((id, InstanceStatus::decode(kv.value.as_slice()).ok()?))
        })
        .collect();
    let statuses: HashMap<String, NodeStatus> = ns
        .iter()
        .filter_map(|kv| {
            let name = kv.key.strip_prefix(NODE_STATUS_PREFIX)?.to_owned();
            Some((name, NodeStatus::decode(kv.value.as_slice()).ok()?))
        })
        .collect();
    Ok(World {
        workloads: w
            .iter()
            .filter_map(|kv| Quadlet::decode(kv.value.as_slice()).ok())
            .collect(),
        instances: i
            .iter()
            .filter_map(|kv| Instance::decode(kv.value.as_slice()).ok())
            .map(|mut inst| {
                if let Some(s) = reported.get(&inst.id) {
                    inst.status = Some(s.clone());
                }
                inst
            })
            .collect(),
        jobs: j
            .iter()
            .filter_map(|kv| {
                let key = kv.key.strip_prefix(JOBS_PREFIX)?.to_owned();
                Some((key, JobState::decode(kv.value.as_slice()).ok()?))
            })
            .collect(),
        nodes: n
            .iter()
            .filter_map(|kv| Node::decode(kv.value.as_slice()).ok())
            .map(|node| {
                let name = node
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let status = statuses.get(&name).cloned();
                (node, status)
            })
            .collect(),
    })
}
