//! `kat-agent etcd-env`: how `etcdctl` reaches this node's etcd member.

use std::net::SocketAddr;
use std::path::Path;

use kat_proto::quadlet::ClusterSettings;

use super::state_dir::{AgentError, read_cluster, read_identity};

/// `kat-agent etcd-env`: shell lines with which `etcdctl` reaches this node's member.
pub fn etcd_env(state_dir: &Path) -> Result<String, AgentError> {
    let identity = read_identity(state_dir)?
        .ok_or_else(|| AgentError::NotInitialised(state_dir.display().to_string()))?;
    if !identity.control_plane {
        return Err(AgentError::Conflict(format!(
            "node {:?} ({}) is not a control-plane member: it runs no etcd member",
            identity.node_name,
            state_dir.display()
        )));
    }
    let settings = ClusterSettings::from(&read_cluster(state_dir)?);
    let endpoint = SocketAddr::new(identity.advertise_address, settings.etcd_client_port);
    let pki = crate::pki::local::pki_dir(
        &std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf()),
    );
    Ok(format!(
        "export ETCDCTL_API=3\n\
         export ETCDCTL_ENDPOINTS=https://{endpoint}\n\
         export ETCDCTL_CACERT={}\n\
         export ETCDCTL_CERT={}\n\
         export ETCDCTL_KEY={}\n",
        pki.etcd_ca_cert().display(),
        pki.etcd_cert().display(),
        pki.etcd_key().display(),
    ))
}
