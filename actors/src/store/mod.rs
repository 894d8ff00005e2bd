//! Cluster state (SPEC §5): the [`StateStore`] trait with its etcd and in-memory
//! implementations, leader election on top of it, and the etcd member process that
//! control-plane nodes run.

pub mod election;
mod etcd;
pub mod etcd_process;
mod memory;
mod state_store;

pub use etcd::EtcdStore;
pub use memory::MemoryStore;
pub use state_store::{
    CmpOp, Compare, EventKind, KeyValue, Lease, LeaseId, Revision, StateStore, StoreError,
    StoreResult, Txn, TxnOp, TxnOpResult, TxnResult, WatchEvent, WatchReceiver,
};
