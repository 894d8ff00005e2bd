//! `kat-agent restore`: a new single-member control plane from a backup, for when the
//! control plane is lost (its disk died, its state directory was destroyed).
//!
//! The cluster comes back as it was at the snapshot: same cluster UID and cluster CA,
//! same nodes, workloads, instances and tokens. Only the control plane is new: this
//! node is its one etcd member (a new etcd cluster ID and a new etcd CA, so no former
//! member can talk to it or use its etcd certificate), and every former member is
//! dropped from the member list and listed as a worker. Joined nodes keep their
//! certificates and reattach by themselves; their containers keep running throughout
//! and are adopted as they are. See `docs/operations.md` ("Restore").
//!
//! Everything is built in `DIR/.restore/` (removed again, also when restore fails) and
//! moved into place at the end, `agent.json` last: a failed restore leaves nothing that
//! blocks the next try, and restore never overwrites an etcd data directory.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kat_proto::quadlet::{self, ClusterSettings};
use kat_proto::v1alpha1::{
    CertificateAuthority, ClusterConfiguration, EventSeverity, Node, NodeRole, NodeSpec, ObjectMeta,
};
use prost::Message;

use super::init::{sign_member_pairs, write_member_pki};
use super::state_dir::{
    AgentError, AgentIdentity, CLUSTER_FILE, IDENTITY_FILE, default_advertise_address,
    default_node_name, io_err, read_identity, same_node, write_private,
};
use crate::pki::ca::{ClusterCa, node_key_and_csr};
use crate::pki::local::{ClusterPki, PkiDir, pki_dir};
use crate::state::keys;
use crate::store::etcd_process::{EtcdMemberConfig, EtcdProcess};
use crate::store::{EtcdTls, StateStore, Txn, TxnOp};

/// Flags of `kat-agent restore`.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub state_dir: PathBuf,
    /// An etcd snapshot `katcall backup` (or the leader's timer) made.
    pub snapshot: PathBuf,
    /// The cluster's CAs: a `pki/` directory beside the backups, or a copy of a
    /// control-plane member's `DIR/pki`. Default: `DIR/pki` if it holds them, else
    /// `pki/` beside the snapshot.
    pub pki: Option<PathBuf>,
    pub node_name: Option<String>,
    pub advertise_address: Option<IpAddr>,
    pub etcd_bin: PathBuf,
}

/// What a restore rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub node_name: String,
    pub advertise_address: IpAddr,
    pub cluster_name: String,
    pub cluster_uid: String,
    /// The store's revision after the restore.
    pub revision: i64,
    /// Former control-plane members, no longer in the member list.
    pub former_members: Vec<String>,
}

/// Where a restore is built; removed when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const STAGING_DIR: &str = ".restore";

/// How long the staging etcd may take to start and stop.
const ETCD_START: Duration = Duration::from_secs(30);
const ETCD_STOP: Duration = Duration::from_secs(10);

fn failed(what: impl Into<String>) -> AgentError {
    AgentError::Restore(what.into())
}

/// Rebuilds this node as the cluster's only control-plane member from `opts.snapshot`;
/// see the module docs. Start it afterwards with `kat-agent run`.
pub async fn restore(opts: &RestoreOptions) -> Result<Restored, AgentError> {
    let dir = &opts.state_dir;
    let snapshot = &opts.snapshot;
    let existing = check_state_dir(dir, opts)?;
    let checked = snapshot.clone();
    tokio::task::spawn_blocking(move || crate::leader::backups::verify_snapshot(&checked))
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(format!("--snapshot {e}")))?;
    let cas = read_cas(dir, opts)?;
    let tool = restore_tool(&opts.etcd_bin)?;
    let node_name = match (&opts.node_name, &existing) {
        (Some(name), _) => name.clone(),
        (None, Some(identity)) => identity.node_name.clone(),
        (None, None) => default_node_name()?,
    };
    if let Some(problem) = kat_proto::names::dns_label_problem(&node_name) {
        return Err(AgentError::NodeName(problem));
    }

    crate::files::private_dir(dir).map_err(io_err(dir))?;
    let staging = Staging(dir.join(STAGING_DIR));
    match std::fs::remove_dir_all(&staging.0) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&staging.0)(e)),
        _ => {}
    }
    crate::files::private_dir(&staging.0).map_err(io_err(&staging.0))?;
    let data = staging.0.join("etcd");

    // etcd's own restore, with a stand-in peer URL (the real one needs the cluster's
    // configuration, which is in the snapshot): corrected below.
    let client_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
    let peer_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()?);
    let peer = format!("https://{peer_addr}");
    let token = format!(
        "kat-restore-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let out = tokio::process::Command::new(&tool)
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", &node_name])
        .args(["--initial-cluster", &format!("{node_name}={peer}")])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster-token", &token])
        .output()
        .await
        .map_err(|e| failed(format!("{}: {e}", tool.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(failed(format!(
            "--snapshot {}: {} snapshot restore failed: {last}",
            snapshot.display(),
            tool.display()
        )));
    }

    // The restored data, served on loopback only to this procedure, with mTLS like
    // every member (under a CA made for this alone).
    let tls = staging_tls(&staging.0)?;
    let mut member = EtcdMemberConfig::single_tls(
        opts.etcd_bin.clone(),
        &node_name,
        data.clone(),
        client_addr,
        peer_addr,
        tls,
    );
    member.log_file = Some(staging.0.join("etcd.log"));
    let mut etcd = EtcdProcess::spawn(&member).map_err(|e| failed(e.to_string()))?;
    let store = etcd
        .wait_healthy(ETCD_START)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let rebuilt = rebuild(&store, &cas, &node_name, existing.as_ref(), opts).await;
    let stopped = etcd.stop(ETCD_STOP).await;
    let (restored, identity, config, cas, pairs) = rebuilt?;
    stopped.map_err(|e| failed(format!("stopping the restored etcd: {e}")))?;

    // Into place; agent.json last (until it is there, the directory is no node).
    let pki = pki_dir(dir);
    write_member_pki(&pki, &cas, &pairs).map_err(io_err(&pki.0))?;
    let yaml = quadlet::to_yaml(&config).map_err(|e| failed(e.to_string()))?;
    write_private(&dir.join(CLUSTER_FILE), yaml.as_bytes())?;
    let target = dir.join("etcd");
    std::fs::rename(&data, &target).map_err(io_err(&target))?;
    let json = serde_json::to_vec_pretty(&identity).map_err(|e| failed(e.to_string()))?;
    write_private(&dir.join(IDENTITY_FILE), &json)?;
    tracing::info!(
        node = %restored.node_name,
        cluster = %restored.cluster_name,
        uid = %restored.cluster_uid,
        snapshot = %snapshot.display(),
        "control plane restored"
    );
    Ok(restored)
}

/// The staging etcd's TLS files: a CA made for it alone, and a pair for 127.0.0.1 it
/// signs (an hour's lifetime; the directory, and the CA's key, go when restore ends).
fn staging_tls(staging: &Path) -> Result<EtcdTls, AgentError> {
    let etcd_ca =
        &crate::pki::ca::generate_etcd_ca("restore staging").map_err(|e| failed(e.to_string()))?;
    let signed = node_key_and_csr("restore").and_then(|(key_pem, csr)| {
        ClusterCa::from_pem(etcd_ca)?
            .sign_node_csr(
                &csr,
                "restore",
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                Duration::from_secs(3600),
            )
            .map(|cert_pem| (cert_pem, key_pem))
    });
    let (cert_pem, key_pem) = signed.map_err(|e| failed(e.to_string()))?;
    let tls = EtcdTls {
        ca_file: staging.join("etcd-ca.crt"),
        cert_file: staging.join("etcd.crt"),
        key_file: staging.join("etcd.key"),
    };
    write_private(&tls.ca_file, etcd_ca.cert_pem.as_bytes())?;
    write_private(&tls.cert_file, cert_pem.as_bytes())?;
    write_private(&tls.key_file, key_pem.as_bytes())?;
    Ok(tls)
}

/// The state directory may be new, or a control-plane member's whose etcd data is gone;
/// returns the identity it holds.
fn check_state_dir(dir: &Path, opts: &RestoreOptions) -> Result<Option<AgentIdentity>, AgentError> {
    let data = dir.join("etcd");
    if data.exists() {
        return Err(AgentError::Conflict(format!(
            "{} holds an etcd member's data; restore never overwrites it: move it aside \
             (mv {0} {0}.old) and run restore again",
            data.display()
        )));
    }
    let existing = read_identity(dir)?;
    if let Some(identity) = &existing {
        if !identity.control_plane {
            return Err(AgentError::Conflict(format!(
                "{} belongs to worker node {:?}; restore rebuilds a control-plane member: \
                 use another --state-dir",
                dir.display(),
                identity.node_name
            )));
        }
        same_node(
            dir,
            identity,
            opts.node_name.as_deref(),
            opts.advertise_address,
        )?;
    }
    Ok(existing)
}

/// The cluster CA (certificate and key), from `--pki`, `DIR/pki`, or `pki/` beside
/// the snapshot. The etcd CA there is not needed: the restored member gets a new one.
fn read_cas(dir: &Path, opts: &RestoreOptions) -> Result<ClusterPki, AgentError> {
    let (source, flag) = match &opts.pki {
        Some(path) => (PkiDir(path.clone()), "--pki"),
        None => {
            let own = pki_dir(dir);
            if own.ca_key().exists() {
                (own, "--state-dir's pki")
            } else {
                let beside = opts
                    .snapshot
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(crate::leader::backups::CA_COPY_DIR);
                (PkiDir(beside), "the pki directory beside --snapshot")
            }
        }
    };
    // A pair read as a pair: a key that is not the certificate's is refused.
    let cluster =
        crate::pki::local::read_pair(&source.ca_cert(), &source.ca_key()).map_err(|e| {
            failed(format!(
                "{flag} ({}): {e}; restore needs the cluster CA (ca.crt, ca.key): the pki \
                 directory the leader keeps beside its backups, or a copy of a \
                 control-plane member's DIR/pki, given with --pki",
                source.0.display()
            ))
        })?;
    Ok(ClusterPki {
        cluster,
        etcd: None,
    })
}

/// `etcdutl` (etcd 3.5 and later) or `etcdctl` (3.4), beside the etcd binary or on PATH.
fn restore_tool(etcd_bin: &Path) -> Result<PathBuf, AgentError> {
    let beside = etcd_bin.parent().filter(|p| !p.as_os_str().is_empty());
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["etcdutl", "etcdctl"] {
        let found = beside
            .map(|dir| dir.join(name))
            .into_iter()
            .chain(std::env::split_paths(&path).map(|dir| dir.join(name)))
            .find(|p| p.is_file());
        if let Some(found) = found {
            return Ok(found);
        }
    }
    Err(failed(
        "neither etcdutl nor etcdctl is beside the etcd binary or on PATH; restore uses \
         etcd's own snapshot restore (install etcd's client tools: scripts/install-deps.sh)",
    ))
}

fn free_port() -> Result<u16, AgentError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed(format!("no free loopback port: {e}")))
}

type Rebuilt = (
    Restored,
    AgentIdentity,
    ClusterConfiguration,
    ClusterPki,
    (crate::pki::ca::CertAndKey, crate::pki::ca::CertAndKey),
);

/// In the restored store: checks it is this CA's cluster, makes this node its only
/// control-plane member (in one transaction, with a `ClusterRestored` event), and
/// gives its etcd member its real peer URL.
async fn rebuild(
    store: &crate::store::EtcdStore,
    cas: &ClusterPki,
    node_name: &str,
    existing: Option<&AgentIdentity>,
    opts: &RestoreOptions,
) -> Result<Rebuilt, AgentError> {
    let in_snapshot =
        |what: &str| failed(format!("--snapshot {}: {what}", opts.snapshot.display()));
    let read = |e: crate::store::StoreError| failed(format!("reading the restored store: {e}"));
    let uid = store
        .get(keys::CLUSTER_UID)
        .await
        .map_err(read)?
        .ok_or_else(|| in_snapshot("holds no KAT cluster (no cluster UID)"))?;
    let uid = String::from_utf8_lossy(&uid.value).into_owned();
    let config = store
        .get(keys::CLUSTER_CONFIG)
        .await
        .map_err(read)?
        .ok_or_else(|| in_snapshot("holds no cluster configuration"))?;
    let config = ClusterConfiguration::decode(config.value.as_slice())
        .map_err(|e| in_snapshot(&format!("unreadable cluster configuration: {e}")))?;
    let ca = store
        .get(keys::CA)
        .await
        .map_err(read)?
        .ok_or_else(|| in_snapshot("holds no cluster CA"))?;
    let ca = CertificateAuthority::decode(ca.value.as_slice())
        .map_err(|e| in_snapshot(&format!("unreadable cluster CA: {e}")))?;
    if ca.cert_pem.trim() != cas.cluster.cert_pem.trim() {
        return Err(failed(
            "the CA given (ca.crt) is not this snapshot's cluster CA: a restore keeps the \
             cluster's CA, so that its nodes' certificates stay valid; give the CAs of the \
             cluster the snapshot is from (--pki)",
        ));
    }
    let settings = ClusterSettings::from(&config);
    let key = keys::node(node_name);
    let record = match store.get(&key).await.map_err(read)? {
        Some(kv) => Some(
            Node::decode(kv.value.as_slice())
                .map_err(|e| in_snapshot(&format!("unreadable record of node {node_name}: {e}")))?,
        ),
        None => None,
    };
    let spec = record.as_ref().and_then(|n| n.spec.clone());
    if let Some(spec) = &spec
        && spec.role() == NodeRole::Worker
    {
        return Err(failed(format!(
            "--node-name {node_name}: a worker in this snapshot; restore onto the name of a \
             former control-plane member, or a new one"
        )));
    }
    let advertise_address = opts
        .advertise_address
        .or(existing.map(|i| i.advertise_address))
        .or_else(|| spec.as_ref().and_then(|s| s.advertise_address.parse().ok()))
        .unwrap_or_else(default_advertise_address);
    let identity = AgentIdentity {
        node_name: node_name.to_owned(),
        advertise_address,
        control_plane: true,
        leader_api: Vec::new(),
        etcd_initial_cluster: None,
    };
    // A new etcd CA: the restored member is alone, and no former member's etcd
    // certificate (signed by the old one) is trusted by it. The cluster CA stays, so
    // the nodes' certificates do; members that join later get the new etcd CA.
    let cas = ClusterPki {
        cluster: cas.cluster.clone(),
        etcd: Some(
            crate::pki::ca::generate_etcd_ca(&settings.name).map_err(|e| failed(e.to_string()))?,
        ),
    };
    let pairs = sign_member_pairs(&cas, &identity, settings.certificate_lifetime)?;
    let certificate_key =
        crate::pki::ca::key_sha256_of_pem(&pairs.0.cert_pem).map_err(|e| failed(e.to_string()))?;

    // This node, with its new certificate, as the only member.
    let mut node = record.unwrap_or_else(|| Node {
        api_version: quadlet::API_VERSION.to_owned(),
        kind: "Node".to_owned(),
        metadata: Some(ObjectMeta {
            name: node_name.to_owned(),
            ..Default::default()
        }),
        spec: None,
        status: None,
    });
    let mut spec = spec.unwrap_or_else(|| NodeSpec {
        capacity: Some(kat_runtime::probe::host_capacity()),
        allocatable: Some(kat_runtime::probe::host_capacity()),
        ..Default::default()
    });
    spec.advertise_address = advertise_address.to_string();
    spec.role = NodeRole::ControlPlane.into();
    spec.agent_version = kat_proto::VERSION.to_owned();
    spec.certificate_key_sha256 = vec![certificate_key];
    node.spec = Some(spec);
    let (members, _) = store.list(keys::CONTROL_PLANE_PREFIX).await.map_err(read)?;
    let former_members: Vec<String> = members
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(keys::CONTROL_PLANE_PREFIX))
        .filter(|name| *name != node_name)
        .map(str::to_owned)
        .collect();
    // Former leaders' election keys: this node need not wait out their leases.
    let (election, _) = store
        .list(&format!("{}/", keys::ELECTION_PREFIX))
        .await
        .map_err(read)?;
    let api = SocketAddr::new(advertise_address, settings.api_port);
    let named = std::fs::canonicalize(&opts.snapshot).unwrap_or_else(|_| opts.snapshot.clone());
    let message = format!(
        "control plane restored on {node_name} ({advertise_address}) from snapshot {}{}",
        named.display(),
        if former_members.is_empty() {
            String::new()
        } else {
            format!(
                "; former members, now listed as workers (katcall delete node removes them): {}",
                former_members.join(", ")
            )
        }
    );
    let event = crate::state::events::node_event(
        node_name,
        "ClusterRestored",
        EventSeverity::Warning,
        message,
        SystemTime::now(),
    );
    let lease = store
        .grant_lease(Duration::from_secs(70 * 60))
        .await
        .ok()
        .map(|l| l.id);
    let mut ops = vec![
        TxnOp::put(&key, node.encode_to_vec()),
        TxnOp::put(keys::control_plane(node_name), api.to_string()),
        event.put(lease),
    ];
    ops.extend(
        former_members
            .iter()
            .map(|name| TxnOp::delete(keys::control_plane(name))),
    );
    // Former members are members no more: every other node recorded as control
    // plane is listed as a worker (its instances are replaced as it goes lost), so
    // that `katcall delete node` can remove it and it can join again.
    let (nodes, _) = store.list(keys::NODES_PREFIX).await.map_err(read)?;
    for kv in nodes {
        let Ok(mut former) = Node::decode(kv.value.as_slice()) else {
            continue;
        };
        let name = former.metadata.as_ref().map(|m| m.name.clone());
        let Some(spec) = former.spec.as_mut() else {
            continue;
        };
        if name.as_deref() == Some(node_name) || spec.role() != NodeRole::ControlPlane {
            continue;
        }
        spec.role = NodeRole::Worker.into();
        ops.push(TxnOp::put(kv.key.clone(), former.encode_to_vec()));
    }
    ops.extend(election.iter().map(|kv| TxnOp::delete(kv.key.clone())));
    let done = store
        .txn(Txn::new().and_then(ops))
        .await
        .map_err(|e| failed(format!("writing the restored store: {e}")))?;

    // The member's peer URL, as the cluster's configuration says (members that join
    // later reach it there).
    let mut client = store.client();
    let listed = client
        .member_list()
        .await
        .map_err(|e| failed(format!("listing the restored member: {e}")))?;
    let id = listed
        .members()
        .first()
        .map(etcd_client::Member::id)
        .ok_or_else(|| failed("the restored store has no member"))?;
    let scheme = "https";
    let peer_url = format!(
        "{scheme}://{}",
        SocketAddr::new(advertise_address, settings.etcd_peer_port)
    );
    client
        .member_update(id, vec![peer_url])
        .await
        .map_err(|e| failed(format!("setting the restored member's peer URL: {e}")))?;

    let restored = Restored {
        node_name: node_name.to_owned(),
        advertise_address,
        cluster_name: settings.name.clone(),
        cluster_uid: uid,
        revision: done.revision,
        former_members,
    };
    Ok((restored, identity, config, cas, pairs))
}
