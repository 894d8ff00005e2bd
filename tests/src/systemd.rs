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
        let child = Command::new(unshare)
            .args(["-m", "--propagation", "unchanged", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec {SYSTEMD} --user"
            ))
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("manager.log")).ok().map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("spawn the systemd user manager");
        let manager = Self { child, dir };
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
        while started.elapsed() < Duration::from_secs(20) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
