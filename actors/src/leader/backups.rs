//! etcd snapshots (SPEC §5.4): the leader writes one every `backupIntervalMinutes`
//! (0: never) and on demand (`katcall backup`, `POST /v1alpha1/backups`) into
//! `backupPath` on its own disk, keeping the newest [`KEEP_BACKUPS`] and at most
//! [`KEEP_BACKUP_BYTES`] of them. Snapshots are made one at a time, and each is
//! checked against the checksum etcd ends it with before it is kept
//! ([`verify_snapshot`]).
//!
//! A snapshot is written to a temporary name and renamed when complete, so a listed
//! file is always whole. File names sort by time: `kat-<UTC yyyymmddThhmmssZ>-<rev>.db`.
//!
//! | actor | in | restart |
//! |---|---|---|
//! | `backups@<node>` | `leader@<node>` (one_for_one) | permanent; a failed snapshot is logged and counted, never fatal |

use std::path::Path;
use std::time::SystemTime;

use kat_proto::quadlet::ClusterSettings;
use kat_proto::v1alpha1::{Backup, EventSeverity, ObjectReference};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::pki::local::{ClusterPki, PkiDir};
use crate::state::events::object_event;
use crate::state::{Leadership, StateError, StateResult, keys};

/// How many snapshots are kept (the oldest go first).
pub const KEEP_BACKUPS: usize = 24;
/// How many bytes of snapshots are kept at most: older ones go first, the newest is
/// always kept (etcd's quota bounds one snapshot at 2 GiB).
pub const KEEP_BACKUP_BYTES: u64 = 8 << 30;

/// `kat-20261201T101500Z-42.db`.
pub fn backup_name(at: SystemTime, revision: i64) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = kat_proto::cron::civil(i64::try_from(days).unwrap_or(0));
    format!(
        "kat-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{revision}.db",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The snapshots in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Backup>, std::io::Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_prefix("kat-")
            .and_then(|s| s.strip_suffix(".db"))
        else {
            continue;
        };
        let revision = stem
            .rsplit_once('-')
            .and_then(|(_, r)| r.parse().ok())
            .unwrap_or_default();
        let meta = entry.metadata()?;
        out.push(Backup {
            name: name.clone(),
            path: entry.path().display().to_string(),
            size_bytes: meta.len(),
            revision,
            created_at: meta.modified().ok().map(kat_proto::timestamp),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Keeps the newest snapshots, at most `keep` of them and at most `max_bytes`
/// together (but always the newest), and removes the rest; also temporary files a
/// crashed snapshot left behind. Returns the removed snapshots' names.
pub fn prune(dir: &Path, keep: usize, max_bytes: u64) -> Result<Vec<String>, std::io::Error> {
    // Left by a snapshot that never finished (the agent was killed): `make` prunes
    // under the lock snapshots are made under, so none is being written now.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".partial-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let all = list(dir)?;
    let mut kept_bytes = 0u64;
    let mut removed = Vec::new();
    for (i, b) in all.iter().rev().enumerate() {
        kept_bytes = kept_bytes.saturating_add(b.size_bytes);
        if i > 0 && (i >= keep || kept_bytes > max_bytes) {
            std::fs::remove_file(&b.path)?;
            removed.push(b.name.clone());
        }
    }
    removed.reverse();
    Ok(removed)
}

/// Serializes snapshots of this process (`katcall backup` and the timer at once).
static SNAPSHOTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Checks an etcd snapshot file: etcd ends the stream with the SHA-256 of what came
/// before (which `etcdutl snapshot restore` checks too), so a cut or damaged file is
/// found here, before it is kept.
pub fn verify_snapshot(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len < 32 + 1024 {
        return Err(format!(
            "{}: {len} bytes is no etcd snapshot",
            path.display()
        ));
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = len - 32;
    let mut buffer = vec![0u8; 1 << 20];
    while left > 0 {
        let want = usize::try_from(left.min(buffer.len() as u64)).unwrap_or(buffer.len());
        file.read_exact(&mut buffer[..want])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        digest.update(&buffer[..want]);
        left -= want as u64;
    }
    let mut trailer = [0u8; 32];
    file.read_exact(&mut trailer)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if digest.finish().as_ref() == trailer {
        Ok(())
    } else {
        Err(format!(
            "{}: the snapshot's checksum does not match its contents",
            path.display()
        ))
    }
}

/// Where in `backupPath` the CAs are kept (`kat-agent restore` reads them there).
pub const CA_COPY_DIR: &str = "pki";

/// Writes a snapshot of `store` into `dir`, prunes old ones, records a `BackupMade`
/// event (fenced: a deposed leader records nothing). The cluster's CAs (`pki`, keys
/// included) are kept beside the snapshots in `pki/`, so the backup directory alone
/// is enough to restore the cluster (`kat-agent restore`).
pub async fn make(
    leadership: &Leadership,
    settings: &ClusterSettings,
    pki: &ClusterPki,
    now: SystemTime,
) -> StateResult<Backup> {
    let store = leadership.store();
    if !store.can_snapshot() {
        return Err(StateError::Unsupported(
            "this cluster's store cannot make snapshots (only etcd can)".to_owned(),
        ));
    }
    let dir = &settings.backup_dir;
    crate::files::private_dir(dir)
        .map_err(|e| StateError::Internal(format!("{}: {e}", dir.display())))?;
    // One at a time: each streams the whole database, and names must stay unique.
    let _one_at_a_time = SNAPSHOTS.lock().await;
    let partial = dir.join(format!(
        ".partial-{}-{}",
        std::process::id(),
        now.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let taken = match store.snapshot(&partial).await {
        Ok(taken) => taken,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(StateError::Unavailable(format!("snapshot failed: {e}")));
        }
    };
    if let Err(e) = tokio::task::spawn_blocking({
        let partial = partial.clone();
        move || verify_snapshot(&partial)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
    {
        let _ = std::fs::remove_file(&partial);
        return Err(StateError::Internal(format!("snapshot not kept: {e}")));
    }
    // etcd's snapshot stream may not say its revision; the store's, read right after,
    // is at least the snapshot's (names stay unique: each backup's event moves it on).
    let revision = match store.list(keys::CA).await {
        Ok((_, now_at)) => now_at.max(taken),
        Err(_) => taken,
    };
    let name = backup_name(now, revision);
    let path = dir.join(&name);
    std::fs::rename(&partial, &path)
        .map_err(|e| StateError::Internal(format!("{}: {e}", path.display())))?;
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let cas = PkiDir(dir.join(CA_COPY_DIR));
    if let Err(e) = cas.write_cluster_pki(pki) {
        tracing::warn!(dir = %cas.0.display(), error = %e, "cannot keep the CAs beside the backups; a restore will need a copy of a member's DIR/pki");
    }
    if let Err(e) = prune(dir, KEEP_BACKUPS, KEEP_BACKUP_BYTES) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove old backups");
    }
    let event = object_event(
        ObjectReference {
            kind: "Backup".to_owned(),
            namespace: String::new(),
            name: name.clone(),
            uid: String::new(),
        },
        &leadership.node,
        "BackupMade",
        EventSeverity::Normal,
        format!(
            "etcd snapshot at revision {revision}: {} ({size} bytes)",
            path.display()
        ),
        now,
    );
    let put = leadership.event_op(event).await;
    if let Err(e) = leadership.commit([], [put]).await {
        tracing::warn!(error = %e, "backup made, but its event was not recorded");
    }
    tracing::info!(path = %path.display(), revision, size, "backup made");
    Ok(Backup {
        name,
        path: path.display().to_string(),
        size_bytes: size,
        revision,
        created_at: Some(kat_proto::timestamp(now)),
    })
}

/// The snapshots the leader keeps.
pub fn kept(settings: &ClusterSettings) -> StateResult<Vec<Backup>> {
    let dir = &settings.backup_dir;
    list(dir).map_err(|e| StateError::Internal(format!("{}: {e}", dir.display())))
}

#[derive(Clone)]
pub struct BackupsArgs {
    pub leadership: Leadership,
    pub settings: ClusterSettings,
    pub pki: ClusterPki,
    pub now: fn() -> SystemTime,
}

pub enum BackupsMsg {
    Tick,
}

pub struct BackupsState {
    args: BackupsArgs,
    timer: Option<ractor::concurrency::JoinHandle<()>>,
    /// Snapshots made and failed (for tests and metrics).
    pub made: u64,
    pub failed: u64,
}

/// Periodic snapshots; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backups;

impl Backups {
    pub fn name(node: &str) -> String {
        format!("backups@{node}")
    }
}

impl Actor for Backups {
    type Msg = BackupsMsg;
    type State = BackupsState;
    type Arguments = BackupsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BackupsMsg>,
        args: BackupsArgs,
    ) -> Result<BackupsState, ActorProcessingErr> {
        let interval = args
            .settings
            .backup_interval
            .filter(|_| args.leadership.store.can_snapshot());
        let timer = interval.map(|every| myself.send_interval(every, || BackupsMsg::Tick));
        Ok(BackupsState {
            args,
            timer,
            made: 0,
            failed: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BackupsMsg>,
        msg: BackupsMsg,
        state: &mut BackupsState,
    ) -> Result<(), ActorProcessingErr> {
        let BackupsMsg::Tick = msg;
        let args = &state.args;
        match make(&args.leadership, &args.settings, &args.pki, (args.now)()).await {
            Ok(_) => state.made += 1,
            Err(e) => {
                state.failed += 1;
                tracing::warn!(error = %e, "periodic backup failed; next try at the next interval");
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BackupsMsg>,
        state: &mut BackupsState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_sort_by_time_and_carry_the_revision() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_796_119_200 + 3723);
        assert_eq!(backup_name(at, 42), "kat-20261201T110203Z-42.db");
        assert_eq!(
            backup_name(std::time::UNIX_EPOCH, 1),
            "kat-19700101T000000Z-1.db"
        );
        assert_eq!(
            backup_name(std::time::UNIX_EPOCH + Duration::from_secs(951_782_400), 1),
            "kat-20000229T000000Z-1.db"
        );
    }

    #[test]
    fn listing_and_pruning_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (i, name) in [
            "kat-20261201T100000Z-5.db",
            "kat-20261201T090000Z-3.db",
            "kat-20261201T110000Z-9.db",
            "not-a-backup.txt",
            ".partial-1",
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(dir.path().join(name), vec![0u8; i + 1])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let names = |v: Vec<Backup>| v.into_iter().map(|b| b.name).collect::<Vec<_>>();
        let listed = list(dir.path()).unwrap_or_default();
        assert_eq!(listed[0].revision, 3);
        assert_eq!(
            names(listed),
            [
                "kat-20261201T090000Z-3.db",
                "kat-20261201T100000Z-5.db",
                "kat-20261201T110000Z-9.db"
            ]
        );
        let removed = prune(dir.path(), 2, u64::MAX).unwrap_or_default();
        assert_eq!(removed, ["kat-20261201T090000Z-3.db"]);
        assert!(
            !dir.path().join(".partial-1").exists(),
            "what a killed snapshot left goes too"
        );
        assert_eq!(list(dir.path()).unwrap_or_default().len(), 2);
        // By size too: the newest (2 bytes) and the next (3 bytes) fit in 5 bytes.
        std::fs::write(dir.path().join("kat-20261201T120000Z-11.db"), [0u8; 2])
            .unwrap_or_else(|e| panic!("{e}"));
        let removed = prune(dir.path(), 10, 5).unwrap_or_default();
        assert_eq!(removed, ["kat-20261201T100000Z-5.db"]);
        // The newest stays even when it alone is over the limit.
        let removed = prune(dir.path(), 10, 1).unwrap_or_default();
        assert_eq!(removed, ["kat-20261201T110000Z-9.db"]);
        assert_eq!(
            names(list(dir.path()).unwrap_or_default()),
            ["kat-20261201T120000Z-11.db"]
        );
        assert!(list(&dir.path().join("missing")).is_ok_and(|v| v.is_empty()));
    }
}
