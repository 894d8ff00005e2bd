//! The Runtime actor: reconciling desired instances with what runs, adoption after a
//! restart, restart policies, exec health checks, retiring, the on-disk cache. Against
//! the fake host on a paused clock, and against a private systemd user manager with
//! real Podman (skipped with a printed reason where either is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::Arc;
use std::time::Duration;

use kat_actors::agent::runtime::{DesiredSource, Runtime, RuntimeArgs, RuntimeMsg};
use kat_actors::agent::view::{Cell, NodeView, Reports};
use kat_proto::v1alpha1::instance_status::Health;
use kat_proto::v1alpha1::{InstancePhase, InstanceStatus};
use kat_runtime::fake::{Behaviour, FakeRuntime};
use kat_runtime::host::{DesiredInstance, FakeHost, HealthProbe, InstanceHost, SystemdHost};
use kat_runtime::podman::Podman;
use kat_runtime::systemd::unit::CgroupsMode;
use kat_runtime::systemd::{Systemd, Units};
use kat_runtime::{ContainerRuntime, RestartPolicy, VolumeMount};
use kat_tests::programs::{
    RemovedContainer, SERVE_UNTIL_TERM, busybox_instance, podman_with_busybox, unique_name,
};
use kat_tests::systemd::UserManager;
use ractor::{Actor, ActorRef};

fn instance(id: &str, restart: RestartPolicy) -> DesiredInstance {
    DesiredInstance {
        opts: busybox_instance("default", "web", id, restart),
        health: None,
        ensure: Vec::new(),
    }
}

fn probe(command: &str, period: Duration) -> HealthProbe {
    HealthProbe {
        command: vec!["sh".into(), "-c".into(), command.into()],
        initial_delay: Duration::ZERO,
        period,
        timeout: Duration::from_secs(5),
        success_threshold: 1,
        failure_threshold: 2,
    }
}

type DesiredCell = Cell<Option<Vec<DesiredInstance>>>;
type ReportsCell = Cell<Reports>;

fn new_desired_cell() -> DesiredCell {
    Arc::new(tokio::sync::watch::channel(None).0)
}

fn new_reports_cell() -> ReportsCell {
    Arc::new(tokio::sync::watch::channel(Reports::new()).0)
}

/// The reported status of each instance.
fn statuses(reports: &ReportsCell) -> std::collections::BTreeMap<String, InstanceStatus> {
    let reports = reports.borrow();
    reports
        .iter()
        .map(|(id, r)| (id.clone(), r.status.clone().unwrap_or_default()))
        .collect()
}

async fn start(
    host: Arc<dyn InstanceHost>,
    desired: &DesiredCell,
    reports: &ReportsCell,
    cache: &std::path::Path,
    tick: Duration,
) -> ActorRef<RuntimeMsg> {
    let view = NodeView {
        reports: reports.clone(),
        ..NodeView::new()
    };
    let args = RuntimeArgs {
        node: "n1".into(),
        source: DesiredSource::Given(desired.clone()),
        host,
        view,
        cache: Some(cache.to_path_buf()),
        tick,
        clock: std::time::SystemTime::now,
    };
    Actor::spawn(None, Runtime, args).await.unwrap().0
}

/// Reconciles, waits for the preparations (image pulls) that started, and reconciles
/// again: what can be done now is done when it returns.
async fn settle(rt: &ActorRef<RuntimeMsg>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for _ in 0..2 {
        let before = ractor::call_t!(rt, RuntimeMsg::Snapshot, 10_000).unwrap();
        rt.cast(RuntimeMsg::Reconcile).unwrap();
        loop {
            let now = ractor::call_t!(rt, RuntimeMsg::Snapshot, 10_000).unwrap();
            if now.rounds > before.rounds && now.preparing == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "preparations still running: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn report(reports: &ReportsCell, id: &str) -> InstanceStatus {
    statuses(reports)
        .get(id)
        .cloned()
        .unwrap_or_else(|| panic!("no report for {id}: {:?}", reports.borrow()))
}

#[tokio::test(start_paused = true)]
async fn the_fake_host_reconciles_restarts_checks_health_and_adopts_after_a_restart() {
    let fake = Arc::new(FakeRuntime::new());
    let host = Arc::new(FakeHost::new(fake.clone()));
    let desired = new_desired_cell();
    let reports = new_reports_cell();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("desired.json");
    let mut a = instance("a", RestartPolicy::Always);
    a.health = Some(probe("true", Duration::from_secs(5)));
    let b = instance("b", RestartPolicy::Never);
    desired.send_replace(Some(vec![a.clone(), b.clone()]));
    let rt = start(
        host.clone(),
        &desired,
        &reports,
        &cache,
        Duration::from_secs(1),
    )
    .await;
    settle(&rt).await;
    assert_eq!(report(&reports, "a").phase(), InstancePhase::Running);
    assert_eq!(report(&reports, "a").health(), Health::Healthy);
    assert_eq!(report(&reports, "b").phase(), InstancePhase::Running);
    let a_id = fake.status(&a.opts.name).await.unwrap().id;

    // Crashes: ALWAYS restarts, NEVER does not.
    fake.exit(&a.opts.name, 1).unwrap();
    fake.exit(&b.opts.name, 1).unwrap();
    settle(&rt).await;
    let ra = report(&reports, "a");
    assert_eq!((ra.phase(), ra.restarts), (InstancePhase::Running, 1));
    let rb = report(&reports, "b");
    assert_eq!(
        (rb.phase(), rb.restarts, rb.exit_code),
        (InstancePhase::Failed, 0, 1)
    );

    // A failing check turns it unhealthy after failureThreshold (2) periods.
    fake.set_behaviour(&a.opts.name, Behaviour::Unhealthy)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle(&rt).await;
    assert_eq!(
        report(&reports, "a").health(),
        Health::Healthy,
        "one failure is not enough"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle(&rt).await;
    assert_eq!(report(&reports, "a").health(), Health::Unhealthy);
    fake.set_behaviour(&a.opts.name, Behaviour::Normal).unwrap();

    // b is no longer desired: retired.
    desired.send_replace(Some(vec![a.clone()]));
    settle(&rt).await;
    assert!(
        fake.status(&b.opts.name).await.is_err(),
        "b's container is gone"
    );
    assert!(!reports.borrow().contains_key("b"));

    // The agent restarts while no leader answers: the cache says what to run, and the
    // running instance is adopted, not restarted.
    rt.stop_and_wait(None, None).await.unwrap();
    let starts = fake.starts(&a_id).unwrap();
    let fresh = new_desired_cell();
    let rt = start(
        host.clone(),
        &fresh,
        &reports,
        &cache,
        Duration::from_secs(1),
    )
    .await;
    settle(&rt).await;
    assert_eq!(
        fake.starts(&a_id).unwrap(),
        starts,
        "adopted, not restarted"
    );
    assert_eq!(fake.status(&a.opts.name).await.unwrap().id, a_id);
    assert_eq!(host.present().await.unwrap(), ["a"]);
    rt.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_image_that_cannot_be_pulled_fails_the_instance_and_creates_nothing() {
    let fake = Arc::new(FakeRuntime::new());
    fake.refuse_pull("registry.invalid/app:1");
    let host = Arc::new(FakeHost::new(fake.clone()));
    let desired = new_desired_cell();
    let reports = new_reports_cell();
    let dir = tempfile::tempdir().unwrap();
    let mut x = instance("x", RestartPolicy::Always);
    x.opts.image = "registry.invalid/app:1".into();
    desired.send_replace(Some(vec![x.clone()]));
    let rt = start(
        host.clone(),
        &desired,
        &reports,
        &dir.path().join("c.json"),
        Duration::from_secs(1),
    )
    .await;
    settle(&rt).await;
    let r = report(&reports, "x");
    assert_eq!(r.phase(), InstancePhase::Failed);
    assert_eq!(r.reason, "ImagePullFailed");
    assert!(
        r.message.contains("registry.invalid/app:1"),
        "{}",
        r.message
    );
    assert!(host.present().await.unwrap().is_empty());
    assert!(fake.status(&x.opts.name).await.is_err(), "no container");
    rt.stop_and_wait(None, None).await.unwrap();
}

/// A slow pull (a big image) shows as PULLING and holds up nothing else: the other
/// instance runs meanwhile, and the slow one starts when its image is there.
#[tokio::test(start_paused = true)]
async fn a_slow_pull_reports_pulling_without_holding_up_other_instances() {
    let fake = Arc::new(FakeRuntime::new());
    fake.slow_pull("registry.example/big:1", Duration::from_secs(120));
    let host = Arc::new(FakeHost::new(fake.clone()));
    let desired = new_desired_cell();
    let reports = new_reports_cell();
    let dir = tempfile::tempdir().unwrap();
    let mut big = instance("big", RestartPolicy::Always);
    big.opts.image = "registry.example/big:1".into();
    let small = instance("small", RestartPolicy::Always);
    desired.send_replace(Some(vec![big.clone(), small.clone()]));
    let rt = start(
        host.clone(),
        &desired,
        &reports,
        &dir.path().join("c.json"),
        Duration::from_secs(1),
    )
    .await;
    let started = tokio::time::Instant::now();
    // Plain reconciles (every tick) while the big image is still coming.
    let mut saw = false;
    while started.elapsed() < Duration::from_secs(100) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = statuses(&reports);
        if let (Some(b), Some(s)) = (r.get("big"), r.get("small")) {
            assert_eq!(b.phase(), InstancePhase::Pulling);
            assert!(
                b.message.contains("registry.example/big:1"),
                "{}",
                b.message
            );
            if s.phase() == InstancePhase::Running {
                saw = true;
            }
        }
    }
    assert!(saw, "the small instance ran while the big image was pulled");
    assert!(
        fake.status(&big.opts.name).await.is_err(),
        "not created yet"
    );
    settle(&rt).await;
    assert_eq!(report(&reports, "big").phase(), InstancePhase::Running);
    rt.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn real_units_are_adopted_after_a_restart_checked_and_keep_their_volume() {
    let Some(podman_bin) = podman_with_busybox() else {
        return;
    };
    let Some(manager) = UserManager::start() else {
        return;
    };
    let systemd = Systemd::connect(&manager.bus_address()).await.unwrap();
    let podman = Podman::new(&podman_bin);
    let host: Arc<dyn InstanceHost> = Arc::new(SystemdHost {
        units: Units {
            systemd,
            unit_dir: manager.unit_dir(),
            trusted_base: None,
            owner: None,
            podman: podman_bin.clone(),
            cgroups: CgroupsMode::NoConmon,
            stop_timeout: Duration::from_secs(5),
        },
        podman: podman.clone(),
        image_source: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("data");
    std::fs::create_dir(&volume).unwrap();
    let id = unique_name("rt").replace('-', "");
    let mut x = instance(&id, RestartPolicy::Always);
    x.opts.volumes = vec![VolumeMount {
        source: volume.clone(),
        target: "/data".into(),
        read_only: false,
    }];
    x.opts.args = vec![format!("echo from-first > /data/note; {SERVE_UNTIL_TERM}")];
    x.health = Some(probe("test -f /data/healthy", Duration::from_millis(500)));
    let _cleanup = RemovedContainer(podman_bin.clone(), x.opts.name.clone());

    let desired = new_desired_cell();
    let reports = new_reports_cell();
    let cache = dir.path().join("desired.json");
    desired.send_replace(Some(vec![x.clone()]));
    let rt = start(
        host.clone(),
        &desired,
        &reports,
        &cache,
        Duration::from_millis(500),
    )
    .await;
    wait(&rt, &reports, &id, |r| r.phase() == InstancePhase::Running).await;
    // No /data/healthy yet: two failed checks make it unhealthy.
    wait(&rt, &reports, &id, |r| r.health() == Health::Unhealthy).await;
    let first = podman.status(&x.opts.name).await.unwrap().id;

    // Healthy once the check passes.
    std::fs::write(volume.join("healthy"), "").unwrap();
    wait(&rt, &reports, &id, |r| r.health() == Health::Healthy).await;

    // kat-agent restarts: the unit and its container are adopted, not restarted.
    rt.stop_and_wait(None, None).await.unwrap();
    let fresh = new_desired_cell();
    let rt = start(
        host.clone(),
        &fresh,
        &reports,
        &cache,
        Duration::from_millis(500),
    )
    .await;
    settle(&rt).await;
    assert_eq!(
        podman.status(&x.opts.name).await.unwrap().id,
        first,
        "same container"
    );
    assert_eq!(report(&reports, &id).restarts, 0);

    // A new spec replaces the container; the volume's file is still there for it.
    let mut y = x.clone();
    y.opts.env.insert("GENERATION".into(), "2".into());
    y.opts.args = vec![format!("cat /data/note > /data/seen; {SERVE_UNTIL_TERM}")];
    fresh.send_replace(Some(vec![y.clone()]));
    settle(&rt).await;
    wait(&rt, &reports, &id, |r| r.phase() == InstancePhase::Running).await;
    assert_ne!(
        podman.status(&y.opts.name).await.unwrap().id,
        first,
        "replaced"
    );
    let mut seen = String::new();
    for _ in 0..50 {
        seen = std::fs::read_to_string(volume.join("seen")).unwrap_or_default();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "from-first\n");

    // Not desired any more: unit and container go.
    fresh.send_replace(Some(Vec::new()));
    settle(&rt).await;
    assert!(host.present().await.unwrap().is_empty());
    assert!(podman.status(&y.opts.name).await.is_err());
    rt.stop_and_wait(None, None).await.unwrap();
}

async fn wait(
    rt: &ActorRef<RuntimeMsg>,
    reports: &ReportsCell,
    id: &str,
    done: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    for _ in 0..120 {
        settle(rt).await;
        if let Some(r) = statuses(reports).get(id)
            && done(r)
        {
            return r.clone();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{id} never got there: {:?}", reports.borrow().get(id));
}

/// A start Podman refuses before the container runs (here: a network that does not
/// exist) names Podman's reason in the instance's report, not only an exit status.
#[tokio::test]
async fn a_start_podman_refuses_reports_podmans_reason() {
    let Some(podman_bin) = podman_with_busybox() else {
        return;
    };
    let Some(manager) = UserManager::start() else {
        return;
    };
    let systemd = Systemd::connect(&manager.bus_address()).await.unwrap();
    let host: Arc<dyn InstanceHost> = Arc::new(SystemdHost {
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
        image_source: None,
    });
    let id = unique_name("nonet").replace('-', "");
    let mut x = instance(&id, RestartPolicy::Always);
    let network = unique_name("kat-test-no-such-network");
    x.opts.network = Some(network.clone());
    let _cleanup = RemovedContainer(podman_bin.clone(), x.opts.name.clone());
    let dir = tempfile::tempdir().unwrap();
    let desired = new_desired_cell();
    let reports = new_reports_cell();
    desired.send_replace(Some(vec![x.clone()]));
    let rt = start(
        host.clone(),
        &desired,
        &reports,
        &dir.path().join("desired.json"),
        Duration::from_millis(500),
    )
    .await;
    let failed = wait(&rt, &reports, &id, |r| {
        r.restarts > 0 && r.message.contains(&network)
    })
    .await;
    eprintln!("reported: {}", failed.message);
    assert!(failed.message.contains("restarted"), "{failed:?}");
    desired.send_replace(Some(Vec::new()));
    settle(&rt).await;
    assert!(host.present().await.unwrap().is_empty());
    assert!(
        !manager
            .unit_dir()
            .read_dir()
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().ends_with(".err") }),
        "the error file goes with its unit"
    );
    rt.stop_and_wait(None, None).await.unwrap();
}
