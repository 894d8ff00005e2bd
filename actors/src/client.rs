//! Connections to the leader's API (SPEC §2, §6): the pinned first contact of
//! `kat-agent join`, mTLS channels verified against the cluster CA afterwards, the
//! metadata a follower points to the leader with, and katcall's configuration file.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pki::ca::CertAndKey;
use crate::pki::pin::{der_to_pem, fingerprint_der};

/// Metadata key (and REST header) naming the leader's API address in a follower's
/// answer.
pub const LEADER_API_METADATA: &str = "kat-leader-api";

/// How long a connection attempt to the leader may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "{addr}: the server's CA does not match the hash in the join token \
         (wrong address, or not this cluster's leader); nothing was sent"
    )]
    PinMismatch { addr: String },
}

fn connect_err(addr: &str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Connect {
        addr: addr.to_owned(),
        reason: reason.to_string(),
    }
}

/// Accepts any server certificate during the handshake (the signature over the
/// handshake is still checked, so the peer holds the key of the leaf it sent); the
/// caller decides afterwards whether the chain contains the pinned CA.
#[derive(Debug)]
struct RecordChain(Arc<CryptoProvider>);

impl ServerCertVerifier for RecordChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Opens a TLS handshake with `addr` (HOST:PORT), sends nothing, and returns the CA
/// certificate (PEM) from the server's chain whose SHA-256 is `ca_sha256`.
pub async fn fetch_pinned_ca(addr: &str, ca_sha256: &str) -> Result<String, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| connect_err(addr, e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordChain(provider)))
        .with_no_client_auth();
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(addr);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| connect_err(addr, e))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err(addr, "connection timed out"))?
        .map_err(|e| connect_err(addr, e))?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| connect_err(addr, "TLS handshake timed out"))?
    .map_err(|e| connect_err(addr, format!("TLS handshake: {e}")))?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    chain
        .iter()
        .find(|der| fingerprint_der(der.as_ref()) == ca_sha256)
        .map(|der| der_to_pem(der.as_ref()))
        .ok_or_else(|| ClientError::PinMismatch {
            addr: addr.to_owned(),
        })
}

/// A channel to the API at `addr` (HOST:PORT) verified against `ca_pem`, presenting
/// `identity` as client certificate when given. Connects lazily (and reconnects).
pub fn api_channel(
    addr: &str,
    ca_pem: &str,
    identity: Option<&CertAndKey>,
) -> Result<Channel, ClientError> {
    api_channel_with_timeout(addr, ca_pem, identity, CALL_TIMEOUT)
}

/// [`api_channel`] with another per-call timeout (joining may wait for etcd).
pub fn api_channel_with_timeout(
    addr: &str,
    ca_pem: &str,
    identity: Option<&CertAndKey>,
    call_timeout: Duration,
) -> Result<Channel, ClientError> {
    api_channel_from(addr, ca_pem, identity, call_timeout, None)
}

/// [`api_channel_with_timeout`] whose connections leave from `source` (a join: the
/// leader accepts an advertise address only from that address).
///
/// Whatever the address, the server must prove it is an API server: its certificate
/// must carry [`crate::pki::ca::API_SERVER_NAME`], which only the API servers'
/// certificates have (node certificates name a node, and node names have no dots).
pub fn api_channel_from(
    addr: &str,
    ca_pem: &str,
    identity: Option<&CertAndKey>,
    call_timeout: Duration,
    source: Option<std::net::IpAddr>,
) -> Result<Channel, ClientError> {
    let server = crate::pki::ca::API_SERVER_NAME;
    verified_channel(addr, ca_pem, identity, call_timeout, source, server)
}

/// A channel to node `node`'s agent API at `addr`: the server must present `node`'s
/// own certificate (its name is a SAN of it), not just any certificate of the CA. A
/// node name TLS cannot check as a DNS name (all digits, like `42`) is checked by the
/// address on record instead.
pub fn agent_channel(
    addr: &str,
    ca_pem: &str,
    identity: &CertAndKey,
    call_timeout: Duration,
    node: &str,
) -> Result<Channel, ClientError> {
    let by_name = rustls::pki_types::DnsName::try_from(node).is_ok()
        && ServerName::try_from(node).is_ok_and(|n| matches!(n, ServerName::DnsName(_)));
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| {
        h.trim_start_matches('[').trim_end_matches(']')
    });
    let server = if by_name { node } else { host };
    verified_channel(addr, ca_pem, Some(identity), call_timeout, None, server)
}

fn verified_channel(
    addr: &str,
    ca_pem: &str,
    identity: Option<&CertAndKey>,
    call_timeout: Duration,
    source: Option<std::net::IpAddr>,
    server_name: &str,
) -> Result<Channel, ClientError> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name);
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| connect_err(addr, e))?
        .tls_config(tls)
        .map_err(|e| connect_err(addr, e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout)
        .local_address(source);
    Ok(endpoint.connect_lazy())
}

/// `katcall`'s configuration file (SPEC §11): written by `kat-agent init` as
/// `DIR/katcall.yaml` (mode 0600), selected with `katcall --config FILE` or
/// `KAT_CONFIG`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KatcallConfig {
    /// `https://HOST:PORT` of the leader's API.
    pub server: String,
    /// PEM of the cluster CA the server certificate is checked against.
    pub certificate_authority: String,
    /// Bearer token (`<id>.<secret>`).
    pub token: String,
}

impl std::fmt::Debug for KatcallConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KatcallConfig")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl KatcallConfig {
    pub fn to_yaml(&self) -> String {
        let body = serde_yaml_ng::to_string(self).unwrap_or_default();
        format!("# katcall configuration (server, cluster CA, API token); keep it private.\n{body}")
    }

    /// Parses a config file's text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, String> {
        let config: Self = serde_yaml_ng::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        if !config.server.starts_with("https://") {
            return Err(format!(
                "{origin}: server: {:?} must start with https://",
                config.server
            ));
        }
        if crate::pki::tokens::parse(&config.token).is_err() {
            return Err(format!(
                "{origin}: token: malformed (expected <id>.<secret>)"
            ));
        }
        crate::pki::pin::pem_to_der(&config.certificate_authority)
            .map_err(|e| format!("{origin}: certificateAuthority: {e}"))?;
        Ok(config)
    }
}
