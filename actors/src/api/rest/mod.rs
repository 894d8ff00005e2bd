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
//! [`routes::ROUTES`] lists every route once; the router and the OpenAPI document
//! (`/v1alpha1/openapi.json`, [`openapi`]) are both made from it. The handlers
//! ([`handlers`]) turn a request into the gRPC call and its answer into a response.

use axum::Router;
use axum::routing::{MethodRouter, delete, get, post, put};

use super::served::Served;
use super::user::UserApiService;
use handlers::*;
use routes::{ROUTES, WORKLOAD, WORKLOADS};

// `respond` first: its `tri!` macro is used by the handlers.
#[macro_use]
mod respond;
mod handlers;
pub mod openapi;
pub mod routes;

pub use respond::{BUNDLE_BODY_LIMIT, JSON_BODY_LIMIT, error_response, http_status};

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
    router.fallback(handlers::not_found).with_state(rest)
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
        "/v1alpha1/n/{ns}/workloads/{name}/scale" => post(scale),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
