//! The in-memory `StateStore` for simulations and unit tests: etcd's semantics
//! (revisions, transactions, resumable prefix watches, leases) in one process.
//!
//! Leases expire on tokio's clock, so a test with paused time
//! (`#[tokio::test(start_paused = true)]`) moves lease expiry with
//! `tokio::time::advance`. `set_available(false)` makes every call fail as an
//! unreachable etcd would.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::state_store::{
    CmpOp, Compare, EventKind, KeyValue, Lease, LeaseId, Revision, StateStore, StoreError,
    StoreResult, Txn, TxnOp, TxnOpResult, TxnResult, WatchEvent, WatchReceiver,
};

/// Longest lease TTL accepted (a year is plenty; etcd's own cap is far higher).
const MAX_LEASE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Events kept for watches that resume from an old revision.
const HISTORY_LIMIT: usize = 100_000;

#[derive(Debug)]
struct LeaseEntry {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Debug)]
struct Watcher {
    prefix: String,
    tx: super::WatchSender,
}

#[derive(Debug)]
struct State {
    revision: Revision,
    /// Events at or below this revision are gone from `history`.
    compacted: Revision,
    kvs: BTreeMap<String, KeyValue>,
    history: VecDeque<WatchEvent>,
    leases: HashMap<LeaseId, LeaseEntry>,
    next_lease: LeaseId,
    watchers: Vec<Watcher>,
    available: bool,
    /// The election keys that guarded successful writes, in order, each run of the
    /// same key once ([`MemoryStore::fenced_writers`]).
    fenced: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the expiry task when a lease deadline may have moved earlier.
    leases_changed: Notify,
}

/// In-memory `StateStore`. Create it inside a tokio runtime (it runs a lease-expiry task).
#[derive(Debug)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    expiry: JoinHandle<()>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                revision: 1,
                compacted: 0,
                kvs: BTreeMap::new(),
                history: VecDeque::new(),
                leases: HashMap::new(),
                next_lease: 0x4b41_5400_0000_0001,
                watchers: Vec::new(),
                available: true,
                fenced: Vec::new(),
            }),
            leases_changed: Notify::new(),
        });
        let expiry = tokio::spawn(expire_leases(shared.clone()));
        Self { shared, expiry }
    }

    /// Simulates losing (`false`) or regaining (`true`) the store. While unavailable every
    /// call fails with `Unavailable` and open watches end with that error.
    pub fn set_available(&self, available: bool) {
        let mut state = self.shared.lock();
        state.available = available;
        if !available {
            for w in state.watchers.drain(..) {
                super::end_watch(
                    &w.tx,
                    StoreError::Unavailable("simulated outage".to_owned()),
                );
            }
        }
    }

    /// The election keys (under `/kat/election/`) that guarded successful
    /// transactions, in commit order, a run of writes under one key listed once. Terms
    /// never interleave when fencing works: a key, once followed by another, never
    /// comes back. (For the simulation's invariant checks; a few entries per term.)
    pub fn fenced_writers(&self) -> Vec<String> {
        self.shared.lock().fenced.clone()
    }

    /// Forgets history up to `revision`; watches from older revisions get `Compacted`.
    pub fn compact(&self, revision: Revision) {
        let mut state = self.shared.lock();
        let revision = revision.min(state.revision);
        state.compacted = state.compacted.max(revision);
        while state
            .history
            .front()
            .is_some_and(|e| e.kv.mod_revision <= revision)
        {
            state.history.pop_front();
        }
    }

    fn state(&self) -> StoreResult<MutexGuard<'_, State>> {
        let mut state = self.shared.lock();
        if !state.available {
            return Err(StoreError::Unavailable("simulated outage".to_owned()));
        }
        state.expire_due(Instant::now());
        Ok(state)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every write is applied
        // as a whole before anything can panic), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Deletes the keys of expired leases as their deadlines pass.
async fn expire_leases(shared: Arc<Shared>) {
    loop {
        let changed = shared.leases_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = {
            let mut state = shared.lock();
            state.expire_due(Instant::now());
            state.leases.values().map(|l| l.deadline).min()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = &mut changed => {}
                }
            }
            None => changed.await,
        }
    }
}

fn compare_holds(kvs: &BTreeMap<String, KeyValue>, compare: &Compare) -> bool {
    let kv = kvs.get(compare.key());
    fn cmp<T: Ord>(a: T, op: CmpOp, b: T) -> bool {
        match op {
            CmpOp::Equal => a == b,
            CmpOp::NotEqual => a != b,
            CmpOp::Less => a < b,
            CmpOp::Greater => a > b,
        }
    }
    match compare {
        Compare::ModRevision(_, op, v) => cmp(kv.map_or(0, |k| k.mod_revision), *op, *v),
        Compare::CreateRevision(_, op, v) => cmp(kv.map_or(0, |k| k.create_revision), *op, *v),
        Compare::Version(_, op, v) => cmp(kv.map_or(0, |k| k.version), *op, *v),
        // etcd: a value compare on an absent key is false.
        Compare::Value(_, op, v) => kv.is_some_and(|k| cmp(k.value.as_slice(), *op, v.as_slice())),
    }
}

impl State {
    /// Applies a branch of writes and reads at the next revision; returns the results
    /// and whether anything changed.
    fn apply(&mut self, ops: &[TxnOp]) -> StoreResult<Vec<TxnOpResult>> {
        // etcd refuses a transaction branch that writes one key twice.
        let mut written = BTreeSet::new();
        for op in ops {
            if let TxnOp::Put { key, .. } | TxnOp::Delete { key } = op
                && !written.insert(key.as_str())
            {
                return Err(StoreError::Invalid(format!(
                    "duplicate key {key:?} given in one transaction"
                )));
            }
        }
        for op in ops {
            if let TxnOp::Put {
                lease: Some(id), ..
            } = op
                && *id != 0
                && !self.leases.contains_key(id)
            {
                return Err(StoreError::LeaseNotFound(*id));
            }
        }
        let rev = self.revision + 1;
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Put { key, value, lease } => {
                    let lease = lease.unwrap_or(0);
                    let previous = self.kvs.get(key).cloned();
                    if let Some(prev) = &previous
                        && prev.lease != 0
                        && prev.lease != lease
                        && let Some(l) = self.leases.get_mut(&prev.lease)
                    {
                        l.keys.remove(key);
                    }
                    if let Some(l) = self.leases.get_mut(&lease) {
                        l.keys.insert(key.clone());
                    }
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: previous.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: previous.map_or(1, |p| p.version + 1),
                        lease,
                    };
                    self.kvs.insert(key.clone(), kv.clone());
                    events.push(WatchEvent {
                        kind: EventKind::Put,
                        kv,
                    });
                    results.push(TxnOpResult::Put);
                }
                TxnOp::Delete { key } => {
                    let n = self.remove_key(key, rev, &mut events);
                    results.push(TxnOpResult::Delete(n));
                }
                TxnOp::DeletePrefix { prefix } => {
                    let keys: Vec<String> = self
                        .keys_with_prefix(prefix)
                        .map(|kv| kv.key.clone())
                        .collect();
                    let mut n = 0;
                    for key in keys {
                        n += self.remove_key(&key, rev, &mut events);
                    }
                    results.push(TxnOpResult::Delete(n));
                }
                TxnOp::Get { key } => results.push(TxnOpResult::Get(
                    self.kvs.get(key).cloned().into_iter().collect(),
                )),
                TxnOp::List { prefix } => results.push(TxnOpResult::Get(
                    self.keys_with_prefix(prefix).cloned().collect(),
                )),
            }
        }
        if !events.is_empty() {
            self.revision = rev;
            self.publish(events);
        }
        Ok(results)
    }

    fn remove_key(&mut self, key: &str, rev: Revision, events: &mut Vec<WatchEvent>) -> i64 {
        let Some(old) = self.kvs.remove(key) else {
            return 0;
        };
        if let Some(l) = self.leases.get_mut(&old.lease) {
            l.keys.remove(key);
        }
        let kv = KeyValue {
            key: old.key,
            mod_revision: rev,
            ..Default::default()
        };
        events.push(WatchEvent {
            kind: EventKind::Delete,
            kv,
        });
        1
    }

    fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.kvs
            .range(prefix.to_owned()..)
            .map(|(_, kv)| kv)
            .take_while(move |kv| kv.key.starts_with(prefix))
    }

    fn publish(&mut self, events: Vec<WatchEvent>) {
        for event in events {
            self.watchers.retain(|w| {
                !event.kv.key.starts_with(&w.prefix) || super::deliver(&w.tx, Ok(event.clone()))
            });
            self.history.push_back(event);
        }
        while self.history.len() > HISTORY_LIMIT {
            if let Some(e) = self.history.pop_front() {
                self.compacted = self.compacted.max(e.kv.mod_revision);
            }
        }
        // Keep whole revisions: drop the rest of a partly trimmed one.
        while self
            .history
            .front()
            .is_some_and(|e| e.kv.mod_revision <= self.compacted)
        {
            self.history.pop_front();
        }
    }

    /// Revokes every lease whose deadline has passed, deleting its keys.
    fn expire_due(&mut self, now: Instant) {
        let due: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let ops: Vec<TxnOp> = lease
            .keys
            .into_iter()
            .map(|key| TxnOp::Delete { key })
            .collect();
        // Only deletes of existing keys: cannot fail.
        let _ = self.apply(&ops);
        true
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        Ok(self.state()?.kvs.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let state = self.state()?;
        Ok((
            state.keys_with_prefix(prefix).cloned().collect(),
            state.revision,
        ))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Revision> {
        let mut state = self.state()?;
        state.apply(&[TxnOp::Put {
            key: key.to_owned(),
            value,
            lease,
        }])?;
        Ok(state.revision)
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let mut state = self.state()?;
        let results = state.apply(&[TxnOp::delete(key)])?;
        Ok(matches!(results.first(), Some(TxnOpResult::Delete(n)) if *n > 0))
    }

    async fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        let mut state = self.state()?;
        let succeeded = txn.compares.iter().all(|c| compare_holds(&state.kvs, c));
        let results = state.apply(if succeeded { &txn.then } else { &txn.otherwise })?;
        if succeeded
            && !txn.then.is_empty()
            && let Some(guard) = txn.compares.iter().find(|c| {
                // A leader's fence: its election key, as created (a campaign's
                // "absent" compare is no leader's write).
                matches!(c, Compare::CreateRevision(key, _, rev)
                    if *rev > 0 && key.starts_with("/kat/election/"))
            })
            && state.fenced.last().map(String::as_str) != Some(guard.key())
        {
            let key = guard.key().to_owned();
            state.fenced.push(key);
        }
        Ok(TxnResult {
            succeeded,
            revision: state.revision,
            results,
        })
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> StoreResult<WatchReceiver> {
        let mut state = self.state()?;
        let start = if from_revision <= 0 {
            state.revision + 1
        } else {
            from_revision
        };
        if start <= state.compacted {
            return Err(StoreError::Compacted {
                requested: start,
                oldest: state.compacted + 1,
            });
        }
        let (tx, rx) = super::watch_channel();
        let mut open = true;
        for event in state
            .history
            .iter()
            .filter(|e| e.kv.mod_revision >= start && e.kv.key.starts_with(prefix))
        {
            if !super::deliver(&tx, Ok(event.clone())) {
                open = false;
                break;
            }
        }
        if open {
            state.watchers.push(Watcher {
                prefix: prefix.to_owned(),
                tx,
            });
        }
        Ok(rx)
    }

    async fn grant_lease(&self, ttl: Duration) -> StoreResult<Lease> {
        if ttl.is_zero() {
            return Err(StoreError::Invalid(
                "a lease needs a TTL of at least 1 s".to_owned(),
            ));
        }
        if ttl > MAX_LEASE_TTL {
            return Err(StoreError::Invalid(format!(
                "lease TTL {ttl:?} is longer than {MAX_LEASE_TTL:?}"
            )));
        }
        // etcd counts TTLs in whole seconds.
        let ttl = Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0));
        let mut state = self.state()?;
        let id = state.next_lease;
        state.next_lease += 1;
        state.leases.insert(
            id,
            LeaseEntry {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        drop(state);
        self.shared.leases_changed.notify_one();
        Ok(Lease { id, ttl })
    }

    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<Duration> {
        let mut state = self.state()?;
        let entry = state
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        entry.deadline = Instant::now() + entry.ttl;
        Ok(entry.ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()> {
        let mut state = self.state()?;
        if state.revoke(lease) {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(lease))
        }
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        drop(self.state()?);
        MemoryStore::compact(self, revision);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::election;

    #[tokio::test(start_paused = true)]
    async fn leases_expire_on_the_simulated_clock() {
        let store = MemoryStore::new();
        let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
        store
            .put("/k", b"v".to_vec(), Some(lease.id))
            .await
            .unwrap();
        let mut watch = store.watch("/k", 0).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(store.get("/k").await.unwrap().is_some());
        store.keep_alive(lease.id).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(
            store.get("/k").await.unwrap().is_some(),
            "keep-alive restarted the TTL"
        );
        // No call touches the store now: the expiry task alone must delete the key.
        tokio::time::advance(Duration::from_millis(1001)).await;
        let event = watch.recv().await.unwrap().unwrap();
        assert_eq!(
            (event.kind, event.kv.key.as_str()),
            (EventKind::Delete, "/k")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failover_by_lease_expiry_takes_simulated_seconds_not_real_ones() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let a = store.grant_lease(Duration::from_secs(5)).await.unwrap();
        let b = store.grant_lease(Duration::from_secs(3600)).await.unwrap();
        let leader_a = election::campaign(store.as_ref(), "/e", b"a".to_vec(), a.id)
            .await
            .unwrap();
        let s = store.clone();
        let campaign_b =
            tokio::spawn(
                async move { election::campaign(s.as_ref(), "/e", b"b".to_vec(), b.id).await },
            );
        let real = std::time::Instant::now();
        let started = Instant::now();
        let leader_b = campaign_b.await.unwrap().unwrap();
        assert_eq!(
            started.elapsed().as_secs(),
            5,
            "b leads when a's 5 s lease runs out"
        );
        assert!(real.elapsed() < Duration::from_secs(1));
        let stale = Txn::new()
            .when([leader_a.fence()])
            .and_then([TxnOp::put("/x", "stale")]);
        assert!(!store.txn(stale).await.unwrap().succeeded);
        let fresh = Txn::new()
            .when([leader_b.fence()])
            .and_then([TxnOp::put("/x", "fresh")]);
        assert!(store.txn(fresh).await.unwrap().succeeded);
    }

    #[tokio::test]
    async fn watching_a_compacted_revision_fails() {
        let store = MemoryStore::new();
        let r1 = store.put("/a", vec![], None).await.unwrap();
        let r2 = store.put("/a", vec![1], None).await.unwrap();
        store.compact(r2);
        assert_eq!(
            store.watch("/a", r1).await.unwrap_err(),
            StoreError::Compacted {
                requested: r1,
                oldest: r2 + 1
            }
        );
        assert!(store.watch("/a", r2 + 1).await.is_ok());
    }

    #[tokio::test]
    async fn an_outage_fails_calls_and_ends_watches() {
        let store = MemoryStore::new();
        let mut watch = store.watch("/", 0).await.unwrap();
        store.set_available(false);
        assert!(matches!(
            store.get("/a").await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            watch.recv().await,
            Some(Err(StoreError::Unavailable(_)))
        ));
        store.set_available(true);
        assert!(store.put("/a", vec![], None).await.is_ok());
    }
}
