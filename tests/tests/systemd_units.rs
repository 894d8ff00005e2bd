//! Instances as systemd units over D-Bus (zbus) against a private systemd user manager
//! and real Podman (SPEC §8.2; skipped with a printed reason where either is missing):
//! StartUnit runs the container with the KAT labels; a killed container is restarted
//! under ALWAYS, not under NEVER, and at most maxRestarts times under MAX_COUNT;
//! removing the unit removes the container.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use kat_runtime::podman::Podman;
use kat_runtime::systemd::unit::CgroupsMode;
use kat_runtime::systemd::{Systemd, UnitState, Units};
use kat_runtime::{
    ContainerCreateOptions, ContainerRuntime, ContainerState, LABEL_INSTANCE, RestartPolicy,
    RuntimeError,
};
use kat_tests::programs::{RemovedContainer, busybox_instance, podman_with_busybox, unique_name};
use kat_tests::systemd::UserManager;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

struct Setup {
    units: Units,
    podman: Podman,
    podman_bin: std::path::PathBuf,
    _manager: UserManager,
}

async fn setup() -> Option<Setup> {
    let podman_bin = podman_with_busybox()?;
    let manager = UserManager::start()?;
    let systemd = Systemd::connect(&manager.bus_address()).await.unwrap();
    Some(Setup {
        units: Units {
            systemd,
            unit_dir: manager.unit_dir(),
            trusted_base: None,
            owner: None,
            podman: podman_bin.clone(),
            cgroups: CgroupsMode::NoConmon,
            stop_timeout: Duration::from_secs(5),
        },
        podman: Podman::new(&podman_bin),
        podman_bin,
        _manager: manager,
    })
}

fn instance(id: &str, restart: RestartPolicy) -> ContainerCreateOptions {
    busybox_instance("default", "web", id, restart)
}

async fn running(podman: &Podman, name: &str) -> kat_runtime::ContainerStatus {
    for _ in 0..200 {
        if let Ok(s) = podman.status(name).await
            && s.state == ContainerState::Running
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never ran");
}

/// Kills the container's main process, as a crash would.
async fn crash(podman: &Podman, name: &str) -> String {
    let s = running(podman, name).await;
    kill(Pid::from_raw(s.pid.unwrap() as i32), Signal::SIGKILL).unwrap();
    s.id
}

fn active_running(s: &UnitState) -> bool {
    s.active == "active" && s.sub == "running"
}

#[tokio::test]
async fn a_unit_runs_the_instance_and_always_restarts_it() {
    let Some(t) = setup().await else { return };
    let id = unique_name("always").replace('-', "");
    let mut opts = instance(&id, RestartPolicy::Always);
    // Values systemd or a shell would expand, quotes, `=`: the container gets them as
    // written; none is in the unit (which systemd shows any local user), on a command
    // line, or in Podman's own environment (LD_PRELOAD would reach Podman there).
    let secret = "s3cret $HOME %n \"q\" a\\b x=y";
    opts.env.insert("SECRET".into(), secret.into());
    opts.env
        .insert("LD_PRELOAD".into(), "/nonexistent/evil.so".into());
    let _guard = RemovedContainer(t.podman_bin.clone(), opts.name.clone());
    let unit = t.units.run(&opts).await.unwrap();
    assert_eq!(unit, format!("kat-default-web-{id}.service"));
    {
        use std::os::unix::fs::PermissionsExt;
        let path = t.units.unit_dir.join(&unit);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("evil"), "{text}");
        assert!(!text.contains("Environment=SECRET"), "{text}");
        let env_file = t.units.env_file(&opts).unwrap();
        assert!(
            text.contains(&format!("--env-file={}", env_file.display())),
            "{text}"
        );
        let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    t.units
        .systemd
        .wait_for(&unit, Duration::from_secs(30), active_running)
        .await
        .unwrap();
    let status = running(&t.podman, &opts.name).await;
    let seen = t
        .podman
        .exec(
            &status.id,
            &["sh".into(), "-c".into(), "printf %s \"$SECRET\"".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&seen.stdout), secret);
    // Podman ran (a preloaded library that does not exist would have stopped it, with
    // an error, had it reached Podman); the container has the variable, as asked.
    let preload = t
        .podman
        .exec(
            &status.id,
            &["sh".into(), "-c".into(), "printf %s \"$LD_PRELOAD\"".into()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&preload.stdout),
        "/nonexistent/evil.so"
    );
    assert_eq!(status.labels[LABEL_INSTANCE], id);
    assert_eq!(status.labels["kat.dws.rip/namespace"], "default");
    assert_eq!(status.labels["kat.dws.rip/workload-name"], "web");

    // A crash: systemd starts it again (a new container replaces the old one).
    let first = crash(&t.podman, &opts.name).await;
    let again = t
        .units
        .systemd
        .wait_for(&unit, Duration::from_secs(30), |s| {
            s.restarts >= 1 && active_running(s)
        })
        .await
        .unwrap();
    assert_eq!(again.restarts, 1);
    let second = running(&t.podman, &opts.name).await;
    assert_ne!(second.id, first, "a new container");

    // Removing the unit removes the container and the unit file.
    t.units.remove(&unit).await.unwrap();
    assert!(matches!(
        t.podman.status(&opts.name).await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(!t.units.unit_dir.join(&unit).exists());
    assert!(
        !t.units.env_file(&opts).unwrap().exists(),
        "the env file goes too"
    );
}

#[tokio::test]
async fn always_keeps_restarting_a_crash_loop_past_systemds_default_start_limit() {
    let Some(t) = setup().await else { return };
    let id = unique_name("loop").replace('-', "");
    let mut opts = instance(&id, RestartPolicy::Always);
    // Up for a moment, then down: systemd's default (5 starts in 10 s) would stop it.
    opts.args = vec!["sleep 0.2; exit 3".into()];
    let _guard = RemovedContainer(t.podman_bin.clone(), opts.name.clone());
    let unit = t.units.run(&opts).await.unwrap();
    let looping = t
        .units
        .systemd
        .wait_for(&unit, Duration::from_secs(90), |s| s.restarts >= 7)
        .await
        .unwrap();
    assert_ne!(looping.active, "failed", "{looping:?}");
    t.units.remove(&unit).await.unwrap();
}

#[tokio::test]
async fn never_is_not_restarted_and_max_count_gives_up() {
    let Some(t) = setup().await else { return };
    // NEVER: after a crash the unit stays down.
    let id = unique_name("never").replace('-', "");
    let never = instance(&id, RestartPolicy::Never);
    let _g1 = RemovedContainer(t.podman_bin.clone(), never.name.clone());
    let unit = t.units.run(&never).await.unwrap();
    t.units
        .systemd
        .wait_for(&unit, Duration::from_secs(30), active_running)
        .await
        .unwrap();
    crash(&t.podman, &never.name).await;
    let down = t
        .units
        .systemd
        .wait_for(&unit, Duration::from_secs(30), |s| {
            !active_running(s) && s.active != "activating" && s.active != "deactivating"
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = t.units.systemd.state(&unit).await.unwrap();
    assert_eq!(later.restarts, 0, "{down:?} then {later:?}");
    assert_ne!(later.active, "active");

    // MAX_COUNT 2: two restarts, then the start limit stops it for good.
    let id = unique_name("max").replace('-', "");
    let max = instance(
        &id,
        RestartPolicy::MaxCount {
            max_restarts: 2,
            reset_seconds: 300,
        },
    );
    let _g2 = RemovedContainer(t.podman_bin.clone(), max.name.clone());
    let unit = t.units.run(&max).await.unwrap();
    for round in 0..3 {
        t.units
            .systemd
            .wait_for(&unit, Duration::from_secs(30), |s| {
                active_running(s) && s.restarts == round
            })
            .await
            .unwrap();
        crash(&t.podman, &max.name).await;
    }
    let failed = t
        .units
        .systemd
        .wait_for(&unit, Duration::from_secs(30), |s| s.active == "failed")
        .await
        .unwrap();
    // It ran three times (the start and two restarts); systemd counts the third,
    // refused restart too.
    assert!(failed.restarts <= 3, "{failed:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !matches!(t.podman.status(&max.name).await, Ok(s) if s.state == ContainerState::Running),
        "no fourth run"
    );
    assert_eq!(t.units.systemd.state(&unit).await.unwrap().active, "failed");
    t.units.remove(&never_unit(&never)).await.unwrap();
    t.units.remove(&unit).await.unwrap();
}

fn never_unit(opts: &ContainerCreateOptions) -> String {
    kat_runtime::systemd::unit::unit_name(&opts.namespace, &opts.workload, &opts.instance_id)
}

/// A unit file this manager never started (left from before a reboot or a restart
/// of the manager) is started, not taken for a running instance; a started one is
/// adopted.
#[tokio::test]
async fn a_unit_file_the_manager_never_started_is_started_not_adopted() {
    use kat_runtime::host::{DesiredInstance, Ensured, InstanceHost, SystemdHost};
    use kat_runtime::systemd::unit::{render_unit, unit_name};
    let Some(t) = setup().await else { return };
    let id = unique_name("left").replace('-', "");
    let opts = instance(&id, RestartPolicy::Always);
    let _guard = RemovedContainer(t.podman_bin.clone(), opts.name.clone());
    let name = unit_name(&opts.namespace, &opts.workload, &opts.instance_id);
    std::fs::create_dir_all(&t.units.unit_dir).unwrap();
    std::fs::write(
        t.units.unit_dir.join(&name),
        render_unit(
            &opts,
            &t.podman_bin,
            t.units.cgroups,
            t.units.stop_timeout,
            t.units.env_file(&opts).as_deref(),
            Some(&t.units.err_file(&name)),
        ),
    )
    .unwrap();
    t.units.systemd.reload().await.unwrap();
    let host = SystemdHost {
        units: t.units.clone(),
        podman: t.podman.clone(),
        image_source: None,
    };
    let x = DesiredInstance {
        opts,
        health: None,
        ensure: Vec::new(),
    };
    assert_eq!(host.ensure(&x).await.unwrap(), Ensured::Started);
    running(&t.podman, &x.opts.name).await;
    assert_eq!(host.ensure(&x).await.unwrap(), Ensured::Adopted);
    host.retire(&id).await.unwrap();
}

/// A unit an older agent wrote (no `StandardError=`) is brought up to date without
/// restarting its container: an upgrade must not restart every instance at once, nor
/// run a finished JOB run again.
#[tokio::test]
async fn a_unit_from_an_older_agent_is_rewritten_not_restarted() {
    use kat_runtime::host::{DesiredInstance, Ensured, InstanceHost, SystemdHost};
    use kat_runtime::systemd::unit::{render_unit, unit_name};
    let Some(t) = setup().await else { return };
    let id = unique_name("old").replace('-', "");
    let opts = instance(&id, RestartPolicy::Always);
    let _guard = RemovedContainer(t.podman_bin.clone(), opts.name.clone());
    let name = unit_name(&opts.namespace, &opts.workload, &opts.instance_id);
    std::fs::create_dir_all(&t.units.unit_dir).unwrap();
    let old = render_unit(
        &opts,
        &t.podman_bin,
        t.units.cgroups,
        t.units.stop_timeout,
        t.units.env_file(&opts).as_deref(),
        None,
    );
    std::fs::write(t.units.unit_dir.join(&name), &old).unwrap();
    t.units.systemd.reload().await.unwrap();
    t.units.systemd.start(&name).await.unwrap();
    let before = running(&t.podman, &opts.name).await.id;
    let host = SystemdHost {
        units: t.units.clone(),
        podman: t.podman.clone(),
        image_source: None,
    };
    let x = DesiredInstance {
        opts,
        health: None,
        ensure: Vec::new(),
    };
    assert_eq!(host.ensure(&x).await.unwrap(), Ensured::Adopted);
    let now = std::fs::read_to_string(t.units.unit_dir.join(&name)).unwrap();
    assert!(now.contains("StandardError=append:"), "{now}");
    assert_eq!(
        running(&t.podman, &x.opts.name).await.id,
        before,
        "same container"
    );
    assert_eq!(host.ensure(&x).await.unwrap(), Ensured::Adopted);
    host.retire(&id).await.unwrap();
}
