//! Every REST route once ([`ROUTES`]: method, path, the gRPC method it calls, body,
//! answer, whether a token is needed). The router and the OpenAPI document are both
//! made from this table.

/// What a route takes as its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    /// A gzip'd tar of one Quadlet directory.
    Bundle,
    /// A proto3 JSON message, by its proto name (may be empty: all defaults).
    Json(&'static str),
}

/// What a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Json(&'static str),
    /// Newline-delimited proto3 JSON messages.
    Stream(&'static str),
    /// Log lines as text (or `LogChunk`s as NDJSON on request).
    Logs,
    Text,
    /// The OpenAPI document.
    OpenApi,
    /// A JSON object without a proto message (metrics).
    Object,
}

/// One REST route, as the router and the OpenAPI document see it.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    /// The gRPC method it calls (also the OpenAPI operationId).
    pub operation: &'static str,
    pub summary: &'static str,
    pub body: BodyKind,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    pub reply: ReplyKind,
    /// Whether a bearer token is needed.
    pub auth: bool,
}

const fn route(
    method: &'static str,
    path: &'static str,
    operation: &'static str,
    summary: &'static str,
    body: BodyKind,
    reply: ReplyKind,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        operation,
        summary,
        body,
        query: &[],
        reply,
        auth: true,
    }
}

const fn with_query(mut r: RouteDoc, query: &'static [(&'static str, &'static str)]) -> RouteDoc {
    r.query = query;
    r
}

const fn public(mut r: RouteDoc) -> RouteDoc {
    r.auth = false;
    r
}

use BodyKind as B;
use ReplyKind as R;

pub(super) const WORKLOADS: &str = "/v1alpha1/n/{ns}/workloads";
pub(super) const WORKLOAD: &str = "/v1alpha1/n/{ns}/workloads/{name}";

/// Every REST route, in the order the OpenAPI document lists them.
pub const ROUTES: &[RouteDoc] = &[
    route(
        "post",
        WORKLOADS,
        "CreateWorkload",
        "Create (or update) a workload from a bundle",
        B::Bundle,
        R::Json("Quadlet"),
    ),
    route(
        "get",
        WORKLOADS,
        "ListWorkloads",
        "List the namespace's workloads",
        B::None,
        R::Json("ListWorkloadsResponse"),
    ),
    route(
        "get",
        "/v1alpha1/workloads",
        "ListWorkloads",
        "List workloads of every namespace",
        B::None,
        R::Json("ListWorkloadsResponse"),
    ),
    route(
        "put",
        WORKLOAD,
        "UpdateWorkload",
        "Update a workload from a bundle",
        B::Bundle,
        R::Json("Quadlet"),
    ),
    route(
        "get",
        WORKLOAD,
        "GetWorkload",
        "A workload's Quadlet with its status",
        B::None,
        R::Json("Quadlet"),
    ),
    with_query(
        route(
            "delete",
            WORKLOAD,
            "DeleteWorkload",
            "Delete a workload and its instances",
            B::None,
            R::Json("DeleteWorkloadResponse"),
        ),
        &[(
            "purgeVolumes",
            "true: also remove its simpleClusterStorage volumes",
        )],
    ),
    route(
        "get",
        "/v1alpha1/n/{ns}/workloads/{name}/status",
        "GetWorkloadStatus",
        "A workload's status, instances and recent events",
        B::None,
        R::Json("WorkloadStatusResponse"),
    ),
    route(
        "post",
        "/v1alpha1/n/{ns}/workloads/{name}/rollback",
        "RollbackWorkload",
        "Re-apply a kept generation (body: {\"toGeneration\": N}, or empty for the previous one)",
        B::Json("RollbackWorkloadRequest"),
        R::Json("Quadlet"),
    ),
    route(
        "post",
        "/v1alpha1/n/{ns}/workloads/{name}/scale",
        "ScaleWorkload",
        "Set a SERVICE's replicas (body: {\"replicas\": N}): the current generation, no rollout",
        B::Json("ScaleWorkloadRequest"),
        R::Json("Quadlet"),
    ),
    with_query(
        route(
            "get",
            "/v1alpha1/n/{ns}/workloads/{name}/instances",
            "ListInstances",
            "The workload's instances",
            B::None,
            R::Json("ListInstancesResponse"),
        ),
        &[("node", "only instances on this node")],
    ),
    with_query(
        route(
            "get",
            "/v1alpha1/instances",
            "ListInstances",
            "Instances of every namespace",
            B::None,
            R::Json("ListInstancesResponse"),
        ),
        &[
            ("namespace", "only this namespace"),
            ("workload", "only this workload"),
            ("node", "only this node"),
        ],
    ),
    with_query(
        route(
            "get",
            "/v1alpha1/n/{ns}/workloads/{name}/instances/{id}/logs",
            "StreamInstanceLogs",
            "An instance's logs (text; NDJSON LogChunks with Accept: application/x-ndjson)",
            B::None,
            R::Logs,
        ),
        &[
            ("follow", "true: keep streaming new lines"),
            ("since", "only lines newer than this (seconds, or 10m, 2h)"),
            ("tail", "only the last N lines"),
            ("build", "true: the build log"),
        ],
    ),
    route(
        "post",
        "/v1alpha1/n/{ns}/workloads/{name}/instances/{id}/exec",
        "ExecInstance",
        "Run a command in an instance's container (body: {\"command\": [...]})",
        B::Json("ExecRequest"),
        R::Json("ExecResponse"),
    ),
    route(
        "get",
        "/v1alpha1/namespaces",
        "ListNamespaces",
        "List namespaces",
        B::None,
        R::Json("ListNamespacesResponse"),
    ),
    route(
        "post",
        "/v1alpha1/namespaces",
        "CreateNamespace",
        "Create a namespace (body: a Namespace)",
        B::Json("Namespace"),
        R::Json("Namespace"),
    ),
    route(
        "get",
        "/v1alpha1/namespaces/{ns}",
        "GetNamespace",
        "A namespace",
        B::None,
        R::Json("Namespace"),
    ),
    with_query(
        route(
            "delete",
            "/v1alpha1/namespaces/{ns}",
            "DeleteNamespace",
            "Delete a namespace (refused while it has workloads, unless cascade)",
            B::None,
            R::Json("DeleteNamespaceResponse"),
        ),
        &[("cascade", "true: delete its workloads too")],
    ),
    route(
        "get",
        "/v1alpha1/nodes",
        "ListNodes",
        "List nodes with their status",
        B::None,
        R::Json("ListNodesResponse"),
    ),
    route(
        "get",
        "/v1alpha1/nodes/{name}",
        "GetNode",
        "A node with its status",
        B::None,
        R::Json("Node"),
    ),
    route(
        "delete",
        "/v1alpha1/nodes/{name}",
        "DeleteNode",
        "Remove a drained node",
        B::None,
        R::Json("DeleteNodeResponse"),
    ),
    route(
        "post",
        "/v1alpha1/nodes/{name}/cordon",
        "CordonNode",
        "Stop new placements on a node",
        B::None,
        R::Json("Node"),
    ),
    route(
        "post",
        "/v1alpha1/nodes/{name}/uncordon",
        "UncordonNode",
        "Allow placements on a node again (ends a drain)",
        B::None,
        R::Json("Node"),
    ),
    route(
        "post",
        "/v1alpha1/nodes/{name}/drain",
        "DrainNode",
        "Drain a node; streams progress until no instance is left",
        B::None,
        R::Stream("DrainProgress"),
    ),
    route(
        "put",
        "/v1alpha1/nodes/{name}/labels",
        "SetNodeLabels",
        "Set labels (body: {\"labels\": {k: v}}; an empty value removes)",
        B::Json("SetNodeLabelsRequest"),
        R::Json("Node"),
    ),
    route(
        "put",
        "/v1alpha1/nodes/{name}/taints",
        "SetNodeTaints",
        "Replace the node's taints (body: {\"taints\": [...]})",
        B::Json("SetNodeTaintsRequest"),
        R::Json("Node"),
    ),
    with_query(
        route(
            "get",
            "/v1alpha1/events",
            "ListEvents",
            "Recent events, oldest first (watch=true: then each new one, as NDJSON)",
            B::None,
            R::Json("ListEventsResponse"),
        ),
        &[
            ("namespace", "only this namespace"),
            ("involved", "kind/name of the involved object"),
            ("since", "RFC 3339 time, or a duration ago (10m, 2h)"),
            (
                "watch",
                "true: keep the answer open and stream new events (NDJSON)",
            ),
        ],
    ),
    route(
        "post",
        "/v1alpha1/tokens/join",
        "CreateJoinToken",
        "Create a join token",
        B::Json("CreateTokenRequest"),
        R::Json("CreateTokenResponse"),
    ),
    route(
        "post",
        "/v1alpha1/tokens/api",
        "CreateApiToken",
        "Create an API token",
        B::Json("CreateTokenRequest"),
        R::Json("CreateTokenResponse"),
    ),
    route(
        "delete",
        "/v1alpha1/tokens/{id}",
        "DeleteToken",
        "Delete a token",
        B::None,
        R::Json("DeleteTokenResponse"),
    ),
    route(
        "post",
        "/v1alpha1/backups",
        "CreateBackup",
        "Snapshot etcd now",
        B::None,
        R::Json("Backup"),
    ),
    route(
        "get",
        "/v1alpha1/backups",
        "ListBackups",
        "List kept snapshots",
        B::None,
        R::Json("ListBackupsResponse"),
    ),
    route(
        "get",
        "/v1alpha1/version",
        "GetVersion",
        "The server's version",
        B::None,
        R::Json("VersionInfo"),
    ),
    route(
        "get",
        "/metrics",
        "Metrics",
        "This member's metrics and the cluster's counts, as Prometheus text",
        B::None,
        R::Text,
    ),
    route(
        "get",
        "/v1alpha1/metrics",
        "MetricsJson",
        "The same metrics as JSON",
        B::None,
        R::Object,
    ),
    public(route(
        "get",
        "/v1alpha1/openapi.json",
        "OpenApi",
        "This document",
        B::None,
        R::OpenApi,
    )),
    public(route(
        "get",
        "/healthz",
        "Healthz",
        "200 while the process serves",
        B::None,
        R::Text,
    )),
    public(route(
        "get",
        "/readyz",
        "Readyz",
        "200 while this member leads and answers API calls itself; 503 with the leader's address otherwise",
        B::None,
        R::Text,
    )),
];
