//! Three control-plane members on real etcd (three trees in one process, each with its
//! own etcd member on random loopback ports): one leads; killing its node makes another
//! member lead (the time is printed; SPEC's 10 s is the target, the test allows a
//! loaded machine 30 s), and the old leader's fenced write fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::{Duration, Instant};

use kat_actors::state::keys::ELECTION_PREFIX;
use kat_actors::store::election::{self, LeaderKey};
use kat_actors::store::{EtcdStore, StateStore, Txn, TxnOp};
use kat_tests::cluster::{EtcdTrio, wait_for_leader};
use kat_tests::programs::find_program;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_moves_leadership_and_fences_the_old_leader() {
    let Some(etcd) = find_program("etcd") else {
        return;
    };
    let trio = EtcdTrio::start(&etcd, "m", Duration::from_secs(5), true).await;
    let first = wait_for_leader(&trio.node_names(), Duration::from_secs(30)).await;
    let survivor = (0..3).find(|i| trio.nodes[*i] != first).unwrap();
    let store = EtcdStore::connect(&[trio.client_url(survivor)], Duration::from_secs(2))
        .await
        .unwrap();
    let kv = election::leader(&store, ELECTION_PREFIX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.value, first.as_bytes());
    let old = LeaderKey {
        election: ELECTION_PREFIX.into(),
        key: kv.key,
        create_revision: kv.create_revision,
        lease: kv.lease,
    };

    // Kill the leader's whole tree: its etcd member dies with it (kill_on_drop), its
    // lease is not revoked and must run out.
    let killed_at = Instant::now();
    trio.supervisors[trio.index_of(&first)].kill();
    let rest: Vec<&str> = trio
        .node_names()
        .into_iter()
        .filter(|n| *n != first)
        .collect();
    let second = wait_for_leader(&rest, Duration::from_secs(30)).await;
    eprintln!(
        "{first} killed; {second} leads after {:?}",
        killed_at.elapsed()
    );
    assert_ne!(first, second);

    let stale = Txn::new()
        .when([old.fence()])
        .and_then([TxnOp::put("/kat/fenced", "stale")]);
    assert!(
        !store.txn(stale).await.unwrap().succeeded,
        "the deposed leader's fenced write fails"
    );
    assert_eq!(store.get("/kat/fenced").await.unwrap(), None);
    trio.stop().await;
}
