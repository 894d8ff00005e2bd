//! Rootless Podman through the runtime's Podman backend: a container created, run,
//! inspected, stopped and removed as a workload's own unprivileged user (SPEC §8.2),
//! its processes running under that user's uid on the host. The test makes the user
//! (`useradd`, which adds the subuid/subgid ranges) and removes it, its processes (by
//! PID) and its home afterwards; skipped with a printed reason where the machine
//! cannot. (Driving the user's own systemd manager is the next step; see
//! docs/runtime.md.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use kat_runtime::podman::{Podman, RunAs};
use kat_runtime::users::workload_user;
use kat_runtime::{ContainerRuntime, ContainerState, RestartPolicy};
use kat_tests::programs::{BUSYBOX_IMAGE, busybox_archive, busybox_instance, podman_with_busybox};
use kat_tests::systemd::TestUser;

#[tokio::test]
async fn a_container_runs_as_its_workload_user() {
    let Some(podman_bin) = podman_with_busybox() else {
        return;
    };
    let workload = format!("rl{}", std::process::id());
    let name = workload_user("test", &workload);
    let Some(user) = TestUser::create(&name) else {
        return;
    };
    let podman = Podman::new(&podman_bin).as_user(RunAs {
        uid: user.uid,
        gid: user.gid,
        home: user.home.clone(),
        runtime_dir: user.runtime_dir.path().to_path_buf(),
    });

    // The user's own image storage gets the busybox image.
    let (_tmp, archive) = busybox_archive().unwrap();
    let imported = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={}", user.uid),
            &format!("--regid={}", user.gid),
            "--init-groups",
            "--",
        ])
        .arg(&podman_bin)
        .arg("import")
        .arg(&archive)
        .arg(BUSYBOX_IMAGE)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", &user.home)
        .env("XDG_RUNTIME_DIR", user.runtime_dir.path())
        .current_dir(&user.home)
        .output()
        .unwrap();
    if !imported.status.success() {
        eprintln!(
            "SKIPPED: rootless Podman does not work here: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        return;
    }
    assert!(podman.image_exists(BUSYBOX_IMAGE).await.unwrap());

    let opts = busybox_instance("test", &workload, "r1", RestartPolicy::Never);
    let id = podman.create(&opts).await.unwrap();
    podman.start(&id).await.unwrap();
    let status = podman.status(&id).await.unwrap();
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.labels["kat.dws.rip/instance-id"], "r1");
    // Root inside the container is the workload user outside.
    let host_uid = std::fs::read_to_string(format!("/proc/{}/status", status.pid.unwrap()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|r| r.split_whitespace().next().unwrap().to_owned())
        })
        .unwrap();
    assert_eq!(host_uid, user.uid.to_string());
    // Root's Podman does not see the user's containers.
    assert!(Podman::new(&podman_bin).status(&opts.name).await.is_err());

    podman.stop(&id, Duration::from_secs(5)).await.unwrap();
    podman.remove(&id, false, false).await.unwrap();
    assert!(podman.status(&id).await.is_err());
}
