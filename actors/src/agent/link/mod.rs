//! How an agent reaches the leader (SPEC §6): the [`LeaderLink`] trait its Heartbeat
//! and NodeCerts call, with two transports — mTLS over TCP ([`tls::TlsLeaderLink`]) in
//! production, and in simulations a direct call of the leader's handlers
//! (`crate::api::in_process`).

pub mod tls;

use kat_proto::v1alpha1::{
    HeartbeatRequest, HeartbeatResponse, RenewCertificateRequest, RenewCertificateResponse,
    SyncEvent, SyncRequest,
};

/// Why one heartbeat to one address did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// Nobody answered (connection refused or timed out, partition).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error (refused, ...).
    #[error("refused: {0}")]
    Refused(String),
    /// A control-plane member that does not lead pointed to the leader's API.
    #[error("not the leader; the leader is at {0}")]
    NotLeader(String),
}

/// How Heartbeat reaches a leader: mTLS over TCP in production, a direct call in
/// simulations.
#[async_trait::async_trait]
pub trait LeaderLink: Send + Sync {
    async fn heartbeat(
        &self,
        target: &str,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, LinkError>;

    /// Asks for a new node certificate (NodeCerts).
    async fn renew(
        &self,
        target: &str,
        request: RenewCertificateRequest,
    ) -> Result<RenewCertificateResponse, LinkError>;

    /// Opens this node's sync stream (SPEC §6) from `request.from_revision`.
    async fn sync(&self, target: &str, request: SyncRequest) -> Result<SyncReceiver, LinkError>;

    /// The node's key and certificate on disk changed: use them from now on.
    fn reload(&self) {}
}

/// The receiving end of a sync stream; it ends when the stream does.
pub type SyncReceiver = tokio::sync::mpsc::Receiver<Result<SyncEvent, LinkError>>;
