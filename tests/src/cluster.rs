//! Control-plane helpers shared by the simulated and real-etcd tests and the bench:
//! cluster configurations, who leads, and three etcd-backed members in one process.

use std::net::SocketAddr;
use std::time::Duration;

use kat_actors::control_plane::ControlPlaneOptions;
use kat_actors::control_plane::election::{Election, ElectionMsg, ElectionSnapshot};
use kat_actors::pki::local::ClusterPki;
use kat_actors::store::StoreBackend;
use kat_actors::store::etcd_process::EtcdMemberConfig;
use kat_actors::supervision::SupervisorMsg;
use kat_actors::tree::start_control_plane_node;
use kat_proto::v1alpha1::ClusterConfiguration;
use ractor::{ActorRef, call_t};
use tokio::time::Instant;

use crate::programs::free_port;

/// A valid cluster configuration with every default but the name and quorum size.
pub fn cluster_config(name: &str, quorum_size: u32) -> ClusterConfiguration {
    let yaml = format!(
        "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {{name: {name}}}\n\
         spec: {{quorumSize: {quorum_size}}}\n"
    );
    kat_proto::quadlet::parse_cluster_config("test.kat", yaml.as_bytes())
        .expect("a valid test cluster")
}

/// The Election snapshot of `node`, if its Election runs.
pub async fn election_of(node: &str) -> Option<ElectionSnapshot> {
    let cell = ractor::registry::where_is(Election::name(node))?;
    call_t!(
        ActorRef::<ElectionMsg>::from(cell),
        ElectionMsg::Snapshot,
        2000
    )
    .ok()
}

/// Polls until exactly one of `nodes` leads and returns it; two leaders at once or
/// none within `within` (tokio time: simulated when paused) fails the test.
pub async fn wait_for_leader(nodes: &[&str], within: Duration) -> String {
    let started = Instant::now();
    while started.elapsed() < within {
        let mut leaders = Vec::new();
        for node in nodes {
            if election_of(node).await.is_some_and(|s| s.leading) {
                leaders.push((*node).to_owned());
            }
        }
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if let [leader] = &leaders[..] {
            return leader.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("none of {nodes:?} became leader within {within:?}");
}

/// Three control-plane members in this process, each with its own etcd member on
/// random loopback ports (data in a temp dir, killed with the trees).
pub struct EtcdTrio {
    pub nodes: Vec<String>,
    /// (client, peer) port of each member.
    pub ports: Vec<(u16, u16)>,
    pub supervisors: Vec<ActorRef<SupervisorMsg>>,
    _dir: tempfile::TempDir,
}

impl EtcdTrio {
    /// Starts members `<prefix>1..3`. `fast_raft` uses 50/500 ms raft timings instead
    /// of etcd's 100/1000 ms defaults (faster still churns raft leaders, and so
    /// renews every lease, on a loaded 2-core machine).
    pub async fn start(
        etcd: &std::path::Path,
        prefix: &str,
        lease_ttl: Duration,
        fast_raft: bool,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<String> = (1..=3).map(|i| format!("{prefix}{i}")).collect();
        let ports: Vec<(u16, u16)> = nodes.iter().map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = nodes
            .iter()
            .zip(&ports)
            .map(|(n, (_, peer))| format!("{n}=http://127.0.0.1:{peer}"))
            .collect();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut supervisors = Vec::new();
        // One set of CAs, as the members of a real cluster share.
        let pki = ClusterPki::generate(prefix).expect("CAs");
        for (node, (client, peer)) in nodes.iter().zip(&ports) {
            let mut member = EtcdMemberConfig::single(
                etcd.to_path_buf(),
                node,
                dir.path().join(node),
                addr(*client),
                addr(*peer),
            );
            member.initial_cluster = initial.join(",");
            if fast_raft {
                member.heartbeat_interval = Duration::from_millis(50);
                member.election_timeout = Duration::from_millis(500);
            }
            member.log_file = Some(dir.path().join(format!("{node}.log")));
            let mut opts = ControlPlaneOptions::new(
                node,
                StoreBackend::Etcd(Box::new(member)),
                cluster_config(prefix, 3),
                pki.clone(),
            );
            opts.lease_ttl = lease_ttl;
            supervisors.push(
                start_control_plane_node(&opts)
                    .await
                    .expect("node tree starts")
                    .0,
            );
        }
        Self {
            nodes,
            ports,
            supervisors,
            _dir: dir,
        }
    }

    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i].0)
    }

    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(String::as_str).collect()
    }

    pub fn index_of(&self, node: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n == node)
            .expect("a member of the trio")
    }

    /// Stops every member still running, in order.
    pub async fn stop(&self) {
        for sup in &self.supervisors {
            let _ = sup.stop_and_wait(None, Some(Duration::from_secs(30))).await;
        }
    }
}
