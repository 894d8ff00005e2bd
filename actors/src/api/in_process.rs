//! The node API without sockets, for simulations: an [`InProcessLink`] is a node's
//! [`LeaderLink`] that finds the leader serving an address in the [`ApiDirectory`]
//! (where a leader's `api@N` enters its context) and calls the leader's handlers
//! directly — the same functions the gRPC service ([`super::node`]) calls. Errors
//! cross as the link's typed errors, mapped as the TLS link maps the gRPC status the
//! same error would become.
//!
//! A node can be cut off ([`SimNetwork::partition`]): its calls then fail as
//! unreachable, and an open sync stream ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kat_proto::v1alpha1::{
    HeartbeatRequest, HeartbeatResponse, RenewCertificateRequest, RenewCertificateResponse,
    SyncRequest,
};

use crate::agent::link::{LeaderLink, LinkError, SyncReceiver};
use crate::leader::{self, ApiDirectory, LeaderContext};
use crate::state::StateError;

/// The in-process network: which nodes are cut off, and the directory of leaders.
#[derive(Default)]
pub struct SimNetwork {
    pub directory: ApiDirectory,
    partitioned: Mutex<HashSet<String>>,
}

impl SimNetwork {
    pub fn is_partitioned(&self, node: &str) -> bool {
        self.partitioned
            .lock()
            .map(|p| p.contains(node))
            .unwrap_or(false)
    }

    /// Cuts `node` off from every leader.
    pub fn partition(&self, node: &str) {
        if let Ok(mut p) = self.partitioned.lock() {
            p.insert(node.to_owned());
        }
    }

    pub fn heal(&self, node: &str) {
        if let Ok(mut p) = self.partitioned.lock() {
            p.remove(node);
        }
    }

    /// The context of the leader serving `addr`, if any.
    pub fn leader_at(&self, addr: &str) -> Option<LeaderContext> {
        self.directory.lock().ok()?.get(addr).cloned()
    }

    /// Some leader's context (a simulation has at most one at a time).
    pub fn any_leader(&self) -> Option<LeaderContext> {
        self.directory.lock().ok()?.values().next().cloned()
    }
}

/// What a failure looks like to the node, as the TLS link maps the gRPC status it
/// becomes: `Unavailable` (this member no longer leads, the store is out of reach) is
/// an unreachable leader — try again, elsewhere — and anything else a refusal.
fn link_error(e: StateError) -> LinkError {
    match e {
        StateError::NotLeader | StateError::Unavailable(_) => LinkError::Unreachable(e.to_string()),
        other => LinkError::Refused(other.to_string()),
    }
}

/// Node `node`'s way to a leader in a simulation.
pub struct InProcessLink {
    pub node: String,
    pub network: Arc<SimNetwork>,
    /// The wall clock the leader stamps heartbeats with.
    pub clock: fn() -> SystemTime,
}

impl InProcessLink {
    /// The leader context serving `target`, unless this node is cut off.
    fn reach(&self, target: &str) -> Result<LeaderContext, LinkError> {
        if self.network.is_partitioned(&self.node) {
            return Err(LinkError::Unreachable("partitioned".to_owned()));
        }
        self.network
            .leader_at(target)
            .ok_or_else(|| LinkError::Unreachable(format!("nothing serves {target}")))
    }
}

#[async_trait::async_trait]
impl LeaderLink for InProcessLink {
    async fn heartbeat(
        &self,
        target: &str,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, LinkError> {
        let ctx = self.reach(target)?;
        leader::heartbeats::heartbeat(&ctx, &self.node, None, request, (self.clock)())
            .await
            .map_err(link_error)
    }

    async fn renew(
        &self,
        target: &str,
        request: RenewCertificateRequest,
    ) -> Result<RenewCertificateResponse, LinkError> {
        let ctx = self.reach(target)?;
        leader::renewal::renew_certificate(&ctx, &self.node, None, request, (self.clock)())
            .await
            .map_err(link_error)
    }

    async fn sync(&self, target: &str, request: SyncRequest) -> Result<SyncReceiver, LinkError> {
        let ctx = self.reach(target)?;
        let mut events = leader::sync::sync_events(&ctx, &self.node, None, request)
            .await
            .map_err(link_error)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (network, node) = (self.network.clone(), self.node.clone());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                // A partition cuts an open stream too.
                if network.is_partitioned(&node) {
                    let _ = tx
                        .send(Err(LinkError::Unreachable("partitioned".to_owned())))
                        .await;
                    return;
                }
                if tx.send(event.map_err(link_error)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
