//! `ApiServer` (`api-server@N`, every control-plane member): listens on
//! `advertise:apiPort` with TLS (a server certificate it issues itself from the
//! cluster CA; the chain includes the CA for joiners' pin check) and serves the API
//! ([`crate::api::serve`]) from its [`ApiSlot`]: as the leader while this member
//! leads, and otherwise by pointing every caller to the leader.

use std::net::SocketAddr;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::api::Served;
use crate::leader::ApiSlot;
use crate::listener::ServerTask;
use crate::pki::ca::{CertAndKey, ClusterCa};

/// Validity of the API server certificate; a new one is issued whenever the member
/// starts.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Clone)]
pub struct ApiServerArgs {
    pub node: String,
    /// The Store actor to get the store handle from.
    pub store_actor: String,
    pub addr: SocketAddr,
    pub slot: ApiSlot,
    /// The cluster CA (this member's `DIR/pki/ca.*`): it issues the server certificate.
    pub ca: CertAndKey,
}

pub enum ApiServerMsg {
    /// Internal: the server stopped on its own.
    ServerExited(String),
}

pub struct ApiServerState {
    server: ServerTask,
}

/// Listens on `apiPort` on every control-plane member; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiServer;

impl ApiServer {
    pub fn name(node: &str) -> String {
        format!("api-server@{node}")
    }
}

impl Actor for ApiServer {
    type Msg = ApiServerMsg;
    type State = ApiServerState;
    type Arguments = ApiServerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ApiServerMsg>,
        args: ApiServerArgs,
    ) -> Result<ApiServerState, ActorProcessingErr> {
        use crate::store::StoreMsg;
        let store_actor = ractor::registry::where_is(args.store_actor.clone())
            .ok_or_else(|| format!("{} is not running", args.store_actor))?;
        let store: std::sync::Arc<dyn crate::store::StateStore> = ractor::call_t!(
            ActorRef::<StoreMsg>::from(store_actor),
            StoreMsg::Handle,
            10_000
        )?;
        let ca = args.ca.clone();
        let signer = ClusterCa::from_pem(&ca)?;
        let names = [args.node.clone(), "localhost".to_owned()];
        let server_cert =
            signer.issue_server_cert(&names, &[args.addr.ip()], SERVER_CERT_VALIDITY)?;
        // Bind here, so a taken port fails the start (and the supervisor retries).
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
        let served = Served {
            slot: args.slot.clone(),
            store,
            ca_pem: ca.cert_pem.clone(),
            node: args.node.clone(),
        };
        let server = ServerTask::spawn(
            move |stopped| async move {
                crate::api::serve(listener, &server_cert, served, async {
                    let _ = stopped.await;
                })
                .await
            },
            move |result| {
                let why = match result {
                    Ok(()) => "API server stopped".to_owned(),
                    Err(e) => format!("API server failed: {e}"),
                };
                let _ = myself.send_message(ApiServerMsg::ServerExited(why));
            },
        );
        tracing::info!(node = %args.node, addr = %args.addr, "API listening");
        Ok(ApiServerState { server })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ApiServerMsg>,
        msg: ApiServerMsg,
        state: &mut ApiServerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ApiServerMsg::ServerExited(why) if !state.server.stopping() => Err(why.into()),
            ApiServerMsg::ServerExited(_) => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ApiServerMsg>,
        state: &mut ApiServerState,
    ) -> Result<(), ActorProcessingErr> {
        state.server.stop().await;
        Ok(())
    }
}
