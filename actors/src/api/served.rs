//! [`Served`]: what every API call starts from — the leader's context while this
//! member leads, or the answer that points the caller to the leader (`Unavailable`,
//! with the leader's API address in the message and in the `kat-leader-api` metadata).
//! A member just elected whose leader services are still starting holds a call up to
//! [`LEADER_SETTLE`] rather than pointing the caller back to itself.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use crate::client::LEADER_API_METADATA;
use crate::leader::{ApiSlot, LeaderContext};
use crate::state;
use crate::store::StateStore;

/// What a member's API server serves from: the leader's context while it leads, and
/// the store to find the leader otherwise.
#[derive(Clone)]
pub struct Served {
    pub slot: ApiSlot,
    pub store: Arc<dyn StateStore>,
    /// The cluster CA certificate (client certificates are checked against it).
    pub ca_pem: String,
    /// This member's node name: a call that reaches the elected leader while its
    /// leader services still start waits for them rather than being sent back here.
    pub node: String,
}

/// How long a call to a just-elected leader waits for its leader services.
pub const LEADER_SETTLE: Duration = Duration::from_secs(5);

impl Served {
    /// A server that is always the leader (tests).
    pub fn leading(ctx: LeaderContext) -> Self {
        Self {
            store: ctx.leadership.store.clone(),
            ca_pem: ctx.ca.cert_pem.clone(),
            slot: std::sync::Arc::new(tokio::sync::watch::channel(Some(ctx)).0),
            node: String::new(),
        }
    }

    /// The leader's context, or the answer that points the caller to the leader.
    pub async fn leader(&self) -> Result<LeaderContext, Status> {
        if let Some(ctx) = self.slot.borrow().clone() {
            return Ok(ctx);
        }
        let leader = state::cluster::leader_name(self.store.as_ref())
            .await
            .ok()
            .flatten();
        if leader.as_deref() == Some(self.node.as_str()) && !self.node.is_empty() {
            // Elected, and starting the leader's actors: the call waits for them.
            let mut slot = self.slot.subscribe();
            return match tokio::time::timeout(LEADER_SETTLE, slot.wait_for(Option::is_some)).await {
                Ok(Ok(ctx)) => ctx.clone().ok_or_else(Self::starting),
                _ => Err(Self::starting()),
            };
        }
        Err(self.redirect(leader).await)
    }

    fn starting() -> Status {
        Status::unavailable(
            "this member leads but its leader services are still starting; try again",
        )
    }

    async fn redirect(&self, leader: Option<String>) -> Status {
        let address = match &leader {
            Some(name) => state::cluster::control_plane_api(self.store.as_ref(), name)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        match address {
            Some(address) => {
                let mut status = Status::unavailable(format!(
                    "this member is not the leader; the leader's API is at {address}"
                ));
                if let Ok(value) = address.parse() {
                    status.metadata_mut().insert(LEADER_API_METADATA, value);
                }
                status
            }
            None => Status::unavailable(
                "this member is not the leader and no leader is known yet; try again",
            ),
        }
    }
}
