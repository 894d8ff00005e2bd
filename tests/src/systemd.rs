//! A private systemd user manager for tests, as TESTBED.md describes: started in its
//! own mount namespace with a tmpfs on `/run/systemd` (so the host is untouched),
//! with a temp `XDG_RUNTIME_DIR` whose `bus` it opens; stopped by PID (SIGTERM, which
//! stops its units, then SIGKILL) when the guard drops, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use kat_runtime::rootless::{self, ManagerSpawn, WorkloadUser};

use crate::programs::find_program;

#[derive(Debug)]
pub struct UserManager {
    pid: u32,
    dir: tempfile::TempDir,
    cgroup: String,
}

/// An unprivileged user made for a test (`useradd -m`, which also adds its subuid and
/// subgid ranges), with rootless Podman set up in its home. Dropping it kills the
/// user's processes by PID and removes the user and its home.
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// A runtime directory the user owns (mode 0700), for `XDG_RUNTIME_DIR`.
    pub runtime_dir: tempfile::TempDir,
}

impl TestUser {
    pub fn create(name: &str) -> Option<Self> {
        find_program("useradd")?;
        find_program("setpriv")?;
        let made = Command::new("useradd")
            .args(["--create-home", "--shell", "/usr/sbin/nologin", name])
            .output()
            .expect("useradd");
        if !made.status.success() {
            eprintln!(
                "SKIPPED: cannot create user {name}: {}",
                String::from_utf8_lossy(&made.stderr)
            );
            return None;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, name]).output().expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        let user = Self {
            name: name.to_owned(),
            uid: id("-u"),
            gid: id("-g"),
            home: PathBuf::from("/home").join(name),
            runtime_dir: tempfile::tempdir().expect("runtime dir"),
        };
        let _ = Command::new("chown")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(user.runtime_dir.path())
            .status();
        // Rootless storage on overlay, as TESTBED.md says (else Podman falls back to vfs).
        let conf = user.home.join(".config/containers");
        std::fs::create_dir_all(&conf).expect("containers config dir");
        std::fs::write(
            conf.join("storage.conf"),
            "[storage]\ndriver = \"overlay\"\n",
        )
        .expect("storage.conf");
        let _ = Command::new("chown")
            .args(["-R", &format!("{}:{}", user.uid, user.gid)])
            .arg(user.home.join(".config"))
            .status();
        Some(user)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        remove_user(&self.name, self.uid);
        // Had code under test started a manager for it (rootless mode).
        for cgroup in rootless::agent_started_cgroups_of(&self.name) {
            rootless::remove_cgroup(&cgroup);
        }
    }
}

/// Kills `uid`'s processes (by PID, until none are left) and removes the user and its
/// home.
fn remove_user(name: &str, uid: u32) {
    for _ in 0..50 {
        let pids = rootless::processes_of(uid);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("userdel").args(["--remove", name]).output();
}

/// A workload user the code under test makes (rootless mode): when dropped, its
/// processes are killed by PID, the user and its home removed, and the cgroups of the
/// manager the agent started for it removed.
#[derive(Debug)]
pub struct WorkloadUserCleanup(pub String);

impl Drop for WorkloadUserCleanup {
    fn drop(&mut self) {
        let uid = std::fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&self.0.as_str()))
                    .then(|| f.get(2).and_then(|u| u.parse::<u32>().ok()))
                    .flatten()
            });
        if let Some(uid) = uid {
            remove_user(&self.0, uid);
        }
        for cgroup in rootless::agent_started_cgroups_of(&self.0) {
            rootless::remove_cgroup(&cgroup);
        }
    }
}

impl UserManager {
    /// Starts one, or `None` (after printing why) where the machine cannot.
    pub fn start() -> Option<Self> {
        Self::start_for(None)
    }

    /// A systemd user manager running as `user` (as lingering would give it). Its bus
    /// answers that user only, not root (see docs/runtime.md).
    pub fn start_as(user: &TestUser) -> Option<Self> {
        Self::start_for(Some(user))
    }

    fn start_for(user: Option<&TestUser>) -> Option<Self> {
        find_program("unshare")?;
        find_program("setsid")?;
        if rootless::systemd_binary().is_none() {
            eprintln!("SKIPPED: systemd is not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("runtime dir");
        let cgroup = crate::programs::unique_name("kat-test-manager");
        let as_user = user.map(|u| WorkloadUser {
            name: u.name.clone(),
            uid: u.uid,
            gid: u.gid,
            home: u.home.clone(),
            comment: String::new(),
        });
        let spawned = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime")
                        .block_on(rootless::spawn_manager(&ManagerSpawn {
                            user: as_user.as_ref(),
                            runtime_dir: dir.path(),
                            cgroup: &cgroup,
                        }))
                })
                .join()
                .expect("spawning thread")
        });
        match spawned {
            Ok(pid) => Some(Self { pid, dir, cgroup }),
            Err(e) => {
                eprintln!("SKIPPED: the systemd user manager did not start: {e}");
                for c in rootless::manager_cgroups(&cgroup) {
                    rootless::remove_cgroup(&c);
                }
                None
            }
        }
    }

    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    fn bus_path(&self) -> PathBuf {
        self.dir.path().join("bus")
    }

    /// The D-Bus address of the manager's bus.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus_path().display())
    }

    /// Where this manager loads unit files from.
    pub fn unit_dir(&self) -> PathBuf {
        self.dir.path().join("systemd").join("user")
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        // SIGTERM stops its units; SIGKILL if it takes too long.
        let pid = Pid::from_raw(i32::try_from(self.pid).unwrap_or(0));
        let _ = kill(pid, Signal::SIGTERM);
        let started = Instant::now();
        while rootless::alive(self.pid) && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if rootless::alive(self.pid) {
            let _ = kill(pid, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
        }
        for cgroup in rootless::manager_cgroups(&self.cgroup) {
            rootless::remove_cgroup(&cgroup);
        }
    }
}
