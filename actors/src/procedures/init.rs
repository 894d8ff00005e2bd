//! `kat-agent init`: a new cluster on this node.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use kat_proto::quadlet;

use super::prepared::{PreparedNode, prepared};
use super::state_dir::{
    AgentError, AgentIdentity, CLUSTER_FILE, IDENTITY_FILE, default_advertise_address,
    default_node_name, io_err, read_cluster, read_identity, same_node, write_private,
};
use crate::leader::bootstrap::INIT_PENDING;
use crate::pki::ca::{CertAndKey, ClusterCa, node_key_and_csr};
use crate::pki::local::{ClusterPki, PkiDir, pki_dir};

/// Flags of `kat-agent init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub node_name: Option<String>,
    pub advertise_address: Option<IpAddr>,
    pub etcd_bin: PathBuf,
}

/// `kat-agent init`: validates the configuration and records the node in its state
/// directory, or — on a directory init already set up — checks that nothing
/// conflicts and resumes. Nothing is overwritten.
pub fn prepare_init(opts: &InitOptions) -> Result<PreparedNode, AgentError> {
    let config_bytes = std::fs::read(&opts.config).map_err(io_err(&opts.config))?;
    let cluster = quadlet::parse_cluster_config(&opts.config.display().to_string(), &config_bytes)
        .map_err(AgentError::Config)?;
    let dir = &opts.state_dir;
    if let Some(identity) = read_identity(dir)?
        && identity.control_plane
        && identity.etcd_initial_cluster.is_none()
        && dir.join(INIT_PENDING).exists()
    {
        let differs = read_cluster(dir).map_or(true, |stored| stored != cluster)
            || same_node(
                dir,
                &identity,
                opts.node_name.as_deref(),
                opts.advertise_address,
            )
            .is_err();
        if differs {
            // Unless that init is still running here (its ports are taken).
            if let Ok(stored) = read_cluster(dir) {
                let ports = kat_proto::quadlet::ClusterSettings::from(&stored);
                ports_free(
                    &dir.join(CLUSTER_FILE),
                    identity.advertise_address,
                    &[
                        ("apiPort", ports.api_port),
                        ("etcdClientPort", ports.etcd_client_port),
                    ],
                )
                .map_err(|e| {
                    AgentError::Conflict(format!(
                        "{} holds an unfinished init that may still be running ({e})",
                        dir.display()
                    ))
                })?;
            }
            let aside = set_aside_unfinished_init(dir)?;
            tracing::warn!(state_dir = %dir.display(), moved_to = %aside.display(), "an earlier init here never finished and was given other settings: starting over (what it wrote is set aside)");
        }
    }
    if let Some(identity) = read_identity(dir)? {
        same_node(
            dir,
            &identity,
            opts.node_name.as_deref(),
            opts.advertise_address,
        )?;
        let stored = read_cluster(dir)?;
        if stored != cluster {
            return Err(AgentError::Conflict(format!(
                "{} was initialised with a different cluster configuration ({}); \
                 init never overwrites it — use `kat-agent run --state-dir {}`",
                dir.display(),
                dir.join(CLUSTER_FILE).display(),
                dir.display()
            )));
        }
        tracing::info!(node = %identity.node_name, state_dir = %dir.display(), "state directory already initialised; resuming");
        return prepared(identity, dir, cluster, &opts.etcd_bin);
    }

    let node_name = match &opts.node_name {
        Some(name) => name.clone(),
        None => default_node_name()?,
    };
    if let Some(problem) = kat_proto::names::dns_label_problem(&node_name) {
        return Err(AgentError::NodeName(problem));
    }
    let identity = AgentIdentity {
        node_name,
        advertise_address: opts
            .advertise_address
            .unwrap_or_else(default_advertise_address),
        control_plane: true,
        leader_api: Vec::new(),
        etcd_initial_cluster: None,
    };
    // Before anything is written: a port in use fails here, with its name, and leaves
    // no state directory behind.
    let settings = kat_proto::quadlet::ClusterSettings::from(&cluster);
    ports_free(
        &opts.config,
        identity.advertise_address,
        &[
            ("apiPort", settings.api_port),
            ("agentPort", settings.agent_port),
            ("etcdClientPort", settings.etcd_client_port),
            ("etcdPeerPort", settings.etcd_peer_port),
        ],
    )?;
    crate::files::private_dir(dir).map_err(io_err(dir))?;
    write_private(&dir.join(INIT_PENDING), b"")?;
    write_private(&dir.join(CLUSTER_FILE), &config_bytes)?;
    let name = cluster
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let lifetime = kat_proto::quadlet::ClusterSettings::from(&cluster).certificate_lifetime;
    write_init_pki(dir, &name, &identity, lifetime)?;
    let json =
        serde_json::to_vec_pretty(&identity).map_err(|e| AgentError::Failed(e.to_string()))?;
    write_private(&dir.join(IDENTITY_FILE), &json)?;
    tracing::info!(node = %identity.node_name, address = %identity.advertise_address, state_dir = %dir.display(), "state directory initialised");
    prepared(identity, dir, cluster, &opts.etcd_bin)
}

/// Moves what an unfinished init wrote (see [`INIT_PENDING`]) into
/// `DIR/discarded-<unix nanoseconds>/`, so that init with corrected settings starts afresh
/// instead of refusing, and nothing is lost. Returns where it went.
fn set_aside_unfinished_init(dir: &Path) -> Result<std::path::PathBuf, AgentError> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // A name of its own (made exclusively), so one set-aside never overwrites another.
    let aside = dir.join(format!("discarded-{nanos}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&aside)
        .map_err(io_err(&aside))?;
    // The identity and the marker last: a move that fails halfway leaves an
    // unfinished init that the next try sets aside again, never one that looks new
    // and would be written over.
    for name in [
        "etcd",
        "pki",
        "runtime",
        "runtime.json",
        CLUSTER_FILE,
        IDENTITY_FILE,
        INIT_PENDING,
    ] {
        let from = dir.join(name);
        match std::fs::rename(&from, aside.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&from)(e)),
            _ => {}
        }
    }
    Ok(aside)
}

/// Refuses `ports` that something on `addr` already listens on, naming the field of
/// `config` each comes from.
pub(super) fn ports_free(
    config: &Path,
    addr: IpAddr,
    ports: &[(&str, u16)],
) -> Result<(), AgentError> {
    for (field, port) in ports {
        if let Err(e) = std::net::TcpListener::bind((addr, *port)) {
            return Err(AgentError::Conflict(format!(
                "{}: {field} {port}: cannot listen on {}: {e}; stop what uses it, or choose \
                 another port",
                config.display(),
                std::net::SocketAddr::new(addr, *port)
            )));
        }
    }
    Ok(())
}

/// init's PKI, made before etcd starts so etcd can serve with mTLS from its first
/// start (`crate::pki::local` tables the files): the cluster CA and the etcd CA, with
/// their keys (0600; they stay on control-plane members' disks, never in etcd), this
/// node's key and certificate, and its etcd key and certificate.
fn write_init_pki(
    dir: &Path,
    cluster_name: &str,
    identity: &AgentIdentity,
    lifetime: std::time::Duration,
) -> Result<(), AgentError> {
    let failed = |e: crate::pki::ca::PkiError| AgentError::Failed(e.to_string());
    let cas = ClusterPki::generate(cluster_name).map_err(failed)?;
    let pairs = sign_member_pairs(&cas, identity, lifetime)?;
    let pki = pki_dir(dir);
    write_member_pki(&pki, &cas, &pairs).map_err(io_err(&pki.0))
}

/// A new node pair and etcd pair for control-plane member `identity`, signed by the
/// cluster CA and the etcd CA of `cas`.
pub(super) fn sign_member_pairs(
    cas: &ClusterPki,
    identity: &AgentIdentity,
    lifetime: std::time::Duration,
) -> Result<(CertAndKey, CertAndKey), AgentError> {
    let failed = |e: crate::pki::ca::PkiError| AgentError::Failed(e.to_string());
    let etcd_ca = cas
        .etcd
        .as_ref()
        .ok_or_else(|| AgentError::Failed("no etcd CA was made".to_owned()))?;
    let signed = |ca: &CertAndKey| -> Result<CertAndKey, AgentError> {
        let (key_pem, csr_pem) = node_key_and_csr(&identity.node_name).map_err(failed)?;
        let cert_pem = ClusterCa::from_pem(ca)
            .and_then(|signer| {
                signer.sign_node_csr(
                    &csr_pem,
                    &identity.node_name,
                    identity.advertise_address,
                    lifetime,
                )
            })
            .map_err(failed)?;
        Ok(CertAndKey { cert_pem, key_pem })
    };
    Ok((signed(&cas.cluster)?, signed(etcd_ca)?))
}

/// A control-plane member's PKI in `pki`: the CAs, then its node pair and etcd pair
/// (`pairs`, as [`sign_member_pairs`] made them).
pub(super) fn write_member_pki(
    pki: &PkiDir,
    cas: &ClusterPki,
    pairs: &(CertAndKey, CertAndKey),
) -> std::io::Result<()> {
    pki.write_cluster_pki(cas)?;
    pki.write_node_pair(&pairs.0)?;
    pki.write_etcd_pair(&pairs.1)
}
