//! The store under cluster state (SPEC §5): the [`StateStore`] trait with its etcd and in-memory
//! implementations, leader election on top of it, the etcd member process that
//! control-plane nodes run, and the [`Store`] actor that owns both. What KAT keeps in
//! it, and under which keys, is `crate::state`'s business.

mod actor;
pub mod election;
mod etcd;
pub mod etcd_process;
mod etcd_tls;
mod memory;
mod state_store;

pub use actor::{Store, StoreArgs, StoreBackend, StoreMsg, StoreSnapshot};
pub use etcd::EtcdStore;
pub use etcd_tls::EtcdTls;
pub use memory::MemoryStore;
pub use state_store::{
    CmpOp, Compare, EventKind, KeyValue, Lease, LeaseId, MAX_TXN_OPS, MemberSpace, Revision,
    StateStore, StoreError, StoreMember, StoreResult, StoreSpace, Txn, TxnOp, TxnOpResult,
    TxnResult, WATCH_BUFFER, WatchEvent, WatchReceiver, WatchSender, deliver, end_watch,
    watch_channel,
};
