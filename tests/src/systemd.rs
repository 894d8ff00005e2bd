//! A private systemd user manager for tests, as TESTBED.md describes: started in its
//! own mount namespace with a tmpfs on `/run/systemd` (so the host is untouched),
//! with a temp `XDG_RUNTIME_DIR` whose `bus` it opens; stopped by PID (SIGTERM, which
//! stops its units, then SIGKILL) when the guard drops, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::programs::find_program;

const SYSTEMD: &str = "/lib/systemd/systemd";

#[derive(Debug)]
pub struct UserManager {
    child: Child,
    dir: tempfile::TempDir,
    /// The cgroups made for it (removed after it exits).
    cgroups: Vec<PathBuf>,
}

/// The cgroup hierarchies a systemd manager tracks its processes in: the named
/// `systemd` one and the unified one on a hybrid host, the one unified tree otherwise.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let hybrid: Vec<PathBuf> = ["systemd", "unified"]
        .iter()
        .map(|h| root.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    if hybrid.is_empty() && root.join("cgroup.procs").exists() {
        vec![root.to_path_buf()]
    } else {
        hybrid
    }
}

/// Removes a cgroup and the ones systemd made below it, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl UserManager {
    /// Starts one, or `None` (after printing why) where the machine cannot.
    pub fn start() -> Option<Self> {
        let unshare = find_program("unshare")?;
        if !Path::new(SYSTEMD).is_file() {
            eprintln!("SKIPPED: {SYSTEMD} is not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("runtime dir");
        // A cgroup of its own: a manager sharing its cgroup (with PID 1, or with another
        // test's manager) would reorganise processes that are not its own.
        let name = crate::programs::unique_name("kat-test-manager");
        let mut cgroups = Vec::new();
        let mut join = String::new();
        for hierarchy in hierarchies() {
            let cgroup = hierarchy.join(&name);
            if std::fs::create_dir(&cgroup).is_ok() {
                join.push_str(&format!("echo $$ > {}/cgroup.procs && ", cgroup.display()));
                cgroups.push(cgroup);
            }
        }
        let child = Command::new(unshare)
            .args(["-m", "--propagation", "unchanged", "sh", "-c"])
            .arg(format!(
                "{join}mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec {SYSTEMD} --user"
            ))
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("manager.log")).ok().map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("spawn the systemd user manager");
        let manager = Self {
            child,
            dir,
            cgroups,
        };
        let started = Instant::now();
        while !manager.bus_path().exists() {
            if started.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "SKIPPED: the systemd user manager opened no bus within 10 s:\n{}",
                    std::fs::read_to_string(manager.dir.path().join("manager.log"))
                        .unwrap_or_default()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(manager)
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
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = kill(pid, Signal::SIGTERM);
        let started = Instant::now();
        let mut exited = false;
        while started.elapsed() < Duration::from_secs(20) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
    }
}
