//! The token gate in front of everything on `apiPort` (issue 14, high 4): a request
//! that needs an API token is answered `Unauthenticated` (REST: 401; gRPC: status 16)
//! before its body or query is read, so a client without a token costs the server a
//! header's worth of work and nothing more.
//!
//! Open without a token: the node API and the REST routes the route table marks
//! public (`/healthz`, `/readyz`, the OpenAPI document). Everything else — the user
//! API over gRPC and REST, `/metrics`, unknown paths — needs a valid token. The
//! handlers check it again (they also run in process, without the gate).
//!
//! The node API has its own gate: every call but `Join` needs a client certificate
//! (verified against the cluster CA in the handshake) before its body is read; `Join`,
//! which comes before a node has one, may carry at most [`JOIN_BODY_LIMIT`], arriving
//! within [`JOIN_READ_LIMIT`], and at most [`JOINS_AT_ONCE`] are read at a time, so
//! anonymous joins cannot hold more than a few hundred KiB of the leader's memory, nor
//! the read slots for long.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kat_proto::v1alpha1::node_api_server::NodeApiServer;
use tonic::Status;

use super::node::NodeApiService;
use super::rest::routes::ROUTES;
use super::served::Served;

/// The largest `Join` request (a token, two CSRs, a name, labels).
pub const JOIN_BODY_LIMIT: usize = 64 << 10;
/// How many `Join` bodies are read at once; more are refused at once.
pub const JOINS_AT_ONCE: usize = 8;
/// How long a `Join` body may take to arrive (it is small), so slow senders cannot
/// hold the read slots.
pub const JOIN_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The node API method `path` names (`Join`, `Heartbeat`…), if it names one.
fn node_api_method(path: &str) -> Option<&str> {
    use tonic::server::NamedService;
    let node_api = NodeApiServer::<NodeApiService>::NAME;
    path.strip_prefix('/')?
        .strip_prefix(node_api)?
        .strip_prefix('/')
}

/// Whether `path` is served without an API token.
fn is_open(path: &str) -> bool {
    node_api_method(path).is_some() || ROUTES.iter().any(|r| !r.auth && r.path == path)
}

/// Whether the connection presented a client certificate (the handshake verified it
/// against the cluster CA).
fn has_client_certificate(request: &Request) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .is_some_and(|certs| !certs.is_empty())
}

/// The node API's gate; see the module docs.
async fn node_api(method: &str, request: Request, next: Next) -> Response {
    static JOINS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    if method != "Join" {
        if !has_client_certificate(&request) {
            return Status::unauthenticated("this call needs the node's client certificate")
                .into_http::<Body>()
                .into_response();
        }
        return next.run(request).await;
    }
    let joins = JOINS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(JOINS_AT_ONCE)));
    let Ok(permit) = joins.clone().try_acquire_owned() else {
        return Status::resource_exhausted("too many joins at once; try again in a moment")
            .into_http::<Body>()
            .into_response();
    };
    let (parts, body) = request.into_parts();
    let read =
        tokio::time::timeout(JOIN_READ_LIMIT, axum::body::to_bytes(body, JOIN_BODY_LIMIT)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Status::invalid_argument(format!(
                "a join request is at most {} KiB",
                JOIN_BODY_LIMIT / 1024
            ))
            .into_http::<Body>()
            .into_response();
        }
        Err(_) => {
            return Status::deadline_exceeded(format!(
                "the join request did not arrive within {JOIN_READ_LIMIT:?}"
            ))
            .into_http::<Body>()
            .into_response();
        }
    };
    // Read: the slot is free for the next join while this one is handled.
    drop(permit);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gate, as axum middleware over the whole router.
pub async fn require_token(State(served): State<Served>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if let Some(method) = node_api_method(&path) {
        return node_api(method, request, next).await;
    }
    if is_open(&path) {
        return next.run(request).await;
    }
    let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
    let checked = super::user::authorize(served.store.as_ref(), &metadata, SystemTime::now()).await;
    match checked {
        Ok(()) => next.run(request).await,
        Err(e) => {
            let status = Status::from(e);
            if is_grpc(&request) {
                status.into_http::<Body>().into_response()
            } else {
                super::rest::error_response(&status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_api_and_public_routes_are_open() {
        assert!(is_open("/kat.v1alpha1.NodeApi/Join"));
        assert!(is_open("/healthz"));
        assert!(is_open("/readyz"));
        assert!(is_open("/v1alpha1/openapi.json"));
        assert!(!is_open("/kat.v1alpha1.NodeApiX/Join"));
        assert!(!is_open("/kat.v1alpha1.UserApi/ListNodes"));
        assert!(!is_open("/v1alpha1/nodes"));
        assert!(!is_open("/metrics"));
        assert!(!is_open("/nowhere"));
    }
}
