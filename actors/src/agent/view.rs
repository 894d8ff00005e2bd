//! The node's shared view ([`NodeView`]): the latest values the agent actors of one
//! node tell each other. Each part is a `tokio::sync::watch` cell with one writer (the
//! mode has two, both about the link to the leader); readers borrow the latest value or
//! subscribe to hear that it changed. Things that *happen* travel as messages; only
//! latest-value state lives here.
//!
//! | part | writer | readers |
//! |---|---|---|
//! | `mode` ([`AgentMode`]) | Heartbeat (Attached); `agent@N`'s restart policy (Detached) | Heartbeat; simulations and tests |
//! | `synced` ([`Synced`]: peers, assignments) | Heartbeat's sync-stream follower | Runtime (assignments); Heartbeat (revision) |
//! | `control_plane` (API addresses) | Heartbeat, from its answers | Heartbeat after a restart (a detach must not forget them) |
//! | `leader` (node name) | Heartbeat, from its answers | AgentApi (takes calls from the leader only) |
//! | `running` (desired instances) | Runtime (what the leader told it to run; `None` until then) | AgentApi (logs, exec, purge) |
//! | `reports` (instance reports) | Runtime | Heartbeat (sends them; a change is sent at once) |
//!
//! The view lives as long as the node's tree: actors restarted by `agent@N` find it as
//! their predecessor left it.

use std::collections::BTreeMap;
use std::sync::Arc;

use kat_proto::v1alpha1::{Assignment, InstanceReport, Peer, SyncEvent, sync_event};
use kat_runtime::host::DesiredInstance;
use tokio::sync::watch;

/// A latest-value cell: writers `send_*`, readers `borrow` or `subscribe`.
pub type Cell<T> = Arc<watch::Sender<T>>;

fn cell<T: Send + Sync>(value: T) -> Cell<T> {
    Arc::new(watch::channel(value).0)
}

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

/// What this node knows from its sync stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// Revision of the last event applied (reported in every heartbeat).
    pub revision: i64,
    pub peers: Vec<Peer>,
    /// The instances assigned to this node; `None` until the leader has said.
    pub assignments: Option<Vec<Assignment>>,
}

impl Synced {
    /// Applies one sync event.
    pub fn apply(&mut self, event: SyncEvent) {
        self.revision = self.revision.max(event.revision);
        match event.payload {
            Some(sync_event::Payload::Peers(set)) => self.peers = set.peers,
            Some(sync_event::Payload::Assignments(set)) => {
                self.assignments = Some(set.assignments);
            }
            _ => {}
        }
    }
}

/// The latest status of each instance, by instance ID, with its namespace and
/// workload.
pub type Reports = BTreeMap<String, InstanceReport>;

/// The node's shared view; see the module docs. Cloning shares it.
#[derive(Clone)]
pub struct NodeView {
    pub mode: Cell<AgentMode>,
    pub synced: Cell<Synced>,
    /// Control-plane API addresses learned from heartbeat answers.
    pub control_plane: Cell<Vec<String>>,
    /// The leader's node name, as the last heartbeat answer said (empty until then).
    pub leader: Cell<String>,
    /// The desired instances the Runtime makes run; `None` until it knows.
    pub running: Cell<Option<Vec<DesiredInstance>>>,
    pub reports: Cell<Reports>,
}

impl Default for NodeView {
    fn default() -> Self {
        Self {
            mode: cell(AgentMode::Starting),
            synced: cell(Synced::default()),
            control_plane: cell(Vec::new()),
            leader: cell(String::new()),
            running: cell(None),
            reports: cell(Reports::new()),
        }
    }
}

impl NodeView {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn mode(&self) -> AgentMode {
        *self.mode.borrow()
    }
}

/// Writes `value` into `cell` only if it differs, so readers wake for changes only.
pub fn publish<T: PartialEq>(cell: &Cell<T>, value: T) -> bool {
    cell.send_if_modified(|old| {
        if *old == value {
            false
        } else {
            *old = value;
            true
        }
    })
}
