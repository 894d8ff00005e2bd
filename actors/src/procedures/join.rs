//! `kat-agent join`: this node joins a cluster through its leader's API.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kat_proto::quadlet;
use kat_proto::v1alpha1::JoinRequest;
use kat_proto::v1alpha1::node_api_client::NodeApiClient;

use super::prepared::{PreparedNode, prepared};
use super::state_dir::{
    AgentError, AgentIdentity, CLUSTER_FILE, IDENTITY_FILE, default_advertise_address,
    default_node_name, io_err, read_identity, write_private,
};
use crate::client::{LEADER_API_METADATA, api_channel_from, fetch_pinned_ca};
use crate::pki::ca::{CertAndKey, node_key_and_csr};
use crate::pki::local::pki_dir;
use crate::pki::pin::JoinCredential;

/// Flags of `kat-agent join`.
#[derive(Clone)]
pub struct JoinOptions {
    pub state_dir: PathBuf,
    /// The leader's API, HOST:PORT.
    pub leader_api: String,
    /// The join credential: `<id>.<secret>.<CA hash>` (DIR/join-token of the init node).
    pub token: String,
    pub node_name: Option<String>,
    pub advertise_address: Option<IpAddr>,
    pub etcd_bin: PathBuf,
}

/// How long `join` keeps asking a leader that cannot take the join yet, and how often.
const JOIN_RETRY: Duration = Duration::from_secs(30);
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// `kat-agent join`: checks the leader against the CA hash in the token, makes this
/// node's key and CSR here, joins, and records the certificate, CA, cluster
/// configuration and identity in the state directory (identity last: a join that fails
/// half-way leaves a directory `run` refuses and `join` can retry).
pub async fn join(opts: &JoinOptions) -> Result<PreparedNode, AgentError> {
    let dir = &opts.state_dir;
    if let Some(identity) = read_identity(dir)? {
        return Err(AgentError::Conflict(format!(
            "{} already belongs to node {:?}; start it with `kat-agent run --state-dir {}`",
            dir.display(),
            identity.node_name,
            dir.display()
        )));
    }
    let credential =
        JoinCredential::parse(&opts.token).map_err(|e| AgentError::Token(e.to_string()))?;
    let node_name = match &opts.node_name {
        Some(name) => name.clone(),
        None => default_node_name()?,
    };
    if let Some(problem) = kat_proto::names::dns_label_problem(&node_name) {
        return Err(AgentError::NodeName(problem));
    }
    let advertise_address = opts
        .advertise_address
        .unwrap_or_else(default_advertise_address);
    let leader = opts.leader_api.clone();
    if leader.parse::<SocketAddr>().is_err() && !leader.contains(':') {
        return Err(AgentError::Leader(format!(
            "{leader:?}: expected HOST:PORT"
        )));
    }
    let failed = |e: crate::pki::ca::PkiError| AgentError::Failed(e.to_string());
    let (key_pem, csr_pem) = node_key_and_csr(&node_name).map_err(failed)?;
    // In case the leader makes this node a control-plane member: a second key for its
    // etcd certificate (only members get one signed).
    let (etcd_key_pem, etcd_csr_pem) = node_key_and_csr(&node_name).map_err(failed)?;
    let request = JoinRequest {
        token: credential.token.clone(),
        node_name: node_name.clone(),
        csr_pem,
        etcd_csr_pem,
        advertise_address: advertise_address.to_string(),
        capacity: Some(kat_runtime::probe::host_capacity()),
        agent_version: kat_proto::VERSION.to_owned(),
        ..Default::default()
    };
    // A leader that does not listen yet, or was elected and still starts its leader
    // services, is asked again for a while: nothing was stored for those answers.
    let started = tokio::time::Instant::now();
    let mut pinned: Option<String> = None;
    let response = loop {
        let retry = |why: String| {
            if started.elapsed() < JOIN_RETRY {
                tracing::info!(leader = %leader, reason = %why, "the leader is not ready for the join; trying again");
                Ok(why)
            } else {
                Err(why)
            }
        };
        // The CA is checked against the pin once; later tries reuse it.
        let ca_pem = match &pinned {
            Some(pem) => pem.clone(),
            None => match fetch_pinned_ca(&leader, &credential.ca_sha256).await {
                Ok(pem) => pinned.insert(pem).clone(),
                Err(e @ crate::client::ClientError::Connect { .. }) => {
                    retry(e.to_string()).map_err(AgentError::Leader)?;
                    tokio::time::sleep(JOIN_RETRY_PAUSE).await;
                    continue;
                }
                Err(e) => return Err(AgentError::Leader(e.to_string())),
            },
        };
        // A control-plane join waits while an earlier member catches up in etcd.
        let channel = api_channel_from(
            &leader,
            &ca_pem,
            None,
            Duration::from_secs(60),
            join_source(advertise_address),
        )
        .map_err(|e| AgentError::Leader(e.to_string()))?;
        match NodeApiClient::new(channel).join(request.clone()).await {
            Ok(response) => break response.into_inner(),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && status.metadata().get(LEADER_API_METADATA).is_none() =>
            {
                retry(status.message().to_owned()).map_err(|message| AgentError::JoinRefused {
                    leader: leader.clone(),
                    message,
                })?;
                tokio::time::sleep(JOIN_RETRY_PAUSE).await;
            }
            Err(status) => {
                return Err(AgentError::JoinRefused {
                    leader: leader.clone(),
                    message: status.message().to_owned(),
                });
            }
        }
    };
    let cluster = response
        .cluster
        .clone()
        .ok_or_else(|| AgentError::JoinRefused {
            leader: leader.clone(),
            message: "the answer carried no cluster configuration".to_owned(),
        })?;

    crate::files::private_dir(dir).map_err(io_err(dir))?;
    let pki = pki_dir(dir);
    crate::files::private_dir(&pki.0).map_err(io_err(&pki.0))?;
    let node = CertAndKey {
        cert_pem: response.certificate_pem.clone(),
        key_pem: key_pem.clone(),
    };
    pki.write_node_pair(&node).map_err(io_err(&pki.0))?;
    let public = |path: &Path, data: &str| {
        crate::files::write_atomic(path, data.as_bytes(), 0o644).map_err(io_err(path))
    };
    public(&pki.ca_cert(), &response.ca_pem)?;
    if let Some(etcd) = &response.etcd {
        // A control-plane member: its etcd certificate and the CA keys it leads with.
        let missing = [
            ("certificate_pem", &etcd.certificate_pem),
            ("etcd_ca_pem", &etcd.etcd_ca_pem),
            ("etcd_ca_key_pem", &etcd.etcd_ca_key_pem),
            ("cluster_ca_key_pem", &etcd.cluster_ca_key_pem),
        ]
        .into_iter()
        .find(|(_, v)| v.is_empty());
        if let Some((field, _)) = missing {
            return Err(AgentError::JoinRefused {
                leader: leader.clone(),
                message: format!(
                    "the answer made this node a control-plane member without etcd.{field} \
                     (a leader older than this agent?)"
                ),
            });
        }
        let etcd_pair = CertAndKey {
            cert_pem: etcd.certificate_pem.clone(),
            key_pem: etcd_key_pem.clone(),
        };
        pki.write_etcd_pair(&etcd_pair).map_err(io_err(&pki.0))?;
        write_private(&pki.etcd_ca_key(), etcd.etcd_ca_key_pem.as_bytes())?;
        write_private(&pki.ca_key(), etcd.cluster_ca_key_pem.as_bytes())?;
        public(&pki.etcd_ca_cert(), &etcd.etcd_ca_pem)?;
    }
    let yaml = quadlet::to_yaml(&cluster).map_err(|e| AgentError::Failed(e.to_string()))?;
    write_private(&dir.join(CLUSTER_FILE), yaml.as_bytes())?;
    let identity = AgentIdentity {
        node_name,
        advertise_address,
        control_plane: response.etcd.is_some(),
        leader_api: vec![leader],
        etcd_initial_cluster: response.etcd.map(|e| e.initial_cluster),
    };
    let json =
        serde_json::to_vec_pretty(&identity).map_err(|e| AgentError::Failed(e.to_string()))?;
    write_private(&dir.join(IDENTITY_FILE), &json)?;
    tracing::info!(node = %identity.node_name, address = %identity.advertise_address, state_dir = %dir.display(), "joined the cluster");
    prepared(identity, dir, cluster, &opts.etcd_bin)
}

/// Where a join's connection leaves from: the advertise address when it is this
/// host's (the leader accepts the address only from itself), else wherever the system
/// routes it (a loopback address, which the leader takes from any loopback source; or
/// an address this host does not have, which the leader will refuse with the reason).
fn join_source(advertise: IpAddr) -> Option<IpAddr> {
    if advertise.is_loopback() || advertise.is_unspecified() {
        return None;
    }
    std::net::UdpSocket::bind(SocketAddr::new(advertise, 0))
        .is_ok()
        .then_some(advertise)
}
