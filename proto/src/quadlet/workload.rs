//! `workload.kat`: the Workload (SPEC §4.2).

use std::collections::HashSet;

use super::API_VERSION;
use super::defaults as d;
use super::meta::{Meta, header, label_map, metadata};
use super::reader::{Node, Report};
use crate::names;
use crate::quantity::{parse_cpu_millis, parse_memory_bytes};
use crate::v1alpha1::{
    Container, EnvVar, GitSource, GpuDriver, GpuRequest, HostMount, HostPathType, ResourceList,
    Resources, RestartCondition, RestartPolicy, SimpleClusterStorage, Source, TaintEffect,
    Toleration, TolerationOperator, UpdateStrategy, UpdateStrategyType, Volume, VolumeMount,
    Workload, WorkloadSpec, WorkloadType, source, volume,
};

const TYPES: &[(&str, WorkloadType)] = &[
    ("SERVICE", WorkloadType::Service),
    ("JOB", WorkloadType::Job),
    ("DAEMON_SERVICE", WorkloadType::DaemonService),
];
const STRATEGIES: &[(&str, UpdateStrategyType)] = &[
    ("ROLLING", UpdateStrategyType::Rolling),
    ("SIMULTANEOUS", UpdateStrategyType::Simultaneous),
];
const CONDITIONS: &[(&str, RestartCondition)] = &[
    ("NEVER", RestartCondition::Never),
    ("MAX_COUNT", RestartCondition::MaxCount),
    ("ALWAYS", RestartCondition::Always),
];
const OPERATORS: &[(&str, TolerationOperator)] = &[
    ("EXISTS", TolerationOperator::Exists),
    ("EQUAL", TolerationOperator::Equal),
];
pub(crate) const EFFECTS: &[(&str, TaintEffect)] = &[
    ("NO_SCHEDULE", TaintEffect::NoSchedule),
    ("PREFER_NO_SCHEDULE", TaintEffect::PreferNoSchedule),
];
const DRIVERS: &[(&str, GpuDriver)] = &[
    ("ANY", GpuDriver::Any),
    ("NVIDIA", GpuDriver::Nvidia),
    ("AMD", GpuDriver::Amd),
];
const HOST_PATH_TYPES: &[(&str, HostPathType)] = &[
    ("DIRECTORY_OR_CREATE", HostPathType::DirectoryOrCreate),
    ("DIRECTORY", HostPathType::Directory),
    ("FILE_OR_CREATE", HostPathType::FileOrCreate),
    ("FILE", HostPathType::File),
    ("SOCKET", HostPathType::Socket),
];

/// Parses a workload; returns what could be read even when errors were reported, so
/// that cross-file checks still see the name, namespace and type.
pub(crate) fn parse(root: &Node<'_>, r: &mut Report) -> (Workload, Meta) {
    let Some(mut top) = header(root, r, "Workload") else {
        return (Workload::default(), Meta::default());
    };
    let meta = metadata(&mut top, r, true);
    let spec = top
        .required(r, "spec")
        .map(|n| parse_spec(&n, r))
        .unwrap_or_default();
    top.finish(r);
    let workload = Workload {
        api_version: API_VERSION.to_owned(),
        kind: "Workload".to_owned(),
        metadata: Some(meta.meta.clone()),
        spec: Some(spec),
        status: None,
    };
    (workload, meta)
}

fn parse_spec(node: &Node<'_>, r: &mut Report) -> WorkloadSpec {
    let mut spec = WorkloadSpec::default();
    let Some(mut m) = node.map(r) else {
        return spec;
    };

    let kind = m
        .field("type")
        .and_then(|n| n.one_of(r, TYPES))
        .unwrap_or(WorkloadType::Service);
    spec.set_type(kind);

    spec.source = m.required(r, "source").map(|n| parse_source(&n, r));

    let replicas = m
        .field("replicas")
        .and_then(|n| n.int_in(r, 0, d::MAX_REPLICAS));
    if kind == WorkloadType::Service {
        spec.replicas = Some(
            replicas
                .and_then(|v| i32::try_from(v).ok())
                .unwrap_or(d::REPLICAS),
        );
    }

    spec.update_strategy = Some(match m.field("updateStrategy") {
        Some(n) => parse_update_strategy(&n, r),
        None => UpdateStrategy {
            r#type: UpdateStrategyType::Rolling.into(),
            max_surge: d::MAX_SURGE.to_owned(),
        },
    });

    spec.restart_policy = Some(parse_restart_policy(m.field("restartPolicy"), kind, r));

    if let Some(n) = m.field("nodeSelector") {
        spec.node_selector = label_map(&n, r);
    }
    if let Some(n) = m.field("tolerations") {
        spec.tolerations = n
            .seq(r)
            .unwrap_or_default()
            .iter()
            .filter_map(|t| parse_toleration(t, r))
            .collect();
    }

    let volumes_node = m.field("volumes");
    let volumes: Vec<Volume> = volumes_node
        .as_ref()
        .map(|n| parse_volumes(n, r))
        .unwrap_or_default();
    let volume_names: HashSet<String> = volumes.iter().map(|v| v.name.clone()).collect();

    spec.container = Some(match m.field("container") {
        Some(n) => parse_container(&n, r, &volume_names),
        None => Container {
            name: d::CONTAINER_NAME.to_owned(),
            ..Default::default()
        },
    });
    spec.volumes = volumes;
    m.finish(r);
    spec
}

fn parse_source(node: &Node<'_>, r: &mut Report) -> Source {
    let mut source = Source::default();
    let Some(mut m) = node.map(r) else {
        return source;
    };
    let image = m.field("image");
    let git = m.field("git");
    match (image, git) {
        (Some(_), Some(_)) => r.error(m.path(), "give exactly one of image or git, not both"),
        (None, None) => r.error(m.path(), "give exactly one of image or git"),
        (Some(n), None) => {
            if let Some(image) = n.string(r) {
                if let Some(problem) = names::image_problem(&image) {
                    r.error(&n.path, problem);
                }
                source.kind = Some(source::Kind::Image(image));
            }
        }
        (None, Some(n)) => source.kind = parse_git(&n, r).map(source::Kind::Git),
    }
    if let Some(n) = m.field("cacheImage")
        && let Some(cache) = n.string(r)
    {
        if !matches!(source.kind, Some(source::Kind::Git(_))) {
            r.error(&n.path, "a build cache only applies to a git source");
        } else if let Some(problem) = names::image_problem(&cache) {
            r.error(&n.path, problem);
        }
        source.cache_image = cache;
    }
    m.finish(r);
    source
}

fn parse_git(node: &Node<'_>, r: &mut Report) -> Option<GitSource> {
    let mut m = node.map(r)?;
    let mut git = GitSource::default();
    if let Some(n) = m.required(r, "repository")
        && let Some(repo) = n.string(r)
    {
        let known_scheme = ["https://", "http://", "ssh://", "git://", "file://", "git@"]
            .iter()
            .any(|scheme| repo.starts_with(scheme));
        if !known_scheme || repo.chars().any(char::is_whitespace) {
            r.error(
                &n.path,
                format!(
                    "{repo:?} is not a git URL (use https://, ssh://, git@host:path or file://)"
                ),
            );
        }
        git.repository = repo;
    }
    let mut refs = Vec::new();
    for (key, slot) in [
        ("branch", &mut git.branch),
        ("tag", &mut git.tag),
        ("commit", &mut git.commit),
    ] {
        if let Some(n) = m.field(key)
            && let Some(value) = n.string(r)
        {
            if value.is_empty()
                || value.chars().any(|c| c.is_whitespace() || c.is_control())
                || value.contains("..")
            {
                r.error(&n.path, format!("{value:?} is not a valid git {key}"));
            }
            refs.push(key);
            *slot = value;
        }
    }
    if refs.len() > 1 {
        r.error(
            m.path(),
            format!(
                "give at most one of branch, tag or commit (found {})",
                refs.join(" and ")
            ),
        );
    }
    let is_hash =
        (4..=64).contains(&git.commit.len()) && git.commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !git.commit.is_empty() && !is_hash {
        r.error(
            &m.child_path("commit"),
            format!("{:?} is not a commit hash (4 to 64 hex digits)", git.commit),
        );
    }
    m.finish(r);
    Some(git)
}

fn parse_update_strategy(node: &Node<'_>, r: &mut Report) -> UpdateStrategy {
    let mut s = UpdateStrategy {
        r#type: UpdateStrategyType::Rolling.into(),
        max_surge: d::MAX_SURGE.to_owned(),
    };
    let Some(mut m) = node.map(r) else { return s };
    if let Some(t) = m.field("type").and_then(|n| n.one_of(r, STRATEGIES)) {
        s.set_type(t);
    }
    if let Some(n) = m.field("maxSurge")
        && let Some(text) = n.scalar_text(r)
    {
        match max_surge_problem(&text) {
            Some(problem) => r.error(&n.path, problem),
            None => s.max_surge = text,
        }
    }
    m.finish(r);
    s
}

/// `maxSurge`: a whole number ≥ 1 or a percentage from 1% to 100%.
fn max_surge_problem(text: &str) -> Option<String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(pct) = text.strip_suffix('%') {
        return match pct.parse::<u32>() {
            Ok(p) if digits(pct) && (1..=100).contains(&p) => None,
            _ => Some(format!("{text:?} is not a percentage from 1% to 100%")),
        };
    }
    match text.parse::<u32>() {
        Ok(n) if digits(text) && n >= 1 => None,
        Ok(_) if digits(text) => {
            Some("must be at least 1, or a rollout could never start".to_owned())
        }
        _ => Some(format!(
            "{text:?} is not a whole number or a percentage (use e.g. 1 or \"25%\")"
        )),
    }
}

fn parse_restart_policy(
    node: Option<Node<'_>>,
    kind: WorkloadType,
    r: &mut Report,
) -> RestartPolicy {
    let default_condition = if kind == WorkloadType::Job {
        RestartCondition::Never
    } else {
        RestartCondition::Always
    };
    let mut p = RestartPolicy {
        condition: default_condition.into(),
        max_restarts: 0,
        reset_seconds: d::RESET_SECONDS,
    };
    let mut max_restarts = None;
    if let Some(mut m) = node.and_then(|n| n.map(r)) {
        let condition_node = m.field("condition");
        if let Some(c) = condition_node
            .as_ref()
            .and_then(|n| n.one_of(r, CONDITIONS))
        {
            p.set_condition(c);
        }
        if kind == WorkloadType::Job
            && p.condition() == RestartCondition::Always
            && let Some(n) = &condition_node
        {
            r.error(
                &n.path,
                "a JOB cannot restart ALWAYS (it would never finish); use NEVER or MAX_COUNT",
            );
        }
        if let Some(n) = m.field("maxRestarts")
            && let Some(max) = n.u32_in(r, 1, 10_000)
        {
            if p.condition() == RestartCondition::MaxCount {
                max_restarts = Some(max);
            } else {
                r.error(&n.path, "only applies with condition MAX_COUNT");
            }
        }
        if let Some(secs) = m
            .field("resetSeconds")
            .and_then(|n| n.u32_in(r, 1, u32::MAX))
        {
            p.reset_seconds = secs;
        }
        m.finish(r);
    }
    if p.condition() == RestartCondition::MaxCount {
        p.max_restarts = max_restarts.unwrap_or(d::MAX_RESTARTS);
    }
    p
}

fn parse_toleration(node: &Node<'_>, r: &mut Report) -> Option<Toleration> {
    let mut m = node.map(r)?;
    let mut t = Toleration::default();
    if let Some(n) = m.field("key")
        && let Some(key) = n.string(r)
    {
        if let Some(problem) = names::label_key_problem(&key) {
            r.error(&n.path, problem);
        }
        t.key = key;
    }
    let op = m
        .field("operator")
        .and_then(|n| n.one_of(r, OPERATORS))
        .unwrap_or(TolerationOperator::Equal);
    t.set_operator(op);
    if let Some(n) = m.field("value")
        && let Some(value) = n.string(r)
    {
        if op == TolerationOperator::Exists && !value.is_empty() {
            r.error(
                &n.path,
                "must be empty with operator EXISTS (it matches any value)",
            );
        } else if let Some(problem) = names::label_value_problem(&value) {
            r.error(&n.path, problem);
        }
        t.value = value;
    }
    if op == TolerationOperator::Equal && t.key.is_empty() {
        r.error(
            &m.child_path("key"),
            "is required with operator EQUAL (only EXISTS may match every key)",
        );
    }
    if let Some(effect) = m.field("effect").and_then(|n| n.one_of(r, EFFECTS)) {
        t.set_effect(effect);
    }
    m.finish(r);
    Some(t)
}

fn parse_container(node: &Node<'_>, r: &mut Report, volume_names: &HashSet<String>) -> Container {
    let mut c = Container {
        name: d::CONTAINER_NAME.to_owned(),
        ..Default::default()
    };
    let Some(mut m) = node.map(r) else { return c };
    if let Some(n) = m.field("name")
        && let Some(name) = n.string(r)
    {
        if let Some(problem) = names::dns_label_problem(&name) {
            r.error(&n.path, problem);
        }
        c.name = name;
    }
    if let Some(n) = m.field("command") {
        c.command = text_list(&n, r);
        if c.command.is_empty() {
            r.error(
                &n.path,
                "must not be empty; leave it out to use the image's entrypoint",
            );
        }
    }
    if let Some(n) = m.field("args") {
        c.args = text_list(&n, r);
    }
    if let Some(n) = m.field("env") {
        let mut seen = HashSet::new();
        for item in n.seq(r).unwrap_or_default() {
            let Some(mut e) = item.map(r) else { continue };
            let mut var = EnvVar::default();
            if let Some(name_node) = e.required(r, "name")
                && let Some(name) = name_node.string(r)
            {
                if let Some(problem) = names::env_name_problem(&name) {
                    r.error(&name_node.path, problem);
                } else if !seen.insert(name.clone()) {
                    r.error(&name_node.path, format!("{name:?} is set twice"));
                }
                var.name = name;
            }
            if let Some(node) = e.field("value")
                && let Some(v) = node.scalar_text(r)
            {
                if let Some(problem) = names::control_character_problem(&v) {
                    r.error(&node.path, problem);
                } else if v.contains('\n') {
                    r.error(
                        &node.path,
                        "an environment value is one line (instances read it from an env \
                         file, a line a variable); put multi-line data in a volume",
                    );
                } else if v.len() > MAX_ENV_VALUE {
                    r.error(
                        &node.path,
                        format!(
                            "{} bytes; an environment value is at most {} KiB (put more in a volume)",
                            v.len(),
                            MAX_ENV_VALUE / 1024
                        ),
                    );
                }
                var.value = v;
            }
            e.finish(r);
            c.env.push(var);
        }
    }
    if let Some(n) = m.field("volumeMounts") {
        let mut paths = HashSet::new();
        for item in n.seq(r).unwrap_or_default() {
            let Some(mut vm) = item.map(r) else { continue };
            let mut mount = VolumeMount::default();
            if let Some(name_node) = vm.required(r, "name")
                && let Some(name) = name_node.string(r)
            {
                if !volume_names.contains(&name) {
                    r.error(
                        &name_node.path,
                        format!("{name:?} names no volume in spec.volumes"),
                    );
                }
                mount.name = name;
            }
            if let Some(p) = vm.required(r, "mountPath")
                && let Some(path) = p.string(r)
            {
                if let Some(problem) = names::absolute_path_problem(&path) {
                    r.error(&p.path, problem);
                } else if !paths.insert(path.trim_end_matches('/').to_owned()) {
                    r.error(&p.path, format!("{path:?} is mounted twice"));
                }
                mount.mount_path = path;
            }
            if let Some(p) = vm.field("subPath")
                && let Some(sub) = p.string(r)
            {
                if !sub.is_empty()
                    && let Some(problem) = names::relative_path_problem(&sub)
                {
                    r.error(&p.path, problem);
                }
                mount.sub_path = sub;
            }
            if let Some(ro) = vm.field("readOnly").and_then(|p| p.bool(r)) {
                mount.read_only = ro;
            }
            vm.finish(r);
            c.volume_mounts.push(mount);
        }
    }
    if let Some(n) = m.field("resources") {
        c.resources = Some(parse_resources(&n, r));
    }
    m.finish(r);
    c
}

fn parse_resources(node: &Node<'_>, r: &mut Report) -> Resources {
    let mut res = Resources::default();
    let Some(mut m) = node.map(r) else { return res };
    let requests = m.field("requests").map(|n| parse_resource_list(&n, r));
    let limits = m.field("limits").map(|n| parse_resource_list(&n, r));
    if let (Some((req, req_n)), Some((lim, lim_n))) = (&requests, &limits) {
        for (what, req_v, lim_v) in [("cpu", req_n.0, lim_n.0), ("memory", req_n.1, lim_n.1)] {
            if let (Some(req_v), Some(lim_v)) = (req_v, lim_v)
                && lim_v < req_v
            {
                let (req_text, lim_text) = if what == "cpu" {
                    (&req.cpu, &lim.cpu)
                } else {
                    (&req.memory, &lim.memory)
                };
                r.error(
                    &format!("{}.{what}", m.child_path("limits")),
                    format!("limit {lim_text} is below the request {req_text}"),
                );
            }
        }
    }
    res.requests = requests.map(|(list, _)| list);
    res.limits = limits.map(|(list, _)| list);
    if let Some(n) = m.field("gpu")
        && let Some(mut g) = n.map(r)
    {
        let mut gpu = GpuRequest::default();
        gpu.set_driver(
            g.field("driver")
                .and_then(|d| d.one_of(r, DRIVERS))
                .unwrap_or(GpuDriver::Any),
        );
        if let Some(vram) = g.field("minVRAM_MB").and_then(|v| v.u32(r)) {
            gpu.min_vram_mb = vram;
        }
        g.finish(r);
        res.gpu = Some(gpu);
    }
    m.finish(r);
    res
}

/// Reads `{cpu, memory}`; also returns the parsed millicores and bytes.
fn parse_resource_list(
    node: &Node<'_>,
    r: &mut Report,
) -> (ResourceList, (Option<u64>, Option<u64>)) {
    let mut list = ResourceList::default();
    let mut parsed = (None, None);
    let Some(mut m) = node.map(r) else {
        return (list, parsed);
    };
    if let Some(n) = m.field("cpu")
        && let Some(text) = n.scalar_text(r)
    {
        match parse_cpu_millis(&text) {
            Ok(v) if v > d::MAX_CPU_MILLIS => r.error(
                &n.path,
                format!("{text:?} is more CPU than any machine has (at most 4096 cores)"),
            ),
            Ok(v) => parsed.0 = Some(v),
            Err(e) => r.error(&n.path, e.to_string()),
        }
        list.cpu = text;
    }
    if let Some(n) = m.field("memory")
        && let Some(text) = n.scalar_text(r)
    {
        match parse_memory_bytes(&text) {
            Ok(v) if v > d::MAX_MEMORY_BYTES => r.error(
                &n.path,
                format!("{text:?} is more memory than any machine has (at most 64Ti)"),
            ),
            Ok(v) => parsed.1 = Some(v),
            Err(e) => r.error(&n.path, e.to_string()),
        }
        list.memory = text;
    }
    m.finish(r);
    (list, parsed)
}

/// The longest environment value (Podman reads env files a line at a time, in lines
/// of at most 64 KiB).
const MAX_ENV_VALUE: usize = 32 << 10;

fn parse_volumes(node: &Node<'_>, r: &mut Report) -> Vec<Volume> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in node.seq(r).unwrap_or_default() {
        let Some(mut m) = item.map(r) else { continue };
        let mut v = Volume::default();
        if let Some(n) = m.required(r, "name")
            && let Some(name) = n.string(r)
        {
            if let Some(problem) = names::dns_label_problem(&name) {
                r.error(&n.path, problem);
            } else if !seen.insert(name.clone()) {
                r.error(&n.path, format!("volume {name:?} is defined twice"));
            }
            v.name = name;
        }
        let simple = m.field("simpleClusterStorage");
        let host = m.field("hostMount");
        match (simple, host) {
            (Some(_), Some(_)) => r.error(
                m.path(),
                "give exactly one of simpleClusterStorage or hostMount, not both",
            ),
            (None, None) => r.error(
                m.path(),
                "give exactly one of simpleClusterStorage or hostMount",
            ),
            (Some(n), None) => {
                if let Some(s) = n.map(r) {
                    s.finish(r);
                }
                v.source = Some(volume::Source::SimpleClusterStorage(
                    SimpleClusterStorage {},
                ));
            }
            (None, Some(n)) => {
                if let Some(mut h) = n.map(r) {
                    let mut mount = HostMount::default();
                    if let Some(p) = h.required(r, "hostPath")
                        && let Some(path) = p.string(r)
                    {
                        if let Some(problem) = names::host_path_problem(&path, &[]) {
                            r.error(&p.path, problem);
                        }
                        mount.host_path = path;
                    }
                    let ensure = h
                        .field("ensureType")
                        .and_then(|e| e.one_of(r, HOST_PATH_TYPES));
                    mount.set_ensure_type(ensure.unwrap_or(HostPathType::DirectoryOrCreate));
                    h.finish(r);
                    v.source = Some(volume::Source::HostMount(mount));
                }
            }
        }
        m.finish(r);
        out.push(v);
    }
    out
}

/// A list of strings (a command, its arguments), each without control characters but
/// tab and newline (they end up in a unit file).
fn text_list(n: &Node<'_>, r: &mut Report) -> Vec<String> {
    let mut out = Vec::new();
    for item in n.seq(r).unwrap_or_default() {
        if let Some(text) = item.string(r) {
            if let Some(problem) = names::control_character_problem(&text) {
                r.error(&item.path, problem);
            }
            out.push(text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::max_surge_problem;

    #[test]
    fn max_surge_accepts_counts_and_percentages() {
        for ok in ["1", "3", "25%", "100%"] {
            assert_eq!(max_surge_problem(ok), None, "{ok}");
        }
        for bad in ["0", "0%", "101%", "-1", "x", "1.5", "%"] {
            assert!(max_surge_problem(bad).is_some(), "{bad}");
        }
    }
}
