//! Every default of the Quadlet kinds, in one place (SPEC §4).

/// Namespace of namespaced resources that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

// cluster.kat
pub const CLUSTER_CIDR: &str = "10.100.0.0/16";
pub const SERVICE_CIDR: &str = "10.200.0.0/16";
pub const NODE_SUBNET_BITS: u32 = 7;
pub const CLUSTER_DOMAIN: &str = "kat.cluster.local";
pub const API_PORT: u32 = 9115;
pub const AGENT_PORT: u32 = 9116;
pub const ETCD_PEER_PORT: u32 = 2380;
pub const ETCD_CLIENT_PORT: u32 = 2379;
pub const WIREGUARD_PORT: u32 = 51820;
pub const QUORUM_SIZE: u32 = 1;
pub const VOLUME_BASE_PATH: &str = "/var/lib/kat/volumes";
pub const BACKUP_PATH: &str = "/var/lib/kat/backups";
pub const BACKUP_INTERVAL_MINUTES: u32 = 30;
pub const AGENT_TICK_SECONDS: u32 = 15;
pub const NODE_LOSS_TIMEOUT_SECONDS: u32 = 60;
/// Node, etcd and API server certificates: a year, renewed at two thirds of it.
pub const CERTIFICATE_LIFETIME_SECONDS: u32 = 365 * 24 * 3600;
/// The shortest lifetime accepted (short lifetimes are for tests of rotation).
pub const MIN_CERTIFICATE_LIFETIME_SECONDS: u32 = 10;
/// The longest: five years (the cluster CA is valid for ten).
pub const MAX_CERTIFICATE_LIFETIME_SECONDS: u32 = 5 * 365 * 24 * 3600;
/// Where a `hostMount` may point unless `hostMounts.allowedPaths` says otherwise: the
/// places a home lab keeps data of its own. The deny list
/// ([`crate::names::DENIED_HOST_PATHS`]) applies below these too.
/// (`/home` and `/opt` are not among them: users' keys and shells, workload users'
/// own homes, and programs root runs, such as CNI plugins, live there.)
pub const HOST_MOUNT_ALLOWED_PATHS: &[&str] = &["/srv", "/mnt", "/media", "/data"];
/// Longest node subnet prefix: a /30 leaves one usable instance address.
pub const MAX_NODE_SUBNET_PREFIX: u8 = 30;

/// More than any one machine has: the most a request, a limit or a node's capacity
/// may say (a typo or a hostile number is refused rather than overflowing the
/// scheduler's sums, or attracting every instance to one node).
pub const MAX_CPU_MILLIS: u64 = 4096 * 1000;
pub const MAX_MEMORY_BYTES: u64 = 64 << 40;
pub const MAX_GPUS: usize = 64;

// workload.kat
pub const REPLICAS: i32 = 1;
/// Upper bound on replicas of one SERVICE; a typo like 10000 is refused rather than scheduled.
pub const MAX_REPLICAS: i64 = 1000;
pub const MAX_SURGE: &str = "1";
pub const MAX_RESTARTS: u32 = 5;
pub const RESET_SECONDS: u32 = 3600;
pub const CONTAINER_NAME: &str = "main";

// VirtualLoadBalancer.kat health checks
pub const HEALTH_PERIOD_SECONDS: u32 = 10;
pub const HEALTH_TIMEOUT_SECONDS: u32 = 1;
pub const HEALTH_SUCCESS_THRESHOLD: u32 = 1;
pub const HEALTH_FAILURE_THRESHOLD: u32 = 3;
pub const INGRESS_PATH: &str = "/";

// job.kat
pub const JOB_COMPLETIONS: u32 = 1;
pub const JOB_PARALLELISM: u32 = 1;
pub const JOB_BACKOFF_LIMIT: u32 = 6;

// build.kat
pub const BUILD_CONTEXT: &str = ".";
pub const DOCKERFILE_PATH: &str = "Containerfile";
