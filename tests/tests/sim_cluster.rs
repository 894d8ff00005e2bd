//! Simulated clusters (issue 4): several nodes' whole trees — control plane and agent
//! subtrees — in one process over one in-memory store, on tokio's paused clock, with
//! faults injected through `kat_tests::sim`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use kat_actors::agent::view::AgentMode;
use kat_actors::state::keys;
use kat_proto::v1alpha1::{ClusterConfiguration, Node, NodeState};
use kat_tests::cluster::wait_for_leader;
use kat_tests::sim::SimCluster;
use prost::Message;

const TICK: u64 = 5;
const LOSS: u64 = 20;

fn cluster() -> ClusterConfiguration {
    let yaml = format!(
        "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: sim}}\n\
         spec: {{agentTickSeconds: {TICK}, nodeLossTimeoutSeconds: {LOSS}}}\n"
    );
    kat_proto::quadlet::parse_cluster_config("sim.kat", yaml.as_bytes()).unwrap()
}

fn all(state: NodeState) -> impl Fn(&std::collections::BTreeMap<String, NodeState>) -> bool {
    move |states| states.values().all(|s| *s == state)
}

#[tokio::test(start_paused = true)]
async fn five_nodes_form_a_cluster() {
    let real = std::time::Instant::now();
    let sim = SimCluster::start(cluster(), 1, 4).await;
    let took = sim
        .wait_states(Duration::from_secs(30), |s| {
            s.len() == 5 && all(NodeState::Ready)(s)
        })
        .await;
    eprintln!("5 nodes Ready after {took:?} (simulated)");
    for node in sim.nodes.values() {
        assert_eq!(node.mode(), AgentMode::Attached, "{}", node.name);
        // Workers join; the control-plane members of a simulation are bootstrapped.
        let expected: &[&str] = if node.name.starts_with('w') {
            &["NodeJoined", "NodeReady"]
        } else {
            &["NodeReady"]
        };
        assert_eq!(sim.events_of(&node.name).await, expected, "{}", node.name);
    }
    // A node name is taken once.
    let again = sim.join("w1").await.unwrap_err();
    assert!(
        matches!(again, kat_actors::state::StateError::AlreadyExists(_)),
        "{again}"
    );

    // Each node's sync stream brought it the other four as peers...
    let peers_of = |name: &str| -> Vec<String> {
        let mut p: Vec<String> = sim.nodes[name]
            .agent
            .view
            .synced
            .borrow()
            .peers
            .iter()
            .map(|p| p.node_name.clone())
            .collect();
        p.sort();
        p
    };
    assert_eq!(peers_of("w1"), ["cp1", "w2", "w3", "w4"]);
    assert_eq!(peers_of("cp1"), ["w1", "w2", "w3", "w4"]);
    // ...and a sixth node reaches every stream without waiting for a tick.
    sim.join("w5").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(peers_of("w1"), ["cp1", "w2", "w3", "w4", "w5"]);
    assert!(sim.nodes["w1"].agent.view.synced.borrow().revision > 0);
    sim.stop().await;
    assert!(
        real.elapsed() < Duration::from_secs(10),
        "{:?}",
        real.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn agents_follow_a_new_leader_when_the_old_one_dies() {
    let sim = SimCluster::start(cluster(), 3, 2).await;
    sim.wait_states(Duration::from_secs(30), |s| {
        s.len() == 5 && all(NodeState::Ready)(s)
    })
    .await;
    let old = sim.crash_leader().await;
    let rest: Vec<&str> = sim
        .control_plane
        .iter()
        .map(String::as_str)
        .filter(|n| *n != old)
        .collect();
    let new = wait_for_leader(&rest, Duration::from_secs(30)).await;
    eprintln!("{old} crashed; {new} leads");
    // The dead member goes NotReady; everyone else keeps reporting to the new leader.
    let took = sim
        .wait_states(Duration::from_secs(LOSS + 3 * TICK + 10), |s| {
            s.iter().all(|(name, state)| {
                *state
                    == if *name == old {
                        NodeState::NotReady
                    } else {
                        NodeState::Ready
                    }
            })
        })
        .await;
    eprintln!("{old} NotReady after {took:?}");
    // Failover took less than the loss timeout: the agents never went Detached.
    for w in ["w1", "w2"] {
        assert_eq!(sim.nodes[w].mode(), AgentMode::Attached, "{w}");
        assert!(!sim.events_of(w).await.contains(&"NodeRejoined".to_owned()));
    }
    // And they keep heartbeating: still Ready two loss timeouts later.
    tokio::time::sleep(Duration::from_secs(2 * LOSS)).await;
    let states = sim.states().await;
    assert_eq!(states["w1"], NodeState::Ready);
    assert_eq!(states["w2"], NodeState::Ready);
    assert_eq!(states[&new], NodeState::Ready);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_node_runs_detached_and_rejoins_under_the_leaders_view() {
    let sim = SimCluster::start(cluster(), 1, 2).await;
    sim.wait_states(Duration::from_secs(30), |s| {
        s.len() == 3 && all(NodeState::Ready)(s)
    })
    .await;

    sim.partition("w1");
    let detached = sim
        .wait_mode(
            "w1",
            AgentMode::Detached,
            Duration::from_secs(LOSS + 2 * TICK),
        )
        .await;
    eprintln!("w1 Detached {detached:?} after the partition");
    sim.wait_states(Duration::from_secs(2 * TICK), |s| {
        s["w1"] == NodeState::NotReady
    })
    .await;
    assert_eq!(sim.nodes["w2"].mode(), AgentMode::Attached);
    assert_eq!(sim.states().await["w2"], NodeState::Ready);

    // Meanwhile the operator cordons w1: the leader's record changes, not the node's.
    let kv = sim.store.get(&keys::node("w1")).await.unwrap().unwrap();
    let mut node = Node::decode(kv.value.as_slice()).unwrap();
    node.spec.as_mut().unwrap().unschedulable = true;
    use kat_actors::store::StateStore;
    sim.store
        .put(&keys::node("w1"), node.encode_to_vec(), None)
        .await
        .unwrap();

    // Detached, Heartbeat keeps retrying with backoff (at most 30 s apart).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(sim.nodes["w1"].mode(), AgentMode::Detached);
    sim.heal("w1");
    let back = sim
        .wait_mode("w1", AgentMode::Attached, Duration::from_secs(31))
        .await;
    eprintln!("w1 rejoined {back:?} after the partition healed");
    // The leader's view wins: w1 reports itself Ready, and shows as the cordoned node
    // the leader's record says it is.
    sim.wait_states(Duration::from_secs(TICK), |s| {
        s["w1"] == NodeState::Cordoned
    })
    .await;
    assert_eq!(
        sim.events_of("w1").await,
        ["NodeJoined", "NodeReady", "NodeLost", "NodeRejoined"]
    );
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_looping_actor_escalates_to_the_node_supervisor_and_the_node_is_lost() {
    let sim = SimCluster::start(cluster(), 1, 1).await;
    sim.wait_states(Duration::from_secs(30), |s| {
        s.len() == 2 && all(NodeState::Ready)(s)
    })
    .await;
    // Kill w1's Heartbeat again and again: agent@w1 gives up after 10 restarts in 60 s
    // and fails; node@w1 restarts agent@w1 up to 3 times in 5 minutes, then fails too —
    // the documented end of escalation (kat-agent exits non-zero; systemd restarts it).
    let started = tokio::time::Instant::now();
    let mut kills = 0;
    while !sim.nodes["w1"].handle.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "node@w1 still running after {kills} kills"
        );
        if sim.kill_actor("heartbeat@w1") {
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "node@w1 gave up after {kills} kills in {:?}",
        started.elapsed()
    );
    assert!(kills > 10 * 3, "{kills}");
    // The rest of the cluster is untouched; the leader loses w1.
    sim.wait_states(Duration::from_secs(LOSS + 2 * TICK), |s| {
        s["w1"] == NodeState::NotReady && s["cp1"] == NodeState::Ready
    })
    .await;
    assert!(!sim.nodes["cp1"].handle.is_finished());
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "dropped with nodes still running: [\"cp1\", \"w1\"]")]
async fn a_test_that_leaves_its_cluster_running_fails() {
    let sim = SimCluster::start(cluster(), 1, 1).await;
    sim.wait_states(Duration::from_secs(30), |s| {
        s.len() == 2 && all(NodeState::Ready)(s)
    })
    .await;
    // No sim.stop(): dropping the cluster fails the test, naming what still runs.
}

/// The store's revision now.
async fn revision(sim: &SimCluster) -> i64 {
    use kat_actors::store::StateStore;
    sim.store.list("/kat/nodes/").await.unwrap().1
}

#[tokio::test(start_paused = true)]
async fn an_idle_cluster_writes_nothing_for_its_heartbeats() {
    let sim = SimCluster::start(cluster(), 1, 2).await;
    sim.wait_states(Duration::from_secs(30), all(NodeState::Ready))
        .await;
    // Let joins, capacities and first statuses settle.
    tokio::time::sleep(Duration::from_secs(4 * TICK)).await;
    let before = revision(&sim).await;
    // 60 ticks: 180 heartbeats of three nodes.
    tokio::time::sleep(Duration::from_secs(60 * TICK)).await;
    let made = revision(&sim).await - before;
    eprintln!("{made} revisions in {} s of idling", 60 * TICK);
    assert!(made <= 3, "{made} revisions while idle");
    // Still Ready, and `get nodes` still shows when each was heard.
    let states = sim.states().await;
    assert!(
        states.values().all(|s| *s == NodeState::Ready),
        "{states:?}"
    );
    sim.stop().await;
}
