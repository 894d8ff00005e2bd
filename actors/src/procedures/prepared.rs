//! [`PreparedNode`]: what init, join and run end in — who the node is and the options
//! of its tree, ready for [`super::run::run_until`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::ClusterConfiguration;

use super::state_dir::{AgentIdentity, IDENTITY_FILE};
use crate::agent::AgentOptions;
use crate::agent::heartbeat::RememberTargets;
use crate::agent::link::tls::TlsLeaderLink;
use crate::control_plane::ControlPlaneOptions;
use crate::leader::{ApiEndpoint, LocalFiles, new_api_slot};
use crate::store::EtcdTls;
use crate::store::StoreBackend;
use crate::store::etcd_process::{ClusterState, EtcdMemberConfig};

/// A node ready to start: who it is and what its tree runs.
#[derive(Clone)]
pub struct PreparedNode {
    pub identity: AgentIdentity,
    pub state_dir: PathBuf,
    /// Control-plane members only.
    pub control_plane: Option<ControlPlaneOptions>,
    pub agent: AgentOptions,
    /// The cluster's settings, as the node's configuration file says.
    pub settings: ClusterSettings,
}

fn etcd_member(
    identity: &AgentIdentity,
    dir: &Path,
    settings: &ClusterSettings,
    etcd_bin: &Path,
) -> EtcdMemberConfig {
    let mut member = EtcdMemberConfig::single_tls(
        etcd_bin.to_path_buf(),
        &identity.node_name,
        dir.join("etcd"),
        SocketAddr::new(identity.advertise_address, settings.etcd_client_port),
        SocketAddr::new(identity.advertise_address, settings.etcd_peer_port),
        EtcdTls::in_pki_dir(&dir.join("pki")),
    );
    member.log_file = Some(dir.join("logs").join("etcd.log"));
    if let Some(initial) = &identity.etcd_initial_cluster {
        member.initial_cluster.clone_from(initial);
        member.cluster_state = ClusterState::Existing;
    }
    member
}

pub(super) fn prepared(
    identity: AgentIdentity,
    dir: &Path,
    cluster: ClusterConfiguration,
    etcd_bin: &Path,
) -> PreparedNode {
    let settings = ClusterSettings::from(&cluster);
    let api_port = settings.api_port;
    let own_api = SocketAddr::new(identity.advertise_address, api_port);
    let control_plane = identity.control_plane.then(|| {
        let member = etcd_member(&identity, dir, &settings, etcd_bin);
        let backend = StoreBackend::Etcd(Box::new(member));
        let mut options = ControlPlaneOptions::new(&identity.node_name, backend, cluster.clone());
        options.api = Some(ApiEndpoint::Tcp {
            addr: own_api,
            slot: new_api_slot(),
        });
        // init's node only: the files its leader writes (katcall.yaml, join-token)
        // and the CA it made before etcd existed.
        if identity.etcd_initial_cluster.is_none() {
            options.local_files = Some(LocalFiles {
                state_dir: dir.to_path_buf(),
                advertise_address: identity.advertise_address,
                api_port,
            });
        }
        options
    });
    let mut leader_api = identity.leader_api.clone();
    if identity.control_plane && !leader_api.contains(&own_api.to_string()) {
        leader_api.insert(0, own_api.to_string());
    }
    let link = Arc::new(TlsLeaderLink::new(dir.join("pki")));
    let mut agent = AgentOptions::new(&identity.node_name, &settings, leader_api, link);
    agent.pki_dir = Some(dir.join("pki"));
    agent.agent_api = Some(SocketAddr::new(
        identity.advertise_address,
        settings.agent_port,
    ));
    agent.remember_targets = Some(remember_targets(dir, &identity));
    agent.capacity = Some(kat_runtime::probe::host_capacity);
    PreparedNode {
        identity,
        state_dir: dir.to_path_buf(),
        control_plane,
        agent,
        settings,
    }
}

/// Records learned control-plane API addresses in `agent.json` (its other fields as
/// they were), so a restarted node can reach a leader even if the one it joined is gone.
fn remember_targets(dir: &Path, identity: &AgentIdentity) -> RememberTargets {
    let path = dir.join(IDENTITY_FILE);
    let identity = identity.clone();
    Arc::new(move |targets: &[String]| {
        let mut updated = identity.clone();
        updated.leader_api = targets.to_vec();
        match serde_json::to_vec_pretty(&updated) {
            Ok(json) => {
                if let Err(e) = crate::files::write_atomic(&path, &json, 0o600) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot record the control-plane addresses");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode agent.json"),
        }
    })
}
