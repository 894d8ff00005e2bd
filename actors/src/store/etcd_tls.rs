//! The TLS files an etcd member serves with and its clients present.

use std::path::PathBuf;

/// mTLS for an etcd member and its clients: the member's etcd certificate (client and
/// server usage, SANs = node name and advertise address) serves clients and peers, and
/// only certificates from the etcd CA — which signs control-plane members' etcd
/// certificates and nothing else — are accepted on either port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl EtcdTls {
    /// A control-plane member's etcd files in its `DIR/pki`.
    pub fn of_member(pki: &crate::pki::local::PkiDir) -> Self {
        Self {
            ca_file: pki.etcd_ca_cert(),
            cert_file: pki.etcd_cert(),
            key_file: pki.etcd_key(),
        }
    }

    /// TLS settings for an etcd client presenting this node's certificate.
    pub fn client_options(&self) -> std::io::Result<etcd_client::TlsOptions> {
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let pair = crate::pki::local::read_pair(&self.cert_file, &self.key_file)?;
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca_file)?))
            .identity(etcd_client::Identity::from_pem(pair.cert_pem, pair.key_pem)))
    }

    /// etcd's flags that make it serve with these files.
    pub(super) fn args(&self) -> Vec<String> {
        let (ca, cert, key) = (
            self.ca_file.display(),
            self.cert_file.display(),
            self.key_file.display(),
        );
        vec![
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            "--client-cert-auth=true".to_owned(),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
            "--peer-client-cert-auth=true".to_owned(),
        ]
    }
}
