//! The Podman backend against real Podman (skipped with a printed reason where Podman
//! is missing): create, start, status with the KAT labels, logs, exec, stop, remove,
//! list by labels, bind mounts. Every container a test makes is removed by its guard,
//! also when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use kat_runtime::podman::Podman;
use kat_runtime::{
    ContainerCreateOptions, ContainerRuntime, ContainerState, LABEL_INSTANCE, LABEL_NAMESPACE,
    LABEL_WORKLOAD, LogOptions, LogStream, RestartPolicy, RuntimeError, VolumeMount,
};
use kat_tests::programs::{
    BUSYBOX_IMAGE, RemovedContainer, SERVE_UNTIL_TERM, podman_with_busybox, unique_name,
};

/// A shell loop that exits at once on SIGTERM (busybox sleep ignores it).
fn serving(script: &str) -> Vec<String> {
    vec!["-c".into(), format!("{script}; {SERVE_UNTIL_TERM}")]
}

fn options(name: &str) -> ContainerCreateOptions {
    ContainerCreateOptions {
        instance_id: format!("{name}-id"),
        namespace: "default".into(),
        workload: "web".into(),
        name: name.into(),
        image: BUSYBOX_IMAGE.into(),
        command: vec!["sh".into()],
        network: Some("none".into()),
        restart: RestartPolicy::Never,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_container_runs_with_the_kat_labels_logs_execs_and_goes_away() {
    let Some(binary) = podman_with_busybox() else {
        return;
    };
    let podman = Podman::new(&binary);
    let name = unique_name("kat-test-life");
    let _guard = RemovedContainer(binary.clone(), name.clone());
    let mut opts = options(&name);
    opts.args = serving("echo hello; echo oops >&2");
    opts.env.insert("GREETING".into(), "hi there".into());

    let id = podman.create(&opts).await.unwrap();
    assert_eq!(
        podman.status(&name).await.unwrap().state,
        ContainerState::Created
    );
    podman.start(&id).await.unwrap();
    let status = podman.status(&id).await.unwrap();
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.id, id);
    assert_eq!(status.name, name);
    assert_eq!(status.labels[LABEL_WORKLOAD], "web");
    assert_eq!(status.labels[LABEL_NAMESPACE], "default");
    assert_eq!(status.labels[LABEL_INSTANCE], format!("{name}-id"));
    assert!(status.started_at.is_some() && status.pid.is_some());

    // exec: the exit code and both streams come back; the env is the container's.
    let out = podman
        .exec(
            &id,
            &[
                "sh".into(),
                "-c".into(),
                "echo $GREETING; echo bad >&2; exit 3".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout, b"hi there\n");
    assert_eq!(out.stderr, b"bad\n");

    // logs: both streams, told apart.
    let mut lines = Vec::new();
    for _ in 0..50 {
        let mut rx = podman.logs(&id, &LogOptions::default()).await.unwrap();
        lines.clear();
        while let Some(line) = rx.recv().await {
            lines.push(line.unwrap());
        }
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lines
            .iter()
            .any(|l| l.stream == LogStream::Stdout && l.line == b"hello"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == LogStream::Stderr && l.line == b"oops"),
        "{lines:?}"
    );

    // Listed by its labels, and not under another workload's.
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_INSTANCE.to_owned(), format!("{name}-id"));
    let listed = podman.list(&labels).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    labels.insert(LABEL_WORKLOAD.to_owned(), "db".to_owned());
    assert!(podman.list(&labels).await.unwrap().is_empty());

    podman.stop(&id, Duration::from_secs(5)).await.unwrap();
    let stopped = podman.status(&id).await.unwrap();
    assert_eq!(stopped.state, ContainerState::Exited);
    assert_eq!(stopped.exit_code, Some(0), "the trap exits 0 on SIGTERM");
    podman.remove(&id, false, false).await.unwrap();
    assert!(matches!(
        podman.status(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test]
async fn followed_logs_stream_new_lines_and_exit_codes_are_kept() {
    let Some(binary) = podman_with_busybox() else {
        return;
    };
    let podman = Podman::new(&binary);
    let name = unique_name("kat-test-follow");
    let _guard = RemovedContainer(binary.clone(), name.clone());
    let mut opts = options(&name);
    opts.args = vec![
        "-c".into(),
        "for i in 1 2 3; do echo tick $i; sleep 0.3; done; exit 7".into(),
    ];
    let id = podman.create(&opts).await.unwrap();
    podman.start(&id).await.unwrap();
    let mut rx = podman
        .logs(
            &id,
            &LogOptions {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
    {
        seen.push(String::from_utf8(line.unwrap().line).unwrap());
    }
    assert_eq!(
        seen,
        ["tick 1", "tick 2", "tick 3"],
        "the stream ends with the container"
    );
    let status = podman.status(&id).await.unwrap();
    assert_eq!(
        (status.state, status.exit_code),
        (ContainerState::Exited, Some(7))
    );
    // Only the last line.
    let mut rx = podman
        .logs(
            &id,
            &LogOptions {
                tail: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap().line, b"tick 3");
    assert!(rx.recv().await.is_none());
}

#[tokio::test]
async fn a_bind_mount_is_shared_with_the_host_and_bad_input_changes_nothing() {
    let Some(binary) = podman_with_busybox() else {
        return;
    };
    let podman = Podman::new(&binary);
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("kat-test-volume");
    let _guard = RemovedContainer(binary.clone(), name.clone());
    let mut opts = options(&name);
    opts.args = vec!["-c".into(), "echo kept > /data/file".into()];
    opts.volumes = vec![VolumeMount {
        source: dir.path().to_path_buf(),
        target: "/data".into(),
        read_only: false,
    }];
    let id = podman.create(&opts).await.unwrap();
    podman.start(&id).await.unwrap();
    for _ in 0..100 {
        if podman.status(&id).await.unwrap().state == ContainerState::Exited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("file")).unwrap(),
        "kept\n"
    );

    // Refused before Podman runs: nothing is created.
    let bad_name = unique_name("kat-test-bad");
    let mut bad = options(&bad_name);
    bad.volumes = vec![VolumeMount {
        source: "relative/path".into(),
        target: "/data".into(),
        read_only: false,
    }];
    match podman.create(&bad).await {
        Err(RuntimeError::InvalidOptions { field, .. }) => assert_eq!(field, "volumes[0]"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        podman.status(&bad_name).await,
        Err(RuntimeError::NotFound(_))
    ));
    // Podman's own refusal (an image that does not exist) is a command error.
    let missing = unique_name("kat-test-missing");
    let _guard2 = RemovedContainer(binary.clone(), missing.clone());
    let mut opts = options(&missing);
    opts.image = "localhost/no-such-image:never".into();
    assert!(podman.create(&opts).await.is_err());
    assert!(
        podman
            .logs("no-such-container-kat", &LogOptions::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn images_are_pulled_only_when_missing_and_a_failed_pull_says_which() {
    let Some(binary) = podman_with_busybox() else {
        return;
    };
    let podman = Podman::new(&binary);
    assert!(podman.image_exists(BUSYBOX_IMAGE).await.unwrap());
    // Present: nothing to pull (no registry is reachable here, so a pull would fail).
    podman.ensure_image(BUSYBOX_IMAGE).await.unwrap();
    let missing = "localhost/kat-no-such-image:never";
    assert!(!podman.image_exists(missing).await.unwrap());
    match podman.ensure_image(missing).await {
        Err(RuntimeError::ImagePull { image, reason }) => {
            assert_eq!(image, missing);
            assert!(!reason.is_empty());
        }
        other => panic!("expected ImagePull, got {other:?}"),
    }
}

/// The peak resident size of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_command_that_prints_without_end_costs_the_agent_a_megabyte() {
    let Some(binary) = podman_with_busybox() else {
        return;
    };
    let podman = Podman::new(&binary);
    let name = unique_name("kat-test-flood");
    let _guard = RemovedContainer(binary.clone(), name.clone());
    let mut opts = options(&name);
    opts.args = serving("true");
    let id = podman.create(&opts).await.unwrap();
    podman.start(&id).await.unwrap();

    let before = peak_rss_kib();
    // 300 MB on stdout and a line of 1 MB on stderr.
    let out = podman
        .exec(
            &id,
            &[
                "sh".into(),
                "-c".into(),
                "head -c 300000000 /dev/zero; head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 7"
                    .into(),
            ],
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert_eq!(out.exit_code, 7, "the command ran to its end");
    let max = kat_runtime::podman::MAX_EXEC_OUTPUT;
    assert_eq!(out.stdout.len(), max + kat_runtime::podman::TRUNCATED.len());
    assert!(out.stdout.ends_with(kat_runtime::podman::TRUNCATED));
    assert_eq!(out.stderr.len(), 1_000_000, "under the limit: whole");
    assert!(grown_mib < 64, "the agent's peak grew by {grown_mib} MiB");
}
