//! [`Leadership`]: a leader's handle on cluster state. Every write made through it
//! carries the election fence (`Compare::CreateRevision(<election key>) == <its create
//! revision>`), so once this node has lost the election its writes fail; events are
//! written under the one shared events lease of this leadership.

use std::sync::Arc;

use crate::store::election::LeaderKey;
use crate::store::{Compare, StateStore, Txn, TxnOp, TxnOpResult, TxnResult};

use super::error::{StateError, StateResult};
use super::events::{EventLease, EventRecord};

/// What the leader subtree gets when this node wins the election.
#[derive(Clone)]
pub struct Leadership {
    /// The leading node's name.
    pub node: String,
    pub key: LeaderKey,
    pub store: Arc<dyn StateStore>,
    /// The lease every event of this leadership is written under.
    pub events: EventLease,
    /// When this leadership last heard each node (memory only, per term).
    pub liveness: super::Liveness,
    /// The store's trouble (out of space), as `leader::maintenance` found it.
    pub store_health: super::StoreHealth,
}

impl Leadership {
    pub fn new(node: &str, key: LeaderKey, store: Arc<dyn StateStore>) -> Self {
        Self {
            node: node.to_owned(),
            key,
            store,
            events: EventLease::default(),
            liveness: super::Liveness::new(),
            store_health: super::StoreHealth::default(),
        }
    }

    pub fn store(&self) -> &dyn StateStore {
        self.store.as_ref()
    }

    /// The guard every leader-only write carries.
    pub fn fence(&self) -> Compare {
        self.key.fence()
    }

    /// The write that records `event` (under the events lease).
    pub async fn event_op(&self, event: EventRecord) -> TxnOp {
        let lease = self.events.get(self.store()).await;
        event.put(lease)
    }

    /// Runs `ops` in one transaction if this node still leads and every one of `when`
    /// holds. `Ok(false)`: a condition of `when` failed (nothing written);
    /// [`StateError::NotLeader`]: the fence failed.
    pub async fn commit(
        &self,
        when: impl IntoIterator<Item = Compare>,
        ops: impl IntoIterator<Item = TxnOp>,
    ) -> StateResult<bool> {
        Ok(self.commit_txn(when, ops).await?.succeeded)
    }

    /// [`Self::commit`] that returns the transaction's result (revision, deletions).
    pub async fn commit_txn(
        &self,
        when: impl IntoIterator<Item = Compare>,
        ops: impl IntoIterator<Item = TxnOp>,
    ) -> StateResult<TxnResult> {
        let mut guards = vec![self.fence()];
        guards.extend(when);
        let only_fence = guards.len() == 1;
        let txn = Txn::new()
            .when(guards)
            .and_then(ops)
            .or_else([TxnOp::get(&self.key.key)]);
        let result = self.store.txn(txn).await?;
        if !result.succeeded && (only_fence || !self.still_leading(&result.results)) {
            return Err(StateError::NotLeader);
        }
        Ok(result)
    }

    /// In a refused write whose else-branch read the election key last: whether that
    /// key is still this leader's.
    pub fn still_leading(&self, results: &[TxnOpResult]) -> bool {
        matches!(results.last(), Some(TxnOpResult::Get(kvs))
            if kvs.first().is_some_and(|kv| kv.create_revision == self.key.create_revision))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test
    use super::*;
    use crate::store::{MemoryStore, election};

    #[tokio::test]
    async fn a_failed_condition_is_not_a_lost_leadership() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let lease = store
            .grant_lease(std::time::Duration::from_secs(60))
            .await
            .unwrap();
        let key = election::campaign(store.as_ref(), "/kat/election", b"n1".to_vec(), lease.id)
            .await
            .unwrap();
        let leadership = Leadership::new("n1", key.clone(), store.clone());
        store.put("/x", b"1".to_vec(), None).await.unwrap();
        // The object changed: Ok(false), nothing written.
        let changed = leadership
            .commit([Compare::absent("/x")], [TxnOp::put("/y", "2")])
            .await;
        assert_eq!(changed, Ok(false));
        assert!(store.get("/y").await.unwrap().is_none());
        assert_eq!(
            leadership.commit([], [TxnOp::put("/y", "2")]).await,
            Ok(true)
        );
        // Another leader now: every write refused as NotLeader, with or without a
        // condition that would hold.
        election::resign(store.as_ref(), &key).await.unwrap();
        for when in [vec![], vec![Compare::absent("/z")]] {
            let refused = leadership.commit(when, [TxnOp::put("/z", "3")]).await;
            assert_eq!(refused, Err(StateError::NotLeader));
        }
        assert!(store.get("/z").await.unwrap().is_none());
    }
}
