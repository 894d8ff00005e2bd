//! Supervision behaviour with test children that fail, panic, hang or exit on command.
//! Time is paused: backoffs and shutdown timeouts take no real time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{ActorRef, call_t};

use super::*;

#[derive(Clone, Default)]
struct Probe {
    log: Arc<Mutex<Vec<String>>>,
    /// Starts to refuse before starting normally again.
    refuse_starts: Arc<AtomicU32>,
}

impl Probe {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    fn push(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    fn count(&self, line: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    /// Waits (in paused time) until the log holds `n` lines.
    async fn wait_len(&self, n: usize) -> Vec<String> {
        for _ in 0..2000 {
            if self.log.lock().unwrap().len() >= n {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return self.take();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "log never reached {n} lines: {:?}",
            self.log.lock().unwrap()
        );
    }
}

enum Cmd {
    Fail,
    Panic,
    Hang,
    Exit,
}

#[derive(Clone)]
struct TestChild;

struct ChildState {
    name: String,
    probe: Probe,
}

impl Actor for TestChild {
    type Msg = Cmd;
    type State = ChildState;
    type Arguments = (String, Probe);

    async fn pre_start(
        &self,
        _: ActorRef<Cmd>,
        (name, probe): (String, Probe),
    ) -> Result<ChildState, ActorProcessingErr> {
        let refused = probe
            .refuse_starts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if refused.is_ok() {
            probe.push(format!("refuse {name}"));
            return Err("refusing to start".into());
        }
        probe.push(format!("start {name}"));
        Ok(ChildState { name, probe })
    }

    async fn handle(
        &self,
        myself: ActorRef<Cmd>,
        cmd: Cmd,
        _: &mut ChildState,
    ) -> Result<(), ActorProcessingErr> {
        match cmd {
            Cmd::Fail => return Err("told to fail".into()),
            Cmd::Panic => panic!("told to panic"),
            Cmd::Hang => std::future::pending::<()>().await,
            Cmd::Exit => myself.stop(None),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<Cmd>,
        state: &mut ChildState,
    ) -> Result<(), ActorProcessingErr> {
        state.probe.push(format!("stop {}", state.name));
        Ok(())
    }
}

fn child(name: &str, probe: &Probe) -> ChildSpec {
    let (n, p) = (name.to_owned(), probe.clone());
    ChildSpec::actor(name, TestChild, move || (n.clone(), p.clone()))
        .shutdown_timeout(Duration::from_secs(1))
}

fn args(strategy: Strategy, children: Vec<ChildSpec>) -> SupervisorArgs {
    SupervisorArgs {
        strategy,
        intensity: Intensity {
            max_restarts: 10,
            window: Duration::from_secs(60),
        },
        backoff: Backoff::NONE,
        children,
    }
}

async fn start(
    name: &str,
    args: SupervisorArgs,
) -> (ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>) {
    Actor::spawn(Some(name.to_owned()), Supervisor, args)
        .await
        .unwrap()
}

fn send(name: &str, cmd: Cmd) {
    let cell = ractor::registry::where_is(name).unwrap_or_else(|| panic!("{name} is not running"));
    cell.send_message(cmd).map_err(|_| "send failed").unwrap();
}

async fn snapshot(sup: &ActorRef<SupervisorMsg>) -> SupervisorSnapshot {
    call_t!(sup, SupervisorMsg::Snapshot, 5000).unwrap()
}

/// Names of `prefix` + each of `names`, and the children for them.
fn family(prefix: &str, names: &[&str], probe: &Probe) -> (Vec<String>, Vec<ChildSpec>) {
    let full: Vec<String> = names.iter().map(|n| format!("{prefix}-{n}")).collect();
    let specs = full.iter().map(|n| child(n, probe)).collect();
    (full, specs)
}

fn lines(items: &[(&str, &str)]) -> Vec<String> {
    items
        .iter()
        .map(|(what, who)| format!("{what} {who}"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn starts_children_in_order() {
    let probe = Probe::default();
    let (_, specs) = family("so", &["a", "b", "c"], &probe);
    let (sup, _) = start("so-sup", args(Strategy::OneForOne, specs)).await;
    assert_eq!(
        probe.wait_len(3).await,
        lines(&[("start", "so-a"), ("start", "so-b"), ("start", "so-c")])
    );
    let snap = snapshot(&sup).await;
    assert!(snap.children.iter().all(|(_, running)| *running));
    assert_eq!(snap.restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_failed_child() {
    let probe = Probe::default();
    let (_, specs) = family("ofo", &["a", "b", "c"], &probe);
    let (sup, _) = start("ofo-sup", args(Strategy::OneForOne, specs)).await;
    probe.wait_len(3).await;
    send("ofo-b", Cmd::Fail);
    assert_eq!(probe.wait_len(1).await, lines(&[("start", "ofo-b")]));
    assert_eq!(snapshot(&sup).await.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_child_is_restarted_like_a_failing_one() {
    let probe = Probe::default();
    let (_, specs) = family("pan", &["a", "b"], &probe);
    let (_sup, _) = start("pan-sup", args(Strategy::OneForOne, specs)).await;
    probe.wait_len(2).await;
    send("pan-a", Cmd::Panic);
    assert_eq!(probe.wait_len(1).await, lines(&[("start", "pan-a")]));
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_later_siblings() {
    let probe = Probe::default();
    let (_, specs) = family("rfo", &["a", "b", "c", "d"], &probe);
    let (_sup, _) = start("rfo-sup", args(Strategy::RestForOne, specs)).await;
    probe.wait_len(4).await;
    send("rfo-b", Cmd::Fail);
    // Later siblings stop in reverse order, then the failed child and they start in order.
    assert_eq!(
        probe.wait_len(5).await,
        lines(&[
            ("stop", "rfo-d"),
            ("stop", "rfo-c"),
            ("start", "rfo-b"),
            ("start", "rfo-c"),
            ("start", "rfo-d")
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn one_for_all_restarts_every_child() {
    let probe = Probe::default();
    let (_, specs) = family("ofa", &["a", "b", "c"], &probe);
    let (_sup, _) = start("ofa-sup", args(Strategy::OneForAll, specs)).await;
    probe.wait_len(3).await;
    send("ofa-b", Cmd::Fail);
    assert_eq!(
        probe.wait_len(5).await,
        lines(&[
            ("stop", "ofa-c"),
            ("stop", "ofa-a"),
            ("start", "ofa-a"),
            ("start", "ofa-b"),
            ("start", "ofa-c")
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_children_in_reverse_start_order() {
    let probe = Probe::default();
    let (_, specs) = family("sd", &["a", "b", "c"], &probe);
    let (sup, join) = start("sd-sup", args(Strategy::OneForOne, specs)).await;
    probe.wait_len(3).await;
    sup.stop_and_wait(None, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    join.await.unwrap();
    assert_eq!(
        probe.take(),
        lines(&[("stop", "sd-c"), ("stop", "sd-b"), ("stop", "sd-a")])
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_child_is_killed_after_its_shutdown_timeout() {
    let probe = Probe::default();
    let (_, specs) = family("hang", &["a", "b", "c"], &probe);
    let (sup, join) = start("hang-sup", args(Strategy::OneForOne, specs)).await;
    probe.wait_len(3).await;
    send("hang-b", Cmd::Hang);
    let started = Instant::now();
    sup.stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    join.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "b got its 1 s to stop"
    );
    // b was killed: its post_stop never ran; the others stopped normally, in reverse order.
    assert_eq!(
        probe.take(),
        lines(&[("stop", "hang-c"), ("stop", "hang-a")])
    );
    assert!(ractor::registry::where_is("hang-b").is_none());
}

#[tokio::test(start_paused = true)]
async fn exceeding_the_restart_intensity_escalates_to_the_parent() {
    let probe = Probe::default();
    let inner_probe = probe.clone();
    let inner = ChildSpec {
        on_exit: None,
        on_restart: None,
        name: "esc-inner".to_owned(),
        restart: Restart::Permanent,
        shutdown_timeout: Duration::from_secs(5),
        start: StartFn::new(move |parent| {
            let probe = inner_probe.clone();
            async move {
                let args = SupervisorArgs {
                    strategy: Strategy::OneForOne,
                    intensity: Intensity {
                        max_restarts: 2,
                        window: Duration::from_secs(60),
                    },
                    backoff: Backoff::NONE,
                    children: vec![child("esc-x", &probe)],
                };
                let (sup, _) =
                    Actor::spawn_linked(Some("esc-inner".to_owned()), Supervisor, args, parent)
                        .await?;
                Ok(sup.get_cell())
            }
        }),
    };
    let (outer, _) = start("esc-outer", args(Strategy::OneForOne, vec![inner])).await;
    probe.wait_len(1).await;
    // Two restarts are within the intensity; the third failure melts the inner supervisor down.
    for expected_starts in [1, 1] {
        send("esc-x", Cmd::Fail);
        assert_eq!(
            probe.wait_len(expected_starts).await,
            lines(&[("start", "esc-x")])
        );
    }
    send("esc-x", Cmd::Fail);
    // The outer supervisor restarts the inner one, which starts its child afresh.

    assert_eq!(probe.wait_len(1).await, lines(&[("start", "esc-x")]));
    assert_eq!(
        snapshot(&outer).await.restarts,
        1,
        "the escalation reached the parent"
    );
    // The escalation says what failed last (the agent's last words name the cause).
    let why = super::last_escalation().unwrap_or_default();
    assert!(
        why.starts_with("more than 2 restarts within 60s; last: esc-x: "),
        "{why}"
    );
    let inner = ActorRef::<SupervisorMsg>::from(ractor::registry::where_is("esc-inner").unwrap());
    assert_eq!(
        snapshot(&inner).await.restarts,
        0,
        "a fresh inner supervisor"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_and_temporary_children() {
    let probe = Probe::default();
    let specs = vec![
        child("tt-transient", &probe).restart(Restart::Transient),
        child("tt-temporary", &probe).restart(Restart::Temporary),
        child("tt-failing-transient", &probe).restart(Restart::Transient),
    ];
    let (sup, _) = start("tt-sup", args(Strategy::OneForOne, specs)).await;
    probe.wait_len(3).await;
    send("tt-transient", Cmd::Exit);
    send("tt-temporary", Cmd::Fail);
    send("tt-failing-transient", Cmd::Fail);
    assert_eq!(
        probe.wait_len(2).await,
        lines(&[("stop", "tt-transient"), ("start", "tt-failing-transient")])
    );
    let snap = snapshot(&sup).await;
    assert_eq!(
        snap.children,
        [
            ("tt-transient".to_owned(), false),
            ("tt-failing-transient".to_owned(), true)
        ],
        "a temporary child is forgotten; a transient one that stopped normally stays stopped"
    );
}

#[tokio::test(start_paused = true)]
async fn restarts_back_off_while_a_child_keeps_failing() {
    let probe = Probe::default();
    let mut a = args(Strategy::OneForOne, vec![child("bo-a", &probe)]);
    a.backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };
    let (_sup, _) = start("bo-sup", a).await;
    probe.wait_len(1).await;
    for expected in [
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(4),
    ] {
        let failed_at = Instant::now();
        send("bo-a", Cmd::Fail);
        probe.wait_len(1).await;
        let waited = failed_at.elapsed();
        assert!(
            waited >= expected && waited < expected + Duration::from_secs(1),
            "waited {waited:?}, expected {expected:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_that_cannot_restart_is_retried_and_counted() {
    let probe = Probe::default();
    let (sup, _) = start(
        "rs-sup",
        args(Strategy::OneForOne, vec![child("rs-a", &probe)]),
    )
    .await;
    probe.wait_len(1).await;
    probe.refuse_starts.store(2, Ordering::SeqCst);
    send("rs-a", Cmd::Fail);
    assert_eq!(
        probe.wait_len(3).await,
        lines(&[("refuse", "rs-a"), ("refuse", "rs-a"), ("start", "rs-a")])
    );
    assert_eq!(
        snapshot(&sup).await.restarts,
        3,
        "one restart for the failure, one per refused start"
    );
}

#[tokio::test(start_paused = true)]
async fn children_can_be_added_and_removed() {
    let probe = Probe::default();
    let (sup, _) = start(
        "ar-sup",
        args(Strategy::OneForOne, vec![child("ar-a", &probe)]),
    )
    .await;
    probe.wait_len(1).await;
    let added = call_t!(sup, SupervisorMsg::AddChild, 5000, child("ar-b", &probe)).unwrap();
    assert_eq!(added, Ok(()));
    let again = call_t!(sup, SupervisorMsg::AddChild, 5000, child("ar-b", &probe)).unwrap();
    assert!(again.is_err(), "names are unique");
    assert!(call_t!(sup, SupervisorMsg::RemoveChild, 5000, "ar-b".to_owned()).unwrap());
    assert_eq!(probe.take(), lines(&[("start", "ar-b"), ("stop", "ar-b")]));
    assert!(!call_t!(sup, SupervisorMsg::RemoveChild, 5000, "ar-b".to_owned()).unwrap());
    assert_eq!(snapshot(&sup).await.children, [("ar-a".to_owned(), true)]);
    assert_eq!(probe.count("stop ar-a"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_child_that_cannot_start_at_boot_fails_the_supervisor() {
    let probe = Probe::default();
    probe.refuse_starts.store(1, Ordering::SeqCst);
    let (_, specs) = family("boot", &["a", "b"], &probe);
    let (_sup, join) = start("boot-sup", args(Strategy::OneForOne, specs)).await;
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(probe.take(), lines(&[("refuse", "boot-a")]));
    assert!(ractor::registry::where_is("boot-b").is_none());
}

#[tokio::test(start_paused = true)]
async fn temporary_siblings_caught_in_a_restart_are_dropped() {
    let probe = Probe::default();
    let specs = vec![
        child("tmp-a", &probe),
        child("tmp-b", &probe),
        child("tmp-leader", &probe).restart(Restart::Temporary),
    ];
    let (sup, _) = start("tmp-sup", args(Strategy::RestForOne, specs)).await;
    probe.wait_len(3).await;
    send("tmp-b", Cmd::Fail);
    assert_eq!(
        probe.wait_len(2).await,
        lines(&[("stop", "tmp-leader"), ("start", "tmp-b")])
    );
    assert_eq!(
        snapshot(&sup).await.children,
        [("tmp-a".to_owned(), true), ("tmp-b".to_owned(), true)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_temporary_child_that_exits_tells_whoever_asked() {
    let probe = Probe::default();
    let told = Arc::new(Mutex::new(Vec::new()));
    let sink = told.clone();
    let mut spec = child("ex-leader", &probe).restart(Restart::Temporary);
    spec.on_exit = Some(Arc::new(move |name: &str, failed: bool| {
        sink.lock().unwrap().push((name.to_owned(), failed))
    }));
    let (_sup, _) = start("ex-sup", args(Strategy::OneForOne, vec![spec])).await;
    probe.wait_len(1).await;
    send("ex-leader", Cmd::Fail);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*told.lock().unwrap(), [("ex-leader".to_owned(), true)]);
}
