//! Directories and files the root agent makes inside trees that less trusted users can
//! write: a workload's volumes (its containers write them), a workload user's home and
//! runtime directory (the user writes them). Every path component below a trusted base
//! is opened relative to the one before it without following symbolic links, missing
//! directories are made with `mkdirat`, and ownership is changed on the opened
//! directory (`fchown`), never by path. A link — or anything but a directory — where a
//! directory should be is refused, so nothing outside the tree is made, opened or given
//! away (docs/security.md).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

/// An open directory and the path it was reached by (for messages).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn refused(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: a symbolic link, or not a directory, where a directory should be; refused",
            path.display()
        ),
    )
}

fn os(path: &Path, e: Errno) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

impl Dir {
    /// Opens a base directory the operator named (symbolic links in it are followed:
    /// it is trusted; what lies below it is not).
    pub fn open_base(path: &Path) -> io::Result<Self> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| os(path, e))?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory `rel` below this one, each missing component made with `mode`
    /// (when given; else a missing one is an error). `rel` must be relative and
    /// without `..`.
    pub fn subdir(&self, rel: &Path, make: Option<u32>) -> io::Result<Dir> {
        let mut fd = self.fd.try_clone()?;
        let mut path = self.path.clone();
        for component in rel.components() {
            let name = match component {
                Component::Normal(name) => name,
                Component::CurDir => continue,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: must be relative, without ..", rel.display()),
                    ));
                }
            };
            path.push(name);
            let opened = match openat(fd.as_fd(), name, DIR_FLAGS, Mode::empty()) {
                Err(Errno::ENOENT) if make.is_some() => {
                    let mode = Mode::from_bits_truncate(make.unwrap_or(0o755));
                    match mkdirat(fd.as_fd(), name, mode) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(os(&path, e)),
                    }
                    openat(fd.as_fd(), name, DIR_FLAGS, Mode::empty())
                }
                other => other,
            };
            fd = match opened {
                Ok(fd) => fd,
                Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(refused(&path)),
                Err(e) => return Err(os(&path, e)),
            };
        }
        Ok(Dir { fd, path })
    }

    /// Gives this directory to `uid`/`gid` (the open directory, not a path).
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        fchown(
            self.fd.as_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(|e| os(&self.path, e))
    }

    /// Makes `name` in this directory a new file with `mode`, opened for writing:
    /// whatever was there (a file, or a link planted in its place) is removed first,
    /// and the file is created only if nothing is there then.
    pub fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        let path = self.path.join(name);
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(os(&path, e)),
        }
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(self.fd.as_fd(), name, flags, Mode::from_bits_truncate(mode))
            .map_err(|e| os(&path, e))?;
        Ok(File::from(fd))
    }

    /// Renames `from` to `to`, both in this directory (a link at `to` is replaced, not
    /// followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        nix::fcntl::renameat(self.fd.as_fd(), from, self.fd.as_fd(), to)
            .map_err(|e| os(&self.path.join(to), e))
    }

    /// Makes sure `name` in this directory is a regular file, creating it (empty,
    /// `mode`) if missing and leaving an existing one as it is, unopened for writing.
    /// A link, FIFO, device or directory there is refused.
    pub fn ensure_file(&self, name: &str, mode: u32) -> io::Result<()> {
        let path = self.path.join(name);
        let look = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(self.fd.as_fd(), name, look, Mode::empty()) {
            Ok(fd) => {
                let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| os(&path, e))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{}: a symbolic link, or not a regular file, where a file should be; refused",
                            path.display()
                        ),
                    ))
                }
            }
            Err(Errno::ENOENT) => {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                match openat(self.fd.as_fd(), name, flags, Mode::from_bits_truncate(mode)) {
                    Ok(_) => Ok(()),
                    // Something appeared meanwhile: looked at like any existing path.
                    Err(Errno::EEXIST) => self.ensure_file(name, mode),
                    Err(e) => Err(os(&path, e)),
                }
            }
            Err(e) => Err(os(&path, e)),
        }
    }

    /// Gives file `name` in this directory to `uid`/`gid`, refusing a link.
    pub fn chown_file(&self, name: &str, uid: u32, gid: u32) -> io::Result<()> {
        let path = self.path.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(self.fd.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(refused(&path)),
            Err(e) => return Err(os(&path, e)),
        };
        fchown(
            fd.as_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(|e| os(&path, e))
    }
}

/// Runs `f` on a thread of its own whose credentials are `uid`/`gid` with no
/// supplementary groups, so what it does the kernel checks as that user's (by its
/// uid and primary group; a directory it could reach only through another group is
/// refused): the root agent never makes, for a workload, what the workload's own user
/// could not (a `hostMount` of `/etc/nologin`). The thread ends with `f`; the agent's
/// other threads keep root's credentials. (Changing a thread's uid clears the
/// process's "dumpable" flag, as the systemd connection as a user already does: the
/// agent then leaves no core dump.)
pub fn as_user<T: Send + 'static>(
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let thread = std::thread::Builder::new()
        .name(format!("as-uid-{uid}"))
        .spawn(move || {
            drop_thread_credentials(uid, gid)?;
            Ok(f())
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other(format!("the thread running as uid {uid} panicked")))?
}

/// Sets this thread's groups, gid and uid by raw system calls. (The libc wrappers, and
/// nix's, change every thread of the process; the kernel keeps credentials per thread.)
/// Only where these are the 32-bit-id calls (on i686 and armv7 they are the 16-bit
/// ones, and the `*32` calls would be needed).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn drop_thread_credentials(uid: u32, gid: u32) -> io::Result<()> {
    let check = |r: libc::c_long, what: &str| {
        if r == 0 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            Err(io::Error::new(
                e.kind(),
                format!("{what} for uid {uid}: {e}"),
            ))
        }
    };
    // SAFETY: three system calls that take integers (and, for setgroups, a null list
    // of length 0); no memory is read or written but the kernel's. Order matters:
    // groups and gid first, while the thread may still change them.
    #[allow(unsafe_code)]
    unsafe {
        check(
            libc::syscall(
                libc::SYS_setgroups,
                0 as libc::c_long,
                std::ptr::null::<libc::gid_t>(),
            ),
            "setgroups",
        )?;
        check(
            libc::syscall(
                libc::SYS_setresgid,
                gid as libc::c_long,
                gid as libc::c_long,
                gid as libc::c_long,
            ),
            "setresgid",
        )?;
        check(
            libc::syscall(
                libc::SYS_setresuid,
                uid as libc::c_long,
                uid as libc::c_long,
                uid as libc::c_long,
            ),
            "setresuid",
        )?;
    }
    Ok(())
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn drop_thread_credentials(uid: u32, _gid: u32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("acting as uid {uid} is built for x86_64 and aarch64 only"),
    ))
}

/// The start of a small regular file (at most `max` bytes) a less trusted user can
/// write, such as a PID file: not followed if it is a link, not waited on if it is a
/// FIFO (`None` for either, or when it is missing).
pub fn read_small(path: &Path, max: usize) -> Option<String> {
    use std::io::Read;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, Mode::empty()).ok()?;
    let file = File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(max as u64).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The end (at most `max` bytes) of a regular file a less trusted user writes, such as
/// a unit's standard error: not followed if it is a link, not waited on if it is a
/// FIFO, and only if it belongs to `owner` and has no other name (a hard link to
/// someone else's file is not read, let alone emptied). A file larger than
/// `truncate_past` is emptied (through the same descriptor) after it is read, so that
/// what a crash loop appends stays bounded.
pub fn read_tail(path: &Path, owner: u32, max: usize, truncate_past: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, Mode::empty()).ok()?;
    let mut file = File::from(fd);
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != owner || meta.nlink() != 1 {
        return None;
    }
    let len = meta.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max as u64)))
        .ok()?;
    let mut bytes = Vec::with_capacity(max.min(len as usize));
    file.by_ref()
        .take(max as u64)
        .read_to_end(&mut bytes)
        .ok()?;
    if len > truncate_past {
        let _ = file.set_len(0);
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    #[test]
    fn a_tail_is_read_only_from_an_owned_single_named_file_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let path = dir.path().join("x.err");
        std::fs::write(&path, "first\nError: the reason\n").unwrap();
        assert_eq!(
            read_tail(&path, me, 10, 1 << 20).as_deref(),
            Some("he reason\n"),
            "the last bytes"
        );
        assert!(
            read_tail(&path, me + 1, 10, 1 << 20).is_none(),
            "not its owner's"
        );
        // Another name for the file (a hard link), or a symbolic link: not read.
        let other = dir.path().join("other");
        std::fs::hard_link(&path, &other).unwrap();
        assert!(read_tail(&path, me, 10, 1 << 20).is_none());
        std::fs::remove_file(&other).unwrap();
        let link = dir.path().join("link.err");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_tail(&link, me, 10, 1 << 20).is_none());
        // Past the bound it is read, then emptied.
        std::fs::write(&path, "x".repeat(100)).unwrap();
        assert_eq!(read_tail(&path, me, 4, 50).as_deref(), Some("xxxx"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn directories_are_made_below_the_base_and_links_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = Dir::open_base(base.path()).unwrap();
        let made = dir.subdir(Path::new("a/b/c"), Some(0o755)).unwrap();
        assert!(base.path().join("a/b/c").is_dir());
        assert_eq!(made.path(), base.path().join("a/b/c"));
        // Opened again: there already, nothing made.
        dir.subdir(Path::new("a/b/c"), None).unwrap();
        // A link where a directory should be, at the end or in the middle: refused,
        // and nothing made where it points.
        std::os::unix::fs::symlink(outside.path(), base.path().join("a/link")).unwrap();
        for rel in ["a/link", "a/link/inside"] {
            let e = dir.subdir(Path::new(rel), Some(0o755)).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{rel}: {e}");
        }
        assert!(!outside.path().join("inside").exists());
        // A file where a directory should be.
        std::fs::write(base.path().join("a/file"), "x").unwrap();
        assert!(dir.subdir(Path::new("a/file/x"), Some(0o755)).is_err());
        assert!(dir.subdir(Path::new("../x"), Some(0o755)).is_err());
        assert!(dir.subdir(Path::new("a/missing"), None).is_err());
    }

    #[test]
    fn a_file_is_made_in_place_of_a_planted_link() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, base.path().join("log")).unwrap();
        let dir = Dir::open_base(base.path()).unwrap();
        let mut f = dir.create_file("log", 0o600).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(base.path().join("log")).unwrap(),
            "new"
        );
        std::os::unix::fs::symlink(&target, base.path().join("link")).unwrap();
        assert!(dir.chown_file("link", 0, 0).is_err());
        assert_eq!(
            read_small(&base.path().join("log"), 2).as_deref(),
            Some("ne")
        );
        assert_eq!(
            read_small(&base.path().join("link"), 10),
            None,
            "a link is not read"
        );
        nix::unistd::mkfifo(&base.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            read_small(&base.path().join("fifo"), 10),
            None,
            "a FIFO is not waited on"
        );
    }
}
