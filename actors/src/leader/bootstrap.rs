//! `Bootstrap` (leader subtree): records the cluster's identity, configuration and CA
//! the first time a leader exists (a later leader, or a re-run `kat-agent init`, finds
//! them and resumes). On init's node it also registers that node as a control-plane
//! member and writes `DIR/katcall.yaml` (admin API token) and the
//! first join token, each once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::{Node, NodeRole, NodeSpec, ObjectMeta, TokenKind};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::client::KatcallConfig;
use crate::pki::ca::CertAndKey;
use crate::pki::local::ClusterPki;
use crate::pki::{pin, tokens};
use crate::state::{self, Leadership, keys};
use crate::store::{Compare, TxnOp};

/// Written by `kat-agent init` before anything else and removed here once
/// `katcall.yaml` and the join token exist: while it is there no admin and no node has
/// the cluster yet, and an init with corrected settings may start over (and sets the
/// unfinished one aside). Joined nodes, restored members and finished inits never
/// have it.
pub const INIT_PENDING: &str = "init-pending";

/// The node whose files the leader writes at bootstrap (the node `kat-agent init` runs on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFiles {
    pub state_dir: PathBuf,
    pub advertise_address: IpAddr,
    /// The API's port (for `katcall.yaml`'s server URL).
    pub api_port: u16,
}

#[derive(Clone)]
pub struct BootstrapArgs {
    pub leadership: Leadership,
    pub settings: ClusterSettings,
    pub pki: ClusterPki,
    pub local: Option<LocalFiles>,
}

/// Records the cluster once; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bootstrap;

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ActorProcessingErr + '_ {
    move |e| format!("{}: {e}", path.display()).into()
}

/// On init's node: its node record, `katcall.yaml` and the first join token, each
/// written once (a resumed init keeps what is there). Its PKI files were written by
/// `kat-agent init` before etcd started (`crate::procedures::init`).
async fn write_node_files(
    ca: &CertAndKey,
    leadership: &Leadership,
    local: &LocalFiles,
) -> Result<(), ActorProcessingErr> {
    register_local_node(leadership, local).await?;
    write_katcall_config(ca, leadership, local).await?;
    let token_path = local.state_dir.join("join-token");
    if !token_path.exists() {
        let (token, _) = state::tokens::issue(
            leadership,
            TokenKind::Join,
            Some(tokens::DEFAULT_JOIN_TTL),
            false,
            "created by kat-agent init",
            SystemTime::now(),
        )
        .await?;
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
    // init is complete: the marker that lets a corrected init start over goes.
    let pending = local.state_dir.join(INIT_PENDING);
    match std::fs::remove_file(&pending) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(file_err(&pending)(e)),
        _ => {}
    }
    Ok(())
}

/// Registers init's node (a control-plane member) at `/kat/nodes/<name>` once.
async fn register_local_node(
    leadership: &Leadership,
    local: &LocalFiles,
) -> Result<(), ActorProcessingErr> {
    let key = keys::node(&leadership.node);
    if leadership.store.get(&key).await?.is_some() {
        return Ok(());
    }
    // The certificate init wrote before etcd started: the record binds it.
    let pki = crate::pki::local::pki_dir(&local.state_dir);
    let certificate = pki.read_node_pair()?.cert_pem;
    let certificate_key = crate::pki::ca::key_sha256_of_pem(&certificate)?;
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
            capacity: Some(kat_runtime::probe::host_capacity()),
            allocatable: Some(kat_runtime::probe::host_capacity()),
            certificate_key_sha256: vec![certificate_key],
            ..Default::default()
        }),
        status: None,
    };
    let api = std::net::SocketAddr::new(local.advertise_address, local.api_port);
    let ops = [
        TxnOp::put(&key, node.encode_to_vec()),
        TxnOp::put(keys::control_plane(&leadership.node), api.to_string()),
    ];
    if leadership.commit([Compare::absent(&key)], ops).await? {
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
    let (token, _) = state::tokens::issue(
        leadership,
        TokenKind::Api,
        None,
        true,
        "admin token created by kat-agent init",
        SystemTime::now(),
    )
    .await?;
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
        let (uid, created) =
            state::cluster::record(&args.leadership, &args.settings.config).await?;
        let name = args.settings.name.as_str();
        if created {
            tracing::info!(node = %args.leadership.node, cluster = %name, %uid, "cluster created");
        } else {
            tracing::info!(node = %args.leadership.node, %uid, "cluster exists; resuming");
        }
        let ca = &args.pki.cluster;
        state::cluster::record_ca(&args.leadership, &ca.cert_pem).await?;
        if let Some(local) = &args.local {
            write_node_files(ca, &args.leadership, local).await?;
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
