//! The user API (SPEC §10) that `katcall` speaks: every call carries
//! `authorization: Bearer <id>.<secret>`, checked against the hashed API tokens in the
//! store before anything else happens; a missing or wrong token gets
//! `Unauthenticated` and nothing else.
//!
//! Every call of the service is built: workloads, instances (logs and exec from the
//! agent API), namespaces, nodes and node verbs, events, tokens, backups, version.
//! The REST gateway ([`super::rest`]) calls these same methods.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::user_api_server::UserApi;
use kat_proto::v1alpha1::*;
use prost::Message;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::node_api::{NodeApiContext, Served, node_key, node_status_key};
use super::{nodes, workloads};
use crate::leader::node_monitor::{EVENTS_PREFIX, NODE_STATUS_PREFIX};
use crate::pki::{pin, tokens};
use crate::store::{StateStore, Txn, TxnOp};

/// `/kat/nodes/`: node registrations.
pub const NODES_PREFIX: &str = "/kat/nodes/";

fn unavailable(e: crate::store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

fn refused() -> Status {
    Status::unauthenticated("missing or invalid API token")
}

/// Checks the request's bearer token against `/kat/tokens/api/<id>`.
pub async fn authorize(
    store: &dyn StateStore,
    metadata: &tonic::metadata::MetadataMap,
    now: SystemTime,
) -> Result<(), Status> {
    let header = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let presented = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(refused)?;
    let (id, secret) = tokens::parse(presented).map_err(|_| refused())?;
    let stored = store
        .get(&tokens::key(TokenKind::Api, id))
        .await
        .map_err(unavailable)?
        .ok_or_else(refused)?;
    let record = StoredToken::decode(stored.value.as_slice()).map_err(|_| refused())?;
    tokens::check(&record, TokenKind::Api, secret, now).map_err(|_| refused())
}

/// A node as users see it: its registration with its last reported status. A node
/// that never reported is NotReady.
pub fn node_view(mut node: Node, status: Option<NodeStatus>) -> Node {
    let mut status = status.unwrap_or_else(|| NodeStatus {
        state: NodeState::NotReady.into(),
        ..Default::default()
    });
    if let Some(spec) = &node.spec {
        // Operator verbs outrank a healthy heartbeat in what is shown.
        if status.state() == NodeState::Ready {
            if spec.draining {
                status.set_state(NodeState::Draining);
            } else if spec.unschedulable {
                status.set_state(NodeState::Cordoned);
            }
        }
    }
    node.status = Some(status);
    node
}

/// Every registered node with its status, by name.
pub async fn list_nodes(store: &dyn StateStore) -> Result<Vec<Node>, Status> {
    let (registrations, _) = store.list(NODES_PREFIX).await.map_err(unavailable)?;
    let (statuses, _) = store.list(NODE_STATUS_PREFIX).await.map_err(unavailable)?;
    let mut nodes = Vec::new();
    for kv in registrations {
        let Ok(node) = Node::decode(kv.value.as_slice()) else {
            continue;
        };
        let name = kv.key.trim_start_matches(NODES_PREFIX);
        let status = statuses
            .iter()
            .find(|s| s.key == node_status_key(name))
            .and_then(|s| NodeStatus::decode(s.value.as_slice()).ok());
        nodes.push(node_view(node, status));
    }
    nodes.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    Ok(nodes)
}

fn name_of(node: &Node) -> &str {
    node.metadata.as_ref().map_or("", |m| m.name.as_str())
}

/// One node with its status.
pub async fn get_node(store: &dyn StateStore, name: &str) -> Result<Node, Status> {
    let kv = store
        .get(&node_key(name))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("node {name:?} not found")))?;
    let node = Node::decode(kv.value.as_slice())
        .map_err(|e| Status::internal(format!("node {name:?}: stored record unreadable: {e}")))?;
    let status = store
        .get(&node_status_key(name))
        .await
        .map_err(unavailable)?
        .and_then(|kv| NodeStatus::decode(kv.value.as_slice()).ok());
    Ok(node_view(node, status))
}

/// Which events a request asks for: by involved object (`kind/name`), namespace and
/// time.
pub fn event_filter(req: &ListEventsRequest) -> Result<impl Fn(&Event) -> bool + use<>, Status> {
    let involved = if req.involved.is_empty() {
        None
    } else {
        let (kind, name) = req.involved.split_once('/').ok_or_else(|| {
            Status::invalid_argument(format!(
                "involved: {:?} must be kind/name, e.g. node/n1",
                req.involved
            ))
        })?;
        Some((kind.to_ascii_lowercase(), name.to_owned()))
    };
    let since = req.since;
    let namespace = req.namespace.clone();
    Ok(move |e: &Event| {
        involved.as_ref().is_none_or(|(kind, name)| {
            e.involved_object
                .as_ref()
                .is_some_and(|o| o.kind.to_ascii_lowercase() == *kind && o.name == *name)
        }) && since.as_ref().is_none_or(|since| {
            e.time
                .as_ref()
                .is_some_and(|t| (t.seconds, t.nanos) >= (since.seconds, since.nanos))
        }) && (namespace.is_empty()
            || e.involved_object
                .as_ref()
                .is_some_and(|o| o.namespace == namespace))
    })
}

/// Events, oldest first, filtered by involved object (`kind/name`) and time.
pub async fn list_events(
    store: &dyn StateStore,
    req: &ListEventsRequest,
) -> Result<Vec<Event>, Status> {
    let keep = event_filter(req)?;
    let (kvs, _) = store.list(EVENTS_PREFIX).await.map_err(unavailable)?;
    let mut events: Vec<Event> = kvs
        .iter()
        .filter_map(|kv| Event::decode(kv.value.as_slice()).ok())
        .filter(|e| keep(e))
        .collect();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(events)
}

/// The events a request asks for, oldest first, then each new one as it is recorded,
/// until the caller goes away.
pub async fn watch_events(
    store: std::sync::Arc<dyn StateStore>,
    req: &ListEventsRequest,
) -> Result<tokio::sync::mpsc::Receiver<Result<Event, Status>>, Status> {
    let keep = event_filter(req)?;
    let (kvs, revision) = store.list(EVENTS_PREFIX).await.map_err(unavailable)?;
    let mut changes = store
        .watch(EVENTS_PREFIX, revision + 1)
        .await
        .map_err(unavailable)?;
    let mut past: Vec<Event> = kvs
        .iter()
        .filter_map(|kv| Event::decode(kv.value.as_slice()).ok())
        .filter(|e| keep(e))
        .collect();
    past.sort_by(|a, b| a.id.cmp(&b.id));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for e in past {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        loop {
            let change = tokio::select! {
                () = tx.closed() => return,
                change = changes.recv() => change,
            };
            match change {
                None => {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the event watch ended; watch again",
                        )))
                        .await;
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(unavailable(e))).await;
                    return;
                }
                Some(Ok(change)) if change.kind == crate::store::EventKind::Put => {
                    if let Ok(e) = Event::decode(change.kv.value.as_slice())
                        && keep(&e)
                        && tx.send(Ok(e)).await.is_err()
                    {
                        return;
                    }
                }
                Some(Ok(_)) => {} // an event expiring
            }
        }
    });
    Ok(rx)
}

/// Creates a token of `kind`; a join token comes back with the CA hash appended, as
/// `kat-agent join --token` takes it.
pub async fn create_token(
    ctx: &NodeApiContext,
    kind: TokenKind,
    req: &CreateTokenRequest,
    now: SystemTime,
) -> Result<CreateTokenResponse, Status> {
    let ttl = match (req.ttl_seconds, kind) {
        (0, TokenKind::Join) => Some(tokens::DEFAULT_JOIN_TTL),
        (0, _) => None,
        (s, _) => Some(Duration::from_secs(u64::from(s))),
    };
    let description = if req.description.is_empty() {
        "created with katcall"
    } else {
        req.description.as_str()
    };
    let (token, record) = tokens::generate(kind, ttl, req.reusable, description, now)
        .map_err(|e| Status::internal(e.to_string()))?;
    let txn = Txn::new().when([ctx.leader.fence()]).and_then([TxnOp::put(
        tokens::key(kind, &record.id),
        record.encode_to_vec(),
    )]);
    if !ctx.store.txn(txn).await.map_err(unavailable)?.succeeded {
        return Err(Status::unavailable(
            "this member is no longer the leader; ask again",
        ));
    }
    let token = if kind == TokenKind::Join {
        pin::join_credential(&token, &ctx.ca.cert_pem)
            .map_err(|e| Status::internal(e.to_string()))?
    } else {
        token
    };
    Ok(CreateTokenResponse {
        id: record.id,
        token,
        expires_at: record.expires_at,
    })
}

/// `ns`, or `default` when empty.
fn namespace_or_default(ns: &str) -> &str {
    if ns.is_empty() {
        kat_proto::quadlet::defaults::DEFAULT_NAMESPACE
    } else {
        ns
    }
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
    async fn auth<T>(&self, request: &Request<T>) -> Result<NodeApiContext, Status> {
        let ctx = self.served.leader().await?;
        authorize(ctx.store.as_ref(), request.metadata(), SystemTime::now()).await?;
        Ok(ctx)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl UserApi for UserApiService {
    async fn create_workload(
        &self,
        request: Request<CreateWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        // An existing workload is updated: `katcall apply` creates or updates.
        workloads::apply_bundle(
            &ctx,
            &req.namespace,
            None,
            &req.bundle,
            workloads::ApplyMode::Apply,
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }
    async fn update_workload(
        &self,
        request: Request<UpdateWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        workloads::apply_bundle(
            &ctx,
            &req.namespace,
            Some(&req.name),
            &req.bundle,
            workloads::ApplyMode::Update,
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }
    async fn get_workload(
        &self,
        request: Request<GetWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let ns = namespace_or_default(&req.namespace);
        let status = workloads::workload_status_response(ctx.store.as_ref(), ns, &req.name).await?;
        let mut q = workloads::get_quadlet(ctx.store.as_ref(), ns, &req.name).await?;
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
        let items =
            workloads::list_quadlets(ctx.store.as_ref(), &request.get_ref().namespace).await?;
        Ok(Response::new(ListWorkloadsResponse { items }))
    }
    async fn delete_workload(
        &self,
        request: Request<DeleteWorkloadRequest>,
    ) -> Result<Response<DeleteWorkloadResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let ns = namespace_or_default(&req.namespace);
        workloads::delete_workload(&ctx, ns, &req.name, SystemTime::now()).await?;
        if !req.purge_volumes {
            return Ok(Response::new(DeleteWorkloadResponse::default()));
        }
        let (purged_nodes, purge_failures) =
            super::instances::purge_volumes(&ctx, ns, &req.name).await?;
        Ok(Response::new(DeleteWorkloadResponse {
            purged_nodes,
            purge_failures,
        }))
    }
    async fn get_workload_status(
        &self,
        request: Request<GetWorkloadRequest>,
    ) -> Result<Response<WorkloadStatusResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        workloads::workload_status_response(
            ctx.store.as_ref(),
            namespace_or_default(&req.namespace),
            &req.name,
        )
        .await
        .map(Response::new)
    }
    async fn rollback_workload(
        &self,
        request: Request<RollbackWorkloadRequest>,
    ) -> Result<Response<Quadlet>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        workloads::rollback(
            &ctx,
            namespace_or_default(&req.namespace),
            &req.name,
            req.to_generation,
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }

    type StreamInstanceLogsStream = BoxStream<LogChunk>;
    async fn stream_instance_logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::StreamInstanceLogsStream>, Status> {
        let ctx = self.auth(&request).await?;
        // An empty namespace: the instance ID is looked up in every namespace.
        super::instances::logs(&ctx, request.into_inner())
            .await
            .map(Response::new)
    }
    async fn exec_instance(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<ExecResponse>, Status> {
        let ctx = self.auth(&request).await?;
        super::instances::exec(&ctx, request.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_instances(
        &self,
        request: Request<ListInstancesRequest>,
    ) -> Result<Response<ListInstancesResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        let items =
            workloads::list_instances(ctx.store.as_ref(), &req.namespace, &req.workload, &req.node)
                .await?;
        Ok(Response::new(ListInstancesResponse { items }))
    }
    async fn list_namespaces(
        &self,
        request: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let items = super::namespaces::list(ctx.store.as_ref()).await?;
        Ok(Response::new(ListNamespacesResponse { items }))
    }
    async fn create_namespace(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<Namespace>, Status> {
        let ctx = self.auth(&request).await?;
        super::namespaces::create(&ctx, request.into_inner().namespace, SystemTime::now())
            .await
            .map(Response::new)
    }
    async fn get_namespace(
        &self,
        request: Request<GetNamespaceRequest>,
    ) -> Result<Response<Namespace>, Status> {
        let ctx = self.auth(&request).await?;
        super::namespaces::get(ctx.store.as_ref(), &request.get_ref().name)
            .await
            .map(Response::new)
    }
    async fn delete_namespace(
        &self,
        request: Request<DeleteNamespaceRequest>,
    ) -> Result<Response<DeleteNamespaceResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        super::namespaces::delete(&ctx, &req.name, req.cascade, SystemTime::now()).await?;
        Ok(Response::new(DeleteNamespaceResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let items = list_nodes(ctx.store.as_ref()).await?;
        Ok(Response::new(ListNodesResponse { items }))
    }

    async fn get_node(&self, request: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        let ctx = self.auth(&request).await?;
        get_node(ctx.store.as_ref(), &request.get_ref().name)
            .await
            .map(Response::new)
    }

    async fn delete_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        let ctx = self.auth(&request).await?;
        nodes::delete_node(&ctx, &request.get_ref().name, SystemTime::now()).await?;
        Ok(Response::new(DeleteNodeResponse {}))
    }
    async fn cordon_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        let ctx = self.auth(&request).await?;
        nodes::update_node(
            &ctx,
            &request.get_ref().name,
            "NodeCordoned",
            |n| {
                n.spec.get_or_insert_with(Default::default).unschedulable = true;
                Ok("cordoned: no new instances".to_owned())
            },
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }
    async fn uncordon_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        let ctx = self.auth(&request).await?;
        nodes::update_node(
            &ctx,
            &request.get_ref().name,
            "NodeUncordoned",
            |n| {
                let spec = n.spec.get_or_insert_with(Default::default);
                spec.unschedulable = false;
                spec.draining = false;
                Ok("uncordoned: schedulable again".to_owned())
            },
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }
    type DrainNodeStream = BoxStream<DrainProgress>;
    async fn drain_node(
        &self,
        request: Request<GetNodeRequest>,
    ) -> Result<Response<Self::DrainNodeStream>, Status> {
        let ctx = self.auth(&request).await?;
        let rx = nodes::drain(
            ctx,
            request.get_ref().name.clone(),
            Duration::from_secs(600),
        )
        .await?;
        Ok(Response::new(Box::pin(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
    async fn set_node_labels(
        &self,
        request: Request<SetNodeLabelsRequest>,
    ) -> Result<Response<Node>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        nodes::update_node(
            &ctx,
            &req.name,
            "NodeLabeled",
            |n| nodes::set_labels(n, &req.labels),
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }
    async fn set_node_taints(
        &self,
        request: Request<SetNodeTaintsRequest>,
    ) -> Result<Response<Node>, Status> {
        let ctx = self.auth(&request).await?;
        let req = request.get_ref();
        nodes::update_node(
            &ctx,
            &req.name,
            "NodeTainted",
            |n| nodes::set_taints(n, &req.taints),
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let items = list_events(ctx.store.as_ref(), request.get_ref()).await?;
        Ok(Response::new(ListEventsResponse { items }))
    }

    type WatchEventsStream = BoxStream<Event>;
    async fn watch_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let ctx = self.auth(&request).await?;
        let rx = watch_events(ctx.store.clone(), request.get_ref()).await?;
        Ok(Response::new(Box::pin(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn create_join_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let ctx = self.auth(&request).await?;
        create_token(&ctx, TokenKind::Join, request.get_ref(), SystemTime::now())
            .await
            .map(Response::new)
    }

    async fn create_api_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let ctx = self.auth(&request).await?;
        create_token(&ctx, TokenKind::Api, request.get_ref(), SystemTime::now())
            .await
            .map(Response::new)
    }

    async fn delete_token(
        &self,
        request: Request<DeleteTokenRequest>,
    ) -> Result<Response<DeleteTokenResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let id = &request.get_ref().id;
        let keys = [
            tokens::key(TokenKind::Join, id),
            tokens::key(TokenKind::Api, id),
        ];
        let txn = Txn::new()
            .when([ctx.leader.fence()])
            .and_then(keys.iter().map(TxnOp::delete));
        let result = ctx.store.txn(txn).await.map_err(unavailable)?;
        if !result.succeeded {
            return Err(Status::unavailable(
                "this member is no longer the leader; ask again",
            ));
        }
        let deleted = result
            .results
            .iter()
            .any(|r| matches!(r, crate::store::TxnOpResult::Delete(n) if *n > 0));
        if !deleted {
            return Err(Status::not_found(format!("no token with id {id:?}")));
        }
        Ok(Response::new(DeleteTokenResponse {}))
    }

    async fn create_backup(
        &self,
        request: Request<CreateBackupRequest>,
    ) -> Result<Response<Backup>, Status> {
        let ctx = self.auth(&request).await?;
        crate::leader::backups::make(
            ctx.store.as_ref(),
            &ctx.leader,
            &ctx.leader_node,
            &ctx.cluster,
            &ctx.events,
            SystemTime::now(),
        )
        .await
        .map(Response::new)
    }
    async fn list_backups(
        &self,
        request: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        let ctx = self.auth(&request).await?;
        let items = crate::leader::backups::kept(&ctx.cluster)?;
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
