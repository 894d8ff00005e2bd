//! The REST handlers: each reads its path, query and body, calls the user API's gRPC
//! method with the HTTP headers as metadata, and answers with its result.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kat_proto::v1alpha1::user_api_server::UserApi;
use kat_proto::v1alpha1::*;
use tonic::Status;
use tonic::codegen::tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;

use super::respond::{
    BUNDLE_BODY_LIMIT, bad_request, error_response, flag, grpc, json_body, json_response, ndjson,
    read_body, reply, text,
};
use super::routes::ROUTES;
use crate::api::served::Served;
use crate::api::user::UserApiService;
use crate::client::LEADER_API_METADATA;
use crate::state;

/// What the REST handlers share.
#[derive(Clone)]
pub(super) struct Rest {
    pub(super) api: UserApiService,
    pub(super) served: Served,
}

type Q = Query<HashMap<String, String>>;

pub(super) async fn create_workload(
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

pub(super) async fn update_workload(
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

pub(super) async fn list_workloads(
    State(s): State<Rest>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Response {
    let message = ListWorkloadsRequest { namespace };
    reply(s.api.list_workloads(grpc(&headers, message)).await)
}

pub(super) async fn list_all_workloads(State(s): State<Rest>, headers: HeaderMap) -> Response {
    let message = ListWorkloadsRequest::default();
    reply(s.api.list_workloads(grpc(&headers, message)).await)
}

pub(super) async fn get_workload(
    State(s): State<Rest>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let message = GetWorkloadRequest { namespace, name };
    reply(s.api.get_workload(grpc(&headers, message)).await)
}

pub(super) async fn delete_workload(
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

pub(super) async fn workload_status(
    State(s): State<Rest>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let message = GetWorkloadRequest { namespace, name };
    reply(s.api.get_workload_status(grpc(&headers, message)).await)
}

pub(super) async fn rollback(
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

pub(super) async fn scale(
    State(s): State<Rest>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut message: ScaleWorkloadRequest = tri!(json_body(body).await);
    message.namespace = namespace;
    message.name = name;
    reply(s.api.scale_workload(grpc(&headers, message)).await)
}

pub(super) async fn workload_instances(
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

pub(super) async fn list_instances(
    State(s): State<Rest>,
    Query(query): Q,
    headers: HeaderMap,
) -> Response {
    let message = ListInstancesRequest {
        namespace: text(&query, "namespace"),
        workload: text(&query, "workload"),
        node: text(&query, "node"),
    };
    reply(s.api.list_instances(grpc(&headers, message)).await)
}

pub(super) async fn logs(
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

pub(super) async fn exec(
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

pub(super) async fn list_namespaces(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .list_namespaces(grpc(&headers, ListNamespacesRequest {}))
            .await,
    )
}

pub(super) async fn create_namespace(
    State(s): State<Rest>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let namespace: Namespace = tri!(json_body(body).await);
    let message = CreateNamespaceRequest {
        namespace: Some(namespace),
    };
    reply(s.api.create_namespace(grpc(&headers, message)).await)
}

pub(super) async fn get_namespace(
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

pub(super) async fn delete_namespace(
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

pub(super) async fn list_nodes(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(s.api.list_nodes(grpc(&headers, ListNodesRequest {})).await)
}

pub(super) async fn get_node(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    reply(
        s.api
            .get_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

pub(super) async fn delete_node(
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

pub(super) async fn cordon(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    reply(
        s.api
            .cordon_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

pub(super) async fn uncordon(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    reply(
        s.api
            .uncordon_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

pub(super) async fn drain(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    ndjson(
        s.api
            .drain_node(grpc(&headers, GetNodeRequest { name }))
            .await,
    )
}

pub(super) async fn labels(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut message: SetNodeLabelsRequest = tri!(json_body(body).await);
    message.name = name;
    reply(s.api.set_node_labels(grpc(&headers, message)).await)
}

pub(super) async fn taints(
    State(s): State<Rest>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut message: SetNodeTaintsRequest = tri!(json_body(body).await);
    message.name = name;
    reply(s.api.set_node_taints(grpc(&headers, message)).await)
}

pub(super) async fn events(State(s): State<Rest>, Query(query): Q, headers: HeaderMap) -> Response {
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

pub(super) async fn join_token(State(s): State<Rest>, headers: HeaderMap, body: Body) -> Response {
    let message: CreateTokenRequest = tri!(json_body(body).await);
    reply(s.api.create_join_token(grpc(&headers, message)).await)
}

pub(super) async fn api_token(State(s): State<Rest>, headers: HeaderMap, body: Body) -> Response {
    let message: CreateTokenRequest = tri!(json_body(body).await);
    reply(s.api.create_api_token(grpc(&headers, message)).await)
}

pub(super) async fn delete_token(
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

pub(super) async fn create_backup(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .create_backup(grpc(&headers, CreateBackupRequest {}))
            .await,
    )
}

pub(super) async fn list_backups(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .list_backups(grpc(&headers, ListBackupsRequest {}))
            .await,
    )
}

pub(super) async fn version(State(s): State<Rest>, headers: HeaderMap) -> Response {
    reply(
        s.api
            .get_version(grpc(&headers, GetVersionRequest {}))
            .await,
    )
}

pub(super) async fn openapi() -> Response {
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
    crate::api::user::authorize(
        s.served.store.as_ref(),
        &metadata,
        std::time::SystemTime::now(),
    )
    .await
    .map_err(|e| error_response(&Status::from(e)))?;
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
    if let Ok(nodes) = state::nodes::list(s.served.store.as_ref()).await {
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
    if let Ok(instances) = state::instances::list(s.served.store.as_ref(), "", "", "").await {
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
    if let Ok(workloads) = state::workloads::list(s.served.store.as_ref(), "").await {
        m.set(
            "kat_workloads",
            "Workloads in every namespace.",
            &[],
            workloads.len() as f64,
        );
    }
    Ok(m)
}

pub(super) async fn metrics_text(State(s): State<Rest>, headers: HeaderMap) -> Response {
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

pub(super) async fn metrics_json(State(s): State<Rest>, headers: HeaderMap) -> Response {
    let m = tri!(scrape(&s, &headers).await);
    json_response(StatusCode::OK, &m.json())
}

pub(super) async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

pub(super) async fn readyz(State(s): State<Rest>) -> Response {
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

pub(super) async fn not_found() -> Response {
    error_response(&Status::not_found(
        "no such API path; the routes are listed in /v1alpha1/openapi.json",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
