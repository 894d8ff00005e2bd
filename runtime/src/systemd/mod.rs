//! systemd over D-Bus with zbus (SPEC §8.2): `org.freedesktop.systemd1.Manager`'s
//! `Reload`, `StartUnit`, `StopUnit`, `ResetFailedUnit`, `LoadUnit`, and the unit's
//! `ActiveState`/`SubState`/`MainPID`/`NRestarts`, followed through
//! `PropertiesChanged`. Never `systemctl`.

pub mod unit;

use std::time::Duration;

use tokio_stream::StreamExt;
use zbus::OwnedObjectPath;

use crate::types::RuntimeError;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn reload(&self) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn inactive_exit_timestamp_monotonic(&self) -> zbus::Result<u64>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "ExecMainStatus")]
    fn exec_main_status(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
}

/// A unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    /// `active`, `activating`, `deactivating`, `inactive`, `failed`, ...
    pub active: String,
    /// `running`, `auto-restart`, `dead`, `failed`, ...
    pub sub: String,
    pub load: String,
    pub main_pid: u32,
    pub restarts: u32,
    /// Exit status of the main process's last run.
    pub exit_status: i32,
    /// `success`, `exit-code`, `start-limit-hit`, ...
    pub result: String,
    /// Whether this manager has ever started the unit (a manager that restarted, or
    /// a host that rebooted, has not).
    pub ever_started: bool,
}

fn dbus_err(what: &str) -> impl FnOnce(zbus::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Command {
        command: format!("systemd {what}"),
        status: "D-Bus error".to_owned(),
        stderr: e.to_string(),
    }
}

/// A connection to one systemd manager's bus.
#[derive(Clone)]
pub struct Systemd {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl std::fmt::Debug for Systemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Systemd").finish_non_exhaustive()
    }
}

impl Systemd {
    /// Connects to the bus at `address` (e.g. `unix:path=/run/user/1000/bus`) and
    /// subscribes to the manager's signals.
    pub async fn connect(address: &str) -> Result<Self, RuntimeError> {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(dbus_err("connect"))?;
        Self::on(conn).await
    }

    /// Connects to a workload user's bus (`unix:path=...` only) as that user: a user
    /// bus admits its own user alone, checking the connecting socket's credentials
    /// (`SO_PEERCRED`, taken at `connect`), so the socket is connected from a
    /// short-lived thread that has switched to the user's ids (per thread, by raw
    /// system call; the thread ends right after), then authenticates with the
    /// user's uid. Needs root (or CAP_SETUID/CAP_SETGID).
    pub async fn connect_as(address: &str, uid: u32, gid: u32) -> Result<Self, RuntimeError> {
        let path = address
            .strip_prefix("unix:path=")
            .map(|p| p.split(',').next().unwrap_or(p).to_owned())
            .ok_or_else(|| RuntimeError::InvalidOptions {
                field: "bus address".to_owned(),
                reason: format!("{address:?}: only unix:path= addresses can be reached as a user"),
            })?;
        let stream = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || connect_with_ids(std::path::Path::new(&path), uid, gid))
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("connecting thread panicked")))
        })
        .await
        .map_err(|e| RuntimeError::Spawn {
            program: "bus connection".to_owned(),
            reason: e.to_string(),
        })?
        .map_err(|e| RuntimeError::Command {
            command: format!("systemd connect to {address} as uid {uid}"),
            status: "connect failed".to_owned(),
            stderr: e.to_string(),
        })?;
        let conn = zbus::connection::Builder::unix_stream(stream)
            .user_id(uid)
            .build()
            .await
            .map_err(dbus_err("connect"))?;
        Self::on(conn).await
    }

    async fn on(conn: zbus::Connection) -> Result<Self, RuntimeError> {
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(dbus_err("Manager"))?;
        manager.subscribe().await.map_err(dbus_err("Subscribe"))?;
        Ok(Self { conn, manager })
    }

    pub async fn reload(&self) -> Result<(), RuntimeError> {
        self.manager.reload().await.map_err(dbus_err("Reload"))
    }

    pub async fn start(&self, unit: &str) -> Result<(), RuntimeError> {
        self.manager
            .start_unit(unit, "replace")
            .await
            .map(|_| ())
            .map_err(dbus_err("StartUnit"))
    }

    pub async fn stop(&self, unit: &str) -> Result<(), RuntimeError> {
        self.manager
            .stop_unit(unit, "replace")
            .await
            .map(|_| ())
            .map_err(dbus_err("StopUnit"))
    }

    /// Clears a failed unit's state and start-limit counter; a unit that is not
    /// failed (or not loaded) is fine.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), RuntimeError> {
        match self.manager.reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(())
            }
            Err(e) => Err(dbus_err("ResetFailedUnit")(e)),
        }
    }

    async fn path(&self, unit: &str) -> Result<OwnedObjectPath, RuntimeError> {
        self.manager
            .load_unit(unit)
            .await
            .map_err(dbus_err("LoadUnit"))
    }

    /// The unit's current state.
    pub async fn state(&self, unit: &str) -> Result<UnitState, RuntimeError> {
        let path = self.path(unit).await?;
        let u = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(dbus_err("Unit"))?;
        let s = ServiceProxy::builder(&self.conn)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(dbus_err("Service"))?;
        Ok(UnitState {
            active: u.active_state().await.map_err(dbus_err("ActiveState"))?,
            sub: u.sub_state().await.map_err(dbus_err("SubState"))?,
            load: u.load_state().await.map_err(dbus_err("LoadState"))?,
            main_pid: s.main_pid().await.unwrap_or_default(),
            restarts: s.n_restarts().await.unwrap_or_default(),
            exit_status: s.exec_main_status().await.unwrap_or_default(),
            result: s.result().await.unwrap_or_default(),
            ever_started: u
                .inactive_exit_timestamp_monotonic()
                .await
                .is_ok_and(|t| t > 0),
        })
    }

    /// Waits until `done(state)` holds, woken by the unit's `PropertiesChanged`
    /// signals (and re-reading at least every second); returns the state that held.
    pub async fn wait_for(
        &self,
        unit: &str,
        timeout: Duration,
        done: impl Fn(&UnitState) -> bool,
    ) -> Result<UnitState, RuntimeError> {
        let path = self.path(unit).await?;
        let u = UnitProxy::builder(&self.conn)
            .path(path)
            .build()
            .await
            .map_err(dbus_err("Unit"))?;
        let mut changes = u.receive_sub_state_changed().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let state = self.state(unit).await?;
            if done(&state) {
                return Ok(state);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(RuntimeError::Timeout {
                    command: format!("waiting for {unit} (last: {}/{})", state.active, state.sub),
                    after: timeout,
                });
            }
            let wait = (deadline - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, changes.next()).await;
        }
    }
}

/// Instances as units of one systemd manager: unit files in `unit_dir`, run and
/// stopped over D-Bus.
#[derive(Debug, Clone)]
pub struct Units {
    pub systemd: Systemd,
    /// A directory the manager loads units from (`$XDG_RUNTIME_DIR/systemd/user` for
    /// a user manager, `/run/systemd/system` for the system one).
    pub unit_dir: std::path::PathBuf,
    /// Where `unit_dir` lies below when a less trusted user can write the way to it (a
    /// workload user's runtime directory): every component from here on is opened
    /// without following links. `None`: `unit_dir` is root's own.
    pub trusted_base: Option<std::path::PathBuf>,
    /// Who the unit files belong to (a user manager's user); `None`: root.
    pub owner: Option<(u32, u32)>,
    pub podman: std::path::PathBuf,
    pub cgroups: unit::CgroupsMode,
    /// How long a container may take to stop before it is killed.
    pub stop_timeout: Duration,
}

impl Units {
    /// Writes the instance's unit and starts it; returns the unit's name.
    pub async fn run(
        &self,
        opts: &crate::types::ContainerCreateOptions,
    ) -> Result<String, RuntimeError> {
        crate::podman::args::validate(opts)?;
        let name = unit::unit_name(&opts.namespace, &opts.workload, &opts.instance_id);
        let env_file = self.env_file(opts);
        if let Some(file) = &env_file {
            let file_name = unit::env_file_name(&name);
            self.write_unit_file(&file_name, &unit::env_file_text(&opts.env))?;
            debug_assert_eq!(file.file_name(), Some(std::ffi::OsStr::new(&file_name)));
        }
        let text = unit::render_unit(
            opts,
            &self.podman,
            self.cgroups,
            self.stop_timeout,
            env_file.as_deref(),
            Some(&self.err_file(&name)),
        );
        self.write_unit_file(&name, &text)?;
        self.systemd.reload().await?;
        self.systemd.reset_failed(&name).await?;
        self.systemd.start(&name).await?;
        Ok(name)
    }

    /// Where the environment of `opts`'s unit is kept (`None` without one).
    pub fn env_file(
        &self,
        opts: &crate::types::ContainerCreateOptions,
    ) -> Option<std::path::PathBuf> {
        let name = unit::unit_name(&opts.namespace, &opts.workload, &opts.instance_id);
        (!opts.env.is_empty()).then(|| self.unit_dir.join(unit::env_file_name(&name)))
    }

    /// Where unit `unit`'s Podman standard error is kept ([`unit::err_file_name`]):
    /// in the manager's runtime directory where there is one (a workload user's manager
    /// opens the file as that user, who cannot write the unit directory), else beside
    /// the unit.
    pub fn err_file(&self, unit: &str) -> std::path::PathBuf {
        self.trusted_base
            .as_deref()
            .unwrap_or(&self.unit_dir)
            .join(unit::err_file_name(unit))
    }

    /// The last thing Podman complained about when starting unit `unit` (its last
    /// non-empty line of standard error, at most 300 characters, control characters
    /// dropped), if anything. The file is the workload user's to write, so it is read
    /// as untrusted: not through a link, at most its last 16 KiB; a file grown past
    /// 64 KiB (a crash loop appends every start's complaint) is emptied first.
    pub fn start_error(&self, unit: &str) -> Option<String> {
        let path = self.err_file(unit);
        // Only the file the manager made for the unit: its user's, with one name.
        let owner = self
            .owner
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |(uid, _)| uid);
        let tail = crate::safe_fs::read_tail(&path, owner, 16 << 10, 64 << 10)?;
        // Podman's own error, where there is one; else its last word (a warning).
        let lines: Vec<&str> = tail
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let line = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("Error"))
            .or_else(|| lines.last())?;
        let clean: String = line.chars().filter(|c| !c.is_control()).take(300).collect();
        (!clean.is_empty()).then_some(clean)
    }

    /// Writes unit file `name` (see [`write_unit_file`]).
    pub fn write_unit_file(&self, name: &str, text: &str) -> Result<(), RuntimeError> {
        write_unit_file(
            &self.unit_dir,
            self.trusted_base.as_deref(),
            self.owner,
            name,
            text,
        )
    }

    /// Stops the unit (its ExecStop/ExecStopPost remove the container), waits until
    /// it is inactive, and deletes the unit file.
    pub async fn remove(&self, unit: &str) -> Result<(), RuntimeError> {
        self.systemd.stop(unit).await?;
        self.systemd
            .wait_for(unit, self.stop_timeout + Duration::from_secs(30), |s| {
                s.active == "inactive" || s.active == "failed"
            })
            .await?;
        for path in [
            self.unit_dir.join(unit),
            self.unit_dir.join(unit::env_file_name(unit)),
            self.err_file(unit),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, &e)),
            }
        }
        self.systemd.reload().await?;
        self.systemd.reset_failed(unit).await
    }
}

/// Run on a thread of its own that ends afterwards: switches this thread (only) to
/// `gid`/`uid` and connects to `path`.
#[allow(unsafe_code)]
fn connect_with_ids(
    path: &std::path::Path,
    uid: u32,
    gid: u32,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    let keep = libc::uid_t::MAX; // -1: leave that id as it is
    // SAFETY: raw setresgid(2)/setresuid(2) take plain integers and change the
    // credentials of the calling thread alone (glibc's wrappers would change every
    // thread of the process); this thread exits once the socket is connected.
    unsafe {
        if libc::syscall(libc::SYS_setresgid, keep, gid, keep) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_setresuid, keep, uid, keep) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    std::os::unix::net::UnixStream::connect(path)
}

fn io_err(path: &std::path::Path, e: &std::io::Error) -> RuntimeError {
    RuntimeError::Spawn {
        program: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes unit file `name` (or an instance's env file) in `unit_dir`: 0600,
/// given to `owner`, replaced by a rename; below `trusted_base` (a directory a less
/// trusted user can write), never through a link that user planted.
pub fn write_unit_file(
    unit_dir: &std::path::Path,
    trusted_base: Option<&std::path::Path>,
    owner: Option<(u32, u32)>,
    name: &str,
    text: &str,
) -> Result<(), RuntimeError> {
    use std::io::Write;
    let failed = |e: std::io::Error| io_err(&unit_dir.join(name), &e);
    let dir = match trusted_base {
        Some(base) => {
            let rel = unit_dir.strip_prefix(base).map_err(|_| {
                failed(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("not below {}", base.display()),
                ))
            })?;
            crate::safe_fs::Dir::open_base(base)
                .and_then(|b| b.subdir(rel, Some(0o755)))
                .map_err(failed)?
        }
        None => {
            std::fs::create_dir_all(unit_dir).map_err(failed)?;
            crate::safe_fs::Dir::open_base(unit_dir).map_err(failed)?
        }
    };
    let tmp = format!(".{name}.tmp");
    let mut file = dir.create_file(&tmp, 0o600).map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    drop(file);
    if let Some((uid, gid)) = owner {
        dir.chown_file(&tmp, uid, gid).map_err(failed)?;
    }
    dir.rename(&tmp, name).map_err(failed)
}

#[cfg(test)]
mod unit_file_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn unit_files_are_private_and_never_written_through_a_planted_link() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let units = base.path().join("systemd/user");
        write_unit_file(&units, Some(base.path()), None, "kat-a.service", "[Unit]\n").unwrap();
        let written = units.join("kat-a.service");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "[Unit]\n");
        let mode = std::fs::metadata(&written).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the environment is in it");

        // The user links its unit directory elsewhere (e.g. the system manager's):
        // refused, nothing written there.
        std::fs::remove_dir_all(base.path().join("systemd")).unwrap();
        std::fs::create_dir(base.path().join("systemd")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &units).unwrap();
        let refused = write_unit_file(&units, Some(base.path()), None, "kat-b.service", "x");
        assert!(refused.is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        // A link planted at the temporary name or the unit's own name is replaced,
        // not followed.
        std::fs::remove_file(&units).unwrap();
        std::fs::create_dir(&units).unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, units.join(".kat-c.service.tmp")).unwrap();
        std::os::unix::fs::symlink(&target, units.join("kat-c.service")).unwrap();
        write_unit_file(&units, Some(base.path()), None, "kat-c.service", "unit").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(units.join("kat-c.service")).unwrap(),
            "unit"
        );
        assert!(
            !std::fs::symlink_metadata(units.join("kat-c.service"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
