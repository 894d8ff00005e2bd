//! The control-plane subtree (SPEC §3): `control-plane@N`, on the first `quorumSize`
//! nodes, rest_for_one over
//!
//! | child | what it does |
//! |---|---|
//! | `store@N` (`crate::store::Store`) | the etcd member (or the shared in-memory store) |
//! | `election@N` ([`election`]) | campaigns; adds `leader@N` (`crate::leader`) while this node leads |
//! | `api-server@N` ([`api_server`]) | listens on `apiPort`; serves as leader or points to it |
//! | `member-certs@N` ([`member_certs`]) | etcd members: renews the member's etcd certificate |
//!
//! Restart: 5 in 60 s, backoff 100 ms → 5 s. If the Store (etcd) restarts, Election
//! restarts after it with a fresh lease, and the leader subtree is dropped until
//! Election wins again.

pub mod api_server;
pub mod election;
pub mod member_certs;

use std::time::{Duration, SystemTime};

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::ClusterConfiguration;

use crate::leader::{ApiEndpoint, LeaderSetup, LocalFiles};
use crate::pki::local::ClusterPki;
use crate::state::keys;
use crate::store::{Store, StoreArgs, StoreBackend};
use crate::supervision::{Backoff, ChildSpec, Intensity, Strategy, SupervisorArgs};
use api_server::{ApiServer, ApiServerArgs};
use election::{Election, ElectionArgs};
use member_certs::{MemberCerts, MemberCertsArgs};

/// What a control-plane node runs.
#[derive(Clone)]
pub struct ControlPlaneOptions {
    pub node: String,
    pub backend: StoreBackend,
    pub settings: ClusterSettings,
    /// Election lease TTL (about 5 s: failover time is at most this plus a campaign).
    pub lease_ttl: Duration,
    /// How long etcd may take to become healthy at each (re)start.
    pub etcd_health_timeout: Duration,
    /// The CAs this member signs with when it leads (and its API server certificate).
    pub pki: ClusterPki,
    /// init's node: where its leader writes `katcall.yaml` and the first join token.
    pub local_files: Option<LocalFiles>,
    /// Where the leader's API is served when this node leads (TCP: advertise address
    /// and apiPort).
    pub api: Option<ApiEndpoint>,
    /// The wall clock heartbeat times are compared on (simulations pass their own).
    pub clock: fn() -> SystemTime,
}

impl ControlPlaneOptions {
    pub fn new(
        node: &str,
        backend: StoreBackend,
        cluster: ClusterConfiguration,
        pki: ClusterPki,
    ) -> Self {
        Self {
            node: node.to_owned(),
            backend,
            settings: ClusterSettings::from(&cluster),
            lease_ttl: Duration::from_secs(5),
            etcd_health_timeout: Duration::from_secs(30),
            pki,
            local_files: None,
            api: None,
            clock: SystemTime::now,
        }
    }
}

/// Actor name of node `node`'s control-plane subtree.
pub fn supervisor_name(node: &str) -> String {
    format!("control-plane@{node}")
}

/// The control-plane subtree of a node; see the module docs.
pub fn spec(opts: &ControlPlaneOptions) -> ChildSpec {
    let node = opts.node.clone();
    let store_args = StoreArgs {
        node: node.clone(),
        backend: opts.backend.clone(),
        health_timeout: opts.etcd_health_timeout,
    };
    let store = ChildSpec::actor(Store::name(&node), Store, move || store_args.clone())
        .shutdown_timeout(Duration::from_secs(10));
    let setup = LeaderSetup {
        settings: opts.settings.clone(),
        pki: opts.pki.clone(),
        local: opts.local_files.clone(),
        api: opts.api.clone(),
        clock: opts.clock,
    };
    let election_args = ElectionArgs {
        node: node.clone(),
        store_actor: Store::name(&node),
        election: keys::ELECTION_PREFIX.to_owned(),
        lease_ttl: opts.lease_ttl,
        leader_subtree: Some(std::sync::Arc::new(move |leadership| {
            crate::leader::subtree_spec(leadership, &setup)
        })),
    };
    let election = ChildSpec::actor(Election::name(&node), Election, move || {
        election_args.clone()
    });
    let mut children = vec![store, election];
    // Every member listens on apiPort; it serves as leader while it leads and points
    // to the leader otherwise.
    if let Some(ApiEndpoint::Tcp { addr, slot }) = &opts.api {
        let server_args = ApiServerArgs {
            node: node.clone(),
            store_actor: Store::name(&node),
            addr: *addr,
            slot: slot.clone(),
            ca: opts.pki.cluster.clone(),
            cert_lifetime: opts.settings.certificate_lifetime,
            now: SystemTime::now,
        };
        children.push(
            ChildSpec::actor(ApiServer::name(&node), ApiServer, move || {
                server_args.clone()
            })
            .shutdown_timeout(Duration::from_secs(10)),
        );
    }
    if let (StoreBackend::Etcd(config), Some(etcd_ca)) = (&opts.backend, &opts.pki.etcd)
        && let Some(files) = &config.tls
    {
        let certs_args = MemberCertsArgs {
            node: node.clone(),
            address: config.peer_addr.ip(),
            etcd_ca: etcd_ca.clone(),
            files: files.clone(),
            lifetime: opts.settings.certificate_lifetime,
            store_actor: Store::name(&node),
            now: opts.clock,
        };
        children.push(ChildSpec::actor(
            MemberCerts::name(&node),
            MemberCerts,
            move || certs_args.clone(),
        ));
    }
    let args = SupervisorArgs {
        strategy: Strategy::RestForOne,
        intensity: Intensity {
            max_restarts: 5,
            window: Duration::from_secs(60),
        },
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        },
        children,
    };
    // Children's timeouts and kill waits add up to about 45 s.
    ChildSpec::supervisor(supervisor_name(&node), args).shutdown_timeout(Duration::from_secs(60))
}
