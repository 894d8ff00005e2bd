//! The in-memory runtime for simulations and demos (`--runtime fake`): the same
//! trait, no processes. Tests steer it: make an instance exit, crash-loop (exit as
//! soon as it starts), hang (ignore stop), or fail its health checks. A container
//! whose environment has [`FAKE_EXIT_ENV`] (`SECONDS[:CODE]`) exits by itself that long
//! after it starts — how a JOB's runs end under the fake runtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::types::{
    BuildOptions, ContainerCreateOptions, ContainerState, ContainerStatus, ContainerSummary,
    ExecOutput, Health, ImageSummary, LogLine, LogOptions, LogStream, RuntimeError,
};
use crate::{ContainerRuntime, LogReceiver};

/// How a fake container behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    #[default]
    Normal,
    /// Exits with this code whenever it is started.
    CrashLoop(i32),
    /// Does not stop when asked (stop times out; remove with force works).
    Hang,
    /// Health-check execs fail (exit 1).
    Unhealthy,
}

/// Environment variable that makes a fake container exit by itself: `SECONDS[:CODE]`.
pub const FAKE_EXIT_ENV: &str = "KAT_FAKE_EXIT";

#[derive(Debug, Clone)]
struct FakeContainer {
    status: ContainerStatus,
    behaviour: Behaviour,
    logs: Vec<LogLine>,
    starts: u32,
    /// Exits by itself this long after starting, with this code.
    exit_after: Option<(Duration, i32)>,
    /// When it last started, on tokio's clock (which a simulation pauses and moves):
    /// what `exit_after` counts from.
    started: Option<tokio::time::Instant>,
}

/// `SECONDS[:CODE]`.
fn parse_exit(text: &str) -> Option<(Duration, i32)> {
    let (secs, code) = text.split_once(':').unwrap_or((text, "0"));
    Some((
        Duration::from_secs_f64(secs.trim().parse::<f64>().ok()?.max(0.0)),
        code.trim().parse().ok()?,
    ))
}

#[derive(Debug, Default)]
struct Inner {
    containers: HashMap<String, FakeContainer>,
    images: HashSet<String>,
    /// Images whose pull fails.
    unpullable: HashSet<String>,
    /// Images whose pull takes this long (a big image, a slow registry).
    slow: HashMap<String, std::time::Duration>,
}

/// A container ID no other fake container has had, in this process or another one
/// (a restarted agent's containers are new ones): the process's ID and start time,
/// then a count, as 64 hex digits like Podman's.
fn new_container_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static ORIGIN: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let origin = *ORIGIN.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        u64::from(std::process::id()) << 40 ^ (nanos as u64)
    });
    format!("{origin:016x}{:048x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

fn poisoned() -> RuntimeError {
    RuntimeError::Spawn {
        program: "fake runtime".to_owned(),
        reason: "state lock poisoned".to_owned(),
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        f(&mut inner)
    }

    /// Makes pulls of `image` fail.
    pub fn refuse_pull(&self, image: &str) {
        let _ = self.with(|i| {
            i.unpullable.insert(image.to_owned());
            Ok(())
        });
    }

    /// Makes pulls of `image` take `delay`.
    pub fn slow_pull(&self, image: &str, delay: std::time::Duration) {
        let _ = self.with(|i| {
            i.slow.insert(image.to_owned(), delay);
            Ok(())
        });
    }

    /// Makes a running container exit with `code` now.
    pub fn exit(&self, id_or_name: &str, code: i32) -> Result<(), RuntimeError> {
        self.with(|i| {
            let c = find(i, id_or_name)?;
            exited(c, code);
            Ok(())
        })
    }

    /// Sets how a container behaves from now on (CrashLoop also stops it now).
    pub fn set_behaviour(
        &self,
        id_or_name: &str,
        behaviour: Behaviour,
    ) -> Result<(), RuntimeError> {
        self.with(|i| {
            let c = find(i, id_or_name)?;
            c.behaviour = behaviour;
            if let Behaviour::CrashLoop(code) = behaviour
                && c.status.state == ContainerState::Running
            {
                exited(c, code);
            }
            Ok(())
        })
    }

    /// Appends a line to a container's log.
    pub fn log(&self, id_or_name: &str, stream: LogStream, line: &str) -> Result<(), RuntimeError> {
        self.with(|i| {
            find(i, id_or_name)?.logs.push(LogLine {
                stream,
                line: line.as_bytes().to_vec(),
            });
            Ok(())
        })
    }

    /// How often a container has been started.
    pub fn starts(&self, id_or_name: &str) -> Result<u32, RuntimeError> {
        self.with(|i| Ok(find(i, id_or_name)?.starts))
    }
}

fn find<'a>(inner: &'a mut Inner, id_or_name: &str) -> Result<&'a mut FakeContainer, RuntimeError> {
    let key = inner
        .containers
        .iter()
        .find(|(id, c)| {
            *id == id_or_name
                || c.status.name == id_or_name
                || id.starts_with(id_or_name) && id_or_name.len() >= 12
        })
        .map(|(id, _)| id.clone())
        .ok_or_else(|| RuntimeError::NotFound(id_or_name.to_owned()))?;
    inner
        .containers
        .get_mut(&key)
        .ok_or_else(|| RuntimeError::NotFound(id_or_name.to_owned()))
}

fn exited(c: &mut FakeContainer, code: i32) {
    c.status.state = ContainerState::Exited;
    c.status.exit_code = Some(code);
    c.status.finished_at = Some(SystemTime::now());
    c.status.pid = None;
    c.status.health = Health::None;
}

fn summary(c: &FakeContainer) -> ContainerSummary {
    ContainerSummary {
        id: c.status.id.clone(),
        name: c.status.name.clone(),
        state: c.status.state,
        exit_code: c.status.exit_code,
        image: c.status.image.clone(),
        labels: c.status.labels.clone(),
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn pull_image(&self, image: &str, _platform: Option<&str>) -> Result<(), RuntimeError> {
        // A slow image is slow once: then it is in local storage.
        let delay = self.with(|i| {
            Ok(i.slow
                .get(image)
                .copied()
                .filter(|_| !i.images.contains(image)))
        })?;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.with(|i| {
            if i.unpullable.contains(image) {
                return Err(RuntimeError::Command {
                    command: format!("pull {image}"),
                    status: "exit status: 125".to_owned(),
                    stderr: format!("{image}: manifest unknown (fake)"),
                });
            }
            i.images.insert(image.to_owned());
            Ok(())
        })
    }

    async fn build_image(&self, opts: &BuildOptions) -> Result<String, RuntimeError> {
        self.with(|i| {
            i.images.insert(opts.tag.clone());
            Ok(format!("fake-image-{}", opts.tag))
        })
    }

    async fn images(&self) -> Result<Vec<ImageSummary>, RuntimeError> {
        self.with(|i| {
            Ok(i.images
                .iter()
                .map(|name| ImageSummary {
                    id: format!("fake-image-{name}"),
                    names: vec![name.clone()],
                    size: 0,
                })
                .collect())
        })
    }

    async fn create(&self, opts: &ContainerCreateOptions) -> Result<String, RuntimeError> {
        crate::podman::args::validate(opts)?;
        self.with(|i| {
            if i.containers.values().any(|c| c.status.name == opts.name) {
                return Err(RuntimeError::Command {
                    command: format!("create {}", opts.name),
                    status: "exit status: 125".to_owned(),
                    stderr: format!("the container name {:?} is already in use", opts.name),
                });
            }
            let id = new_container_id();
            let status = ContainerStatus {
                id: id.clone(),
                name: opts.name.clone(),
                state: ContainerState::Created,
                exit_code: None,
                started_at: None,
                finished_at: None,
                health: Health::None,
                image: opts.image.clone(),
                image_id: format!("fake-image-{}", opts.image),
                ip: opts.ip,
                labels: opts.all_labels(),
                pid: None,
            };
            i.containers.insert(
                id.clone(),
                FakeContainer {
                    status,
                    behaviour: Behaviour::Normal,
                    logs: Vec::new(),
                    starts: 0,
                    exit_after: opts.env.get(FAKE_EXIT_ENV).and_then(|t| parse_exit(t)),
                    started: None,
                },
            );
            Ok(id)
        })
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.with(|i| {
            let c = find(i, id)?;
            c.starts += 1;
            // Something to read with `katcall logs` in simulations and demos.
            let line = format!("fake container started (start {})", c.starts);
            c.logs.push(LogLine {
                stream: LogStream::Stdout,
                line: line.into_bytes(),
            });
            c.status.started_at = Some(SystemTime::now());
            c.started = Some(tokio::time::Instant::now());
            c.status.finished_at = None;
            c.status.exit_code = None;
            if let Behaviour::CrashLoop(code) = c.behaviour {
                exited(c, code);
            } else {
                c.status.state = ContainerState::Running;
                c.status.pid = Some(1000 + c.starts);
            }
            Ok(())
        })
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let hang = self.with(|i| {
            let c = find(i, id)?;
            if c.behaviour == Behaviour::Hang {
                return Ok(true);
            }
            if c.status.state == ContainerState::Running {
                exited(c, 143);
            }
            Ok(false)
        })?;
        if hang {
            tokio::time::sleep(timeout).await;
            return Err(RuntimeError::Timeout {
                command: format!("stop {id}"),
                after: timeout,
            });
        }
        Ok(())
    }

    async fn remove(
        &self,
        id: &str,
        force: bool,
        _remove_volumes: bool,
    ) -> Result<(), RuntimeError> {
        self.with(|i| {
            let c = find(i, id)?;
            if c.status.state == ContainerState::Running && !force {
                return Err(RuntimeError::Command {
                    command: format!("rm {id}"),
                    status: "exit status: 2".to_owned(),
                    stderr: "cannot remove a running container without force".to_owned(),
                });
            }
            let key = c.status.id.clone();
            i.containers.remove(&key);
            Ok(())
        })
    }

    async fn status(&self, id_or_name: &str) -> Result<ContainerStatus, RuntimeError> {
        self.with(|i| {
            let c = find(i, id_or_name)?;
            if let (Some((after, code)), Some(started)) = (c.exit_after, c.started)
                && c.status.state == ContainerState::Running
                && started.elapsed() >= after
            {
                exited(c, code);
            }
            Ok(c.status.clone())
        })
    }

    async fn logs(&self, id: &str, opts: &LogOptions) -> Result<LogReceiver, RuntimeError> {
        let lines = self.with(|i| Ok(find(i, id)?.logs.clone()))?;
        let skip = opts
            .tail
            .map_or(0, |t| lines.len().saturating_sub(t as usize));
        let (tx, rx) = tokio::sync::mpsc::channel(lines.len().max(1));
        for line in lines.into_iter().skip(skip) {
            let _ = tx.try_send(Ok(line));
        }
        Ok(rx)
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.with(|i| {
            let c = find(i, id)?;
            if c.status.state != ContainerState::Running {
                return Err(RuntimeError::Command {
                    command: format!("exec {id} {}", cmd.join(" ")),
                    status: "exit status: 125".to_owned(),
                    stderr: "container is not running".to_owned(),
                });
            }
            let exit_code = i32::from(c.behaviour == Behaviour::Unhealthy);
            Ok(ExecOutput {
                exit_code,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })
        })
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.with(|i| {
            let mut list: Vec<ContainerSummary> = i
                .containers
                .values()
                .filter(|c| {
                    labels
                        .iter()
                        .all(|(k, v)| c.status.labels.get(k) == Some(v))
                })
                .map(summary)
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(list)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn opts(name: &str) -> ContainerCreateOptions {
        ContainerCreateOptions {
            instance_id: name.into(),
            namespace: "default".into(),
            workload: "web".into(),
            name: name.into(),
            image: "localhost/busybox".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_fake_follows_a_container_lifecycle() {
        let rt = FakeRuntime::new();
        let id = rt.create(&opts("a")).await.unwrap();
        assert_eq!(rt.status("a").await.unwrap().state, ContainerState::Created);
        assert!(rt.create(&opts("a")).await.is_err(), "names are unique");
        rt.start(&id).await.unwrap();
        let s = rt.status(&id).await.unwrap();
        assert_eq!(s.state, ContainerState::Running);
        assert_eq!(s.labels["kat.dws.rip/instance-id"], "a");
        let exec = rt
            .exec(&id, &["true".into()], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(exec.exit_code, 0);
        assert!(rt.remove(&id, false, false).await.is_err(), "running");
        rt.stop(&id, Duration::from_secs(1)).await.unwrap();
        assert_eq!(rt.status(&id).await.unwrap().exit_code, Some(143));
        rt.remove(&id, false, false).await.unwrap();
        assert!(matches!(
            rt.status(&id).await,
            Err(RuntimeError::NotFound(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn faults_can_be_injected() {
        let rt = FakeRuntime::new();
        let id = rt.create(&opts("b")).await.unwrap();
        rt.start(&id).await.unwrap();
        rt.exit("b", 2).unwrap();
        assert_eq!(rt.status(&id).await.unwrap().exit_code, Some(2));

        rt.set_behaviour("b", Behaviour::CrashLoop(1)).unwrap();
        rt.start(&id).await.unwrap();
        let s = rt.status(&id).await.unwrap();
        assert_eq!((s.state, s.exit_code), (ContainerState::Exited, Some(1)));
        assert_eq!(rt.starts(&id).unwrap(), 2);

        rt.set_behaviour("b", Behaviour::Unhealthy).unwrap();
        rt.start(&id).await.unwrap();
        let exec = rt
            .exec(&id, &["check".into()], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(exec.exit_code, 1);

        rt.set_behaviour("b", Behaviour::Hang).unwrap();
        assert!(matches!(
            rt.stop(&id, Duration::from_secs(10)).await,
            Err(RuntimeError::Timeout { .. })
        ));
        rt.remove(&id, true, false).await.unwrap();

        rt.refuse_pull("nope:1");
        assert!(rt.pull_image("nope:1", None).await.is_err());
        rt.pull_image("ok:1", None).await.unwrap();
        assert_eq!(rt.images().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn logs_and_listing() {
        let rt = FakeRuntime::new();
        let id = rt.create(&opts("c")).await.unwrap();
        let mut other = opts("d");
        other.workload = "db".into();
        rt.create(&other).await.unwrap();
        for n in 0..5 {
            rt.log(&id, LogStream::Stdout, &format!("line {n}"))
                .unwrap();
        }
        let mut rx = rt
            .logs(
                &id,
                &LogOptions {
                    tail: Some(2),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap().line, b"line 3");
        assert_eq!(rx.recv().await.unwrap().unwrap().line, b"line 4");
        assert!(rx.recv().await.is_none());
        let mut labels = BTreeMap::new();
        labels.insert(crate::LABEL_WORKLOAD.to_owned(), "web".to_owned());
        let list = rt.list(&labels).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "c");
        assert_eq!(rt.list(&BTreeMap::new()).await.unwrap().len(), 2);
    }
}
