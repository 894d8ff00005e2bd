//! The agent's shared view of its node: what the agent actors of one node tell each
//! other as latest values (`tokio::sync::watch` cells and small shared slots).

use std::sync::Arc;

use kat_proto::v1alpha1::{Assignment, Peer, SyncEvent, sync_event};
use tokio::sync::watch;

/// Whether this node is in touch with a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// No heartbeat accepted yet since the agent started.
    Starting,
    /// The last heartbeat was accepted.
    Attached,
    /// No leader answered for the loss timeout; local work continues, Heartbeat retries.
    Detached,
}

/// The node's mode, shared by the agent subtree: Heartbeat and the supervisor's
/// policy write it; Runtime, Dns and WireGuard read it.
pub type ModeCell = Arc<watch::Sender<AgentMode>>;

pub fn new_mode_cell() -> ModeCell {
    Arc::new(watch::channel(AgentMode::Starting).0)
}

/// What this node knows from its sync stream; the agent's actors read it (WireGuard
/// the peers; Runtime and Dns their parts in later issues).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// Revision of the last event applied (reported in every heartbeat).
    pub revision: i64,
    pub peers: Vec<Peer>,
    /// The instances assigned to this node; `None` until the leader has said.
    pub assignments: Option<Vec<Assignment>>,
}

pub type SyncedCell = Arc<watch::Sender<Synced>>;

pub fn new_synced_cell() -> SyncedCell {
    Arc::new(watch::channel(Synced::default()).0)
}

/// Applies one sync event.
pub fn apply_sync_event(synced: &SyncedCell, event: SyncEvent) {
    synced.send_modify(|s| {
        s.revision = s.revision.max(event.revision);
        match event.payload {
            Some(sync_event::Payload::Peers(set)) => s.peers = set.peers,
            Some(sync_event::Payload::Assignments(set)) => {
                s.assignments = Some(set.assignments);
            }
            _ => {}
        }
    });
}

/// The leader's node name, as the last heartbeat answer said (the agent API takes
/// calls from that node only).
pub type LeaderNodeCell = Arc<std::sync::Mutex<String>>;
