//! The node API (SPEC §6, §10): `Join` now; heartbeats, the sync stream and
//! certificate renewal later. Every refusal says why in a status message and changes
//! nothing in the store.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::node_api_server::{NodeApi, NodeApiServer};
use kat_proto::v1alpha1::user_api_server::UserApiServer;
use kat_proto::v1alpha1::{
    Assignment, AssignmentSet, ClusterConfiguration, DesiredState, EtcdMembership, EventSeverity,
    HeartbeatRequest, HeartbeatResponse, Instance, JoinRequest, JoinResponse, Node, NodeRole,
    NodeSpec, NodeState, NodeStatus, ObjectMeta, Peer, PeerSet, RenewCertificateRequest,
    RenewCertificateResponse, StoredToken, SyncEvent, SyncRequest, TokenKind, sync_event,
};
use prost::Message;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::user_api::UserApiService;
use crate::leader::node_monitor::node_event;
use crate::pki::ca::{CertAndKey, ClusterCa, NODE_CERT_VALIDITY, PkiError};
use crate::pki::tokens;
use crate::store::election::LeaderKey;
use crate::store::{Compare, StateStore, Txn, TxnOp};

/// `/kat/nodes/<name>`: a node's registration.
pub fn node_key(name: &str) -> String {
    format!("/kat/nodes/{name}")
}

/// What the node API needs from the leader.
#[derive(Clone)]
pub struct NodeApiContext {
    pub store: Arc<dyn StateStore>,
    pub leader: LeaderKey,
    /// The leading node's name.
    pub leader_node: String,
    pub ca: CertAndKey,
    pub cluster: ClusterConfiguration,
    /// Control-plane API addresses, re-read at most every few seconds (every
    /// heartbeat answer carries them).
    pub control_plane: ControlPlaneCache,
    /// The lease events are written under.
    pub events: crate::leader::node_monitor::EventLease,
    /// The certificate this leader presents to agent APIs (logs, exec).
    pub agent_client: super::instances::AgentClientCert,
}

/// A short-lived cache of [`control_plane_apis`].
#[derive(Clone, Default)]
pub struct ControlPlaneCache(Arc<std::sync::Mutex<Option<CachedApis>>>);

/// When the addresses were read, and what they were.
type CachedApis = (tokio::time::Instant, Vec<String>);

impl ControlPlaneCache {
    const FRESH_FOR: Duration = Duration::from_secs(5);

    /// Drops the cached addresses: the next [`get`](Self::get) reads the store.
    pub fn forget(&self) {
        if let Ok(mut cached) = self.0.lock() {
            *cached = None;
        }
    }

    /// The addresses, read from the store when the cached ones are older than 5 s.
    pub async fn get(&self, store: &dyn StateStore) -> Vec<String> {
        if let Ok(cached) = self.0.lock()
            && let Some((at, apis)) = cached.as_ref()
            && at.elapsed() < Self::FRESH_FOR
        {
            return apis.clone();
        }
        match control_plane_apis(store).await {
            Ok(apis) => {
                if let Ok(mut cached) = self.0.lock() {
                    *cached = Some((tokio::time::Instant::now(), apis.clone()));
                }
                apis
            }
            Err(_) => Vec::new(),
        }
    }
}

/// The store could not be reached or refused the request: the caller may retry.
fn unavailable(e: crate::store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

/// Why a join was refused, as the joining node is told.
fn refused_token() -> Status {
    // One message for every token problem: a caller learns nothing about which tokens exist.
    Status::unauthenticated("join token refused (unknown, expired or already used)")
}

/// Handles one join: checks the token, signs the CSR, registers the node and spends a
/// single-use token, all in one transaction fenced on leadership.
pub async fn join(
    ctx: &NodeApiContext,
    req: JoinRequest,
    now: SystemTime,
) -> Result<JoinResponse, Status> {
    let (id, secret) = tokens::parse(&req.token).map_err(|_| refused_token())?;
    let token_key = tokens::key(TokenKind::Join, id);
    let stored = ctx
        .store
        .get(&token_key)
        .await
        .map_err(unavailable)?
        .ok_or_else(refused_token)?;
    let mut record = StoredToken::decode(stored.value.as_slice()).map_err(|_| refused_token())?;
    tokens::check(&record, TokenKind::Join, secret, now).map_err(|_| refused_token())?;

    if let Some(problem) = kat_proto::names::dns_label_problem(&req.node_name) {
        return Err(Status::invalid_argument(format!("node_name: {problem}")));
    }
    let address: IpAddr = req.advertise_address.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "advertise_address: {:?} is not an IP address",
            req.advertise_address
        ))
    })?;
    let node_key = node_key(&req.node_name);
    if ctx
        .store
        .get(&node_key)
        .await
        .map_err(unavailable)?
        .is_some()
    {
        return Err(Status::already_exists(format!(
            "a node named {:?} is already registered",
            req.node_name
        )));
    }
    let signer = ClusterCa::from_pem(&ctx.ca).map_err(|e| Status::internal(e.to_string()))?;
    let certificate_pem = signer
        .sign_node_csr(&req.csr_pem, &req.node_name, address, NODE_CERT_VALIDITY)
        .map_err(|e| match e {
            PkiError::WrongCommonName { .. } => Status::permission_denied(e.to_string()),
            other => Status::invalid_argument(other.to_string()),
        })?;

    let spec = ctx.cluster.spec.clone().unwrap_or_default();
    // The first quorumSize nodes are control-plane members: they get an etcd member
    // (added as a learner, which does not count for quorum until the leader promotes
    // it) and serve the API when they lead.
    let (members, _) = ctx
        .store
        .list(CONTROL_PLANE_PREFIX)
        .await
        .map_err(unavailable)?;
    let control_plane = members.len() < usize::try_from(spec.quorum_size.max(1)).unwrap_or(1);
    let port = |p: u32| u16::try_from(p).unwrap_or_default();
    let mut etcd = None;
    let mut learner = None;
    if control_plane {
        let peer_url = format!(
            "https://{}",
            SocketAddr::new(address, port(spec.etcd_peer_port))
        );
        // etcd takes one learner at a time, and no new member while one is not yet
        // connected: a member that joined just before may still be catching up (the
        // leader promotes it within a tick or two).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        let members = loop {
            match ctx.store.add_learner(&peer_url).await {
                Ok(members) => break members,
                Err(e)
                    if (e.to_string().contains("too many learner")
                        || e.to_string().contains("unhealthy cluster"))
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(Status::unavailable(format!(
                        "cannot add an etcd member for {}: {e}",
                        req.node_name
                    )));
                }
            }
        };
        learner = members
            .iter()
            .find(|m| m.peer_urls.contains(&peer_url))
            .map(|m| m.id);
        let initial_cluster: Vec<String> = members
            .iter()
            .filter_map(|m| {
                let url = m.peer_urls.first()?;
                let name = if *url == peer_url {
                    req.node_name.clone()
                } else if m.name.is_empty() {
                    return None;
                } else {
                    m.name.clone()
                };
                Some(format!("{name}={url}"))
            })
            .collect();
        etcd = Some(EtcdMembership {
            member_name: req.node_name.clone(),
            initial_cluster: initial_cluster.join(","),
        });
    }
    let role = if control_plane {
        NodeRole::ControlPlane
    } else {
        NodeRole::Worker
    };
    let node = Node {
        api_version: kat_proto::quadlet::API_VERSION.to_owned(),
        kind: "Node".to_owned(),
        metadata: Some(ObjectMeta {
            name: req.node_name.clone(),
            labels: req.labels.clone(),
            ..Default::default()
        }),
        spec: Some(NodeSpec {
            advertise_address: address.to_string(),
            wireguard_public_key: req.wireguard_public_key.clone(),
            wireguard_endpoint: SocketAddr::new(
                address,
                u16::try_from(spec.wireguard_port).unwrap_or_default(),
            )
            .to_string(),
            role: role.into(),
            agent_version: req.agent_version.clone(),
            capacity: req.capacity.clone(),
            allocatable: req.capacity.clone(),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::NotReady.into(),
            ..Default::default()
        }),
    };
    let mut then = vec![TxnOp::put(&node_key, node.encode_to_vec())];
    if control_plane {
        let api = SocketAddr::new(address, port(spec.api_port));
        then.push(TxnOp::put(
            control_plane_key(&req.node_name),
            api.to_string(),
        ));
    }
    if !record.reusable {
        record.used = true;
        then.push(TxnOp::put(&token_key, record.encode_to_vec()));
    }
    let (event_key, event) = node_event(
        &req.node_name,
        "NodeJoined",
        EventSeverity::Normal,
        format!(
            "joined as {} from {address}",
            if control_plane {
                "a control-plane member"
            } else {
                "a worker"
            }
        ),
        now,
    );
    let lease = ctx.events.get(ctx.store.as_ref()).await;
    then.push(TxnOp::put_leased(event_key, event.encode_to_vec(), lease));
    let txn = Txn::new()
        .when([
            ctx.leader.fence(),
            Compare::unchanged(&token_key, stored.mod_revision),
            Compare::absent(&node_key),
        ])
        .and_then(then);
    let result = ctx.store.txn(txn).await;
    if !result.as_ref().is_ok_and(|r| r.succeeded) {
        // Another join raced this one (same token or same name), leadership moved, or
        // the store failed: the etcd member added for it goes too.
        if let Some(id) = learner
            && let Err(e) = ctx.store.remove_member(id).await
        {
            tracing::warn!(node = %req.node_name, error = %e, "could not remove the etcd learner of a failed join");
        }
        return Err(match result {
            Err(e) => unavailable(e),
            Ok(_) => Status::aborted("the join conflicted with another change; try again"),
        });
    }
    if control_plane {
        // Heartbeat answers name the new member at once, not up to 5 s later.
        ctx.control_plane.forget();
    }
    tracing::info!(node = %req.node_name, address = %address, control_plane, "node joined");
    Ok(JoinResponse {
        certificate_pem,
        ca_pem: ctx.ca.cert_pem.clone(),
        cluster: Some(ctx.cluster.clone()),
        overlay_subnet: String::new(),
        node: Some(node),
        etcd,
    })
}

/// `/kat/control-plane/`: one key per control-plane member, its API address.
pub const CONTROL_PLANE_PREFIX: &str = "/kat/control-plane/";

pub fn control_plane_key(name: &str) -> String {
    format!("{CONTROL_PLANE_PREFIX}{name}")
}

/// Every control-plane member's API address (HOST:PORT).
pub async fn control_plane_apis(
    store: &dyn crate::store::StateStore,
) -> Result<Vec<String>, crate::store::StoreError> {
    let (kvs, _) = store.list(CONTROL_PLANE_PREFIX).await?;
    Ok(kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect())
}

/// `/kat/status/nodes/<name>`: a node's last reported status.
pub fn node_status_key(name: &str) -> String {
    format!("/kat/status/nodes/{name}")
}

/// The node a request comes from: the CN of its client certificate, which the TLS
/// layer has already checked against the cluster CA.
pub fn caller_node<T>(request: &Request<T>) -> Result<String, Status> {
    let certs = request
        .peer_certs()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Status::unauthenticated("this call needs the node's client certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Status::unauthenticated("client certificate without a common name"))
}

/// Records a node's heartbeat. A node may report only for itself.
pub async fn heartbeat(
    ctx: &NodeApiContext,
    caller: &str,
    req: HeartbeatRequest,
    now: SystemTime,
) -> Result<HeartbeatResponse, Status> {
    if req.node_name != caller {
        return Err(Status::permission_denied(format!(
            "this certificate belongs to node {caller:?}; it cannot report for {:?}",
            req.node_name
        )));
    }
    let registered = ctx
        .store
        .get(&node_key(caller))
        .await
        .map_err(unavailable)?;
    let Some(registered) = registered else {
        return Err(Status::not_found(format!(
            "node {caller:?} is not registered (join first)"
        )));
    };
    if let Some(reported) = &req.allocatable {
        update_capacity(ctx, caller, &registered, reported, now).await;
    }
    let (mut instance_ops, instance_events) =
        instance_status_ops(ctx.store.as_ref(), caller, &req.instances, now).await?;
    if !instance_events.is_empty() {
        let lease = ctx.events.get(ctx.store.as_ref()).await;
        for (key, event) in instance_events {
            instance_ops.push(TxnOp::put_leased(key, event.encode_to_vec(), lease));
        }
    }
    let mut status = req.node_status.unwrap_or_default();
    status.state = NodeState::Ready.into();
    status.last_heartbeat = Some(kat_proto::timestamp(now));
    let key = node_status_key(caller);
    // NodeMonitor may mark the node NotReady at the same moment: the write compares the
    // status it read, and is tried again on a race.
    for _ in 0..3 {
        let previous = ctx.store.get(&key).await.map_err(unavailable)?;
        let was = previous
            .as_ref()
            .and_then(|kv| NodeStatus::decode(kv.value.as_slice()).ok())
            .map(|s| s.state());
        let mut then = vec![TxnOp::put(&key, status.encode_to_vec())];
        then.extend(instance_ops.iter().cloned());
        let event = if req.rejoining {
            Some((
                "NodeRejoined",
                "rejoined after running detached; the leader's view wins".to_owned(),
            ))
        } else if was != Some(NodeState::Ready) {
            Some(("NodeReady", "heartbeats arrive; Ready".to_owned()))
        } else {
            None
        };
        if let Some((reason, message)) = event {
            let (event_key, event) =
                node_event(caller, reason, EventSeverity::Normal, message, now);
            let lease = ctx.events.get(ctx.store.as_ref()).await;
            then.push(TxnOp::put_leased(event_key, event.encode_to_vec(), lease));
        }
        let unchanged = match &previous {
            Some(kv) => Compare::unchanged(&key, kv.mod_revision),
            None => Compare::absent(&key),
        };
        let txn = Txn::new()
            .when([ctx.leader.fence(), unchanged])
            .and_then(then);
        let result = ctx.store.txn(txn).await.map_err(unavailable)?;
        if result.succeeded {
            if was != Some(NodeState::Ready) || req.rejoining {
                tracing::info!(node = %caller, rejoining = req.rejoining, "node Ready");
            }
            return Ok(HeartbeatResponse {
                revision: result.revision,
                leader_address: String::new(),
                control_plane_apis: ctx.control_plane.get(ctx.store.as_ref()).await,
                leader_node: ctx.leader_node.clone(),
            });
        }
    }
    Err(Status::unavailable(
        "the status write kept conflicting (or this member no longer leads); ask again",
    ))
}

/// Records what a node reports it has (CPU, memory, GPUs: SPEC §7) when that differs
/// from its registration, with a NodeCapacityChanged event (the node verbs' fenced
/// registration update). A failed write is left to the next heartbeat.
async fn update_capacity(
    ctx: &NodeApiContext,
    caller: &str,
    registered: &crate::store::KeyValue,
    reported: &kat_proto::v1alpha1::NodeResources,
    now: SystemTime,
) {
    let same = Node::decode(registered.value.as_slice())
        .ok()
        .and_then(|n| n.spec)
        .is_some_and(|s| s.capacity.as_ref() == Some(reported));
    if same {
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
    match super::nodes::update_node(ctx, caller, "NodeCapacityChanged", change, now).await {
        Ok(_) => tracing::info!(node = %caller, "node capacity updated from its heartbeat"),
        Err(e) => tracing::debug!(node = %caller, error = %e, "capacity update not written"),
    }
}

/// The events a changed instance status makes (SPEC §12): started, failed, restarted,
/// unhealthy — each under the instance's workload, so `describe workload` shows them.
fn instance_events(
    caller: &str,
    report: &kat_proto::v1alpha1::InstanceReport,
    old: Option<&kat_proto::v1alpha1::InstanceStatus>,
) -> Vec<(&'static str, EventSeverity, String)> {
    use kat_proto::v1alpha1::InstancePhase;
    use kat_proto::v1alpha1::instance_status::Health;
    let new = report.status.clone().unwrap_or_default();
    let default = kat_proto::v1alpha1::InstanceStatus::default();
    let old = old.unwrap_or(&default);
    let id = &report.id;
    let mut events = Vec::new();
    let became = |phase: InstancePhase| new.phase() == phase && old.phase() != phase;
    if became(InstancePhase::Running) {
        events.push((
            "InstanceStarted",
            EventSeverity::Normal,
            format!("instance {id} running on {caller}"),
        ));
    }
    if became(InstancePhase::Failed) {
        let why = [new.reason.as_str(), new.message.as_str()]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        let mut message = format!("instance {id} on {caller} failed");
        if new.exit_code != 0 {
            message.push_str(&format!(" (exit code {})", new.exit_code));
        }
        if !why.is_empty() {
            message.push_str(&format!(": {why}"));
        }
        events.push(("InstanceFailed", EventSeverity::Warning, message));
    }
    if new.restarts > old.restarts {
        events.push((
            "InstanceRestarted",
            EventSeverity::Warning,
            format!(
                "instance {id} on {caller} restarted ({} restarts)",
                new.restarts
            ),
        ));
    }
    if new.health() == Health::Unhealthy && old.health() != Health::Unhealthy {
        events.push((
            "InstanceUnhealthy",
            EventSeverity::Warning,
            format!("instance {id} on {caller} failed its health check"),
        ));
    }
    events
}

/// The writes that make `/kat/status/instances/<caller>/` what the node reports:
/// changed statuses put, statuses of instances it no longer has deleted; and the
/// events the changes make.
async fn instance_status_ops(
    store: &dyn StateStore,
    caller: &str,
    reports: &[kat_proto::v1alpha1::InstanceReport],
    now: SystemTime,
) -> Result<(Vec<TxnOp>, Vec<(String, kat_proto::v1alpha1::Event)>), Status> {
    use super::workloads::{INSTANCE_STATUS_PREFIX, instance_status_key};
    let (stored, _) = store
        .list(&format!("{INSTANCE_STATUS_PREFIX}{caller}/"))
        .await
        .map_err(unavailable)?;
    let stored: std::collections::HashMap<String, Vec<u8>> =
        stored.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let mut ops = Vec::new();
    let mut events = Vec::new();
    let mut reported = std::collections::HashSet::new();
    for r in reports {
        // IDs become key segments: anything but a DNS label is not ours.
        if kat_proto::names::dns_label_problem(&r.id).is_some() {
            continue;
        }
        let key = instance_status_key(caller, &r.id);
        let value = r.status.clone().unwrap_or_default().encode_to_vec();
        if stored.get(&key) != Some(&value) {
            if !r.namespace.is_empty() && !r.workload.is_empty() {
                let old = stored
                    .get(&key)
                    .and_then(|v| kat_proto::v1alpha1::InstanceStatus::decode(v.as_slice()).ok());
                for (reason, severity, message) in instance_events(caller, r, old.as_ref()) {
                    // Distinct times, so events of one heartbeat get distinct keys.
                    let at = now + Duration::from_nanos(events.len() as u64);
                    events.push(super::workloads::workload_event(
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

/// The WireGuard peers node `caller` should have: every other registered node.
pub fn peer_set(nodes: &[Node], caller: &str) -> PeerSet {
    let peers = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.as_ref()?.name.clone();
            let spec = n.spec.as_ref()?;
            (name != caller).then(|| Peer {
                node_name: name,
                public_key: spec.wireguard_public_key.clone(),
                endpoint: spec.wireguard_endpoint.clone(),
                allowed_ips: if spec.overlay_subnet.is_empty() {
                    Vec::new()
                } else {
                    vec![spec.overlay_subnet.clone()]
                },
            })
        })
        .collect();
    PeerSet { peers }
}

async fn peers_now(
    store: &dyn crate::store::StateStore,
    caller: &str,
) -> Result<(PeerSet, i64), crate::store::StoreError> {
    let (kvs, revision) = store.list("/kat/nodes/").await?;
    let nodes: Vec<Node> = kvs
        .iter()
        .filter_map(|kv| Node::decode(kv.value.as_slice()).ok())
        .collect();
    Ok((peer_set(&nodes, caller), revision))
}

/// The instances assigned to `caller` (placed there, to run), each with the Quadlet
/// of its generation, by instance ID.
async fn assignments_now(
    store: &dyn crate::store::StateStore,
    caller: &str,
) -> Result<(AssignmentSet, i64), crate::store::StoreError> {
    use super::workloads::{INSTANCES_PREFIX, revision_key};
    let (kvs, revision) = store.list(INSTANCES_PREFIX).await?;
    let mut mine: Vec<Instance> = kvs
        .iter()
        .filter_map(|kv| Instance::decode(kv.value.as_slice()).ok())
        .filter(|i| i.node == caller && i.desired_state() != DesiredState::Stop)
        .collect();
    mine.sort_by(|a, b| a.id.cmp(&b.id));
    let mut quadlets: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut assignments = Vec::new();
    for mut instance in mine {
        let key = revision_key(&instance.namespace, &instance.workload, instance.generation);
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

/// Node `caller`'s sync stream (SPEC §6): the current peer set (unless the node says
/// it has seen this revision already) and its assignments first, then a new peer set
/// whenever a registration changes and new assignments whenever its instances
/// change. DNS records join the stream with the issue that creates them. Ends when
/// the receiver is dropped or the store's watch breaks.
pub async fn sync_events(
    ctx: &NodeApiContext,
    caller: &str,
    from_revision: i64,
) -> Result<tokio::sync::mpsc::Receiver<Result<SyncEvent, Status>>, Status> {
    use super::workloads::INSTANCES_PREFIX;
    let store = ctx.store.clone();
    let (peers, revision) = peers_now(store.as_ref(), caller)
        .await
        .map_err(unavailable)?;
    let (assignments, assigned_at) = assignments_now(store.as_ref(), caller)
        .await
        .map_err(unavailable)?;
    let mut node_watch = store
        .watch("/kat/nodes/", revision + 1)
        .await
        .map_err(unavailable)?;
    let mut instance_watch = store
        .watch(INSTANCES_PREFIX, assigned_at + 1)
        .await
        .map_err(unavailable)?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let caller = caller.to_owned();
    tokio::spawn(async move {
        if from_revision < revision {
            let first = SyncEvent {
                revision,
                payload: Some(sync_event::Payload::Peers(peers)),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
        }
        // Assignments always: they are cheap, and the node's copy may be older than
        // its revision says (two watches need not arrive in revision order).
        let mut sent = assignments.clone();
        let first = SyncEvent {
            revision: assigned_at,
            payload: Some(sync_event::Payload::Assignments(assignments)),
        };
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let update = tokio::select! {
                () = tx.closed() => return,
                event = node_watch.recv() => {
                    let Some(Ok(mut last)) = event else {
                        let _ = tx.send(Err(Status::unavailable("the leader's watch ended; resync"))).await;
                        return;
                    };
                    // A burst of changes becomes one update.
                    while let Ok(Ok(next)) = node_watch.try_recv() {
                        last = next;
                    }
                    match peers_now(store.as_ref(), &caller).await {
                        Ok((peers, revision)) => Ok(Some(SyncEvent {
                            revision: revision.max(last.kv.mod_revision),
                            payload: Some(sync_event::Payload::Peers(peers)),
                        })),
                        Err(e) => Err(unavailable(e)),
                    }
                }
                event = instance_watch.recv() => {
                    let Some(Ok(mut last)) = event else {
                        let _ = tx.send(Err(Status::unavailable("the leader's watch ended; resync"))).await;
                        return;
                    };
                    while let Ok(Ok(next)) = instance_watch.try_recv() {
                        last = next;
                    }
                    match assignments_now(store.as_ref(), &caller).await {
                        Ok((set, _)) if set == sent => Ok(None),
                        Ok((set, revision)) => {
                            sent = set.clone();
                            Ok(Some(SyncEvent {
                                revision: revision.max(last.kv.mod_revision),
                                payload: Some(sync_event::Payload::Assignments(set)),
                            }))
                        }
                        Err(e) => Err(unavailable(e)),
                    }
                }
            };
            let update = match update {
                Ok(None) => continue,
                Ok(Some(event)) => Ok(event),
                Err(e) => Err(e),
            };
            let failed = update.is_err();
            if tx.send(update).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(rx)
}

/// Signs a new certificate for a registered node that asks with its current one; the
/// CSR (a new key, made on the node) must name the caller.
pub async fn renew_certificate(
    ctx: &NodeApiContext,
    caller: &str,
    req: RenewCertificateRequest,
) -> Result<RenewCertificateResponse, Status> {
    if req.node_name != caller {
        return Err(Status::permission_denied(format!(
            "this certificate belongs to node {caller:?}; it cannot renew for {:?}",
            req.node_name
        )));
    }
    let kv = ctx
        .store
        .get(&node_key(caller))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("node {caller:?} is not registered")))?;
    let node = Node::decode(kv.value.as_slice())
        .map_err(|e| Status::internal(format!("node {caller:?}: unreadable record: {e}")))?;
    let address: IpAddr = node
        .spec
        .as_ref()
        .and_then(|s| s.advertise_address.parse().ok())
        .ok_or_else(|| Status::internal(format!("node {caller:?} has no advertise address")))?;
    let signer = ClusterCa::from_pem(&ctx.ca).map_err(|e| Status::internal(e.to_string()))?;
    let certificate_pem = signer
        .sign_node_csr(&req.csr_pem, caller, address, NODE_CERT_VALIDITY)
        .map_err(|e| match e {
            PkiError::WrongCommonName { .. } => Status::permission_denied(e.to_string()),
            other => Status::invalid_argument(other.to_string()),
        })?;
    tracing::info!(node = %caller, "node certificate renewed");
    Ok(RenewCertificateResponse { certificate_pem })
}

/// What a member's API server serves from: the leader's context while it leads, and
/// the store to find the leader otherwise.
#[derive(Clone)]
pub struct Served {
    pub slot: super::ApiSlot,
    pub store: Arc<dyn StateStore>,
    /// The cluster CA certificate (client certificates are checked against it).
    pub ca_pem: String,
    /// This member's node name: a call that reaches the elected leader while its
    /// leader services still start waits for them rather than being sent back here.
    pub node: String,
}

/// How long a call to a just-elected leader waits for its leader services.
const LEADER_SETTLE: Duration = Duration::from_secs(5);

impl Served {
    /// A server that is always the leader (tests).
    pub fn leading(ctx: NodeApiContext) -> Self {
        Self {
            store: ctx.store.clone(),
            ca_pem: ctx.ca.cert_pem.clone(),
            slot: std::sync::Arc::new(tokio::sync::watch::channel(Some(ctx)).0),
            node: String::new(),
        }
    }

    /// The leader's context, or the answer that points the caller to the leader.
    pub async fn leader(&self) -> Result<NodeApiContext, Status> {
        if let Some(ctx) = self.slot.borrow().clone() {
            return Ok(ctx);
        }
        let leader =
            crate::store::election::leader(self.store.as_ref(), crate::node::ELECTION_PREFIX)
                .await
                .ok()
                .flatten()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        if leader.as_deref() == Some(self.node.as_str()) && !self.node.is_empty() {
            // Elected, and starting the leader's actors: the call waits for them.
            let mut slot = self.slot.subscribe();
            return match tokio::time::timeout(LEADER_SETTLE, slot.wait_for(Option::is_some)).await {
                Ok(Ok(ctx)) => ctx.clone().ok_or_else(Self::starting),
                _ => Err(Self::starting()),
            };
        }
        Err(self.redirect(leader).await)
    }

    fn starting() -> Status {
        Status::unavailable(
            "this member leads but its leader services are still starting; try again",
        )
    }

    async fn redirect(&self, leader: Option<String>) -> Status {
        let address = match &leader {
            Some(name) => self
                .store
                .get(&control_plane_key(name))
                .await
                .ok()
                .flatten()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            None => None,
        };
        match address {
            Some(address) => {
                let mut status = Status::unavailable(format!(
                    "this member is not the leader; the leader's API is at {address}"
                ));
                if let Ok(value) = address.parse() {
                    status
                        .metadata_mut()
                        .insert(super::LEADER_API_METADATA, value);
                }
                status
            }
            None => Status::unavailable(
                "this member is not the leader and no leader is known yet; try again",
            ),
        }
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct NodeApiService {
    served: Served,
}

impl NodeApiService {
    pub fn new(served: Served) -> Self {
        Self { served }
    }
}

type SyncStream =
    Pin<Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<SyncEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeApi for NodeApiService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let ctx = self.served.leader().await?;
        join(&ctx, request.into_inner(), SystemTime::now())
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let caller = caller_node(&request)?;
        let ctx = self.served.leader().await?;
        let started = std::time::Instant::now();
        let answer = heartbeat(&ctx, &caller, request.into_inner(), SystemTime::now()).await;
        let m = crate::metrics::global();
        let result = if answer.is_ok() { "ok" } else { "refused" };
        m.inc(
            "kat_heartbeats_total",
            "Heartbeats handled by this leader, by result.",
            &[("result", result)],
            1.0,
        );
        m.observe(
            "kat_heartbeat_handling_seconds",
            "Time the leader took to record a heartbeat.",
            &[],
            started.elapsed(),
        );
        answer.map(Response::new)
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let caller = caller_node(&request)?;
        let req = request.into_inner();
        if req.node_name != caller {
            return Err(Status::permission_denied(format!(
                "this certificate belongs to node {caller:?}; it cannot sync for {:?}",
                req.node_name
            )));
        }
        let ctx = self.served.leader().await?;
        let rx = sync_events(&ctx, &caller, req.from_revision).await?;
        Ok(Response::new(Box::pin(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateResponse>, Status> {
        let caller = caller_node(&request)?;
        let ctx = self.served.leader().await?;
        renew_certificate(&ctx, &caller, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Serves the node API and the user API (gRPC, and REST under `/v1alpha1/` with
/// `/healthz`, `/readyz` — [`super::rest`]) with TLS on `listener` until `shutdown`
/// resolves. Client certificates from the cluster CA are requested but optional:
/// `Join` comes before the node has one, users authenticate with tokens, and the node
/// calls after `Join` require one.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server_cert: &CertAndKey,
    served: Served,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use tonic::server::NamedService;
    // The chain carries the CA too: a joining node checks it against its pin.
    let tls = super::listener::server_config(
        server_cert,
        &served.ca_pem,
        &served.ca_pem,
        super::listener::ClientAuth::Optional,
    )?;
    let node_api = NodeApiServer::new(NodeApiService::new(served.clone()));
    let user_api = UserApiServer::new(UserApiService::new(served.clone()));
    let router = super::rest::router(served)
        .route_service(
            &format!("/{}/{{*rest}}", NodeApiServer::<NodeApiService>::NAME),
            node_api,
        )
        .route_service(
            &format!("/{}/{{*rest}}", UserApiServer::<UserApiService>::NAME),
            user_api,
        );
    Server::builder()
        .accept_http1(true)
        .timeout(Duration::from_secs(60))
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(super::listener::incoming(listener, tls), shutdown)
        .await?;
    Ok(())
}
