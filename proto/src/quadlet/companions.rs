//! The companion files of a Quadlet directory — `VirtualLoadBalancer.kat` (SPEC §4.3),
//! `job.kat` (§4.4), `build.kat` (§4.5) — and the checks across the files of one
//! directory.

use std::collections::HashSet;

use super::defaults as d;
use super::meta::{Meta, header, metadata};
use super::reader::{MapReader, Node, Report};
use super::{
    API_VERSION, BUILD_FILE, CLUSTER_FILE, FieldError, JOB_FILE, NAMESPACE_FILE, QUADLET_FILES,
    SourceFile, VLB_FILE, ValidationErrors, WORKLOAD_FILE, parse_yaml, workload,
};
use crate::names;
use crate::v1alpha1::{
    BuildCache, BuildDefinition, BuildDefinitionSpec, ExecAction, HealthCheck, IngressRule,
    JobDefinition, JobDefinitionSpec, ObjectMeta, Protocol, Quadlet, ServicePort,
    VirtualLoadBalancer, VirtualLoadBalancerSpec, WorkloadType, source,
};

const PROTOCOLS: &[(&str, Protocol)] = &[("TCP", Protocol::Tcp), ("UDP", Protocol::Udp)];

pub(crate) fn parse_quadlet(dir: &str, files: &[SourceFile]) -> Result<Quadlet, ValidationErrors> {
    let mut errors: Vec<FieldError> = Vec::new();
    let dir_error = |errors: &mut Vec<FieldError>, file: &str, reason: String| {
        errors.push(FieldError {
            file: file.to_owned(),
            path: String::new(),
            reason,
        });
    };

    let mut by_name: std::collections::BTreeMap<&str, &SourceFile> = Default::default();
    for f in files {
        if by_name.insert(f.name.as_str(), f).is_some() {
            dir_error(&mut errors, &f.display, "appears twice".to_owned());
        }
        if QUADLET_FILES.contains(&f.name.as_str()) {
            continue;
        }
        let reason = if f.name == NAMESPACE_FILE || f.name == CLUSTER_FILE {
            format!(
                "{} does not belong in a workload's Quadlet directory; keep it on its own",
                f.name
            )
        } else {
            let hint = QUADLET_FILES
                .iter()
                .find(|known| known.eq_ignore_ascii_case(&f.name))
                .map(|known| format!("; did you mean {known}?"))
                .unwrap_or_default();
            format!(
                "unknown Quadlet file (a workload directory holds {}){hint}",
                QUADLET_FILES.join(", ")
            )
        };
        dir_error(&mut errors, &f.display, reason);
    }

    let Some(workload_file) = by_name.get(WORKLOAD_FILE) else {
        dir_error(
            &mut errors,
            dir,
            format!("{WORKLOAD_FILE} is missing; every Quadlet directory needs one"),
        );
        return Err(ValidationErrors { errors });
    };

    let mut wr = Report::new(&workload_file.display);
    let (workload, wmeta) = match parse_yaml(&mut wr, &workload_file.data) {
        Some(v) => workload::parse(&Node::root(&v), &mut wr),
        None => Default::default(),
    };
    errors.extend(wr.into_errors());
    let spec = workload.spec.clone().unwrap_or_default();
    let kind = spec.r#type();
    let is_git = matches!(
        spec.source.as_ref().and_then(|s| s.kind.as_ref()),
        Some(source::Kind::Git(_))
    );

    let mut quadlet = Quadlet {
        workload: Some(workload),
        ..Default::default()
    };

    if let Some(f) = by_name.get(VLB_FILE) {
        let mut r = Report::new(&f.display);
        if let Some(v) = parse_yaml(&mut r, &f.data) {
            let (vlb, meta) = parse_vlb(&Node::root(&v), &mut r);
            if kind == WorkloadType::Job {
                r.error(
                    "kind",
                    "a JOB takes no VirtualLoadBalancer; remove this file or change spec.type",
                );
            }
            match_names(&mut r, &wmeta, &meta);
            quadlet.virtual_load_balancer = Some(inherit(vlb, &wmeta, &meta, |v| &mut v.metadata));
        }
        errors.extend(r.into_errors());
    }

    match by_name.get(JOB_FILE) {
        Some(f) => {
            let mut r = Report::new(&f.display);
            if let Some(v) = parse_yaml(&mut r, &f.data) {
                let (job, meta) = parse_job(&Node::root(&v), &mut r);
                if kind != WorkloadType::Job {
                    r.error(
                        "kind",
                        format!("{JOB_FILE} only goes with spec.type JOB in {WORKLOAD_FILE}"),
                    );
                }
                match_names(&mut r, &wmeta, &meta);
                quadlet.job = Some(inherit(job, &wmeta, &meta, |j| &mut j.metadata));
            }
            errors.extend(r.into_errors());
        }
        None if kind == WorkloadType::Job => {
            quadlet.job = Some(JobDefinition {
                api_version: API_VERSION.to_owned(),
                kind: "JobDefinition".to_owned(),
                metadata: Some(companion_meta(&wmeta)),
                spec: Some(job_defaults()),
            });
        }
        None => {}
    }

    match by_name.get(BUILD_FILE) {
        Some(f) => {
            let mut r = Report::new(&f.display);
            if let Some(v) = parse_yaml(&mut r, &f.data) {
                let (build, meta) = parse_build(&Node::root(&v), &mut r);
                if !is_git {
                    r.error(
                        "kind",
                        format!("{BUILD_FILE} only goes with a git source in {WORKLOAD_FILE}"),
                    );
                }
                match_names(&mut r, &wmeta, &meta);
                quadlet.build = Some(inherit(build, &wmeta, &meta, |b| &mut b.metadata));
            }
            errors.extend(r.into_errors());
        }
        None if is_git => {
            quadlet.build = Some(BuildDefinition {
                api_version: API_VERSION.to_owned(),
                kind: "BuildDefinition".to_owned(),
                metadata: Some(companion_meta(&wmeta)),
                spec: Some(build_defaults()),
            });
        }
        None => {}
    }

    if errors.is_empty() {
        Ok(quadlet)
    } else {
        Err(ValidationErrors { errors })
    }
}

/// A companion file must carry the workload's name, and its namespace when it gives one.
fn match_names(r: &mut Report, workload: &Meta, companion: &Meta) {
    let (w, c) = (&workload.meta, &companion.meta);
    if !w.name.is_empty() && !c.name.is_empty() && w.name != c.name {
        r.error(
            "metadata.name",
            format!(
                "{:?} does not match {WORKLOAD_FILE}'s name {:?}",
                c.name, w.name
            ),
        );
    }
    if companion.namespace_given && c.namespace != w.namespace {
        r.error(
            "metadata.namespace",
            format!(
                "{:?} does not match {WORKLOAD_FILE}'s namespace {:?}",
                c.namespace, w.namespace
            ),
        );
    }
}

/// Companions without a namespace take the workload's.
fn inherit<T>(
    mut value: T,
    workload: &Meta,
    companion: &Meta,
    meta: fn(&mut T) -> &mut Option<ObjectMeta>,
) -> T {
    if !companion.namespace_given
        && let Some(m) = meta(&mut value)
    {
        m.namespace = workload.meta.namespace.clone();
    }
    value
}

fn companion_meta(workload: &Meta) -> ObjectMeta {
    ObjectMeta {
        name: workload.meta.name.clone(),
        namespace: workload.meta.namespace.clone(),
        ..Default::default()
    }
}

fn spec_map<'a>(top: &mut MapReader<'a>, r: &mut Report) -> Option<MapReader<'a>> {
    top.required(r, "spec").and_then(|n| n.map(r))
}

fn parse_vlb(root: &Node<'_>, r: &mut Report) -> (VirtualLoadBalancer, Meta) {
    let Some(mut top) = header(root, r, "VirtualLoadBalancer") else {
        return Default::default();
    };
    let meta = metadata(&mut top, r, true);
    let mut spec = VirtualLoadBalancerSpec::default();
    if let Some(mut m) = spec_map(&mut top, r) {
        let mut port_names = HashSet::new();
        if let Some(n) = m.field("ports") {
            let mut seen_ports = HashSet::new();
            for item in n.seq(r).unwrap_or_default() {
                let Some(mut p) = item.map(r) else { continue };
                let mut port = ServicePort::default();
                if let Some(nn) = p.required(r, "name")
                    && let Some(name) = nn.string(r)
                {
                    if let Some(problem) = names::dns_label_problem(&name) {
                        r.error(&nn.path, problem);
                    } else if !port_names.insert(name.clone()) {
                        r.error(&nn.path, format!("port name {name:?} is used twice"));
                    }
                    port.name = name;
                }
                let number = p
                    .required(r, "containerPort")
                    .and_then(|cp| cp.u32_in(r, 1, 65535).map(|v| (cp, v)));
                port.set_protocol(
                    p.field("protocol")
                        .and_then(|pr| pr.one_of(r, PROTOCOLS))
                        .unwrap_or(Protocol::Tcp),
                );
                if let Some((cp, v)) = number {
                    port.container_port = v;
                    if !seen_ports.insert((v, port.protocol)) {
                        r.error(
                            &cp.path,
                            format!("{v}/{} is listed twice", port.protocol().as_str_name()),
                        );
                    }
                }
                if let Some(hp) = p.field("hostPort").and_then(|hp| hp.u32_in(r, 1, 65535)) {
                    port.host_port = hp;
                }
                p.finish(r);
                spec.ports.push(port);
            }
        }
        if let Some(n) = m.field("healthCheck") {
            spec.health_check = parse_health_check(&n, r);
        }
        if let Some(n) = m.field("ingress") {
            for item in n.seq(r).unwrap_or_default() {
                let Some(mut ing) = item.map(r) else { continue };
                let mut rule = IngressRule {
                    path: d::INGRESS_PATH.to_owned(),
                    ..Default::default()
                };
                if let Some(h) = ing.required(r, "host")
                    && let Some(host) = h.string(r)
                {
                    if let Some(problem) = names::dns_name_problem(&host) {
                        r.error(&h.path, problem);
                    }
                    rule.host = host;
                }
                if let Some(p) = ing.field("path")
                    && let Some(path) = p.string(r)
                {
                    if !path.starts_with('/') {
                        r.error(&p.path, format!("{path:?} must start with '/'"));
                    }
                    rule.path = path;
                }
                if let Some(s) = ing.required(r, "servicePortName")
                    && let Some(name) = s.string(r)
                {
                    if !port_names.contains(&name) {
                        r.error(&s.path, format!("{name:?} names no port in spec.ports"));
                    }
                    rule.service_port_name = name;
                }
                if let Some(tls) = ing.field("tls").and_then(|t| t.bool(r)) {
                    rule.tls = tls;
                }
                ing.finish(r);
                spec.ingress.push(rule);
            }
        }
        m.finish(r);
    }
    top.finish(r);
    let vlb = VirtualLoadBalancer {
        api_version: API_VERSION.to_owned(),
        kind: "VirtualLoadBalancer".to_owned(),
        metadata: Some(meta.meta.clone()),
        spec: Some(spec),
    };
    (vlb, meta)
}

fn parse_health_check(node: &Node<'_>, r: &mut Report) -> Option<HealthCheck> {
    let mut m = node.map(r)?;
    let mut hc = HealthCheck {
        exec: None,
        initial_delay_seconds: 0,
        period_seconds: d::HEALTH_PERIOD_SECONDS,
        timeout_seconds: d::HEALTH_TIMEOUT_SECONDS,
        success_threshold: d::HEALTH_SUCCESS_THRESHOLD,
        failure_threshold: d::HEALTH_FAILURE_THRESHOLD,
    };
    if let Some(e) = m.required(r, "exec")
        && let Some(mut em) = e.map(r)
    {
        if let Some(c) = em.required(r, "command") {
            let command = c.string_list(r);
            if command.is_empty() {
                r.error(&c.path, "must name a program to run");
            }
            hc.exec = Some(ExecAction { command });
        }
        em.finish(r);
    }
    if let Some(v) = m
        .field("initialDelaySeconds")
        .and_then(|n| n.u32_in(r, 0, 86_400))
    {
        hc.initial_delay_seconds = v;
    }
    if let Some(v) = m
        .field("periodSeconds")
        .and_then(|n| n.u32_in(r, 1, 86_400))
    {
        hc.period_seconds = v;
    }
    let timeout = m.field("timeoutSeconds");
    if let Some(v) = timeout.as_ref().and_then(|n| n.u32_in(r, 1, 86_400)) {
        hc.timeout_seconds = v;
    }
    if hc.timeout_seconds > hc.period_seconds {
        r.error(
            &m.child_path("timeoutSeconds"),
            format!(
                "{} s is longer than periodSeconds ({} s); checks would overlap",
                hc.timeout_seconds, hc.period_seconds
            ),
        );
    }
    if let Some(v) = m
        .field("successThreshold")
        .and_then(|n| n.u32_in(r, 1, 1000))
    {
        hc.success_threshold = v;
    }
    if let Some(v) = m
        .field("failureThreshold")
        .and_then(|n| n.u32_in(r, 1, 1000))
    {
        hc.failure_threshold = v;
    }
    m.finish(r);
    Some(hc)
}

pub(crate) fn job_defaults() -> JobDefinitionSpec {
    JobDefinitionSpec {
        schedule: String::new(),
        completions: d::JOB_COMPLETIONS,
        parallelism: d::JOB_PARALLELISM,
        active_deadline_seconds: 0,
        backoff_limit: Some(d::JOB_BACKOFF_LIMIT),
    }
}

fn parse_job(root: &Node<'_>, r: &mut Report) -> (JobDefinition, Meta) {
    let Some(mut top) = header(root, r, "JobDefinition") else {
        return Default::default();
    };
    let meta = metadata(&mut top, r, true);
    let mut spec = job_defaults();
    if let Some(mut m) = spec_map(&mut top, r) {
        if let Some(n) = m.field("schedule")
            && let Some(s) = n.string(r)
        {
            if let Err(why) = crate::cron::parse(&s) {
                r.error(&n.path, why);
            }
            spec.schedule = s;
        }
        if let Some(v) = m.field("completions").and_then(|n| n.u32_in(r, 1, 10_000)) {
            spec.completions = v;
        }
        if let Some(v) = m.field("parallelism").and_then(|n| n.u32_in(r, 1, 1000)) {
            spec.parallelism = v;
        }
        if let Some(v) = m.field("activeDeadlineSeconds").and_then(|n| n.u32(r)) {
            spec.active_deadline_seconds = v;
        }
        if let Some(v) = m.field("backoffLimit").and_then(|n| n.u32_in(r, 0, 1000)) {
            spec.backoff_limit = Some(v);
        }
        m.finish(r);
    }
    top.finish(r);
    let job = JobDefinition {
        api_version: API_VERSION.to_owned(),
        kind: "JobDefinition".to_owned(),
        metadata: Some(meta.meta.clone()),
        spec: Some(spec),
    };
    (job, meta)
}

pub(crate) fn build_defaults() -> BuildDefinitionSpec {
    BuildDefinitionSpec {
        build_context: d::BUILD_CONTEXT.to_owned(),
        dockerfile_path: d::DOCKERFILE_PATH.to_owned(),
        ..Default::default()
    }
}

fn parse_build(root: &Node<'_>, r: &mut Report) -> (BuildDefinition, Meta) {
    let Some(mut top) = header(root, r, "BuildDefinition") else {
        return Default::default();
    };
    let meta = metadata(&mut top, r, true);
    let mut spec = build_defaults();
    if let Some(mut m) = spec_map(&mut top, r) {
        for (key, slot) in [
            ("buildContext", &mut spec.build_context),
            ("dockerfilePath", &mut spec.dockerfile_path),
        ] {
            if let Some(n) = m.field(key)
                && let Some(path) = n.string(r)
            {
                if path.is_empty() {
                    r.error(&n.path, "must not be empty");
                } else if let Some(problem) = names::relative_path_problem(&path) {
                    r.error(
                        &n.path,
                        format!("{problem} (it is a path inside the repository)"),
                    );
                }
                *slot = path;
            }
        }
        if let Some(n) = m.field("buildArgs") {
            for (key, value) in n.string_map(r) {
                if let Some(problem) = names::env_name_problem(&key) {
                    r.error(&super::reader::join(&n.path, &key), problem);
                }
                spec.build_args.insert(key, value);
            }
        }
        if let Some(n) = m.field("targetStage")
            && let Some(stage) = n.string(r)
        {
            if stage.chars().any(char::is_whitespace) {
                r.error(&n.path, format!("{stage:?} is not a stage name"));
            }
            spec.target_stage = stage;
        }
        if let Some(n) = m.field("platform")
            && let Some(platform) = n.string(r)
        {
            let parts: Vec<&str> = platform.split('/').collect();
            let ok = (2..=3).contains(&parts.len())
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                });
            if !ok {
                r.error(
                    &n.path,
                    format!(
                        "{platform:?} is not a platform (use os/arch[/variant], e.g. linux/amd64)"
                    ),
                );
            }
            spec.platform = platform;
        }
        if let Some(n) = m.field("cache")
            && let Some(mut c) = n.map(r)
        {
            let mut cache = BuildCache::default();
            if let Some(p) = c.field("registryPath")
                && let Some(path) = p.string(r)
            {
                if let Some(problem) = names::image_problem(&path) {
                    r.error(&p.path, problem);
                }
                cache.registry_path = path;
            }
            c.finish(r);
            spec.cache = Some(cache);
        }
        m.finish(r);
    }
    top.finish(r);
    let build = BuildDefinition {
        api_version: API_VERSION.to_owned(),
        kind: "BuildDefinition".to_owned(),
        metadata: Some(meta.meta.clone()),
        spec: Some(spec),
    };
    (build, meta)
}
