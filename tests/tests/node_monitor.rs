//! NodeMonitor as an actor: a node silent for nodeLossTimeoutSeconds becomes NotReady
//! with a NodeLost event; a node that keeps reporting stays Ready; the wall clock
//! does not matter; most nodes silent at once is a disruption. Paused tokio time
//! drives the ticks and the leader's monotonic clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kat_actors::leader::node_monitor::{NodeMonitor, NodeMonitorArgs, disrupted};
use kat_actors::state::Leadership;
use kat_actors::state::keys::{EVENTS_PREFIX, NODE_STATUS_PREFIX};
use kat_actors::store::{MemoryStore, StateStore, election};
use kat_proto::v1alpha1::{ClusterConfiguration, Event, NodeState, NodeStatus};
use prost::Message;

static WALL_CLOCK: AtomicU64 = AtomicU64::new(1_000_000);

fn test_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(WALL_CLOCK.load(Ordering::SeqCst))
}

fn cluster(tick: u32, loss: u32) -> ClusterConfiguration {
    let yaml = format!(
        "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: nm}}\n\
         spec: {{agentTickSeconds: {tick}, nodeLossTimeoutSeconds: {loss}}}\n"
    );
    kat_proto::quadlet::parse_cluster_config("nm.kat", yaml.as_bytes()).unwrap()
}

/// Node `node` heartbeats: the leader hears it (memory) and its status is Ready.
async fn report(leadership: &Leadership, node: &str) {
    leadership.liveness.heard(node, test_now());
    let key = format!("{NODE_STATUS_PREFIX}{node}");
    let store = leadership.store();
    let mut status = match store.get(&key).await.unwrap() {
        Some(kv) => NodeStatus::decode(kv.value.as_slice()).unwrap(),
        None => NodeStatus::default(),
    };
    if status.state() != NodeState::Ready {
        status.set_state(NodeState::Ready);
        status.conditions.clear();
        store.put(&key, status.encode_to_vec(), None).await.unwrap();
    }
}

async fn status_of(store: &dyn StateStore, node: &str) -> NodeStatus {
    let kv = store
        .get(&format!("{NODE_STATUS_PREFIX}{node}"))
        .await
        .unwrap()
        .unwrap();
    NodeStatus::decode(kv.value.as_slice()).unwrap()
}

async fn state_of(store: &dyn StateStore, node: &str) -> NodeState {
    status_of(store, node).await.state()
}

async fn reasons(store: &dyn StateStore) -> Vec<String> {
    let (events, _) = store.list(EVENTS_PREFIX).await.unwrap();
    let mut out: Vec<String> = events
        .iter()
        .map(|kv| Event::decode(kv.value.as_slice()).unwrap().reason)
        .collect();
    out.sort();
    out
}

/// A leader's NodeMonitor over a memory store, with loss timeout `loss` s.
async fn leader(
    tick: u32,
    loss: u32,
) -> (
    Leadership,
    ractor::ActorRef<kat_actors::leader::node_monitor::NodeMonitorMsg>,
) {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let lease = store.grant_lease(Duration::from_secs(3600)).await.unwrap();
    let key = election::campaign(
        store.as_ref(),
        "/kat/election",
        b"leader".to_vec(),
        lease.id,
    )
    .await
    .unwrap();
    let leadership = Leadership::new("leader", key, store);
    let args = NodeMonitorArgs {
        leadership: leadership.clone(),
        settings: kat_proto::quadlet::ClusterSettings::from(&cluster(tick, loss)),
        now: test_now,
    };
    let (monitor, _) = ractor::Actor::spawn(None, NodeMonitor, args).await.unwrap();
    (leadership, monitor)
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_becomes_not_ready_with_an_event() {
    let (leadership, _monitor) = leader(5, 20).await;
    let store = leadership.store.clone();
    for n in ["quiet", "chatty", "c", "d"] {
        report(&leadership, n).await;
    }

    // 15 s: within the 20 s timeout, everyone is Ready.
    for _ in 0..3 {
        WALL_CLOCK.fetch_add(5, Ordering::SeqCst);
        for n in ["chatty", "c", "d"] {
            report(&leadership, n).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(state_of(store.as_ref(), "quiet").await, NodeState::Ready);

    // Past the timeout (plus at most one tick): quiet is lost, chatty is not.
    for _ in 0..2 {
        WALL_CLOCK.fetch_add(5, Ordering::SeqCst);
        for n in ["chatty", "c", "d"] {
            report(&leadership, n).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let quiet = status_of(store.as_ref(), "quiet").await;
    assert_eq!(quiet.state(), NodeState::NotReady);
    assert!(!disrupted(&quiet), "one node of four is not a disruption");
    assert_eq!(state_of(store.as_ref(), "chatty").await, NodeState::Ready);
    let (events, _) = store.list(EVENTS_PREFIX).await.unwrap();
    assert_eq!(events.len(), 1, "one NodeLost event");
    let event = Event::decode(events[0].value.as_slice()).unwrap();
    assert_eq!(
        (event.reason.as_str(), event.node.as_str()),
        ("NodeLost", "quiet")
    );

    // A heartbeat brings it back (the node API writes Ready); no second event.
    report(&leadership, "quiet").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(state_of(store.as_ref(), "quiet").await, NodeState::Ready);
    assert_eq!(store.list(EVENTS_PREFIX).await.unwrap().0.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_step_of_the_wall_clock_loses_no_node() {
    let (leadership, _monitor) = leader(5, 20).await;
    let store = leadership.store.clone();
    report(&leadership, "n1").await;
    report(&leadership, "n2").await;
    // NTP steps the clock (or a VM resumes) by three loss timeouts; heartbeats go on.
    WALL_CLOCK.fetch_add(61, Ordering::SeqCst);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        report(&leadership, "n1").await;
        report(&leadership, "n2").await;
    }
    assert_eq!(state_of(store.as_ref(), "n1").await, NodeState::Ready);
    assert_eq!(state_of(store.as_ref(), "n2").await, NodeState::Ready);
    assert!(reasons(store.as_ref()).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_gives_every_node_a_full_timeout_of_grace() {
    let (old, old_monitor) = leader(5, 20).await;
    report(&old, "n1").await;
    // The old leader goes; nothing heard n1 for a long time before the new one starts.
    old_monitor.stop(None);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let store = old.store.clone();
    let lease = store.grant_lease(Duration::from_secs(3600)).await.unwrap();
    let key = election::campaign(store.as_ref(), "/kat/election2", b"new".to_vec(), lease.id)
        .await
        .unwrap();
    let new = Leadership::new("new", key, store.clone());
    let args = NodeMonitorArgs {
        leadership: new.clone(),
        settings: kat_proto::quadlet::ClusterSettings::from(&cluster(5, 20)),
        now: test_now,
    };
    let (_monitor, _) = ractor::Actor::spawn(None, NodeMonitor, args).await.unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        state_of(store.as_ref(), "n1").await,
        NodeState::Ready,
        "within its grace"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        state_of(store.as_ref(), "n1").await,
        NodeState::NotReady,
        "grace over"
    );
}

#[tokio::test(start_paused = true)]
async fn most_nodes_silent_at_once_are_marked_disrupted_with_one_event() {
    let (leadership, _monitor) = leader(5, 20).await;
    let store = leadership.store.clone();
    for n in ["a", "b", "c", "d"] {
        report(&leadership, n).await;
    }
    // Only d keeps reporting (say, the leader's own node): 3 of 4 silent.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        report(&leadership, "d").await;
    }
    for n in ["a", "b", "c"] {
        let s = status_of(store.as_ref(), n).await;
        assert_eq!(s.state(), NodeState::NotReady, "{n}");
        assert!(disrupted(&s), "{n} is marked as disrupted");
    }
    assert_eq!(
        reasons(store.as_ref()).await,
        ["ClusterDisrupted", "NodeLost", "NodeLost", "NodeLost"]
    );
    // Two come back; c stays silent: 1 of 4 is an ordinary loss, its instances go.
    report(&leadership, "a").await;
    report(&leadership, "b").await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for n in ["a", "b", "d"] {
            report(&leadership, n).await;
        }
    }
    let c = status_of(store.as_ref(), "c").await;
    assert_eq!(c.state(), NodeState::NotReady);
    assert!(!disrupted(&c), "released once the disruption is over");
    assert!(
        reasons(store.as_ref())
            .await
            .contains(&"DisruptionOver".to_owned())
    );
    assert!(!disrupted(&status_of(store.as_ref(), "a").await));
}
