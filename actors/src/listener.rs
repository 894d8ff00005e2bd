//! TLS for the servers on `apiPort` and `agentPort`: a rustls acceptor that hands
//! finished handshakes to tonic.
//!
//! tonic's own TLS offers only `h2` in ALPN, which is right for gRPC but refuses an
//! HTTP/1.1 client (curl with `--http1.1`, most REST libraries) at the handshake. The
//! API serves REST and gRPC on one port, so the handshake is done here, offering `h2`
//! and `http/1.1`, and tonic serves whichever protocol the connection speaks. The
//! client's certificate chain travels with the stream (tonic's `Connected` for
//! rustls streams), so `Request::peer_certs` works as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::pki::ca::CertAndKey;

/// A handshake that takes longer than this is dropped (a slow or silent client must
/// not hold a connection slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a client certificate (from the cluster CA) is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Asked for, not required: the user API authenticates with tokens and `Join`
    /// comes before a node has a certificate.
    Optional,
    /// Required: the agent API accepts only cluster certificates.
    Required,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("unreadable PEM in {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn pem_err(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> TlsSetupError {
    move |e| TlsSetupError::Pem {
        what,
        reason: e.to_string(),
    }
}

/// The certificate a server presents, replaceable while it serves: every handshake
/// takes the one current then, so a renewed certificate is served from the next
/// connection on without a restart (connections already open keep theirs).
#[derive(Debug)]
pub struct ServingCert {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    /// `cert` with its chain followed by `chain_extra` (e.g. the CA, which joining
    /// nodes check against their pin).
    pub fn new(cert: &CertAndKey, chain_extra: &str) -> Result<Arc<Self>, TlsSetupError> {
        Ok(Arc::new(Self {
            current: std::sync::RwLock::new(Arc::new(certified_key(cert, chain_extra)?)),
        }))
    }

    /// Serves `cert` from the next handshake on. A pair that does not load (or whose
    /// key does not match the certificate) is refused and the current one kept.
    pub fn replace(&self, cert: &CertAndKey, chain_extra: &str) -> Result<(), TlsSetupError> {
        let key = Arc::new(certified_key(cert, chain_extra)?);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = key;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified_key(cert: &CertAndKey, chain_extra: &str) -> Result<CertifiedKey, TlsSetupError> {
    let mut chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(pem_err("the server certificate"))?;
    if chain.is_empty() {
        return Err(TlsSetupError::Pem {
            what: "the server certificate",
            reason: "no certificate in it".to_owned(),
        });
    }
    for extra in CertificateDer::pem_slice_iter(chain_extra.as_bytes()) {
        chain.push(extra.map_err(pem_err("the certificate chain"))?);
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(pem_err("the server key"))?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| TlsSetupError::Config(format!("server certificate and key: {e}")))
}

/// The rustls server configuration: the certificate from `cert` (read at every
/// handshake), client certificates verified against `ca_pem`, ALPN `h2` then
/// `http/1.1`.
pub fn server_config(
    cert: Arc<ServingCert>,
    ca_pem: &str,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(pem_err("the cluster CA"))?)
            .map_err(|e| TlsSetupError::Config(format!("cluster CA: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = match client_auth {
        ClientAuth::Optional => verifier.allow_unauthenticated(),
        ClientAuth::Required => verifier,
    }
    .build()
    .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How many connections one server holds at once, and from one source address.
/// More are closed as soon as they are accepted (before their handshake), so a flood
/// from one address costs that address its own slots, not everyone's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_source: usize,
    /// A connection with no byte read from it this long after its handshake is closed
    /// (a client that connects and says nothing).
    pub first_request: Duration,
    /// A connection on which nothing was read or written this long is closed: one
    /// whose client went away without a word. HTTP/2 connections are never this idle
    /// while their client lives (the server pings them, [`HTTP2_KEEPALIVE`]), so a
    /// client that answers pings keeps its slot: the per-source limit, not this,
    /// bounds what one address holds. A quiet HTTP/1.1 stream (REST `watch`,
    /// `follow`) is closed after this long without output; clients reconnect.
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            total: 1024,
            per_source: 128,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(600),
        }
    }
}

/// Streams one HTTP/2 connection may have open at once.
pub const MAX_STREAMS: u32 = 100;

/// How often the servers ping an HTTP/2 client, and how long they wait for the answer.
pub const HTTP2_KEEPALIVE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(10));

/// The connections a server holds now, by source (an IPv4 address, or an IPv6 /64:
/// one host has a whole /64 to connect from).
#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_source: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// The source a connection counts against.
fn source_of(addr: std::net::IpAddr) -> std::net::IpAddr {
    match addr.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// One held connection; released when the connection is dropped.
struct Slot {
    held: Arc<std::sync::Mutex<Held>>,
    source: std::net::IpAddr,
}

impl Slot {
    fn take(
        held: &Arc<std::sync::Mutex<Held>>,
        source: std::net::IpAddr,
        limits: &ConnectionLimits,
    ) -> Option<Self> {
        let mut h = held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_source = h.by_source.get(&source).copied().unwrap_or(0);
        if h.total >= limits.total || from_source >= limits.per_source {
            return None;
        }
        h.total += 1;
        h.by_source.insert(source, from_source + 1);
        Some(Self {
            held: held.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                h.by_source.remove(&self.source);
            }
        }
    }
}

/// A server-side TLS connection holding its [`Slot`], closed when it idles past its
/// limit (see [`ConnectionLimits`]).
pub struct LimitedStream {
    inner: TlsStream<TcpStream>,
    _slot: Slot,
    limits: ConnectionLimits,
    read_any: bool,
    last_activity: tokio::time::Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl LimitedStream {
    fn new(inner: TlsStream<TcpStream>, slot: Slot, limits: ConnectionLimits) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            inner,
            _slot: slot,
            limits,
            read_any: false,
            last_activity: now,
            deadline: Box::pin(tokio::time::sleep_until(now + limits.first_request)),
        }
    }

    fn limit(&self) -> Duration {
        if self.read_any {
            self.limits.idle
        } else {
            self.limits.first_request
        }
    }

    /// Whether the connection has idled past its limit (registering the wake-up for
    /// when it would).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let due = self.last_activity + self.limit();
        if self.deadline.deadline() != due {
            self.deadline.as_mut().reset(due);
        }
        self.deadline.as_mut().poll(cx).is_ready()
    }

    fn active(&mut self) {
        self.last_activity = tokio::time::Instant::now();
    }
}

fn idled_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle; closed")
}

impl tokio::io::AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.read_any = true;
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idled_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for LimitedStream {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepts connections on `listener` within `limits` and yields those whose handshake
/// succeeded. Handshakes run concurrently (one slow client delays nobody); failed ones
/// are logged at debug level and dropped. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
) -> tonic::codegen::tokio_stream::wrappers::ReceiverStream<Result<LimitedStream, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let held = Arc::new(std::sync::Mutex::new(Held::default()));
    tokio::spawn(async move {
        let mut refused_logged = tokio::time::Instant::now() - Duration::from_secs(60);
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = Slot::take(&held, source_of(peer.ip()), &limits) else {
                // At most one line a minute, however hard the flood.
                if refused_logged.elapsed() >= Duration::from_secs(60) {
                    refused_logged = tokio::time::Instant::now();
                    tracing::warn!(%peer, total = limits.total, per_source = limits.per_source, "connection limit reached; refusing connections");
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(LimitedStream::new(tls, slot, limits))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A server running in a task, owned by the actor that started it: stopped
/// gracefully from `post_stop` ([`ServerTask::stop`]), aborted if dropped.
pub struct ServerTask {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerTask {
    /// Runs `serve` (given the future that resolves when the server should stop); when
    /// it ends, `exited` is told why (`Ok` ended, or the error).
    pub fn spawn<F, E>(
        serve: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> F,
        exited: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Self
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let served = serve(stopped);
        let task = tokio::spawn(async move {
            exited(served.await.map_err(|e| e.to_string()));
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Whether [`ServerTask::stop`] was called (an exit after it is expected).
    pub fn stopping(&self) -> bool {
        self.stop.is_none()
    }

    /// Asks the server to stop and waits for it, at most 5 s.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SHA-256 of the public key of the request's client certificate (see
/// `crate::pki::ca::key_sha256_of_der`).
pub fn peer_key_sha256<T>(request: &tonic::Request<T>) -> Result<String, tonic::Status> {
    let certs = request
        .peer_certs()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            tonic::Status::unauthenticated("this call needs the node's client certificate")
        })?;
    crate::pki::ca::key_sha256_of_der(certs[0].as_ref())
        .map_err(|_| tonic::Status::unauthenticated("unreadable client certificate"))
}

/// The node a request comes from: the CN of its client certificate, which the TLS
/// layer has already checked against the cluster CA.
pub fn peer_node<T>(request: &tonic::Request<T>) -> Result<String, tonic::Status> {
    use tonic::Status;
    let certs = request
        .peer_certs()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Status::unauthenticated("this call needs the node's client certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref())
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Status::unauthenticated("client certificate without a common name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::{ClusterCa, generate_ca};
    use tokio::io::AsyncReadExt;

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_of(v4), v4);
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_of(mapped), v4);
    }

    #[tokio::test]
    async fn a_connection_that_says_nothing_is_closed_and_its_slot_freed() {
        let ca = generate_ca("t").unwrap();
        let cert = ClusterCa::from_pem(&ca)
            .unwrap()
            .issue_server_cert(
                &["kat-api".to_owned()],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(60),
            )
            .unwrap();
        let config = server_config(
            ServingCert::new(&cert, "").unwrap(),
            &ca.cert_pem,
            ClientAuth::Optional,
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            total: 10,
            per_source: 1,
            first_request: Duration::from_millis(300),
            idle: Duration::from_secs(60),
        };
        let mut accepted = incoming(listener, config, limits);

        let client = |ca: String| async move {
            use rustls::pki_types::ServerName;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
        };
        let _quiet = client(ca.cert_pem.clone()).await.unwrap();
        let mut server_side = tonic::codegen::tokio_stream::StreamExt::next(&mut accepted)
            .await
            .unwrap()
            .unwrap();
        // A second connection from the same address is over the limit: closed.
        let second = client(ca.cert_pem.clone()).await;
        let closed = match second {
            Err(_) => true,
            Ok(mut tls) => matches!(tls.read(&mut [0u8; 1]).await, Ok(0) | Err(_)),
        };
        assert!(closed, "over the per-source limit");

        // The quiet one is closed after first_request, and its slot is free again.
        let started = tokio::time::Instant::now();
        let read = server_side.read(&mut [0u8; 16]).await;
        assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(server_side);
        let _third = client(ca.cert_pem.clone()).await.unwrap();
        let again = tokio::time::timeout(
            Duration::from_secs(2),
            tonic::codegen::tokio_stream::StreamExt::next(&mut accepted),
        )
        .await;
        assert!(matches!(again, Ok(Some(Ok(_)))), "the slot was freed");
    }
}
