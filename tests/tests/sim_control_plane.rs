//! Actor-level simulation of the control plane: several nodes' supervision trees in
//! one process over one in-memory store, on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::Arc;
use std::time::Duration;

use kat_actors::control_plane::ControlPlaneOptions;
use kat_actors::control_plane::election::{Election, ElectionMsg};
use kat_actors::pki::local::ClusterPki;
use kat_actors::state::keys::CLUSTER_UID as CLUSTER_UID_KEY;
use kat_actors::state::keys::ELECTION_PREFIX;
use kat_actors::store::election::{self, LeaderKey};
use kat_actors::store::{MemoryStore, StateStore, StoreBackend, Txn, TxnOp};
use kat_actors::supervision::SupervisorMsg;
use kat_actors::tree::start_control_plane_node;
use kat_tests::cluster::{cluster_config, election_of, wait_for_leader};
use ractor::ActorRef;
use tokio::time::Instant;

/// Simulated time allowed for an election.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(start_paused = true)]
async fn three_members_elect_one_leader_and_fail_over_when_it_dies() {
    let real_start = std::time::Instant::now();
    let store = Arc::new(MemoryStore::new());
    let shared: Arc<dyn StateStore> = store.clone();
    let nodes = ["n1", "n2", "n3"];
    let mut supervisors: Vec<ActorRef<SupervisorMsg>> = Vec::new();
    let pki = ClusterPki::generate("sim").unwrap();
    for node in nodes {
        let opts = ControlPlaneOptions::new(
            node,
            StoreBackend::Existing(shared.clone()),
            cluster_config("sim", 1),
            pki.clone(),
        );
        supervisors.push(start_control_plane_node(&opts).await.unwrap().0);
    }

    let first = wait_for_leader(&nodes, WAIT).await;
    // Followers see who leads.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for node in nodes {
        assert_eq!(
            election_of(node).await.unwrap().leader.as_deref(),
            Some(first.as_str()),
            "{node}"
        );
    }
    // The leader subtree recorded the cluster once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        shared
            .get(kat_actors::state::keys::CA)
            .await
            .unwrap()
            .is_some(),
        "the cluster CA exists"
    );
    let uid = shared
        .get(CLUSTER_UID_KEY)
        .await
        .unwrap()
        .expect("cluster uid written")
        .value;

    // Remember the leader's election key to test its fence after it is gone.
    let kv = election::leader(shared.as_ref(), ELECTION_PREFIX)
        .await
        .unwrap()
        .unwrap();
    let old = LeaderKey {
        election: ELECTION_PREFIX.into(),
        key: kv.key,
        create_revision: kv.create_revision,
        lease: kv.lease,
    };

    // Crash the leader's node: no post_stop, no resignation; its lease just runs out.
    let index = nodes.iter().position(|n| *n == first).unwrap();
    let crashed_at = Instant::now();
    supervisors[index].kill();
    let rest: Vec<&str> = nodes.iter().copied().filter(|n| *n != first).collect();
    let second = wait_for_leader(&rest, WAIT).await;
    let failover = crashed_at.elapsed();
    assert_ne!(first, second);
    eprintln!("leader {first} crashed; {second} leads after {failover:?} (simulated)");
    assert!(
        failover <= Duration::from_secs(6),
        "failover took {failover:?} of simulated time"
    );

    let stale = Txn::new()
        .when([old.fence()])
        .and_then([TxnOp::put("/kat/fenced", "from the dead leader")]);
    assert!(
        !shared.txn(stale).await.unwrap().succeeded,
        "the old leader's fenced write fails"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        shared.get(CLUSTER_UID_KEY).await.unwrap().unwrap().value,
        uid,
        "the new leader resumes the cluster"
    );

    // A graceful stop resigns at once: the third node leads without waiting for a TTL.
    let index = nodes.iter().position(|n| *n == second).unwrap();
    let stopped_at = Instant::now();
    supervisors[index]
        .stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    let last = nodes
        .iter()
        .copied()
        .find(|n| *n != first && *n != second)
        .unwrap();
    let third = wait_for_leader(&[last], WAIT).await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(2),
        "resignation hands over at once, took {:?}",
        stopped_at.elapsed()
    );
    assert!(!third.is_empty());
    assert!(
        real_start.elapsed() < Duration::from_secs(5),
        "simulated, not real, time: {:?}",
        real_start.elapsed()
    );
    // Leave no tree running.
    let index = nodes.iter().position(|n| *n == last).unwrap();
    supervisors[index]
        .stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
}

/// Collects the LeaderChanged notifications it is sent.
struct Listener;

impl ractor::Actor for Listener {
    type Msg = kat_actors::control_plane::election::LeaderChanged;
    type State = Arc<std::sync::Mutex<Vec<kat_actors::control_plane::election::LeaderChanged>>>;
    type Arguments = Self::State;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        seen: Self::State,
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        Ok(seen)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        seen: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        seen.lock().unwrap().push(msg);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn subscribers_hear_who_leads() {
    use kat_actors::control_plane::election::LeaderChanged;
    let shared: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let mut supervisors = Vec::new();
    let pki = ClusterPki::generate("sim").unwrap();
    for node in ["s1", "s2"] {
        let opts = ControlPlaneOptions::new(
            node,
            StoreBackend::Existing(shared.clone()),
            cluster_config("sim", 1),
            pki.clone(),
        );
        supervisors.push(start_control_plane_node(&opts).await.unwrap().0);
    }
    let leader = wait_for_leader(&["s1", "s2"], WAIT).await;
    let follower = if leader == "s1" { "s2" } else { "s1" };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (listener, _) = ractor::Actor::spawn(None, Listener, seen.clone())
        .await
        .unwrap();
    let election = ActorRef::<ElectionMsg>::from(
        ractor::registry::where_is(Election::name(follower)).unwrap(),
    );
    election
        .send_message(ElectionMsg::Subscribe(listener.get_derived()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        seen.lock().unwrap().last().cloned(),
        Some(LeaderChanged {
            leader: Some(leader.clone()),
            this_node_leads: false
        }),
        "a new subscriber hears the current state at once"
    );
    // The leader resigns: the follower takes over and its subscriber hears it.
    let index = usize::from(leader == "s2");
    supervisors[index]
        .stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    wait_for_leader(&[follower], WAIT).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        seen.lock().unwrap().last().cloned(),
        Some(LeaderChanged {
            leader: Some(follower.to_owned()),
            this_node_leads: true
        })
    );
    // Leave no tree running.
    supervisors[1 - index]
        .stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    listener.stop(None);
}
