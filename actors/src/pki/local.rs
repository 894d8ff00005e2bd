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

use std::path::{Path, PathBuf};

use super::ca::{CertAndKey, PkiError, generate_ca, generate_etcd_ca};

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
