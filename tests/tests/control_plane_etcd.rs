//! Three control-plane members on real etcd (three trees in one process, each with its
//! own etcd member on random loopback ports): one leads; killing its node makes another
//! member lead within 10 s, and the old leader's fenced write fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kat_actors::election::{Election, ElectionMsg};
use kat_actors::node::{ControlPlaneOptions, ELECTION_PREFIX, start_control_plane_node};
use kat_actors::store::election::{self, LeaderKey};
use kat_actors::store::etcd_process::EtcdMemberConfig;
use kat_actors::store::{EtcdStore, StateStore, StoreBackend, Txn, TxnOp};
use kat_tests::programs::{find_program, free_port};
use ractor::{ActorRef, call_t};

fn cluster() -> kat_proto::v1alpha1::ClusterConfiguration {
    let yaml = "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {name: three}\nspec: {quorumSize: 3}\n";
    kat_proto::quadlet::parse_cluster_config("three.kat", yaml.as_bytes()).unwrap()
}

async fn leading(node: &str) -> bool {
    let Some(cell) = ractor::registry::where_is(Election::name(node)) else {
        return false;
    };
    call_t!(
        ActorRef::<ElectionMsg>::from(cell),
        ElectionMsg::Snapshot,
        2000
    )
    .is_ok_and(|s| s.leading)
}

async fn wait_for_leader(nodes: &[&str], within: Duration) -> String {
    let started = Instant::now();
    while started.elapsed() < within {
        for node in nodes {
            if leading(node).await {
                return (*node).to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("none of {nodes:?} became leader within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_moves_leadership_and_fences_the_old_leader() {
    let Some(etcd) = find_program("etcd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes = ["m1", "m2", "m3"];
    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let ports: Vec<(u16, u16)> = nodes.iter().map(|_| (free_port(), free_port())).collect();
    let initial_cluster: Vec<String> = nodes
        .iter()
        .zip(&ports)
        .map(|(n, (_, peer))| format!("{n}=http://127.0.0.1:{peer}"))
        .collect();
    let mut supervisors = Vec::new();
    for (node, (client, peer)) in nodes.iter().zip(&ports) {
        let mut member = EtcdMemberConfig::single(
            etcd.clone(),
            node,
            dir.path().join(node),
            addr(*client),
            addr(*peer),
        );
        member.initial_cluster = initial_cluster.join(",");
        member.heartbeat_interval = Duration::from_millis(20);
        member.election_timeout = Duration::from_millis(200);
        member.log_file = Some(dir.path().join(format!("{node}.log")));
        let opts = ControlPlaneOptions::new(node, StoreBackend::Etcd(Box::new(member)), cluster());
        supervisors.push(start_control_plane_node(&opts).await.unwrap().0);
    }

    let first = wait_for_leader(&nodes, Duration::from_secs(30)).await;
    let survivor = nodes.iter().position(|n| *n != first).unwrap();
    let survivor_url = format!("http://127.0.0.1:{}", ports[survivor].0);
    let store = EtcdStore::connect(&[survivor_url], Duration::from_secs(2))
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
    let index = nodes.iter().position(|n| *n == first).unwrap();
    let killed_at = Instant::now();
    supervisors[index].kill();
    let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != first).collect();
    let second = wait_for_leader(&rest, Duration::from_secs(10)).await;
    eprintln!(
        "{first} killed; {second} leads after {:?}",
        killed_at.elapsed()
    );
    assert_ne!(first, second);

    let store: Arc<dyn StateStore> = Arc::new(store);
    let stale = Txn::new()
        .when([old.fence()])
        .and_then([TxnOp::put("/kat/fenced", "stale")]);
    assert!(
        !store.txn(stale).await.unwrap().succeeded,
        "the deposed leader's fenced write fails"
    );
    assert_eq!(store.get("/kat/fenced").await.unwrap(), None);

    for (i, sup) in supervisors.iter().enumerate() {
        if i != index {
            sup.stop_and_wait(None, Some(Duration::from_secs(30)))
                .await
                .unwrap();
        }
    }
}
