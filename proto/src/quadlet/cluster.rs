//! `cluster.kat`: the ClusterConfiguration (SPEC §4.1).

use ipnet::IpNet;

use super::API_VERSION;
use super::defaults as d;
use super::meta::{header, metadata};
use super::reader::{MapReader, Node, Report};
use crate::names;
use crate::v1alpha1::{ClusterConfiguration, ClusterConfigurationSpec, HostMountPolicy};

pub(crate) fn parse(root: &Node<'_>, r: &mut Report) -> ClusterConfiguration {
    let Some(mut top) = header(root, r, "ClusterConfiguration") else {
        return ClusterConfiguration::default();
    };
    let meta = metadata(&mut top, r, false);
    let spec = match top.field("spec") {
        Some(node) => match node.map(r) {
            Some(mut m) => {
                let spec = parse_spec(&mut m, r);
                m.finish(r);
                spec
            }
            None => defaults(),
        },
        None => defaults(),
    };
    top.finish(r);
    ClusterConfiguration {
        api_version: API_VERSION.to_owned(),
        kind: "ClusterConfiguration".to_owned(),
        metadata: Some(meta.meta),
        spec: Some(spec),
    }
}

/// A ClusterConfigurationSpec with every default.
pub fn defaults() -> ClusterConfigurationSpec {
    ClusterConfigurationSpec {
        cluster_cidr: d::CLUSTER_CIDR.to_owned(),
        service_cidr: d::SERVICE_CIDR.to_owned(),
        node_subnet_bits: d::NODE_SUBNET_BITS,
        cluster_domain: d::CLUSTER_DOMAIN.to_owned(),
        api_port: d::API_PORT,
        agent_port: d::AGENT_PORT,
        etcd_peer_port: d::ETCD_PEER_PORT,
        etcd_client_port: d::ETCD_CLIENT_PORT,
        wireguard_port: d::WIREGUARD_PORT,
        quorum_size: d::QUORUM_SIZE,
        volume_base_path: d::VOLUME_BASE_PATH.to_owned(),
        backup_path: d::BACKUP_PATH.to_owned(),
        backup_interval_minutes: Some(d::BACKUP_INTERVAL_MINUTES),
        agent_tick_seconds: d::AGENT_TICK_SECONDS,
        node_loss_timeout_seconds: d::NODE_LOSS_TIMEOUT_SECONDS,
        certificate_lifetime_seconds: d::CERTIFICATE_LIFETIME_SECONDS,
        host_mounts: Some(HostMountPolicy {
            allowed_paths: d::HOST_MOUNT_ALLOWED_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
        }),
    }
}

fn parse_spec(m: &mut MapReader<'_>, r: &mut Report) -> ClusterConfigurationSpec {
    let mut s = defaults();

    let cluster_net = cidr(m, r, "clusterCIDR", &mut s.cluster_cidr);
    let service_net = cidr(m, r, "serviceCIDR", &mut s.service_cidr);
    if let (Some(a), Some(b)) = (cluster_net, service_net)
        && (a.contains(&b.network()) || b.contains(&a.network()))
    {
        r.error(
            &m.child_path("serviceCIDR"),
            format!("{b} overlaps clusterCIDR {a}; the two ranges must be disjoint"),
        );
    }

    if let Some(bits) = m.field("nodeSubnetBits").and_then(|n| n.u32_in(r, 1, 32)) {
        s.node_subnet_bits = bits;
    }
    if let Some(net) = cluster_net {
        let prefix = u32::from(net.prefix_len()) + s.node_subnet_bits;
        let max = u32::from(match net {
            IpNet::V4(_) => d::MAX_NODE_SUBNET_PREFIX,
            IpNet::V6(_) => 126,
        });
        if prefix > max {
            r.error(
                &m.child_path("nodeSubnetBits"),
                format!(
                    "{} + {} gives node subnets of /{prefix}; the longest allowed is /{max}",
                    net.prefix_len(),
                    s.node_subnet_bits
                ),
            );
        }
    }

    if let Some(domain) = m.field("clusterDomain").and_then(|n| {
        let v = n.string(r)?;
        if let Some(problem) = names::dns_name_problem(&v) {
            r.error(&n.path, problem);
        }
        Some(v)
    }) {
        s.cluster_domain = domain;
    }

    let mut ports: Vec<(&'static str, u32)> = Vec::new();
    for (key, slot) in [
        ("apiPort", &mut s.api_port),
        ("agentPort", &mut s.agent_port),
        ("etcdPeerPort", &mut s.etcd_peer_port),
        ("etcdClientPort", &mut s.etcd_client_port),
        ("wireguardPort", &mut s.wireguard_port),
    ] {
        if let Some(port) = m.field(key).and_then(|n| n.u32_in(r, 1, 65535)) {
            *slot = port;
        }
        ports.push((key, *slot));
    }
    for (i, (key, port)) in ports.iter().enumerate() {
        if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
            r.error(
                &m.child_path(key),
                format!("port {port} is also used by {other}; each port must differ"),
            );
        }
    }

    if let Some(n) = m.field("quorumSize")
        && let Some(q) = n.u32(r)
    {
        if q == 0 || q % 2 == 0 || q > 7 {
            r.error(
                &n.path,
                format!("{q} is not a valid quorum size (use 1, 3, 5 or 7)"),
            );
        } else {
            s.quorum_size = q;
        }
    }

    for (key, slot) in [
        ("volumeBasePath", &mut s.volume_base_path),
        ("backupPath", &mut s.backup_path),
    ] {
        if let Some(n) = m.field(key)
            && let Some(path) = n.string(r)
        {
            if let Some(problem) = names::absolute_path_problem(&path) {
                r.error(&n.path, problem);
            }
            *slot = path;
        }
    }

    if let Some(n) = m.field("hostMounts")
        && let Some(mut policy) = n.map(r)
    {
        let mut allowed_paths = Vec::new();
        if let Some(list) = policy.field("allowedPaths") {
            for item in list.seq(r).unwrap_or_default() {
                if let Some(path) = item.string(r) {
                    if let Some(problem) = names::allowed_prefix_problem(&path) {
                        r.error(&item.path, problem);
                    }
                    allowed_paths.push(path);
                }
            }
        }
        policy.finish(r);
        s.host_mounts = Some(HostMountPolicy { allowed_paths });
    }

    if let Some(minutes) = m.field("backupIntervalMinutes").and_then(|n| n.u32(r)) {
        s.backup_interval_minutes = Some(minutes);
    }
    if let Some(tick) = m
        .field("agentTickSeconds")
        .and_then(|n| n.u32_in(r, 1, 3600))
    {
        s.agent_tick_seconds = tick;
    }
    if let Some(lifetime) = m.field("certificateLifetimeSeconds").and_then(|n| {
        n.u32_in(
            r,
            d::MIN_CERTIFICATE_LIFETIME_SECONDS,
            d::MAX_CERTIFICATE_LIFETIME_SECONDS,
        )
    }) {
        s.certificate_lifetime_seconds = lifetime;
    }
    let loss = m.field("nodeLossTimeoutSeconds");
    if let Some(timeout) = loss.as_ref().and_then(|n| n.u32_in(r, 1, 86_400)) {
        s.node_loss_timeout_seconds = timeout;
    }
    if u64::from(s.node_loss_timeout_seconds) <= 2 * u64::from(s.agent_tick_seconds) {
        let path = m.child_path("nodeLossTimeoutSeconds");
        r.error(
            &path,
            format!(
                "{} s must be more than twice agentTickSeconds ({} s), or one late heartbeat marks a node lost",
                s.node_loss_timeout_seconds, s.agent_tick_seconds
            ),
        );
    }
    s
}

/// Reads a CIDR field: a network address with its prefix (`10.100.0.0/16`).
fn cidr(
    m: &mut MapReader<'_>,
    r: &mut Report,
    key: &'static str,
    slot: &mut String,
) -> Option<IpNet> {
    let (path, text) = match m.field(key) {
        Some(n) => {
            let text = n.string(r)?;
            (n.path, text)
        }
        None => (m.child_path(key), slot.clone()),
    };
    let net: IpNet = match text.parse() {
        Ok(net) => net,
        Err(_) => {
            r.error(
                &path,
                format!("{text:?} is not a CIDR range (use e.g. 10.100.0.0/16)"),
            );
            return None;
        }
    };
    if net.network() != net.addr() {
        r.error(
            &path,
            format!(
                "{text} has host bits set; the range starts at {}",
                net.trunc()
            ),
        );
        return None;
    }
    *slot = text;
    Some(net)
}

/// The cluster configuration as the agent works with it: durations, ports and paths,
/// every default applied, read once from the `ClusterConfiguration` and handed to every
/// actor. `config` keeps the configuration itself (stored at bootstrap, sent to joining
/// nodes).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub name: String,
    /// `agentTickSeconds`: how often agents report and the leader looks (at least 1 s).
    pub agent_tick: std::time::Duration,
    /// `nodeLossTimeoutSeconds`: silence after which a node is NotReady (at least 1 s).
    pub node_loss_timeout: std::time::Duration,
    /// `certificateLifetimeSeconds`: how long node, etcd and API server certificates
    /// are valid; each is renewed at two thirds of it.
    pub certificate_lifetime: std::time::Duration,
    pub api_port: u16,
    pub agent_port: u16,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub wireguard_port: u16,
    /// How many nodes are control-plane (etcd) members.
    pub quorum_size: usize,
    /// `volumeBasePath`: where simpleClusterStorage lives on each node.
    pub volume_base: std::path::PathBuf,
    /// `backupPath`: where the leader keeps etcd snapshots.
    pub backup_dir: std::path::PathBuf,
    /// `hostMounts.allowedPaths`: the host-path prefixes a `hostMount` may name (the
    /// default list when the configuration has no `hostMounts`, as one stored before
    /// it existed).
    pub host_mount_allowed: Vec<String>,
    /// `backupIntervalMinutes`; `None` when 0 (no periodic backups).
    pub backup_interval: Option<std::time::Duration>,
    pub config: ClusterConfiguration,
}

impl From<&ClusterConfiguration> for ClusterSettings {
    fn from(config: &ClusterConfiguration) -> Self {
        use std::time::Duration;
        let spec = config.spec.clone().unwrap_or_else(defaults);
        let port = |p: u32| u16::try_from(p).unwrap_or_default();
        let seconds = |s: u32| Duration::from_secs(u64::from(s.max(1)));
        let path = |p: &str, default: &str| {
            std::path::PathBuf::from(if p.is_empty() { default } else { p })
        };
        let minutes = spec
            .backup_interval_minutes
            .unwrap_or(d::BACKUP_INTERVAL_MINUTES);
        Self {
            name: config
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            agent_tick: seconds(spec.agent_tick_seconds),
            node_loss_timeout: seconds(spec.node_loss_timeout_seconds),
            certificate_lifetime: Duration::from_secs(u64::from(
                match spec.certificate_lifetime_seconds {
                    0 => d::CERTIFICATE_LIFETIME_SECONDS,
                    s => s.max(d::MIN_CERTIFICATE_LIFETIME_SECONDS),
                },
            )),
            api_port: port(spec.api_port),
            agent_port: port(spec.agent_port),
            etcd_client_port: port(spec.etcd_client_port),
            etcd_peer_port: port(spec.etcd_peer_port),
            wireguard_port: port(spec.wireguard_port),
            quorum_size: usize::try_from(spec.quorum_size.max(1)).unwrap_or(1),
            volume_base: path(&spec.volume_base_path, d::VOLUME_BASE_PATH),
            backup_dir: path(&spec.backup_path, d::BACKUP_PATH),
            host_mount_allowed: match &spec.host_mounts {
                Some(policy) => policy.allowed_paths.clone(),
                None => d::HOST_MOUNT_ALLOWED_PATHS
                    .iter()
                    .map(|p| (*p).to_owned())
                    .collect(),
            },
            backup_interval: (minutes > 0).then(|| Duration::from_secs(u64::from(minutes) * 60)),
            config: config.clone(),
        }
    }
}

impl ClusterSettings {
    /// Why a workload of this cluster may not mount `path` from the host: the
    /// built-in deny list, KAT's volume and backup directories, or outside
    /// `hostMounts.allowedPaths`.
    pub fn host_mount_problem(&self, path: &str) -> Option<String> {
        let volume_base = self.volume_base.display().to_string();
        let backups = self.backup_dir.display().to_string();
        names::host_path_problem(path, &[volume_base.as_str(), backups.as_str()])
            .or_else(|| names::host_path_allowed_problem(path, &self.host_mount_allowed))
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn settings_carry_the_defaults_and_a_zero_interval_means_no_backups() {
        let mut config = ClusterConfiguration {
            spec: Some(defaults()),
            ..Default::default()
        };
        let s = ClusterSettings::from(&config);
        assert_eq!(s.agent_tick, Duration::from_secs(15));
        assert_eq!(s.node_loss_timeout, Duration::from_secs(60));
        assert_eq!(s.api_port, 9115);
        assert_eq!(s.backup_interval, Some(Duration::from_secs(30 * 60)));
        assert_eq!(s.volume_base, std::path::PathBuf::from(d::VOLUME_BASE_PATH));
        if let Some(spec) = config.spec.as_mut() {
            spec.backup_interval_minutes = Some(0);
            spec.agent_tick_seconds = 0;
        }
        let s = ClusterSettings::from(&config);
        assert_eq!(s.backup_interval, None);
        assert_eq!(s.agent_tick, Duration::from_secs(1), "never a zero tick");
    }

    #[test]
    fn host_mount_allowlist_defaults_when_absent_and_empty_means_none() {
        let text = |extra: &str| {
            format!(
                "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\n\
                 metadata: {{name: t}}\nspec:\n{extra}"
            )
        };
        let settings = |extra: &str| {
            let config =
                crate::quadlet::parse_cluster_config("cluster.kat", text(extra).as_bytes())
                    .expect("a valid cluster.kat");
            ClusterSettings::from(&config)
        };
        let default_list: Vec<String> = d::HOST_MOUNT_ALLOWED_PATHS
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        assert_eq!(
            settings("  quorumSize: 1\n").host_mount_allowed,
            default_list
        );
        assert_eq!(
            settings("  hostMounts: {allowedPaths: [/tank, /]}\n").host_mount_allowed,
            vec!["/tank".to_owned(), "/".to_owned()]
        );
        assert!(
            settings("  hostMounts: {allowedPaths: []}\n")
                .host_mount_allowed
                .is_empty()
        );
        // A configuration stored before the setting existed gets the defaults.
        let mut old = ClusterConfiguration {
            spec: Some(defaults()),
            ..Default::default()
        };
        if let Some(spec) = old.spec.as_mut() {
            spec.host_mounts = None;
        }
        assert_eq!(ClusterSettings::from(&old).host_mount_allowed, default_list);
    }
}
