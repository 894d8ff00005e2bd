//! The leader subtree (SPEC §3): `LeaderSupervisor` (one_for_one), started in the
//! control-plane supervisor when this node wins the election and stopped when it loses.
//! Every write its actors make is fenced by the election key.
//!
//! So far it holds [`Bootstrap`], which records the cluster's identity, configuration
//! and CA the first time a leader exists, and on init's node writes that node's
//! certificate and the first join token; NodeMonitor (lost nodes); the Scheduler
//! (placements, updates); the Api actor. Ipam and Backup join it in later issues.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::{
    CertificateAuthority, ClusterConfiguration, Node, NodeRole, NodeSpec, ObjectMeta, TokenKind,
};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};

pub mod backups;
pub mod node_monitor;
pub mod scheduler;

use crate::api::node_api::{control_plane_key, node_key};
use crate::api::{Api, ApiArgs, ApiEndpoint};
use crate::client::KatcallConfig;
use crate::election::{Election, LeaderSubtree, Leadership};
use crate::pki::ca::{CertAndKey, ClusterCa, NODE_CERT_VALIDITY, generate_ca, node_key_and_csr};
use crate::pki::{pin, tokens};
use crate::store::{Compare, StateStore, Txn, TxnOp, TxnOpResult};
use node_monitor::{NodeMonitor, NodeMonitorArgs};

use crate::supervision::{
    Backoff, ChildSpec, Intensity, Restart, StartFn, Strategy, Supervisor, SupervisorArgs,
};

/// `/kat/config/cluster_uid`: the cluster's identity, written once.
pub const CLUSTER_UID_KEY: &str = "/kat/config/cluster_uid";
/// `/kat/config/cluster`: the ClusterConfiguration, protobuf-encoded, written once.
pub const CLUSTER_CONFIG_KEY: &str = "/kat/config/cluster";
/// `/kat/pki/ca`: the cluster CA (certificate and key), written once.
pub const CA_KEY: &str = "/kat/pki/ca";

/// The node whose files the leader writes at bootstrap (the node `kat-agent init` runs on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFiles {
    pub state_dir: PathBuf,
    pub advertise_address: IpAddr,
    /// The API's port (for `katcall.yaml`'s server URL).
    pub api_port: u16,
}

/// The leader subtree for this node: a `LeaderSupervisor` holding the leader's actors.
pub fn leader_subtree(
    cluster: ClusterConfiguration,
    local: Option<LocalFiles>,
    api: Option<ApiEndpoint>,
    clock: fn() -> SystemTime,
) -> LeaderSubtree {
    Arc::new(move |leadership: Leadership| {
        let name = Election::leader_subtree_name(&leadership.node);
        let cluster = cluster.clone();
        let local = local.clone();
        let api = api.clone();
        let supervisor_name = name.clone();
        ChildSpec {
            name,
            // Only a new election brings the leader subtree back (see Election).
            restart: Restart::Temporary,
            shutdown_timeout: Duration::from_secs(15),
            // Election sets this to hear when the subtree dies on its own.
            on_exit: None,
            on_restart: None,
            start: StartFn::new(move |parent| {
                let bootstrap_args = BootstrapArgs {
                    leadership: leadership.clone(),
                    cluster: cluster.clone(),
                    local: local.clone(),
                };
                let bootstrap = ChildSpec::actor(
                    format!("bootstrap@{}", leadership.node),
                    Bootstrap,
                    move || bootstrap_args.clone(),
                );
                let monitor_args = NodeMonitorArgs {
                    leadership: leadership.clone(),
                    cluster: cluster.clone(),
                    now: clock,
                };
                let monitor = ChildSpec::actor(
                    NodeMonitor::name(&leadership.node),
                    NodeMonitor,
                    move || monitor_args.clone(),
                );
                let scheduler_args = scheduler::SchedulerArgs {
                    leadership: leadership.clone(),
                    cluster: cluster.clone(),
                    now: clock,
                };
                let scheduler = ChildSpec::actor(
                    scheduler::Scheduler::name(&leadership.node),
                    scheduler::Scheduler,
                    move || scheduler_args.clone(),
                );
                let backups_args = backups::BackupsArgs {
                    leadership: leadership.clone(),
                    cluster: cluster.clone(),
                    now: clock,
                };
                let backups = ChildSpec::actor(
                    backups::Backups::name(&leadership.node),
                    backups::Backups,
                    move || backups_args.clone(),
                );
                let mut children = vec![bootstrap, monitor, scheduler];
                if let Some(endpoint) = api.clone() {
                    let api_args = ApiArgs {
                        leadership: leadership.clone(),
                        cluster: cluster.clone(),
                        endpoint,
                    };
                    children.push(ChildSpec::actor(
                        Api::name(&leadership.node),
                        Api,
                        move || api_args.clone(),
                    ));
                }
                // After the API: serving comes before the first snapshot.
                children.push(backups);
                let args = SupervisorArgs {
                    strategy: Strategy::OneForOne,
                    intensity: Intensity {
                        max_restarts: 5,
                        window: Duration::from_secs(60),
                    },
                    backoff: Backoff {
                        initial: Duration::from_millis(200),
                        max: Duration::from_secs(10),
                    },
                    children,
                };
                let name = supervisor_name.clone();
                async move {
                    let (sup, _) =
                        Actor::spawn_linked(Some(name), Supervisor, args, parent).await?;
                    Ok(sup.get_cell())
                }
            }),
        }
    })
}

#[derive(Clone)]
pub struct BootstrapArgs {
    pub leadership: Leadership,
    pub cluster: ClusterConfiguration,
    pub local: Option<LocalFiles>,
}

/// Writes the cluster UID and configuration in one fenced transaction, once per
/// cluster; a later leader (or a re-run `kat-agent init`) finds them and resumes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bootstrap;

/// A new random cluster UID (RFC 4122 version 4 layout).
fn new_uid() -> Result<String, ActorProcessingErr> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no randomness available for the cluster UID")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    ))
}

/// In a refused fenced write whose else-branch read the election key last: fails
/// unless that key is still this leader's.
fn still_leading(
    leadership: &Leadership,
    results: &[TxnOpResult],
) -> Result<(), ActorProcessingErr> {
    match results.last() {
        Some(TxnOpResult::Get(kvs))
            if kvs
                .first()
                .is_some_and(|kv| kv.create_revision == leadership.key.create_revision) =>
        {
            Ok(())
        }
        _ => Err("not the leader any more".into()),
    }
}

/// Records the cluster once; returns the UID and whether this call created it.
pub async fn record_cluster(
    store: &dyn StateStore,
    leadership: &Leadership,
    cluster: &ClusterConfiguration,
) -> Result<(String, bool), ActorProcessingErr> {
    let uid = new_uid()?;
    let txn = Txn::new()
        .when([Compare::absent(CLUSTER_UID_KEY), leadership.key.fence()])
        .and_then([
            TxnOp::put(CLUSTER_UID_KEY, uid.clone()),
            TxnOp::put(CLUSTER_CONFIG_KEY, cluster.encode_to_vec()),
        ])
        .or_else([TxnOp::get(CLUSTER_UID_KEY), TxnOp::get(&leadership.key.key)]);
    let result = store.txn(txn).await?;
    if result.succeeded {
        return Ok((uid, true));
    }
    still_leading(leadership, &result.results)?;
    match result.results.first() {
        Some(TxnOpResult::Get(kvs)) if !kvs.is_empty() => {
            Ok((String::from_utf8_lossy(&kvs[0].value).into_owned(), false))
        }
        _ => Err("cluster UID missing although the write was refused".into()),
    }
}

/// The CA `kat-agent init` made in `DIR/pki` before etcd started (etcd serves with
/// certificates it signed), if this is init's node.
pub fn read_local_ca(state_dir: &Path) -> Option<CertAndKey> {
    let pki = state_dir.join("pki");
    Some(CertAndKey {
        cert_pem: std::fs::read_to_string(pki.join("ca.crt")).ok()?,
        key_pem: std::fs::read_to_string(pki.join("ca.key")).ok()?,
    })
}

/// Reads the cluster CA; if there is none, stores `local` (init's) or a new one, once
/// and fenced.
pub async fn ensure_ca(
    store: &dyn StateStore,
    leadership: &Leadership,
    cluster_name: &str,
    local: Option<&CertAndKey>,
) -> Result<CertAndKey, ActorProcessingErr> {
    let decode = |bytes: &[u8]| -> Result<CertAndKey, ActorProcessingErr> {
        let ca = CertificateAuthority::decode(bytes)?;
        Ok(CertAndKey {
            cert_pem: ca.cert_pem,
            key_pem: ca.key_pem,
        })
    };
    if let Some(kv) = store.get(CA_KEY).await? {
        return decode(&kv.value);
    }
    let ca = match local {
        Some(ca) => ca.clone(),
        None => generate_ca(cluster_name)?,
    };
    let record = CertificateAuthority {
        cert_pem: ca.cert_pem.clone(),
        key_pem: ca.key_pem.clone(),
    };
    let txn = Txn::new()
        .when([Compare::absent(CA_KEY), leadership.key.fence()])
        .and_then([TxnOp::put(CA_KEY, record.encode_to_vec())])
        .or_else([TxnOp::get(CA_KEY), TxnOp::get(&leadership.key.key)]);
    let result = store.txn(txn).await?;
    if result.succeeded {
        tracing::info!(node = %leadership.node, "cluster CA created");
        return Ok(ca);
    }
    still_leading(leadership, &result.results)?;
    match result.results.first() {
        Some(TxnOpResult::Get(kvs)) if !kvs.is_empty() => decode(&kvs[0].value),
        _ => Err("cluster CA missing although the write was refused".into()),
    }
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ActorProcessingErr + '_ {
    move |e| format!("{}: {e}", path.display()).into()
}

/// On init's node: the CA certificate, the node's own key and certificate, and the
/// first join token, each written once (a resumed init keeps what is there).
async fn write_node_files(
    ca: &CertAndKey,
    leadership: &Leadership,
    local: &LocalFiles,
) -> Result<(), ActorProcessingErr> {
    let pki = local.state_dir.join("pki");
    crate::files::private_dir(&pki).map_err(file_err(&pki))?;
    let ca_path = pki.join("ca.crt");
    crate::files::write_atomic(&ca_path, ca.cert_pem.as_bytes(), 0o644)
        .map_err(file_err(&ca_path))?;
    let (key_path, cert_path) = (pki.join("node.key"), pki.join("node.crt"));
    if !(key_path.exists() && cert_path.exists()) {
        let (key_pem, csr_pem) = node_key_and_csr(&leadership.node)?;
        let signer = ClusterCa::from_pem(ca)?;
        let cert = signer.sign_node_csr(
            &csr_pem,
            &leadership.node,
            local.advertise_address,
            NODE_CERT_VALIDITY,
        )?;
        crate::files::write_atomic(&key_path, key_pem.as_bytes(), 0o600)
            .map_err(file_err(&key_path))?;
        crate::files::write_atomic(&cert_path, cert.as_bytes(), 0o644)
            .map_err(file_err(&cert_path))?;
        tracing::info!(node = %leadership.node, path = %cert_path.display(), "node certificate written");
    }
    register_local_node(leadership, local).await?;
    write_katcall_config(ca, leadership, local).await?;
    let token_path = local.state_dir.join("join-token");
    if !token_path.exists() {
        let (token, record) = tokens::generate(
            TokenKind::Join,
            Some(tokens::DEFAULT_JOIN_TTL),
            false,
            "created by kat-agent init",
            SystemTime::now(),
        )?;
        let txn = Txn::new()
            .when([leadership.key.fence()])
            .and_then([TxnOp::put(
                tokens::key(TokenKind::Join, &record.id),
                record.encode_to_vec(),
            )]);
        if !leadership.store.txn(txn).await?.succeeded {
            return Err("not the leader any more; join token not created".into());
        }
        let credential = pin::join_credential(&token, &ca.cert_pem)?;
        crate::files::write_atomic(&token_path, format!("{credential}\n").as_bytes(), 0o600)
            .map_err(file_err(&token_path))?;
        tracing::info!(
            node = %leadership.node,
            path = %token_path.display(),
            "join token written (single use, expires in 24 h)"
        );
        println!("join token:     {}", token_path.display());
    }
    Ok(())
}

/// Registers init's node (a control-plane member) at `/kat/nodes/<name>` once.
async fn register_local_node(
    leadership: &Leadership,
    local: &LocalFiles,
) -> Result<(), ActorProcessingErr> {
    let key = node_key(&leadership.node);
    if leadership.store.get(&key).await?.is_some() {
        return Ok(());
    }
    let node = Node {
        api_version: kat_proto::quadlet::API_VERSION.to_owned(),
        kind: "Node".to_owned(),
        metadata: Some(ObjectMeta {
            name: leadership.node.clone(),
            ..Default::default()
        }),
        spec: Some(NodeSpec {
            advertise_address: local.advertise_address.to_string(),
            role: NodeRole::ControlPlane.into(),
            agent_version: kat_proto::VERSION.to_owned(),
            // Bootstrap runs on init's node: this host.
            capacity: Some(crate::node::host_capacity()),
            allocatable: Some(crate::node::host_capacity()),
            ..Default::default()
        }),
        status: None,
    };
    let api = std::net::SocketAddr::new(local.advertise_address, local.api_port);
    let txn = Txn::new()
        .when([leadership.key.fence(), Compare::absent(&key)])
        .and_then([
            TxnOp::put(&key, node.encode_to_vec()),
            TxnOp::put(control_plane_key(&leadership.node), api.to_string()),
        ]);
    if leadership.store.txn(txn).await?.succeeded {
        tracing::info!(node = %leadership.node, "node registered (control plane)");
    }
    Ok(())
}

/// Creates the admin API token and writes `DIR/katcall.yaml` (0600), once.
async fn write_katcall_config(
    ca: &CertAndKey,
    leadership: &Leadership,
    local: &LocalFiles,
) -> Result<(), ActorProcessingErr> {
    let path = local.state_dir.join("katcall.yaml");
    if path.exists() {
        return Ok(());
    }
    let (token, record) = tokens::generate(
        TokenKind::Api,
        None,
        true,
        "admin token created by kat-agent init",
        SystemTime::now(),
    )?;
    let txn = Txn::new()
        .when([leadership.key.fence()])
        .and_then([TxnOp::put(
            tokens::key(TokenKind::Api, &record.id),
            record.encode_to_vec(),
        )]);
    if !leadership.store.txn(txn).await?.succeeded {
        return Err("not the leader any more; API token not created".into());
    }
    let config = KatcallConfig {
        server: format!(
            "https://{}",
            std::net::SocketAddr::new(local.advertise_address, local.api_port)
        ),
        certificate_authority: ca.cert_pem.clone(),
        token,
    };
    crate::files::write_atomic(&path, config.to_yaml().as_bytes(), 0o600)
        .map_err(file_err(&path))?;
    tracing::info!(node = %leadership.node, path = %path.display(), "katcall configuration written (admin API token)");
    println!("katcall config: {}", path.display());
    Ok(())
}

impl Actor for Bootstrap {
    type Msg = ();
    type State = ();
    type Arguments = BootstrapArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        args: BootstrapArgs,
    ) -> Result<(), ActorProcessingErr> {
        let store = args.leadership.store.clone();
        let (uid, created) =
            record_cluster(store.as_ref(), &args.leadership, &args.cluster).await?;
        let name = args
            .cluster
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        if created {
            tracing::info!(node = %args.leadership.node, cluster = %name, %uid, "cluster created");
        } else {
            tracing::info!(node = %args.leadership.node, %uid, "cluster exists; resuming");
        }
        let local_ca = args
            .local
            .as_ref()
            .and_then(|l| read_local_ca(&l.state_dir));
        let ca = ensure_ca(store.as_ref(), &args.leadership, name, local_ca.as_ref()).await?;
        if let Some(local) = &args.local {
            write_node_files(&ca, &args.leadership, local).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<()>,
        _msg: (),
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}
