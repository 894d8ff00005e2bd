//! Podman command lines, built from the runtime's types: pure functions, tested
//! without Podman.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::types::{
    BuildOptions, ContainerCreateOptions, LogOptions, Protocol, RestartPolicy, RuntimeError,
};

fn invalid(field: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidOptions {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Podman's rule for container names.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Refuses options Podman would refuse later or misread.
pub fn validate(opts: &ContainerCreateOptions) -> Result<(), RuntimeError> {
    if !valid_name(&opts.name) {
        return Err(invalid(
            "name",
            format!(
                "{:?} is not a container name (letters, digits, _ . -; starting with a letter or digit)",
                opts.name
            ),
        ));
    }
    if opts.image.trim().is_empty() {
        return Err(invalid("image", "must not be empty"));
    }
    for key in opts.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(
                &format!("env.{key}"),
                "a variable name must be non-empty without '=' or NUL",
            ));
        }
    }
    for (key, value) in opts.all_labels() {
        if key.is_empty() || key.contains('=') {
            return Err(invalid(
                &format!("labels.{key}"),
                "a label key must be non-empty without '='",
            ));
        }
        if value.contains('\n') {
            return Err(invalid(&format!("labels.{key}"), "no newlines in a label"));
        }
    }
    for (i, v) in opts.volumes.iter().enumerate() {
        if !v.source.is_absolute() || !v.target.is_absolute() {
            return Err(invalid(
                &format!("volumes[{i}]"),
                format!(
                    "source and target must be absolute paths ({} -> {})",
                    v.source.display(),
                    v.target.display()
                ),
            ));
        }
        let text = format!("{}{}", v.source.display(), v.target.display());
        if text.contains(':') || text.contains(',') {
            return Err(invalid(
                &format!("volumes[{i}]"),
                "paths with ':' or ',' cannot be mounted",
            ));
        }
    }
    if opts.ip.is_some() && opts.network.is_none() {
        return Err(invalid("ip", "a fixed IP needs a network"));
    }
    if opts.resources.cpu_millis == Some(0) {
        return Err(invalid("resources.cpu", "must be more than 0"));
    }
    Ok(())
}

/// Podman's `--cpus` value for millicores ("0.25", "2").
fn cpus(millis: u64) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_owned()
    }
}

/// Options, image, entrypoint and arguments shared by `podman create` and the
/// `podman run` of a systemd unit.
pub fn container_args(opts: &ContainerCreateOptions) -> Vec<String> {
    let mut a: Vec<String> = vec!["--name".into(), opts.name.clone()];
    for (k, v) in opts.all_labels() {
        a.push("--label".into());
        a.push(format!("{k}={v}"));
    }
    if let Some(h) = &opts.hostname {
        a.push("--hostname".into());
        a.push(h.clone());
    }
    for (k, v) in &opts.env {
        a.push("--env".into());
        a.push(format!("{k}={v}"));
    }
    if !opts.systemd_mode {
        a.push(format!(
            "--restart={}",
            match opts.restart {
                RestartPolicy::Always => "always".to_owned(),
                RestartPolicy::Never => "no".to_owned(),
                RestartPolicy::MaxCount { max_restarts, .. } =>
                    format!("on-failure:{max_restarts}"),
            }
        ));
    }
    if let Some(m) = opts.resources.cpu_millis {
        a.push(format!("--cpus={}", cpus(m)));
    }
    if let Some(b) = opts.resources.memory_bytes {
        a.push(format!("--memory={b}b"));
    }
    for g in &opts.resources.gpus {
        a.push(format!("--device=/dev/nvidia{g}"));
    }
    for p in &opts.ports {
        let proto = match p.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        if let Some(host) = p.host_port {
            a.push(format!("--publish={host}:{}/{proto}", p.container_port));
        }
    }
    for v in &opts.volumes {
        let ro = if v.read_only { ":ro" } else { "" };
        a.push(format!(
            "--volume={}:{}{ro}",
            v.source.display(),
            v.target.display()
        ));
    }
    if let Some(n) = &opts.network {
        a.push(format!("--network={n}"));
    }
    if let Some(ip) = opts.ip {
        a.push(format!("--ip={ip}"));
    }
    for d in &opts.dns_servers {
        a.push(format!("--dns={d}"));
    }
    for s in &opts.dns_search {
        a.push(format!("--dns-search={s}"));
    }
    if let Some(u) = &opts.user {
        a.push(format!("--user={u}"));
    }
    for c in &opts.cap_add {
        a.push(format!("--cap-add={c}"));
    }
    for c in &opts.cap_drop {
        a.push(format!("--cap-drop={c}"));
    }
    for s in &opts.security_opts {
        a.push(format!("--security-opt={s}"));
    }
    if !opts.command.is_empty() {
        // The JSON form keeps arguments with spaces intact.
        a.push(format!(
            "--entrypoint={}",
            serde_json::to_string(&opts.command).unwrap_or_default()
        ));
    }
    a.push(opts.image.clone());
    a.extend(opts.args.iter().cloned());
    a
}

pub fn create_args(opts: &ContainerCreateOptions) -> Vec<String> {
    let mut a = vec!["create".to_owned()];
    a.extend(container_args(opts));
    a
}

pub fn start_args(id: &str) -> Vec<String> {
    vec!["start".into(), id.into()]
}

pub fn stop_args(id: &str, timeout: Duration) -> Vec<String> {
    vec![
        "stop".into(),
        format!("--time={}", timeout.as_secs()),
        id.into(),
    ]
}

pub fn remove_args(id: &str, force: bool, remove_volumes: bool) -> Vec<String> {
    let mut a = vec!["rm".to_owned()];
    if force {
        a.push("--force".into());
    }
    if remove_volumes {
        a.push("--volumes".into());
    }
    a.push(id.into());
    a
}

pub fn inspect_args(id: &str) -> Vec<String> {
    vec![
        "container".into(),
        "inspect".into(),
        "--format=json".into(),
        id.into(),
    ]
}

pub fn logs_args(id: &str, opts: &LogOptions) -> Vec<String> {
    let mut a = vec!["logs".to_owned()];
    if opts.follow {
        a.push("--follow".into());
    }
    if let Some(since) = opts.since {
        a.push(format!("--since={}s", since.as_secs().max(1)));
    }
    if let Some(tail) = opts.tail {
        a.push(format!("--tail={tail}"));
    }
    a.push(id.into());
    a
}

pub fn exec_args(id: &str, cmd: &[String]) -> Vec<String> {
    let mut a = vec!["exec".to_owned(), id.to_owned()];
    a.extend(cmd.iter().cloned());
    a
}

pub fn list_args(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut a = vec!["ps".to_owned(), "--all".into(), "--format=json".into()];
    for (k, v) in labels {
        a.push(format!("--filter=label={k}={v}"));
    }
    a
}

pub fn pull_args(image: &str, platform: Option<&str>) -> Vec<String> {
    let mut a = vec!["pull".to_owned(), "--quiet".into()];
    if let Some(p) = platform {
        a.push(format!("--platform={p}"));
    }
    a.push(image.into());
    a
}

pub fn build_args(opts: &BuildOptions) -> Vec<String> {
    let mut a = vec!["build".to_owned(), format!("--tag={}", opts.tag)];
    if let Some(f) = &opts.containerfile {
        a.push(format!("--file={}", opts.context.join(f).display()));
    }
    for (k, v) in &opts.build_args {
        a.push(format!("--build-arg={k}={v}"));
    }
    if let Some(t) = &opts.target {
        a.push(format!("--target={t}"));
    }
    if let Some(p) = &opts.platform {
        a.push(format!("--platform={p}"));
    }
    a.push(opts.context.display().to_string());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PortMapping, ResourceSpec, VolumeMount};

    fn web() -> ContainerCreateOptions {
        ContainerCreateOptions {
            instance_id: "a1b2".into(),
            namespace: "default".into(),
            workload: "web".into(),
            name: "kat-default-web-a1b2".into(),
            image: "localhost/busybox:latest".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_minimal_container_gets_its_name_the_kat_labels_and_the_image_last() {
        let a = create_args(&web());
        assert_eq!(
            a,
            [
                "create",
                "--name",
                "kat-default-web-a1b2",
                "--label",
                "kat.dws.rip/instance-id=a1b2",
                "--label",
                "kat.dws.rip/namespace=default",
                "--label",
                "kat.dws.rip/workload-name=web",
                "--restart=always",
                "localhost/busybox:latest",
            ]
        );
    }

    #[test]
    fn every_option_becomes_its_flag() {
        let mut o = web();
        o.hostname = Some("web-1".into());
        o.command = vec!["sh".into(), "-c".into()];
        o.args = vec!["echo hello world".into()];
        o.env.insert("A".into(), "1 2".into());
        o.restart = RestartPolicy::MaxCount {
            max_restarts: 3,
            reset_seconds: 60,
        };
        o.resources = ResourceSpec {
            cpu_millis: Some(250),
            memory_bytes: Some(64 << 20),
            gpus: vec![0],
        };
        o.ports = vec![
            PortMapping {
                container_port: 80,
                host_port: Some(8080),
                protocol: Protocol::Tcp,
            },
            PortMapping {
                container_port: 53,
                host_port: None,
                protocol: Protocol::Udp,
            },
        ];
        o.volumes = vec![VolumeMount {
            source: "/var/lib/kat/volumes/default/web/data".into(),
            target: "/data".into(),
            read_only: true,
        }];
        o.network = Some("kat".into());
        o.ip = Some("10.100.4.5".parse().unwrap());
        o.dns_servers = vec!["10.100.4.1".parse().unwrap()];
        o.dns_search = vec!["default.kat.cluster.local".into()];
        o.user = Some("1000:1000".into());
        o.cap_add = vec!["NET_ADMIN".into()];
        o.cap_drop = vec!["ALL".into()];
        o.security_opts = vec!["no-new-privileges".into()];
        let a = create_args(&o);
        let has = |s: &str| a.iter().any(|x| x == s);
        for flag in [
            "--env",
            "A=1 2",
            "--hostname",
            "web-1",
            "--restart=on-failure:3",
            "--cpus=0.25",
            "--memory=67108864b",
            "--device=/dev/nvidia0",
            "--publish=8080:80/tcp",
            "--volume=/var/lib/kat/volumes/default/web/data:/data:ro",
            "--network=kat",
            "--ip=10.100.4.5",
            "--dns=10.100.4.1",
            "--dns-search=default.kat.cluster.local",
            "--user=1000:1000",
            "--cap-add=NET_ADMIN",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            r#"--entrypoint=["sh","-c"]"#,
        ] {
            assert!(has(flag), "{flag} missing from {a:?}");
        }
        // An unpublished port adds nothing; image then arguments close the line.
        assert!(!a.iter().any(|x| x.contains(":53/")));
        assert_eq!(
            &a[a.len() - 2..],
            ["localhost/busybox:latest", "echo hello world"]
        );
    }

    #[test]
    fn under_systemd_podman_does_not_restart() {
        let mut o = web();
        o.systemd_mode = true;
        assert!(
            !container_args(&o)
                .iter()
                .any(|a| a.starts_with("--restart"))
        );
        o.systemd_mode = false;
        o.restart = RestartPolicy::Never;
        assert!(container_args(&o).iter().any(|a| a == "--restart=no"));
    }

    #[test]
    fn cpus_are_written_as_decimal_cores() {
        assert_eq!(cpus(1000), "1");
        assert_eq!(cpus(1500), "1.5");
        assert_eq!(cpus(250), "0.25");
        assert_eq!(cpus(1), "0.001");
    }

    #[test]
    fn bad_options_name_the_field() {
        let err = |f: &dyn Fn(&mut ContainerCreateOptions)| {
            let mut o = web();
            f(&mut o);
            match validate(&o) {
                Err(RuntimeError::InvalidOptions { field, .. }) => field,
                other => panic!("expected a refusal, got {other:?}"),
            }
        };
        assert_eq!(err(&|o| o.name = "-x".into()), "name");
        assert_eq!(err(&|o| o.name = "a b".into()), "name");
        assert_eq!(err(&|o| o.image = " ".into()), "image");
        assert_eq!(
            err(&|o| {
                o.env.insert("A=B".into(), "x".into());
            }),
            "env.A=B"
        );
        assert_eq!(
            err(&|o| o.volumes = vec![VolumeMount {
                source: "relative".into(),
                target: "/x".into(),
                read_only: false
            }]),
            "volumes[0]"
        );
        assert_eq!(
            err(&|o| o.volumes = vec![VolumeMount {
                source: "/a:b".into(),
                target: "/x".into(),
                read_only: false
            }]),
            "volumes[0]"
        );
        assert_eq!(err(&|o| o.ip = Some("10.0.0.1".parse().unwrap())), "ip");
        assert_eq!(err(&|o| o.resources.cpu_millis = Some(0)), "resources.cpu");
        assert!(validate(&web()).is_ok());
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            logs_args(
                "c1",
                &LogOptions {
                    follow: true,
                    since: Some(Duration::from_secs(600)),
                    tail: Some(100)
                }
            ),
            ["logs", "--follow", "--since=600s", "--tail=100", "c1"]
        );
        assert_eq!(logs_args("c1", &LogOptions::default()), ["logs", "c1"]);
        assert_eq!(
            stop_args("c1", Duration::from_secs(10)),
            ["stop", "--time=10", "c1"]
        );
        assert_eq!(
            remove_args("c1", true, true),
            ["rm", "--force", "--volumes", "c1"]
        );
        assert_eq!(
            exec_args("c1", &["sh".into(), "-c".into(), "exit 3".into()]),
            ["exec", "c1", "sh", "-c", "exit 3"]
        );
        let mut labels = BTreeMap::new();
        labels.insert("kat.dws.rip/namespace".to_owned(), "default".to_owned());
        assert_eq!(
            list_args(&labels),
            [
                "ps",
                "--all",
                "--format=json",
                "--filter=label=kat.dws.rip/namespace=default"
            ]
        );
        assert_eq!(
            pull_args("docker.io/library/nginx:1", Some("linux/arm64")),
            [
                "pull",
                "--quiet",
                "--platform=linux/arm64",
                "docker.io/library/nginx:1"
            ]
        );
        let mut build = BuildOptions {
            context: "/tmp/src".into(),
            containerfile: Some("build/Containerfile".into()),
            tag: "kat.local/default/app:abc".into(),
            target: Some("release".into()),
            ..Default::default()
        };
        build.build_args.insert("V".into(), "1".into());
        assert_eq!(
            build_args(&build),
            [
                "build",
                "--tag=kat.local/default/app:abc",
                "--file=/tmp/src/build/Containerfile",
                "--build-arg=V=1",
                "--target=release",
                "/tmp/src"
            ]
        );
    }
}
