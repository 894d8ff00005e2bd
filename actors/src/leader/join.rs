//! `Join` (SPEC §6), as the leader handles it: checks the token, signs the node's CSR,
//! registers the node and spends a single-use token, all in one transaction fenced on
//! leadership. The first `quorumSize` nodes are control-plane members: they get an
//! etcd member, added as a learner (no vote until the leader promotes it), and serve
//! the API when they lead. Every refusal says why and changes nothing.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::{
    EtcdMembership, EventSeverity, JoinRequest, JoinResponse, Node, NodeRole, NodeSpec, NodeState,
    NodeStatus, ObjectMeta,
};
use prost::Message;

use super::context::LeaderContext;
use crate::pki::ca::{ClusterCa, PkiError, key_sha256_of_pem};
use crate::state::events::node_event;
use crate::state::tokens::ValidJoinToken;
use crate::state::{self, StateError, StateResult, keys};
use crate::store::{Compare, TxnOp};

/// How long a control-plane join waits for etcd to take another learner.
const LEARNER_WAIT: Duration = Duration::from_secs(45);

/// The node's certificate for `csr_pem`, signed by the cluster CA (CN = `node`), valid
/// for the cluster's `certificateLifetimeSeconds`.
pub fn sign_node_certificate(
    ctx: &LeaderContext,
    csr_pem: &str,
    node: &str,
    address: IpAddr,
) -> StateResult<String> {
    let signer = ClusterCa::from_pem(&ctx.ca).map_err(|e| StateError::Internal(e.to_string()))?;
    signer
        .sign_node_csr(csr_pem, node, address, ctx.settings.certificate_lifetime)
        .map_err(|e| match e {
            PkiError::WrongCommonName { .. } => StateError::Denied(e.to_string()),
            other => StateError::BadRequest(other.to_string()),
        })
}

/// The most labels a node may bring to its join.
const MAX_JOIN_LABELS: usize = 64;

/// Why a capacity a node reports about itself is not believable: more than any one
/// machine has (a node claiming a huge capacity would attract every instance, and
/// their environments). The limits are far above real hardware, not a tuning knob.
pub fn capacity_problem(c: &kat_proto::v1alpha1::NodeResources) -> Option<String> {
    use kat_proto::quadlet::defaults::{MAX_CPU_MILLIS, MAX_GPUS, MAX_MEMORY_BYTES};
    let within = |v: i64, max: u64| u64::try_from(v).is_ok_and(|v| v <= max);
    if !within(c.cpu_millis, MAX_CPU_MILLIS) {
        return Some(format!(
            "{} millicores is not a machine's CPU",
            c.cpu_millis
        ));
    }
    if !within(c.memory_bytes, MAX_MEMORY_BYTES) {
        return Some(format!(
            "{} bytes is not a machine's memory",
            c.memory_bytes
        ));
    }
    if c.gpus.len() > MAX_GPUS {
        return Some(format!("{} GPUs; at most {MAX_GPUS}", c.gpus.len()));
    }
    None
}

/// Whether a connection from `source` may claim `address`: its own address, or any
/// loopback address from a loopback source (the leader's own host, which all of them
/// name).
fn may_claim(source: IpAddr, address: IpAddr) -> bool {
    let source = source.to_canonical();
    source == address.to_canonical() || (source.is_loopback() && address.is_loopback())
}

/// Handles one join; see the module docs. `source` is the address the call came
/// from (`None` in process): the advertise address must be it.
pub async fn join(
    ctx: &LeaderContext,
    req: JoinRequest,
    source: Option<IpAddr>,
    now: SystemTime,
) -> StateResult<JoinResponse> {
    let token = state::tokens::check_join(ctx.store(), &req.token, now).await?;
    if let Some(problem) = kat_proto::names::dns_label_problem(&req.node_name) {
        return Err(StateError::invalid("node_name", problem));
    }
    let address: IpAddr = req.advertise_address.parse().map_err(|_| {
        StateError::invalid(
            "advertise_address",
            format!("{:?} is not an IP address", req.advertise_address),
        )
    })?;
    if req.labels.len() > MAX_JOIN_LABELS {
        return Err(StateError::invalid(
            "labels",
            format!("{} labels; at most {MAX_JOIN_LABELS}", req.labels.len()),
        ));
    }
    if let Some(problem) = req
        .labels
        .iter()
        .find_map(|(k, v)| state::nodes::label_problem(k, v))
    {
        return Err(StateError::invalid("labels", problem));
    }
    if let Some(problem) = req.capacity.as_ref().and_then(capacity_problem) {
        return Err(StateError::invalid("capacity", problem));
    }
    if let Some(source) = source
        && !may_claim(source, address)
    {
        return Err(StateError::Denied(format!(
            "advertise_address {address} is not the address this join came from ({source}): \
             a node can claim only its own address"
        )));
    }
    if state::nodes::exists(ctx.store(), &req.node_name).await? {
        return Err(StateError::AlreadyExists(format!(
            "a node named {:?} is already registered",
            req.node_name
        )));
    }
    let (registered, _) = state::nodes::registrations(ctx.store()).await?;
    if let Some(other) = registered.iter().find(|n| {
        n.spec
            .as_ref()
            .and_then(|s| s.advertise_address.parse::<IpAddr>().ok())
            .is_some_and(|a| a.to_canonical() == address.to_canonical())
    }) {
        let other = other.metadata.as_ref().map_or("", |m| m.name.as_str());
        return Err(StateError::AlreadyExists(format!(
            "advertise_address {address} is already node {other:?}'s; each node needs its own"
        )));
    }
    let certificate_pem = sign_node_certificate(ctx, &req.csr_pem, &req.node_name, address)?;
    let settings = &ctx.settings;
    let (members, _) = ctx.store().list(keys::CONTROL_PLANE_PREFIX).await?;
    let control_plane = members.len() < settings.quorum_size;
    let seat = if control_plane {
        // Signed before the learner is added: a CSR that cannot be signed adds nothing.
        let etcd_cert = member_credentials(ctx, &req, address)?;
        let peer = SocketAddr::new(address, settings.etcd_peer_port);
        let mut seat = etcd_seat(ctx, &req.node_name, &format!("https://{peer}")).await?;
        seat.membership.certificate_pem = etcd_cert.certificate_pem;
        seat.membership.etcd_ca_pem = etcd_cert.etcd_ca_pem;
        seat.membership.etcd_ca_key_pem = etcd_cert.etcd_ca_key_pem;
        seat.membership.cluster_ca_key_pem = etcd_cert.cluster_ca_key_pem;
        Some(seat)
    } else {
        None
    };
    let mut node = registration(&req, address, control_plane, settings);
    let key =
        key_sha256_of_pem(&certificate_pem).map_err(|e| StateError::Internal(e.to_string()))?;
    node.spec
        .get_or_insert_with(Default::default)
        .certificate_key_sha256 = vec![key];
    let result = record(
        ctx,
        &req.node_name,
        &node,
        control_plane,
        address,
        &token,
        now,
    )
    .await;
    if let Err(e) = result {
        // Another join raced this one (same token or same name), leadership moved, or
        // the store failed: the etcd member added for it goes too.
        if let Some(id) = seat.as_ref().and_then(|s| s.learner)
            && let Err(e) = ctx.store().remove_member(id).await
        {
            tracing::warn!(node = %req.node_name, error = %e, "could not remove the etcd learner of a failed join");
        }
        return Err(e);
    }
    if control_plane {
        // Heartbeat answers name the new member at once, not up to 5 s later.
        ctx.control_plane.forget();
    }
    tracing::info!(node = %req.node_name, address = %address, control_plane, "node joined");
    Ok(JoinResponse {
        certificate_pem,
        ca_pem: ctx.ca.cert_pem.clone(),
        cluster: Some(settings.config.clone()),
        overlay_subnet: String::new(),
        node: Some(node),
        etcd: seat.map(|s| s.membership),
    })
}

/// What a new control-plane member gets besides its seat: its etcd certificate from
/// the etcd CA (the only CA etcd trusts), and the keys it needs to lead one day.
fn member_credentials(
    ctx: &LeaderContext,
    req: &JoinRequest,
    address: IpAddr,
) -> StateResult<EtcdMembership> {
    let etcd_ca = ctx.etcd_ca.as_ref().ok_or_else(|| {
        StateError::Unsupported(
            "this cluster has no etcd CA: it cannot take control-plane members".to_owned(),
        )
    })?;
    if req.etcd_csr_pem.is_empty() {
        return Err(StateError::invalid(
            "etcd_csr_pem",
            "this node becomes a control-plane member and needs an etcd certificate: \
             send a CSR for it (kat-agent join does)",
        ));
    }
    let signer = ClusterCa::from_pem(etcd_ca).map_err(|e| StateError::Internal(e.to_string()))?;
    let certificate_pem = signer
        .sign_node_csr(
            &req.etcd_csr_pem,
            &req.node_name,
            address,
            ctx.settings.certificate_lifetime,
        )
        .map_err(|e| match e {
            PkiError::WrongCommonName { .. } => StateError::Denied(format!("etcd_csr_pem: {e}")),
            other => StateError::invalid("etcd_csr_pem", other.to_string()),
        })?;
    Ok(EtcdMembership {
        certificate_pem,
        etcd_ca_pem: etcd_ca.cert_pem.clone(),
        etcd_ca_key_pem: etcd_ca.key_pem.clone(),
        cluster_ca_key_pem: ctx.ca.key_pem.clone(),
        ..Default::default()
    })
}

/// A control-plane joiner's place in etcd.
struct EtcdSeat {
    membership: EtcdMembership,
    /// The learner added for it (removed again if the join fails).
    learner: Option<u64>,
}

/// Adds the joiner as an etcd learner and tells it the initial cluster. etcd takes one
/// learner at a time, and no new member while one is not yet connected: a member that
/// joined just before may still be catching up (the leader promotes it within a tick
/// or two), so this waits up to [`LEARNER_WAIT`].
async fn etcd_seat(ctx: &LeaderContext, node: &str, peer_url: &str) -> StateResult<EtcdSeat> {
    let deadline = tokio::time::Instant::now() + LEARNER_WAIT;
    let members = loop {
        match ctx.store().add_learner(peer_url).await {
            Ok(members) => break members,
            Err(e)
                if (e.to_string().contains("too many learner")
                    || e.to_string().contains("unhealthy cluster"))
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(StateError::Unavailable(format!(
                    "cannot add an etcd member for {node}: {e}"
                )));
            }
        }
    };
    let learner = members
        .iter()
        .find(|m| m.peer_urls.iter().any(|u| u == peer_url))
        .map(|m| m.id);
    let initial_cluster: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let url = m.peer_urls.first()?;
            let name = if url == peer_url {
                node.to_owned()
            } else if m.name.is_empty() {
                return None;
            } else {
                m.name.clone()
            };
            Some(format!("{name}={url}"))
        })
        .collect();
    Ok(EtcdSeat {
        membership: EtcdMembership {
            member_name: node.to_owned(),
            initial_cluster: initial_cluster.join(","),
            ..Default::default()
        },
        learner,
    })
}

/// The joiner's registration record.
fn registration(
    req: &JoinRequest,
    address: IpAddr,
    control_plane: bool,
    settings: &ClusterSettings,
) -> Node {
    let role = if control_plane {
        NodeRole::ControlPlane
    } else {
        NodeRole::Worker
    };
    Node {
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
            wireguard_endpoint: SocketAddr::new(address, settings.wireguard_port).to_string(),
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
    }
}

/// Registers the node (and a member's API address), spends the token and records
/// `NodeJoined`, in one fenced transaction that fails if the token or the name was
/// taken meanwhile.
async fn record(
    ctx: &LeaderContext,
    name: &str,
    node: &Node,
    control_plane: bool,
    address: IpAddr,
    token: &ValidJoinToken,
    now: SystemTime,
) -> StateResult<()> {
    let node_key = keys::node(name);
    let mut ops = vec![TxnOp::put(&node_key, node.encode_to_vec())];
    if control_plane {
        let api = SocketAddr::new(address, ctx.settings.api_port);
        ops.push(TxnOp::put(keys::control_plane(name), api.to_string()));
    }
    ops.extend(token.spend());
    let role = if control_plane {
        "a control-plane member"
    } else {
        "a worker"
    };
    let event = node_event(
        name,
        "NodeJoined",
        EventSeverity::Normal,
        format!("joined as {role} from {address}"),
        now,
    );
    ops.push(ctx.leadership.event_op(event).await);
    let when = [
        Compare::unchanged(&token.key, token.stored.mod_revision),
        Compare::absent(&node_key),
    ];
    if ctx.leadership.commit(when, ops).await? {
        Ok(())
    } else {
        Err(StateError::Conflict(
            "the join conflicted with another change; try again".to_owned(),
        ))
    }
}
