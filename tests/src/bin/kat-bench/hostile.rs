//! `kat-bench hostile`: the leader under clients that never authenticate (issue 14,
//! high 4). `kat-agent init` as leader; first idle, then with 1,000 TCP connections
//! that never send a byte (from 127.0.0.9 – 127.0.0.16, so both the per-source and
//! the total limit are reached) and 100 TLS requests without a token that announce a
//! 4 MiB body and trickle it a byte a second (from 127.0.0.20). Measured in both
//! phases: the leader's RSS and open descriptors, and the latency of `ListNodes` on
//! a fresh connection each time (what `katcall get nodes` does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kat_actors::client::api_channel;
use kat_proto::v1alpha1::ListNodesRequest;
use kat_proto::v1alpha1::user_api_client::UserApiClient;
use tokio::io::AsyncWriteExt;

use super::{Leader, mib, open_files, quantile, usage};

async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// `rounds` calls of ListNodes, each on a new connection: sorted latencies (ms) and
/// failures.
async fn list_latencies(leader: &Leader, rounds: usize) -> (Vec<f64>, usize) {
    let mut took = Vec::new();
    let mut failed = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let channel = api_channel(&leader.addr, &leader.ca_pem, None).unwrap();
        let mut users = UserApiClient::new(channel);
        match users.list_nodes(leader.authed(ListNodesRequest {})).await {
            Ok(_) => took.push(started.elapsed().as_secs_f64() * 1000.0),
            Err(e) => {
                failed += 1;
                eprintln!("ListNodes: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took.sort_by(f64::total_cmp);
    (took, failed)
}

fn report(phase: &str, leader: &Leader, took: &[f64], failed: usize) {
    let (rss, _) = usage(leader.pid());
    println!(
        "{phase:<24} leader RSS {:.1} MiB, {} descriptors; ListNodes p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {failed} failed",
        mib(rss),
        open_files(leader.pid()),
        quantile(took, 0.5),
        quantile(took, 0.99),
        took.last().copied().unwrap_or_default(),
    );
}

fn tls_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub async fn hostile(agent: &std::path::Path, rounds: usize) {
    let leader = Leader::start(agent).await;
    let addr: SocketAddr = leader.addr.parse().unwrap();
    // Let the API come up and settle.
    let ready = Instant::now();
    while list_latencies(&leader, 1).await.1 > 0 {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "API never answered"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, idle_failed) = list_latencies(&leader, rounds).await;
    report("idle", &leader, &idle, idle_failed);

    let mut flood = Vec::new();
    let mut not_connected = 0;
    for i in 0..1000u32 {
        let last = 9 + u8::try_from(i % 8).unwrap();
        match connect_from([127, 0, 0, last], addr).await {
            Ok(tcp) => flood.push(tcp),
            Err(_) => not_connected += 1,
        }
    }
    let connector = tokio_rustls::TlsConnector::from(tls_config(&leader.ca_pem));
    let mut slow = Vec::new();
    for _ in 0..100 {
        let tcp = connect_from([127, 0, 0, 20], addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let Ok(mut tls) = connector.connect(name, tcp).await else {
            continue;
        };
        let head = b"POST /v1alpha1/n/default/workloads HTTP/1.1\r\nHost: kat\r\nContent-Length: 4194304\r\n\r\n";
        if tls.write_all(head).await.is_ok() {
            slow.push(tls);
        }
    }
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for tls in &mut slow {
                let _ = tls.write_all(b"x").await;
            }
        }
    });
    println!(
        "attack                   {} idle connections opened ({not_connected} not), 100 slow bodies",
        flood.len()
    );
    let (attacked, attacked_failed) = list_latencies(&leader, rounds).await;
    report("under attack", &leader, &attacked, attacked_failed);
    trickle.abort();
    drop(flood);
}
