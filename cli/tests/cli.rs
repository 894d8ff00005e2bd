//! The two binaries as a user runs them: exit codes, output lines, help text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn katcall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_katcall"))
        .args(args)
        .env_remove("KAT_CONFIG")
        .output()
        .unwrap()
}

fn kat_agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn validate_accepts_every_example_with_a_one_line_summary() {
    for name in [
        "cluster.kat",
        "web",
        "report",
        "node-exporter",
        "git-app",
        "namespace",
    ] {
        let path = examples().join(name);
        let out = katcall(&["validate", "-f", path.to_str().unwrap()]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            text(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "{name}: {stdout}");
        assert!(stdout.contains(": valid "), "{name}: {stdout}");
    }
}

#[test]
fn validate_reports_every_mistake_of_a_directory_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let workload = std::fs::read_to_string(examples().join("web/workload.kat"))
        .unwrap()
        .replace("replicas: 3", "replicas: -3")
        .replace("memory: 256Mi", "memory: 12 parsecs");
    std::fs::write(dir.path().join("workload.kat"), workload).unwrap();
    let vlb = std::fs::read_to_string(examples().join("web/VirtualLoadBalancer.kat"))
        .unwrap()
        .replace("servicePortName: http", "servicePortName: https");
    std::fs::write(dir.path().join("VirtualLoadBalancer.kat"), vlb).unwrap();

    let out = katcall(&["validate", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let d = dir.path().display();
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines.contains(
            &format!("{d}/workload.kat: spec.replicas: must not be negative, found -3").as_str()
        ),
        "{stdout}"
    );
    assert!(lines.iter().any(|l| l.starts_with(&format!(
        "{d}/workload.kat: spec.container.resources.limits.memory: \"12 parsecs\" is not a memory quantity"
    ))), "{stdout}");
    assert!(lines.contains(&format!(
        "{d}/VirtualLoadBalancer.kat: spec.ingress[0].servicePortName: \"https\" names no port in spec.ports"
    ).as_str()), "{stdout}");
    assert_eq!(text(&out.stderr).trim(), "katcall validate: 3 errors");
}

#[test]
fn validate_reads_bundles_and_names_files_inside_them() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("web.tar.gz");
    std::fs::write(
        &good,
        kat_proto::bundle::pack_dir(&examples().join("web")).unwrap(),
    )
    .unwrap();
    let out = katcall(&["validate", "-f", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stdout));

    let bad = dir.path().join("bad.tar.gz");
    let files = vec![kat_proto::bundle::BundleFile {
        name: "workload.kat".into(),
        data: b"apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata: {name: x}\nspec: {}\n"
            .to_vec(),
    }];
    std::fs::write(
        &bad,
        kat_proto::bundle::pack(&files, &Default::default()).unwrap(),
    )
    .unwrap();
    let out = katcall(&["validate", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("{}/workload.kat: spec.source: is required", bad.display())
    );
}

#[test]
fn validate_prints_the_normalised_document_as_json() {
    let path = examples().join("report");
    let out = katcall(&["validate", "-o", "json", "-f", path.to_str().unwrap()]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["workload"]["spec"]["type"], "JOB");
    assert_eq!(json["job"]["spec"]["schedule"], "0 */6 * * *");
    assert_eq!(json["job"]["metadata"]["namespace"], "default");
}

#[test]
fn validate_of_a_missing_path_says_so() {
    let out = katcall(&["validate", "-f", "/nonexistent/quadlet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).starts_with("/nonexistent/quadlet: cannot read:"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn help_lists_the_commands_of_the_spec() {
    let help = text(&katcall(&["--help"]).stdout);
    for cmd in [
        "apply",
        "get",
        "describe",
        "delete",
        "logs",
        "exec",
        "rollout",
        "rollback",
        "cordon",
        "uncordon",
        "drain",
        "label",
        "taint",
        "token",
        "backup",
        "version",
        "completion",
        "validate",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "katcall --help lacks {cmd}"
        );
    }
    let help = text(&kat_agent(&["--help"]).stdout);
    for cmd in ["init", "join", "run", "restore", "etcd-env", "version"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "kat-agent --help lacks {cmd}"
        );
    }
}

#[test]
fn restore_refuses_a_missing_or_damaged_snapshot_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let state_arg = state.to_str().unwrap();
    let damaged = tmp.path().join("damaged.db");
    std::fs::write(&damaged, vec![7u8; 4096]).unwrap();
    for (snapshot, says) in [
        (
            "/nonexistent.db",
            "--snapshot /nonexistent.db: No such file",
        ),
        (
            damaged.to_str().unwrap(),
            "the snapshot's checksum does not match its contents",
        ),
    ] {
        let args = [
            "restore",
            "--snapshot",
            snapshot,
            "--state-dir",
            state_arg,
            "--etcd-bin",
            "/bin/true",
        ];
        let out = kat_agent(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
        assert!(!state.exists(), "a refused restore writes nothing");
    }
}

#[test]
fn remote_commands_without_configuration_say_what_to_pass() {
    let home = tempfile::tempdir().unwrap();
    for args in [vec!["get", "nodes"], vec!["token", "create", "join"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_katcall"))
            .args(&args)
            .env_remove("KAT_CONFIG")
            .env("HOME", home.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("no configuration at"), "{err}");
        assert!(err.contains("pass --config FILE"), "{err}");
    }
    let missing = home.path().join("nope.yaml");
    let out = katcall(&["--config", missing.to_str().unwrap(), "get", "nodes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nope.yaml: No such file"),
        "{}",
        text(&out.stderr)
    );

    let bad = home.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "server: http://x:1\ncertificateAuthority: x\ntoken: y\n",
    )
    .unwrap();
    let out = katcall(&["--config", bad.to_str().unwrap(), "get", "nodes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bad.yaml: server: \"http://x:1\" must start with https://"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn join_refuses_a_token_without_the_ca_hash_before_any_network_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = kat_agent(&[
        "join",
        "--leader-api",
        "127.0.0.1:9",
        "--token",
        "0123456789ab.0123456789abcdef0123456789abcdef",
        "--state-dir",
        state.to_str().unwrap(),
        "--node-name",
        "n2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("--token: malformed join token (expected <id>.<secret>.<CA hash>"),
        "{}",
        text(&out.stderr)
    );
    assert!(!state.exists());
}

#[test]
fn a_token_file_is_read_with_a_bound_and_named_when_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let join = |file: &str| {
        kat_agent(&[
            "join",
            "--leader-api",
            "127.0.0.1:9",
            "--token-file",
            file,
            "--state-dir",
            state.to_str().unwrap(),
            "--node-name",
            "n2",
        ])
    };
    // An endless file (hostile or a mistake) is not read to its end.
    let started = std::time::Instant::now();
    let endless = join("/dev/zero");
    assert_eq!(endless.status.code(), Some(1));
    assert!(
        text(&endless.stderr).contains("--token-file /dev/zero: longer than 4096 bytes"),
        "{}",
        text(&endless.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = join(empty.to_str().unwrap());
    assert!(
        text(&out.stderr).contains("holds no token"),
        "{}",
        text(&out.stderr)
    );
    let missing = join("/nonexistent/token");
    assert!(
        text(&missing.stderr).contains("--token-file /nonexistent/token"),
        "{}",
        text(&missing.stderr)
    );
    assert!(!state.exists(), "nothing written");

    // katcall --token-file: the same reader, named the same way.
    let config = dir.path().join("katcall.yaml");
    std::fs::write(
        &config,
        "server: https://127.0.0.1:9\ncertificateAuthority: x\ntoken: y\n",
    )
    .unwrap();
    let kc = |file: &str| {
        katcall(&[
            "--config",
            config.to_str().unwrap(),
            "--token-file",
            file,
            "get",
            "nodes",
        ])
    };
    let endless = kc("/dev/zero");
    assert_eq!(endless.status.code(), Some(1));
    assert!(
        text(&endless.stderr).contains("--token-file /dev/zero: longer than 4096 bytes"),
        "{}",
        text(&endless.stderr)
    );
    assert!(text(&kc(empty.to_str().unwrap()).stderr).contains("holds no token"));
}

#[test]
fn version_and_completion_work() {
    let out = katcall(&["version"]);
    assert_eq!(
        text(&out.stdout).trim(),
        format!("katcall {}", env!("CARGO_PKG_VERSION"))
    );
    let out = kat_agent(&["version"]);
    assert_eq!(
        text(&out.stdout).trim(),
        format!("kat-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let out = katcall(&["completion", "bash"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("_katcall()"));
    // Manual pages, with every command.
    let page = text(&katcall(&["man"]).stdout);
    assert!(page.starts_with(".TH KATCALL 1 "), "{page}");
    for cmd in ["apply", "rollout status", "token create", "delete workload"] {
        assert!(page.contains(&format!(".SS \"katcall {cmd}\"")), "{cmd}");
    }
    assert!(page.contains("\\fB\\-\\-purge\\-volumes\\fR"), "{page}");
    let page = text(&kat_agent(&["man"]).stdout);
    assert!(page.starts_with(".TH KAT-AGENT 8 "), "{page}");
    assert!(page.contains(".SS \"kat\\-agent join\""), "{page}");
}

#[test]
fn bad_arguments_are_refused_with_usage() {
    let out = katcall(&["get", "pods"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid value 'pods'"));
    let out = katcall(&["get", "workloads", "--watch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "katcall get: --since and --watch are for events only"
    );
}
