//! Table-driven tests: every validation rule has at least one failing case that asserts
//! the file, the field path and the reason; plus defaults and round trips.

use serde_yaml_ng::Value;

use super::*;
use crate::v1alpha1::{
    Quadlet, RestartCondition, TolerationOperator, UpdateStrategyType, WorkloadType, source,
};

const SERVICE: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: web
  labels: {app: web}
spec:
  type: SERVICE
  source:
    image: docker.io/library/nginx:1.27
  replicas: 2
  updateStrategy: {type: ROLLING, maxSurge: 1}
  restartPolicy: {condition: MAX_COUNT, maxRestarts: 3, resetSeconds: 600}
  nodeSelector: {disktype: ssd}
  tolerations:
    - {key: gpu, operator: EXISTS, effect: NO_SCHEDULE}
  container:
    name: main
    command: [/bin/sh]
    args: [-c, sleep 1000]
    env:
      - {name: GREETING, value: hello}
    volumeMounts:
      - {name: data, mountPath: /var/data}
      - {name: logs, mountPath: /var/log/web, subPath: web, readOnly: true}
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {cpu: 1, memory: 256Mi}
      gpu: {driver: NVIDIA, minVRAM_MB: 4096}
  volumes:
    - name: data
      simpleClusterStorage: {}
    - name: logs
      hostMount: {hostPath: /var/log/web, ensureType: DIRECTORY_OR_CREATE}
";

const VLB: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: VirtualLoadBalancer
metadata: {name: web}
spec:
  ports:
    - {name: http, containerPort: 80, protocol: TCP}
    - {name: dns, containerPort: 53, protocol: UDP, hostPort: 5353}
  healthCheck:
    exec: {command: [/bin/true]}
    initialDelaySeconds: 5
    periodSeconds: 10
    timeoutSeconds: 3
    successThreshold: 1
    failureThreshold: 3
  ingress:
    - {host: web.example.com, path: /, servicePortName: http, tls: true}
";

const JOB_WORKLOAD: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {name: report}
spec:
  type: JOB
  source: {image: localhost/busybox:latest}
";

const JOB: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: JobDefinition
metadata: {name: report}
spec:
  schedule: '0 */6 * * *'
  completions: 2
  parallelism: 1
  activeDeadlineSeconds: 600
  backoffLimit: 3
";

const GIT_WORKLOAD: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {name: app, namespace: team-a}
spec:
  source:
    git: {repository: 'https://git.example.com/me/app.git', tag: v1.2.0}
    cacheImage: registry.example.com/cache/app:main
";

const BUILD: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: BuildDefinition
metadata: {name: app}
spec:
  buildContext: .
  dockerfilePath: Containerfile
  buildArgs: {VERSION: '1.2'}
  targetStage: runtime
  platform: linux/amd64
  cache: {registryPath: registry.example.com/cache/app}
";

const CLUSTER: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: ClusterConfiguration
metadata: {name: homelab}
spec:
  clusterCIDR: 10.100.0.0/16
  serviceCIDR: 10.200.0.0/16
  nodeSubnetBits: 7
  clusterDomain: kat.cluster.local
  apiPort: 9115
  agentPort: 9116
  etcdPeerPort: 2380
  etcdClientPort: 2379
  wireguardPort: 51820
  quorumSize: 3
  volumeBasePath: /var/lib/kat/volumes
  backupPath: /var/lib/kat/backups
  backupIntervalMinutes: 0
  agentTickSeconds: 15
  nodeLossTimeoutSeconds: 60
  certificateLifetimeSeconds: 3600
  hostMounts: {allowedPaths: [/srv, /tank/media]}
";

const NAMESPACE: &str = "apiVersion: kat.dws.rip/v1alpha1
kind: Namespace
metadata: {name: team-a}
";

/// Which valid base a case starts from.
#[derive(Debug, Clone, Copy)]
enum Base {
    Service,
    Job,
    Git,
    Cluster,
    Namespace,
}

fn base_files(base: Base) -> Vec<(&'static str, &'static str)> {
    match base {
        Base::Service => vec![(WORKLOAD_FILE, SERVICE), (VLB_FILE, VLB)],
        Base::Job => vec![(WORKLOAD_FILE, JOB_WORKLOAD), (JOB_FILE, JOB)],
        Base::Git => vec![(WORKLOAD_FILE, GIT_WORKLOAD), (BUILD_FILE, BUILD)],
        Base::Cluster => vec![(CLUSTER_FILE, CLUSTER)],
        Base::Namespace => vec![(NAMESPACE_FILE, NAMESPACE)],
    }
}

/// Sets (`Some`) or removes (`None`) the value at a dotted path with `[i]` indexes.
fn edit(doc: &mut Value, path: &str, new: Option<&str>) {
    let mut parts: Vec<String> = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((key, rest)) => {
                parts.push(key.to_owned());
                parts.push(format!("[{rest}"));
            }
            None => parts.push(part.to_owned()),
        }
    }
    let (last, parents) = parts.split_last().unwrap();
    let mut cur = doc;
    for p in parents {
        cur = match p.strip_prefix('[') {
            Some(i) => &mut cur[i.trim_end_matches(']').parse::<usize>().unwrap()],
            None => {
                let map = cur
                    .as_mapping_mut()
                    .unwrap_or_else(|| panic!("{path}: {p} is not a mapping"));
                map.entry(Value::String(p.clone()))
                    .or_insert(Value::Mapping(Default::default()))
            }
        };
    }
    match (last.strip_prefix('['), new) {
        (Some(i), Some(v)) => {
            cur[i.trim_end_matches(']').parse::<usize>().unwrap()] =
                serde_yaml_ng::from_str(v).unwrap()
        }
        (Some(i), None) => {
            cur.as_sequence_mut()
                .unwrap()
                .remove(i.trim_end_matches(']').parse().unwrap());
        }
        (None, Some(v)) => {
            cur.as_mapping_mut().unwrap().insert(
                Value::String(last.clone()),
                serde_yaml_ng::from_str(v).unwrap(),
            );
        }
        (None, None) => {
            cur.as_mapping_mut().unwrap().remove(last.as_str());
        }
    }
}

/// Parses a base after edits to one of its files; returns the errors (empty if valid).
fn check(base: Base, file: &str, edits: &[(&str, Option<&str>)]) -> Vec<FieldError> {
    let files: Vec<SourceFile> = base_files(base)
        .into_iter()
        .map(|(name, text)| {
            let mut data = text.as_bytes().to_vec();
            if name == file {
                let mut doc: Value = serde_yaml_ng::from_str(text).unwrap();
                for (path, value) in edits {
                    edit(&mut doc, path, *value);
                }
                data = serde_yaml_ng::to_string(&doc).unwrap().into_bytes();
            }
            SourceFile {
                name: name.to_owned(),
                display: name.to_owned(),
                data,
            }
        })
        .collect();
    let result = match base {
        Base::Cluster => parse_cluster_config(CLUSTER_FILE, &files[0].data).map(|_| ()),
        Base::Namespace => parse_namespace(NAMESPACE_FILE, &files[0].data).map(|_| ()),
        _ => parse_quadlet("dir", &files).map(|_| ()),
    };
    result.err().map(|e| e.errors).unwrap_or_default()
}

fn set<'a>(path: &'a str, value: &'a str) -> (&'a str, Option<&'a str>) {
    (path, Some(value))
}

fn unset(path: &str) -> (&str, Option<&str>) {
    (path, None)
}

struct Case {
    base: Base,
    file: &'static str,
    edits: Vec<(&'static str, Option<&'static str>)>,
    path: &'static str,
    reason: &'static str,
}

fn case(
    base: Base,
    file: &'static str,
    edits: Vec<(&'static str, Option<&'static str>)>,
    path: &'static str,
    reason: &'static str,
) -> Case {
    Case {
        base,
        file,
        edits,
        path,
        reason,
    }
}

fn run(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let errors = check(c.base, c.file, &c.edits);
        let hit = errors
            .iter()
            .any(|e| e.file == c.file && e.path == c.path && e.reason.contains(c.reason));
        if !hit {
            failures.push(format!(
                "case {i} ({:?} {} {:?}): wanted {}: {} ~ {:?}, got:\n    {}",
                c.base,
                c.file,
                c.edits,
                c.file,
                c.path,
                c.reason,
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn bases_are_valid() {
    for base in [
        Base::Service,
        Base::Job,
        Base::Git,
        Base::Cluster,
        Base::Namespace,
    ] {
        assert_eq!(check(base, "", &[]), Vec::new(), "{base:?}");
    }
}

#[test]
fn header_and_metadata_rules() {
    use Base::*;
    let w = WORKLOAD_FILE;
    run(vec![
        case(
            Service,
            w,
            vec![set("apiVersion", "kat.dws.rip/v1")],
            "apiVersion",
            "is not supported",
        ),
        case(
            Service,
            w,
            vec![unset("apiVersion")],
            "apiVersion",
            "is required",
        ),
        case(
            Service,
            w,
            vec![set("kind", "Job")],
            "kind",
            "does not belong in this file (expected Workload)",
        ),
        case(Service, w, vec![unset("kind")], "kind", "is required"),
        case(
            Service,
            w,
            vec![unset("metadata")],
            "metadata",
            "is required",
        ),
        case(
            Service,
            w,
            vec![set("metadata", "[web]")],
            "metadata",
            "expected a mapping, found a list",
        ),
        case(
            Service,
            w,
            vec![unset("metadata.name")],
            "metadata.name",
            "is required",
        ),
        case(
            Service,
            w,
            vec![set("metadata.name", "Web_1")],
            "metadata.name",
            "is not a DNS label",
        ),
        case(
            Service,
            w,
            vec![set("metadata.name", &*"a".repeat(64).leak())],
            "metadata.name",
            "longer than 63",
        ),
        case(
            Service,
            w,
            vec![set("metadata.namespace", "Team A")],
            "metadata.namespace",
            "is not a DNS label",
        ),
        case(
            Service,
            w,
            vec![set("metadata.labels", "{'bad key': x}")],
            "metadata.labels.bad key",
            "not a valid label key",
        ),
        case(
            Service,
            w,
            vec![set("metadata.labels", "{app: -x}")],
            "metadata.labels.app",
            "not a valid label value",
        ),
        case(
            Service,
            w,
            vec![set("metadata.labels", "{app: 1}")],
            "metadata.labels.app",
            "quote it",
        ),
        case(
            Service,
            w,
            vec![set("metadata.uid", "abc")],
            "metadata.uid",
            "set by the server",
        ),
        case(
            Service,
            w,
            vec![set("metadata.generation", "3")],
            "metadata.generation",
            "set by the server",
        ),
        case(
            Service,
            w,
            vec![set("metadata.nmae", "x")],
            "metadata.nmae",
            "did you mean \"name\"?",
        ),
        case(
            Service,
            w,
            vec![set("status", "{}")],
            "status",
            "unknown field",
        ),
        case(
            Namespace,
            NAMESPACE_FILE,
            vec![set("metadata.namespace", "x")],
            "metadata.namespace",
            "not namespaced",
        ),
        case(
            Namespace,
            NAMESPACE_FILE,
            vec![set("spec", "{}")],
            "spec",
            "unknown field",
        ),
        case(
            Namespace,
            NAMESPACE_FILE,
            vec![set("kind", "Workload")],
            "kind",
            "expected Namespace",
        ),
    ]);
}

#[test]
fn workload_spec_rules() {
    use Base::*;
    let w = WORKLOAD_FILE;
    run(vec![
        case(Service, w, vec![unset("spec")], "spec", "is required"),
        case(
            Service,
            w,
            vec![set("spec.type", "BATCH")],
            "spec.type",
            "is not one of SERVICE, JOB, DAEMON_SERVICE",
        ),
        case(
            Service,
            w,
            vec![set("spec.type", "service")],
            "spec.type",
            "did you mean SERVICE?",
        ),
        case(
            Service,
            w,
            vec![unset("spec.source")],
            "spec.source",
            "is required",
        ),
        case(
            Service,
            w,
            vec![set(
                "spec.source.git",
                "{repository: 'https://x.example/r.git'}",
            )],
            "spec.source",
            "exactly one of image or git, not both",
        ),
        case(
            Service,
            w,
            vec![set("spec.source", "{}")],
            "spec.source",
            "exactly one of image or git",
        ),
        case(
            Service,
            w,
            vec![set("spec.source.image", "Nginx:latest")],
            "spec.source.image",
            "is not an image reference",
        ),
        case(
            Service,
            w,
            vec![set("spec.source.image", "nginx:bad tag")],
            "spec.source.image",
            "invalid tag",
        ),
        case(
            Service,
            w,
            vec![set("spec.source.cacheImage", "registry.example.com/c")],
            "spec.source.cacheImage",
            "only applies to a git source",
        ),
        case(
            Git,
            w,
            vec![unset("spec.source.git.repository")],
            "spec.source.git.repository",
            "is required",
        ),
        case(
            Git,
            w,
            vec![set("spec.source.git.repository", "git.example.com/x")],
            "spec.source.git.repository",
            "is not a git URL",
        ),
        case(
            Git,
            w,
            vec![set("spec.source.git.branch", "main")],
            "spec.source.git",
            "at most one of branch, tag or commit",
        ),
        case(
            Git,
            w,
            vec![
                unset("spec.source.git.tag"),
                set("spec.source.git.commit", "xyz123"),
            ],
            "spec.source.git.commit",
            "is not a commit hash",
        ),
        case(
            Git,
            w,
            vec![set("spec.source.git.tag", "v1 .. 2")],
            "spec.source.git.tag",
            "is not a valid git tag",
        ),
        case(
            Git,
            w,
            vec![set("spec.source.cacheImage", "Bad Image")],
            "spec.source.cacheImage",
            "is not an image reference",
        ),
        case(
            Service,
            w,
            vec![set("spec.replicas", "-1")],
            "spec.replicas",
            "must not be negative",
        ),
        case(
            Service,
            w,
            vec![set("spec.replicas", "two")],
            "spec.replicas",
            "expected a whole number",
        ),
        case(
            Service,
            w,
            vec![set("spec.replicas", "1.5")],
            "spec.replicas",
            "expected a whole number, found 1.5",
        ),
        case(
            Service,
            w,
            vec![set("spec.replicas", "100000")],
            "spec.replicas",
            "too large",
        ),
        case(
            Service,
            w,
            vec![set("spec.updateStrategy.type", "BLUE_GREEN")],
            "spec.updateStrategy.type",
            "is not one of ROLLING, SIMULTANEOUS",
        ),
        case(
            Service,
            w,
            vec![set("spec.updateStrategy.maxSurge", "0")],
            "spec.updateStrategy.maxSurge",
            "at least 1",
        ),
        case(
            Service,
            w,
            vec![set("spec.updateStrategy.maxSurge", "'150%'")],
            "spec.updateStrategy.maxSurge",
            "percentage from 1% to 100%",
        ),
        case(
            Service,
            w,
            vec![set("spec.updateStrategy.maxSurge", "lots")],
            "spec.updateStrategy.maxSurge",
            "is not a whole number or a percentage",
        ),
        case(
            Service,
            w,
            vec![set("spec.updateStrategy.maxSurge", "[1]")],
            "spec.updateStrategy.maxSurge",
            "expected a string or a number",
        ),
        case(
            Service,
            w,
            vec![set("spec.restartPolicy.condition", "SOMETIMES")],
            "spec.restartPolicy.condition",
            "is not one of NEVER, MAX_COUNT, ALWAYS",
        ),
        case(
            Service,
            w,
            vec![set("spec.restartPolicy.condition", "ALWAYS")],
            "spec.restartPolicy.maxRestarts",
            "only applies with condition MAX_COUNT",
        ),
        case(
            Service,
            w,
            vec![set("spec.restartPolicy.maxRestarts", "0")],
            "spec.restartPolicy.maxRestarts",
            "at least 1",
        ),
        case(
            Service,
            w,
            vec![set("spec.restartPolicy.resetSeconds", "0")],
            "spec.restartPolicy.resetSeconds",
            "at least 1",
        ),
        case(
            Job,
            w,
            vec![set("spec.restartPolicy", "{condition: ALWAYS}")],
            "spec.restartPolicy.condition",
            "a JOB cannot restart ALWAYS",
        ),
        case(
            Service,
            w,
            vec![set("spec.nodeSelector", "{'disk type': ssd}")],
            "spec.nodeSelector.disk type",
            "not a valid label key",
        ),
        case(
            Service,
            w,
            vec![set("spec.nodeSelector", "[ssd]")],
            "spec.nodeSelector",
            "expected a mapping of names to strings",
        ),
        case(
            Service,
            w,
            vec![set("spec.tolerations[0].value", "yes")],
            "spec.tolerations[0].value",
            "must be empty with operator EXISTS",
        ),
        case(
            Service,
            w,
            vec![set("spec.tolerations[0]", "{operator: EQUAL, value: x}")],
            "spec.tolerations[0].key",
            "is required with operator EQUAL",
        ),
        case(
            Service,
            w,
            vec![set("spec.tolerations[0].operator", "IN")],
            "spec.tolerations[0].operator",
            "is not one of EXISTS, EQUAL",
        ),
        case(
            Service,
            w,
            vec![set("spec.tolerations[0].effect", "NoSchedule")],
            "spec.tolerations[0].effect",
            "is not one of NO_SCHEDULE, PREFER_NO_SCHEDULE",
        ),
        case(
            Service,
            w,
            vec![set("spec.tolerations", "{key: gpu}")],
            "spec.tolerations",
            "expected a list",
        ),
        case(
            Service,
            w,
            vec![set("spec.tolerations[0].tolerationSeconds", "5")],
            "spec.tolerations[0].tolerationSeconds",
            "unknown field",
        ),
    ]);
}

#[test]
fn container_rules() {
    use Base::*;
    let w = WORKLOAD_FILE;
    run(vec![
        // Control characters would end a line of the instance's unit file (issue 14).
        case(
            Service,
            w,
            vec![set(
                "spec.container.args",
                r#"["-c", "true\rExecStartPre=/bin/sh -c id"]"#,
            )],
            "spec.container.args[1]",
            "control character U+000D",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.command", r#"["/bin/sh\0"]"#)],
            "spec.container.command[0]",
            "control character U+0000",
        ),
        case(
            Service,
            w,
            vec![set(
                "spec.container.env[0].value",
                r#""line one\nline two""#,
            )],
            "spec.container.env[0].value",
            "an environment value is one line",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.env[0].value", r#""\e[31mred""#)],
            "spec.container.env[0].value",
            "control character U+001B",
        ),
        // An image reference that starts with '-' would reach Podman as an option.
        case(
            Service,
            w,
            vec![set("spec.source.image", "-v")],
            "spec.source.image",
            "starting and ending with a letter or digit",
        ),
        case(
            Service,
            w,
            vec![set("spec.source.image", "docker.io/-privileged:1")],
            "spec.source.image",
            "starting and ending with a letter or digit",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.name", "Main")],
            "spec.container.name",
            "is not a DNS label",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.command", "[]")],
            "spec.container.command",
            "must not be empty",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.command", "/bin/sh")],
            "spec.container.command",
            "expected a list",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.args", "[-c, 1]")],
            "spec.container.args[1]",
            "quote it",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.image", "nginx")],
            "spec.container.image",
            "unknown field",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.env[0].name", "1GREETING")],
            "spec.container.env[0].name",
            "is not a valid variable name",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.env", "[{name: A}, {name: A}]")],
            "spec.container.env[1].name",
            "is set twice",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.env[0]", "{value: x}")],
            "spec.container.env[0].name",
            "is required",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.env[0].valueFrom", "x")],
            "spec.container.env[0].valueFrom",
            "unknown field",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.volumeMounts[0].name", "dta")],
            "spec.container.volumeMounts[0].name",
            "names no volume",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.volumeMounts[0].mountPath", "var/data")],
            "spec.container.volumeMounts[0].mountPath",
            "must be an absolute path",
        ),
        case(
            Service,
            w,
            vec![set(
                "spec.container.volumeMounts[1].mountPath",
                "/var/data/",
            )],
            "spec.container.volumeMounts[1].mountPath",
            "is mounted twice",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.volumeMounts[1].subPath", "../etc")],
            "spec.container.volumeMounts[1].subPath",
            "must not contain '..'",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.volumeMounts[1].readOnly", "yes")],
            "spec.container.volumeMounts[1].readOnly",
            "expected true or false",
        ),
        case(
            Service,
            w,
            vec![unset("spec.container.volumeMounts[0].mountPath")],
            "spec.container.volumeMounts[0].mountPath",
            "is required",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.requests.cpu", "1.2345")],
            "spec.container.resources.requests.cpu",
            "finer than 1m",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.requests.cpu", "5000")],
            "spec.container.resources.requests.cpu",
            "more CPU than any machine has",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.limits.memory", "100Ti")],
            "spec.container.resources.limits.memory",
            "more memory than any machine has",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.requests.cpu", "64Mi")],
            "spec.container.resources.requests.cpu",
            "is not a CPU quantity",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.limits.memory", "12 parsecs")],
            "spec.container.resources.limits.memory",
            "\"12 parsecs\" is not a memory quantity",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.limits.memory", "1.5")],
            "spec.container.resources.limits.memory",
            "whole number of bytes",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.requests.memory", "250m")],
            "spec.container.resources.requests.memory",
            "millibytes",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.limits.cpu", "50m")],
            "spec.container.resources.limits.cpu",
            "limit 50m is below the request 100m",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.limits.memory", "32Mi")],
            "spec.container.resources.limits.memory",
            "limit 32Mi is below the request 64Mi",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.limits.gpus", "1")],
            "spec.container.resources.limits.gpus",
            "unknown field",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.gpu.driver", "INTEL")],
            "spec.container.resources.gpu.driver",
            "is not one of ANY, NVIDIA, AMD",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.gpu.minVRAM_MB", "-1")],
            "spec.container.resources.gpu.minVRAM_MB",
            "must not be negative",
        ),
        case(
            Service,
            w,
            vec![set("spec.container.resources.gpu.minVramMb", "1")],
            "spec.container.resources.gpu.minVramMb",
            "did you mean \"minVRAM_MB\"?",
        ),
    ]);
}

#[test]
fn volume_rules() {
    use Base::*;
    let w = WORKLOAD_FILE;
    run(vec![
        case(
            Service,
            w,
            vec![set("spec.volumes[1].name", "data")],
            "spec.volumes[1].name",
            "is defined twice",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[1].name", "Logs")],
            "spec.volumes[1].name",
            "is not a DNS label",
        ),
        case(
            Service,
            w,
            vec![unset("spec.volumes[0].name")],
            "spec.volumes[0].name",
            "is required",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[0].hostMount", "{hostPath: /x}")],
            "spec.volumes[0]",
            "not both",
        ),
        case(
            Service,
            w,
            vec![unset("spec.volumes[0].simpleClusterStorage")],
            "spec.volumes[0]",
            "exactly one of simpleClusterStorage or hostMount",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[0].simpleClusterStorage", "{size: 1Gi}")],
            "spec.volumes[0].simpleClusterStorage.size",
            "unknown field",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[1].hostMount.hostPath", "var/log")],
            "spec.volumes[1].hostMount.hostPath",
            "must be an absolute path",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[1].hostMount.hostPath", "/")],
            "spec.volumes[1].hostMount.hostPath",
            "is or holds /, which no workload may mount",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[1].hostMount.hostPath", "/etc/ssl")],
            "spec.volumes[1].hostMount.hostPath",
            "is or holds /etc, which no workload may mount",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[1].hostMount.hostPath", "/var")],
            "spec.volumes[1].hostMount.hostPath",
            "is or holds /var/lib/kat, which no workload may mount",
        ),
        case(
            Service,
            w,
            vec![set(
                "spec.volumes[1].hostMount.hostPath",
                "/run/podman/podman.sock",
            )],
            "spec.volumes[1].hostMount.hostPath",
            "is or holds /run/podman, which no workload may mount",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[1].hostMount.hostPath", "//proc/./1")],
            "spec.volumes[1].hostMount.hostPath",
            "is or holds /proc, which no workload may mount",
        ),
        case(
            Service,
            w,
            vec![set(
                "spec.volumes[1].hostMount.hostPath",
                "/var/lib/kat/state",
            )],
            "spec.volumes[1].hostMount.hostPath",
            "is or holds /var/lib/kat, which no workload may mount",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[1].hostMount.hostPath", "/run")],
            "spec.volumes[1].hostMount.hostPath",
            "is or holds /run/kat, which no workload may mount",
        ),
        case(
            Service,
            w,
            vec![unset("spec.volumes[1].hostMount.hostPath")],
            "spec.volumes[1].hostMount.hostPath",
            "is required",
        ),
        case(
            Service,
            w,
            vec![set("spec.volumes[1].hostMount.ensureType", "DIR")],
            "spec.volumes[1].hostMount.ensureType",
            "is not one of DIRECTORY_OR_CREATE",
        ),
    ]);
}

#[test]
fn virtual_load_balancer_rules() {
    use Base::*;
    let v = VLB_FILE;
    run(vec![
        case(
            Service,
            v,
            vec![set("spec.ports[1].name", "http")],
            "spec.ports[1].name",
            "is used twice",
        ),
        case(
            Service,
            v,
            vec![set("spec.ports[0].name", "HTTP")],
            "spec.ports[0].name",
            "is not a DNS label",
        ),
        case(
            Service,
            v,
            vec![set("spec.ports[0].containerPort", "0")],
            "spec.ports[0].containerPort",
            "at least 1",
        ),
        case(
            Service,
            v,
            vec![set("spec.ports[0].containerPort", "70000")],
            "spec.ports[0].containerPort",
            "too large (at most 65535)",
        ),
        case(
            Service,
            v,
            vec![unset("spec.ports[0].containerPort")],
            "spec.ports[0].containerPort",
            "is required",
        ),
        case(
            Service,
            v,
            vec![set("spec.ports[0].protocol", "SCTP")],
            "spec.ports[0].protocol",
            "is not one of TCP, UDP",
        ),
        case(
            Service,
            v,
            vec![set("spec.ports[1]", "{name: web, containerPort: 80}")],
            "spec.ports[1].containerPort",
            "80/TCP is listed twice",
        ),
        case(
            Service,
            v,
            vec![set("spec.ports[1].hostPort", "0")],
            "spec.ports[1].hostPort",
            "at least 1",
        ),
        case(
            Service,
            v,
            vec![unset("spec.healthCheck.exec")],
            "spec.healthCheck.exec",
            "is required",
        ),
        case(
            Service,
            v,
            vec![set("spec.healthCheck.exec.command", "[]")],
            "spec.healthCheck.exec.command",
            "must name a program",
        ),
        case(
            Service,
            v,
            vec![set("spec.healthCheck.httpGet", "{path: /}")],
            "spec.healthCheck.httpGet",
            "unknown field",
        ),
        case(
            Service,
            v,
            vec![set("spec.healthCheck.periodSeconds", "0")],
            "spec.healthCheck.periodSeconds",
            "at least 1",
        ),
        case(
            Service,
            v,
            vec![set("spec.healthCheck.timeoutSeconds", "30")],
            "spec.healthCheck.timeoutSeconds",
            "longer than periodSeconds",
        ),
        case(
            Service,
            v,
            vec![set("spec.healthCheck.successThreshold", "0")],
            "spec.healthCheck.successThreshold",
            "at least 1",
        ),
        case(
            Service,
            v,
            vec![set("spec.healthCheck.failureThreshold", "0")],
            "spec.healthCheck.failureThreshold",
            "at least 1",
        ),
        case(
            Service,
            v,
            vec![set("spec.healthCheck.initialDelaySeconds", "-5")],
            "spec.healthCheck.initialDelaySeconds",
            "must not be negative",
        ),
        case(
            Service,
            v,
            vec![set("spec.ingress[0].host", "Web Example")],
            "spec.ingress[0].host",
            "is not a DNS name",
        ),
        case(
            Service,
            v,
            vec![set("spec.ingress[0].path", "api")],
            "spec.ingress[0].path",
            "must start with '/'",
        ),
        case(
            Service,
            v,
            vec![set("spec.ingress[0].servicePortName", "https")],
            "spec.ingress[0].servicePortName",
            "names no port",
        ),
        case(
            Service,
            v,
            vec![set("spec.ingress[0].tls", "'yes'")],
            "spec.ingress[0].tls",
            "expected true or false",
        ),
        case(
            Service,
            v,
            vec![set("metadata.name", "other")],
            "metadata.name",
            "does not match workload.kat's name \"web\"",
        ),
        case(
            Service,
            v,
            vec![set("metadata.namespace", "team-b")],
            "metadata.namespace",
            "does not match workload.kat's namespace \"default\"",
        ),
        case(
            Service,
            v,
            vec![set("kind", "Workload")],
            "kind",
            "expected VirtualLoadBalancer",
        ),
        case(Service, v, vec![unset("spec")], "spec", "is required"),
    ]);
}

#[test]
fn job_and_build_rules() {
    use Base::*;
    let (j, b) = (JOB_FILE, BUILD_FILE);
    run(vec![
        case(
            Job,
            j,
            vec![set("spec.schedule", "'* * *'")],
            "spec.schedule",
            "has 3 fields",
        ),
        case(
            Job,
            j,
            vec![set("spec.schedule", "'61 * * * *'")],
            "spec.schedule",
            "61 is outside 0-59",
        ),
        case(
            Job,
            j,
            vec![set("spec.completions", "0")],
            "spec.completions",
            "at least 1",
        ),
        case(
            Job,
            j,
            vec![set("spec.parallelism", "0")],
            "spec.parallelism",
            "at least 1",
        ),
        case(
            Job,
            j,
            vec![set("spec.backoffLimit", "-1")],
            "spec.backoffLimit",
            "must not be negative",
        ),
        case(
            Job,
            j,
            vec![set("spec.activeDeadlineSeconds", "soon")],
            "spec.activeDeadlineSeconds",
            "expected a whole number",
        ),
        case(
            Job,
            j,
            vec![set("metadata.name", "other")],
            "metadata.name",
            "does not match",
        ),
        case(
            Git,
            b,
            vec![set("spec.buildContext", "/abs")],
            "spec.buildContext",
            "must be a relative path",
        ),
        case(
            Git,
            b,
            vec![set("spec.dockerfilePath", "../Containerfile")],
            "spec.dockerfilePath",
            "must not contain '..'",
        ),
        case(
            Git,
            b,
            vec![set("spec.dockerfilePath", "''")],
            "spec.dockerfilePath",
            "must not be empty",
        ),
        case(
            Git,
            b,
            vec![set("spec.buildArgs", "{'MY-ARG': x}")],
            "spec.buildArgs.MY-ARG",
            "is not a valid variable name",
        ),
        case(
            Git,
            b,
            vec![set("spec.buildArgs", "{VERSION: 1.2}")],
            "spec.buildArgs.VERSION",
            "quote it",
        ),
        case(
            Git,
            b,
            vec![set("spec.platform", "amd64")],
            "spec.platform",
            "is not a platform",
        ),
        case(
            Git,
            b,
            vec![set("spec.targetStage", "'two words'")],
            "spec.targetStage",
            "is not a stage name",
        ),
        case(
            Git,
            b,
            vec![set("spec.cache.registryPath", "Not An Image")],
            "spec.cache.registryPath",
            "is not an image reference",
        ),
        case(
            Git,
            b,
            vec![set("metadata.namespace", "default")],
            "metadata.namespace",
            "does not match workload.kat's namespace \"team-a\"",
        ),
    ]);
}

#[test]
fn cross_file_kind_errors_point_at_the_companion_file() {
    for (base, edit, file, reason) in [
        (
            Base::Job,
            set("spec.type", "SERVICE"),
            JOB_FILE,
            "job.kat only goes with spec.type JOB",
        ),
        (
            Base::Git,
            set("spec.source", "{image: nginx}"),
            BUILD_FILE,
            "build.kat only goes with a git source",
        ),
        (
            Base::Service,
            set("spec.type", "JOB"),
            VLB_FILE,
            "a JOB takes no VirtualLoadBalancer",
        ),
    ] {
        let errors = check(base, WORKLOAD_FILE, &[edit]);
        let e = errors
            .iter()
            .find(|e| e.reason.contains(reason))
            .unwrap_or_else(|| panic!("{reason}: {errors:?}"));
        assert_eq!((e.file.as_str(), e.path.as_str()), (file, "kind"));
    }
}

#[test]
fn cluster_rules() {
    use Base::*;
    let c = CLUSTER_FILE;
    run(vec![
        case(
            Cluster,
            c,
            vec![set("spec.clusterCIDR", "10.100.0.0")],
            "spec.clusterCIDR",
            "is not a CIDR range",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.clusterCIDR", "10.100.0.0/33")],
            "spec.clusterCIDR",
            "is not a CIDR range",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.clusterCIDR", "10.100.1.0/16")],
            "spec.clusterCIDR",
            "has host bits set; the range starts at 10.100.0.0/16",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.serviceCIDR", "10.100.128.0/17")],
            "spec.serviceCIDR",
            "overlaps clusterCIDR",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.serviceCIDR", "10.0.0.0/8")],
            "spec.serviceCIDR",
            "overlaps clusterCIDR",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.nodeSubnetBits", "15")],
            "spec.nodeSubnetBits",
            "the longest allowed is /30",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.nodeSubnetBits", "0")],
            "spec.nodeSubnetBits",
            "at least 1",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.clusterDomain", "Kat_Local")],
            "spec.clusterDomain",
            "is not a DNS name",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.apiPort", "0")],
            "spec.apiPort",
            "at least 1",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.agentPort", "65536")],
            "spec.agentPort",
            "too large (at most 65535)",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.etcdClientPort", "9115")],
            "spec.etcdClientPort",
            "port 9115 is also used by apiPort",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.wireguardPort", "2380")],
            "spec.wireguardPort",
            "also used by etcdPeerPort",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.quorumSize", "2")],
            "spec.quorumSize",
            "is not a valid quorum size",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.quorumSize", "9")],
            "spec.quorumSize",
            "is not a valid quorum size",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.quorumSize", "0")],
            "spec.quorumSize",
            "is not a valid quorum size",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.volumeBasePath", "var/lib/kat")],
            "spec.volumeBasePath",
            "must be an absolute path",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.backupPath", "/var/../tmp")],
            "spec.backupPath",
            "must not contain '..'",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.backupIntervalMinutes", "-30")],
            "spec.backupIntervalMinutes",
            "must not be negative",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.agentTickSeconds", "0")],
            "spec.agentTickSeconds",
            "at least 1",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.certificateLifetimeSeconds", "5")],
            "spec.certificateLifetimeSeconds",
            "at least 10",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.hostMounts", "{allowedPaths: [/srv, srv/x]}")],
            "spec.hostMounts.allowedPaths[1]",
            "must be an absolute path",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.hostMounts", "{allowedPaths: [/etc/app]}")],
            "spec.hostMounts.allowedPaths[0]",
            "lies in /etc, which no workload may mount",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.hostMounts", "{allowedPaths: /srv}")],
            "spec.hostMounts.allowedPaths",
            "a list",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.nodeLossTimeoutSeconds", "30")],
            "spec.nodeLossTimeoutSeconds",
            "must be more than twice agentTickSeconds (15 s)",
        ),
        case(
            Cluster,
            c,
            vec![
                unset("spec.nodeLossTimeoutSeconds"),
                set("spec.agentTickSeconds", "30"),
            ],
            "spec.nodeLossTimeoutSeconds",
            "60 s must be more than twice",
        ),
        case(
            Cluster,
            c,
            vec![set("spec.clusterCidr", "10.0.0.0/8")],
            "spec.clusterCidr",
            "did you mean \"clusterCIDR\"?",
        ),
        case(
            Cluster,
            c,
            vec![set("metadata.namespace", "default")],
            "metadata.namespace",
            "not namespaced",
        ),
        case(
            Cluster,
            c,
            vec![set("spec", "[]")],
            "spec",
            "expected a mapping",
        ),
    ]);
}

fn quadlet_of(files: &[(&str, &str)]) -> Result<Quadlet, ValidationErrors> {
    let files: Vec<SourceFile> = files
        .iter()
        .map(|(name, text)| SourceFile {
            name: (*name).to_owned(),
            display: format!("d/{name}"),
            data: text.as_bytes().to_vec(),
        })
        .collect();
    parse_quadlet("d", &files)
}

#[test]
fn directory_rules() {
    let reasons = |r: Result<Quadlet, ValidationErrors>| -> Vec<String> {
        r.unwrap_err()
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        reasons(quadlet_of(&[(VLB_FILE, VLB)])),
        ["d: workload.kat is missing; every Quadlet directory needs one"]
    );
    let unknown = reasons(quadlet_of(&[
        (WORKLOAD_FILE, SERVICE),
        ("virtualloadbalancer.kat", VLB),
    ]));
    assert_eq!(unknown.len(), 1);
    assert!(
        unknown[0].starts_with("d/virtualloadbalancer.kat: unknown Quadlet file"),
        "{unknown:?}"
    );
    assert!(
        unknown[0].ends_with("did you mean VirtualLoadBalancer.kat?"),
        "{unknown:?}"
    );
    let ns = reasons(quadlet_of(&[
        (WORKLOAD_FILE, SERVICE),
        (NAMESPACE_FILE, NAMESPACE),
    ]));
    assert!(
        ns[0].contains("does not belong in a workload's Quadlet directory"),
        "{ns:?}"
    );
    let syntax = reasons(quadlet_of(&[(WORKLOAD_FILE, "spec: [unclosed")]));
    assert!(
        syntax[0].starts_with("d/workload.kat: is not valid YAML:"),
        "{syntax:?}"
    );
    assert!(
        syntax[0].contains("line"),
        "syntax errors give a position: {syntax:?}"
    );
    assert_eq!(
        reasons(quadlet_of(&[(WORKLOAD_FILE, "")])),
        ["d/workload.kat: is empty"]
    );
    let dup = reasons(quadlet_of(&[(WORKLOAD_FILE, "a: 1\na: 2\n")]));
    assert!(
        dup[0].contains("duplicate"),
        "duplicate keys are an error: {dup:?}"
    );
    let files = [SourceFile {
        name: WORKLOAD_FILE.into(),
        display: "w".into(),
        data: vec![0xff, 0xfe],
    }];
    assert!(
        parse_quadlet("d", &files).unwrap_err().errors[0]
            .reason
            .contains("not UTF-8")
    );
}

#[test]
fn a_directory_with_three_mistakes_reports_all_three() {
    let workload = SERVICE
        .replace("replicas: 2", "replicas: -2")
        .replace("memory: 256Mi", "memory: 12 parsecs");
    let vlb = VLB.replace("containerPort: 80,", "containerPort: 80000,");
    let errors = quadlet_of(&[(WORKLOAD_FILE, &workload), (VLB_FILE, &vlb)])
        .unwrap_err()
        .errors;
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].starts_with("d/workload.kat: spec.replicas: must not be negative"));
    assert!(
        lines[1]
            .starts_with("d/workload.kat: spec.container.resources.limits.memory: \"12 parsecs\"")
    );
    assert!(
        lines[2].starts_with(
            "d/VirtualLoadBalancer.kat: spec.ports[0].containerPort: 80000 is too large"
        )
    );
}

#[test]
fn defaults_are_filled_in() {
    let minimal = "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata: {name: web}\nspec:\n  source: {image: nginx}\n";
    let q = quadlet_of(&[(WORKLOAD_FILE, minimal)]).unwrap();
    let w = q.workload.unwrap();
    assert_eq!(w.metadata.as_ref().unwrap().namespace, "default");
    let spec = w.spec.unwrap();
    assert_eq!(spec.r#type(), WorkloadType::Service);
    assert_eq!(spec.replicas, Some(1));
    let strategy = spec.update_strategy.unwrap();
    assert_eq!(
        (strategy.r#type(), strategy.max_surge.as_str()),
        (UpdateStrategyType::Rolling, "1")
    );
    let restart = spec.restart_policy.unwrap();
    assert_eq!(
        (restart.condition(), restart.reset_seconds),
        (RestartCondition::Always, 3600)
    );
    assert_eq!(spec.container.unwrap().name, "main");

    let job = quadlet_of(&[(WORKLOAD_FILE, JOB_WORKLOAD)]).unwrap();
    let job_spec = job.job.unwrap().spec.unwrap();
    assert_eq!(
        (
            job_spec.completions,
            job_spec.parallelism,
            job_spec.backoff_limit
        ),
        (1, 1, Some(6))
    );
    assert_eq!(
        job.workload
            .unwrap()
            .spec
            .unwrap()
            .restart_policy
            .unwrap()
            .condition(),
        RestartCondition::Never
    );

    let git = quadlet_of(&[(WORKLOAD_FILE, GIT_WORKLOAD)]).unwrap();
    let build = git.build.unwrap();
    assert_eq!(
        build.metadata.unwrap().namespace,
        "team-a",
        "a synthesised build.kat takes the workload's namespace"
    );
    let build = build.spec.unwrap();
    assert_eq!(
        (build.build_context.as_str(), build.dockerfile_path.as_str()),
        (".", "Containerfile")
    );

    let max = quadlet_of(&[(WORKLOAD_FILE, &SERVICE.replace("maxRestarts: 3, ", ""))]).unwrap();
    assert_eq!(
        max.workload
            .unwrap()
            .spec
            .unwrap()
            .restart_policy
            .unwrap()
            .max_restarts,
        5
    );

    let cluster = parse_cluster_config(
        "c",
        b"apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {name: c}\n",
    )
    .unwrap();
    assert_eq!(cluster.spec.unwrap(), cluster::defaults());
}

#[test]
fn values_are_read_into_the_proto_types() {
    let q = quadlet_of(&[(WORKLOAD_FILE, SERVICE), (VLB_FILE, VLB)]).unwrap();
    let spec = q.workload.unwrap().spec.unwrap();
    assert_eq!(
        spec.source.unwrap().kind,
        Some(source::Kind::Image("docker.io/library/nginx:1.27".into()))
    );
    assert_eq!(spec.tolerations[0].operator(), TolerationOperator::Exists);
    let resources = spec.container.unwrap().resources.unwrap();
    assert_eq!(
        resources.limits.unwrap().cpu,
        "1",
        "a plain number is kept as its text"
    );
    assert_eq!(resources.gpu.unwrap().min_vram_mb, 4096);
    let vlb = q.virtual_load_balancer.unwrap().spec.unwrap();
    assert_eq!(vlb.ports[1].host_port, 5353);
    assert_eq!(vlb.health_check.unwrap().timeout_seconds, 3);
    let cluster = parse_cluster_config("c", CLUSTER.as_bytes())
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        cluster.backup_interval_minutes,
        Some(0),
        "0 disables backups and must survive"
    );
    assert_eq!(cluster.quorum_size, 3);
}

/// YAML → proto → YAML → proto and proto → JSON → proto give back the same value.
fn assert_round_trips(q: &Quadlet) {
    let mut files = Vec::new();
    if let Some(w) = &q.workload {
        files.push((WORKLOAD_FILE, to_yaml(w).unwrap()));
    }
    if let Some(v) = &q.virtual_load_balancer {
        files.push((VLB_FILE, to_yaml(v).unwrap()));
    }
    if let Some(j) = &q.job {
        files.push((JOB_FILE, to_yaml(j).unwrap()));
    }
    if let Some(b) = &q.build {
        files.push((BUILD_FILE, to_yaml(b).unwrap()));
    }
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let again =
        quadlet_of(&borrowed).unwrap_or_else(|e| panic!("re-parse failed:\n{e}\n{files:#?}"));
    assert_eq!(&again, q, "YAML round trip");

    let json = to_json(q).unwrap();
    let from_json: Quadlet = serde_json::from_str(&json).unwrap();
    assert_eq!(&from_json, q, "JSON round trip");

    let bytes = prost::Message::encode_to_vec(q);
    let decoded: Quadlet = prost::Message::decode(bytes.as_slice()).unwrap();
    assert_eq!(&decoded, q, "protobuf round trip");
}

#[test]
fn quadlets_round_trip_through_yaml_json_and_protobuf() {
    for files in [
        vec![(WORKLOAD_FILE, SERVICE), (VLB_FILE, VLB)],
        vec![(WORKLOAD_FILE, JOB_WORKLOAD), (JOB_FILE, JOB)],
        vec![(WORKLOAD_FILE, GIT_WORKLOAD), (BUILD_FILE, BUILD)],
        vec![(WORKLOAD_FILE, JOB_WORKLOAD)],
    ] {
        assert_round_trips(&quadlet_of(&files).unwrap());
    }
}

#[test]
fn json_uses_the_quadlet_field_names() {
    let q = quadlet_of(&[(WORKLOAD_FILE, SERVICE)]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&to_json(&q).unwrap()).unwrap();
    let spec = &json["workload"]["spec"];
    assert_eq!(spec["type"], "SERVICE");
    assert_eq!(spec["container"]["resources"]["gpu"]["minVRAM_MB"], 4096);
    assert_eq!(
        spec["volumes"][0]["simpleClusterStorage"],
        serde_json::json!({})
    );
    let cluster = parse_cluster_config("c", CLUSTER.as_bytes()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&to_json(&cluster).unwrap()).unwrap();
    assert_eq!(json["spec"]["clusterCIDR"], "10.100.0.0/16");
    assert_eq!(json["spec"]["backupIntervalMinutes"], 0);
}

#[test]
fn cluster_and_namespace_round_trip() {
    let cluster = parse_cluster_config("c", CLUSTER.as_bytes()).unwrap();
    assert_eq!(
        parse_cluster_config("c", to_yaml(&cluster).unwrap().as_bytes()).unwrap(),
        cluster
    );
    let ns = parse_namespace("n", NAMESPACE.as_bytes()).unwrap();
    assert_eq!(
        parse_namespace("n", to_yaml(&ns).unwrap().as_bytes()).unwrap(),
        ns
    );
}

#[test]
fn a_single_file_is_read_by_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cluster = write("homelab-config.yaml", CLUSTER);
    assert!(matches!(load_path(&cluster), Ok(Document::Cluster(_))));
    let workload = write("w.kat", SERVICE);
    assert!(matches!(load_path(&workload), Ok(Document::Quadlet(_))));
    let ns = write("ns.kat", NAMESPACE);
    assert!(matches!(load_path(&ns), Ok(Document::Namespace(_))));

    let pod = write("pod.kat", "apiVersion: v1\nkind: Pod\n");
    let e = &load_path(&pod).unwrap_err().errors[0];
    assert_eq!(e.path, "kind");
    assert!(e.reason.starts_with("\"Pod\" is not a KAT kind"), "{e}");
    let vlb = write("lb.kat", VLB);
    assert!(
        load_path(&vlb).unwrap_err().errors[0]
            .reason
            .contains("validate the directory that holds it")
    );
    let nokind = write("x.kat", "apiVersion: kat.dws.rip/v1alpha1\n");
    assert_eq!(
        load_path(&nokind).unwrap_err().errors[0].to_string(),
        format!("{}: kind: is required", nokind.display())
    );
}
