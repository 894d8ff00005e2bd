//! The `Api` actor (leader subtree): while this node leads, it puts the leader's
//! [`LeaderContext`] where the API is served from — the member's [`ApiSlot`], which its
//! API server (`crate::control_plane::api_server`) reads, or an in-process
//! [`ApiDirectory`] in simulations — and withdraws it when it stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kat_proto::quadlet::ClusterSettings;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::context::LeaderContext;
use crate::pki::local::ClusterPki;
use crate::state::{self, Leadership};

/// The leader's context while this member leads, else `None`: what the member's API
/// server serves from.
pub type ApiSlot = Arc<tokio::sync::watch::Sender<Option<LeaderContext>>>;

pub fn new_api_slot() -> ApiSlot {
    Arc::new(tokio::sync::watch::channel(None).0)
}

/// The in-process "network" of a simulated cluster: API address → the context of the
/// leader serving there.
pub type ApiDirectory = Arc<Mutex<HashMap<String, LeaderContext>>>;

/// Where the leader's API is served.
#[derive(Clone)]
pub enum ApiEndpoint {
    /// TLS on `addr` (the node's advertise address and `apiPort`), by the member's API
    /// server, from `slot`.
    Tcp { addr: SocketAddr, slot: ApiSlot },
    /// In this process, for simulations: the leader's context is entered in
    /// `directory` under `addr` while this node leads, and simulated agents call the
    /// leader's handlers directly (`crate::api::in_process`).
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

#[derive(Clone)]
pub struct ApiArgs {
    pub leadership: Leadership,
    pub settings: ClusterSettings,
    pub pki: ClusterPki,
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

fn revision_of(ctx: &LeaderContext) -> i64 {
    ctx.leadership.key.create_revision
}

impl ApiState {
    /// Withdraws this leader's context (only if it is still the one there).
    fn release(&mut self) {
        if let Some((slot, revision)) = self.slot.take() {
            slot.send_if_modified(|ctx| {
                if ctx.as_ref().is_some_and(|c| revision_of(c) == revision) {
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
                .is_some_and(|ctx| revision_of(ctx) == revision)
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
        // Serve only with the CA the cluster trusts (Bootstrap records it on a new
        // cluster; this waits for nothing, as both check the same record).
        state::cluster::record_ca(&args.leadership, &args.pki.cluster.cert_pem).await?;
        let ctx = LeaderContext::new(
            args.leadership.clone(),
            args.pki.clone(),
            args.settings.clone(),
        );
        let revision = args.leadership.key.create_revision;
        let node = &args.leadership.node;
        match &args.endpoint {
            ApiEndpoint::Tcp { addr, slot } => {
                slot.send_replace(Some(ctx));
                tracing::info!(%node, %addr, "API serving as leader");
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
                tracing::info!(%node, %addr, "API serving in process");
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
