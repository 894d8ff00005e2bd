//! The API on `apiPort` (SPEC §2, §10), served by tonic over rustls.
//!
//! Every control-plane member listens ([`ApiServer`], in its control-plane subtree).
//! While the member leads, the [`Api`] actor in its leader subtree puts the leader's
//! context (store, election fence, CA) into the server's [`ApiSlot`] and the node API
//! ([`node_api`]) and user API ([`user_api`]) are served; otherwise every call is
//! answered `Unavailable` with the leader's API address in the message and in the
//! `kat-leader-api` metadata, and agents and `katcall` follow it.

pub mod instances;
pub mod listener;
pub mod namespaces;
pub mod node_api;
pub mod nodes;
pub mod openapi;
pub mod rest;
pub mod user_api;
pub mod workloads;

use std::net::SocketAddr;
use std::time::Duration;

use kat_proto::v1alpha1::ClusterConfiguration;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::election::Leadership;
use crate::leader::ensure_ca;
use crate::pki::ca::ClusterCa;
use node_api::NodeApiContext;

/// Validity of the API server certificate; a new one is issued whenever a node starts
/// leading.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// The leader's context while this member leads, else `None`: what [`ApiServer`]
/// serves from.
pub type ApiSlot = std::sync::Arc<tokio::sync::watch::Sender<Option<NodeApiContext>>>;

pub fn new_api_slot() -> ApiSlot {
    std::sync::Arc::new(tokio::sync::watch::channel(None).0)
}

/// Metadata key naming the leader's API address in a follower's answer.
pub const LEADER_API_METADATA: &str = "kat-leader-api";

/// Where the leader's API is served.
#[derive(Clone)]
pub enum ApiEndpoint {
    /// TLS on `addr` (the node's advertise address and `apiPort`), by the member's
    /// [`ApiServer`], from `slot`.
    Tcp { addr: SocketAddr, slot: ApiSlot },
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
            Self::Tcp { addr, .. } => write!(f, "Tcp({addr})"),
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

pub enum ApiMsg {}

pub struct ApiState {
    /// Tcp: the slot this leader filled.
    slot: Option<(ApiSlot, i64)>,
    /// In-process endpoint: where this leader entered itself.
    registered: Option<(ApiDirectory, String, i64)>,
}

impl Drop for ApiState {
    fn drop(&mut self) {
        self.release();
    }
}

impl ApiState {
    /// Withdraws this leader's context (only if it is still the one there).
    fn release(&mut self) {
        if let Some((slot, revision)) = self.slot.take() {
            slot.send_if_modified(|ctx| {
                if ctx
                    .as_ref()
                    .is_some_and(|c| c.leader.create_revision == revision)
                {
                    *ctx = None;
                    true
                } else {
                    false
                }
            });
        }
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

/// Puts the leader's context where the API is served from, while this node leads.
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
        _myself: ActorRef<ApiMsg>,
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
            leader_node: args.leadership.node.clone(),
            ca,
            cluster: args.cluster.clone(),
            control_plane: node_api::ControlPlaneCache::default(),
            events: Default::default(),
            agent_client: Default::default(),
        };
        let revision = args.leadership.key.create_revision;
        match &args.endpoint {
            ApiEndpoint::Tcp { addr, slot } => {
                slot.send_replace(Some(ctx));
                tracing::info!(node = %args.leadership.node, %addr, "API serving as leader");
                Ok(ApiState {
                    slot: Some((slot.clone(), revision)),
                    registered: None,
                })
            }
            ApiEndpoint::InProcess { addr, directory } => {
                directory
                    .lock()
                    .map_err(|_| "API directory poisoned")?
                    .insert(addr.clone(), ctx);
                tracing::info!(node = %args.leadership.node, %addr, "API serving in process");
                Ok(ApiState {
                    slot: None,
                    registered: Some((directory.clone(), addr.clone(), revision)),
                })
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ApiMsg>,
        state: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        state.release();
        Ok(())
    }
}

#[derive(Clone)]
pub struct ApiServerArgs {
    pub node: String,
    /// The Store actor to get the store handle from.
    pub store_actor: String,
    pub addr: SocketAddr,
    pub slot: ApiSlot,
    /// init's node: `DIR`, whose `pki/ca.*` serve until the leader has stored the CA.
    pub local_ca_dir: Option<std::path::PathBuf>,
}

pub enum ApiServerMsg {
    /// Internal: the server stopped on its own.
    ServerExited(String),
}

pub struct ApiServerState {
    server: listener::ServerTask,
}

/// Listens on `apiPort` on every control-plane member; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiServer;

impl ApiServer {
    pub fn name(node: &str) -> String {
        format!("api-server@{node}")
    }
}

/// The cluster CA from the store, else init's files, waiting a little for either.
async fn cluster_ca(
    store: &dyn crate::store::StateStore,
    local: Option<&std::path::Path>,
) -> Result<crate::pki::ca::CertAndKey, ActorProcessingErr> {
    use kat_proto::v1alpha1::CertificateAuthority;
    use prost::Message;
    for _ in 0..100 {
        if let Some(kv) = store.get(crate::leader::CA_KEY).await? {
            let ca = CertificateAuthority::decode(kv.value.as_slice())?;
            return Ok(crate::pki::ca::CertAndKey {
                cert_pem: ca.cert_pem,
                key_pem: ca.key_pem,
            });
        }
        if let Some(ca) = local.and_then(crate::leader::read_local_ca) {
            return Ok(ca);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("no cluster CA in the store yet".into())
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
        let ca = cluster_ca(store.as_ref(), args.local_ca_dir.as_deref()).await?;
        let signer = ClusterCa::from_pem(&ca)?;
        let names = [args.node.clone(), "localhost".to_owned()];
        let server_cert =
            signer.issue_server_cert(&names, &[args.addr.ip()], SERVER_CERT_VALIDITY)?;
        // Bind here, so a taken port fails the start (and the supervisor retries).
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
        let served = node_api::Served {
            slot: args.slot.clone(),
            store,
            ca_pem: ca.cert_pem.clone(),
            node: args.node.clone(),
        };
        let server = listener::ServerTask::spawn(
            move |stopped| async move {
                node_api::serve(listener, &server_cert, served, async {
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
