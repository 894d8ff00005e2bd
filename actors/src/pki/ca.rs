//! The cluster CA and the certificates it signs (SPEC §6, §13), as plain functions:
//! the PKI actor, `kat-agent init` and `kat-agent join` call these. Keys are made where
//! they are used; only CSRs and certificates travel.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// Validity of the cluster CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of node certificates; renewed at two thirds of it (SPEC §6).
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The DNS name every API server certificate carries and every API client requires:
/// a node certificate cannot pass for the API (node names are DNS labels, without
/// dots), whatever address it names.
pub const API_SERVER_NAME: &str = "api.kat.internal";

/// Certificates are valid from a little before issue, for clocks slightly apart: five
/// minutes, or a tenth of the lifetime when that is shorter (so a certificate of
/// seconds, in tests, is not due for renewal as soon as it is made).
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate signing request: {0}")]
    BadCsr(String),
    #[error("the CSR's common name {found:?} is not the node name {expected:?}")]
    WrongCommonName { expected: String, found: String },
    #[error("{0:?} is not a valid node name for a certificate")]
    BadName(String),
    #[error("cluster CA: {0}")]
    BadCa(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys.
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW.min(valid_for / 10);
    params.not_after = now + valid_for;
}

/// Creates a new cluster CA (self-signed; signs node and API server certificates).
pub fn generate_ca(cluster_name: &str) -> Result<CertAndKey, PkiError> {
    self_signed_ca(&format!("kat cluster CA {cluster_name}"))
}

/// Creates a new etcd CA (self-signed; signs control-plane members' etcd certificates
/// only, so etcd trusts nothing else).
pub fn generate_etcd_ca(cluster_name: &str) -> Result<CertAndKey, PkiError> {
    self_signed_ca(&format!("kat etcd CA {cluster_name}"))
}

fn self_signed_ca(common_name: &str) -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "kat");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A node's new key pair and a CSR for it with CN = the node name.
pub fn node_key_and_csr(node_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

fn common_name(dn: &DistinguishedName) -> Option<String> {
    match dn.get(&DnType::CommonName)? {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The cluster CA, able to sign.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    pub fn from_pem(ca: &CertAndKey) -> Result<Self, PkiError> {
        let key =
            KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::BadCa(format!("key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key)
            .map_err(|e| PkiError::BadCa(format!("certificate: {e}")))?;
        Ok(Self {
            issuer,
            cert_pem: ca.cert_pem.clone(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a node's CSR. The CSR's CN must be `node_name`; whatever names and usages
    /// it asks for are replaced: SANs = the node name and its advertise address, usable
    /// for TLS client and server, valid `valid_for`.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_name: &str,
        advertise_address: IpAddr,
        valid_for: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let found = common_name(&csr.params.distinguished_name).unwrap_or_default();
        if found != node_name {
            return Err(PkiError::WrongCommonName {
                expected: node_name.to_owned(),
                found,
            });
        }
        let dns = node_name
            .try_into()
            .map_err(|_| PkiError::BadName(node_name.to_owned()))?;
        let params = &mut csr.params;
        params.subject_alt_names =
            vec![SanType::DnsName(dns), SanType::IpAddress(advertise_address)];
        // Loopback connections come from 127.0.0.1 whatever loopback address a node
        // advertises, and etcd checks a peer's certificate against the address it
        // connects from: nodes sharing one machine on 127.0.0.x also carry 127.0.0.1
        // (which names the same machine, so this trusts nothing more).
        let localhost = IpAddr::from([127, 0, 0, 1]);
        if advertise_address.is_loopback() && advertise_address != localhost {
            params.subject_alt_names.push(SanType::IpAddress(localhost));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(params, valid_for);
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// A server certificate and key for the leader's API on the given names and
    /// addresses, and [`API_SERVER_NAME`]. The key is made here, on the node that serves with it.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        addresses: &[IpAddr],
        valid_for: Duration,
    ) -> Result<CertAndKey, PkiError> {
        let key = KeyPair::generate()?;
        let mut names = dns_names.to_vec();
        names.push(API_SERVER_NAME.to_owned());
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kat api");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, valid_for);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Whether `pair.key_pem` is the private key of `pair.cert_pem`'s first certificate.
pub fn pair_matches(pair: &CertAndKey) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Ok(cert), Ok(key)) = (
        CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()),
        PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()),
    ) else {
        return false;
    };
    let provider = rustls::crypto::ring::default_provider();
    let Ok(key) = provider.key_provider.load_private_key(key) else {
        return false;
    };
    rustls::sign::CertifiedKey::new(vec![cert], key)
        .keys_match()
        .is_ok()
}

/// SHA-256 (hex) of the public key (SubjectPublicKeyInfo) of the certificate `der`:
/// what a node record binds its certificate by.
pub fn key_sha256_of_der(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCa(format!("unreadable certificate: {e}")))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// [`key_sha256_of_der`] of the first certificate in `cert_pem`.
pub fn key_sha256_of_pem(cert_pem: &str) -> Result<String, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::BadCa(format!("unreadable certificate: {e}")))?;
    key_sha256_of_der(&pem.contents)
}

/// The validity period of the first certificate in `cert_pem`.
pub fn validity_of(cert_pem: &str) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::BadCa(format!("unreadable certificate: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| PkiError::BadCa(format!("unreadable certificate: {e}")))?;
    let v = cert.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// Whether a certificate valid from `not_before` to `not_after` is due for renewal at
/// `now`: past two thirds of its life (SPEC §6).
pub fn needs_renewal(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> bool {
    let life = not_after - not_before;
    now >= not_before + life * 2 / 3
}

/// How often a holder looks whether its certificate is due: a tenth of its life, at
/// least a second and at most an hour (so a clock step forward is noticed within the
/// hour).
pub fn renewal_check_interval(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Duration {
    let life = Duration::try_from(not_after - not_before).unwrap_or_default();
    (life / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn parse(pem_text: &str) -> (Vec<u8>, String) {
        let (_, pem) = parse_x509_pem(pem_text.as_bytes()).unwrap();
        let der = pem.contents.clone();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        (der, cn)
    }

    #[test]
    fn a_node_csr_is_signed_with_the_node_name_and_address_only() {
        let ca = generate_ca("homelab").unwrap();
        let signer = ClusterCa::from_pem(&ca).unwrap();
        let (_key, csr) = node_key_and_csr("node-2").unwrap();
        let addr: IpAddr = "192.168.1.2".parse().unwrap();
        let cert_pem = signer
            .sign_node_csr(&csr, "node-2", addr, NODE_CERT_VALIDITY)
            .unwrap();

        let (der, cn) = parse(&cert_pem);
        assert_eq!(cn, "node-2");
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let (_, ca_pem) = parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(&ca_pem.contents).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the cluster CA");
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .clone();
        let names: Vec<String> = sans.iter().map(|n| format!("{n:?}")).collect();
        assert_eq!(sans.len(), 2, "{names:?}");
        assert!(names.iter().any(|n| n.contains("node-2")), "{names:?}");
        assert!(
            names.iter().any(|n| n.contains("192, 168, 1, 2")),
            "{names:?}"
        );
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(
            (365 * 24 * 3600..=366 * 24 * 3600).contains(&life),
            "about a year: {life}"
        );
        assert!(!cert.is_ca());
    }

    #[test]
    fn a_node_on_a_loopback_address_also_carries_127_0_0_1() {
        let signer = ClusterCa::from_pem(&generate_ca("c").unwrap()).unwrap();
        let sans = |addr: &str| -> Vec<String> {
            let (_, csr) = node_key_and_csr("n2").unwrap();
            let pem = signer
                .sign_node_csr(&csr, "n2", addr.parse().unwrap(), NODE_CERT_VALIDITY)
                .unwrap();
            let (der, _) = parse(&pem);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            cert.subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect()
        };
        let two = sans("127.0.0.2");
        assert_eq!(two.len(), 3, "{two:?}");
        assert!(two.iter().any(|n| n.contains("127, 0, 0, 2")), "{two:?}");
        assert!(two.iter().any(|n| n.contains("127, 0, 0, 1")), "{two:?}");
        assert_eq!(sans("127.0.0.1").len(), 2);
        assert_eq!(sans("10.0.0.1").len(), 2);
    }

    #[test]
    fn a_csr_for_another_nodes_name_is_refused() {
        let signer = ClusterCa::from_pem(&generate_ca("c").unwrap()).unwrap();
        let (_, csr) = node_key_and_csr("node-1").unwrap();
        let err = signer
            .sign_node_csr(
                &csr,
                "node-3",
                "127.0.0.3".parse().unwrap(),
                NODE_CERT_VALIDITY,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the CSR's common name \"node-1\" is not the node name \"node-3\""
        );
    }

    #[test]
    fn garbage_csrs_are_refused() {
        let signer = ClusterCa::from_pem(&generate_ca("c").unwrap()).unwrap();
        let err = signer
            .sign_node_csr(
                "not a csr",
                "n",
                "127.0.0.1".parse().unwrap(),
                NODE_CERT_VALIDITY,
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
    }

    #[test]
    fn a_certificate_from_another_ca_does_not_verify_against_ours() {
        let ours = generate_ca("ours").unwrap();
        let theirs = ClusterCa::from_pem(&generate_ca("theirs").unwrap()).unwrap();
        let (_, csr) = node_key_and_csr("n1").unwrap();
        let foreign = theirs
            .sign_node_csr(&csr, "n1", "127.0.0.1".parse().unwrap(), NODE_CERT_VALIDITY)
            .unwrap();
        let (der, _) = parse(&foreign);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let (_, ca_pem) = parse_x509_pem(ours.cert_pem.as_bytes()).unwrap();
        let (_, ca_cert) = X509Certificate::from_der(&ca_pem.contents).unwrap();
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_err());
    }

    #[test]
    fn the_ca_survives_a_round_trip_through_pem() {
        let ca = generate_ca("c").unwrap();
        let (_, cn) = parse(&ca.cert_pem);
        assert_eq!(cn, "kat cluster CA c");
        let signer = ClusterCa::from_pem(&ca).unwrap();
        assert_eq!(signer.cert_pem(), ca.cert_pem);
        assert!(
            ClusterCa::from_pem(&CertAndKey {
                cert_pem: ca.cert_pem.clone(),
                key_pem: "x".into()
            })
            .is_err()
        );
        assert!(
            !format!("{ca:?}").contains("PRIVATE KEY"),
            "Debug never shows the key"
        );
    }

    #[test]
    fn server_certificates_name_the_api_addresses() {
        let signer = ClusterCa::from_pem(&generate_ca("c").unwrap()).unwrap();
        let api = signer
            .issue_server_cert(
                &["kat-api".into()],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let (der, _) = parse(&api.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName(d) if *d == API_SERVER_NAME)),
            "the API server's own name: {names:?}"
        );
        assert!(api.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_life() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let end = start + ::time::Duration::days(300);
        assert!(!needs_renewal(
            start,
            end,
            start + ::time::Duration::days(199)
        ));
        assert!(needs_renewal(
            start,
            end,
            start + ::time::Duration::days(200)
        ));
    }

    #[test]
    fn a_short_lived_certificate_is_not_due_when_issued_and_is_checked_often() {
        let ca = ClusterCa::from_pem(&generate_ca("t").unwrap()).unwrap();
        let (_, csr) = node_key_and_csr("n1").unwrap();
        let addr = "127.0.0.1".parse().unwrap();
        let cert = ca
            .sign_node_csr(&csr, "n1", addr, Duration::from_secs(20))
            .unwrap();
        let (not_before, not_after) = validity_of(&cert).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(
            !needs_renewal(not_before, not_after, now),
            "backdated by a tenth of its life at most, not five minutes"
        );
        assert!(needs_renewal(
            not_before,
            not_after,
            now + ::time::Duration::seconds(16)
        ));
        let every = renewal_check_interval(not_before, not_after);
        assert!(every >= Duration::from_secs(2) && every <= Duration::from_secs(3));
        let (start, year) = (OffsetDateTime::UNIX_EPOCH, ::time::Duration::days(365));
        assert_eq!(
            renewal_check_interval(start, start + year),
            Duration::from_secs(3600)
        );
        assert_eq!(
            renewal_check_interval(start, start + ::time::Duration::seconds(3)),
            Duration::from_secs(1)
        );
    }
}
