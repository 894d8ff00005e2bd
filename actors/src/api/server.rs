//! Serving the API on `apiPort` (SPEC §2, §10): one TLS listener whose router carries
//! the node API and the user API as gRPC and the REST gateway ([`super::rest`]).

use std::time::Duration;

use kat_proto::v1alpha1::node_api_server::NodeApiServer;
use kat_proto::v1alpha1::user_api_server::UserApiServer;
use tonic::transport::Server;

use super::node::NodeApiService;
use super::served::Served;
use super::user::UserApiService;
use crate::listener::ServingCert;

/// A connection is asked to close after this long (clients reconnect; the node's sync
/// stream resumes from its revision), and closed after the grace on top.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);
/// The largest node API message (a heartbeat with its instance reports; tonic's
/// default is 4 MiB). 1,024 reports of a few hundred bytes fit.
pub const NODE_MESSAGE_LIMIT: usize = 512 << 10;
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(600);

/// Serves the node API and the user API (gRPC, and REST under `/v1alpha1/` with
/// `/healthz`, `/readyz` — [`super::rest`]) with TLS on `listener`, presenting the
/// certificate current in `server_cert` at each handshake, until `shutdown`
/// resolves. Client certificates from the cluster CA are requested but optional:
/// `Join` comes before the node has one, users authenticate with tokens, and the node
/// calls after `Join` require one.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server_cert: std::sync::Arc<ServingCert>,
    served: Served,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use tonic::server::NamedService;
    let tls = crate::listener::server_config(
        server_cert,
        &served.ca_pem,
        crate::listener::ClientAuth::Optional,
    )?;
    let node_api = NodeApiServer::new(NodeApiService::new(served.clone()))
        .max_decoding_message_size(NODE_MESSAGE_LIMIT);
    let user_api = UserApiServer::new(UserApiService::new(served.clone()));
    let gate = axum::middleware::from_fn_with_state(served.clone(), super::gate::require_token);
    let router = super::rest::router(served)
        .route_service(
            &format!("/{}/{{*rest}}", NodeApiServer::<NodeApiService>::NAME),
            node_api,
        )
        .route_service(
            &format!("/{}/{{*rest}}", UserApiServer::<UserApiService>::NAME),
            user_api,
        )
        .layer(gate);
    let (ping, ping_timeout) = crate::listener::HTTP2_KEEPALIVE;
    let limits = crate::listener::ConnectionLimits::default();
    Server::builder()
        .accept_http1(true)
        .timeout(Duration::from_secs(60))
        .http2_keepalive_interval(Some(ping))
        .http2_keepalive_timeout(Some(ping_timeout))
        .max_concurrent_streams(crate::listener::MAX_STREAMS)
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(crate::listener::incoming(listener, tls, limits), shutdown)
        .await?;
    Ok(())
}
