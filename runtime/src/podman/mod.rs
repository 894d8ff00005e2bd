//! The Podman backend: each operation is one `podman` command (arguments from
//! [`args`], JSON read by [`inspect`]), with a timeout, stderr kept for errors, and
//! "no such container/image" turned into [`RuntimeError::NotFound`].

pub mod args;
pub mod inspect;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::types::{
    BuildOptions, ContainerCreateOptions, ContainerStatus, ContainerSummary, ExecOutput,
    ImageSummary, LogLine, LogOptions, LogStream, RuntimeError,
};
use crate::{ContainerRuntime, LogReceiver};

/// How long an ordinary Podman command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Pulls and builds may take much longer.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Podman, run as the agent's user (rootful) or with the given environment.
#[derive(Debug, Clone)]
pub struct Podman {
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// Runs every command as this user (rootless): `setpriv` drops to it first.
    user: Option<RunAs>,
}

/// An unprivileged user Podman runs as (rootless mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The user's runtime directory (its own, mode 0700).
    pub runtime_dir: PathBuf,
}

impl Podman {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            env: Vec::new(),
            user: None,
        }
    }

    /// Runs every command as `user` (rootless Podman, storage in the user's home).
    pub fn as_user(mut self, user: RunAs) -> Self {
        self.user = Some(user);
        self
    }

    /// `podman` on `PATH`, if there is one.
    pub fn find() -> Option<Self> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("podman"))
            .find(|p| p.is_file())
            .map(Self::new)
    }

    /// Adds an environment variable to every command (e.g. `XDG_RUNTIME_DIR`).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The user it runs as (rootless), if any.
    pub fn run_as(&self) -> Option<&RunAs> {
        self.user.as_ref()
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Whether the image is in local storage.
    pub async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        let a: Vec<String> = vec!["image".into(), "exists".into(), image.into()];
        let out = self
            .output_within(&a, COMMAND_TIMEOUT, MAX_COMMAND_OUTPUT)
            .await?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(failure(&a, &out.status, &out.stderr)),
        }
    }

    /// Pulls the image unless it is already here.
    pub async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.ensure_image_from(image, None).await
    }

    /// Makes the image present: already here; else copied from `source`'s storage
    /// when that has it (root's, for a rootless user: images side-loaded or built
    /// there need no registry); else pulled.
    pub async fn ensure_image_from(
        &self,
        image: &str,
        source: Option<&Podman>,
    ) -> Result<(), RuntimeError> {
        if self.image_exists(image).await? {
            return Ok(());
        }
        if let (Some(src), Some(user)) = (source, &self.user)
            && src.image_exists(image).await.unwrap_or(false)
        {
            match self.copy_image(src, user, image).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(%image, error = %e, "cannot copy the image from root's storage; pulling it");
                }
            }
        }
        tracing::info!(%image, "pulling image");
        self.pull_image(image, None)
            .await
            .map_err(|e| RuntimeError::ImagePull {
                image: image.to_owned(),
                reason: match e {
                    RuntimeError::Command { stderr, .. } => stderr,
                    other => other.to_string(),
                },
            })
    }

    /// `podman save` by `src`, `podman load` by this user, through an archive in the
    /// user's runtime directory (removed afterwards).
    async fn copy_image(
        &self,
        src: &Podman,
        user: &RunAs,
        image: &str,
    ) -> Result<(), RuntimeError> {
        let archive = user.runtime_dir.join(format!(
            ".kat-image-{}-{}.tar",
            std::process::id(),
            image.replace(['/', ':', '@'], "_")
        ));
        let path = archive.display().to_string();
        let result = async {
            src.run(
                &["save".into(), "-o".into(), path.clone(), image.into()],
                IMAGE_TIMEOUT,
            )
            .await?;
            std::os::unix::fs::chown(&archive, Some(user.uid), Some(user.gid)).map_err(|e| {
                RuntimeError::Spawn {
                    program: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            self.run(&["load".into(), "-i".into(), path.clone()], IMAGE_TIMEOUT)
                .await
                .map(|_| ())
        }
        .await;
        let _ = std::fs::remove_file(&archive);
        if result.is_ok() {
            tracing::info!(%image, uid = user.uid, "copied image from root's storage");
        }
        result
    }

    fn command(&self, args: &[String]) -> Command {
        let mut c = match &self.user {
            None => Command::new(&self.binary),
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(&self.binary)
                    .env_clear()
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
                    .env("HOME", &u.home)
                    .env("XDG_RUNTIME_DIR", &u.runtime_dir)
                    .current_dir(&u.home);
                c
            }
        };
        c.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    fn describe(args: &[String]) -> String {
        format!("podman {}", args.join(" "))
    }

    /// Runs one command to completion; its stdout on success.
    async fn run(&self, args: &[String], timeout: Duration) -> Result<Vec<u8>, RuntimeError> {
        let out = self
            .output_within(args, timeout, MAX_COMMAND_OUTPUT)
            .await?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(failure(args, &out.status, &out.stderr))
    }

    /// Starts a command with stdout and stderr piped.
    fn spawn_piped(&self, args: &[String]) -> Result<tokio::process::Child, RuntimeError> {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RuntimeError::Spawn {
                program: self.binary.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Runs a command to completion within `timeout`, keeping at most `limit` bytes
    /// of each of its streams (see [`read_bounded`]).
    async fn output_within(
        &self,
        args: &[String],
        timeout: Duration,
        limit: usize,
    ) -> Result<std::process::Output, RuntimeError> {
        let mut child = self.spawn_piped(args)?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let run = async move {
            let (stdout, stderr, status) = tokio::join!(
                read_bounded(stdout, limit),
                read_bounded(stderr, limit),
                child.wait()
            );
            Ok::<_, std::io::Error>(std::process::Output {
                status: status?,
                stdout: stdout?,
                stderr: stderr?,
            })
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(RuntimeError::Spawn {
                program: self.binary.display().to_string(),
                reason: e.to_string(),
            }),
            // Dropping the future kills the child (kill_on_drop).
            Err(_) => Err(RuntimeError::Timeout {
                command: Self::describe(args),
                after: timeout,
            }),
        }
    }
}

/// Podman's own answers (inspect, list) are kept up to this size.
const MAX_COMMAND_OUTPUT: usize = 16 << 20;
/// What a command run in a container (`exec`: health checks, `katcall exec`) may
/// print on each stream; more is read and dropped, and the kept part ends with
/// [`TRUNCATED`]. The container decides how much it prints: the agent does not
/// hold it.
pub const MAX_EXEC_OUTPUT: usize = 1 << 20;
/// The mark after output cut at its limit.
pub const TRUNCATED: &[u8] = b"\n[kat: output truncated]\n";
/// The longest log line passed on whole; a longer one is passed on in pieces of this
/// size.
pub const MAX_LOG_LINE: usize = 64 << 10;

/// Reads `stream` to its end, keeping the first `limit` bytes (and [`TRUNCATED`] if
/// there was more). Reading on rather than stopping lets the writer finish, so its
/// exit code still means what it says.
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(
    stream: Option<R>,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let Some(mut stream) = stream else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let mut cut = false;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        cut |= n > room;
    }
    if cut {
        kept.extend_from_slice(TRUNCATED);
    }
    Ok(kept)
}

/// A failed command as an error; "no such ..." becomes NotFound.
fn failure(args: &[String], status: &std::process::ExitStatus, stderr: &[u8]) -> RuntimeError {
    let text = String::from_utf8_lossy(stderr).trim().to_owned();
    let lower = text.to_ascii_lowercase();
    if lower.contains("no such container")
        || lower.contains("no such object")
        || lower.contains("image not known")
        || lower.contains("no container with name or id")
    {
        return RuntimeError::NotFound(args.last().cloned().unwrap_or_default());
    }
    RuntimeError::Command {
        command: Podman::describe(args),
        status: status.to_string(),
        stderr: text,
    }
}

fn parse_err(args: &[String], reason: String) -> RuntimeError {
    RuntimeError::Parse {
        command: Podman::describe(args),
        reason,
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for Podman {
    async fn pull_image(&self, image: &str, platform: Option<&str>) -> Result<(), RuntimeError> {
        self.run(&args::pull_args(image, platform), IMAGE_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn build_image(&self, opts: &BuildOptions) -> Result<String, RuntimeError> {
        let a = args::build_args(opts);
        let out = self.run(&a, IMAGE_TIMEOUT).await?;
        // The image ID is the last line podman build prints.
        String::from_utf8_lossy(&out)
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| parse_err(&a, "no image ID in the output".to_owned()))
    }

    async fn images(&self) -> Result<Vec<ImageSummary>, RuntimeError> {
        let a: Vec<String> = vec!["images".into(), "--format=json".into()];
        let out = self.run(&a, COMMAND_TIMEOUT).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| parse_err(&a, e.to_string()))?;
        Ok(v.as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| ImageSummary {
                        id: i["Id"].as_str().unwrap_or_default().to_owned(),
                        names: i["Names"]
                            .as_array()
                            .map(|n| {
                                n.iter()
                                    .filter_map(|s| s.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        size: i["Size"].as_u64().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn create(&self, opts: &ContainerCreateOptions) -> Result<String, RuntimeError> {
        args::validate(opts)?;
        let a = args::create_args(opts);
        let out = self.run(&a, COMMAND_TIMEOUT).await?;
        let id = String::from_utf8_lossy(&out).trim().to_owned();
        if id.is_empty() {
            return Err(parse_err(&a, "no container ID in the output".to_owned()));
        }
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(&args::start_args(id), COMMAND_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.run(&args::stop_args(id, timeout), timeout + COMMAND_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn remove(
        &self,
        id: &str,
        force: bool,
        remove_volumes: bool,
    ) -> Result<(), RuntimeError> {
        self.run(
            &args::remove_args(id, force, remove_volumes),
            COMMAND_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    async fn status(&self, id_or_name: &str) -> Result<ContainerStatus, RuntimeError> {
        let a = args::inspect_args(id_or_name);
        let out = self.run(&a, COMMAND_TIMEOUT).await?;
        inspect::parse_inspect(&out).map_err(|e| parse_err(&a, e))
    }

    async fn logs(&self, id: &str, opts: &LogOptions) -> Result<LogReceiver, RuntimeError> {
        // Fail now, not in the stream, when there is no such container.
        self.status(id).await?;
        let a = args::logs_args(id, opts);
        let mut child = self.spawn_piped(&a)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut out = child.stdout.take().map(BufReader::new);
        let mut err = child.stderr.take().map(BufReader::new);
        tokio::spawn(async move {
            // The child is killed when this task ends (kill_on_drop).
            let _child = child;
            while out.is_some() || err.is_some() {
                let (line, stream) = tokio::select! {
                    () = tx.closed() => return,
                    line = next_line(&mut out) => (line, LogStream::Stdout),
                    line = next_line(&mut err) => (line, LogStream::Stderr),
                };
                match line {
                    Some(line) => {
                        if tx.send(Ok(LogLine { stream, line })).await.is_err() {
                            return;
                        }
                    }
                    None => match stream {
                        LogStream::Stdout => out = None,
                        LogStream::Stderr => err = None,
                    },
                }
            }
        });
        Ok(rx)
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidOptions {
                field: "exec".to_owned(),
                reason: "no command".to_owned(),
            });
        }
        let a = args::exec_args(id, cmd);
        let out = self.output_within(&a, timeout, MAX_EXEC_OUTPUT).await?;
        // 125: podman itself failed (no such container, not running); 126/127: the
        // command could not run — an answer about the container, still an exit code.
        if out.status.code() == Some(125) {
            return Err(failure(&a, &out.status, &out.stderr));
        }
        Ok(ExecOutput {
            exit_code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let a = args::list_args(labels);
        let out = self.run(&a, COMMAND_TIMEOUT).await?;
        inspect::parse_ps(&out).map_err(|e| parse_err(&a, e))
    }
}

/// The next line of an open stream; `None` at its end (or when it is closed already,
/// in which case it waits forever, so `select!` picks the other stream). A line
/// longer than [`MAX_LOG_LINE`] comes in pieces of that size.
async fn next_line<R: tokio::io::AsyncRead + Unpin>(
    lines: &mut Option<BufReader<R>>,
) -> Option<Vec<u8>> {
    match lines {
        Some(reader) => capped_line(reader, MAX_LOG_LINE).await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Reads up to the next newline (dropped) or `cap` bytes, whichever comes first;
/// `None` at the end of the stream.
async fn capped_line<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    cap: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let window = &buf[..buf.len().min(cap - line.len())];
        if let Some(end) = window.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&window[..end]);
            reader.consume(end + 1);
            return Ok(Some(line));
        }
        let taken = window.len();
        line.extend_from_slice(window);
        reader.consume(taken);
        if line.len() >= cap {
            // A line of exactly `cap` bytes: its newline belongs to it, not to an
            // empty line after it.
            if reader.fill_buf().await?.first() == Some(&b'\n') {
                reader.consume(1);
            }
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_kept_up_to_its_limit_and_marked_when_cut() {
        let short = read_bounded(Some(&b"hello"[..]), 8).await.unwrap();
        assert_eq!(short, b"hello");
        let long = vec![b'x'; 100_000];
        let kept = read_bounded(Some(&long[..]), 1000).await.unwrap();
        assert_eq!(&kept[..1000], &long[..1000]);
        assert_eq!(&kept[1000..], TRUNCATED);
        assert!(read_bounded::<&[u8]>(None, 8).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_log_line_longer_than_the_cap_comes_in_pieces() {
        let mut text = b"short\n".to_vec();
        text.extend(std::iter::repeat_n(b'y', 25));
        text.extend_from_slice(b"\nlast");
        let mut reader = BufReader::with_capacity(7, &text[..]);
        let mut lines = Vec::new();
        while let Some(line) = capped_line(&mut reader, 10).await.unwrap() {
            lines.push(String::from_utf8(line).unwrap());
        }
        assert_eq!(
            lines,
            ["short", "yyyyyyyyyy", "yyyyyyyyyy", "yyyyy", "last"]
        );
        // Exactly the cap: one line, no empty one after it.
        let text = b"0123456789\nnext".to_vec();
        let mut reader = BufReader::with_capacity(4, &text[..]);
        let mut lines = Vec::new();
        while let Some(line) = capped_line(&mut reader, 10).await.unwrap() {
            lines.push(String::from_utf8(line).unwrap());
        }
        assert_eq!(lines, ["0123456789", "next"]);
    }
}
