//! [`PreparedNode`]: what init, join and run end in — who the node is and the options
//! of its tree, ready for [`super::run::run_until`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::ClusterConfiguration;

use super::state_dir::{AgentError, AgentIdentity, IDENTITY_FILE};
use crate::agent::AgentOptions;
use crate::agent::heartbeat::RememberTargets;
use crate::agent::link::tls::TlsLeaderLink;
use crate::control_plane::ControlPlaneOptions;
use crate::leader::{ApiEndpoint, LocalFiles, new_api_slot};
use crate::pki::local::{ClusterPki, pki_dir};
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
        EtcdTls::of_member(&pki_dir(dir)),
    );
    member.log_file = Some(dir.join("logs").join("etcd.log"));
    if let Some(initial) = &identity.etcd_initial_cluster {
        member.initial_cluster.clone_from(initial);
        member.cluster_state = ClusterState::Existing;
    }
    member
}

/// The CAs a control-plane member keeps in `DIR/pki`. A member set up by kat-agent
/// 0.1 has none of the etcd files: its etcd trusted every node's certificate, and
/// nothing short of a new cluster fixes that.
fn member_pki(dir: &Path) -> Result<ClusterPki, AgentError> {
    let pki = pki_dir(dir);
    let etcd_cert = pki.etcd_cert();
    if !etcd_cert.exists() {
        return Err(AgentError::Corrupt {
            path: etcd_cert.display().to_string(),
            reason: "missing: this control-plane member was set up by kat-agent 0.1, whose \
                     etcd accepted every node's certificate; create the cluster again \
                     (docs/security.md, \"etcd\")"
                .to_owned(),
        });
    }
    pki.read_cluster_pki().map_err(|e| AgentError::Corrupt {
        path: pki.0.display().to_string(),
        reason: e.to_string(),
    })
}

pub(super) fn prepared(
    identity: AgentIdentity,
    dir: &Path,
    cluster: ClusterConfiguration,
    etcd_bin: &Path,
) -> Result<PreparedNode, AgentError> {
    let settings = ClusterSettings::from(&cluster);
    let api_port = settings.api_port;
    let own_api = SocketAddr::new(identity.advertise_address, api_port);
    let pki = if identity.control_plane {
        Some(member_pki(dir)?)
    } else {
        None
    };
    let control_plane = pki.map(|pki| {
        let member = etcd_member(&identity, dir, &settings, etcd_bin);
        let backend = StoreBackend::Etcd(Box::new(member));
        let mut options =
            ControlPlaneOptions::new(&identity.node_name, backend, cluster.clone(), pki);
        options.api = Some(ApiEndpoint::Tcp {
            addr: own_api,
            slot: new_api_slot(),
        });
        // init's node only: the files its leader writes (katcall.yaml, join-token).
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
    Ok(PreparedNode {
        identity,
        state_dir: dir.to_path_buf(),
        control_plane,
        agent,
        settings,
    })
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
