//! Rootless mode (SPEC §8.2): each workload's instances run as the workload's own
//! unprivileged user, as units of that user's own systemd manager, with that user's
//! Podman storage.
//!
//! [`RootlessHost`] makes the user when a workload first needs it (`useradd`, which
//! gives it subordinate uid/gid ranges), makes sure its manager runs ([`UserManagers`]:
//! lingering through logind, or a manager the agent starts itself where there is no
//! logind), and reaches that manager's bus with the user's credentials
//! ([`Systemd::connect_as`]). Images the user lacks are copied from root's storage
//! when root has them (side-loaded or built there), else pulled as the user.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::Mutex;

use crate::host::{DesiredInstance, Ensured, InstanceHost, Observation, SystemdHost};
use crate::podman::{Podman, RunAs};
use crate::systemd::unit::CgroupsMode;
use crate::systemd::{Systemd, Units};
use crate::types::{ExecOutput, RuntimeError};
use crate::users::workload_user;

/// Where the systemd binary is on Debian-like and other systems.
const SYSTEMD_BINARIES: [&str; 2] = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];
const NOLOGIN: &str = "/usr/sbin/nologin";
/// Prefix of every workload user's name.
pub const USER_PREFIX: &str = "kat_wl_";

/// An existing workload user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The GECOS field: [`crate::users::owner_comment`] of the workload it belongs to.
    pub comment: String,
}

/// Whether `user` may serve workload `namespace/workload`: its comment names that
/// workload (or is the one users made before owners were recorded). A different
/// owner means two workloads map to one user name: refused, so neither runs as, nor
/// removes, the other's user.
pub fn check_owner(
    user: &WorkloadUser,
    namespace: &str,
    workload: &str,
) -> Result<(), RuntimeError> {
    comment_allows(&user.name, &user.comment, namespace, workload)
}

fn comment_allows(
    name: &str,
    comment: &str,
    namespace: &str,
    workload: &str,
) -> Result<(), RuntimeError> {
    let expected = crate::users::owner_comment(namespace, workload);
    if comment == expected || comment == LEGACY_COMMENT {
        return Ok(());
    }
    Err(RuntimeError::InvalidOptions {
        field: "metadata.name".to_owned(),
        reason: format!(
            "workload user {name} belongs to {comment:?}, not {namespace}/{workload} (two \
             workloads map to one user name): rename one of them"
        ),
    })
}

/// The comment of workload users made before owners were recorded.
const LEGACY_COMMENT: &str = "KAT workload user";

fn failed(command: &str, out: &std::process::Output) -> RuntimeError {
    RuntimeError::Command {
        command: command.to_owned(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

fn spawn_err(program: &str, e: &std::io::Error) -> RuntimeError {
    RuntimeError::Spawn {
        program: program.to_owned(),
        reason: e.to_string(),
    }
}

/// A `passwd` line as a user, if it is one.
fn parse_passwd_line(line: &str) -> Option<WorkloadUser> {
    let f: Vec<&str> = line.trim().split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some(WorkloadUser {
        name: f[0].to_owned(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(f[5]),
        comment: f[4].to_owned(),
    })
}

/// The user called `name`, if there is one (through NSS, as `getent` sees it).
pub async fn lookup_user(name: &str) -> Result<Option<WorkloadUser>, RuntimeError> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .await
        .map_err(|e| spawn_err("getent", &e))?;
    match out.status.code() {
        Some(0) => Ok(parse_passwd_line(&String::from_utf8_lossy(&out.stdout))),
        // 2: no such key.
        Some(2) => Ok(None),
        _ => Err(failed(&format!("getent passwd {name}"), &out)),
    }
}

/// The workload users this host has (local users in `/etc/passwd`, as `useradd`
/// makes them).
pub fn workload_users() -> Vec<WorkloadUser> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(parse_passwd_line)
        .filter(|u| u.name.starts_with(USER_PREFIX))
        .collect()
}

/// Whether `file` (`/etc/subuid` or `/etc/subgid`) gives `user` a range.
fn has_subordinate_range(file: &Path, user: &WorkloadUser) -> bool {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let owner = l.split(':').next().unwrap_or_default();
            owner == user.name || owner == user.uid.to_string()
        })
}

/// The lock file that serializes making workload users.
pub const USERS_LOCK: &str = "/run/lock/kat-workload-users.lock";

/// An exclusive `flock` on [`USERS_LOCK`], held until dropped. Agents sharing a host
/// (test clusters) and tasks of one agent may make the same user at once; without it,
/// one sees the user in `/etc/passwd` while `useradd` is still making its home and
/// subordinate ranges.
async fn users_lock() -> Result<nix::fcntl::Flock<std::fs::File>, RuntimeError> {
    let taken = tokio::task::spawn_blocking(|| {
        let path = Path::new(USERS_LOCK);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| std::io::Error::from(errno))
    })
    .await;
    match taken {
        Ok(Ok(lock)) => Ok(lock),
        Ok(Err(e)) => Err(spawn_err(USERS_LOCK, &e)),
        Err(e) => Err(spawn_err(USERS_LOCK, &std::io::Error::other(e))),
    }
}

/// The workload user `name`, made if missing: a login-less user with a home (its
/// Podman storage) and subordinate uid/gid ranges, with rootless storage on overlay;
/// `comment` says whose it is ([`crate::users::owner_comment`]).
pub async fn ensure_user(name: &str, comment: &str) -> Result<WorkloadUser, RuntimeError> {
    let _lock = users_lock().await?;
    let user = match lookup_user(name).await? {
        Some(u) => u,
        None => {
            let out = Command::new("useradd")
                .args([
                    "--create-home",
                    "--shell",
                    NOLOGIN,
                    "--comment",
                    comment,
                    name,
                ])
                .output()
                .await
                .map_err(|e| spawn_err("useradd", &e))?;
            // Made meanwhile by something that does not take the lock (exit 9: name in use).
            if !out.status.success() && out.status.code() != Some(9) {
                return Err(failed(&format!("useradd {name}"), &out));
            }
            tracing::info!(user = %name, "made workload user");
            lookup_user(name)
                .await?
                .ok_or_else(|| RuntimeError::NotFound(format!("user {name}")))?
        }
    };
    for file in ["/etc/subuid", "/etc/subgid"] {
        if !has_subordinate_range(Path::new(file), &user) {
            return Err(RuntimeError::InvalidOptions {
                field: file.to_owned(),
                reason: format!(
                    "workload user {name} has no subordinate range, which rootless Podman needs: \
                     give it one (usermod --add-subuids/--add-subgids), or set SUB_UID_COUNT/SUB_GID_COUNT \
                     in /etc/login.defs so useradd does, or run with --runtime-mode rootful"
                ),
            });
        }
    }
    if !user.home.is_dir() {
        return Err(RuntimeError::NotFound(format!(
            "home directory {} of workload user {name} (its Podman storage): make it, owned by the user",
            user.home.display()
        )));
    }
    let storage = user.home.join(".config/containers/storage.conf");
    if !storage.exists() {
        write_storage_conf(&user).map_err(|e| spawn_err(&storage.display().to_string(), &e))?;
    }
    Ok(user)
}

/// Writes `~/.config/containers/storage.conf` (the overlay driver) into a workload
/// user's home as root, the user's own: the user can write its home, so nothing
/// there is followed if it is a link (`crate::safe_fs`).
fn write_storage_conf(user: &WorkloadUser) -> std::io::Result<()> {
    use std::io::Write;
    let home = crate::safe_fs::Dir::open_base(&user.home)?;
    let config = home.subdir(Path::new(".config"), Some(0o700))?;
    config.chown(user.uid, user.gid)?;
    let containers = config.subdir(Path::new("containers"), Some(0o700))?;
    containers.chown(user.uid, user.gid)?;
    containers
        .create_file("storage.conf", 0o644)?
        .write_all(b"[storage]\ndriver = \"overlay\"\n")?;
    containers.chown_file("storage.conf", user.uid, user.gid)
}

/// Makes sure a workload user's systemd manager runs; gives its runtime directory
/// (`XDG_RUNTIME_DIR`, where its `bus` is).
#[async_trait::async_trait]
pub trait UserManagers: Send + Sync + std::fmt::Debug {
    async fn ensure(&self, user: &WorkloadUser) -> Result<PathBuf, RuntimeError>;
    /// The runtime directory of the user's manager if it runs now (starting nothing).
    fn running(&self, user: &WorkloadUser) -> Option<PathBuf>;
    /// Stops the manager of user `name` for good (the user is about to be removed;
    /// `uid` is `None` where it already is).
    async fn stop(&self, name: &str, uid: Option<u32>) -> Result<(), RuntimeError>;
}

async fn wait_for_bus(bus: &Path, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if bus.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.exists()
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Login {
    fn set_user_linger(&self, uid: u32, enable: bool, interactive: bool) -> zbus::Result<()>;
    fn terminate_user(&self, uid: u32) -> zbus::Result<()>;
}

fn logind_error(what: &'static str) -> impl Fn(zbus::Error) -> RuntimeError {
    move |e| RuntimeError::Command {
        command: format!("logind {what}"),
        status: "D-Bus error".to_owned(),
        stderr: e.to_string(),
    }
}

/// Lingering through systemd-logind (hosts booted with systemd): logind starts the
/// user's manager (`user@UID.service`) and keeps it running without a login.
#[derive(Debug, Clone)]
pub struct Logind {
    /// The system bus address.
    pub system_bus: String,
}

#[async_trait::async_trait]
impl UserManagers for Logind {
    fn running(&self, user: &WorkloadUser) -> Option<PathBuf> {
        let runtime_dir = PathBuf::from(format!("/run/user/{}", user.uid));
        runtime_dir.join("bus").exists().then_some(runtime_dir)
    }

    async fn ensure(&self, user: &WorkloadUser) -> Result<PathBuf, RuntimeError> {
        let runtime_dir = PathBuf::from(format!("/run/user/{}", user.uid));
        if let Some(dir) = self.running(user) {
            return Ok(dir);
        }
        self.login()
            .await?
            .set_user_linger(user.uid, true, false)
            .await
            .map_err(logind_error("SetUserLinger"))?;
        if !wait_for_bus(&runtime_dir.join("bus"), Duration::from_secs(30)).await {
            return Err(RuntimeError::Timeout {
                command: format!("waiting for {}'s systemd manager (lingering)", user.name),
                after: Duration::from_secs(30),
            });
        }
        Ok(runtime_dir)
    }

    async fn stop(&self, _name: &str, uid: Option<u32>) -> Result<(), RuntimeError> {
        let Some(uid) = uid else {
            return Ok(());
        };
        let login = self.login().await?;
        login
            .set_user_linger(uid, false, false)
            .await
            .map_err(logind_error("SetUserLinger"))?;
        match login.terminate_user(uid).await {
            // NoSuchUser: logind has no session or manager of it left.
            Err(zbus::Error::MethodError(name, _, _)) if name.contains("NoSuchUser") => Ok(()),
            r => r.map_err(logind_error("TerminateUser")),
        }
    }
}

impl Logind {
    async fn login(&self) -> Result<LoginProxy<'static>, RuntimeError> {
        let conn = zbus::connection::Builder::address(self.system_bus.as_str())
            .build()
            .await
            .map_err(logind_error("connect"))?;
        LoginProxy::new(&conn)
            .await
            .map_err(logind_error("Manager"))
    }
}

/// The cgroup hierarchies a systemd manager tracks its processes in: the named
/// `systemd` one and the unified one on a hybrid host, the one unified tree otherwise.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
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

/// Removes a cgroup and the ones below it, deepest first (each must be empty).
pub fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The cgroup (in each hierarchy) a manager started by [`spawn_manager`] runs in.
pub fn manager_cgroups(cgroup: &str) -> Vec<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(cgroup))
        .collect()
}

/// The systemd binary, if installed.
pub fn systemd_binary() -> Option<&'static str> {
    SYSTEMD_BINARIES
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

/// A systemd user manager to start with [`spawn_manager`].
#[derive(Debug, Clone)]
pub struct ManagerSpawn<'a> {
    /// `None`: a manager running as root.
    pub user: Option<&'a WorkloadUser>,
    /// Its `XDG_RUNTIME_DIR` (made, and owned by the user).
    pub runtime_dir: &'a Path,
    /// Name of the cgroup it gets in each hierarchy.
    pub cgroup: &'a str,
}

/// Starts a systemd user manager detached from the caller (it outlives the agent, as
/// the instances it runs must), in a cgroup of its own (a manager sharing one would
/// reorganise processes that are not its own). Where systemd is not the init system
/// (containers, some test machines) it runs in a mount namespace of its own with a
/// tmpfs on `/run/systemd`, so it believes it is; the host is untouched. Its PID is
/// written to `RUNTIME_DIR/manager.pid`, its output to `RUNTIME_DIR/manager.log`.
/// Returns once its bus is open.
pub async fn spawn_manager(spawn: &ManagerSpawn<'_>) -> Result<u32, RuntimeError> {
    let systemd = systemd_binary().ok_or_else(|| RuntimeError::Spawn {
        program: SYSTEMD_BINARIES[0].to_owned(),
        reason: "systemd is not installed".to_owned(),
    })?;
    let dir = spawn.runtime_dir;
    std::fs::create_dir_all(dir).map_err(|e| spawn_err(&dir.display().to_string(), &e))?;
    let pid_file = dir.join("manager.pid");
    let _ = std::fs::remove_file(dir.join("bus"));
    // A workload user owns its runtime directory and may have planted links there:
    // the files root writes are made afresh, never opened through a link, and the
    // shell writes the PID to its standard output (the file opened here), not by path.
    let runtime = crate::safe_fs::Dir::open_base(dir)
        .map_err(|e| spawn_err(&dir.display().to_string(), &e))?;
    let made = |name: &str| {
        runtime
            .create_file(name, 0o644)
            .map_err(|e| spawn_err(&dir.join(name).display().to_string(), &e))
    };
    let pid_out = made("manager.pid")?;
    let log = made("manager.log")?;
    let mut script = String::from("echo $$ && exec >/dev/null && ");
    let cgroups = manager_cgroups(spawn.cgroup);
    for cgroup in &cgroups {
        if std::fs::create_dir(cgroup).is_ok() || cgroup.is_dir() {
            script.push_str(&format!("echo $$ > {}/cgroup.procs && ", cgroup.display()));
        }
    }
    let namespace = !Path::new("/run/systemd/system").is_dir();
    if namespace {
        script.push_str("mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && ");
    }
    match spawn.user {
        None => script.push_str(&format!("exec {systemd} --user")),
        Some(u) => {
            // The user owns its runtime dir and its cgroups (systemd delegates below).
            std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
                .map_err(|e| spawn_err(&dir.display().to_string(), &e))?;
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| spawn_err(&dir.display().to_string(), &e))?;
            for cgroup in &cgroups {
                chown_tree(cgroup, u.uid, u.gid);
            }
            script.push_str(&format!(
                "exec setpriv --reuid={uid} --regid={gid} --init-groups env HOME='{home}' USER={name} {systemd} --user",
                uid = u.uid,
                gid = u.gid,
                home = u.home.display(),
                name = u.name,
            ));
        }
    }
    let mut command = Command::new("setsid");
    command.arg("--fork");
    if namespace {
        command.args(["unshare", "-m", "--propagation", "unchanged"]);
    }
    let status = command
        .args(["sh", "-c", &script])
        .env("XDG_RUNTIME_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(pid_out))
        .stderr(Stdio::from(log))
        .status()
        .await
        .map_err(|e| spawn_err("setsid", &e))?;
    if !status.success() {
        return Err(RuntimeError::Command {
            command: "setsid --fork ... systemd --user".to_owned(),
            status: status.to_string(),
            stderr: manager_log(dir),
        });
    }
    if !wait_for_bus(&dir.join("bus"), Duration::from_secs(15)).await {
        return Err(RuntimeError::Command {
            command: format!("{systemd} --user"),
            status: "opened no bus within 15 s".to_owned(),
            stderr: manager_log(dir),
        });
    }
    crate::safe_fs::read_small(&pid_file, 32)
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| RuntimeError::Parse {
            command: pid_file.display().to_string(),
            reason: "no PID written".to_owned(),
        })
}

/// The end of a manager's log, for an error (read without following a link).
fn manager_log(dir: &Path) -> String {
    crate::safe_fs::read_small(&dir.join("manager.log"), 64 * 1024).unwrap_or_default()
}

/// Whether process `pid` is the manager of workload user `name` (or one of its
/// processes): it runs in that manager's cgroup and, when the user still exists, as
/// its uid. The PID comes from a file the user can write; root signals nothing else.
fn is_users_process(pid: i32, tag: &str, name: &str, uid: Option<u32>) -> bool {
    let cgroup = format!("/{}", agent_started_cgroup(tag, name));
    let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
        text.lines().any(|l| {
            let path = l.splitn(3, ':').nth(2).unwrap_or_default();
            path == cgroup || path.starts_with(&format!("{cgroup}/"))
        })
    });
    let as_uid = uid.is_none_or(|uid| {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines().any(|l| {
                l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())
            })
        })
    });
    in_cgroup && as_uid
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// Whether the process `pid` is alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// Managers the agent starts itself, for hosts without logind: one per workload
/// user, runtime directory `BASE/<user>` (on a tmpfs such as `/run`, like logind's
/// `/run/user/UID`, so a reboot leaves no stale units), cgroup
/// `kat-user-<tag>-<user>`. A manager that is already running (e.g. across an agent
/// restart) is reused. Agents sharing a host (test clusters) each have their own.
#[derive(Debug, Clone)]
pub struct AgentStarted {
    pub base: PathBuf,
    /// Tells apart the managers of agents sharing a host (the node name).
    pub tag: String,
}

/// The cgroup name of the manager [`AgentStarted`] with `tag` starts for `user`.
pub fn agent_started_cgroup(tag: &str, user: &str) -> String {
    format!("kat-user-{tag}-{user}")
}

/// Every cgroup of a manager any [`AgentStarted`] started for `user`.
pub fn agent_started_cgroups_of(user: &str) -> Vec<PathBuf> {
    let suffix = format!("-{user}");
    cgroup_hierarchies()
        .into_iter()
        .flat_map(|h| std::fs::read_dir(h).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kat-user-") && n.ends_with(&suffix))
        })
        .collect()
}

#[async_trait::async_trait]
impl UserManagers for AgentStarted {
    fn running(&self, user: &WorkloadUser) -> Option<PathBuf> {
        let dir = self.base.join(&user.name);
        let alive = crate::safe_fs::read_small(&dir.join("manager.pid"), 32)
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(alive);
        (alive && dir.join("bus").exists()).then_some(dir)
    }

    async fn ensure(&self, user: &WorkloadUser) -> Result<PathBuf, RuntimeError> {
        if let Some(dir) = self.running(user) {
            return Ok(dir);
        }
        let dir = self.base.join(&user.name);
        let pid = spawn_manager(&ManagerSpawn {
            user: Some(user),
            runtime_dir: &dir,
            cgroup: &agent_started_cgroup(&self.tag, &user.name),
        })
        .await?;
        tracing::info!(user = %user.name, pid, "started the workload user's systemd manager");
        Ok(dir)
    }

    async fn stop(&self, name: &str, uid: Option<u32>) -> Result<(), RuntimeError> {
        let dir = self.base.join(name);
        let pid = crate::safe_fs::read_small(&dir.join("manager.pid"), 32)
            .and_then(|p| p.trim().parse::<i32>().ok());
        let pid = pid.filter(|p| *p > 1 && is_users_process(*p, &self.tag, name, uid));
        if let Some(pid) = pid.filter(|p| alive(p.unsigned_abs())) {
            // The manager stops its units (their containers) before it exits.
            end_process(pid, Duration::from_secs(30)).await;
        }
        for hierarchy in cgroup_hierarchies() {
            remove_cgroup(&hierarchy.join(agent_started_cgroup(&self.tag, name)));
        }
        // What the manager and the user's Podman leave there may still be settling
        // (a process of the user exiting): a few tries; a leftover on this tmpfs is
        // harmless, so it is only reported.
        for attempt in 1..=10 {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if attempt == 10 => {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot remove the workload user's runtime directory; left in place");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Ok(())
    }
}

/// SIGTERM, and SIGKILL if `pid` still runs after `grace`; returns once it is gone.
async fn end_process(pid: i32, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while alive(pid.unsigned_abs()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    while alive(pid.unsigned_abs()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PIDs of the processes running as `uid` (real uid, as `/proc/PID/status` says).
pub fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let uid = uid.to_string();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status.lines().any(|l| {
                    l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(uid.as_str())
                })
            })
        })
        .collect()
}

/// Removes workload user `user` for good: its manager stopped, whatever still runs as
/// it killed (by PID), the user and its home (its Podman storage) deleted.
pub async fn remove_user(
    managers: &dyn UserManagers,
    user: &WorkloadUser,
) -> Result<(), RuntimeError> {
    if !user.name.starts_with(USER_PREFIX) {
        return Err(RuntimeError::InvalidOptions {
            field: "user".to_owned(),
            reason: format!("{} is not a workload user", user.name),
        });
    }
    managers.stop(&user.name, Some(user.uid)).await?;
    for _ in 0..50 {
        let left = processes_of(user.uid);
        if left.is_empty() {
            break;
        }
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = Command::new("userdel")
        .args(["--remove", &user.name])
        .output()
        .await
        .map_err(|e| spawn_err("userdel", &e))?;
    // 6: no such user (removed meanwhile). 12: the home could not be removed
    // completely (userdel says why) — the user itself is gone.
    match out.status.code() {
        Some(0 | 6) => Ok(()),
        Some(12) => {
            tracing::warn!(user = %user.name, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "workload user removed; its home was not removed completely");
            Ok(())
        }
        _ => Err(failed(&format!("userdel --remove {}", user.name), &out)),
    }
}

/// Instances of each workload as units of its own user's systemd manager.
#[derive(Debug)]
pub struct RootlessHost {
    pub podman: PathBuf,
    pub managers: Box<dyn UserManagers>,
    pub cgroups: CgroupsMode,
    pub stop_timeout: Duration,
    /// One host per workload user reached so far.
    hosts: Mutex<HashMap<String, SystemdHost>>,
    /// The comment of each user in `hosts`: whose it is ([`check_owner`]).
    owners: Mutex<HashMap<String, String>>,
    /// Per workload user, what makes its host and what prepares its instances one at
    /// a time: the replicas of a new workload arrive together, and each would
    /// otherwise start a manager of its own and copy the image into the same storage.
    gates: std::sync::Mutex<HashMap<String, Arc<UserGates>>>,
}

/// See `RootlessHost::gates`.
#[derive(Debug, Default)]
struct UserGates {
    making: Mutex<()>,
    preparing: Mutex<()>,
}

impl RootlessHost {
    pub fn new(podman: PathBuf, managers: Box<dyn UserManagers>) -> Self {
        Self {
            podman,
            managers,
            cgroups: CgroupsMode::default(),
            stop_timeout: Duration::from_secs(10),
            hosts: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            gates: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn gates(&self, name: &str) -> Arc<UserGates> {
        self.gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The host of workload user `name`: the user (made if `make`), its manager
    /// running, its bus reached with its credentials. Only making an instance exist
    /// (`prepare`, `ensure`) makes the user: looking at instances must not bring back
    /// a user `--purge-volumes` just removed.
    async fn host(
        &self,
        name: &str,
        owner: Option<(&str, &str)>,
        make: bool,
    ) -> Result<SystemdHost, RuntimeError> {
        if let Some(h) = self.cached(name, owner).await? {
            return Ok(h);
        }
        // One maker per user; whoever waited finds the host made.
        let gates = self.gates(name);
        let _making = gates.making.lock().await;
        if let Some(h) = self.cached(name, owner).await? {
            return Ok(h);
        }
        let user = if make {
            let comment =
                owner.map_or_else(String::new, |(ns, wl)| crate::users::owner_comment(ns, wl));
            ensure_user(name, &comment).await?
        } else {
            lookup_user(name)
                .await?
                .ok_or_else(|| RuntimeError::NotFound(format!("workload user {name}")))?
        };
        if let Some((ns, wl)) = owner {
            check_owner(&user, ns, wl)?;
        }
        self.owners
            .lock()
            .await
            .insert(name.to_owned(), user.comment.clone());
        let runtime_dir = self.managers.ensure(&user).await?;
        let bus = format!("unix:path={}", runtime_dir.join("bus").display());
        let systemd = Systemd::connect_as(&bus, user.uid, user.gid).await?;
        let host = SystemdHost {
            units: Units {
                systemd,
                unit_dir: runtime_dir.join("systemd").join("user"),
                trusted_base: Some(runtime_dir.clone()),
                owner: Some((user.uid, user.gid)),
                podman: self.podman.clone(),
                cgroups: self.cgroups,
                stop_timeout: self.stop_timeout,
            },
            podman: Podman::new(&self.podman).as_user(RunAs {
                uid: user.uid,
                gid: user.gid,
                home: user.home.clone(),
                runtime_dir,
            }),
            image_source: Some(Podman::new(&self.podman)),
        };
        self.hosts
            .lock()
            .await
            .insert(name.to_owned(), host.clone());
        Ok(host)
    }

    /// The host already made for user `name`, checked like a new one: whose it is.
    async fn cached(
        &self,
        name: &str,
        owner: Option<(&str, &str)>,
    ) -> Result<Option<SystemdHost>, RuntimeError> {
        let Some(h) = self.hosts.lock().await.get(name).cloned() else {
            return Ok(None);
        };
        if let Some((ns, wl)) = owner {
            let comment = self.owners.lock().await.get(name).cloned();
            comment_allows(name, comment.as_deref().unwrap_or(LEGACY_COMMENT), ns, wl)?;
        }
        Ok(Some(h))
    }

    /// The host of an instance's workload user, which exists already.
    async fn host_for(&self, desired: &DesiredInstance) -> Result<SystemdHost, RuntimeError> {
        let (ns, wl) = (&desired.opts.namespace, &desired.opts.workload);
        self.host(&workload_user(ns, wl), Some((ns, wl)), false)
            .await
    }

    /// Forgets a user's host after a failure, so the next use reaches it afresh (its
    /// manager may have died).
    async fn forget<T>(&self, name: &str, r: Result<T, RuntimeError>) -> Result<T, RuntimeError> {
        if r.is_err() {
            self.hosts.lock().await.remove(name);
        }
        r
    }

    /// The host of every workload user whose manager runs now (with a warning for
    /// those that cannot be reached). A user whose manager does not run has no
    /// instance running.
    async fn all_hosts(&self) -> Vec<SystemdHost> {
        let mut hosts = Vec::new();
        for user in workload_users() {
            let name = user.name.clone();
            match self.running_host(&user).await {
                Ok(Some(h)) => hosts.push(h),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(user = %name, error = %e, "cannot reach the workload user's systemd manager")
                }
            }
        }
        hosts
    }

    /// The host of `user` if its manager runs (`None`: no instance of it can run,
    /// or the user was removed meanwhile by a purge).
    async fn running_host(&self, user: &WorkloadUser) -> Result<Option<SystemdHost>, RuntimeError> {
        if self.managers.running(user).is_none() {
            return Ok(None);
        }
        match self.host(&user.name, None, false).await {
            Ok(h) => Ok(Some(h)),
            Err(RuntimeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl InstanceHost for RootlessHost {
    async fn present(&self) -> Result<Vec<String>, RuntimeError> {
        let mut ids = Vec::new();
        for host in self.all_hosts().await {
            ids.extend(host.present().await?);
        }
        Ok(ids)
    }

    async fn has_workload(&self, namespace: &str, workload: &str) -> Result<bool, RuntimeError> {
        // Only the workload's own user can have its instances.
        let name = workload_user(namespace, workload);
        let Some(user) = workload_users().into_iter().find(|u| u.name == name) else {
            return Ok(false);
        };
        match self.running_host(&user).await? {
            Some(h) => h.has_workload(namespace, workload).await,
            None => Ok(false),
        }
    }

    async fn prepare(&self, desired: &DesiredInstance) -> Result<(), RuntimeError> {
        let (ns, wl) = (&desired.opts.namespace, &desired.opts.workload);
        let user = workload_user(ns, wl);
        let r = match self.host(&user, Some((ns, wl)), true).await {
            Ok(h) => {
                // One at a time per user: the first copies the image into the
                // user's storage, the others then find it there.
                let gates = self.gates(&user);
                let _preparing = gates.preparing.lock().await;
                h.prepare(desired).await
            }
            Err(e) => Err(e),
        };
        self.forget(&user, r).await
    }

    async fn ensure(&self, desired: &DesiredInstance) -> Result<Ensured, RuntimeError> {
        let (ns, wl) = (&desired.opts.namespace, &desired.opts.workload);
        let user = workload_user(ns, wl);
        let r = match self.host(&user, Some((ns, wl)), true).await {
            Ok(h) => h.ensure(desired).await,
            Err(e) => Err(e),
        };
        self.forget(&user, r).await
    }

    async fn retire(&self, instance_id: &str) -> Result<(), RuntimeError> {
        for host in self.all_hosts().await {
            host.retire(instance_id).await?;
        }
        Ok(())
    }

    async fn observe(&self, desired: &DesiredInstance) -> Result<Observation, RuntimeError> {
        self.host_for(desired).await?.observe(desired).await
    }

    async fn exec(
        &self,
        desired: &DesiredInstance,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.host_for(desired)
            .await?
            .exec(desired, cmd, timeout)
            .await
    }

    async fn logs(
        &self,
        desired: &DesiredInstance,
        opts: &crate::LogOptions,
    ) -> Result<crate::LogReceiver, RuntimeError> {
        self.host_for(desired).await?.logs(desired, opts).await
    }

    async fn remove_workload(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Option<String>, RuntimeError> {
        let name = workload_user(namespace, workload);
        let _lock = users_lock().await?;
        self.hosts.lock().await.remove(&name);
        self.owners.lock().await.remove(&name);
        // The user is gone: so are its gates (a map that would otherwise keep every
        // workload this agent ever ran).
        self.gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&name);
        let Some(user) = lookup_user(&name).await? else {
            // Gone already (another agent on this host removed it): this agent's
            // manager of it went with its processes; its runtime directory goes now.
            self.managers.stop(&name, None).await?;
            return Ok(None);
        };
        check_owner(&user, namespace, workload)?;
        remove_user(self.managers.as_ref(), &user).await?;
        tracing::info!(user = %name, "removed the workload user, its storage and its manager");
        Ok(Some(format!("workload user {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_signals_only_the_workload_users_own_manager() {
        // A PID written into the user's runtime directory names a process outside
        // the manager's cgroup (init, the agent itself): not the user's.
        let me = i32::try_from(std::process::id()).unwrap();
        for pid in [1, me] {
            assert!(!is_users_process(pid, "t", "kat_wl_x", None), "{pid}");
            assert!(!is_users_process(pid, "t", "kat_wl_x", Some(0)), "{pid}");
        }
    }

    #[test]
    fn passwd_lines_are_read() {
        let u = parse_passwd_line(
            "kat_wl_default_web:x:1001:1001:KAT workload user:/home/kat_wl_default_web:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(u.name, "kat_wl_default_web");
        assert_eq!((u.uid, u.gid), (1001, 1001));
        assert_eq!(u.home, PathBuf::from("/home/kat_wl_default_web"));
        assert_eq!(parse_passwd_line("broken:x:1"), None);
        assert_eq!(parse_passwd_line("a:x:notanumber:1::/h:/bin/sh"), None);
    }

    #[test]
    fn a_user_serves_only_the_workload_its_comment_names() {
        let mut user = parse_passwd_line(
            "kat_wl_a_b_0123456789abcdef:x:1001:1001:KAT workload ns1/web:/h:/usr/sbin/nologin",
        )
        .unwrap();
        assert!(check_owner(&user, "ns1", "web").is_ok());
        let err = check_owner(&user, "ns2", "web").unwrap_err().to_string();
        assert!(
            err.contains("belongs to") && err.contains("ns1/web"),
            "{err}"
        );
        // Made before owners were recorded: taken as it is.
        user.comment = LEGACY_COMMENT.to_owned();
        assert!(check_owner(&user, "ns2", "web").is_ok());
    }

    #[test]
    fn subordinate_ranges_are_found_by_name_or_uid() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("subuid");
        std::fs::write(&file, "alice:100000:65536\n1002:165536:65536\n").unwrap();
        let user = |name: &str, uid| WorkloadUser {
            name: name.into(),
            uid,
            gid: uid,
            home: PathBuf::from("/h"),
            comment: String::new(),
        };
        assert!(has_subordinate_range(&file, &user("alice", 1001)));
        assert!(has_subordinate_range(&file, &user("bob", 1002)));
        assert!(!has_subordinate_range(&file, &user("carol", 1003)));
        assert!(!has_subordinate_range(
            &dir.path().join("missing"),
            &user("alice", 1001)
        ));
    }
}
