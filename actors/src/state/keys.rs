//! Every etcd key KAT writes (SPEC §5), in one place; `docs/architecture.md` ("Keys
//! in etcd") tables them with their writers. The prefixes that are listed end with
//! `/`, so a listing of one never matches another (`/kat/nodes/` vs `/kat/nodes-x/`);
//! the election's is given without it, as the election adds it.

use kat_proto::v1alpha1::TokenKind;

/// Candidates of the leader election: `<prefix>/<lease-hex>`, the lowest create
/// revision leads.
pub const ELECTION_PREFIX: &str = "/kat/election";

/// The cluster's identity (UUID text), written once.
pub const CLUSTER_UID: &str = "/kat/config/cluster_uid";
/// The `ClusterConfiguration`, protobuf, written once with the UID.
pub const CLUSTER_CONFIG: &str = "/kat/config/cluster";
/// The cluster CA (certificate and key), protobuf, written once.
pub const CA: &str = "/kat/pki/ca";

/// Node registrations (`Node`, protobuf).
pub const NODES_PREFIX: &str = "/kat/nodes/";
/// The nodes' last reported status (`NodeStatus`, protobuf).
pub const NODE_STATUS_PREFIX: &str = "/kat/status/nodes/";
/// One key per control-plane member: its API address, `HOST:PORT`.
pub const CONTROL_PLANE_PREFIX: &str = "/kat/control-plane/";
/// Recorded events (`Event`, protobuf), under an hour's lease.
pub const EVENTS_PREFIX: &str = "/kat/events/";
/// Join and API tokens (`StoredToken`: the secret's SHA-256, expiry, use).
pub const TOKENS_PREFIX: &str = "/kat/tokens/";
/// Created namespaces (`Namespace`, protobuf).
pub const NAMESPACES_PREFIX: &str = "/kat/namespaces/";
/// Workloads: the current `Quadlet` of each, protobuf.
pub const WORKLOADS_PREFIX: &str = "/kat/workloads/";
/// Every kept generation of each workload (the current one included).
pub const REVISIONS_PREFIX: &str = "/kat/revisions/";
/// Instances: placement and desired state (`Instance`, protobuf), by the scheduler.
pub const INSTANCES_PREFIX: &str = "/kat/instances/";
/// What each node reports of its instances (`InstanceStatus`, protobuf).
pub const INSTANCE_STATUS_PREFIX: &str = "/kat/status/instances/";
/// A JOB's progress (`JobState`, protobuf).
pub const JOBS_PREFIX: &str = "/kat/jobs/";

/// `/kat/nodes/<name>`.
pub fn node(name: &str) -> String {
    format!("{NODES_PREFIX}{name}")
}

/// `/kat/status/nodes/<name>`.
pub fn node_status(name: &str) -> String {
    format!("{NODE_STATUS_PREFIX}{name}")
}

/// `/kat/control-plane/<name>`.
pub fn control_plane(name: &str) -> String {
    format!("{CONTROL_PLANE_PREFIX}{name}")
}

/// `/kat/tokens/<join|api>/<id>`.
pub fn token(kind: TokenKind, id: &str) -> String {
    let kind = if kind == TokenKind::Api {
        "api"
    } else {
        "join"
    };
    format!("{TOKENS_PREFIX}{kind}/{id}")
}

/// `/kat/namespaces/<ns>`.
pub fn namespace(name: &str) -> String {
    format!("{NAMESPACES_PREFIX}{name}")
}

/// `/kat/workloads/<ns>/<name>`.
pub fn workload(ns: &str, name: &str) -> String {
    format!("{WORKLOADS_PREFIX}{ns}/{name}")
}

/// `/kat/revisions/<ns>/<name>/`: the kept generations of one workload.
pub fn revisions_of(ns: &str, name: &str) -> String {
    format!("{REVISIONS_PREFIX}{ns}/{name}/")
}

/// `/kat/revisions/<ns>/<name>/<generation, 20 digits>`: sorted by generation.
pub fn revision(ns: &str, name: &str, generation: i64) -> String {
    format!("{REVISIONS_PREFIX}{ns}/{name}/{generation:020}")
}

/// `/kat/instances/<ns>/<name>/`: one workload's instances.
pub fn instances_of(ns: &str, name: &str) -> String {
    format!("{INSTANCES_PREFIX}{ns}/{name}/")
}

/// `/kat/instances/<ns>/<name>/<id>`.
pub fn instance(ns: &str, name: &str, id: &str) -> String {
    format!("{INSTANCES_PREFIX}{ns}/{name}/{id}")
}

/// `/kat/status/instances/<node>/`: what one node reports.
pub fn instance_statuses_on(node: &str) -> String {
    format!("{INSTANCE_STATUS_PREFIX}{node}/")
}

/// `/kat/status/instances/<node>/<id>`.
pub fn instance_status(node: &str, id: &str) -> String {
    format!("{INSTANCE_STATUS_PREFIX}{node}/{id}")
}

/// `/kat/jobs/<ns>/<name>`.
pub fn job(ns: &str, name: &str) -> String {
    format!("{JOBS_PREFIX}{ns}/{name}")
}

/// `/kat/events/<id>`; ids start with the time in nanoseconds, 20 digits, so a
/// listing is in time order.
pub fn event(id: &str) -> String {
    format!("{EVENTS_PREFIX}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_their_prefixes() {
        assert_eq!(node("n1"), "/kat/nodes/n1");
        assert_eq!(node_status("n1"), "/kat/status/nodes/n1");
        assert_eq!(control_plane("n1"), "/kat/control-plane/n1");
        assert_eq!(token(TokenKind::Join, "ab"), "/kat/tokens/join/ab");
        assert_eq!(token(TokenKind::Api, "ab"), "/kat/tokens/api/ab");
        assert_eq!(workload("ns", "web"), "/kat/workloads/ns/web");
        assert_eq!(
            revision("ns", "web", 7),
            "/kat/revisions/ns/web/00000000000000000007"
        );
        assert!(revision("ns", "web", 7).starts_with(&revisions_of("ns", "web")));
        assert!(instance("ns", "web", "i1").starts_with(&instances_of("ns", "web")));
        assert!(instance_status("n1", "i1").starts_with(&instance_statuses_on("n1")));
        assert_eq!(job("ns", "j"), "/kat/jobs/ns/j");
        assert_eq!(event("1-x"), "/kat/events/1-x");
    }

    #[test]
    fn a_workload_prefix_does_not_match_a_longer_name() {
        // `web/` must not list `web2`'s revisions or instances.
        assert!(!revision("ns", "web2", 1).starts_with(&revisions_of("ns", "web")));
        assert!(!instance("ns", "web2", "i").starts_with(&instances_of("ns", "web")));
    }
}
