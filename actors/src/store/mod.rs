//! Cluster state (SPEC §5): the [`StateStore`] trait with its etcd and in-memory
//! implementations, leader election on top of it, the etcd member process that
//! control-plane nodes run, and the [`Store`] actor that owns both.

mod actor;
pub mod election;
mod etcd;
pub mod etcd_process;
mod memory;
mod state_store;

pub use actor::{Store, StoreArgs, StoreBackend, StoreMsg, StoreSnapshot};
pub use etcd::EtcdStore;
pub use memory::MemoryStore;
pub use state_store::{
    CmpOp, Compare, EventKind, KeyValue, Lease, LeaseId, Revision, StateStore, StoreError,
    StoreMember, StoreResult, Txn, TxnOp, TxnOpResult, TxnResult, WatchEvent, WatchReceiver,
};

/// The most operations one transaction may hold (etcd is started with this as its
/// `--max-txn-ops`); writers split bigger changes into transactions of this size.
pub const MAX_TXN_OPS: usize = 4096;
