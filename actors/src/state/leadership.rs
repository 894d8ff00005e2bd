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
}

impl Leadership {
    pub fn new(node: &str, key: LeaderKey, store: Arc<dyn StateStore>) -> Self {
        Self {
            node: node.to_owned(),
            key,
            store,
            events: EventLease::default(),
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
