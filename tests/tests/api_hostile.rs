//! The API against clients that never authenticate (issue 14, high 4): the token is
//! checked before a body is read (REST and gRPC), so a client without one is refused
//! at once however much body it announces, and the API keeps answering. Served over
//! real TLS on loopback from an in-memory store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kat_actors::api::{Served, serve};
use kat_actors::leader::LeaderContext;
use kat_actors::listener::ServingCert;
use kat_actors::pki::ca::{ClusterCa, generate_ca};
use kat_actors::pki::tokens;
use kat_actors::state::{Leadership, keys};
use kat_actors::store::election;
use kat_actors::store::{MemoryStore, StateStore};
use kat_proto::v1alpha1::TokenKind;
use kat_tests::cluster::cluster_config;
use kat_tests::programs::free_port;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Api {
    addr: SocketAddr,
    ca_pem: String,
    token: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn api() -> Api {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let key = election::campaign(store.as_ref(), "/kat/election", b"n0".to_vec(), lease.id)
        .await
        .unwrap();
    let ca = generate_ca("hostile").unwrap();
    let server_cert = ClusterCa::from_pem(&ca)
        .unwrap()
        .issue_server_cert(
            &["kat-api".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let (token, record) =
        tokens::generate(TokenKind::Api, None, true, "test", SystemTime::now()).unwrap();
    store
        .put(
            &keys::token(TokenKind::Api, &record.id),
            record.encode_to_vec(),
            None,
        )
        .await
        .unwrap();
    let ctx = LeaderContext::new(
        Leadership::new("n0", key, store.clone()),
        kat_actors::pki::local::ClusterPki {
            cluster: ca.clone(),
            etcd: None,
        },
        kat_proto::quadlet::ClusterSettings::from(&cluster_config("hostile", 1)),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = ServingCert::new(&server_cert, &ca.cert_pem).unwrap();
    tokio::spawn(async move {
        let _ = serve(listener, serving, Served::leading(ctx), async {
            let _ = stopped.await;
        })
        .await;
    });
    Api {
        addr,
        ca_pem: ca.cert_pem,
        token,
        _stop: stop,
    }
}

impl Api {
    /// A gRPC channel to the API, trusting the cluster CA (connected at first use).
    fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
                    .domain_name("127.0.0.1"),
            )
            .unwrap()
            .connect_lazy()
    }

    /// A TLS connection trusting the cluster CA, offering `alpn`.
    async fn tls(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tcp = None;
        for _ in 0..100 {
            if let Ok(t) = tokio::net::TcpStream::connect(self.addr).await {
                tcp = Some(t);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp.unwrap())
            .await
            .unwrap()
    }

    /// The status line of the answer to `head` (sent with `body_part` of its body
    /// and nothing more), or why there was none within `within`.
    async fn http1_status(&self, head: &str, body_part: &[u8], within: Duration) -> String {
        let mut tls = self.tls(b"http/1.1").await;
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(body_part).await.unwrap();
        let mut answer = vec![0u8; 256];
        match tokio::time::timeout(within, tls.read(&mut answer)).await {
            Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&answer[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            Ok(other) => format!("closed: {other:?}"),
            Err(_) => format!("no answer within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_token_is_refused_before_its_body_is_read() {
    let api = api().await;
    let within = Duration::from_secs(3);
    let started = Instant::now();

    // REST: 5 MB announced (over every body limit), 1 KiB of it sent, no token: 401
    // at once, not 400 after reading, and not a wait for the rest.
    let head = "POST /v1alpha1/n/default/workloads HTTP/1.1\r\nHost: kat\r\n\
                Content-Type: application/gzip\r\nContent-Length: 5000000\r\n\r\n";
    let status = api.http1_status(head, &[0u8; 1024], within).await;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    // A wrong token, the same; a query string is not parsed first either.
    let head = "PUT /v1alpha1/nodes/n1/labels?x=%ZZ HTTP/1.1\r\nHost: kat\r\n\
                Authorization: Bearer nope.nope\r\nContent-Length: 5000000\r\n\r\n";
    let status = api.http1_status(head, b"{", within).await;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    // An unknown path needs a token too; the public ones do not.
    let status = api
        .http1_status("GET /nowhere HTTP/1.1\r\nHost: kat\r\n\r\n", b"", within)
        .await;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    let status = api
        .http1_status("GET /healthz HTTP/1.1\r\nHost: kat\r\n\r\n", b"", within)
        .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // With the token, the body is judged: too large by its length alone.
    let head = format!(
        "POST /v1alpha1/n/default/workloads HTTP/1.1\r\nHost: kat\r\n\
         Authorization: Bearer {}\r\nContent-Length: 5000000\r\n\r\n",
        api.token
    );
    let status = api.http1_status(&head, &[0u8; 1024], within).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");

    // gRPC: a call whose request stream never ends, without a token: Unauthenticated
    // at once.
    let channel = api.channel();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    use tokio_stream::StreamExt;
    let endless = tokio_stream::iter([kat_proto::v1alpha1::ListNodesRequest::default()])
        .chain(tokio_stream::pending());
    let call = grpc.client_streaming::<
        _,
        kat_proto::v1alpha1::ListNodesRequest,
        kat_proto::v1alpha1::ListNodesResponse,
        _,
    >(
        tonic::Request::new(endless),
        "/kat.v1alpha1.UserApi/ListNodes".parse().unwrap(),
        tonic_prost::ProstCodec::default(),
    );
    let answer = tokio::time::timeout(within, call).await;
    match answer {
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}"),
        other => panic!("expected Unauthenticated at once, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Whether the server closed `tcp` (EOF or reset) within `within`.
async fn closed_by_server(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_from_one_address_leaves_the_api_answering() {
    // Client and server sides of the flood share this process's descriptors.
    kat_actors::procedures::run::raise_open_file_limit();
    let api = api().await;
    // Wait until it listens.
    drop(api.tls(b"http/1.1").await);
    let per_source = kat_actors::listener::ConnectionLimits::default().per_source;

    // 1,000 connections from 127.0.0.9 that never send a byte.
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.push(connect_from([127, 0, 0, 9], api.addr).await.unwrap());
    }
    let mut refused = 0;
    for tcp in &mut flood {
        if closed_by_server(tcp, Duration::from_millis(20)).await {
            refused += 1;
        }
    }
    assert!(
        refused >= 1000 - per_source,
        "only {refused} of 1000 closed; {per_source} may stay"
    );

    // 100 bodies of 4 MiB announced and left trickling, without a token (each
    // answered 401 without being read).
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut tls = api.tls(b"http/1.1").await;
        tls.write_all(
            b"POST /v1alpha1/n/default/workloads HTTP/1.1\r\nHost: kat\r\nContent-Length: 4194304\r\n\r\nx",
        )
        .await
        .unwrap();
        slow.push(tls);
    }

    // Meanwhile an admin from another address is answered at once.
    let head = format!(
        "GET /v1alpha1/nodes HTTP/1.1\r\nHost: kat\r\nAuthorization: Bearer {}\r\n\r\n",
        api.token
    );
    let started = Instant::now();
    let status = api.http1_status(&head, b"", Duration::from_secs(1)).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    eprintln!("answered in {:?} under the flood", started.elapsed());
    // And the node API: a join (with a wrong token) is answered within 1 s too.
    let started = Instant::now();
    let channel = api.channel();
    let refused = tokio::time::timeout(
        Duration::from_secs(1),
        kat_proto::v1alpha1::node_api_client::NodeApiClient::new(channel).join(
            kat_proto::v1alpha1::JoinRequest {
                token: "nope".to_owned(),
                node_name: "w1".to_owned(),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("the node API answers within 1 s under the flood")
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    eprintln!("node API answered in {:?}", started.elapsed());
    drop(slow);
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_calls_need_a_certificate_and_joins_are_small() {
    use kat_proto::v1alpha1::node_api_client::NodeApiClient;
    use kat_proto::v1alpha1::{HeartbeatRequest, JoinRequest};
    let api = api().await;
    drop(api.tls(b"h2").await);
    let channel = api.channel();
    let mut node = NodeApiClient::new(channel);
    // No certificate: refused before the (large) body is decoded.
    let big = HeartbeatRequest {
        node_name: "x".repeat(3 << 20),
        ..Default::default()
    };
    let refused = node.heartbeat(big).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    // A join of 1 MiB is not read to its end; a small one reaches the handler (and
    // is refused there for its token).
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("big".to_owned(), "x".repeat(1 << 20));
    let refused = node
        .join(JoinRequest {
            node_name: "w1".to_owned(),
            token: "nope".to_owned(),
            labels,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("at most 64 KiB"),
        "{:?}: {}",
        refused.code(),
        refused.message()
    );
    let refused = node
        .join(JoinRequest {
            node_name: "w1".to_owned(),
            token: "nope".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_reusable_until_they_expire() {
    use kat_proto::v1alpha1::user_api_client::UserApiClient;
    use kat_proto::v1alpha1::{CreateTokenRequest, ListNodesRequest};
    let api = api().await;
    drop(api.tls(b"h2").await);
    let channel = api.channel();
    let mut users = UserApiClient::new(channel);
    fn with<T>(token: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }
    // Asked for single use and 2 s: recorded reusable, valid for 2 s.
    let made = users
        .create_api_token(with(
            &api.token,
            CreateTokenRequest {
                ttl_seconds: 2,
                reusable: false,
                description: "test".to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(made.expires_at.is_some());
    for _ in 0..3 {
        users
            .list_nodes(with(&made.token, ListNodesRequest {}))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = users
        .list_nodes(with(&made.token, ListNodesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}
