//! Events (SPEC §5, §12): what happened to a node, workload, namespace or backup,
//! kept about an hour under `/kat/events/<id>`. Ids start with the time in
//! nanoseconds (20 digits), so a listing is in time order.
//!
//! Anyone who writes an event builds an [`EventRecord`] here and puts it into its own
//! transaction (through [`super::Leadership::event_op`]), so the change and its event
//! land together.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kat_proto::v1alpha1::{Event, EventSeverity, ListEventsRequest, ObjectReference};
use prost::Message;

use super::error::{StateError, StateResult};
use super::keys;
use crate::store::{EventKind, LeaseId, StateStore, TxnOp};

/// Events live about an hour (SPEC §5): they are written under a shared lease of
/// 70 minutes that is replaced by a fresh one every 10 minutes, so each event lasts
/// 60 to 70 minutes and the leader holds at most a handful of leases.
#[derive(Clone, Default)]
pub struct EventLease(Arc<std::sync::Mutex<Option<(LeaseId, tokio::time::Instant)>>>);

impl EventLease {
    const TTL: Duration = Duration::from_secs(70 * 60);
    const FRESH_FOR: Duration = Duration::from_secs(10 * 60);

    /// The lease to write events under; `None` if none can be granted (the event is
    /// then written without one rather than lost).
    pub async fn get(&self, store: &dyn StateStore) -> Option<LeaseId> {
        if let Ok(cached) = self.0.lock()
            && let Some((id, at)) = *cached
            && at.elapsed() < Self::FRESH_FOR
        {
            return Some(id);
        }
        match store.grant_lease(Self::TTL).await {
            Ok(lease) => {
                if let Ok(mut cached) = self.0.lock() {
                    *cached = Some((lease.id, tokio::time::Instant::now()));
                }
                Some(lease.id)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot grant the events lease; events kept without expiry");
                None
            }
        }
    }
}

/// An event and the key it is stored under.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub key: String,
    pub event: Event,
}

impl EventRecord {
    /// The write that stores it under `lease`.
    pub fn put(&self, lease: Option<LeaseId>) -> TxnOp {
        TxnOp::put_leased(self.key.clone(), self.event.encode_to_vec(), lease)
    }
}

/// An event about `involved` (on `node`, if any). Ids sort by time.
pub fn object_event(
    involved: ObjectReference,
    node: &str,
    reason: &str,
    severity: EventSeverity,
    message: String,
    now: SystemTime,
) -> EventRecord {
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let who = if involved.namespace.is_empty() {
        involved.name.clone()
    } else {
        format!("{}.{}", involved.namespace, involved.name)
    };
    let id = format!("{nanos:020}-{who}-{}", reason.to_ascii_lowercase());
    EventRecord {
        key: keys::event(&id),
        event: Event {
            id,
            time: Some(kat_proto::timestamp(now)),
            severity: severity.into(),
            reason: reason.to_owned(),
            message,
            involved_object: Some(involved),
            node: node.to_owned(),
        },
    }
}

/// A reference to the object an event is about.
fn reference(kind: &str, namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: String::new(),
    }
}

/// An event about node `name`.
pub fn node_event(
    name: &str,
    reason: &str,
    severity: EventSeverity,
    message: String,
    now: SystemTime,
) -> EventRecord {
    let involved = reference("Node", "", name);
    object_event(involved, name, reason, severity, message, now)
}

/// An event about a workload.
pub fn workload_event(
    ns: &str,
    name: &str,
    reason: &str,
    severity: EventSeverity,
    message: String,
    now: SystemTime,
) -> EventRecord {
    object_event(
        reference("Workload", ns, name),
        "",
        reason,
        severity,
        message,
        now,
    )
}

/// An event about a namespace.
pub fn namespace_event(name: &str, reason: &str, message: String, now: SystemTime) -> EventRecord {
    let involved = reference("Namespace", "", name);
    object_event(involved, "", reason, EventSeverity::Normal, message, now)
}

/// Which events a request asks for: by involved object (`kind/name`), namespace and
/// time.
pub fn event_filter(req: &ListEventsRequest) -> StateResult<impl Fn(&Event) -> bool + use<>> {
    let involved = if req.involved.is_empty() {
        None
    } else {
        let (kind, name) = req.involved.split_once('/').ok_or_else(|| {
            StateError::invalid(
                "involved",
                format!("{:?} must be kind/name, e.g. node/n1", req.involved),
            )
        })?;
        Some((kind.to_ascii_lowercase(), name.to_owned()))
    };
    let since = req.since;
    let namespace = req.namespace.clone();
    Ok(move |e: &Event| {
        involved.as_ref().is_none_or(|(kind, name)| {
            e.involved_object
                .as_ref()
                .is_some_and(|o| o.kind.to_ascii_lowercase() == *kind && o.name == *name)
        }) && since.as_ref().is_none_or(|since| {
            e.time
                .as_ref()
                .is_some_and(|t| (t.seconds, t.nanos) >= (since.seconds, since.nanos))
        }) && (namespace.is_empty()
            || e.involved_object
                .as_ref()
                .is_some_and(|o| o.namespace == namespace))
    })
}

/// Events, oldest first, filtered by involved object (`kind/name`) and time.
pub async fn list(store: &dyn StateStore, req: &ListEventsRequest) -> StateResult<Vec<Event>> {
    let keep = event_filter(req)?;
    let (kvs, _) = store.list(keys::EVENTS_PREFIX).await?;
    let mut events: Vec<Event> = kvs
        .iter()
        .filter_map(|kv| Event::decode(kv.value.as_slice()).ok())
        .filter(|e| keep(e))
        .collect();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(events)
}

/// The events a request asks for, oldest first, then each new one as it is recorded,
/// until the receiver is dropped.
pub async fn watch(
    store: Arc<dyn StateStore>,
    req: &ListEventsRequest,
) -> StateResult<tokio::sync::mpsc::Receiver<StateResult<Event>>> {
    let keep = event_filter(req)?;
    let (kvs, revision) = store.list(keys::EVENTS_PREFIX).await?;
    let mut changes = store.watch(keys::EVENTS_PREFIX, revision + 1).await?;
    let mut past: Vec<Event> = kvs
        .iter()
        .filter_map(|kv| Event::decode(kv.value.as_slice()).ok())
        .filter(|e| keep(e))
        .collect();
    past.sort_by(|a, b| a.id.cmp(&b.id));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for e in past {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        loop {
            let change = tokio::select! {
                () = tx.closed() => return,
                change = changes.recv() => change,
            };
            match change {
                None => {
                    let ended =
                        StateError::Unavailable("the event watch ended; watch again".into());
                    let _ = tx.send(Err(ended)).await;
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                Some(Ok(change)) if change.kind == EventKind::Put => {
                    if let Ok(e) = Event::decode(change.kv.value.as_slice())
                        && keep(&e)
                        && tx.send(Ok(e)).await.is_err()
                    {
                        return;
                    }
                }
                Some(Ok(_)) => {} // an event expiring
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is a failed test
    use super::*;
    use crate::store::{MemoryStore, Txn};

    #[tokio::test(start_paused = true)]
    async fn events_expire_after_about_an_hour_and_share_a_lease() {
        let store = MemoryStore::new();
        let events = EventLease::default();
        let first = events.get(&store).await.unwrap();
        assert_eq!(events.get(&store).await, Some(first), "shared while fresh");
        let txn = Txn::new().and_then([TxnOp::put_leased(
            "/kat/events/e1",
            b"x".to_vec(),
            Some(first),
        )]);
        store.txn(txn).await.unwrap();
        tokio::time::sleep(Duration::from_secs(11 * 60)).await;
        let second = events.get(&store).await.unwrap();
        assert_ne!(second, first, "a fresh lease after 10 minutes");
        tokio::time::sleep(Duration::from_secs(50 * 60)).await;
        assert!(
            store.get("/kat/events/e1").await.unwrap().is_some(),
            "61 minutes: still there"
        );
        tokio::time::sleep(Duration::from_secs(10 * 60)).await;
        assert!(
            store.get("/kat/events/e1").await.unwrap().is_none(),
            "71 minutes: gone"
        );
    }

    #[test]
    fn event_ids_sort_by_time_and_name_the_object() {
        let t = UNIX_EPOCH + Duration::from_secs(1);
        let a = workload_event(
            "ns",
            "web",
            "Scheduled",
            EventSeverity::Normal,
            "x".into(),
            t,
        );
        let b = node_event(
            "n1",
            "NodeLost",
            EventSeverity::Warning,
            "y".into(),
            t + Duration::from_nanos(1),
        );
        assert!(a.key < b.key);
        assert_eq!(a.event.id, "00000000001000000000-ns.web-scheduled");
        assert_eq!(b.event.node, "n1");
    }
}
