//! When the leader last heard each node, kept in the leader's memory rather than in
//! etcd (issue 15): a heartbeat that changes nothing writes nothing, so an idle
//! cluster makes no etcd revisions, and loss is decided on the monotonic clock, so a
//! step of the wall clock (NTP, a resumed VM) or skew between members cannot make
//! every node look silent at once.
//!
//! A new leadership starts with an empty table: every node counts as heard when the
//! term began, so each gets a full `nodeLossTimeoutSeconds` of grace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::Node;
use tokio::time::Instant;

/// The table; clones share it. See the module docs.
#[derive(Clone, Debug)]
pub struct Liveness(Arc<Mutex<Table>>);

#[derive(Debug)]
struct Table {
    /// When this leadership began: the "last heard" of a node not heard since.
    since: Instant,
    heard: HashMap<String, Heard>,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    at: Instant,
    /// The wall-clock time of the same moment, only for showing.
    wall: SystemTime,
    /// Heartbeats the node may still have recorded at once (a token bucket), as of
    /// `refilled`.
    tokens: f64,
    refilled: Instant,
    /// The node monitor is marking it lost: the next heartbeat must write.
    marked_lost: bool,
}

/// Heartbeats a node may have recorded in a burst ([`Liveness::may_record`]).
pub const RECORD_BURST: f64 = 10.0;

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    /// An empty table whose term begins now.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Table {
            since: Instant::now(),
            heard: HashMap::new(),
        })))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing in the table can be left half-changed by a panic.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Node `node` was heard now (`wall` is the wall clock's reading of it). Returns
    /// whether the node monitor had begun to mark it lost ([`Liveness::mark_lost`]):
    /// then its status must be written, even if the heartbeat changes nothing.
    pub fn heard(&self, node: &str, wall: SystemTime) -> bool {
        let mut t = self.table();
        let at = Instant::now();
        let since = t.since;
        match t.heard.get_mut(node) {
            Some(h) => {
                h.at = at;
                h.wall = wall;
                std::mem::take(&mut h.marked_lost)
            }
            None => {
                t.heard.insert(
                    node.to_owned(),
                    Heard {
                        at,
                        wall,
                        tokens: RECORD_BURST,
                        refilled: at,
                        marked_lost: false,
                    },
                );
                // Never heard this term: it may have been marked lost from `since`.
                at.saturating_duration_since(since) > Duration::ZERO
            }
        }
    }

    /// The node monitor is about to mark `node` lost: true (and noted) when it is
    /// still silent for `timeout`, checked under the same lock `heard` takes, so a
    /// heartbeat either came first (false: nothing to mark) or comes after and writes.
    pub fn mark_lost(&self, node: &str, timeout: Duration) -> bool {
        let mut t = self.table();
        let now = Instant::now();
        let since = t.since;
        match t.heard.get_mut(node) {
            Some(h) if now.saturating_duration_since(h.at) < timeout => false,
            Some(h) => {
                h.marked_lost = true;
                true
            }
            None => now.saturating_duration_since(since) >= timeout,
        }
    }

    /// Whether a heartbeat of `node` heard now may be recorded (written to the store):
    /// a burst of [`RECORD_BURST`], then one per `every`. A node that heartbeats faster
    /// is still heard, but what it reports waits (its next heartbeat carries it all
    /// again), so no node can make the leader write faster than that.
    pub fn may_record(&self, node: &str, every: Duration) -> bool {
        let mut t = self.table();
        let now = Instant::now();
        let Some(h) = t.heard.get_mut(node) else {
            return true;
        };
        let refill = if every.is_zero() {
            RECORD_BURST
        } else {
            now.saturating_duration_since(h.refilled).as_secs_f64() / every.as_secs_f64()
        };
        h.tokens = (h.tokens + refill).min(RECORD_BURST);
        h.refilled = now;
        if h.tokens >= 1.0 {
            h.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long node `node` has been silent: since it was last heard, or since this
    /// leadership began.
    pub fn silent_for(&self, node: &str) -> Duration {
        let t = self.table();
        let last = t.heard.get(node).map_or(t.since, |h| h.at);
        Instant::now().saturating_duration_since(last)
    }

    /// Drops a deleted node (so the table is bounded by the nodes that exist).
    pub fn forget(&self, node: &str) {
        self.table().heard.remove(node);
    }

    /// Shows in `node`'s status when this leader last heard it (the stored status
    /// carries the time of its last change).
    pub fn show(&self, node: &mut Node) {
        let name = node.metadata.as_ref().map(|m| m.name.clone());
        let Some(name) = name else { return };
        let Some(heard) = self.table().heard.get(&name).copied() else {
            return;
        };
        if let Some(status) = node.status.as_mut() {
            status.last_heartbeat = Some(kat_proto::timestamp(heard.wall));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_is_measured_on_the_monotonic_clock_from_the_terms_start() {
        let live = Liveness::new();
        tokio::time::advance(Duration::from_secs(30)).await;
        // Never heard: silent since the term began.
        assert_eq!(live.silent_for("n1"), Duration::from_secs(30));
        // The wall time given is only shown, never used to measure.
        live.heard("n1", SystemTime::UNIX_EPOCH);
        assert_eq!(live.silent_for("n1"), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(live.silent_for("n1"), Duration::from_secs(7));
        assert_eq!(live.silent_for("n2"), Duration::from_secs(37));
        live.forget("n1");
        assert_eq!(live.silent_for("n1"), Duration::from_secs(37));
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_after_the_monitor_began_to_mark_its_node_lost_must_write() {
        let live = Liveness::new();
        let timeout = Duration::from_secs(20);
        live.heard("n1", SystemTime::UNIX_EPOCH);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!live.mark_lost("n1", timeout), "heard 5 s ago: not lost");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(live.mark_lost("n1", timeout));
        // The heartbeat that lands now is told to write, once.
        assert!(live.heard("n1", SystemTime::UNIX_EPOCH));
        assert!(!live.heard("n1", SystemTime::UNIX_EPOCH));
        // A node never heard this term is lost a timeout after the term began.
        assert!(live.mark_lost("n2", timeout));
        assert!(live.heard("n2", SystemTime::UNIX_EPOCH));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_gets_a_burst_of_recorded_heartbeats_then_one_per_interval() {
        let live = Liveness::new();
        let every = Duration::from_secs(5);
        live.heard("n1", SystemTime::UNIX_EPOCH);
        let burst = (0..20).filter(|_| live.may_record("n1", every)).count();
        assert_eq!(burst, 10);
        // A flood over a minute: one per interval, not more.
        let mut recorded = 0;
        for _ in 0..600 {
            tokio::time::advance(Duration::from_millis(100)).await;
            live.heard("n1", SystemTime::UNIX_EPOCH);
            recorded += usize::from(live.may_record("n1", every));
        }
        assert_eq!(recorded, 12);
        // Other nodes are not affected.
        live.heard("n2", SystemTime::UNIX_EPOCH);
        assert!(live.may_record("n2", every));
    }
}
