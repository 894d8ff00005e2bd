//! A node's `DIR/pki` and the CAs a leader signs with ([`ClusterPki`]).
//!
//! | file | who has it | what |
//! |---|---|---|
//! | `ca.crt` | every node | the cluster CA: node and API server certificates |
//! | `node.crt`, `node.key` (0600) | every node | the node's certificate (CN = node name): node API, agent API |
//! | `ca.key` (0600) | control-plane members | the cluster CA's key: a member signs with it when it leads |
//! | `etcd-ca.crt` | control-plane members | the etcd CA: etcd trusts only certificates it signed |
//! | `etcd-ca.key` (0600) | control-plane members | its key: the leader signs new members' etcd certificates |
//! | `etcd.crt`, `etcd.key` (0600) | control-plane members | the member's etcd client and peer certificate |
//!
//! Workers never hold anything etcd accepts, and no CA key is kept in etcd.
//!
//! A certificate and its key are replaced as a pair ([`write_pair`]): the new key goes
//! to `<key>.next` first, the certificate's rename is the commit, then the key's. A
//! crash between the two leaves the new certificate with `<key>.next`, which
//! [`read_pair`] finishes; a crash before leaves the old pair. A reader never gets a
//! key that does not match its certificate.

use std::path::{Path, PathBuf};

use super::ca::{CertAndKey, PkiError, generate_ca, generate_etcd_ca, pair_matches};

/// The paths of a node's `DIR/pki`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiDir(pub PathBuf);

impl PkiDir {
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    pub fn node_cert(&self) -> PathBuf {
        self.0.join("node.crt")
    }
    pub fn node_key(&self) -> PathBuf {
        self.0.join("node.key")
    }
    pub fn etcd_ca_cert(&self) -> PathBuf {
        self.0.join("etcd-ca.crt")
    }
    pub fn etcd_ca_key(&self) -> PathBuf {
        self.0.join("etcd-ca.key")
    }
    pub fn etcd_cert(&self) -> PathBuf {
        self.0.join("etcd.crt")
    }
    pub fn etcd_key(&self) -> PathBuf {
        self.0.join("etcd.key")
    }

    /// The node's certificate and key (`node.crt`, `node.key`).
    pub fn read_node_pair(&self) -> std::io::Result<CertAndKey> {
        read_pair(&self.node_cert(), &self.node_key())
    }
    pub fn write_node_pair(&self, pair: &CertAndKey) -> std::io::Result<()> {
        write_pair(&self.node_cert(), &self.node_key(), pair)
    }
    /// A member's etcd certificate and key (`etcd.crt`, `etcd.key`).
    pub fn read_etcd_pair(&self) -> std::io::Result<CertAndKey> {
        read_pair(&self.etcd_cert(), &self.etcd_key())
    }
    pub fn write_etcd_pair(&self, pair: &CertAndKey) -> std::io::Result<()> {
        write_pair(&self.etcd_cert(), &self.etcd_key(), pair)
    }

    /// The CAs a control-plane member keeps (`ca.*` and `etcd-ca.*`).
    pub fn read_cluster_pki(&self) -> Result<ClusterPki, std::io::Error> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        Ok(ClusterPki {
            cluster: CertAndKey {
                cert_pem: read(self.ca_cert())?,
                key_pem: read(self.ca_key())?,
            },
            etcd: Some(CertAndKey {
                cert_pem: read(self.etcd_ca_cert())?,
                key_pem: read(self.etcd_ca_key())?,
            }),
        })
    }

    /// Writes the CAs a control-plane member keeps (keys 0600, certificates 0644),
    /// into a directory made private if it is new. Files that already hold the same
    /// bytes are left alone.
    pub fn write_cluster_pki(&self, pki: &ClusterPki) -> std::io::Result<()> {
        crate::files::private_dir(&self.0).map_err(named(&self.0))?;
        let write = |path: PathBuf, data: &str, mode: u32| -> std::io::Result<()> {
            if std::fs::read(&path).is_ok_and(|now| now == data.as_bytes()) {
                return Ok(());
            }
            crate::files::write_atomic(&path, data.as_bytes(), mode).map_err(named(&path))
        };
        write(self.ca_key(), &pki.cluster.key_pem, 0o600)?;
        write(self.ca_cert(), &pki.cluster.cert_pem, 0o644)?;
        if let Some(etcd) = &pki.etcd {
            write(self.etcd_ca_key(), &etcd.key_pem, 0o600)?;
            write(self.etcd_ca_cert(), &etcd.cert_pem, 0o644)?;
        }
        Ok(())
    }
}

/// What a control-plane member signs with when it leads: the cluster CA (node and API
/// server certificates) and the etcd CA (members' etcd certificates; none where the
/// store is not etcd, as in simulations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPki {
    pub cluster: CertAndKey,
    pub etcd: Option<CertAndKey>,
}

impl ClusterPki {
    /// New CAs for a new cluster.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        Ok(Self {
            cluster: generate_ca(cluster_name)?,
            etcd: Some(generate_etcd_ca(cluster_name)?),
        })
    }
}

/// Where a node's `DIR/pki` is, given its state directory.
pub fn pki_dir(state_dir: &Path) -> PkiDir {
    PkiDir(state_dir.join("pki"))
}

fn named(path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn next_key(key: &Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    key.with_file_name(name)
}

/// Replaces the pair at `cert` and `key` so that no crash leaves a certificate with a
/// key that is not its own (see the module docs). The key is 0600, the certificate
/// 0644.
pub fn write_pair(cert: &Path, key: &Path, pair: &CertAndKey) -> std::io::Result<()> {
    if !pair_matches(pair) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: the key does not belong to the certificate",
                cert.display()
            ),
        ));
    }
    let next = next_key(key);
    crate::files::write_atomic(&next, pair.key_pem.as_bytes(), 0o600).map_err(named(&next))?;
    crate::files::write_atomic(cert, pair.cert_pem.as_bytes(), 0o644).map_err(named(cert))?;
    match std::fs::rename(&next, key) {
        Ok(()) => Ok(()),
        // A reader finished the replacement first (`read_pair`): done, if it is ours.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let now = read_pair(cert, key)?;
            if now == *pair {
                Ok(())
            } else {
                Err(named(key)(e))
            }
        }
        Err(e) => Err(named(key)(e)),
    }
}

/// Reads the pair at `cert` and `key`, finishing a replacement a crash interrupted:
/// when the key does not match the certificate but `<key>.next` does, that becomes
/// the key. A pair that matches neither way is an error naming both files.
pub fn read_pair(cert: &Path, key: &Path) -> std::io::Result<CertAndKey> {
    let read = |path: &Path| std::fs::read_to_string(path).map_err(named(path));
    let cert_pem = read(cert)?;
    let pair = CertAndKey {
        cert_pem: cert_pem.clone(),
        key_pem: read(key)?,
    };
    if pair_matches(&pair) {
        return Ok(pair);
    }
    let next = next_key(key);
    if let Ok(key_pem) = std::fs::read_to_string(&next) {
        let finished = CertAndKey { cert_pem, key_pem };
        if pair_matches(&finished) {
            match std::fs::rename(&next, key) {
                Ok(()) => {
                    tracing::info!(key = %key.display(), "finished a key replacement a crash interrupted");
                }
                // The writer finished it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(named(key)(e)),
            }
            return Ok(finished);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{} does not belong to {} (and no matching {} is there)",
            key.display(),
            cert.display(),
            next.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ca::{ClusterCa, node_key_and_csr};

    fn pair(ca: &ClusterCa) -> CertAndKey {
        let (key_pem, csr) = node_key_and_csr("n1").unwrap();
        let cert_pem = ca
            .sign_node_csr(
                &csr,
                "n1",
                "127.0.0.1".parse().unwrap(),
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        CertAndKey { cert_pem, key_pem }
    }

    #[test]
    fn a_replacement_interrupted_after_the_certificate_is_finished_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir(dir.path().to_path_buf());
        let ca = ClusterCa::from_pem(&generate_ca("t").unwrap()).unwrap();
        let (old, new) = (pair(&ca), pair(&ca));
        pki.write_node_pair(&old).unwrap();
        assert_eq!(pki.read_node_pair().unwrap(), old);

        // A crash after the certificate's rename, before the key's.
        let next = next_key(&pki.node_key());
        std::fs::write(&next, &new.key_pem).unwrap();
        std::fs::write(pki.node_cert(), &new.cert_pem).unwrap();
        assert_eq!(pki.read_node_pair().unwrap(), new);
        assert!(!next.exists());
        assert_eq!(
            std::fs::read_to_string(pki.node_key()).unwrap(),
            new.key_pem
        );

        // A crash before the certificate's rename: the old pair stays, .next ignored.
        pki.write_node_pair(&old).unwrap();
        std::fs::write(&next, &new.key_pem).unwrap();
        assert_eq!(pki.read_node_pair().unwrap(), old);

        // A key that belongs to no certificate here is named, not used.
        std::fs::remove_file(&next).unwrap();
        std::fs::write(pki.node_key(), &new.key_pem).unwrap();
        let err = pki.read_node_pair().unwrap_err().to_string();
        assert!(err.contains("node.key does not belong to"), "{err}");
        // And a mismatched pair is never written.
        let mixed = CertAndKey {
            cert_pem: old.cert_pem.clone(),
            key_pem: new.key_pem.clone(),
        };
        assert!(pki.write_node_pair(&mixed).is_err());
    }
}
