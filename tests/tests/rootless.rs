//! Rootless Podman through the runtime's Podman backend: a container created, run,
//! inspected, stopped and removed as a workload's own unprivileged user (SPEC §8.2),
//! its processes running under that user's uid on the host. The test makes the user
//! (`useradd`, which adds the subuid/subgid ranges) and removes it, its processes (by
//! PID) and its home afterwards; skipped with a printed reason where the machine
//! cannot. (Driving the user's own systemd manager is the next step; see
//! docs/runtime.md.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use kat_runtime::host::{DesiredInstance, Ensured, InstanceHost, Observation, Phase};
use kat_runtime::podman::{Podman, RunAs};
use kat_runtime::rootless::{AgentStarted, RootlessHost, lookup_user};
use kat_runtime::systemd::unit::CgroupsMode;
use kat_runtime::systemd::{Systemd, Units};
use kat_runtime::users::workload_user;
use kat_runtime::{ContainerRuntime, ContainerState, RestartPolicy};
use kat_tests::programs::find_program;
use kat_tests::programs::{BUSYBOX_IMAGE, busybox_archive, busybox_instance, podman_with_busybox};
use kat_tests::systemd::{TestUser, UserManager, WorkloadUserCleanup};

/// Imports the busybox image into the user's own image storage; false (after printing
/// why) where rootless Podman does not work.
fn import_busybox(podman_bin: &std::path::Path, user: &TestUser) -> bool {
    let (_tmp, archive) = busybox_archive().unwrap();
    let imported = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={}", user.uid),
            &format!("--regid={}", user.gid),
            "--init-groups",
            "--",
        ])
        .arg(podman_bin)
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
    }
    imported.status.success()
}

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

    if !import_busybox(&podman_bin, &user) {
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

/// The agent (root) drives a workload user's own systemd manager over that user's
/// bus, connecting with the user's credentials: the unit runs rootless Podman as the
/// user, and stopping it removes the container.
#[tokio::test]
async fn a_unit_runs_in_its_workload_users_manager() {
    let Some(podman_bin) = podman_with_busybox() else {
        return;
    };
    let workload = format!("ru{}", std::process::id());
    let name = workload_user("test", &workload);
    let Some(user) = TestUser::create(&name) else {
        return;
    };
    let Some(manager) = UserManager::start_as(&user) else {
        return;
    };
    // The user's manager uses its own runtime dir; Podman as the user must too.
    let podman = Podman::new(&podman_bin).as_user(RunAs {
        uid: user.uid,
        gid: user.gid,
        home: user.home.clone(),
        runtime_dir: manager.runtime_dir().to_path_buf(),
    });
    if !import_busybox(&podman_bin, &user) {
        return;
    }
    // Root's own connection is refused by the user's bus ...
    assert!(Systemd::connect(&manager.bus_address()).await.is_err());
    // ... the user's credentials are accepted.
    let systemd = Systemd::connect_as(&manager.bus_address(), user.uid, user.gid)
        .await
        .unwrap();
    let units = Units {
        systemd,
        unit_dir: manager.unit_dir(),
        trusted_base: Some(manager.runtime_dir().to_path_buf()),
        owner: Some((user.uid, user.gid)),
        podman: podman_bin.clone(),
        cgroups: CgroupsMode::NoConmon,
        stop_timeout: Duration::from_secs(5),
    };
    let opts = busybox_instance("test", &workload, "u1", RestartPolicy::Always);
    let unit = units.run(&opts).await.unwrap();
    let state = units
        .systemd
        .wait_for(&unit, Duration::from_secs(60), |s| s.sub == "running")
        .await
        .unwrap();
    assert_eq!(state.active, "active");
    let mut status = None;
    for _ in 0..200 {
        if let Ok(s) = podman.status(&opts.name).await
            && s.state == ContainerState::Running
        {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("the container runs as the user");
    assert_eq!(status.labels[kat_runtime::LABEL_WORKLOAD], workload);

    units.remove(&unit).await.unwrap();
    assert!(podman.status(&opts.name).await.is_err());
    assert!(!manager.unit_dir().join(&unit).exists());
}

async fn running(host: &RootlessHost, x: &DesiredInstance) -> Observation {
    for _ in 0..200 {
        let o = host.observe(x).await.unwrap();
        if o.phase == Phase::Running {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never ran");
}

/// Rootless mode as the agent runs it: the host makes the workload's user, starts
/// that user's systemd manager, copies the image from root's storage and runs the
/// instance as a unit there, as the user; a second host (an agent restart) adopts
/// it with the same container, and retiring it removes it.
#[tokio::test]
async fn the_rootless_host_makes_the_user_and_runs_the_instance_as_it() {
    let Some(podman_bin) = podman_with_busybox() else {
        return;
    };
    if find_program("useradd").is_none() || find_program("setsid").is_none() {
        return;
    }
    let workload = format!("rh{}", std::process::id());
    let name = workload_user("test", &workload);
    let _cleanup = WorkloadUserCleanup(name.clone());
    let base = tempfile::tempdir().unwrap();
    let new_host = || {
        let mut h = RootlessHost::new(
            podman_bin.clone(),
            Box::new(AgentStarted {
                base: base.path().to_path_buf(),
                tag: "test".to_owned(),
            }),
        );
        h.stop_timeout = Duration::from_secs(5);
        h
    };
    let host = new_host();
    let x = DesiredInstance {
        opts: busybox_instance("test", &workload, "h1", RestartPolicy::Always),
        health: None,
        ensure: Vec::new(),
    };
    match host.ensure(&x).await {
        Ok(e) => assert_eq!(e, Ensured::Started),
        Err(e) if e.to_string().contains("subordinate") => {
            eprintln!("SKIPPED: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    }
    let user = lookup_user(&name)
        .await
        .unwrap()
        .expect("the user was made");
    let first = running(&host, &x).await;
    assert!(host.present().await.unwrap().contains(&"h1".to_owned()));
    // Its processes run as the workload user on the host.
    let podman = Podman::new(&podman_bin).as_user(RunAs {
        uid: user.uid,
        gid: user.gid,
        home: user.home.clone(),
        runtime_dir: base.path().join(&name),
    });
    let pid = podman.status(&x.opts.name).await.unwrap().pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&user.uid.to_string())),
        "{status}"
    );
    drop(host);

    // The agent restarts: its new host adopts the instance, same container.
    let host = new_host();
    assert_eq!(host.ensure(&x).await.unwrap(), Ensured::Adopted);
    let again = running(&host, &x).await;
    assert_eq!(again.container_id, first.container_id);

    host.retire("h1").await.unwrap();
    assert!(host.present().await.unwrap().is_empty());
    assert!(podman.status(&x.opts.name).await.is_err());

    // The workload is deleted for good: its user, home, manager and runtime
    // directory go.
    let manager: i32 = std::fs::read_to_string(base.path().join(&name).join("manager.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let removed = host.remove_workload("test", &workload).await.unwrap();
    assert_eq!(removed, Some(format!("workload user {name}")));
    assert_eq!(lookup_user(&name).await.unwrap(), None);
    assert!(!user.home.exists(), "home removed");
    assert!(
        !base.path().join(&name).exists(),
        "runtime directory removed"
    );
    // Stopped: gone, or a zombie its parent (PID 1 after `setsid --fork`) has yet to reap.
    assert!(
        !kat_runtime::rootless::alive(u32::try_from(manager).unwrap()),
        "manager stopped"
    );
    assert_eq!(host.remove_workload("test", &workload).await.unwrap(), None);
    // Looking at it afterwards (a reconcile still under way) does not make the user
    // again: only making an instance exist does.
    assert!(host.observe(&x).await.is_err());
    assert!(host.present().await.unwrap().is_empty());
    assert_eq!(lookup_user(&name).await.unwrap(), None, "not made again");
}

/// Agents sharing a host, and tasks of one agent, may make the same workload user at
/// once: each gets the same user, with a home it owns and subordinate ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workload_user_made_by_many_at_once_is_whole() {
    if find_program("useradd").is_none() {
        eprintln!("SKIPPED: useradd is not installed");
        return;
    }
    let name = workload_user("test", &format!("mk{}", std::process::id()));
    let _cleanup = WorkloadUserCleanup(name.clone());
    let makers: Vec<_> = (0..6)
        .map(|_| {
            let name = name.clone();
            tokio::spawn(async move {
                kat_runtime::rootless::ensure_user(&name, "KAT workload test/mk").await
            })
        })
        .collect();
    let mut users = Vec::new();
    for maker in makers {
        users.push(maker.await.unwrap().unwrap());
    }
    assert!(users.windows(2).all(|w| w[0] == w[1]), "{users:?}");
    use std::os::unix::fs::MetadataExt;
    let home = std::fs::metadata(&users[0].home).unwrap();
    assert_eq!(home.uid(), users[0].uid, "the home is the user's");
    let storage = std::fs::metadata(users[0].home.join(".config/containers/storage.conf")).unwrap();
    assert_eq!(storage.uid(), users[0].uid);
}

/// Processes of `uid` named `comm`.
fn processes_of(uid: u32, comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let name = status.lines().find_map(|l| l.strip_prefix("Name:\t"));
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:\t"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if name == Some(comm) && real == Some(uid) {
            out.push(pid);
        }
    }
    out
}

/// The replicas of a new workload arrive together: one user, one manager, one copy
/// of the image, and every instance prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_replicas_of_a_new_workload_prepared_at_once_share_one_manager() {
    let Some(podman_bin) = podman_with_busybox() else {
        return;
    };
    if find_program("useradd").is_none() || find_program("setsid").is_none() {
        eprintln!("SKIPPED: useradd or setsid is not installed");
        return;
    }
    let workload = format!("rp{}", std::process::id());
    let name = workload_user("test", &workload);
    let _cleanup = WorkloadUserCleanup(name.clone());
    let base = tempfile::tempdir().unwrap();
    let host = std::sync::Arc::new(RootlessHost::new(
        podman_bin.clone(),
        Box::new(AgentStarted {
            base: base.path().to_path_buf(),
            tag: "test".to_owned(),
        }),
    ));
    let mut prepares = tokio::task::JoinSet::new();
    for i in 0..10 {
        let host = host.clone();
        let x = DesiredInstance {
            opts: busybox_instance("test", &workload, &format!("p{i}"), RestartPolicy::Always),
            health: None,
            ensure: Vec::new(),
        };
        prepares.spawn(async move { host.prepare(&x).await });
    }
    let mut failed = Vec::new();
    while let Some(done) = prepares.join_next().await {
        if let Err(e) = done.unwrap() {
            failed.push(e.to_string());
        }
    }
    if failed.iter().any(|e| e.contains("subordinate")) {
        eprintln!("SKIPPED: {failed:?}");
        return;
    }
    assert!(failed.is_empty(), "{failed:?}");
    let user = lookup_user(&name)
        .await
        .unwrap()
        .expect("the user was made");
    let managers = processes_of(user.uid, "systemd");
    assert_eq!(managers.len(), 1, "one manager for the user: {managers:?}");
    host.remove_workload("test", &workload).await.unwrap();
}
