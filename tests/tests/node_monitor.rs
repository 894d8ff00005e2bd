//! NodeMonitor as an actor: a node silent for nodeLossTimeoutSeconds becomes NotReady
//! with a NodeLost event; a node that keeps reporting stays Ready. Paused tokio time
//! drives the ticks; a test clock stands in for the wall clock heartbeats carry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kat_actors::leader::node_monitor::{NodeMonitor, NodeMonitorArgs};
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

async fn report(store: &dyn StateStore, node: &str) {
    let mut status = NodeStatus {
        last_heartbeat: Some(pbjson_types::Timestamp {
            seconds: i64::try_from(WALL_CLOCK.load(Ordering::SeqCst)).unwrap(),
            nanos: 0,
        }),
        ..Default::default()
    };
    status.set_state(NodeState::Ready);
    store
        .put(
            &format!("{NODE_STATUS_PREFIX}{node}"),
            status.encode_to_vec(),
            None,
        )
        .await
        .unwrap();
}

async fn state_of(store: &dyn StateStore, node: &str) -> NodeState {
    let kv = store
        .get(&format!("{NODE_STATUS_PREFIX}{node}"))
        .await
        .unwrap()
        .unwrap();
    NodeStatus::decode(kv.value.as_slice()).unwrap().state()
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_becomes_not_ready_with_an_event() {
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
    let args = NodeMonitorArgs {
        leadership: Leadership::new("leader", key, store.clone()),
        settings: kat_proto::quadlet::ClusterSettings::from(&cluster(5, 20)),
        now: test_now,
    };
    report(store.as_ref(), "quiet").await;
    report(store.as_ref(), "chatty").await;
    let (_monitor, _) = ractor::Actor::spawn(Some(NodeMonitor::name("leader")), NodeMonitor, args)
        .await
        .unwrap();

    // 15 s on both clocks: within the 20 s timeout, everyone is Ready.
    for _ in 0..3 {
        WALL_CLOCK.fetch_add(5, Ordering::SeqCst);
        report(store.as_ref(), "chatty").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(state_of(store.as_ref(), "quiet").await, NodeState::Ready);

    // Past the timeout (plus at most one tick): quiet is lost, chatty is not.
    for _ in 0..2 {
        WALL_CLOCK.fetch_add(5, Ordering::SeqCst);
        report(store.as_ref(), "chatty").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(state_of(store.as_ref(), "quiet").await, NodeState::NotReady);
    assert_eq!(state_of(store.as_ref(), "chatty").await, NodeState::Ready);
    let (events, _) = store.list(EVENTS_PREFIX).await.unwrap();
    assert_eq!(events.len(), 1, "one NodeLost event");
    let event = Event::decode(events[0].value.as_slice()).unwrap();
    assert_eq!(
        (event.reason.as_str(), event.node.as_str()),
        ("NodeLost", "quiet")
    );

    // A heartbeat brings it back (the node API writes Ready); no second event.
    report(store.as_ref(), "quiet").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(state_of(store.as_ref(), "quiet").await, NodeState::Ready);
    assert_eq!(store.list(EVENTS_PREFIX).await.unwrap().0.len(), 1);
}
