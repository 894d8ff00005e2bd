//! `kat-bench c1m`: a million instances (by default) onto thousands of simulated nodes
//! through the real Scheduler actor, over the in-memory store, in this process.
//!
//! The nodes join through the node API's `Join` handler (a CSR each, one reusable
//! token) and report Ready through its `Heartbeat` handler, so `/kat/nodes/<n>` and
//! `/kat/status/nodes/<n>` hold what a real join and heartbeat write. Workloads go
//! in through `apply_bundle`, the call behind `katcall apply`. The clock runs from the
//! first workload written until the store holds a placed record (a node set) for
//! every instance; a watch on `/kat/instances/` counts them as the scheduler writes.
//! Nothing runs the instances: no agent reports on them.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use kat_actors::leader::scheduler::{Scheduler, SchedulerArgs};
use kat_actors::leader::{self, LeaderContext};
use kat_actors::pki::ca::node_key_and_csr;
use kat_actors::pki::local::ClusterPki;
use kat_actors::pki::tokens;
use kat_actors::state::Leadership;
use kat_actors::state::keys::ELECTION_PREFIX;
use kat_actors::state::keys::{self, INSTANCES_PREFIX};
use kat_actors::state::workloads::{self, ApplyMode};
use kat_actors::store::election as store_election;
use kat_actors::store::{EventKind, MemoryStore, StateStore};
use kat_proto::bundle::{BundleFile, Limits};
use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::{
    HeartbeatRequest, Instance, JoinRequest, NodeResources, NodeStatus, TokenKind,
};
use prost::Message;

use crate::{mib, usage_of_self};

/// The leader's name (its own registration fills the quorum: every node joins as a worker).
const LEADER: &str = "c1m-leader";
const GI: i64 = 1 << 30;
/// How long to wait for the last placement before giving up.
const GIVE_UP: Duration = Duration::from_secs(20 * 60);

/// Node `i`'s name.
fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// Workload `w`'s `workload.kat`: small requests; a quarter of them restricted to
/// one of three zones, as C1M's jobs carried constraints.
fn workload_file(w: usize, replicas: usize) -> String {
    let selector = if w.is_multiple_of(4) {
        format!("  nodeSelector: {{zone: z{}}}\n", w % 3)
    } else {
        String::new()
    };
    format!(
        "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: w{w:05}
spec:
  type: SERVICE
  source:
    image: localhost/busybox:latest
  replicas: {replicas}
  container:
    command: [\"sleep\", \"86400\"]
    resources:
      requests: {{cpu: 10m, memory: 16Mi}}
{selector}"
    )
}

pub async fn c1m(instances: usize, nodes: usize, replicas: usize) {
    let started = Instant::now();
    let store = Arc::new(MemoryStore::new());
    let shared: Arc<dyn StateStore> = store.clone();
    let lease = shared.grant_lease(Duration::from_secs(3600)).await.unwrap();
    let key = store_election::campaign(
        shared.as_ref(),
        ELECTION_PREFIX,
        LEADER.as_bytes().to_vec(),
        lease.id,
    )
    .await
    .unwrap();
    let cluster = kat_proto::quadlet::parse_cluster_config(
        "c1m.kat",
        b"apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {name: c1m}\n\
          spec: {quorumSize: 1}\n",
    )
    .unwrap();
    let leadership = Leadership::new(LEADER, key, shared.clone());
    let ctx = LeaderContext::new(
        leadership.clone(),
        ClusterPki::generate("c1m").unwrap(),
        ClusterSettings::from(&cluster),
    );
    shared
        .put(&keys::control_plane(LEADER), b"127.0.0.1:1".to_vec(), None)
        .await
        .unwrap();
    let (token, record) =
        tokens::generate(TokenKind::Join, None, true, "c1m", SystemTime::now()).unwrap();
    shared
        .put(
            &keys::token(TokenKind::Join, &record.id),
            record.encode_to_vec(),
            None,
        )
        .await
        .unwrap();

    // Nodes: 8 cores and 32 GiB each, in three zones; joined, then one heartbeat.
    for i in 0..nodes {
        let name = node_name(i);
        let (_key, csr) = node_key_and_csr(&name).unwrap();
        let request = JoinRequest {
            token: token.clone(),
            node_name: name.clone(),
            csr_pem: csr,
            advertise_address: kat_tests::programs::loopback_address(i),
            capacity: Some(NodeResources {
                cpu_millis: 8000,
                memory_bytes: 32 * GI,
                gpus: Vec::new(),
            }),
            labels: [("zone".to_owned(), format!("z{}", i % 3))].into(),
            ..Default::default()
        };
        leader::join::join(&ctx, request, None, SystemTime::now())
            .await
            .unwrap();
        let beat = HeartbeatRequest {
            node_name: name.clone(),
            node_status: Some(NodeStatus::default()),
            ..Default::default()
        };
        leader::heartbeats::heartbeat(&ctx, &name, None, beat, SystemTime::now())
            .await
            .unwrap();
    }
    println!(
        "nodes                    {nodes} joined and Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Bundles are packed before the clock starts (katcall packs on the client).
    let workloads = instances.div_ceil(replicas);
    let bundles: Vec<Vec<u8>> = (0..workloads)
        .map(|w| {
            let n = replicas.min(instances - w * replicas);
            let file = BundleFile {
                name: "workload.kat".to_owned(),
                data: workload_file(w, n).into_bytes(),
            };
            kat_proto::bundle::pack(&[file], &Limits::default()).unwrap()
        })
        .collect();

    let placed = Arc::new(AtomicUsize::new(0));
    let counter = tokio::spawn(count_placed(
        shared.watch(INSTANCES_PREFIX, 0).await.unwrap(),
        placed.clone(),
    ));
    let settings = ClusterSettings::from(&cluster);
    let args = SchedulerArgs {
        leadership: leadership.clone(),
        settings: settings.clone(),
        now: SystemTime::now,
    };
    let (scheduler, scheduler_task) =
        ractor::Actor::spawn(Some(Scheduler::name(LEADER)), Scheduler, args)
            .await
            .unwrap();
    // Let its first (empty) round pass, so the clock does not include it.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (rss_before, cpu_before) = usage_of_self();
    let clock = Instant::now();
    for bundle in &bundles {
        workloads::apply_bundle(
            &leadership,
            &settings,
            "",
            None,
            bundle,
            ApplyMode::Apply,
            SystemTime::now(),
        )
        .await
        .unwrap();
    }
    let written = clock.elapsed();
    println!(
        "workloads                {workloads} of {replicas} replicas written in {:.2} s",
        written.as_secs_f64()
    );
    let mut next_mark = 1;
    let done = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = placed.load(Ordering::Relaxed);
        while next_mark <= 10 && n * 10 >= instances * next_mark {
            println!(
                "placed                   {:>3} % ({n}) after {:.2} s",
                next_mark * 10,
                clock.elapsed().as_secs_f64()
            );
            next_mark += 1;
        }
        if n >= instances {
            break clock.elapsed();
        }
        if clock.elapsed() > GIVE_UP {
            println!("gave up: {n} of {instances} placed after {GIVE_UP:?}");
            break clock.elapsed();
        }
    };
    let (rss_after, cpu_after) = usage_of_self();
    scheduler.stop(None);
    let _ = scheduler_task.await;
    counter.abort();

    // What the store holds, read once at the end.
    let (kvs, _) = shared.list(INSTANCES_PREFIX).await.unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for kv in &kvs {
        let instance = Instance::decode(kv.value.as_slice()).unwrap();
        if !instance.node.is_empty() {
            *per_node.entry(instance.node).or_default() += 1;
        }
    }
    let in_store: usize = per_node.values().sum();
    let busiest = per_node.values().max().copied().unwrap_or(0);
    let idlest = if per_node.len() < nodes {
        0
    } else {
        per_node.values().min().copied().unwrap_or(0)
    };
    #[allow(clippy::cast_precision_loss)]
    let rate = in_store as f64 / done.as_secs_f64();
    println!(
        "all placed               {in_store} of {instances} instance records placed in the store, \
         {:.2} s after the first workload was written ({rate:.0} instances/s)",
        done.as_secs_f64()
    );
    println!(
        "spread                   {} of {nodes} nodes used, {idlest}..{busiest} instances per node",
        per_node.len()
    );
    println!(
        "CPU                      {:.1} s in that time ({:.0} % of one core; this whole process: \
         scheduler, store, the counting watch)",
        cpu_after - cpu_before,
        100.0 * (cpu_after - cpu_before) / done.as_secs_f64()
    );
    println!(
        "RSS                      {:.0} MiB before the workloads, {:.0} MiB after, peak {:.0} MiB",
        mib(rss_before),
        mib(rss_after),
        mib(peak_rss_kib())
    );
}

/// Counts instance records with a node, each once, as the watch reports them.
async fn count_placed(mut watch: kat_actors::store::WatchReceiver, placed: Arc<AtomicUsize>) {
    // Hashes of the keys, not the keys: a million of them stay small.
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut seen: HashSet<u64> = HashSet::new();
    while let Some(Ok(event)) = watch.recv().await {
        let key = hasher.hash_one(&event.kv.key);
        let on_node = event.kind == EventKind::Put
            && Instance::decode(event.kv.value.as_slice()).is_ok_and(|i| !i.node.is_empty());
        let changed = if on_node {
            seen.insert(key)
        } else {
            seen.remove(&key)
        };
        if changed {
            placed.store(seen.len(), Ordering::Relaxed);
        }
    }
}

/// This process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
