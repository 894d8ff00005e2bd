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

    /// PIDs of the processes running as this user.
    fn processes(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                    status.lines().any(|l| {
                        l.starts_with("Uid:")
                            && l.split_whitespace().nth(1) == Some(&self.uid.to_string())
                    })
                })
            })
            .collect()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("userdel")
            .args(["--remove", &self.name])
            .output();
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
        let exec = match user {
            None => format!("exec {SYSTEMD} --user"),
            Some(u) => {
                // The user owns its runtime dir and its cgroups (systemd delegates below).
                let owner = format!("{}:{}", u.uid, u.gid);
                let _ = Command::new("chown").arg(&owner).arg(dir.path()).status();
                for cgroup in &cgroups {
                    let _ = Command::new("chown")
                        .args(["-R", &owner])
                        .arg(cgroup)
                        .status();
                }
                format!(
                    "exec setpriv --reuid={uid} --regid={gid} --init-groups env HOME={home} USER={name} XDG_RUNTIME_DIR={xdg} {SYSTEMD} --user",
                    uid = u.uid,
                    gid = u.gid,
                    home = u.home.display(),
                    name = u.name,
                    xdg = dir.path().display()
                )
            }
        };
        let child = Command::new(unshare)
            .args(["-m", "--propagation", "unchanged", "sh", "-c"])
            .arg(format!(
                "{join}mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && {exec}"
            ))
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("manager.log"))
                    .ok()
                    .map_or(Stdio::null(), Stdio::from),
            )
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
