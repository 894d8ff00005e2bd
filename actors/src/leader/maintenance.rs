//! `StoreMaintenance` (leader; issue 15): keeps etcd bounded for months.
//!
//! Every [`EVERY`] the leader looks at the store ([`Maintainer::round`]):
//! - **Out of space** (a member raised NOSPACE: the database reached
//!   `--quota-backend-bytes` and etcd takes no writes): it compacts away all history,
//!   defragments the members one after another and disarms the alarm, then records a
//!   `StoreSpaceRecovered` event. Until then the leader's control-plane nodes show a
//!   `StoreOutOfSpace` condition in `katcall get nodes` (from the leader's memory:
//!   nothing can be written), `kat_store_out_of_space` is 1, and the log says why.
//! - **Compaction**: history older than [`RETENTION`] is compacted (the revision seen
//!   that long ago), so every key keeps an hour of versions and no more.
//! - **Defragmentation**: a member whose file is more than twice what it holds, and
//!   at least [`DEFRAG_MIN_FREE`] larger, is defragmented; one member per round, so
//!   the others keep serving, and never the leader's own member in passing (it
//!   answers nothing meanwhile; out of space it goes last).
//!
//! Each member's file size and what is in use are the `kat_store_db_size_bytes` and
//! `kat_store_db_in_use_bytes` gauges.
//!
//! | actor | in | restart |
//! |---|---|---|
//! | `store-maintenance@<node>` | `leader@<node>` (one_for_one) | permanent; a failed round is logged and tried again at the next |

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::EventSeverity;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use crate::state::events::node_event;
use crate::state::{Leadership, StoreHealth};
use crate::store::{Revision, StoreResult};

/// How often the leader looks.
pub const EVERY: Duration = Duration::from_secs(300);
/// How much history every key keeps.
pub const RETENTION: Duration = Duration::from_secs(3600);
/// Free pages worth giving back: less is not worth a member's pause.
pub const DEFRAG_MIN_FREE: i64 = 64 << 20;

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Compacted at this revision.
    pub compacted: Option<Revision>,
    /// Members defragmented.
    pub defragmented: Vec<String>,
    /// The store was out of space and takes writes again.
    pub recovered: bool,
}

/// The state kept between rounds: revisions seen, and when.
#[derive(Debug)]
pub struct Maintainer {
    retention: Duration,
    defrag_min_free: i64,
    seen: VecDeque<(Instant, Revision)>,
    compacted: Revision,
    pub health: StoreHealth,
}

impl Maintainer {
    pub fn new(retention: Duration, health: StoreHealth) -> Self {
        Self {
            retention,
            defrag_min_free: DEFRAG_MIN_FREE,
            seen: VecDeque::new(),
            compacted: 0,
            health,
        }
    }

    /// Defragments members with at least `bytes` free (tests use little).
    pub fn defragment_from(mut self, bytes: i64) -> Self {
        self.defrag_min_free = bytes;
        self
    }

    /// One look at the store; see the module docs.
    pub async fn round(&mut self, leadership: &Leadership, now: SystemTime) -> StoreResult<Round> {
        let store = leadership.store();
        let mut round = Round::default();
        let Some(space) = store.space().await? else {
            // No database file (in-memory): history is all there is to bound.
            let (_, revision) = store.list("/kat/maintenance/").await?;
            round.compacted = self.compact_due(leadership, revision).await?;
            return Ok(round);
        };
        let m = crate::metrics::global();
        m.set_all(
            "kat_store_db_size_bytes",
            "Size of each store member's database file.",
            space
                .members
                .iter()
                .map(|s| {
                    (
                        vec![("member".to_owned(), s.name.clone())],
                        s.db_size as f64,
                    )
                })
                .collect(),
        );
        m.set_all(
            "kat_store_db_in_use_bytes",
            "What of each store member's database file holds data.",
            space
                .members
                .iter()
                .map(|s| (vec![("member".to_owned(), s.name.clone())], s.in_use as f64))
                .collect(),
        );
        m.set(
            "kat_store_out_of_space",
            "1 while the store is out of space (NOSPACE) and takes no writes.",
            &[],
            if space.out_of_space { 1.0 } else { 0.0 },
        );
        if space.out_of_space {
            self.health.set(Some(
                "etcd is out of space (NOSPACE): the cluster takes no changes; the leader \
                 is compacting and defragmenting (docs/operations.md)"
                    .to_owned(),
            ));
            tracing::error!(
                revision = space.revision,
                "store out of space (NOSPACE); recovering"
            );
            store.compact(space.revision).await?;
            self.compacted = space.revision;
            self.seen.clear();
            // Every member, the leader's own last (it answers nothing meanwhile, and
            // a long pause may cost this leadership; the cluster takes no writes anyway).
            // One that fails is logged; the others still get their room back.
            let mut members: Vec<&crate::store::MemberSpace> = space.members.iter().collect();
            members.sort_by_key(|m| m.name == leadership.node);
            for member in members {
                match store.defragment(&member.name).await {
                    Ok(()) => round.defragmented.push(member.name.clone()),
                    Err(e) => {
                        tracing::warn!(member = %member.name, error = %e, "defragmentation failed");
                    }
                }
            }
            store.disarm_out_of_space().await?;
            let after = store.space().await?.unwrap_or_default();
            if after.out_of_space {
                return Err(crate::store::StoreError::Unavailable(
                    "still out of space after compaction and defragmentation: the data \
                     itself exceeds the quota"
                        .to_owned(),
                ));
            }
            self.health.set(None);
            m.set(
                "kat_store_out_of_space",
                "1 while the store is out of space (NOSPACE) and takes no writes.",
                &[],
                0.0,
            );
            round.recovered = true;
            round.compacted = Some(space.revision);
            let sizes: Vec<String> = after
                .members
                .iter()
                .map(|s| format!("{} {} MiB", s.name, s.db_size >> 20))
                .collect();
            let event = node_event(
                &leadership.node,
                "StoreSpaceRecovered",
                EventSeverity::Warning,
                format!(
                    "etcd ran out of space (its quota) and took no writes; history compacted \
                     at revision {}, members defragmented ({}), alarm cleared",
                    space.revision,
                    sizes.join(", ")
                ),
                now,
            );
            let _ = leadership
                .commit([], [leadership.event_op(event).await])
                .await;
            tracing::warn!(revision = space.revision, "store out of space: recovered");
            return Ok(round);
        }
        self.health.set(None);
        round.compacted = self.compact_due(leadership, space.revision).await?;
        // Never the leader's own member in passing: it answers nothing while it
        // defragments, and the leadership's lease would run out meanwhile. (A
        // single-member cluster is thus only defragmented out of space; bbolt reuses
        // the free pages, so its file does not grow past its high-water mark.)
        if let Some(member) = space.members.iter().find(|s| {
            s.name != leadership.node
                && s.db_size - s.in_use >= self.defrag_min_free
                && s.db_size > 2 * s.in_use
        }) {
            tracing::info!(member = %member.name, size = member.db_size, in_use = member.in_use, "defragmenting a store member");
            store.defragment(&member.name).await?;
            round.defragmented.push(member.name.clone());
        }
        Ok(round)
    }

    /// Notes `revision` as seen now and compacts at the newest revision seen at least
    /// the retention ago, if that is past the last compaction.
    async fn compact_due(
        &mut self,
        leadership: &Leadership,
        revision: Revision,
    ) -> StoreResult<Option<Revision>> {
        let now = Instant::now();
        self.seen.push_back((now, revision));
        let mut due = None;
        while let Some(&(at, rev)) = self.seen.front() {
            if now.saturating_duration_since(at) < self.retention {
                break;
            }
            due = Some(rev);
            self.seen.pop_front();
        }
        match due {
            Some(rev) if rev > self.compacted => {
                leadership.store().compact(rev).await?;
                self.compacted = rev;
                tracing::debug!(revision = rev, "store history compacted");
                Ok(Some(rev))
            }
            _ => Ok(None),
        }
    }
}

#[derive(Clone)]
pub struct MaintenanceArgs {
    pub leadership: Leadership,
    pub every: Duration,
    pub retention: Duration,
    pub now: fn() -> SystemTime,
}

pub enum MaintenanceMsg {
    Tick,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StoreMaintenance;

impl StoreMaintenance {
    pub fn name(node: &str) -> String {
        format!("store-maintenance@{node}")
    }
}

pub struct MaintenanceState {
    args: MaintenanceArgs,
    maintainer: Maintainer,
}

impl Actor for StoreMaintenance {
    type Msg = MaintenanceMsg;
    type State = MaintenanceState;
    type Arguments = MaintenanceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MaintenanceMsg>,
        args: MaintenanceArgs,
    ) -> Result<MaintenanceState, ActorProcessingErr> {
        myself.send_interval(args.every, || MaintenanceMsg::Tick);
        let _ = myself.cast(MaintenanceMsg::Tick);
        Ok(MaintenanceState {
            maintainer: Maintainer::new(args.retention, args.leadership.store_health.clone()),
            args,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<MaintenanceMsg>,
        msg: MaintenanceMsg,
        state: &mut MaintenanceState,
    ) -> Result<(), ActorProcessingErr> {
        let MaintenanceMsg::Tick = msg;
        let now = (state.args.now)();
        if let Err(e) = state.maintainer.round(&state.args.leadership, now).await {
            tracing::warn!(error = %e, "store maintenance round failed; trying again at the next");
        }
        Ok(())
    }
}
