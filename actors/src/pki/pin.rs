//! Trust on first contact for `kat-agent join` (docs/decisions.md, "Join: CA pinning").
//!
//! A joining node has no CA yet, but must not send its token to an impostor. The join
//! credential that `kat-agent init` writes and `katcall token create join` prints
//! therefore carries the SHA-256 of the cluster CA certificate (DER):
//!
//! ```text
//! <id>.<secret>.<sha256 of the CA certificate, 64 hex digits>
//! ```
//!
//! The joining node reads the CA from the leader's TLS handshake, accepts it only if
//! its hash matches, and then talks to the leader over TLS verified against that CA.

use crate::pki::tokens;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("malformed join token (expected <id>.<secret>.<CA hash> as written to DIR/join-token)")]
    Malformed,
    #[error("unreadable CA certificate: {0}")]
    BadCertificate(String),
}

/// The DER bytes of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PinError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PinError::BadCertificate(e.to_string()))?;
    Ok(parsed.contents)
}

/// A DER certificate as PEM.
pub fn der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// SHA-256 of a DER certificate, as 64 lowercase hex digits.
pub fn fingerprint_der(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of the CA certificate in `ca_pem`.
pub fn ca_fingerprint(ca_pem: &str) -> Result<String, PinError> {
    pem_to_der(ca_pem).map(|der| fingerprint_der(&der))
}

/// The join credential handed to operators: token plus CA pin.
pub fn join_credential(token: &str, ca_pem: &str) -> Result<String, PinError> {
    Ok(format!("{token}.{}", ca_fingerprint(ca_pem)?))
}

/// A join credential split into the token the leader checks and the CA pin.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinCredential {
    pub token: String,
    pub ca_sha256: String,
}

impl std::fmt::Debug for JoinCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("JoinCredential")
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

impl JoinCredential {
    pub fn parse(text: &str) -> Result<Self, PinError> {
        let text = text.trim();
        let (token, pin) = text.rsplit_once('.').ok_or(PinError::Malformed)?;
        tokens::parse(token).map_err(|_| PinError::Malformed)?;
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PinError::Malformed);
        }
        Ok(Self {
            token: token.to_owned(),
            ca_sha256: pin.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pki::ca::generate_ca;

    #[test]
    fn credential_round_trip() {
        let ca = generate_ca("c").unwrap();
        let token = "0123456789ab.0123456789abcdef0123456789abcdef";
        let text = join_credential(token, &ca.cert_pem).unwrap();
        let parsed = JoinCredential::parse(&format!(" {text}\n")).unwrap();
        assert_eq!(parsed.token, token);
        assert_eq!(parsed.ca_sha256, ca_fingerprint(&ca.cert_pem).unwrap());
        assert_eq!(
            ca_fingerprint(&der_to_pem(&pem_to_der(&ca.cert_pem).unwrap())).unwrap(),
            parsed.ca_sha256
        );
    }

    #[test]
    fn malformed_credentials_are_refused() {
        let token = "0123456789ab.0123456789abcdef0123456789abcdef";
        for bad in [
            "",
            token,
            &format!("{token}.abc"),
            &format!("{token}.{}", "g".repeat(64)),
            &format!("xyz.secret.{}", "a".repeat(64)),
        ] {
            assert_eq!(
                JoinCredential::parse(bad),
                Err(PinError::Malformed),
                "{bad}"
            );
        }
    }
}
