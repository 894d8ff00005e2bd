//! The token gate in front of everything on `apiPort` (issue 14, high 4): a request
//! that needs an API token is answered `Unauthenticated` (REST: 401; gRPC: status 16)
//! before its body or query is read, so a client without a token costs the server a
//! header's worth of work and nothing more.
//!
//! Open without a token: the node API (its calls authenticate with the node's client
//! certificate, `Join` with the join token in its small body) and the REST routes the
//! route table marks public (`/healthz`, `/readyz`, the OpenAPI document). Everything
//! else — the user API over gRPC and REST, `/metrics`, unknown paths — needs a valid
//! token. The handlers check it again (they also run in process, without the gate).

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

/// Whether `path` is served without an API token.
fn is_open(path: &str) -> bool {
    use tonic::server::NamedService;
    let node_api = NodeApiServer::<NodeApiService>::NAME;
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(node_api))
        .is_some_and(|rest| rest.starts_with('/'))
        || ROUTES.iter().any(|r| !r.auth && r.path == path)
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
    if is_open(request.uri().path()) {
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
