//! The `StateStore` contract suite against both implementations: the in-memory store
//! and a real etcd started from the installed binary on random loopback ports.

use std::sync::Arc;

use kat_actors::store::{MemoryStore, StateStore};
use kat_tests::programs::EtcdGuard;
use kat_tests::store_contract as contract;

macro_rules! contract_tests {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
                    contract::$case(store.as_ref()).await;
                }
            )*
        }

        mod etcd {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(etcd) = EtcdGuard::start().await else { return };
                    let store: Arc<dyn StateStore> = Arc::new(etcd.store.clone());
                    contract::$case(store.as_ref()).await;
                }
            )*
        }
    };
}

macro_rules! contract_tests_shared {
    ($($case:ident),* $(,)?) => {
        mod memory_shared {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    contract::$case(Arc::new(MemoryStore::new())).await;
                }
            )*
        }

        mod etcd_shared {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(etcd) = EtcdGuard::start().await else { return };
                    contract::$case(Arc::new(etcd.store.clone())).await;
                }
            )*
        }
    };
}

contract_tests!(
    put_get_delete,
    list_by_prefix,
    transactions_compare_and_swap,
    transactions_are_atomic_multi_key_writes,
    transactions_refuse_a_key_written_twice,
    watch_sees_changes_in_order,
    watch_resumes_from_a_revision,
    leases_attach_and_revoke,
    leases_expire_without_keep_alive,
    a_watch_that_falls_behind_is_told_to_resync,
);

contract_tests_shared!(
    election_elects_one_and_fences_the_deposed,
    election_moves_when_the_leaders_lease_expires,
);
