//! Real programs for integration tests: found on `PATH` (or the test is skipped with a
//! printed reason), started on random loopback ports in a temp dir, and killed by PID
//! when the guard drops — also when the test fails.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use kat_actors::store::EtcdStore;
use kat_actors::store::etcd_process::{EtcdMemberConfig, EtcdProcess};

/// The program's path, or `None` after printing why the caller skips.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: {name} is not installed (run scripts/install-deps.sh --for-tests)");
    }
    found
}

/// A free TCP port on 127.0.0.1 (free when asked; another process could take it).
/// Never the same port twice in one test process (the kernel may hand a just-closed
/// port out again), and never a default port of the cluster file (51820 lies in the
/// ephemeral range): a cluster file with two equal ports is refused.
pub fn free_port() -> u16 {
    use kat_proto::quadlet::defaults as d;
    const DEFAULTS: [u32; 5] = [
        d::API_PORT,
        d::AGENT_PORT,
        d::ETCD_PEER_PORT,
        d::ETCD_CLIENT_PORT,
        d::WIREGUARD_PORT,
    ];
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && !given.contains(&port) && !DEFAULTS.contains(&u32::from(port)) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port not handed out before");
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One etcd member on loopback with its data in a temp dir; killed on drop.
#[derive(Debug)]
pub struct EtcdGuard {
    pub process: EtcdProcess,
    pub config: EtcdMemberConfig,
    pub store: EtcdStore,
    _dir: tempfile::TempDir,
}

impl EtcdGuard {
    /// Starts a single-member etcd with fast raft timings, or `None` (skip) when etcd is
    /// not installed. Panics if an installed etcd does not come up.
    pub async fn start() -> Option<Self> {
        Self::start_with(|_| {}).await
    }

    /// [`EtcdGuard::start`] with `adjust` applied to the member's configuration.
    pub async fn start_with(adjust: impl Fn(&mut EtcdMemberConfig)) -> Option<Self> {
        let binary = find_program("etcd")?;
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        // Ports can be taken between probing and binding; retry a few times.
        let mut last = String::new();
        for _ in 0..3 {
            let mut config = EtcdMemberConfig::single(
                binary.clone(),
                "test",
                dir.path().join("data"),
                loopback(free_port()),
                loopback(free_port()),
            );
            config.heartbeat_interval = Duration::from_millis(10);
            config.election_timeout = Duration::from_millis(50);
            config.log_file = Some(dir.path().join("etcd.log"));
            adjust(&mut config);
            let mut process = EtcdProcess::spawn(&config).expect("spawn etcd");
            match process.wait_healthy(Duration::from_secs(10)).await {
                Ok(store) => {
                    return Some(Self {
                        process,
                        config,
                        store,
                        _dir: dir,
                    });
                }
                Err(e) => {
                    let log =
                        std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
                    last = format!(
                        "{e}\n{}",
                        log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
                    );
                    let _ = std::fs::remove_dir_all(dir.path().join("data"));
                }
            }
        }
        panic!("etcd did not start: {last}");
    }
}

/// The image every container test uses, made from the host's static busybox.
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:latest";

/// Podman with `localhost/busybox:latest` present (imported from `busybox-static` as
/// TESTBED.md describes, once per machine), or `None` (skip) when Podman or busybox
/// is missing.
pub fn podman_with_busybox() -> Option<PathBuf> {
    let podman = find_program("podman")?;
    let exists = || {
        std::process::Command::new(&podman)
            .args(["image", "exists", BUSYBOX_IMAGE])
            .status()
            .is_ok_and(|s| s.success())
    };
    if exists() {
        return Some(podman);
    }
    // Tests run in parallel processes: one imports, the others wait for it.
    let lock = std::fs::File::create(std::env::temp_dir().join("kat-tests-busybox-import.lock"))
        .expect("the busybox import lock file");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("the busybox import lock");
    if exists() {
        return Some(podman);
    }
    let (_dir, archive) = busybox_archive()?;
    let imported = std::process::Command::new(&podman)
        .arg("import")
        .arg(&archive)
        .arg(BUSYBOX_IMAGE)
        .output()
        .expect("podman import");
    assert!(
        imported.status.success(),
        "podman import failed: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    Some(podman)
}

/// A tar of a root file system holding the host's static busybox and its applets
/// (readable by every user), in a temp dir that goes with the first value.
pub fn busybox_archive() -> Option<(tempfile::TempDir, PathBuf)> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let Some(busybox) = busybox else {
        eprintln!("SKIPPED: busybox is not installed (apt-get install busybox-static)");
        return None;
    };
    let root = tempfile::tempdir().expect("temp dir for the busybox rootfs");
    let bin = root.path().join("rootfs").join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs/bin");
    std::fs::copy(&busybox, bin.join("busybox")).expect("copy busybox");
    for applet in [
        "sh", "sleep", "echo", "cat", "ls", "true", "false", "kill", "ps", "wget", "nc", "touch",
        "test", "mkdir", "rm", "env", "id", "date", "printf",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    let archive = root.path().join("rootfs.tar");
    let tarred = std::process::Command::new("tar")
        .arg("-C")
        .arg(bin.parent().expect("rootfs"))
        .arg("-cf")
        .arg(&archive)
        .arg("bin")
        .status()
        .expect("tar");
    assert!(tarred.success(), "tar of the busybox rootfs failed");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    Some((root, archive))
}

/// A unique name for a test's container, network or directory.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a Podman container by name when dropped (`podman rm --force`), whatever a
/// test did with it.
#[derive(Debug)]
pub struct RemovedContainer(pub PathBuf, pub String);

impl Drop for RemovedContainer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.0)
            .args(["rm", "--force", "--time=0", &self.1])
            .output();
    }
}

/// A shell loop that runs until SIGTERM and then exits 0 at once (busybox `sleep`
/// ignores SIGTERM, so a bare sleep would wait out the whole stop timeout).
pub const SERVE_UNTIL_TERM: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// An instance of workload `<namespace>/<workload>` running [`SERVE_UNTIL_TERM`] in
/// the busybox image, without a network, named as the runtime names it.
pub fn busybox_instance(
    namespace: &str,
    workload: &str,
    id: &str,
    restart: kat_runtime::RestartPolicy,
) -> kat_runtime::ContainerCreateOptions {
    kat_runtime::ContainerCreateOptions {
        instance_id: id.into(),
        namespace: namespace.into(),
        workload: workload.into(),
        name: format!("kat-{namespace}-{workload}-{id}"),
        image: BUSYBOX_IMAGE.into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec![SERVE_UNTIL_TERM.into()],
        network: Some("none".into()),
        restart,
        ..Default::default()
    }
}

/// The `i`-th of distinct loopback addresses (127.1.0.0 on), for simulated nodes: each
/// node's advertise address must be its own.
pub fn loopback_address(i: usize) -> String {
    format!(
        "127.{}.{}.{}",
        1 + (i >> 16) % 254,
        (i >> 8) & 0xff,
        i & 0xff
    )
}
