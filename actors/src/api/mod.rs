//! The leader's API on `apiPort` (SPEC §10), served by tonic over rustls, and the
//! [`Api`] actor that runs it in the leader subtree.
//!
//! So far the node API's `Join` ([`node_api`]): a token-authenticated call that turns
//! a CSR into a node certificate and registers the node, all in one fenced
//! transaction. The other node-API calls and the user API come next.

pub mod node_api;

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

#[derive(Clone)]
pub struct ApiArgs {
    pub leadership: Leadership,
    pub cluster: ClusterConfiguration,
    /// Where to listen: this node's advertise address and `apiPort`.
    pub addr: SocketAddr,
}

pub enum ApiMsg {
    /// Internal: the server stopped on its own.
    ServerExited(String),
}

pub struct ApiState {
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Drop for ApiState {
    fn drop(&mut self) {
        self.server.abort();
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
        let ca = ensure_ca(store.as_ref(), &args.leadership, &name).await?;
        let signer = ClusterCa::from_pem(&ca)?;
        let names = [args.leadership.node.clone(), "localhost".to_owned()];
        let server_cert =
            signer.issue_server_cert(&names, &[args.addr.ip()], SERVER_CERT_VALIDITY)?;
        // Bind here, so a taken port fails the start (and the supervisor retries).
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
        let ctx = NodeApiContext {
            store,
            leader: args.leadership.key.clone(),
            ca,
            cluster: args.cluster.clone(),
        };
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
        tracing::info!(node = %args.leadership.node, addr = %args.addr, "API listening");
        Ok(ApiState {
            stop: Some(stop),
            server,
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
        if let Some(stop) = state.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut state.server).await;
        Ok(())
    }
}
