//! The user API as HTTP/JSON (SPEC §10), on the same port as gRPC.
//!
//! Every REST route calls the same [`UserApi`] method that gRPC does, with the HTTP
//! headers as the call's metadata, so a REST call and a gRPC call cannot answer
//! differently: the token check, the leader redirect, validation and errors are the
//! gRPC service's. Bodies and answers are proto3 JSON (pbjson), except a bundle, which
//! is posted as its raw `tar.gz` bytes. Streams (drain, logs) are newline-delimited
//! JSON, one message a line; logs are plain text unless the client asks for
//! `application/x-ndjson`. Errors are `{"code", "status", "message"}` with the HTTP
//! status of their gRPC code (e.g. `Unauthenticated` → 401, `InvalidArgument` → 400,
//! `NotFound` → 404, `Unavailable` → 503; a follower's 503 names the leader's API in
//! `leader` and the `kat-leader-api` header).
//!
//! [`ROUTES`] lists every route once; the router and the OpenAPI document
//! (`/v1alpha1/openapi.json`, [`super::openapi`]) are both made from it.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use kat_proto::v1alpha1::user_api_server::UserApi;
use kat_proto::v1alpha1::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;

use super::LEADER_API_METADATA;
use super::node_api::Served;
use super::user_api::UserApiService;

/// Largest request body with a bundle. Bundles themselves are limited to 1 MiB
/// compressed (`kat_proto::bundle::Limits`), which the service checks with its own
/// message; this only stops a client from streaming without end.
pub const BUNDLE_BODY_LIMIT: usize = 4 << 20;
/// Largest JSON request body.
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// What a route takes as its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    /// A gzip'd tar of one Quadlet directory.
    Bundle,
    /// A proto3 JSON message, by its proto name (may be empty: all defaults).
    Json(&'static str),
}

/// What a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Json(&'static str),
    /// Newline-delimited proto3 JSON messages.
    Stream(&'static str),
    /// Log lines as text (or `LogChunk`s as NDJSON on request).
    Logs,
    Text,
    /// The OpenAPI document.
    OpenApi,
    /// A JSON object without a proto message (metrics).
    Object,
}

/// One REST route, as the router and the OpenAPI document see it.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    /// The gRPC method it calls (also the OpenAPI operationId).
    pub operation: &'static str,
    pub summary: &'static str,
    pub body: BodyKind,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    pub reply: ReplyKind,
    /// Whether a bearer token is needed.
    pub auth: bool,
}

const fn route(
    method: &'static str,
    path: &'static str,
    operation: &'static str,
    summary: &'static str,
    body: BodyKind,
    reply: ReplyKind,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        operation,
        summary,
        body,
        query: &[],
        reply,
        auth: true,
    }
}

const fn with_query(mut r: RouteDoc, query: &'static [(&'static str, &'static str)]) -> RouteDoc {
    r.query = query;
    r
}

const fn public(mut r: RouteDoc) -> RouteDoc {
    r.auth = false;
    r
}

use BodyKind as B;
use ReplyKind as R;

const WORKLOADS: &str = "/v1alpha1/n/{ns}/workloads";
const WORKLOAD: &str = "/v1alpha1/n/{ns}/workloads/{name}";

/// Every REST route, in the order the OpenAPI document lists them.
pub const ROUTES: &[RouteDoc] = &[
    route(
        "post",
        WORKLOADS,
        "CreateWorkload",
        "Create (or update) a workload from a bundle",
        B::Bundle,
        R::Json("Quadlet"),
    ),
    route(
        "get",
        WORKLOADS,
        "ListWorkloads",
        "List the namespace's workloads",
        B::None,
        R::Json("ListWorkloadsResponse"),
    ),
    route(
        "get",
        "/v1alpha1/workloads",
        "ListWorkloads",
        "List workloads of every namespace",
        B::None,
        R::Json("ListWorkloadsResponse"),
    ),
    route(
        "put",
        WORKLOAD,
        "UpdateWorkload",
        "Update a workload from a bundle",
        B::Bundle,
        R::Json("Quadlet"),
    ),
    route(
        "get",
        WORKLOAD,
        "GetWorkload",
        "A workload's Quadlet with its status",
        B::None,
        R::Json("Quadlet"),
    ),
    with_query(
        route(
            "delete",
            WORKLOAD,
            "DeleteWorkload",
            "Delete a workload and its instances",
            B::None,
            R::Json("DeleteWorkloadResponse"),
        ),
        &[(
            "purgeVolumes",
            "true: also remove its simpleClusterStorage volumes",
        )],
    ),
    route(
        "get",
        "/v1alpha1/n/{ns}/workloads/{name}/status",
        "GetWorkloadStatus",
        "A workload's status, instances and recent events",
        B::None,
        R::Json("WorkloadStatusResponse"),
    ),
    route(
        "post",
        "/v1alpha1/n/{ns}/workloads/{name}/rollback",
        "RollbackWorkload",
        "Re-apply a kept generation (body: {\"toGeneration\": N}, or empty for the previous one)",
        B::Json("RollbackWorkloadRequest"),
        R::Json("Quadlet"),
    ),
    with_query(
        route(
            "get",
            "/v1alpha1/n/{ns}/workloads/{name}/instances",
            "ListInstances",
            "The workload's instances",
            B::None,
            R::Json("ListInstancesResponse"),
        ),
        &[("node", "only instances on this node")],
    ),
    with_query(
        route(
            "get",
            "/v1alpha1/instances",
            "ListInstances",
            "Instances of every namespace",
            B::None,
            R::Json("ListInstancesResponse"),
        ),
        &[
            ("namespace", "only this namespace"),
            ("workload", "only this workload"),
            ("node", "only this node"),
        ],
    ),
    with_query(
        route(
            "get",
            "/v1alpha1/n/{ns}/workloads/{name}/instances/{id}/logs",
            "StreamInstanceLogs",
            "An instance's logs (text; NDJSON LogChunks with Accept: application/x-ndjson)",
            B::None,
            R::Logs,
        ),
        &[
            ("follow", "true: keep streaming new lines"),
            ("since", "only lines newer than this (seconds, or 10m, 2h)"),
            ("tail", "only the last N lines"),
            ("build", "true: the build log"),
        ],
    ),
    route(
        "post",
        "/v1alpha1/n/{ns}/workloads/{name}/instances/{id}/exec",
        "ExecInstance",
        "Run a command in an instance's container (body: {\"command\": [...]})",
        B::Json("ExecRequest"),
        R::Json("ExecResponse"),
    ),
    route(
        "get",
        "/v1alpha1/namespaces",
        "ListNamespaces",
        "List namespaces",
        B::None,
        R::Json("ListNamespacesResponse"),
    ),
    route(
        "post",
        "/v1alpha1/namespaces",
        "CreateNamespace",
        "Create a namespace (body: a Namespace)",
        B::Json("Namespace"),
        R::Json("Namespace"),
    ),
    route(
        "get",
        "/v1alpha1/namespaces/{ns}",
        "GetNamespace",
        "A namespace",
        B::None,
        R::Json("Namespace"),
    ),
    with_query(
        route(
            "delete",
            "/v1alpha1/namespaces/{ns}",
            "DeleteNamespace",
            "Delete a namespace (refused while it has workloads, unless cascade)",
            B::None,
            R::Json("DeleteNamespaceResponse"),
        ),
        &[("cascade", "true: delete its workloads too")],
    ),
    route(
        "get",
        "/v1alpha1/nodes",
        "ListNodes",
        "List nodes with their status",
        B::None,
        R::Json("ListNodesResponse"),
    ),
    route(
        "get",
        "/v1alpha1/nodes/{name}",
        "GetNode",
        "A node with its status",
        B::None,
        R::Json("Node"),
    ),
    route(
        "delete",
        "/v1alpha1/nodes/{name}",
        "DeleteNode",
        "Remove a drained node",
        B::None,
        R::Json("DeleteNodeResponse"),
    ),
    route(
        "post",
        "/v1alpha1/nodes/{name}/cordon",
        "CordonNode",
        "Stop new placements on a node",
        B::None,
        R::Json("Node"),
    ),
    route(
        "post",
        "/v1alpha1/nodes/{name}/uncordon",
        "UncordonNode",
        "Allow placements on a node again (ends a drain)",
        B::None,
        R::Json("Node"),
    ),
    route(
        "post",
        "/v1alpha1/nodes/{name}/drain",
        "DrainNode",
        "Drain a node; streams progress until no instance is left",
        B::None,
        R::Stream("DrainProgress"),
    ),
    route(
        "put",
        "/v1alpha1/nodes/{name}/labels",
        "SetNodeLabels",
        "Set labels (body: {\"labels\": {k: v}}; an empty value removes)",
        B::Json("SetNodeLabelsRequest"),
        R::Json("Node"),
    ),
    route(
        "put",
        "/v1alpha1/nodes/{name}/taints",
        "SetNodeTaints",
        "Replace the node's taints (body: {\"taints\": [...]})",
        B::Json("SetNodeTaintsRequest"),
        R::Json("Node"),
    ),
    with_query(
        route(
            "get",
            "/v1alpha1/events",
            "ListEvents",
            "Recent events, oldest first (watch=true: then each new one, as NDJSON)",
            B::None,
            R::Json("ListEventsResponse"),
        ),
        &[
            ("namespace", "only this namespace"),
            ("involved", "kind/name of the involved object"),
            ("since", "RFC 3339 time, or a duration ago (10m, 2h)"),
            (
                "watch",
                "true: keep the answer open and stream new events (NDJSON)",
            ),
        ],
    ),
    route(
        "post",
        "/v1alpha1/tokens/join",
        "CreateJoinToken",
        "Create a join token",
        B::Json("CreateTokenRequest"),
        R::Json("CreateTokenResponse"),
    ),
    route(
        "post",
        "/v1alpha1/tokens/api",
        "CreateApiToken",
        "Create an API token",
        B::Json("CreateTokenRequest"),
        R::Json("CreateTokenResponse"),
    ),
    route(
        "delete",
        "/v1alpha1/tokens/{id}",
        "DeleteToken",
        "Delete a token",
        B::None,
        R::Json("DeleteTokenResponse"),
    ),
    route(
        "post",
        "/v1alpha1/backups",
        "CreateBackup",
        "Snapshot etcd now",
        B::None,
        R::Json("Backup"),
    ),
    route(
        "get",
        "/v1alpha1/backups",
        "ListBackups",
        "List kept snapshots",
        B::None,
        R::Json("ListBackupsResponse"),
    ),
    route(
        "get",
        "/v1alpha1/version",
        "GetVersion",
        "The server's version",
        B::None,
        R::Json("VersionInfo"),
    ),
    route(
        "get",
        "/metrics",
        "Metrics",
        "This member's metrics and the cluster's counts, as Prometheus text",
        B::None,
        R::Text,
    ),
    route(
        "get",
        "/v1alpha1/metrics",
        "MetricsJson",
        "The same metrics as JSON",
        B::None,
        R::Object,
    ),
    public(route(
        "get",
        "/v1alpha1/openapi.json",
        "OpenApi",
        "This document",
        B::None,
        R::OpenApi,
    )),
    public(route(
        "get",
        "/healthz",
        "Healthz",
        "200 while the process serves",
        B::None,
        R::Text,
    )),
    public(route(
        "get",
        "/readyz",
        "Readyz",
        "200 while this member leads and answers API calls itself; 503 with the leader's address otherwise",
        B::None,
        R::Text,
    )),
];

/// What the REST handlers share.
#[derive(Clone)]
pub struct Rest {
    api: UserApiService,
    served: Served,
}

/// The REST router (its own state applied), ready to merge with the gRPC routes.
pub fn router(served: Served) -> Router {
    let rest = Rest {
        api: UserApiService::new(served.clone()),
        served,
    };
    let mut router: Router<Rest> = Router::new();
    let mut seen: Vec<&str> = Vec::new();
    for path in ROUTES.iter().map(|r| r.path) {
        if seen.contains(&path) {
            continue;
        }
        seen.push(path);
        if let Some(methods) = methods(path) {
            router = router.route(path, methods);
        }
    }
    router.fallback(not_found).with_state(rest)
}

/// Every method of one path (axum wants them on one route).
fn methods(path: &str) -> Option<MethodRouter<Rest>> {
    Some(match path {
        WORKLOADS => post(create_workload).get(list_workloads),
        "/v1alpha1/workloads" => get(list_all_workloads),
        WORKLOAD => put(update_workload)
            .get(get_workload)
            .delete(delete_workload),
        "/v1alpha1/n/{ns}/workloads/{name}/status" => get(workload_status),
        "/v1alpha1/n/{ns}/workloads/{name}/rollback" => post(rollback),
        "/v1alpha1/n/{ns}/workloads/{name}/instances" => get(workload_instances),
        "/v1alpha1/instances" => get(list_instances),
        "/v1alpha1/n/{ns}/workloads/{name}/instances/{id}/logs" => get(logs),
        "/v1alpha1/n/{ns}/workloads/{name}/instances/{id}/exec" => post(exec),
        "/v1alpha1/namespaces" => get(list_namespaces).post(create_namespace),
        "/v1alpha1/namespaces/{ns}" => get(get_namespace).delete(delete_namespace),
        "/v1alpha1/nodes" => get(list_nodes),
        "/v1alpha1/nodes/{name}" => get(get_node).delete(delete_node),
        "/v1alpha1/nodes/{name}/cordon" => post(cordon),
        "/v1alpha1/nodes/{name}/uncordon" => post(uncordon),
        "/v1alpha1/nodes/{name}/drain" => post(drain),
        "/v1alpha1/nodes/{name}/labels" => put(labels),
        "/v1alpha1/nodes/{name}/taints" => put(taints),
        "/v1alpha1/events" => get(events),
        "/v1alpha1/tokens/join" => post(join_token),
        "/v1alpha1/tokens/api" => post(api_token),
        "/v1alpha1/tokens/{id}" => delete(delete_token),
        "/v1alpha1/backups" => post(create_backup).get(list_backups),
        "/v1alpha1/version" => get(version),
        "/v1alpha1/openapi.json" => get(openapi),
        "/healthz" => get(healthz),
        "/metrics" => get(metrics_text),
        "/v1alpha1/metrics" => get(metrics_json),
        "/readyz" => get(readyz),
        // A route in ROUTES without a handler: a programming error the tests catch.
        _ => return None,
    })
}

/// The HTTP status for a gRPC code (the usual gateway mapping).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::Aborted => StatusCode::CONFLICT,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::Unknown | C::Internal | C::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i32,
    status: String,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<&'a str>,
}

/// A gRPC status as an HTTP answer.
pub fn error_response(status: &Status) -> Response {
    let leader = status
        .metadata()
        .get(LEADER_API_METADATA)
        .and_then(|v| v.to_str().ok());
    let body = ErrorBody {
        code: status.code() as i32,
        status: format!("{:?}", status.code()),
        message: status.message(),
        leader,
    };
    let mut response = json_response(http_status(status.code()), &body);
    let headers = response.headers_mut();
    if let Some(leader) = leader.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(LEADER_API_METADATA, leader);
    }
    if status.code() == tonic::Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn json_response<T: Serialize>(code: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            (
                code,
                [(header::CONTENT_TYPE, "application/json")],
                Bytes::from(bytes),
            )
                .into_response()
        }
        Err(e) => error_response(&Status::internal(format!("cannot encode the answer: {e}"))),
    }
}

fn bad_request(message: String) -> Response {
    error_response(&Status::invalid_argument(message))
}

/// The call's metadata: the HTTP headers (the bearer token among them).
fn grpc<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = MetadataMap::from_headers(headers.clone());
    request
}

fn reply<T: Serialize>(result: Result<tonic::Response<T>, Status>) -> Response {
    match result {
        Ok(answer) => json_response(StatusCode::OK, answer.get_ref()),
        Err(status) => error_response(&status),
    }
}

/// A stream of messages as NDJSON; an error in the middle ends it with an
/// `{"error": ...}` line (the HTTP status has been sent by then).
fn ndjson<T, S>(result: Result<tonic::Response<S>, Status>) -> Response
where
    T: Serialize,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let stream = match result {
        Ok(answer) => answer.into_inner(),
        Err(status) => return error_response(&status),
    };
    let lines = stream.map(|item| {
        let mut line = match item {
            Ok(message) => serde_json::to_vec(&message),
            Err(status) => serde_json::to_vec(&serde_json::json!({
                "error": {"code": status.code() as i32, "status": format!("{:?}", status.code()), "message": status.message()}
            })),
        }
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(line))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Reads a body of at most `limit` bytes; a larger one is refused with the limit.
async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_large {
            bad_request(format!(
                "request body: {what} larger than {} KiB",
                limit / 1024
            ))
        } else {
            bad_request(format!("request body: {e}"))
        }
    })
}

/// A JSON body as `T` (an empty body: all defaults).
async fn json_body<T: DeserializeOwned + Default>(body: Body) -> Result<T, Response> {
    let bytes = read_body(body, JSON_BODY_LIMIT, "JSON").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("request body: {e}")))
}

/// A query flag: `true`/`1`/empty are true, `false`/`0` false.
fn flag(query: &HashMap<String, String>, name: &str) -> Result<bool, String> {
    match query.get(name).map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(format!(
            "query parameter {name}: {other:?} is not true or false"
        )),
    }
}

fn text(query: &HashMap<String, String>, name: &str) -> String {
    query.get(name).cloned().unwrap_or_default()
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(response) => return response,
        }
    };
}

type Q = Query<HashMap<String, String>>;

async fn create_workload(
    State(s): State<Rest>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bundle = tri!(read_body(body, BUNDLE_BODY_LIMIT, "the bundle is").await).to_vec();
    reply(
        s.api
            .create_workload(grpc(&headers, CreateWorkloadRequest { namespace, bundle }))
            .await,
    )
}

async fn update_workload(
    State(s): State<Rest>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bundle = tri!(read_body(body, BUNDLE_BODY_LIMIT, "the bundle is").await).to_vec();
    let message = UpdateWorkloadRequest {
        namespace,
        name,
        bundle,
    };
    reply(s.api.update_workload(grpc(&headers, message)).await)
}

async fn list_workloads(
    State(s): State<Rest>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Response {
    let message = ListWorkloadsRequest { namespace };
    reply(s.api.list_workloads(grpc(&headers, message)).await)
}

async fn list_all_workloads(State(s): State<Rest>, headers: HeaderMap) -> Response {
    let message = ListWorkloadsRequest::default();
    reply(s.api.list_workloads(grpc(&headers, message)).await)
}

async fn get_workload(
    State(s): State<Rest>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let message = GetWorkloadRequest { namespace, name };
    reply(s.api.get_workload(grpc(&headers, message)).await)
}

async fn delete_workload(
    State(s): State<Rest>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Q,
    headers: HeaderMap,
) -> Response {
    let message = DeleteWorkloadRequest {
        namespace,
        name,
        purge_volumes: tri!(flag(&query, "purgeVolumes").map_err(bad_request)),
    };
    reply(s.api.delete_workload(grpc(&headers, message)).await)
}

async fn workload_status(
    State(s): State<Rest>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let message = GetWorkloadRequest { namespace, name };
    reply(s.api.get_workload_status(grpc(&headers, message)).await)
}

async fn rollback(
    State(s): State<Rest>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut message: RollbackWorkloadRequest = tri!(json_body(body).await);
    message.namespace = namespace;
    message.name = name;
    reply(s.api.rollback_workload(grpc(&headers, message)).await)
}

async fn workload_instances(
    State(s): State<Rest>,
    Path((namespace, workload)): Path<(String, String)>,
    Query(query): Q,
    headers: HeaderMap,
) -> Response {
    let message = ListInstancesRequest {
        namespace,
        workload,
        node: text(&query, "node"),
    };
    reply(s.api.list_instances(grpc(&headers, message)).await)
}

async fn list_instances(State(s): State<Rest>, Query(query): Q, headers: HeaderMap) -> Response {
    let message = ListInstancesRequest {
        namespace: text(&query, "namespace"),
        workload: text(&query, "workload"),
        node: text(&query, "node"),
    };
    reply(s.api.list_instances(grpc(&headers, message)).await)
}

async fn logs(
    State(s): State<Rest>,
    Path((namespace, workload, instance_id)): Path<(String, String, String)>,
    Query(query): Q,
    headers: HeaderMap,
) -> Response {
    let since_seconds = match query.get("since") {
        None => 0,
        Some(since) => match kat_proto::quantity::parse_duration(since) {
            Ok(d) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
            Err(e) => return bad_request(format!("query parameter since: {e}")),
        },
    };
    let tail = match query.get("tail").map(|t| t.parse::<u32>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return bad_request("query parameter tail: expected a number of lines".to_owned());
        }
    };
    let message = LogsRequest {
        namespace,
        workload,
        instance_id,
        follow: tri!(flag(&query, "follow").map_err(bad_request)),
        since_seconds,
        tail,
        build: tri!(flag(&query, "build").map_err(bad_request)),
    };
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let result = s.api.stream_instance_logs(grpc(&headers, message)).await;
    if wants_ndjson {
        return ndjson(result);
    }
    let stream = match result {
        Ok(answer) => answer.into_inner(),
        Err(status) => return error_response(&status),
    };
    let bytes = stream.map(|chunk| {
        chunk
            .map(|c| Bytes::from(c.data))
            .map_err(|status| std::io::Error::other(status.message().to_owned()))
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(bytes),
    )
        .into_response()
}

async fn exec(
    State(s): State<Rest>,
    Path((namespace, workload, instance_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut message: ExecRequest = tri!(json_body(body).await);
    message.namespace = namespace;
    message.workload = workload;
    message.instance_id = instance_id;
    reply(s.api.exec_instance(grpc(&headers, message)).await)
}

async fn list_namespaces(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .list_namespaces(grpc(&headers, ListNamespacesRequest {}))
            .await,
    )
}

async fn create_namespace(State(s): State<Rest>, headers: HeaderMap, body: Body) -> Response {
    let namespace: Namespace = tri!(json_body(body).await);
    let message = CreateNamespaceRequest {
        namespace: Some(namespace),
    };
    reply(s.api.create_namespace(grpc(&headers, message)).await)
}

async fn get_namespace(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    reply(
        s.api
            .get_namespace(grpc(&headers, GetNamespaceRequest { name }))
            .await,
    )
}

async fn delete_namespace(
    State(s): State<Rest>,
    Path(name): Path<String>,
    Query(query): Q,
    headers: HeaderMap,
) -> Response {
    let message = DeleteNamespaceRequest {
        name,
        cascade: tri!(flag(&query, "cascade").map_err(bad_request)),
    };
    reply(s.api.delete_namespace(grpc(&headers, message)).await)
}

async fn list_nodes(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(s.api.list_nodes(grpc(&headers, ListNodesRequest {})).await)
}

async fn get_node(State(s): State<Rest>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .get_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

async fn delete_node(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    reply(
        s.api
            .delete_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

async fn cordon(State(s): State<Rest>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .cordon_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

async fn uncordon(State(s): State<Rest>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .uncordon_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

async fn drain(State(s): State<Rest>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    ndjson(
        s.api
            .drain_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

async fn labels(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut message: SetNodeLabelsRequest = tri!(json_body(body).await);
    message.name = name;
    reply(s.api.set_node_labels(grpc(&headers, message)).await)
}

async fn taints(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut message: SetNodeTaintsRequest = tri!(json_body(body).await);
    message.name = name;
    reply(s.api.set_node_taints(grpc(&headers, message)).await)
}

async fn events(State(s): State<Rest>, Query(query): Q, headers: HeaderMap) -> Response {
    let watch = tri!(flag(&query, "watch").map_err(bad_request));
    let since = match query.get("since") {
        None => None,
        Some(text) => Some(tri!(
            parse_since(text, std::time::SystemTime::now()).map_err(bad_request)
        )),
    };
    let message = ListEventsRequest {
        namespace: text(&query, "namespace"),
        involved: text(&query, "involved"),
        since,
    };
    if watch {
        return ndjson(s.api.watch_events(grpc(&headers, message)).await);
    }
    reply(s.api.list_events(grpc(&headers, message)).await)
}

/// `since=`: an RFC 3339 time, or a duration before `now`.
fn parse_since(text: &str, now: std::time::SystemTime) -> Result<pbjson_types::Timestamp, String> {
    if let Ok(ago) = kat_proto::quantity::parse_duration(text) {
        let at = now.checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH);
        return Ok(kat_proto::timestamp(at));
    }
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        format!(
            "query parameter since: {text:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration (10m, 2h)"
        )
    })
}

async fn join_token(State(s): State<Rest>, headers: HeaderMap, body: Body) -> Response {
    let message: CreateTokenRequest = tri!(json_body(body).await);
    reply(s.api.create_join_token(grpc(&headers, message)).await)
}

async fn api_token(State(s): State<Rest>, headers: HeaderMap, body: Body) -> Response {
    let message: CreateTokenRequest = tri!(json_body(body).await);
    reply(s.api.create_api_token(grpc(&headers, message)).await)
}

async fn delete_token(
    State(s): State<Rest>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    reply(
        s.api
            .delete_token(grpc(&headers, DeleteTokenRequest { id }))
            .await,
    )
}

async fn create_backup(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .create_backup(grpc(&headers, CreateBackupRequest {}))
            .await,
    )
}

async fn list_backups(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .list_backups(grpc(&headers, ListBackupsRequest {}))
            .await,
    )
}

async fn version(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .get_version(grpc(&headers, GetVersionRequest {}))
            .await,
    )
}

async fn openapi() -> Response {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    let bytes = DOCUMENT.get_or_init(|| {
        let doc = super::openapi::document(ROUTES);
        Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default())
    });
    ([(header::CONTENT_TYPE, "application/json")], bytes.clone()).into_response()
}

/// Checks the token, then refreshes the gauges read from the store.
async fn scrape(
    s: &Rest,
    headers: &HeaderMap,
) -> Result<&'static crate::metrics::Registry, Response> {
    let metadata = MetadataMap::from_headers(headers.clone());
    super::user_api::authorize(
        s.served.store.as_ref(),
        &metadata,
        std::time::SystemTime::now(),
    )
    .await
    .map_err(|status| error_response(&status))?;
    let m = crate::metrics::global();
    if let Some(rss) = crate::metrics::resident_bytes() {
        m.set(
            "process_resident_memory_bytes",
            "Resident memory of this kat-agent.",
            &[],
            rss,
        );
    }
    let leading = s.served.slot.borrow().is_some();
    m.set(
        "kat_leader",
        "1 while this member leads the cluster.",
        &[],
        if leading { 1.0 } else { 0.0 },
    );
    // Cluster-wide counts from the store (any member can read them).
    if let Ok(nodes) = super::user_api::list_nodes(s.served.store.as_ref()).await {
        let mut by_state: std::collections::BTreeMap<String, f64> = Default::default();
        for n in &nodes {
            let state = n
                .status
                .as_ref()
                .map_or(NodeState::NotReady, |st| st.state());
            *by_state.entry(state.as_str_name().to_owned()).or_default() += 1.0;
        }
        m.set_all(
            "kat_nodes",
            "Registered nodes by state.",
            by_state
                .into_iter()
                .map(|(k, v)| (vec![("state".to_owned(), k)], v))
                .collect(),
        );
    }
    if let Ok(instances) =
        super::workloads::list_instances(s.served.store.as_ref(), "", "", "").await
    {
        let mut by_phase: std::collections::BTreeMap<String, f64> = Default::default();
        for i in &instances {
            let phase = i
                .status
                .as_ref()
                .map_or(InstancePhase::Pending, |st| st.phase());
            *by_phase.entry(phase.as_str_name().to_owned()).or_default() += 1.0;
        }
        m.set_all(
            "kat_instances",
            "Instances by phase (as their nodes last reported).",
            by_phase
                .into_iter()
                .map(|(k, v)| (vec![("phase".to_owned(), k)], v))
                .collect(),
        );
    }
    if let Ok(workloads) = super::workloads::list_quadlets(s.served.store.as_ref(), "").await {
        m.set(
            "kat_workloads",
            "Workloads in every namespace.",
            &[],
            workloads.len() as f64,
        );
    }
    Ok(m)
}

async fn metrics_text(State(s): State<Rest>, headers: HeaderMap) -> Response {
    let m = tri!(scrape(&s, &headers).await);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

async fn metrics_json(State(s): State<Rest>, headers: HeaderMap) -> Response {
    let m = tri!(scrape(&s, &headers).await);
    json_response(StatusCode::OK, &m.json())
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(s): State<Rest>) -> Response {
    match s.served.leader().await {
        Ok(_) => (StatusCode::OK, "ok: leading\n").into_response(),
        Err(status) => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", status.message()),
            )
                .into_response();
            if let Some(leader) = status.metadata().get(LEADER_API_METADATA)
                && let Ok(value) = HeaderValue::from_bytes(leader.as_bytes())
            {
                response.headers_mut().insert(LEADER_API_METADATA, value);
            }
            response
        }
    }
}

async fn not_found() -> Response {
    error_response(&Status::not_found(
        "no such API path; the routes are listed in /v1alpha1/openapi.json",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_maps_to_a_sensible_http_status() {
        assert_eq!(
            http_status(tonic::Code::Unauthenticated),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            http_status(tonic::Code::InvalidArgument),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(tonic::Code::AlreadyExists),
            StatusCode::CONFLICT
        );
        assert_eq!(
            http_status(tonic::Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(tonic::Code::Unimplemented),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            http_status(tonic::Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn every_route_has_a_handler_and_paths_are_unique_per_method() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "{} {} listed twice",
                r.method,
                r.path
            );
            assert!(r.path.starts_with('/'), "{}", r.path);
        }
        for r in ROUTES {
            assert!(methods(r.path).is_some(), "no handler for {}", r.path);
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_with_the_limit() {
        let big = Body::from(vec![0u8; BUNDLE_BODY_LIMIT + 1]);
        let refused = read_body(big, BUNDLE_BODY_LIMIT, "the bundle is")
            .await
            .err()
            .map(|r| r.status());
        assert_eq!(refused, Some(StatusCode::BAD_REQUEST));
        let fits = Body::from(vec![0u8; 1000]);
        assert_eq!(
            read_body(fits, BUNDLE_BODY_LIMIT, "the bundle is")
                .await
                .map(|b| b.len())
                .ok(),
            Some(1000)
        );
        let refused = json_body::<ExecRequest>(Body::from("{\"command\": 7}"))
            .await
            .err()
            .map(|r| r.status());
        assert_eq!(refused, Some(StatusCode::BAD_REQUEST));
        let empty = json_body::<ExecRequest>(Body::empty()).await.ok();
        assert_eq!(empty, Some(ExecRequest::default()));
    }

    #[test]
    fn query_flags_and_since() {
        let q: HashMap<String, String> = [
            ("a".to_owned(), "true".to_owned()),
            ("b".to_owned(), "0".to_owned()),
            ("c".to_owned(), "maybe".to_owned()),
        ]
        .into();
        assert!(flag(&q, "a").is_ok_and(|v| v));
        assert!(flag(&q, "b").is_ok_and(|v| !v));
        assert!(flag(&q, "missing").is_ok_and(|v| !v));
        assert!(flag(&q, "c").is_err());
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(10_000);
        assert!(parse_since("10m", now).is_ok_and(|t| t.seconds == 10_000 - 600));
        assert!(parse_since("2026-12-01T10:00:00Z", now).is_ok_and(|t| t.seconds == 1_796_119_200));
        assert!(parse_since("yesterday", now).is_err());
    }
}
