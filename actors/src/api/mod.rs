//! The leader's API on `apiPort` (SPEC §10), served by tonic over rustls, and the
//! [`Api`] actor that runs it in the leader subtree.
//!
//! So far the node API's `Join` ([`node_api`]): a token-authenticated call that turns
//! a CSR into a node certificate and registers the node, all in one fenced
//! transaction. The other node-API calls and the user API come next.

pub mod node_api;
pub mod user_api;

use std::net::SocketAddr;
use std::time::Duration;

use kat_proto::v1alpha1::ClusterConfiguration;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::election::Leadership;
use crate::leader::ensure_ca;
use crate::pki::ca::ClusterCa;
use node_api::NodeApiContext;

/// Validity of the API server certificate; a new one is issued whenever a node starts
/// leading.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Where the leader's API is served.
#[derive(Clone)]
pub enum ApiEndpoint {
    /// TLS on this address (the node's advertise address and `apiPort`).
    Tcp(SocketAddr),
    /// In this process, for simulations: the node API's handlers are entered in
    /// `directory` under `addr` while this node leads, and simulated agents call them
    /// directly (see `kat-tests`' simulated cluster).
    InProcess {
        addr: String,
        directory: ApiDirectory,
    },
}

impl std::fmt::Debug for ApiEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "Tcp({addr})"),
            Self::InProcess { addr, .. } => write!(f, "InProcess({addr})"),
        }
    }
}

/// The in-process "network" of a simulated cluster: API address → the node API of the
/// leader serving there.
pub type ApiDirectory =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, NodeApiContext>>>;

#[derive(Clone)]
pub struct ApiArgs {
    pub leadership: Leadership,
    pub cluster: ClusterConfiguration,
    pub endpoint: ApiEndpoint,
}

pub enum ApiMsg {
    /// Internal: the server stopped on its own.
    ServerExited(String),
}

pub struct ApiState {
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// In-process endpoint: where this leader entered itself.
    registered: Option<(ApiDirectory, String, i64)>,
}

impl Drop for ApiState {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
        self.unregister();
    }
}

impl ApiState {
    fn unregister(&mut self) {
        if let Some((directory, addr, revision)) = self.registered.take()
            && let Ok(mut map) = directory.lock()
            && map
                .get(&addr)
                .is_some_and(|ctx| ctx.leader.create_revision == revision)
        {
            map.remove(&addr);
        }
    }
}

/// Serves the API while this node leads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Api;

impl Api {
    pub fn name(node: &str) -> String {
        format!("api@{node}")
    }
}

impl Actor for Api {
    type Msg = ApiMsg;
    type State = ApiState;
    type Arguments = ApiArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ApiMsg>,
        args: ApiArgs,
    ) -> Result<ApiState, ActorProcessingErr> {
        let name = args
            .cluster
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let store = args.leadership.store.clone();
        let ca = ensure_ca(store.as_ref(), &args.leadership, &name, None).await?;
        let ctx = NodeApiContext {
            store,
            leader: args.leadership.key.clone(),
            ca: ca.clone(),
            cluster: args.cluster.clone(),
            control_plane: node_api::ControlPlaneCache::default(),
        };
        let addr = match &args.endpoint {
            ApiEndpoint::Tcp(addr) => *addr,
            ApiEndpoint::InProcess { addr, directory } => {
                directory
                    .lock()
                    .map_err(|_| "API directory poisoned")?
                    .insert(addr.clone(), ctx);
                tracing::info!(node = %args.leadership.node, %addr, "API serving in process");
                return Ok(ApiState {
                    stop: None,
                    server: None,
                    registered: Some((
                        directory.clone(),
                        addr.clone(),
                        args.leadership.key.create_revision,
                    )),
                });
            }
        };
        let signer = ClusterCa::from_pem(&ca)?;
        let names = [args.leadership.node.clone(), "localhost".to_owned()];
        let server_cert = signer.issue_server_cert(&names, &[addr.ip()], SERVER_CERT_VALIDITY)?;
        // Bind here, so a taken port fails the start (and the supervisor retries).
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let result = node_api::serve(listener, &server_cert, ctx, async {
                let _ = stopped.await;
            })
            .await;
            let why = match result {
                Ok(()) => "API server stopped".to_owned(),
                Err(e) => format!("API server failed: {e}"),
            };
            let _ = myself.send_message(ApiMsg::ServerExited(why));
        });
        tracing::info!(node = %args.leadership.node, %addr, "API listening");
        Ok(ApiState {
            stop: Some(stop),
            server: Some(server),
            registered: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ApiMsg>,
        msg: ApiMsg,
        state: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ApiMsg::ServerExited(why) if state.stop.is_some() => Err(why.into()),
            ApiMsg::ServerExited(_) => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ApiMsg>,
        state: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        state.unregister();
        if let Some(stop) = state.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = &mut state.server {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        Ok(())
    }
}
