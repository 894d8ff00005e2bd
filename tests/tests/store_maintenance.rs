//! The leader's store maintenance (issue 15) on a real etcd: history older than the
//! retention is compacted, a member with much free space is defragmented, and a store
//! that ran out of space (NOSPACE, a small `--quota-backend-bytes`) is compacted,
//! defragmented and disarmed, after which it takes writes again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kat_actors::leader::maintenance::Maintainer;
use kat_actors::state::keys::EVENTS_PREFIX;
use kat_actors::state::{Leadership, StoreHealth};
use kat_actors::store::{StateStore, StoreError, election};
use kat_proto::v1alpha1::Event;
use kat_tests::programs::EtcdGuard;
use prost::Message;

async fn leadership(store: Arc<dyn StateStore>) -> Leadership {
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let key = election::campaign(store.as_ref(), "/kat/election", b"cp1".to_vec(), lease.id)
        .await
        .unwrap();
    Leadership::new("cp1", key, store)
}

async fn etcd(quota: Option<u64>) -> Option<(EtcdGuard, Arc<dyn StateStore>)> {
    let Some(guard) = EtcdGuard::start_with(|c| {
        if let Some(q) = quota {
            c.quota_bytes = q;
        }
    })
    .await
    else {
        eprintln!("skipped: etcd is not installed");
        return None;
    };
    let store: Arc<dyn StateStore> = Arc::new(guard.store.clone());
    Some((guard, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_older_than_the_retention_is_compacted_and_newer_history_kept() {
    let Some((_etcd, store)) = etcd(None).await else {
        return;
    };
    let leader = leadership(store.clone()).await;
    let mut keeper = Maintainer::new(Duration::from_millis(300), StoreHealth::default());
    for i in 0..10 {
        store.put("/kat/test/k", vec![i], None).await.unwrap();
    }
    let first = keeper.round(&leader, SystemTime::now()).await.unwrap();
    assert_eq!(first.compacted, None, "nothing is old enough yet");
    let (_, seen) = store.list("/kat/test/").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..10 {
        store.put("/kat/test/k", vec![i], None).await.unwrap();
    }
    let second = keeper.round(&leader, SystemTime::now()).await.unwrap();
    let at = second
        .compacted
        .expect("compacted at the revision seen 300 ms ago");
    assert!(
        at >= seen - 1 && at <= seen + 1,
        "compacted at {at}, seen {seen}"
    );
    // etcd says so when the watch starts, or as its first message.
    let compacted = match store.watch("/kat/test/", 2).await {
        Err(e) => e,
        Ok(mut events) => match events.recv().await {
            Some(Err(e)) => e,
            other => panic!("history before the compaction is still there: {other:?}"),
        },
    };
    match compacted {
        StoreError::Compacted { oldest, .. } => assert!(oldest >= at, "{oldest}"),
        other => panic!("{other:?}"),
    }
    let mut newer = store.watch("/kat/test/", at + 1).await.unwrap();
    let event = newer.recv().await.unwrap().expect("newer history kept");
    assert_eq!(event.kv.mod_revision, at + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_much_free_space_is_defragmented() {
    let Some((_etcd, store)) = etcd(None).await else {
        return;
    };
    let leader = leadership(store.clone()).await;
    // 8 MiB written and overwritten, then compacted: free pages in the file.
    for i in 0..16u8 {
        store
            .put("/kat/test/big", vec![i; 512 << 10], None)
            .await
            .unwrap();
    }
    store.delete("/kat/test/big").await.unwrap();
    let (_, now) = store.list("/kat/test/").await.unwrap();
    store.compact(now).await.unwrap();
    // etcd counts freed pages once its backend commits (every 100 ms).
    // bbolt counts the pages a transaction freed once a later one commits.
    let mut before = store.space().await.unwrap().unwrap();
    for i in 0..50u8 {
        let m = &before.members[0];
        if m.db_size > 2 * m.in_use {
            break;
        }
        store.put("/kat/test/small", vec![i], None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = store.space().await.unwrap().unwrap();
    }
    let member = &before.members[0];
    assert!(
        member.db_size > 2 * member.in_use,
        "expected free pages: {before:?}"
    );
    let mut keeper =
        Maintainer::new(Duration::from_secs(3600), StoreHealth::default()).defragment_from(1 << 20);
    let round = keeper.round(&leader, SystemTime::now()).await.unwrap();
    assert_eq!(round.defragmented, std::slice::from_ref(&member.name));
    let after = store.space().await.unwrap().unwrap();
    assert!(
        after.members[0].db_size < member.db_size / 2,
        "{before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_out_of_space_is_recovered_and_takes_writes_again() {
    let Some((_etcd, store)) = etcd(Some(8 << 20)).await else {
        return;
    };
    let leader = leadership(store.clone()).await;
    // Overwrite one key until etcd refuses: its history fills the quota.
    let mut refused = None;
    for i in 0..200u8 {
        if let Err(e) = store.put("/kat/test/big", vec![i; 256 << 10], None).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("etcd ran out of space within 50 MiB of writes");
    assert!(refused.to_string().contains("space exceeded"), "{refused}");
    assert!(store.space().await.unwrap().unwrap().out_of_space);
    let health = StoreHealth::default();
    let mut keeper = Maintainer::new(Duration::from_secs(3600), health.clone());
    let round = keeper.round(&leader, SystemTime::now()).await.unwrap();
    assert!(round.recovered, "{round:?}");
    assert_eq!(health.trouble(), None);
    let space = store.space().await.unwrap().unwrap();
    assert!(!space.out_of_space, "{space:?}");
    store
        .put("/kat/test/after", b"writes again".to_vec(), None)
        .await
        .unwrap();
    let (events, _) = store.list(EVENTS_PREFIX).await.unwrap();
    let reasons: Vec<String> = events
        .iter()
        .map(|kv| Event::decode(kv.value.as_slice()).unwrap().reason)
        .collect();
    assert_eq!(reasons, ["StoreSpaceRecovered"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_backups_are_whole_distinct_and_checked() {
    use kat_actors::leader::backups;
    let Some((_etcd, store)) = etcd(None).await else {
        return;
    };
    let leader = leadership(store.clone()).await;
    for i in 0..50u8 {
        store
            .put(&format!("/kat/test/{i}"), vec![i; 1024], None)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = kat_proto::quadlet::parse_cluster_config(
        "c.kat",
        format!(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: b}}\n\
             spec: {{backupPath: {}}}\n",
            dir.path().join("backups").display()
        )
        .as_bytes(),
    )
    .unwrap();
    let settings = kat_proto::quadlet::ClusterSettings::from(&cluster);
    let pki = kat_actors::pki::local::ClusterPki::generate("b").unwrap();
    // Six at once, as six `katcall backup` calls (each its own time, as each call's).
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6u64 {
        let (leader, settings, pki) = (leader.clone(), settings.clone(), pki.clone());
        tasks.spawn(async move {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + i);
            backups::make(&leader, &settings, &pki, at).await
        });
    }
    let mut names = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let made = done.unwrap().expect("every backup is made");
        backups::verify_snapshot(std::path::Path::new(&made.path)).unwrap();
        names.push(made.name);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 6, "distinct files: {names:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    // The CAs are kept beside the snapshots, for a restore, readable by no one else.
    let kept =
        kat_actors::pki::local::PkiDir(dir.path().join("backups").join(backups::CA_COPY_DIR));
    assert_eq!(kept.read_cluster_pki().unwrap(), pki);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&kept.0), 0o700);
        assert_eq!(mode(&kept.ca_key()), 0o600);
        assert_eq!(mode(&kept.etcd_ca_key()), 0o600);
    }
    assert_eq!(
        backups::list(&dir.path().join("backups")).unwrap().len(),
        6,
        "the pki directory is no backup"
    );
    // A damaged snapshot is found.
    let one = dir.path().join("backups").join(&names[0]);
    let mut bytes = std::fs::read(&one).unwrap();
    bytes[5000] ^= 0xff;
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &bytes).unwrap();
    let err = backups::verify_snapshot(&damaged).unwrap_err();
    assert!(err.contains("checksum does not match"), "{err}");
}
