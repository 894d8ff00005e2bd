//! The `StateStore` contract: one suite of behaviours every implementation must show,
//! run against the in-memory store and a real etcd (`tests/tests/store_contract.rs`).
//! Each case takes a fresh, empty store.

use std::time::Duration;

use kat_actors::store::election::{self, LeaderKey};
use kat_actors::store::{
    CmpOp, Compare, EventKind, StateStore, StoreError, Txn, TxnOp, TxnOpResult, WatchEvent,
    WatchReceiver,
};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(10);

async fn next_event(watch: &mut WatchReceiver) -> WatchEvent {
    match timeout(WAIT, watch.recv()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

fn summary(e: &WatchEvent) -> (EventKind, String, Vec<u8>) {
    (e.kind, e.kv.key.clone(), e.kv.value.clone())
}

pub async fn put_get_delete(store: &dyn StateStore) {
    assert_eq!(store.get("/t/a").await.unwrap(), None);
    let r1 = store.put("/t/a", b"one".to_vec(), None).await.unwrap();
    let kv = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"one"[..], r1, r1, 1)
    );
    let r2 = store.put("/t/a", b"two".to_vec(), None).await.unwrap();
    assert!(r2 > r1, "every write moves the revision: {r1} then {r2}");
    let kv = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"two"[..], r1, r2, 2)
    );
    assert!(store.delete("/t/a").await.unwrap());
    assert!(
        !store.delete("/t/a").await.unwrap(),
        "deleting a missing key reports false"
    );
    assert_eq!(store.get("/t/a").await.unwrap(), None);
    let r3 = store.put("/t/a", b"again".to_vec(), None).await.unwrap();
    let kv = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.version),
        (r3, 1),
        "a re-created key starts over"
    );
}

pub async fn list_by_prefix(store: &dyn StateStore) {
    for key in ["/t/b/2", "/t/b/1", "/t/bb", "/t/c", "/t/b/3/x"] {
        store.put(key, key.as_bytes().to_vec(), None).await.unwrap();
    }
    let last = store.put("/t/z", vec![], None).await.unwrap();
    let (kvs, revision) = store.list("/t/b/").await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/t/b/1", "/t/b/2", "/t/b/3/x"],
        "only the prefix, in key order"
    );
    assert!(revision >= last, "list reports the revision it read at");
    assert!(store.list("/nothing/").await.unwrap().0.is_empty());
}

pub async fn transactions_compare_and_swap(store: &dyn StateStore) {
    let rev = store.put("/t/cas", b"v1".to_vec(), None).await.unwrap();
    let ok = store
        .txn(
            Txn::new()
                .when([Compare::unchanged("/t/cas", rev)])
                .and_then([TxnOp::put("/t/cas", "v2")]),
        )
        .await
        .unwrap();
    assert!(ok.succeeded);
    let stale = store
        .txn(
            Txn::new()
                .when([Compare::unchanged("/t/cas", rev)])
                .and_then([TxnOp::put("/t/cas", "lost update")])
                .or_else([TxnOp::get("/t/cas")]),
        )
        .await
        .unwrap();
    assert!(!stale.succeeded, "a stale mod revision must fail");
    match &stale.results[..] {
        [TxnOpResult::Get(kvs)] => assert_eq!(kvs[0].value, b"v2"),
        other => panic!("else branch results: {other:?}"),
    }
    assert_eq!(store.get("/t/cas").await.unwrap().unwrap().value, b"v2");
}

pub async fn transactions_are_atomic_multi_key_writes(store: &dyn StateStore) {
    let result = store
        .txn(Txn::new().when([Compare::absent("/t/x")]).and_then([
            TxnOp::put("/t/x", "1"),
            TxnOp::put("/t/y", "2"),
            TxnOp::Delete {
                key: "/t/none".into(),
            },
        ]))
        .await
        .unwrap();
    assert!(result.succeeded);
    let x = store.get("/t/x").await.unwrap().unwrap();
    let y = store.get("/t/y").await.unwrap().unwrap();
    assert_eq!(
        x.mod_revision, y.mod_revision,
        "one transaction, one revision"
    );
    assert_eq!(x.mod_revision, result.revision);
    assert_eq!(result.results[2], TxnOpResult::Delete(0));
    // Compare::absent now fails, and nothing of the then-branch is applied.
    let again = store
        .txn(
            Txn::new()
                .when([Compare::absent("/t/x")])
                .and_then([TxnOp::put("/t/z", "never")]),
        )
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert_eq!(store.get("/t/z").await.unwrap(), None);
    // Value and version compares; a value compare on a missing key is false.
    let checks = [
        (
            Compare::Value("/t/x".into(), CmpOp::Equal, b"1".to_vec()),
            true,
        ),
        (
            Compare::Value("/t/x".into(), CmpOp::NotEqual, b"1".to_vec()),
            false,
        ),
        (Compare::Version("/t/x".into(), CmpOp::Equal, 1), true),
        (Compare::Version("/t/x".into(), CmpOp::Greater, 1), false),
        (
            Compare::ModRevision("/t/x".into(), CmpOp::Less, x.mod_revision + 1),
            true,
        ),
        (
            Compare::Value("/t/missing".into(), CmpOp::Equal, vec![]),
            false,
        ),
    ];
    for (compare, expected) in checks {
        let r = store.txn(Txn::new().when([compare.clone()])).await.unwrap();
        assert_eq!(r.succeeded, expected, "{compare:?}");
    }
    // Prefix delete in a transaction.
    let r = store
        .txn(Txn::new().and_then([TxnOp::DeletePrefix {
            prefix: "/t/".into(),
        }]))
        .await
        .unwrap();
    assert_eq!(r.results, [TxnOpResult::Delete(2)]);
}

pub async fn watch_sees_changes_in_order(store: &dyn StateStore) {
    let mut watch = store.watch("/t/w/", 0).await.unwrap();
    let r1 = store.put("/t/w/a", b"1".to_vec(), None).await.unwrap();
    store.put("/t/other", b"x".to_vec(), None).await.unwrap();
    let r2 = store.put("/t/w/a", b"2".to_vec(), None).await.unwrap();
    store.delete("/t/w/a").await.unwrap();
    let e1 = next_event(&mut watch).await;
    assert_eq!(
        summary(&e1),
        (EventKind::Put, "/t/w/a".into(), b"1".to_vec())
    );
    assert_eq!(e1.kv.mod_revision, r1);
    let e2 = next_event(&mut watch).await;
    assert_eq!(
        (summary(&e2), e2.kv.mod_revision),
        ((EventKind::Put, "/t/w/a".into(), b"2".to_vec()), r2)
    );
    let e3 = next_event(&mut watch).await;
    assert_eq!(summary(&e3), (EventKind::Delete, "/t/w/a".into(), vec![]));
    assert!(e3.kv.mod_revision > r2, "a delete carries its own revision");
}

pub async fn watch_resumes_from_a_revision(store: &dyn StateStore) {
    let r1 = store.put("/t/r/1", b"a".to_vec(), None).await.unwrap();
    store.put("/t/r/2", b"b".to_vec(), None).await.unwrap();
    store.delete("/t/r/1").await.unwrap();
    // Resuming after r1 replays what came later, then goes on live.
    let mut watch = store.watch("/t/r/", r1 + 1).await.unwrap();
    assert_eq!(
        summary(&next_event(&mut watch).await),
        (EventKind::Put, "/t/r/2".into(), b"b".to_vec())
    );
    assert_eq!(
        summary(&next_event(&mut watch).await),
        (EventKind::Delete, "/t/r/1".into(), vec![])
    );
    store.put("/t/r/3", b"c".to_vec(), None).await.unwrap();
    assert_eq!(
        summary(&next_event(&mut watch).await),
        (EventKind::Put, "/t/r/3".into(), b"c".to_vec())
    );
    // From the very first write: everything.
    let mut all = store.watch("/t/r/", r1).await.unwrap();
    assert_eq!(next_event(&mut all).await.kv.mod_revision, r1);
}

pub async fn leases_attach_and_revoke(store: &dyn StateStore) {
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    assert!(lease.ttl >= Duration::from_secs(30));
    store
        .put("/t/l/a", b"1".to_vec(), Some(lease.id))
        .await
        .unwrap();
    store
        .put("/t/l/b", b"2".to_vec(), Some(lease.id))
        .await
        .unwrap();
    assert_eq!(store.get("/t/l/a").await.unwrap().unwrap().lease, lease.id);
    let mut watch = store.watch("/t/l/", 0).await.unwrap();
    assert!(store.keep_alive(lease.id).await.unwrap() >= Duration::from_secs(29));
    store.revoke_lease(lease.id).await.unwrap();
    let mut deleted = [next_event(&mut watch).await, next_event(&mut watch).await];
    deleted.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
    assert_eq!(
        deleted.iter().map(summary).collect::<Vec<_>>(),
        [
            (EventKind::Delete, "/t/l/a".to_owned(), vec![]),
            (EventKind::Delete, "/t/l/b".to_owned(), vec![]),
        ]
    );
    assert!(store.list("/t/l/").await.unwrap().0.is_empty());
    assert_eq!(
        store.revoke_lease(lease.id).await,
        Err(StoreError::LeaseNotFound(lease.id))
    );
    assert_eq!(
        store.keep_alive(lease.id).await,
        Err(StoreError::LeaseNotFound(lease.id))
    );
    let unknown = store.put("/t/l/c", vec![], Some(lease.id)).await;
    assert_eq!(
        unknown,
        Err(StoreError::LeaseNotFound(lease.id)),
        "writing under a dead lease fails"
    );
}

/// Polls until `key` is gone; returns how long it took.
async fn wait_gone(store: &dyn StateStore, key: &str) -> Duration {
    let started = Instant::now();
    while store.get(key).await.unwrap().is_some() {
        assert!(
            started.elapsed() < WAIT,
            "{key} still present after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

pub async fn leases_expire_without_keep_alive(store: &dyn StateStore) {
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store.put("/t/e", vec![], Some(lease.id)).await.unwrap();
    // Long enough that a stall of a loaded machine between keep-alives cannot end it.
    let kept = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    store.put("/t/kept", vec![], Some(kept.id)).await.unwrap();
    let mut watch = store.watch("/t/e", 0).await.unwrap();
    // Keep one lease alive while the other runs out.
    let started = Instant::now();
    while store.get("/t/e").await.unwrap().is_some() {
        assert!(started.elapsed() < WAIT, "lease did not expire");
        store.keep_alive(kept.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "expired too early: {:?}",
        started.elapsed()
    );
    assert_eq!(next_event(&mut watch).await.kind, EventKind::Delete);
    assert!(
        store.get("/t/kept").await.unwrap().is_some(),
        "a kept-alive lease lives on"
    );
    assert_eq!(
        store.keep_alive(lease.id).await,
        Err(StoreError::LeaseNotFound(lease.id))
    );
    store.revoke_lease(kept.id).await.unwrap();
    wait_gone(store, "/t/kept").await;
}

async fn campaign_in_background(
    store: std::sync::Arc<dyn StateStore>,
    value: &'static str,
    lease: i64,
) -> tokio::task::JoinHandle<Result<LeaderKey, StoreError>> {
    tokio::spawn(async move {
        election::campaign(store.as_ref(), "/t/election", value.into(), lease).await
    })
}

pub async fn election_elects_one_and_fences_the_deposed(store: std::sync::Arc<dyn StateStore>) {
    let lease_a = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let lease_b = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let a = election::campaign(
        store.as_ref(),
        "/t/election",
        b"node-a".to_vec(),
        lease_a.id,
    )
    .await
    .unwrap();
    let leader = election::leader(store.as_ref(), "/t/election")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leader.value, b"node-a");

    let b = campaign_in_background(store.clone(), "node-b", lease_b.id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !b.is_finished(),
        "a second candidate waits while the first leads"
    );

    let fenced = |who: &LeaderKey, value: &str| {
        Txn::new()
            .when([who.fence()])
            .and_then([TxnOp::put("/t/leader-data", value.to_owned())])
    };
    assert!(
        store.txn(fenced(&a, "from a")).await.unwrap().succeeded,
        "the leader can write"
    );

    election::resign(store.as_ref(), &a).await.unwrap();
    let b = timeout(WAIT, b)
        .await
        .expect("b elected after a resigned")
        .unwrap()
        .unwrap();
    assert_eq!(
        election::leader(store.as_ref(), "/t/election")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"node-b"
    );
    assert!(
        !store.txn(fenced(&a, "stale")).await.unwrap().succeeded,
        "the deposed leader's write is refused"
    );
    assert!(store.txn(fenced(&b, "from b")).await.unwrap().succeeded);
    assert_eq!(
        store.get("/t/leader-data").await.unwrap().unwrap().value,
        b"from b"
    );
}

pub async fn election_moves_when_the_leaders_lease_expires(store: std::sync::Arc<dyn StateStore>) {
    let lease_a = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    let lease_b = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let a = election::campaign(
        store.as_ref(),
        "/t/election",
        b"node-a".to_vec(),
        lease_a.id,
    )
    .await
    .unwrap();
    let b = campaign_in_background(store.clone(), "node-b", lease_b.id).await;
    // Node a "dies": nobody keeps its lease alive.
    let b = timeout(WAIT, b)
        .await
        .expect("b elected after a's lease expired")
        .unwrap()
        .unwrap();
    assert_eq!(b.lease, lease_b.id);
    let stale = Txn::new()
        .when([a.fence()])
        .and_then([TxnOp::put("/t/leader-data", "stale")]);
    assert!(
        !store.txn(stale).await.unwrap().succeeded,
        "the expired leader is fenced"
    );
    assert_eq!(store.get("/t/leader-data").await.unwrap(), None);
}

pub async fn transactions_refuse_a_key_written_twice(store: &dyn StateStore) {
    let txn = Txn::new().and_then([TxnOp::put("/t/dup", "1"), TxnOp::put("/t/dup", "2")]);
    assert!(
        matches!(store.txn(txn).await, Err(StoreError::Invalid(_))),
        "duplicate keys in one branch"
    );
    assert_eq!(store.get("/t/dup").await.unwrap(), None, "nothing applied");
}

/// A watch whose consumer does not read is told to resync once it is
/// `WATCH_BUFFER` events behind, and ends: the store does not buffer every change
/// for it.
pub async fn a_watch_that_falls_behind_is_told_to_resync(store: &dyn StateStore) {
    use kat_actors::store::WATCH_BUFFER;
    let mut watch = store.watch("/t/", 0).await.unwrap();
    // Twice the buffer, in transactions of 1,000 puts.
    let mut written = 0;
    while written < 2 * WATCH_BUFFER {
        let ops: Vec<TxnOp> = (written..written + 1000)
            .map(|i| TxnOp::put(format!("/t/{i:06}"), vec![1]))
            .collect();
        assert!(store.txn(Txn::new().and_then(ops)).await.unwrap().succeeded);
        written += 1000;
    }
    let mut events = 0;
    let ended = loop {
        match timeout(WAIT, watch.recv()).await {
            Ok(Some(Ok(_))) => events += 1,
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!("the watch ended without saying why after {events} events"),
            Err(_) => panic!("no error within {WAIT:?} after {events} events"),
        }
    };
    assert!(events < WATCH_BUFFER, "{events} events held");
    assert!(ended.to_string().contains("resync"), "{ended}");
    assert!(
        timeout(WAIT, watch.recv()).await.unwrap().is_none(),
        "the watch is over"
    );
}
