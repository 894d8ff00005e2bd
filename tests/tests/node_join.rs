//! The node API's Join over real TLS on loopback: a token-authenticated CSR becomes a
//! node certificate and a registration; every bad join is refused and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kat_actors::api::{Served, serve};
use kat_actors::leader::LeaderContext;
use kat_actors::listener::ServingCert;
use kat_actors::pki::ca::{ClusterCa, generate_ca, node_key_and_csr};
use kat_actors::pki::tokens;
use kat_actors::state::{Leadership, keys};
use kat_actors::store::election;
use kat_actors::store::{MemoryStore, StateStore};
use kat_proto::v1alpha1::node_api_client::NodeApiClient;
use kat_proto::v1alpha1::{JoinRequest, StoredToken, TokenKind};
use kat_tests::cluster::cluster_config;
use kat_tests::programs::free_port;
use prost::Message;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Leader {
    store: Arc<dyn StateStore>,
    ca: kat_actors::pki::ca::CertAndKey,
    ca_pem: String,
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn leader() -> Leader {
    leader_starting_for(None).await
}

/// [`leader`], whose leader services (the context in its API's slot) are in place only
/// `starting` after its server listens, as when a member has just been elected.
async fn leader_starting_for(starting: Option<Duration>) -> Leader {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let key = election::campaign(store.as_ref(), "/kat/election", b"n0".to_vec(), lease.id)
        .await
        .unwrap();
    // n0 is the (only, quorumSize 1) control-plane member: joiners are workers.
    store
        .put(
            &kat_actors::state::keys::control_plane("n0"),
            b"127.0.0.1:1".to_vec(),
            None,
        )
        .await
        .unwrap();
    let ca = generate_ca("join-test").unwrap();
    let signer = ClusterCa::from_pem(&ca).unwrap();
    let server_cert = signer
        .issue_server_cert(
            &["kat-api".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let pki = kat_actors::pki::local::ClusterPki {
        cluster: ca.clone(),
        etcd: None,
    };
    let ctx = LeaderContext::new(
        Leadership::new("leader", key, store.clone()),
        pki,
        kat_proto::quadlet::ClusterSettings::from(&cluster_config("join-test", 1)),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let served = match starting {
        None => Served::leading(ctx),
        Some(delay) => {
            let slot = kat_actors::leader::new_api_slot();
            let filled = slot.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                filled.send_replace(Some(ctx));
            });
            Served {
                slot,
                store: store.clone(),
                ca_pem: ca.cert_pem.clone(),
                node: "n0".to_owned(),
            }
        }
    };
    let serving = ServingCert::new(&server_cert, &ca.cert_pem).unwrap();
    tokio::spawn(async move {
        serve(listener, serving, served, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Leader {
        store,
        ca_pem: ca.cert_pem.clone(),
        ca,
        url: format!("https://{addr}"),
        _stop: stop,
    }
}

impl Leader {
    async fn token(&self, ttl: Option<Duration>, reusable: bool) -> String {
        let (token, record) =
            tokens::generate(TokenKind::Join, ttl, reusable, "test", SystemTime::now()).unwrap();
        self.store
            .put(
                &keys::token(TokenKind::Join, &record.id),
                record.encode_to_vec(),
                None,
            )
            .await
            .unwrap();
        token
    }

    async fn client(
        &self,
        identity: Option<Identity>,
    ) -> Result<NodeApiClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("kat-api");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        for _ in 0..100 {
            let channel = Channel::from_shared(self.url.clone())
                .unwrap()
                .tls_config(tls.clone())?;
            if let Ok(channel) = channel.connect().await {
                return Ok(NodeApiClient::new(channel));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Channel::from_shared(self.url.clone())
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
            .map(NodeApiClient::new)
    }

    async fn registered(&self, node: &str) -> bool {
        self.store.get(&keys::node(node)).await.unwrap().is_some()
    }
}

/// A join of `node` (its own loopback address, from its name) with a CSR for
/// `csr_for`.
fn join_request(token: &str, node: &str, csr_for: &str) -> JoinRequest {
    let (_key, csr) = node_key_and_csr(csr_for).unwrap();
    let n = node.bytes().fold(0usize, |h, b| h * 31 + usize::from(b));
    JoinRequest {
        token: token.to_owned(),
        node_name: node.to_owned(),
        csr_pem: csr,
        advertise_address: kat_tests::programs::loopback_address(n % 60_000),
        agent_version: "test".to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_node_joins_with_a_token_and_gets_a_certificate() {
    let leader = leader().await;
    let token = leader.token(Some(Duration::from_secs(3600)), false).await;
    let mut client = leader.client(None).await.unwrap();
    let reply = client
        .join(join_request(&token, "w1", "w1"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(reply.ca_pem, leader.ca_pem);
    assert_eq!(reply.node.unwrap().metadata.unwrap().name, "w1");
    assert!(reply.cluster.is_some());
    assert!(leader.registered("w1").await);
    let (id, _) = tokens::parse(&token).unwrap();
    let stored = leader
        .store
        .get(&keys::token(TokenKind::Join, id))
        .await
        .unwrap()
        .unwrap();
    assert!(
        StoredToken::decode(stored.value.as_slice()).unwrap().used,
        "a single-use token is spent"
    );
}

#[tokio::test]
async fn bad_joins_are_refused_and_change_nothing() {
    let leader = leader().await;
    let mut client = leader.client(None).await.unwrap();
    let code = |r: Result<tonic::Response<_>, tonic::Status>| {
        r.map(|_: tonic::Response<kat_proto::v1alpha1::JoinResponse>| ())
            .unwrap_err()
            .code()
    };

    // A wrong secret, an unknown id, garbage.
    let token = leader.token(Some(Duration::from_secs(3600)), false).await;
    let (id, _) = tokens::parse(&token).unwrap();
    let wrong = format!("{id}.{}", "0".repeat(32));
    assert_eq!(
        code(client.join(join_request(&wrong, "w1", "w1")).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(client.join(join_request("nonsense", "w1", "w1")).await),
        Code::Unauthenticated
    );
    // An expired token.
    let expired = leader.token(Some(Duration::from_secs(1)), false).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        code(client.join(join_request(&expired, "w1", "w1")).await),
        Code::Unauthenticated
    );
    // A CSR whose CN is another node's name.
    assert_eq!(
        code(client.join(join_request(&token, "w1", "w9")).await),
        Code::PermissionDenied
    );
    assert!(
        !leader.registered("w1").await,
        "refused joins register nothing"
    );

    // The token is still good after those refusals; then single use means single use.
    client.join(join_request(&token, "w1", "w1")).await.unwrap();
    assert_eq!(
        code(client.join(join_request(&token, "w2", "w2")).await),
        Code::Unauthenticated
    );
    assert!(!leader.registered("w2").await);
    // A taken name, even with a fresh token.
    let fresh = leader.token(None, true).await;
    assert_eq!(
        code(client.join(join_request(&fresh, "w1", "w1")).await),
        Code::AlreadyExists
    );
    // A bad name.
    assert_eq!(
        code(client.join(join_request(&fresh, "W_1", "W_1")).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let foreign = ClusterCa::from_pem(&generate_ca("other").unwrap()).unwrap();
    let (key, csr) = node_key_and_csr("w5").unwrap();
    let cert = foreign
        .sign_node_csr(
            &csr,
            "w5",
            "127.0.0.5".parse().unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let result = match leader.client(Some(Identity::from_pem(cert, key))).await {
        Err(_) => Err(()),
        Ok(mut client) => client
            .join(join_request(&token, "w5", "w5"))
            .await
            .map(|_| ())
            .map_err(|_| ()),
    };
    assert!(
        result.is_err(),
        "the TLS handshake refuses a certificate the cluster CA did not sign"
    );
    assert!(!leader.registered("w5").await);

    // Control: the same call with a certificate from the cluster's own CA goes through.
    let ours = ClusterCa::from_pem(&leader.ca).unwrap();
    let (key, csr) = node_key_and_csr("w6").unwrap();
    let cert = ours
        .sign_node_csr(
            &csr,
            "w6",
            "127.0.0.6".parse().unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let mut client = leader
        .client(Some(Identity::from_pem(cert, key)))
        .await
        .unwrap();
    client.join(join_request(&token, "w6", "w6")).await.unwrap();
    assert!(leader.registered("w6").await);
}

#[tokio::test]
async fn a_joined_node_heartbeats_as_itself_only() {
    use kat_actors::state::keys::node_status as node_status_key;
    use kat_proto::v1alpha1::{HeartbeatRequest, NodeState, NodeStatus};
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let mut anonymous = leader.client(None).await.unwrap();
    // Join two nodes, keeping w1's key to present its certificate.
    let (key, joined) = join_keeping_key(&mut anonymous, &token, "w1").await;
    anonymous
        .join(join_request(&token, "w2", "w2"))
        .await
        .unwrap();

    let beat = |node: &str| HeartbeatRequest {
        node_name: node.to_owned(),
        node_status: Some(NodeStatus::default()),
        ..Default::default()
    };
    // Without a client certificate: Unauthenticated.
    let err = anonymous.heartbeat(beat("w1")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    let mut w1 = leader
        .client(Some(Identity::from_pem(joined.certificate_pem, key)))
        .await
        .unwrap();
    let reply = w1.heartbeat(beat("w1")).await.unwrap().into_inner();
    assert!(reply.revision > 0);
    let stored = leader
        .store
        .get(&node_status_key("w1"))
        .await
        .unwrap()
        .expect("status recorded");
    let status = NodeStatus::decode(stored.value.as_slice()).unwrap();
    assert_eq!(status.state(), NodeState::Ready);
    assert!(status.last_heartbeat.is_some());

    // A heartbeat that reports other capacity (a GPU appeared) updates the
    // registration, with an event; the join made one too.
    let events = |reason: &'static str| {
        let store = leader.store.clone();
        async move {
            let (kvs, _) = store.list("/kat/events/").await.unwrap();
            kvs.iter()
                .filter_map(|kv| kat_proto::v1alpha1::Event::decode(kv.value.as_slice()).ok())
                .filter(|e| e.reason == reason)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(events("NodeJoined").await.len(), 2, "w1 and w2 joined");
    let gpu = kat_proto::v1alpha1::NodeResources {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        gpus: vec![kat_proto::v1alpha1::Gpu {
            driver: kat_proto::v1alpha1::GpuDriver::Nvidia.into(),
            model: "RTX 4090".to_owned(),
            vram_mb: 24_564,
            index: 0,
        }],
    };
    let mut with_gpu = beat("w1");
    with_gpu.allocatable = Some(gpu.clone());
    w1.heartbeat(with_gpu.clone()).await.unwrap();
    let node = leader.store.get(&keys::node("w1")).await.unwrap().unwrap();
    let node = kat_proto::v1alpha1::Node::decode(node.value.as_slice()).unwrap();
    let spec = node.spec.unwrap();
    assert_eq!(spec.capacity.as_ref(), Some(&gpu));
    assert_eq!(spec.allocatable.as_ref(), Some(&gpu));
    let changed = events("NodeCapacityChanged").await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].message.contains("RTX 4090"), "{changed:?}");
    w1.heartbeat(with_gpu).await.unwrap();
    assert_eq!(
        events("NodeCapacityChanged").await.len(),
        1,
        "no change, no event"
    );

    // Instance reports: a start, a restart and a failed health check become events of
    // the instance's workload (an instance the leader placed on w1).
    use kat_proto::v1alpha1::instance_status::Health;
    use kat_proto::v1alpha1::{Instance, InstancePhase, InstanceReport, InstanceStatus};
    let placed = Instance {
        id: "a1b2c3d4".to_owned(),
        namespace: "default".to_owned(),
        workload: "web".to_owned(),
        node: "w1".to_owned(),
        ..Default::default()
    };
    leader
        .store
        .put(
            &keys::instance("default", "web", "a1b2c3d4"),
            placed.encode_to_vec(),
            None,
        )
        .await
        .unwrap();
    let report = |phase: InstancePhase, restarts: u32, health: Health| {
        let mut b = beat("w1");
        b.instances = vec![InstanceReport {
            id: "a1b2c3d4".to_owned(),
            namespace: "default".to_owned(),
            workload: "web".to_owned(),
            status: Some(InstanceStatus {
                phase: phase.into(),
                restarts,
                health: health.into(),
                ..Default::default()
            }),
        }];
        b
    };
    w1.heartbeat(report(InstancePhase::Running, 0, Health::Starting))
        .await
        .unwrap();
    w1.heartbeat(report(InstancePhase::Running, 1, Health::Unhealthy))
        .await
        .unwrap();
    w1.heartbeat(report(InstancePhase::Running, 1, Health::Unhealthy))
        .await
        .unwrap();
    let mut failed = report(InstancePhase::Failed, 1, Health::Unhealthy);
    if let Some(st) = failed.instances[0].status.as_mut() {
        st.exit_code = 3;
        st.reason = "Exited".to_owned();
    }
    w1.heartbeat(failed).await.unwrap();
    let found = events("InstanceFailed").await;
    assert!(
        found.len() == 1 && found[0].message.ends_with("failed (exit code 3): Exited"),
        "{found:?}"
    );
    for reason in ["InstanceStarted", "InstanceRestarted", "InstanceUnhealthy"] {
        let found = events(reason).await;
        assert_eq!(found.len(), 1, "{reason}: {found:?}");
        let object = found[0].involved_object.clone().unwrap();
        assert_eq!(
            (
                object.kind.as_str(),
                object.namespace.as_str(),
                object.name.as_str()
            ),
            ("Workload", "default", "web")
        );
        assert!(found[0].message.contains("a1b2c3d4") && found[0].message.contains("w1"));
    }

    // w1's certificate cannot speak for w2.
    let err = w1.heartbeat(beat("w2")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        leader
            .store
            .get(&node_status_key("w2"))
            .await
            .unwrap()
            .is_none(),
        "nothing recorded for w2"
    );
}

#[tokio::test]
async fn node_certs_renews_a_certificate_past_two_thirds_of_its_life() {
    use kat_actors::agent::certs::{NodeCerts, NodeCertsArgs, NodeCertsMsg};
    use kat_actors::agent::link::LeaderLink;
    use kat_actors::agent::link::tls::TlsLeaderLink;
    use kat_actors::pki::ca::validity_of;
    use kat_proto::v1alpha1::RenewCertificateRequest;
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let mut anonymous = leader.client(None).await.unwrap();
    // w1's files: the certificate its join got (a year; NodeCerts's clock runs 300
    // days ahead at first, past two thirds of its life).
    let (key, csr) = node_key_and_csr("w1").unwrap();
    let mut request = join_request(&token, "w1", "w1");
    request.csr_pem = csr.clone();
    let short = anonymous
        .join(request)
        .await
        .unwrap()
        .into_inner()
        .certificate_pem;
    anonymous
        .join(join_request(&token, "w2", "w2"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path(), &leader.ca_pem, &short, &key);
    let target = leader.url.trim_start_matches("https://").to_owned();
    let link = Arc::new(TlsLeaderLink::new(dir.path().to_path_buf()));

    // The RPC itself: w1 may not renew for w2, nor with a CSR naming w2.
    let (_, csr_w2) = node_key_and_csr("w2").unwrap();
    let refused = link
        .renew(
            &target,
            RenewCertificateRequest {
                node_name: "w2".to_owned(),
                csr_pem: csr_w2.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("PermissionDenied"),
        "{refused}"
    );
    let refused = link
        .renew(
            &target,
            RenewCertificateRequest {
                node_name: "w1".to_owned(),
                csr_pem: csr_w2,
            },
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("PermissionDenied"),
        "{refused}"
    );
    // Without a client certificate: Unauthenticated.
    let err = anonymous
        .renew_certificate(RenewCertificateRequest {
            node_name: "w1".to_owned(),
            csr_pem: csr,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let renewed = std::sync::Arc::new(tokio::sync::watch::channel(0).0);
    // NodeCerts's clock, seconds ahead of the real one.
    static AHEAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(300 * 24 * 3600);
    let args = NodeCertsArgs {
        node: "w1".to_owned(),
        pki_dir: dir.path().to_path_buf(),
        targets: vec![target],
        link: link.clone(),
        check_every: Duration::from_secs(3600),
        now: || {
            SystemTime::now()
                + Duration::from_secs(AHEAD.load(std::sync::atomic::Ordering::Relaxed))
        },
        renewed: renewed.clone(),
    };
    let (certs, handle) = ractor::Actor::spawn(None, NodeCerts, args).await.unwrap();
    let mut renewals = 0;
    for _ in 0..100 {
        renewals = ractor::call_t!(certs, NodeCertsMsg::Renewals, 1000).unwrap();
        if renewals > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(renewals, 1);
    assert_eq!(*renewed.borrow(), 1, "the agent API is told to serve it");
    let renewed = std::fs::read_to_string(dir.path().join("node.crt")).unwrap();
    assert_ne!(renewed, short);
    let (from, to) = validity_of(&renewed).unwrap();
    assert!(
        (to - from).whole_days() > 300,
        "a full year: {from} .. {to}"
    );
    assert_ne!(
        std::fs::read_to_string(dir.path().join("node.key")).unwrap(),
        key
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The link uses the new pair at once: a heartbeat as w1 goes through.
    let beat = kat_proto::v1alpha1::HeartbeatRequest {
        node_name: "w1".to_owned(),
        ..Default::default()
    };
    link.heartbeat(leader.url.trim_start_matches("https://"), beat)
        .await
        .unwrap();
    // Not due again (the clock back to now): a second check changes nothing.
    AHEAD.store(0, std::sync::atomic::Ordering::Relaxed);
    certs.cast(NodeCertsMsg::Check).unwrap();
    assert_eq!(
        ractor::call_t!(certs, NodeCertsMsg::Renewals, 1000).unwrap(),
        1
    );
    certs.stop(None);
    handle.await.unwrap();
}

#[tokio::test]
async fn the_sync_stream_sends_peers_and_follows_new_registrations() {
    use kat_actors::agent::link::LeaderLink;
    use kat_actors::agent::link::tls::TlsLeaderLink;
    use kat_proto::v1alpha1::{SyncRequest, sync_event::Payload};
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let mut anonymous = leader.client(None).await.unwrap();
    let (key, joined) = join_keeping_key(&mut anonymous, &token, "w1").await;
    anonymous
        .join(join_request(&token, "w2", "w2"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path(), &leader.ca_pem, &joined.certificate_pem, &key);
    let link = TlsLeaderLink::new(dir.path().to_path_buf());
    let target = leader.url.trim_start_matches("https://");

    // Only for itself.
    let other = link
        .sync(
            target,
            SyncRequest {
                node_name: "w2".to_owned(),
                from_revision: 0,
            },
        )
        .await
        .unwrap_err();
    assert!(other.to_string().contains("PermissionDenied"), "{other}");

    let mut rx = link
        .sync(
            target,
            SyncRequest {
                node_name: "w1".to_owned(),
                from_revision: 0,
            },
        )
        .await
        .unwrap();
    let peers = |event: kat_proto::v1alpha1::SyncEvent| -> Vec<String> {
        match event.payload {
            Some(Payload::Peers(set)) => set.peers.into_iter().map(|p| p.node_name).collect(),
            other => panic!("expected peers, got {other:?}"),
        }
    };
    let first = rx.recv().await.unwrap().unwrap();
    let first_revision = first.revision;
    assert_eq!(peers(first), ["w2"], "every other node, not itself");
    // Then its assignments: none yet.
    match rx.recv().await.unwrap().unwrap().payload {
        Some(Payload::Assignments(set)) => assert!(set.assignments.is_empty()),
        other => panic!("expected assignments, got {other:?}"),
    }
    anonymous
        .join(join_request(&token, "w3", "w3"))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next.revision > first_revision);
    assert_eq!(peers(next), ["w2", "w3"]);
}

#[tokio::test]
async fn the_user_api_wants_a_valid_bearer_token_before_anything_else() {
    use kat_proto::v1alpha1::user_api_client::UserApiClient;
    use kat_proto::v1alpha1::{ListBackupsRequest, ListWorkloadsRequest};
    let leader = leader().await;
    // An API token as init creates it, and a join token (the wrong kind).
    let (api_token, record) =
        tokens::generate(TokenKind::Api, None, true, "admin", SystemTime::now()).unwrap();
    leader
        .store
        .put(
            &keys::token(TokenKind::Api, &record.id),
            record.encode_to_vec(),
            None,
        )
        .await
        .unwrap();
    let join_token = leader.token(None, true).await;
    for bad in [
        None,
        Some("garbage".to_owned()),
        Some("0123456789ab.0123456789abcdef0123456789abcdef".to_owned()),
        Some(join_token.clone()),
    ] {
        let err = list_nodes_as(&leader, bad.as_deref()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}");
        assert_eq!(err.message(), "missing or invalid API token");
    }
    let nodes = list_nodes_as(&leader, Some(&api_token))
        .await
        .unwrap()
        .into_inner();
    assert!(nodes.items.is_empty());

    // A call not built yet still checks the token first.
    let mut client = UserApiClient::new(
        kat_actors::client::api_channel(
            leader.url.trim_start_matches("https://"),
            &leader.ca_pem,
            None,
        )
        .unwrap(),
    );
    let err = client
        .list_backups(ListBackupsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(ListBackupsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {api_token}").parse().unwrap(),
    );
    // With the token the call goes through (the store here is in memory: no backups).
    assert!(client.list_backups(request).await.is_ok());
    // Workloads, without and with the token.
    let err = client
        .list_workloads(ListWorkloadsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(ListWorkloadsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {api_token}").parse().unwrap(),
    );
    assert!(
        client
            .list_workloads(request)
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
}

async fn list_nodes_as(
    leader: &Leader,
    token: Option<&str>,
) -> Result<tonic::Response<kat_proto::v1alpha1::ListNodesResponse>, tonic::Status> {
    use kat_proto::v1alpha1::ListNodesRequest;
    use kat_proto::v1alpha1::user_api_client::UserApiClient;
    let channel = kat_actors::client::api_channel(
        leader.url.trim_start_matches("https://"),
        &leader.ca_pem,
        None,
    )
    .unwrap();
    let mut request = tonic::Request::new(ListNodesRequest {});
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    UserApiClient::new(channel).list_nodes(request).await
}

#[tokio::test]
async fn a_call_to_a_just_elected_leader_waits_for_its_leader_services() {
    // n0 holds the election; its context arrives 2 s after the server listens. A join
    // in between is served once it is there, not sent back to n0 itself.
    let leader = leader_starting_for(Some(Duration::from_secs(2))).await;
    let token = leader.token(None, false).await;
    let mut client = leader.client(None).await.unwrap();
    let (_key, joined) = join_keeping_key(&mut client, &token, "w1").await;
    assert!(!joined.certificate_pem.is_empty());
    assert!(leader.registered("w1").await);
}

#[tokio::test]
async fn a_member_that_does_not_lead_points_to_the_leader() {
    use kat_actors::agent::link::tls::TlsLeaderLink;
    use kat_actors::agent::link::{LeaderLink, LinkError};
    use kat_actors::client::LEADER_API_METADATA;
    use kat_actors::leader::new_api_slot;
    use kat_proto::v1alpha1::HeartbeatRequest;
    // The store knows a leader, n0, whose API is at 127.0.0.9:1234 ...
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    election::campaign(store.as_ref(), "/kat/election", b"n0".to_vec(), lease.id)
        .await
        .unwrap();
    store
        .put(
            &kat_actors::state::keys::control_plane("n0"),
            b"127.0.0.9:1234".to_vec(),
            None,
        )
        .await
        .unwrap();
    // ... and this member's server has no leader context.
    let ca = generate_ca("follower").unwrap();
    let signer = ClusterCa::from_pem(&ca).unwrap();
    let server_cert = signer
        .issue_server_cert(
            &[],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let served = Served {
        slot: new_api_slot(),
        store,
        ca_pem: ca.cert_pem.clone(),
        node: "follower".to_owned(),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = ServingCert::new(&server_cert, &ca.cert_pem).unwrap();
    tokio::spawn(async move {
        let _ = serve(listener, serving, served, async {
            let _ = stopped.await;
        })
        .await;
    });
    // An agent's heartbeat is told where the leader is.
    let (key, csr) = node_key_and_csr("w1").unwrap();
    let cert = signer
        .sign_node_csr(
            &csr,
            "w1",
            "127.0.0.1".parse().unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path(), &ca.cert_pem, &cert, &key);
    let link = TlsLeaderLink::new(dir.path().to_path_buf());
    let beat = HeartbeatRequest {
        node_name: "w1".to_owned(),
        ..Default::default()
    };
    let mut answer = Err(LinkError::Unreachable("not tried".to_owned()));
    for _ in 0..50 {
        answer = link.heartbeat(&addr.to_string(), beat.clone()).await;
        if !matches!(answer, Err(LinkError::Unreachable(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match answer {
        Err(LinkError::NotLeader(leader)) => assert_eq!(leader, "127.0.0.9:1234"),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // So is an anonymous join, in the message and the metadata.
    let mut client = NodeApiClient::new(
        kat_actors::client::api_channel(&addr.to_string(), &ca.cert_pem, None).unwrap(),
    );
    let err = client
        .join(join_request("x", "w2", "w2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .contains("the leader's API is at 127.0.0.9:1234"),
        "{err}"
    );
    assert_eq!(
        err.metadata().get(LEADER_API_METADATA).unwrap(),
        "127.0.0.9:1234"
    );
}

/// A node's `DIR/pki` as `TlsLeaderLink` reads it.
fn write_pki(dir: &std::path::Path, ca_pem: &str, cert_pem: &str, key_pem: &str) {
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.join("node.crt"), cert_pem).unwrap();
    std::fs::write(dir.join("node.key"), key_pem).unwrap();
}

/// Joins `name` with a CSR made here; returns the node's key and the answer.
async fn join_keeping_key(
    client: &mut NodeApiClient<Channel>,
    token: &str,
    name: &str,
) -> (String, kat_proto::v1alpha1::JoinResponse) {
    let (key, csr) = node_key_and_csr(name).unwrap();
    let mut request = join_request(token, name, name);
    request.csr_pem = csr;
    (key, client.join(request).await.unwrap().into_inner())
}

/// Heartbeat, Sync and Renew of `node` over `link`: the error text of each, or "ok".
async fn node_calls(
    link: &kat_actors::agent::link::tls::TlsLeaderLink,
    target: &str,
    node: &str,
) -> [String; 3] {
    use kat_actors::agent::link::LeaderLink;
    use kat_proto::v1alpha1::{HeartbeatRequest, RenewCertificateRequest, SyncRequest};
    let text = |r: Result<(), kat_actors::agent::link::LinkError>| {
        r.map_or_else(|e| e.to_string(), |()| "ok".to_owned())
    };
    let beat = HeartbeatRequest {
        node_name: node.to_owned(),
        ..Default::default()
    };
    let sync = SyncRequest {
        node_name: node.to_owned(),
        ..Default::default()
    };
    let (_, csr) = node_key_and_csr(node).unwrap();
    let renew = RenewCertificateRequest {
        node_name: node.to_owned(),
        csr_pem: csr,
    };
    [
        text(link.heartbeat(target, beat).await.map(|_| ())),
        text(link.sync(target, sync).await.map(|_| ())),
        text(link.renew(target, renew).await.map(|_| ())),
    ]
}

#[tokio::test]
async fn a_deleted_or_joined_again_nodes_old_certificate_is_refused() {
    use kat_actors::agent::link::tls::TlsLeaderLink;
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let target = leader.url.trim_start_matches("https://").to_owned();
    let mut anonymous = leader.client(None).await.unwrap();
    let (key, joined) = join_keeping_key(&mut anonymous, &token, "w1").await;
    let first = tempfile::tempdir().unwrap();
    write_pki(first.path(), &leader.ca_pem, &joined.certificate_pem, &key);
    let old = TlsLeaderLink::new(first.path().to_path_buf());
    assert_eq!(node_calls(&old, &target, "w1").await, ["ok", "ok", "ok"]);

    // Deleted: a sync stream it has open ends, and every call with its certificate
    // fails.
    let mut open = {
        use kat_actors::agent::link::LeaderLink;
        let request = kat_proto::v1alpha1::SyncRequest {
            node_name: "w1".to_owned(),
            ..Default::default()
        };
        old.sync(&target, request).await.unwrap()
    };
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(300), open.recv()).await
    {
    }
    leader.store.delete(&keys::node("w1")).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), open.recv())
        .await
        .expect("the stream ends within 5 s");
    assert!(
        matches!(&ended, Some(Err(e)) if e.to_string().contains("NotFound")),
        "{ended:?}"
    );
    for refused in node_calls(&old, &target, "w1").await {
        assert!(refused.contains("NotFound"), "{refused}");
    }

    // Joined again (a new key): the old holder is refused, the new one served.
    let (key, joined) = join_keeping_key(&mut anonymous, &token, "w1").await;
    let second = tempfile::tempdir().unwrap();
    write_pki(second.path(), &leader.ca_pem, &joined.certificate_pem, &key);
    let new = TlsLeaderLink::new(second.path().to_path_buf());
    for refused in node_calls(&old, &target, "w1").await {
        assert!(
            refused.contains("Unauthenticated") && refused.contains("replaced or revoked"),
            "{refused}"
        );
    }
    // (Its renewal above was refused, so the new certificate is still current.)
    assert_eq!(node_calls(&new, &target, "w1").await, ["ok", "ok", "ok"]);
    // That renewal listed the key it renewed from: the second certificate is still
    // accepted (the node may not have written the new pair yet); the first is not.
    let [beat, _, _] = node_calls(&new, &target, "w1").await;
    assert_eq!(beat, "ok");
    assert!(node_calls(&old, &target, "w1").await[0].contains("Unauthenticated"));
}

#[tokio::test]
async fn a_join_claims_only_its_own_unused_address() {
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let mut anonymous = leader.client(None).await.unwrap();
    let first = join_request(&token, "w1", "w1");
    let taken = first.advertise_address.clone();
    anonymous.join(first).await.unwrap();

    // An address another node has: refused, and nothing registered.
    let mut second = join_request(&token, "w2", "w2");
    second.advertise_address = taken.clone();
    let refused = anonymous.join(second).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused}");
    assert!(
        refused.message().contains(&taken) && refused.message().contains("\"w1\""),
        "{refused}"
    );
    // An address that is not where the join comes from (the leader's own, say):
    // refused, so no join token buys a certificate for another host's address.
    let mut third = join_request(&token, "w3", "w3");
    third.advertise_address = "192.0.2.7".to_owned();
    let refused = anonymous.join(third).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(
        refused
            .message()
            .contains("not the address this join came from"),
        "{refused}"
    );
    assert!(!leader.registered("w2").await && !leader.registered("w3").await);
}

#[tokio::test]
async fn clients_take_only_an_api_server_certificate_for_the_api() {
    // A server at 127.0.0.1 presenting a node certificate for 127.0.0.1 (what any
    // node with that address holds), signed by the cluster CA.
    let (ca, node_cert) = ca_and_node_cert("impostor", "w1");
    let (addr, _) = tls_only_server(&node_cert, &ca.cert_pem).await;
    let channel = kat_actors::client::api_channel(&addr.to_string(), &ca.cert_pem, None).unwrap();
    let refused = NodeApiClient::new(channel)
        .join(join_request("x", "w2", "w2"))
        .await
        .unwrap_err();
    let why = format!("{refused:?}");
    assert!(why.contains("NotValidForName"), "{why}");

    // The leader reaching node w2's agent API takes only w2's certificate: w1's, at
    // the address on record, does not pass.
    let channel = kat_actors::client::agent_channel(
        &addr.to_string(),
        &ca.cert_pem,
        &node_cert,
        Duration::from_secs(5),
        "w2",
    )
    .unwrap();
    let refused = kat_proto::v1alpha1::agent_api_client::AgentApiClient::new(channel)
        .exec(kat_proto::v1alpha1::ExecRequest::default())
        .await
        .unwrap_err();
    let why = format!("{refused:?}");
    assert!(why.contains("NotValidForName"), "{why}");
}

#[tokio::test]
async fn what_a_node_says_about_itself_at_join_is_checked() {
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let mut anonymous = leader.client(None).await.unwrap();
    let mut bad_label = join_request(&token, "w1", "w1");
    bad_label
        .labels
        .insert("zone".to_owned(), "\u{1b}[31mred".to_owned());
    let refused = anonymous.join(bad_label).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("labels"), "{refused}");

    let mut huge = join_request(&token, "w1", "w1");
    huge.capacity = Some(kat_proto::v1alpha1::NodeResources {
        cpu_millis: 1 << 50,
        memory_bytes: 1 << 30,
        gpus: Vec::new(),
    });
    let refused = anonymous.join(huge).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("capacity"), "{refused}");
    assert!(!leader.registered("w1").await);
}

/// Renews w1's certificate through `link` at `target`: a link presenting the new one
/// (its files in the returned directory).
async fn renew_w1(
    link: &kat_actors::agent::link::tls::TlsLeaderLink,
    target: &str,
    ca_pem: &str,
) -> (
    kat_actors::agent::link::tls::TlsLeaderLink,
    tempfile::TempDir,
) {
    use kat_actors::agent::link::LeaderLink;
    let (key, csr) = node_key_and_csr("w1").unwrap();
    let renewed = link
        .renew(
            target,
            kat_proto::v1alpha1::RenewCertificateRequest {
                node_name: "w1".to_owned(),
                csr_pem: csr,
            },
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_pki(dir.path(), ca_pem, &renewed.certificate_pem, &key);
    let renewed_link = kat_actors::agent::link::tls::TlsLeaderLink::new(dir.path().to_path_buf());
    (renewed_link, dir)
}

#[tokio::test]
async fn once_a_node_uses_its_renewed_certificate_the_old_one_stops_working() {
    use kat_actors::agent::link::tls::TlsLeaderLink;
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let target = leader.url.trim_start_matches("https://").to_owned();
    let mut anonymous = leader.client(None).await.unwrap();
    let (key, joined) = join_keeping_key(&mut anonymous, &token, "w1").await;
    let first = tempfile::tempdir().unwrap();
    write_pki(first.path(), &leader.ca_pem, &joined.certificate_pem, &key);
    let old = TlsLeaderLink::new(first.path().to_path_buf());
    let (new, _second) = renew_w1(&old, &target, &leader.ca_pem).await;
    // Until the node shows a new one, the old one still works (it may have crashed
    // before writing the new pair), and may even renew again: as after such a crash.
    assert_eq!(node_calls(&old, &target, "w1").await[0], "ok");
    let (current, _third) = renew_w1(&old, &target, &leader.ca_pem).await;
    // The node heartbeats with its newest certificate: from then on the one it
    // renewed from (the first) is refused, as is the one no one used.
    let [beat, _, _] = node_calls(&current, &target, "w1").await;
    assert_eq!(beat, "ok");
    for link in [&old, &new] {
        let refused = node_calls(link, &target, "w1").await[0].clone();
        assert!(refused.contains("replaced or revoked"), "{refused}");
    }
    assert_eq!(node_calls(&current, &target, "w1").await[0], "ok");
}

#[tokio::test]
async fn a_node_named_with_digits_only_is_reached_by_its_address() {
    // TLS cannot check "42" as a DNS name: the leader checks the node's address.
    let (ca, cert) = ca_and_node_cert("digits", "42");
    let (addr, handshakes) = tls_only_server(&cert, &ca.cert_pem).await;
    let channel = kat_actors::client::agent_channel(
        &addr.to_string(),
        &ca.cert_pem,
        &cert,
        Duration::from_secs(2),
        "42",
    )
    .unwrap();
    // Nothing serves the agent API there: the call fails, but after a handshake the
    // client accepted.
    let _ = kat_proto::v1alpha1::agent_api_client::AgentApiClient::new(channel)
        .exec(kat_proto::v1alpha1::ExecRequest::default())
        .await;
    let done = || handshakes.load(std::sync::atomic::Ordering::Relaxed) > 0;
    for _ in 0..50 {
        if done() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done(), "the TLS handshake completed");
}

/// A new CA and a certificate it signed for node `node` at 127.0.0.1.
fn ca_and_node_cert(
    ca_name: &str,
    node: &str,
) -> (
    kat_actors::pki::ca::CertAndKey,
    kat_actors::pki::ca::CertAndKey,
) {
    let ca = generate_ca(ca_name).unwrap();
    let (key_pem, csr) = node_key_and_csr(node).unwrap();
    let cert_pem = ClusterCa::from_pem(&ca)
        .unwrap()
        .sign_node_csr(
            &csr,
            node,
            "127.0.0.1".parse().unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    (ca, kat_actors::pki::ca::CertAndKey { cert_pem, key_pem })
}

/// A TLS server at 127.0.0.1 presenting `cert` that serves nothing: its address and
/// how many handshakes it completed (connections are held until the test ends).
async fn tls_only_server(
    cert: &kat_actors::pki::ca::CertAndKey,
    ca_pem: &str,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use kat_actors::listener::{ClientAuth, ConnectionLimits, incoming, server_config};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server_config(
        ServingCert::new(cert, "").unwrap(),
        ca_pem,
        ClientAuth::Optional,
    )
    .unwrap();
    let mut accepted = incoming(listener, config, ConnectionLimits::default());
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(conn) = tonic::codegen::tokio_stream::StreamExt::next(&mut accepted).await {
            if conn.is_ok() {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            held.push(conn);
        }
    });
    (addr, handshakes)
}

#[tokio::test]
async fn a_heartbeat_is_bounded_and_a_flood_of_them_is_not_all_recorded() {
    use kat_proto::v1alpha1::{HeartbeatRequest, NodeCondition, NodeStatus};
    let leader = leader().await;
    let token = leader.token(None, true).await;
    let mut anonymous = leader.client(None).await.unwrap();
    let (key, joined) = join_keeping_key(&mut anonymous, &token, "w1").await;
    let mut w1 = leader
        .client(Some(Identity::from_pem(joined.certificate_pem, key)))
        .await
        .unwrap();
    let condition = |message: String| NodeCondition {
        r#type: "DiskPressure".to_owned(),
        status: true,
        message,
        ..Default::default()
    };
    let beat = |conditions: Vec<NodeCondition>| HeartbeatRequest {
        node_name: "w1".to_owned(),
        node_status: Some(NodeStatus {
            conditions,
            ..Default::default()
        }),
        ..Default::default()
    };
    // 1 MiB in one heartbeat: refused before it is decoded.
    let err = w1
        .heartbeat(beat(vec![condition("x".repeat(1 << 20))]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    // More conditions than any node has: refused, naming the field.
    let err = w1
        .heartbeat(beat((0..17).map(|i| condition(i.to_string())).collect()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("node_status.conditions"), "{err}");
    // A long message is stored cut.
    w1.heartbeat(beat(vec![condition("y".repeat(100_000))]))
        .await
        .unwrap();
    let stored = leader
        .store
        .get(&keys::node_status("w1"))
        .await
        .unwrap()
        .unwrap();
    let status = NodeStatus::decode(stored.value.as_slice()).unwrap();
    assert!(status.conditions[0].message.len() <= 1024);
    // A flood of changing heartbeats: a burst is recorded, the rest only heard.
    let (_, before) = leader.store.list("/kat/status/").await.unwrap();
    for i in 0..50 {
        w1.heartbeat(beat(vec![condition(format!("flood {i}"))]))
            .await
            .unwrap();
    }
    let (_, after) = leader.store.list("/kat/status/").await.unwrap();
    let written = after - before;
    assert!(written <= 10, "{written} revisions for 50 heartbeats");
}

#[tokio::test]
async fn a_nodes_new_sync_stream_ends_its_old_one() {
    use kat_actors::leader::sync::sync_events;
    use kat_proto::v1alpha1::{Instance, SyncRequest, sync_event::Payload};
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let key = election::campaign(store.as_ref(), "/kat/election", b"n0".to_vec(), lease.id)
        .await
        .unwrap();
    let ctx = LeaderContext::new(
        Leadership::new("n0", key, store.clone()),
        kat_actors::pki::local::ClusterPki::generate("sync").unwrap(),
        kat_proto::quadlet::ClusterSettings::from(&cluster_config("sync", 1)),
    );
    let request = || SyncRequest {
        node_name: "w1".to_owned(),
        from_revision: 0,
    };
    let mut first = sync_events(&ctx, "w1", None, request()).await.unwrap();
    // Peers, then assignments, come first.
    for _ in 0..2 {
        first.recv().await.unwrap().unwrap();
    }
    let mut second = sync_events(&ctx, "w1", None, request()).await.unwrap();
    let ended = loop {
        match first.recv().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e.to_string(),
            None => panic!("ended without saying why"),
        }
    };
    assert!(ended.contains("replaced"), "{ended}");
    assert_eq!(ctx.syncs.len(), 1, "one stream per node");
    for _ in 0..2 {
        second.recv().await.unwrap().unwrap();
    }
    // An instance placed on another node sends w1 nothing (its stream does not even
    // list the instances); one placed on w1 does.
    let instance = |id: &str, node: &str| Instance {
        id: id.to_owned(),
        namespace: "default".to_owned(),
        workload: "web".to_owned(),
        node: node.to_owned(),
        ..Default::default()
    };
    store
        .put(
            &keys::instance("default", "web", "aaaa1111"),
            instance("aaaa1111", "w2").encode_to_vec(),
            None,
        )
        .await
        .unwrap();
    store
        .put(&keys::revision("default", "web", 0), b"".to_vec(), None)
        .await
        .unwrap();
    store
        .put(
            &keys::instance("default", "web", "bbbb2222"),
            instance("bbbb2222", "w1").encode_to_vec(),
            None,
        )
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), second.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match next.payload {
        Some(Payload::Assignments(set)) => {
            let ids: Vec<String> = set
                .assignments
                .iter()
                .filter_map(|a| a.instance.as_ref().map(|i| i.id.clone()))
                .collect();
            assert_eq!(ids, ["bbbb2222"]);
        }
        other => panic!("{other:?}"),
    }
    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ctx.syncs.is_empty(), "a stream that ends is forgotten");
}
