//! `katcall logs` and `katcall exec` through the leader (SPEC §8.2, §10): the leader
//! finds the instance's node and calls that node's agent API (`agentPort`, mTLS),
//! presenting a certificate it makes for itself from the cluster CA (CN = the leader's
//! node name, the only caller agents accept), and relays the answer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kat_proto::v1alpha1::agent_api_client::AgentApiClient;
use kat_proto::v1alpha1::{ExecRequest, ExecResponse, Instance, LogsRequest};
use tonic::Status;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::Channel;

use super::node_api::NodeApiContext;
use super::user_api::get_node;
use super::workloads;
use crate::pki::ca::{CertAndKey, ClusterCa, node_key_and_csr};

/// Lifetime of the leader's agent-client certificate; a new one is made after half.
const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The leader's client certificate for agent calls, made once per half lifetime.
#[derive(Clone, Default)]
pub struct AgentClientCert(Arc<std::sync::Mutex<Option<(Instant, CertAndKey)>>>);

impl AgentClientCert {
    fn get(&self, ctx: &NodeApiContext, address: IpAddr) -> Result<CertAndKey, Status> {
        let mut cached = self
            .0
            .lock()
            .map_err(|_| Status::internal("agent client certificate cache poisoned"))?;
        if let Some((made, cert)) = cached.as_ref()
            && made.elapsed() < CLIENT_CERT_VALIDITY / 2
        {
            return Ok(cert.clone());
        }
        let failed = |e: crate::pki::ca::PkiError| {
            Status::internal(format!(
                "cannot make the leader's agent client certificate: {e}"
            ))
        };
        let (key_pem, csr_pem) = node_key_and_csr(&ctx.leader_node).map_err(failed)?;
        let cert_pem = ClusterCa::from_pem(&ctx.ca)
            .and_then(|ca| {
                ca.sign_node_csr(&csr_pem, &ctx.leader_node, address, CLIENT_CERT_VALIDITY)
            })
            .map_err(failed)?;
        let cert = CertAndKey { cert_pem, key_pem };
        *cached = Some((Instant::now(), cert.clone()));
        Ok(cert)
    }
}

/// The instance a request names: by namespace, workload and ID, or — with no
/// workload — by ID alone within the namespace (all namespaces when that is empty).
pub async fn find_instance(
    ctx: &NodeApiContext,
    ns: &str,
    workload: &str,
    id: &str,
) -> Result<Instance, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("instanceId: must not be empty"));
    }
    let found: Vec<Instance> = workloads::list_instances(ctx.store.as_ref(), ns, workload, "")
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
        [] => Err(Status::not_found(format!(
            "no instance {id} in {scope} (katcall get instances lists them)"
        ))),
        [one] => Ok(one.clone()),
        _ => Err(Status::failed_precondition(format!(
            "instance ID {id} is in several workloads; name the workload too"
        ))),
    }
}

/// A client for the agent API of the node running `instance`.
async fn agent_client(
    ctx: &NodeApiContext,
    instance: &Instance,
    call_timeout: Duration,
) -> Result<(AgentApiClient<Channel>, String), Status> {
    if instance.node.is_empty() {
        return Err(Status::failed_precondition(format!(
            "instance {} is pending: it runs on no node yet",
            instance.id
        )));
    }
    node_client(ctx, &instance.node, call_timeout).await
}

/// A client for `node`'s agent API, and its address.
async fn node_client(
    ctx: &NodeApiContext,
    node_name: &str,
    call_timeout: Duration,
) -> Result<(AgentApiClient<Channel>, String), Status> {
    let node = get_node(ctx.store.as_ref(), node_name).await?;
    let address: IpAddr = node
        .spec
        .as_ref()
        .and_then(|s| s.advertise_address.parse().ok())
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "node {node_name} has no advertise address on record"
            ))
        })?;
    let port = ctx.cluster.spec.as_ref().map_or(0, |s| s.agent_port);
    let addr = SocketAddr::new(address, u16::try_from(port).unwrap_or_default()).to_string();
    let own_address = match get_node(ctx.store.as_ref(), &ctx.leader_node).await {
        Ok(n) => n
            .spec
            .and_then(|s| s.advertise_address.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let identity = ctx.agent_client.get(ctx, own_address)?;
    let channel = crate::client::api_channel_with_timeout(
        &addr,
        &ctx.ca.cert_pem,
        Some(&identity),
        call_timeout,
    )
    .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok((AgentApiClient::new(channel), addr))
}

/// An agent's refusal or failure, saying which node answered.
fn from_agent<'a>(node: &'a str, addr: &'a str) -> impl Fn(Status) -> Status + 'a {
    move |s| match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => Status::unavailable(format!(
            "node {node}'s agent API ({addr}) did not answer: {}",
            s.message()
        )),
        _ => Status::new(s.code(), s.message().to_owned()),
    }
}

pub type ChunkStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<kat_proto::v1alpha1::LogChunk, Status>> + Send>>;

/// An instance's log, from its node.
pub async fn logs(ctx: &NodeApiContext, req: LogsRequest) -> Result<ChunkStream, Status> {
    let instance = find_instance(ctx, &req.namespace, &req.workload, &req.instance_id).await?;
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
    Ok(Box::pin(stream))
}

/// Runs a command in an instance's container, on its node.
pub async fn exec(ctx: &NodeApiContext, req: ExecRequest) -> Result<ExecResponse, Status> {
    if req.command.is_empty() {
        return Err(Status::invalid_argument("command: must not be empty"));
    }
    let instance = find_instance(ctx, &req.namespace, &req.workload, &req.instance_id).await?;
    let limit = match req.timeout_seconds {
        0 => crate::agent_api::DEFAULT_EXEC,
        n => Duration::from_secs(n.into()).min(crate::agent_api::MAX_EXEC),
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

/// Removes a deleted workload's simpleClusterStorage on every node, each node's
/// agent once that node has retired the workload's instances. Nodes that are not
/// Ready, or do not answer, keep their copy; they are named in the second list.
pub async fn purge_volumes(
    ctx: &NodeApiContext,
    ns: &str,
    workload: &str,
) -> Result<(Vec<String>, Vec<String>), Status> {
    let nodes = super::user_api::list_nodes(ctx.store.as_ref()).await?;
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
            Some(
                kat_proto::v1alpha1::NodeState::Ready
                    | kat_proto::v1alpha1::NodeState::Cordoned
                    | kat_proto::v1alpha1::NodeState::Draining
            )
        ) {
            failed.push(format!("{name}: not Ready; its volumes are left in place"));
            continue;
        }
        let ctx = ctx.clone();
        let request = kat_proto::v1alpha1::PurgeVolumesRequest {
            namespace: ns.to_owned(),
            workload: workload.to_owned(),
        };
        calls.spawn(async move {
            let result = async {
                let (mut client, addr) = node_client(
                    &ctx,
                    &name,
                    crate::agent_api::PURGE_WAIT + Duration::from_secs(15),
                )
                .await?;
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
            Ok((name, Err(status))) => failed.push(format!("{name}: {}", status.message())),
            Err(e) => failed.push(format!("a purge call failed: {e}")),
        }
    }
    purged.sort();
    failed.sort();
    Ok((purged, failed))
}
