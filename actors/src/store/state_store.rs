//! The `StateStore` trait (SPEC §5): the only way KAT code touches cluster state.
//!
//! Two implementations share these semantics and one contract test suite
//! (`tests/tests/store_contract.rs`): [`super::EtcdStore`] for production and
//! [`super::MemoryStore`] for simulation, whose leases expire on tokio's clock.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// The most operations one transaction may hold (etcd is started with this as its
/// `--max-txn-ops`); writers split bigger changes into transactions of this size.
pub const MAX_TXN_OPS: usize = 4096;

/// A store revision: increases by one with every write transaction.
pub type Revision = i64;

/// A lease id; keys attached to a lease are deleted when it expires or is revoked.
pub type LeaseId = i64;

/// A key with its value and bookkeeping, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key: the compare-and-swap token.
    pub mod_revision: Revision,
    /// Number of writes since the key was created.
    pub version: i64,
    /// Lease the key is attached to; 0 for none.
    pub lease: LeaseId,
}

/// Comparison operator of a transaction guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One guard of a transaction. Revisions and versions of an absent key are 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    ModRevision(String, CmpOp, Revision),
    CreateRevision(String, CmpOp, Revision),
    Version(String, CmpOp, i64),
    Value(String, CmpOp, Vec<u8>),
}

impl Compare {
    /// The key must not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::CreateRevision(key.into(), CmpOp::Equal, 0)
    }

    /// The key must still be at this mod revision (compare-and-swap).
    pub fn unchanged(key: impl Into<String>, mod_revision: Revision) -> Self {
        Compare::ModRevision(key.into(), CmpOp::Equal, mod_revision)
    }

    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision(k, ..)
            | Compare::CreateRevision(k, ..)
            | Compare::Version(k, ..)
            | Compare::Value(k, ..) => k,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    List {
        prefix: String,
    },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// A put whose key goes when `lease` ends (or a plain put without one).
    pub fn put_leased(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: Option<LeaseId>,
    ) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }

    pub fn get(key: impl Into<String>) -> Self {
        TxnOp::Get { key: key.into() }
    }
}

/// A transaction: if every compare holds, `then` runs, else `otherwise`; atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub then: Vec<TxnOp>,
    pub otherwise: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.then.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.otherwise.extend(ops);
        self
    }
}

/// The result of one transaction operation, in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResult {
    Put,
    /// Number of keys deleted.
    Delete(i64),
    /// Keys read by `Get` (zero or one) or `List`.
    Get(Vec<KeyValue>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held (and `then` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    pub results: Vec<TxnOpResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For deletes `kv.value` is empty and `kv.mod_revision`
/// is the revision of the deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// The receiving end of a watch; dropping it cancels the watch.
pub type WatchReceiver = mpsc::Receiver<Result<WatchEvent, StoreError>>;

/// The sending end, held by the store.
pub type WatchSender = mpsc::Sender<Result<WatchEvent, StoreError>>;

/// How many events a watch holds for a consumer that does not read: one that falls
/// this far behind gets an error (resync: list again and watch from there) and the
/// watch ends, rather than the store buffering every change for it.
pub const WATCH_BUFFER: usize = 4096;

/// A watch's channel, [`WATCH_BUFFER`] deep.
pub fn watch_channel() -> (WatchSender, WatchReceiver) {
    mpsc::channel(WATCH_BUFFER)
}

/// Hands `item` to a watch's consumer. `false` when the watch is over: the consumer
/// went, or it fell [`WATCH_BUFFER`] events behind and was told so with the last free
/// place.
pub fn deliver(tx: &WatchSender, item: Result<WatchEvent, StoreError>) -> bool {
    if tx.is_closed() {
        return false;
    }
    if tx.capacity() <= 1 {
        let _ = tx.try_send(Err(StoreError::Unavailable(format!(
            "the watch fell {WATCH_BUFFER} events behind; resync"
        ))));
        return false;
    }
    tx.try_send(item).is_ok()
}

/// Ends a watch with `error` (where there is room to say it).
pub fn end_watch(tx: &WatchSender, error: StoreError) {
    let _ = tx.try_send(Err(error));
}

/// A member of the store's cluster (etcd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreMember {
    pub id: u64,
    /// Empty until the member has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

/// How full one store member's database is (etcd: its backend file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpace {
    pub name: String,
    /// The file's size, bytes.
    pub db_size: i64,
    /// What of it holds data; the rest is free pages a defragmentation gives back.
    pub in_use: i64,
}

/// The store's room: each member's database and whether it is out of space.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreSpace {
    /// The store's revision when asked.
    pub revision: Revision,
    pub members: Vec<MemberSpace>,
    /// A member raised NOSPACE: the store takes reads, deletes and compaction only.
    pub out_of_space: bool,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("revision {requested} was compacted; the oldest available is {oldest}")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("state store error: {0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Cluster state: keys, transactions, watches and leases (SPEC §5). Implementations
/// are cheap to share behind an `Arc`.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>>;

    /// Every key under `prefix`, in key order, with the revision the read saw (watch
    /// from `revision + 1` to miss nothing).
    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)>;

    /// Writes a key; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>)
    -> StoreResult<Revision>;

    /// Deletes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> StoreResult<bool>;

    async fn txn(&self, txn: Txn) -> StoreResult<TxnResult>;

    /// Changes under `prefix` from `from_revision` on (0: from now). Resumable: a
    /// consumer that saw revision R watches again from R + 1.
    async fn watch(&self, prefix: &str, from_revision: Revision) -> StoreResult<WatchReceiver>;

    async fn grant_lease(&self, ttl: Duration) -> StoreResult<Lease>;

    /// Refreshes a lease; returns its TTL. `LeaseNotFound` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<Duration>;

    /// Revokes a lease, deleting its keys. Revoking an unknown lease is `LeaseNotFound`.
    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()>;

    /// Whether the store member named `member` (on etcd: that node's etcd member)
    /// answers right now. `None` where the store has no members (in-memory) or no
    /// member of that name.
    async fn member_reachable(&self, member: &str) -> StoreResult<Option<bool>> {
        let _ = member;
        Ok(None)
    }

    /// The store's members (empty where the store has none).
    async fn members(&self) -> StoreResult<Vec<StoreMember>> {
        Ok(Vec::new())
    }

    /// Adds a non-voting member (an etcd learner) at `peer_url`; returns every member.
    async fn add_learner(&self, peer_url: &str) -> StoreResult<Vec<StoreMember>> {
        let _ = peer_url;
        Err(StoreError::Invalid(
            "this store has no members to add to".to_owned(),
        ))
    }

    /// Removes a member (a learner whose join failed).
    async fn remove_member(&self, id: u64) -> StoreResult<()> {
        let _ = id;
        Err(StoreError::Invalid("this store has no members".to_owned()))
    }

    /// Makes a learner a voting member; fails while it has not caught up.
    async fn promote(&self, id: u64) -> StoreResult<()> {
        let _ = id;
        Err(StoreError::Invalid("this store has no members".to_owned()))
    }

    /// How full the store is; `None` where it has no database file (in-memory).
    async fn space(&self) -> StoreResult<Option<StoreSpace>> {
        Ok(None)
    }

    /// Forgets the history of every key before `revision` (watches from earlier
    /// revisions then get `Compacted`). Compacting at or below an earlier compaction
    /// is a no-op.
    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        let _ = revision;
        Ok(())
    }

    /// Gives a member's free pages back to the file system (etcd: defragment; the
    /// member answers nothing meanwhile, so one member at a time).
    async fn defragment(&self, member: &str) -> StoreResult<()> {
        let _ = member;
        Ok(())
    }

    /// Clears a NOSPACE alarm, so the store takes writes again (once there is room).
    async fn disarm_out_of_space(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Whether [`StateStore::snapshot`] works here.
    fn can_snapshot(&self) -> bool {
        false
    }

    /// Writes a snapshot of the whole store to `to` (an etcd snapshot file, which
    /// `etcdutl snapshot restore` reads); returns the revision it was taken at.
    async fn snapshot(&self, to: &std::path::Path) -> StoreResult<Revision> {
        let _ = to;
        Err(StoreError::Invalid(
            "this store cannot make snapshots (only etcd can)".to_owned(),
        ))
    }
}
