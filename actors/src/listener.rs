//! TLS for the servers on `apiPort` and `agentPort`: a rustls acceptor that hands
//! finished handshakes to tonic.
//!
//! tonic's own TLS offers only `h2` in ALPN, which is right for gRPC but refuses an
//! HTTP/1.1 client (curl with `--http1.1`, most REST libraries) at the handshake. The
//! API serves REST and gRPC on one port, so the handshake is done here, offering `h2`
//! and `http/1.1`, and tonic serves whichever protocol the connection speaks. The
//! client's certificate chain travels with the stream (tonic's `Connected` for
//! rustls streams), so `Request::peer_certs` works as before.

use std::sync::Arc;
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

/// Accepts connections on `listener` and yields those whose handshake succeeded.
/// Handshakes run concurrently (one slow client delays nobody); failed ones are
/// logged at debug level and dropped. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tonic::codegen::tokio_stream::wrappers::ReceiverStream<
    Result<TlsStream<TcpStream>, std::io::Error>,
> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
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
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
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
