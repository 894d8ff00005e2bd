//! Only control-plane members reach etcd (issue 14, critical 1): etcd trusts the etcd
//! CA, which signs members' etcd certificates and nothing else, so a worker's
//! certificate — which every worker holds, and which anyone who steals one has — is
//! refused on etcd's client port and on its peer port; and the cluster CA's key is not
//! in etcd. Against `kat-agent init` and `kat-agent join` with real etcd and TLS; every
//! agent is stopped by PID when its guard drops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Agent, api_port, cluster_file, init_args, join_args};
use kat_actors::store::{EtcdStore, EtcdTls, StateStore};
use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::CertificateAuthority;
use kat_tests::programs::find_program;
use prost::Message;

fn settings(config: &Path) -> ClusterSettings {
    let text = std::fs::read(config).unwrap();
    let cluster = kat_proto::quadlet::parse_cluster_config("cluster.kat", &text).unwrap();
    ClusterSettings::from(&cluster)
}

/// `/kat/pki/ca` as etcd answers a client presenting `cert`/`key` and trusting `ca`.
async fn read_ca_record(
    endpoint: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Vec<u8>, String> {
    let tls = EtcdTls {
        ca_file: ca.to_path_buf(),
        cert_file: cert.to_path_buf(),
        key_file: key.to_path_buf(),
    };
    let store = EtcdStore::connect_tls(&[endpoint.to_owned()], Duration::from_secs(5), Some(&tls))
        .await
        .map_err(|e| e.to_string())?;
    let kv = tokio::time::timeout(Duration::from_secs(10), store.get("/kat/pki/ca"))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(kv.map(|kv| kv.value).unwrap_or_default())
}

/// What etcd's peer port answers a TLS client presenting `cert`/`key`: the first
/// bytes of its HTTP answer, or why there was none.
async fn talk_to_peer_port(
    addr: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let talk = async {
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = vec![0u8; 64];
        let n = tls
            .read(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed without an answer".to_owned());
        }
        Ok(String::from_utf8_lossy(&answer[..n]).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

#[test]
fn a_workers_certificate_opens_neither_etcd_port_and_the_ca_key_is_not_in_etcd() {
    if find_program("etcd").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file(dir.path());
    let s = settings(&config);
    let leader = format!("127.0.0.1:{}", api_port(&config));
    let state = |name: &str| dir.path().join(name);
    let (s1, s2) = (state("n1"), state("n2"));
    let mut n1 = Agent::start(
        &init_args(
            config.to_str().unwrap(),
            s1.to_str().unwrap(),
            "n1",
            "127.0.0.1",
        ),
        &dir.path().join("n1.log"),
    );
    n1.wait_for(
        "join token written (single use, expires in 24 h)",
        1,
        Duration::from_secs(20),
    );
    // The token from a file (issue 14, item 10): the daemon's command line, which
    // every local user can read for as long as it runs, names only the file.
    let token_file = s1.join("join-token");
    let secret = std::fs::read_to_string(&token_file).unwrap();
    let mut args = join_args(&leader, "", s2.to_str().unwrap(), "n2", "127.0.0.2");
    let at = args.iter().position(|a| *a == "--token").unwrap();
    args.splice(at..at + 2, ["--token-file", token_file.to_str().unwrap()]);
    let mut n2 = Agent::start(&args, &dir.path().join("n2.log"));
    n2.wait_for("joined the cluster", 1, Duration::from_secs(20));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", n2.child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let secret_part = secret.trim().split('.').nth(1).unwrap();
    assert!(
        !cmdline.contains(secret_part),
        "the secret is in the process list: {cmdline}"
    );
    assert!(cmdline.contains("--token-file"), "{cmdline}");

    // A worker holds nothing etcd accepts, and no CA key.
    let (p1, p2) = (s1.join("pki"), s2.join("pki"));
    for file in [
        "ca.key",
        "etcd-ca.key",
        "etcd-ca.crt",
        "etcd.crt",
        "etcd.key",
    ] {
        assert!(p1.join(file).exists(), "the member has {file}");
        assert!(!p2.join(file).exists(), "the worker has no {file}");
    }

    let client = format!("https://127.0.0.1:{}", s.etcd_client_port);
    let peer = format!("127.0.0.1:{}", s.etcd_peer_port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The member reads the CA record: the certificate, no key.
        let record = read_ca_record(
            &client,
            &p1.join("etcd-ca.crt"),
            &p1.join("etcd.crt"),
            &p1.join("etcd.key"),
        )
        .await
        .unwrap();
        let ca = CertificateAuthority::decode(record.as_slice()).unwrap();
        assert!(ca.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(ca.key_pem.is_empty(), "the CA key is not kept in etcd");

        // The worker's node certificate, trusting the etcd CA (public: any TLS
        // handshake shows it) or the cluster CA it has: refused either way.
        for trust in [p1.join("etcd-ca.crt"), p2.join("ca.crt")] {
            let refused =
                read_ca_record(&client, &trust, &p2.join("node.crt"), &p2.join("node.key")).await;
            assert!(refused.is_err(), "etcd answered a worker: {refused:?}");
        }

        // The peer port: a member's etcd certificate gets an HTTP answer, a worker's
        // certificate none.
        let member = talk_to_peer_port(
            &peer,
            &p1.join("etcd-ca.crt"),
            &p1.join("etcd.crt"),
            &p1.join("etcd.key"),
        )
        .await;
        assert!(
            member.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1")),
            "{member:?}"
        );
        let worker = talk_to_peer_port(
            &peer,
            &p1.join("etcd-ca.crt"),
            &p2.join("node.crt"),
            &p2.join("node.key"),
        )
        .await;
        assert!(
            worker.is_err(),
            "the peer port answered a worker: {worker:?}"
        );
    });
    drop(n2);
    drop(n1);

    // A member of a kat-agent 0.1 cluster (no etcd certificate) is refused, with why.
    std::fs::remove_file(p1.join("etcd.crt")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args(["run", "--state-dir", s1.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("etcd.crt") && stderr.contains("kat-agent 0.1"),
        "{stderr}"
    );
}
