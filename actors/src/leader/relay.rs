//! `katcall logs`, `katcall exec` and volume purges through the leader (SPEC §8.2,
//! §10): the leader finds the instance's node and calls that node's agent API
//! (`agentPort`, mTLS), presenting a certificate it makes for itself from the cluster
//! CA (CN = the leader's node name, the only caller agents accept), and relays the
//! answer. An agent's refusal keeps its kind (not found, denied, ...) and message.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kat_proto::v1alpha1::agent_api_client::AgentApiClient;
use kat_proto::v1alpha1::{
    ExecRequest, ExecResponse, Instance, LogChunk, LogsRequest, NodeState, PurgeVolumesRequest,
};
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;

use super::context::LeaderContext;
use crate::agent::api::{DEFAULT_EXEC, MAX_EXEC, PURGE_WAIT};
use crate::state::{self, StateError, StateResult};

/// A client for the agent API of the node running `instance`.
async fn agent_client(
    ctx: &LeaderContext,
    instance: &Instance,
    call_timeout: Duration,
) -> StateResult<(AgentApiClient<Channel>, String)> {
    if instance.node.is_empty() {
        return Err(StateError::Precondition(format!(
            "instance {} is pending: it runs on no node yet",
            instance.id
        )));
    }
    node_client(ctx, &instance.node, call_timeout).await
}

/// A client for `node`'s agent API, and its address.
async fn node_client(
    ctx: &LeaderContext,
    node_name: &str,
    call_timeout: Duration,
) -> StateResult<(AgentApiClient<Channel>, String)> {
    let node = state::nodes::get(ctx.store(), node_name).await?;
    let address: IpAddr = node
        .spec
        .as_ref()
        .and_then(|s| s.advertise_address.parse().ok())
        .ok_or_else(|| {
            StateError::Precondition(format!(
                "node {node_name} has no advertise address on record"
            ))
        })?;
    let addr = SocketAddr::new(address, ctx.settings.agent_port).to_string();
    let own_address = match state::nodes::get(ctx.store(), ctx.node()).await {
        Ok(n) => n
            .spec
            .and_then(|s| s.advertise_address.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let identity = ctx.agent_client.get(
        &ctx.ca,
        ctx.node(),
        own_address,
        ctx.settings.certificate_lifetime,
    )?;
    let channel =
        crate::client::agent_channel(&addr, &ctx.ca.cert_pem, &identity, call_timeout, node_name)
            .map_err(|e| StateError::Unavailable(e.to_string()))?;
    Ok((AgentApiClient::new(channel), addr))
}

/// An agent's refusal or failure, saying which node answered.
fn from_agent<'a>(node: &'a str, addr: &'a str) -> impl Fn(tonic::Status) -> StateError + 'a {
    use tonic::Code;
    move |s| {
        let message = s.message().to_owned();
        match s.code() {
            Code::Unavailable | Code::Unknown => StateError::Unavailable(format!(
                "node {node}'s agent API ({addr}) did not answer: {message}"
            )),
            Code::NotFound => StateError::NotFound(message),
            Code::InvalidArgument | Code::OutOfRange => StateError::BadRequest(message),
            Code::FailedPrecondition => StateError::Precondition(message),
            Code::PermissionDenied => StateError::Denied(message),
            Code::Unauthenticated => StateError::Unauthenticated(message),
            Code::AlreadyExists => StateError::AlreadyExists(message),
            Code::Aborted => StateError::Conflict(message),
            Code::Unimplemented => StateError::Unsupported(message),
            Code::DeadlineExceeded | Code::Cancelled => StateError::TimedOut(message),
            _ => StateError::Internal(message),
        }
    }
}

/// An instance's log lines, as its node sends them.
pub type ChunkStream = std::pin::Pin<Box<dyn Stream<Item = StateResult<LogChunk>> + Send>>;

/// An instance's log, from its node.
pub async fn logs(ctx: &LeaderContext, req: LogsRequest) -> StateResult<ChunkStream> {
    let instance =
        state::instances::find(ctx.store(), &req.namespace, &req.workload, &req.instance_id)
            .await?;
    let (mut client, addr) = agent_client(ctx, &instance, Duration::from_secs(30)).await?;
    let forwarded = LogsRequest {
        namespace: instance.namespace.clone(),
        workload: instance.workload.clone(),
        ..req
    };
    let stream = client
        .stream_logs(forwarded)
        .await
        .map_err(from_agent(&instance.node, &addr))?
        .into_inner();
    let (node, addr) = (instance.node.clone(), addr.clone());
    Ok(Box::pin(stream.map(move |item| {
        item.map_err(|s| from_agent(&node, &addr)(s))
    })))
}

/// Runs a command in an instance's container, on its node.
pub async fn exec(ctx: &LeaderContext, req: ExecRequest) -> StateResult<ExecResponse> {
    if req.command.is_empty() {
        return Err(StateError::invalid("command", "must not be empty"));
    }
    let instance =
        state::instances::find(ctx.store(), &req.namespace, &req.workload, &req.instance_id)
            .await?;
    let limit = match req.timeout_seconds {
        0 => DEFAULT_EXEC,
        n => Duration::from_secs(n.into()).min(MAX_EXEC),
    };
    let (mut client, addr) = agent_client(ctx, &instance, limit + Duration::from_secs(10)).await?;
    let forwarded = ExecRequest {
        namespace: instance.namespace.clone(),
        workload: instance.workload.clone(),
        ..req
    };
    client
        .exec(forwarded)
        .await
        .map(tonic::Response::into_inner)
        .map_err(from_agent(&instance.node, &addr))
}

/// How long the leader waits for one node's purge: the node's own wait for the
/// workload's instances to go, and 15 s for the call.
pub const PURGE_CALL_WAIT: Duration = Duration::from_secs(PURGE_WAIT.as_secs() + 15);

/// Removes a deleted workload's simpleClusterStorage on every node, each node's
/// agent once that node has retired the workload's instances. Nodes that are not
/// Ready, or do not answer, keep their copy; they are named in the second list.
pub async fn purge_volumes(
    ctx: &LeaderContext,
    ns: &str,
    workload: &str,
) -> StateResult<(Vec<String>, Vec<String>)> {
    let nodes = state::nodes::list(ctx.store()).await?;
    let mut calls = tokio::task::JoinSet::new();
    let mut failed = Vec::new();
    for node in nodes {
        let name = node
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let state = node.status.as_ref().map(|s| s.state());
        if !matches!(
            state,
            Some(NodeState::Ready | NodeState::Cordoned | NodeState::Draining)
        ) {
            failed.push(format!("{name}: not Ready; its volumes are left in place"));
            continue;
        }
        let ctx = ctx.clone();
        let request = PurgeVolumesRequest {
            namespace: ns.to_owned(),
            workload: workload.to_owned(),
        };
        calls.spawn(async move {
            let result = async {
                let wait = PURGE_CALL_WAIT;
                let (mut client, addr) = node_client(&ctx, &name, wait).await?;
                client
                    .purge_volumes(request)
                    .await
                    .map_err(from_agent(&name, &addr))
            }
            .await;
            (name, result)
        });
    }
    let mut purged = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((name, Ok(_))) => purged.push(name),
            Ok((name, Err(e))) => failed.push(format!("{name}: {e}")),
            Err(e) => failed.push(format!("a purge call failed: {e}")),
        }
    }
    purged.sort();
    failed.sort();
    Ok((purged, failed))
}
