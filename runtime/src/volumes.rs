//! Volumes on a node (SPEC §8.3): `simpleClusterStorage` is a directory under
//! `volumeBasePath/<ns>/<workload>/<volume>`, owned by the workload's user, kept across
//! restarts and updates and removed only by [`purge`]; `hostMount` binds a host path,
//! checked or created as its `ensureType` says. [`prepare`] turns a container's
//! volume mounts into bind mounts, making what needs to exist.

use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use kat_proto::v1alpha1::{HostPathType, Volume, VolumeMount as SpecMount, volume};
use serde::{Deserialize, Serialize};

use crate::types::{RuntimeError, VolumeMount};

/// Who owns created storage (the workload's user in rootless mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn invalid(field: String, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidOptions {
        field,
        reason: reason.into(),
    }
}

fn io(path: &Path, e: &std::io::Error) -> RuntimeError {
    RuntimeError::Spawn {
        program: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// `base/<ns>/<workload>/<volume>`.
pub fn storage_dir(base: &Path, namespace: &str, workload: &str, volume: &str) -> PathBuf {
    base.join(namespace).join(workload).join(volume)
}

/// Refuses a host path with a symbolic link on the way: a container that can write
/// a host directory could plant one (`/srv/a/l -> /etc`) and have the next instance
/// mount, or create, what it points to.
fn no_links_on_the_way(path: &Path, field: &str) -> Result<(), RuntimeError> {
    let mut at = PathBuf::from("/");
    for component in path.components().skip(1) {
        at.push(component);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(
                    field.to_owned(),
                    format!(
                        "{} passes through the symbolic link {}; name the real path",
                        path.display(),
                        at.display()
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&at, &e)),
        }
    }
    Ok(())
}

/// `path`'s directory, opened from `/` one component at a time without following a
/// link (made, 0755, where missing when `make`).
fn open_host_dir(path: &Path, make: bool) -> std::io::Result<crate::safe_fs::Dir> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    crate::safe_fs::Dir::open_base(Path::new("/"))?.subdir(rel, make.then_some(0o755))
}

fn ensure_host_path(path: &Path, kind: HostPathType, field: &str) -> Result<(), RuntimeError> {
    let meta = std::fs::metadata(path);
    match kind {
        HostPathType::Unspecified | HostPathType::DirectoryOrCreate => open_host_dir(path, true)
            .map(|_| ())
            .map_err(|e| io(path, &e)),
        HostPathType::Directory => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(invalid(
                field.to_owned(),
                format!(
                    "{} is not an existing directory (ensureType DIRECTORY)",
                    path.display()
                ),
            )),
        },
        HostPathType::FileOrCreate => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(invalid(field.to_owned(), "names no file"));
            };
            open_host_dir(parent, true)
                .and_then(|dir| dir.ensure_file(&name.to_string_lossy(), 0o644))
                .map_err(|e| io(path, &e))
        }
        HostPathType::File => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(invalid(
                field.to_owned(),
                format!(
                    "{} is not an existing file (ensureType FILE)",
                    path.display()
                ),
            )),
        },
        HostPathType::Socket => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => Err(invalid(
                field.to_owned(),
                format!(
                    "{} is not an existing socket (ensureType SOCKET)",
                    path.display()
                ),
            )),
        },
    }
}

/// Something [`apply`] makes exist (or checks) before an instance starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ensure {
    /// A simpleClusterStorage directory: `rel` = `<ns>/<workload>/<volume>[/<subPath>]`
    /// below the volume base, made without following links (a container can write
    /// its volume, so it can plant one); the volume and what is below it belong to
    /// the workload.
    Storage { base: PathBuf, rel: PathBuf },
    /// A hostMount path, as its `ensureType` says (`field` names it in errors).
    HostPath {
        path: PathBuf,
        ensure_type: i32,
        field: String,
    },
}

/// What a container's `volumeMounts` need: its bind mounts, and what must exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub mounts: Vec<VolumeMount>,
    pub ensure: Vec<Ensure>,
}

/// The bind mounts for a container's `volumeMounts` and what must exist for them,
/// checked but without touching the file system. No host path may be, hold or lie in
/// the volume base or one of `protected` (KAT's directories on this node).
pub fn plan(
    base: &Path,
    protected: &[PathBuf],
    namespace: &str,
    workload: &str,
    volumes: &[Volume],
    mounts: &[SpecMount],
) -> Result<Plan, RuntimeError> {
    let mut out = Plan::default();
    for (i, m) in mounts.iter().enumerate() {
        let field = format!("container.volumeMounts[{i}]");
        let v = volumes.iter().find(|v| v.name == m.name).ok_or_else(|| {
            invalid(
                format!("{field}.name"),
                format!("no volume named {:?}", m.name),
            )
        })?;
        let sub = Path::new(&m.sub_path);
        if sub.is_absolute() || sub.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(invalid(
                format!("{field}.subPath"),
                "must be relative, without ..",
            ));
        }
        let source = match &v.source {
            Some(volume::Source::SimpleClusterStorage(_)) => {
                let rel = Path::new(namespace).join(workload).join(&v.name).join(sub);
                out.ensure.push(Ensure::Storage {
                    base: base.to_path_buf(),
                    rel: rel.clone(),
                });
                base.join(rel)
            }
            Some(volume::Source::HostMount(h)) => {
                let path = PathBuf::from(&h.host_path);
                let host_field = format!("volumes.{}.hostMount.hostPath", v.name);
                // Checked at apply too; again here for what was stored before that
                // check existed, or written to etcd some other way; and here the
                // volume base (other workloads' storage) and this node's own
                // directories are known.
                let denied: Vec<String> = std::iter::once(base)
                    .chain(protected.iter().map(PathBuf::as_path))
                    .map(|p| p.display().to_string())
                    .collect();
                let denied: Vec<&str> = denied.iter().map(String::as_str).collect();
                if let Some(problem) = kat_proto::names::host_path_problem(&h.host_path, &denied) {
                    return Err(invalid(host_field, problem));
                }
                no_links_on_the_way(&path.join(sub), &host_field)?;
                out.ensure.push(Ensure::HostPath {
                    path: path.clone(),
                    ensure_type: h.ensure_type,
                    field: host_field,
                });
                path.join(sub)
            }
            None => {
                return Err(invalid(
                    format!("volumes.{}", v.name),
                    "neither simpleClusterStorage nor hostMount",
                ));
            }
        };
        out.mounts.push(VolumeMount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only,
        });
    }
    Ok(out)
}

/// Makes a storage directory: `<ns>/<workload>` (the agent's) and then the volume and
/// its sub-path (the workload's, given to `owner`), one component at a time below
/// `base`, never following a link (`crate::safe_fs`).
fn make_storage(base: &Path, rel: &Path, owner: Option<Owner>) -> Result<(), RuntimeError> {
    let failed = |e: std::io::Error| io(&base.join(rel), &e);
    let mut components = rel.components();
    let agents: PathBuf = components.by_ref().take(2).collect();
    // The base is the operator's (volumeBasePath): made if missing, as configured.
    std::fs::create_dir_all(base).map_err(|e| io(base, &e))?;
    let root = crate::safe_fs::Dir::open_base(base).map_err(failed)?;
    let mut dir = root.subdir(&agents, Some(0o755)).map_err(failed)?;
    for component in components {
        dir = dir
            .subdir(Path::new(component.as_os_str()), Some(0o755))
            .map_err(failed)?;
        if let Some(o) = owner {
            dir.chown(o.uid, o.gid).map_err(failed)?;
        }
    }
    Ok(())
}

/// Makes what a [`plan`] needs exist: storage directories (owned by `owner`), host
/// paths as their `ensureType` says. With an `owner` (rootless), host paths of every
/// `ensureType` are checked and made as that user ([`crate::safe_fs::as_user`]): a
/// missing directory the workload's user could not make itself is an error, not made
/// by root. Every failure names the field.
pub fn apply(ensure: &[Ensure], owner: Option<Owner>) -> Result<(), RuntimeError> {
    for e in ensure {
        match e {
            Ensure::Storage { base, rel } => make_storage(base, rel, owner)?,
            Ensure::HostPath {
                path,
                ensure_type,
                field,
            } => {
                let kind =
                    HostPathType::try_from(*ensure_type).unwrap_or(HostPathType::Unspecified);
                let result = match owner {
                    None => ensure_host_path(path, kind, field),
                    Some(o) => {
                        let (p, f) = (path.clone(), field.clone());
                        crate::safe_fs::as_user(o.uid, o.gid, move || {
                            ensure_host_path(&p, kind, &f)
                        })
                        .unwrap_or_else(|e| Err(io(path, &e)))
                    }
                };
                result.map_err(|e| host_path_failed(e, path, field, owner))?;
            }
        }
    }
    Ok(())
}

/// A host path that could not be checked or made, said of its field; where the
/// workload's user was refused, with how to give it the path.
fn host_path_failed(
    e: RuntimeError,
    path: &Path,
    field: &str,
    owner: Option<Owner>,
) -> RuntimeError {
    let RuntimeError::Spawn { reason, .. } = e else {
        return e;
    };
    let reason = match owner {
        Some(o) if reason.contains("Permission denied") => format!(
            "{reason} (as the workload's user, uid {}); create {} and give it to that user \
             (chown {}:{}), or mount a path that user can write",
            o.uid,
            path.display(),
            o.uid,
            o.gid
        ),
        Some(o) => format!("{reason} (as the workload's user, uid {})", o.uid),
        None => reason,
    };
    invalid(field.to_owned(), reason)
}

/// The bind mounts for a container's `volumeMounts`, after making the storage and
/// host paths exist as their volumes say ([`plan`], then [`apply`]).
pub fn prepare(
    base: &Path,
    namespace: &str,
    workload: &str,
    volumes: &[Volume],
    mounts: &[SpecMount],
    owner: Option<Owner>,
) -> Result<Vec<VolumeMount>, RuntimeError> {
    let p = plan(base, &[], namespace, workload, volumes, mounts)?;
    apply(&p.ensure, owner)?;
    Ok(p.mounts)
}

/// Removes a workload's simpleClusterStorage (`katcall delete workload --purge-volumes`).
pub fn purge(base: &Path, namespace: &str, workload: &str) -> Result<(), RuntimeError> {
    let dir = base.join(namespace).join(workload);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&dir, &e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kat_proto::v1alpha1::{HostMount, SimpleClusterStorage};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A path below a temporary directory, read like `tempfile::TempDir`.
    struct TempPath(PathBuf);

    impl TempPath {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    fn storage(name: &str) -> Volume {
        Volume {
            name: name.into(),
            source: Some(volume::Source::SimpleClusterStorage(
                SimpleClusterStorage {},
            )),
        }
    }

    fn host(name: &str, path: &Path, kind: HostPathType) -> Volume {
        Volume {
            name: name.into(),
            source: Some(volume::Source::HostMount(HostMount {
                host_path: path.display().to_string(),
                ensure_type: kind.into(),
            })),
        }
    }

    fn mount(name: &str, at: &str, sub: &str) -> SpecMount {
        SpecMount {
            name: name.into(),
            mount_path: at.into(),
            sub_path: sub.into(),
            read_only: false,
        }
    }

    #[test]
    fn cluster_storage_is_made_owned_and_kept() {
        let parent = tempfile::tempdir().unwrap();
        // volumeBasePath need not exist yet: it is made.
        let base = parent.path().join("volumes");
        let base = &TempPath(base);
        // Giving storage to another user needs root (as the agent runs).
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        if !root {
            eprintln!("SKIPPED (ownership part): not running as root");
        }
        let owner = Owner {
            uid: 12345,
            gid: 54321,
        };
        let owner_if_root = root.then_some(owner);
        let mounts = prepare(
            base.path(),
            "default",
            "web",
            &[storage("data")],
            &[mount("data", "/data", ""), mount("data", "/logs", "logs")],
            owner_if_root,
        )
        .unwrap();
        let dir = base.path().join("default/web/data");
        assert_eq!(mounts[0].source, dir);
        assert_eq!(mounts[1].source, dir.join("logs"));
        assert!(dir.join("logs").is_dir());
        if root {
            let meta = std::fs::metadata(&dir).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid));
        }
        std::fs::write(dir.join("kept"), "x").unwrap();
        // Prepared again (a restart, an update): the data is still there.
        prepare(
            base.path(),
            "default",
            "web",
            &[storage("data")],
            &[mount("data", "/data", "")],
            None,
        )
        .unwrap();
        assert!(dir.join("kept").exists());
        purge(base.path(), "default", "web").unwrap();
        assert!(!dir.exists());
        purge(base.path(), "default", "web").unwrap();
    }

    #[test]
    fn a_sub_path_a_container_turned_into_a_link_is_refused_and_its_target_untouched() {
        // The attack: a container that mounts its volume whole replaces the directory
        // of a subPath with a link to a host directory; the next instance's prepare
        // must not make, chown or mount anything there.
        let base = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let owner = Owner {
            uid: 12345,
            gid: 54321,
        };
        let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let owner_if_root = root.then_some(owner);
        let mounts = [mount("data", "/data", ""), mount("data", "/logs", "logs")];
        prepare(
            base.path(),
            "default",
            "web",
            &[storage("data")],
            &mounts,
            owner_if_root,
        )
        .unwrap();
        let logs = base.path().join("default/web/data/logs");
        std::fs::remove_dir(&logs).unwrap();
        std::os::unix::fs::symlink(host.path(), &logs).unwrap();
        let before = std::fs::metadata(host.path()).unwrap();
        let refused = prepare(
            base.path(),
            "default",
            "web",
            &[storage("data")],
            &mounts,
            owner_if_root,
        );
        match refused {
            Err(RuntimeError::Spawn { reason, .. }) => {
                assert!(reason.contains("symbolic link"), "{reason}")
            }
            other => panic!("a linked subPath was accepted: {other:?}"),
        }
        let after = std::fs::metadata(host.path()).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode()),
            "the link's target keeps its owner and mode"
        );
        // Deeper: a link in the middle of a longer subPath.
        std::fs::remove_file(&logs).unwrap();
        std::fs::create_dir(&logs).unwrap();
        std::os::unix::fs::symlink(host.path(), logs.join("deep")).unwrap();
        let deep = [mount("data", "/x", "logs/deep/er")];
        assert!(
            prepare(
                base.path(),
                "default",
                "web",
                &[storage("data")],
                &deep,
                None
            )
            .is_err()
        );
        assert!(
            !host.path().join("er").exists(),
            "nothing made through the link"
        );
    }

    #[test]
    fn host_mounts_follow_their_ensure_type() {
        let root = tempfile::tempdir().unwrap();
        let p = |s: &str| root.path().join(s);
        // Host paths outside the volume base (which no hostMount may name).
        let base = root.path().join("volumes");
        let ok = |v: Volume| {
            prepare(&base, "n", "w", &[v], &[mount("v", "/x", "")], None)
                .map(|m| m[0].source.clone())
        };
        assert_eq!(
            ok(host("v", &p("made/dir"), HostPathType::DirectoryOrCreate)).unwrap(),
            p("made/dir")
        );
        assert!(p("made/dir").is_dir());
        assert!(ok(host("v", &p("made/file"), HostPathType::FileOrCreate)).is_ok());
        assert!(p("made/file").is_file());
        assert!(ok(host("v", &p("made/dir"), HostPathType::Directory)).is_ok());
        assert!(ok(host("v", &p("made/file"), HostPathType::File)).is_ok());
        for (path, kind) in [
            ("missing", HostPathType::Directory),
            ("made/file", HostPathType::Directory),
            ("missing", HostPathType::File),
            ("made/dir", HostPathType::File),
            ("made/file", HostPathType::Socket),
        ] {
            match ok(host("v", &p(path), kind)) {
                Err(RuntimeError::InvalidOptions { field, reason }) => {
                    assert_eq!(field, "volumes.v.hostMount.hostPath");
                    assert!(reason.contains(path), "{reason}");
                }
                other => panic!("{path} {kind:?}: {other:?}"),
            }
        }
        assert!(!p("missing").exists(), "checking creates nothing");
    }

    #[test]
    fn a_host_path_through_a_planted_link_is_refused_and_nothing_is_made_there() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let shared = root.path().join("srv/a");
        std::fs::create_dir_all(&shared).unwrap();
        // A container with srv/a mounted read-write plants a link to elsewhere.
        std::os::unix::fs::symlink(outside.path(), shared.join("l")).unwrap();
        let base = root.path().join("volumes");
        for (host_path, sub) in [(shared.join("l/made"), ""), (shared.clone(), "l/made")] {
            let v = host("v", &host_path, HostPathType::DirectoryOrCreate);
            match prepare(&base, "n", "w", &[v], &[mount("v", "/x", sub)], None) {
                Err(RuntimeError::InvalidOptions { reason, .. }) => {
                    assert!(reason.contains("symbolic link"), "{reason}");
                }
                other => panic!("{host_path:?} {sub}: {other:?}"),
            }
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Other workloads' storage is not a host path either.
        let v = host("v", &base.join("ns/other"), HostPathType::DirectoryOrCreate);
        assert!(prepare(&base, "n", "w", &[v], &[mount("v", "/x", "")], None).is_err());
    }

    #[test]
    fn a_host_mount_of_the_system_or_kats_state_is_refused_on_the_node_too() {
        let root = tempfile::tempdir().unwrap();
        let nologin = Path::new("/etc/nologin").exists();
        for path in [
            "/etc",
            "/",
            "/var/lib/kat/pki",
            "/run/podman/podman.sock",
            "/etc/nologin",
        ] {
            let v = host("v", Path::new(path), HostPathType::FileOrCreate);
            match prepare(root.path(), "n", "w", &[v], &[mount("v", "/x", "")], None) {
                Err(RuntimeError::InvalidOptions { field, reason }) => {
                    assert_eq!(field, "volumes.v.hostMount.hostPath");
                    assert!(reason.contains("which no workload may mount"), "{reason}");
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert_eq!(
            Path::new("/etc/nologin").exists(),
            nologin,
            "nothing created"
        );
        // A node's state directory wherever it is (here not /var/lib/kat), and what
        // holds it.
        let state = root.path().join("state");
        for path in [state.join("pki"), state.clone(), root.path().to_path_buf()] {
            let v = host("v", &path, HostPathType::DirectoryOrCreate);
            let refused = plan(
                &root.path().join("volumes"),
                std::slice::from_ref(&state),
                "n",
                "w",
                &[v],
                &[mount("v", "/x", "")],
            );
            match refused {
                Err(RuntimeError::InvalidOptions { reason, .. }) => {
                    assert!(reason.contains("which no workload may mount"), "{reason}");
                }
                other => panic!("{path:?}: {other:?}"),
            }
        }
        assert!(!state.exists(), "nothing created");
    }

    #[test]
    fn rootless_host_paths_are_made_as_the_workload_user_never_by_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing to a workload user's credentials needs root");
            return;
        }
        // A uid and gid no one on this machine has: what they may do is what any
        // unprivileged user may.
        let user = Owner {
            uid: 64_917,
            gid: 64_917,
        };
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = |s: &str| root.path().join(s);
        // Root's directory, like /etc; and one given to the workload's user.
        std::fs::create_dir(p("system")).unwrap();
        std::fs::create_dir(p("theirs")).unwrap();
        std::os::unix::fs::chown(p("theirs"), Some(user.uid), Some(user.gid)).unwrap();
        let base = p("volumes");
        let run = |path: &str, kind: HostPathType, owner: Option<Owner>| {
            prepare(
                &base,
                "n",
                "w",
                &[host("v", &p(path), kind)],
                &[mount("v", "/x", "")],
                owner,
            )
        };
        for (path, kind) in [
            ("system/made", HostPathType::DirectoryOrCreate),
            ("system/nologin", HostPathType::FileOrCreate),
            ("system/deeper/dir", HostPathType::DirectoryOrCreate),
        ] {
            match run(path, kind, Some(user)) {
                Err(RuntimeError::InvalidOptions { field, reason }) => {
                    assert_eq!(field, "volumes.v.hostMount.hostPath");
                    assert!(reason.contains("Permission denied"), "{reason}");
                    assert!(reason.contains("uid 64917"), "{reason}");
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert_eq!(
            std::fs::read_dir(p("system")).unwrap().count(),
            0,
            "nothing made in root's directory"
        );
        // Where the user may write, it gets what it asked for, owned by it.
        run(
            "theirs/logs/web",
            HostPathType::DirectoryOrCreate,
            Some(user),
        )
        .unwrap();
        run("theirs/state.db", HostPathType::FileOrCreate, Some(user)).unwrap();
        for made in ["theirs/logs", "theirs/logs/web", "theirs/state.db"] {
            let meta = std::fs::metadata(p(made)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{made}");
        }
        // An existing directory of root's that it may read is mounted as it is.
        run("system", HostPathType::Directory, Some(user)).unwrap();
        // Rootful instances (no owner) are made by the agent, as before.
        run("system/made", HostPathType::DirectoryOrCreate, None).unwrap();
        assert_eq!(std::fs::metadata(p("system/made")).unwrap().uid(), 0);
        // The agent's own thread kept root's credentials.
        assert!(nix::unistd::geteuid().is_root());
        assert!(nix::unistd::getuid().is_root());
    }

    #[test]
    fn file_or_create_leaves_a_file_alone_and_refuses_a_fifo_without_waiting() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("volumes");
        let file = root.path().join("kept");
        std::fs::write(&file, "data").unwrap();
        let fifo = root.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let run = |path: &Path| {
            prepare(
                &base,
                "n",
                "w",
                &[host("v", path, HostPathType::FileOrCreate)],
                &[mount("v", "/x", "")],
                None,
            )
        };
        run(&file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
        match run(&fifo) {
            Err(RuntimeError::InvalidOptions { field, reason }) => {
                assert_eq!(field, "volumes.v.hostMount.hostPath");
                assert!(reason.contains("not a regular file"), "{reason}");
            }
            other => panic!("a FIFO mounted as a file: {other:?}"),
        }
    }

    #[test]
    fn bad_mounts_name_the_field() {
        let base = tempfile::tempdir().unwrap();
        let err = |vols: &[Volume], m: SpecMount| match prepare(
            base.path(),
            "n",
            "w",
            vols,
            &[m],
            None,
        ) {
            Err(RuntimeError::InvalidOptions { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err(&[], mount("nope", "/x", "")),
            "container.volumeMounts[0].name"
        );
        assert_eq!(
            err(&[storage("d")], mount("d", "/x", "../escape")),
            "container.volumeMounts[0].subPath"
        );
        assert_eq!(
            err(
                &[host("h", Path::new("relative"), HostPathType::Directory)],
                mount("h", "/x", "")
            ),
            "volumes.h.hostMount.hostPath"
        );
    }
}
