//! Leader election on any `StateStore` (SPEC §5), the algorithm of etcd's election
//! service: each candidate writes `<election>/<lease-hex>` under its lease; the key
//! with the lowest create revision leads; the others wait for the key just before
//! theirs to go. A leader's writes are fenced by [`LeaderKey::fence`], a compare on
//! its key's create revision, so a deposed leader's transaction fails.

use super::state_store::{
    CmpOp, Compare, EventKind, KeyValue, LeaseId, Revision, StateStore, StoreError, StoreResult,
    Txn, TxnOp, TxnOpResult,
};

/// Proof of leadership: the candidate's key and the revision that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub election: String,
    pub key: String,
    pub create_revision: Revision,
    pub lease: LeaseId,
}

impl LeaderKey {
    /// The guard every leader-only write carries: it fails once this leadership ended
    /// (key deleted by resignation or lease expiry, or re-created by another campaign).
    pub fn fence(&self) -> Compare {
        Compare::CreateRevision(self.key.clone(), CmpOp::Equal, self.create_revision)
    }
}

fn prefix_of(election: &str) -> String {
    format!("{}/", election.trim_end_matches('/'))
}

/// Campaigns until this candidate leads; returns its leader key. Cancel by dropping the
/// future (the key stays until the lease ends or [`resign`] removes it).
pub async fn campaign(
    store: &dyn StateStore,
    election: &str,
    value: Vec<u8>,
    lease: LeaseId,
) -> StoreResult<LeaderKey> {
    let prefix = prefix_of(election);
    let key = format!("{prefix}{lease:x}");
    let txn = Txn::new()
        .when([Compare::absent(&key)])
        .and_then([TxnOp::Put {
            key: key.clone(),
            value: value.clone(),
            lease: Some(lease),
        }])
        .or_else([TxnOp::get(&key)]);
    let result = store.txn(txn).await?;
    let create_revision = if result.succeeded {
        result.revision
    } else {
        // Campaigning again with the same lease: keep the place in line, update the value.
        let existing = match result.results.first() {
            Some(TxnOpResult::Get(kvs)) => kvs.first().cloned(),
            _ => None,
        };
        let existing = existing.ok_or(StoreError::LeaseNotFound(lease))?;
        store.put(&key, value, Some(lease)).await?;
        existing.create_revision
    };
    wait_for_turn(store, &prefix, &key, create_revision).await?;
    Ok(LeaderKey {
        election: election.to_owned(),
        key,
        create_revision,
        lease,
    })
}

/// Waits until no candidate older than `create_revision` remains.
async fn wait_for_turn(
    store: &dyn StateStore,
    prefix: &str,
    key: &str,
    create_revision: Revision,
) -> StoreResult<()> {
    loop {
        let (candidates, revision) = store.list(prefix).await?;
        let mine = candidates
            .iter()
            .find(|kv| kv.key == key && kv.create_revision == create_revision);
        let Some(mine) = mine else {
            return Err(StoreError::LeaseNotFound(0));
        };
        let lease = mine.lease;
        let Some(before) = candidates
            .iter()
            .filter(|kv| kv.create_revision < create_revision)
            .max_by_key(|kv| kv.create_revision)
        else {
            return Ok(());
        };
        let mut watch = store.watch(prefix, revision + 1).await?;
        loop {
            match watch.recv().await {
                Some(Ok(e)) if e.kind == EventKind::Delete && e.kv.key == before.key => break,
                Some(Ok(e)) if e.kind == EventKind::Delete && e.kv.key == key => {
                    return Err(StoreError::LeaseNotFound(lease));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(StoreError::Unavailable("election watch ended".to_owned())),
            }
        }
    }
}

/// The current leader's key and value, if anyone leads.
pub async fn leader(store: &dyn StateStore, election: &str) -> StoreResult<Option<KeyValue>> {
    let (candidates, _) = store.list(&prefix_of(election)).await?;
    Ok(candidates.into_iter().min_by_key(|kv| kv.create_revision))
}

/// Gives up leadership (or a place in line); a no-op if the key is already gone.
pub async fn resign(store: &dyn StateStore, leader: &LeaderKey) -> StoreResult<()> {
    let txn = Txn::new()
        .when([leader.fence()])
        .and_then([TxnOp::delete(&leader.key)]);
    store.txn(txn).await.map(|_| ())
}
