//! The user API (SPEC §10) that `katcall` speaks, as gRPC: every call carries
//! `authorization: Bearer <id>.<secret>`, checked against the hashed API tokens before
//! anything else happens (a missing or wrong token gets `Unauthenticated` and nothing
//! else); then each call is a few lines over `crate::state` (reads and fenced writes)
//! or the leader's behaviours (`crate::leader::{relay, drain, backups}`). The REST
//! gateway ([`super::rest`]) calls these same methods.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::user_api_server::UserApi;
use kat_proto::v1alpha1::*;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::served::Served;
use crate::leader::{self, LeaderContext};
use crate::state::workloads::ApplyMode;
use crate::state::{self, StateError, StateResult};

/// How long `katcall drain` waits for a node to empty.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// Checks the request's bearer token against `/kat/tokens/api/<id>`.
pub async fn authorize(
    store: &dyn crate::store::StateStore,
    metadata: &tonic::metadata::MetadataMap,
    now: SystemTime,
) -> StateResult<()> {
    let refused = || StateError::Unauthenticated(state::tokens::API_TOKEN_REFUSED.to_owned());
    let header = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let presented = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(refused)?;
    state::tokens::authorize_api(store, presented, now).await
}

/// `ns`, or `default` when empty.
fn namespace_or_default(ns: &str) -> &str {
    if ns.is_empty() {
        kat_proto::quadlet::defaults::DEFAULT_NAMESPACE
    } else {
        ns
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream of state results as the stream of a gRPC answer.
fn stream<T: Send + 'static>(
    items: impl Stream<Item = StateResult<T>> + Send + 'static,
) -> Response<BoxStream<T>> {
    Response::new(Box::pin(items.map(|item| item.map_err(Status::from))))
}

/// The answer of a call that went through.
fn ok<T>(result: StateResult<T>) -> Result<Response<T>, Status> {
    Ok(Response::new(result?))
}

/// The tonic service.
#[derive(Clone)]
pub struct UserApiService {
    served: Served,
}

impl UserApiService {
    pub fn new(served: Served) -> Self {
        Self { served }
    }

    /// The leader's context once the caller's token checks out (a follower points the
    /// caller to the leader first).
    async fn auth<T>(&self, request: &Request<T>) -> Result<LeaderContext, Status> {
        let ctx = self.served.leader().await?;
        authorize(ctx.store(), request.metadata(), SystemTime::now()).await?;
        Ok(ctx)
    }

    /// A node verb: `change` applied to node `name`'s registration, recorded as `reason`.
    async fn node_verb<T>(
        &self,
        request: &Request<T>,
        name: &str,
        reason: &str,
        change: impl Fn(&mut Node) -> StateResult<String>,
    ) -> Result<Response<Node>, Status> {
        let ctx = self.auth(request).await?;
        let now = SystemTime::now();
        ok(state::nodes::update(&ctx.leadership, name, reason, change, now).await)
    }
}

/// What the leader knows of a node in memory only: when it last heard it, and
/// (on control-plane nodes) the store's trouble, which cannot be written while the
/// store is out of space.
fn from_memory(ctx: &LeaderContext, node: &mut Node) {
    ctx.leadership.liveness.show(node);
    let member = node
        .spec
        .as_ref()
        .is_some_and(|s| s.role() == kat_proto::v1alpha1::NodeRole::ControlPlane);
    if member
        && let Some(trouble) = ctx.leadership.store_health.trouble()
        && let Some(status) = node.status.as_mut()
    {
        status.conditions.push(kat_proto::v1alpha1::NodeCondition {
            r#type: "StoreOutOfSpace".to_owned(),
            status: true,
            reason: "NOSPACE".to_owned(),
            message: trouble,
            last_transition: None,
        });
    }
}

#[tonic::async_trait]
impl UserApi for UserApiService {
    async fn create_workload(
        &self,
        request: Request<CreateWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        // An existing workload is updated: `katcall apply` creates or updates.
        let mode = ApplyMode::Apply;
        let now = SystemTime::now();
        ok(state::workloads::apply_bundle(
            &ctx.leadership,
            &ctx.settings,
            &req.namespace,
            None,
            &req.bundle,
            mode,
            now,
        )
        .await)
    }
    async fn update_workload(
        &self,
        request: Request<UpdateWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let (name, mode, now) = (
            Some(req.name.as_str()),
            ApplyMode::Update,
            SystemTime::now(),
        );
        ok(state::workloads::apply_bundle(
            &ctx.leadership,
            &ctx.settings,
            &req.namespace,
            name,
            &req.bundle,
            mode,
            now,
        )
        .await)
    }
    async fn get_workload(
        &self,
        request: Request<GetWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let ns = namespace_or_default(&req.namespace);
        let status = state::workloads::status_response(ctx.store(), ns, &req.name).await?;
        let mut q = state::workloads::get(ctx.store(), ns, &req.name).await?;
        if let Some(w) = q.workload.as_mut() {
            w.status = status.workload.and_then(|w| w.status);
        }
        Ok(Response::new(q))
    }
    async fn list_workloads(
        &self,
        request: Request<ListWorkloadsRequest>,
    ) -> Result<Response<ListWorkloadsResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let items = state::workloads::list(ctx.store(), &request.get_ref().namespace).await?;
        Ok(Response::new(ListWorkloadsResponse { items }))
    }
    async fn delete_workload(
        &self,
        request: Request<DeleteWorkloadRequest>,
    ) -> Result<Response<DeleteWorkloadResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let ns = namespace_or_default(&req.namespace);
        let deleted =
            state::workloads::delete(&ctx.leadership, ns, &req.name, SystemTime::now()).await;
        // A purge that did not finish (a node away, the call cut short) is completed by
        // asking again: the workload is gone, its volumes and user may not be.
        let already_deleted = match deleted {
            Ok(()) => false,
            Err(StateError::NotFound(_)) if req.purge_volumes => true,
            Err(e) => return Err(e.into()),
        };
        if !req.purge_volumes {
            return Ok(Response::new(DeleteWorkloadResponse::default()));
        }
        let (purged_nodes, purge_failures) =
            leader::relay::purge_volumes(&ctx, ns, &req.name).await?;
        Ok(Response::new(DeleteWorkloadResponse {
            purged_nodes,
            purge_failures,
            already_deleted,
        }))
    }
    async fn get_workload_status(
        &self,
        request: Request<GetWorkloadRequest>,
    ) -> Result<Response<WorkloadStatusResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let ns = namespace_or_default(&req.namespace);
        ok(state::workloads::status_response(ctx.store(), ns, &req.name).await)
    }
    async fn rollback_workload(
        &self,
        request: Request<RollbackWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let ns = namespace_or_default(&req.namespace);
        let now = SystemTime::now();
        ok(state::workloads::rollback(
            &ctx.leadership,
            &ctx.settings,
            ns,
            &req.name,
            req.to_generation,
            now,
        )
        .await)
    }

    async fn scale_workload(
        &self,
        request: Request<ScaleWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let ns = namespace_or_default(&req.namespace);
        let replicas = req
            .replicas
            .ok_or_else(|| Status::invalid_argument("replicas: required (0 to 1000)"))?;
        ok(state::workloads::scale(
            &ctx.leadership,
            ns,
            &req.name,
            i64::from(replicas),
            SystemTime::now(),
        )
        .await)
    }

    type StreamInstanceLogsStream = BoxStream<LogChunk>;
    async fn stream_instance_logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::StreamInstanceLogsStream>, Status> {
        let ctx = self.auth(&request).await?;
        // An empty namespace: the instance ID is looked up in every namespace.
        let chunks = leader::relay::logs(&ctx, request.into_inner()).await?;
        Ok(stream(chunks))
    }
    async fn exec_instance(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<ExecResponse>, Status> {
        let ctx = self.auth(&request).await?;
        ok(leader::relay::exec(&ctx, request.into_inner()).await)
    }
    async fn list_instances(
        &self,
        request: Request<ListInstancesRequest>,
    ) -> Result<Response<ListInstancesResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let items =
            state::instances::list(ctx.store(), &req.namespace, &req.workload, &req.node).await?;
        Ok(Response::new(ListInstancesResponse { items }))
    }
    async fn list_namespaces(
        &self,
        request: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let items = state::namespaces::list(ctx.store()).await?;
        Ok(Response::new(ListNamespacesResponse { items }))
    }
    async fn create_namespace(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<Namespace>, Status> {
        let ctx = self.auth(&request).await?;
        let namespace = request.into_inner().namespace;
        ok(state::namespaces::create(&ctx.leadership, namespace, SystemTime::now()).await)
    }
    async fn get_namespace(
        &self,
        request: Request<GetNamespaceRequest>,
    ) -> Result<Response<Namespace>, Status> {
        let ctx = self.auth(&request).await?;
        ok(state::namespaces::get(ctx.store(), &request.get_ref().name).await)
    }
    async fn delete_namespace(
        &self,
        request: Request<DeleteNamespaceRequest>,
    ) -> Result<Response<DeleteNamespaceResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let now = SystemTime::now();
        state::namespaces::delete(&ctx.leadership, &req.name, req.cascade, now).await?;
        Ok(Response::new(DeleteNamespaceResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let mut items = state::nodes::list(ctx.store()).await?;
        for node in &mut items {
            from_memory(&ctx, node);
        }
        Ok(Response::new(ListNodesResponse { items }))
    }
    async fn get_node(&self, request: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        let ctx = self.auth(&request).await?;
        let mut node = state::nodes::get(ctx.store(), &request.get_ref().name).await?;
        from_memory(&ctx, &mut node);
        Ok(Response::new(node))
    }
    async fn delete_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let now = SystemTime::now();
        state::nodes::delete(&ctx.leadership, &request.get_ref().name, now).await?;
        Ok(Response::new(DeleteNodeResponse {}))
    }
    async fn cordon_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        let name = &request.get_ref().name;
        self.node_verb(&request, name, "NodeCordoned", state::nodes::cordon)
            .await
    }
    async fn uncordon_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        let name = &request.get_ref().name;
        self.node_verb(&request, name, "NodeUncordoned", state::nodes::uncordon)
            .await
    }
    type DrainNodeStream = BoxStream<DrainProgress>;
    async fn drain_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<Self::DrainNodeStream>, Status> {
        let ctx = self.auth(&request).await?;
        let name = request.get_ref().name.clone();
        let progress = leader::drain::drain(ctx, name, DRAIN_LIMIT).await?;
        Ok(stream(ReceiverStream::new(progress)))
    }
    async fn set_node_labels(
        &self,
        request: Request<SetNodeLabelsRequest>,
    ) -> Result<Response<Node>, Status> {
        let req = request.get_ref();
        let change = |n: &mut Node| state::nodes::set_labels(n, &req.labels);
        self.node_verb(&request, &req.name, "NodeLabeled", change)
            .await
    }
    async fn set_node_taints(
        &self,
        request: Request<SetNodeTaintsRequest>,
    ) -> Result<Response<Node>, Status> {
        let req = request.get_ref();
        let change = |n: &mut Node| state::nodes::set_taints(n, &req.taints);
        self.node_verb(&request, &req.name, "NodeTainted", change)
            .await
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let items = state::events::list(ctx.store(), request.get_ref()).await?;
        Ok(Response::new(ListEventsResponse { items }))
    }
    type WatchEventsStream = BoxStream<Event>;
    async fn watch_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let ctx = self.auth(&request).await?;
        let events = state::events::watch(ctx.leadership.store.clone(), request.get_ref()).await?;
        Ok(stream(ReceiverStream::new(events)))
    }

    async fn create_join_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let (ca, req, now) = (&ctx.ca.cert_pem, request.get_ref(), SystemTime::now());
        ok(state::tokens::create(&ctx.leadership, ca, TokenKind::Join, req, now).await)
    }
    async fn create_api_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let (ca, req, now) = (&ctx.ca.cert_pem, request.get_ref(), SystemTime::now());
        ok(state::tokens::create(&ctx.leadership, ca, TokenKind::Api, req, now).await)
    }
    async fn delete_token(
        &self,
        request: Request<DeleteTokenRequest>,
    ) -> Result<Response<DeleteTokenResponse>, Status> {
        let ctx = self.auth(&request).await?;
        state::tokens::delete(&ctx.leadership, &request.get_ref().id).await?;
        Ok(Response::new(DeleteTokenResponse {}))
    }

    async fn create_backup(
        &self,
        request: Request<CreateBackupRequest>,
    ) -> Result<Response<Backup>, Status> {
        let ctx = self.auth(&request).await?;
        let pki = crate::pki::local::ClusterPki {
            cluster: ctx.ca.clone(),
            etcd: ctx.etcd_ca.clone(),
        };
        ok(leader::backups::make(&ctx.leadership, &ctx.settings, &pki, SystemTime::now()).await)
    }
    async fn list_backups(
        &self,
        request: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let items = leader::backups::kept(&ctx.settings)?;
        Ok(Response::new(ListBackupsResponse { items }))
    }

    async fn get_version(
        &self,
        request: Request<GetVersionRequest>,
    ) -> Result<Response<VersionInfo>, Status> {
        self.auth(&request).await?;
        Ok(Response::new(VersionInfo {
            version: kat_proto::VERSION.to_owned(),
            api_version: kat_proto::quadlet::API_VERSION.to_owned(),
            git_commit: String::new(),
        }))
    }
}
