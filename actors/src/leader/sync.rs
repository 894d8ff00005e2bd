//! A node's sync stream (SPEC §6), as the leader serves it: the peer set (every other
//! node's WireGuard key, endpoint and subnet) and the node's assignments (its
//! instances, each with the Quadlet of its generation) first, then a new peer set
//! whenever a registration changes and new assignments whenever its instances change.

use kat_proto::v1alpha1::{Node, Peer, PeerSet, SyncEvent, SyncRequest, sync_event};

use super::context::{LeaderContext, key_is_current, speaks_for};
use crate::state::{self, StateError, StateResult, keys};
use crate::store::StateStore;

/// The WireGuard peers node `caller` should have: every other registered node.
pub fn peer_set(nodes: &[Node], caller: &str) -> PeerSet {
    let peers = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.as_ref()?.name.clone();
            let spec = n.spec.as_ref()?;
            (name != caller).then(|| Peer {
                node_name: name,
                public_key: spec.wireguard_public_key.clone(),
                endpoint: spec.wireguard_endpoint.clone(),
                allowed_ips: if spec.overlay_subnet.is_empty() {
                    Vec::new()
                } else {
                    vec![spec.overlay_subnet.clone()]
                },
            })
        })
        .collect();
    PeerSet { peers }
}

async fn peers_now(store: &dyn StateStore, caller: &str) -> StateResult<(PeerSet, i64)> {
    let (nodes, revision) = state::nodes::registrations(store).await?;
    Ok((peer_set(&nodes, caller), revision))
}

/// The receiving end of a sync stream; it ends when the stream does.
pub type SyncEvents = tokio::sync::mpsc::Receiver<StateResult<SyncEvent>>;

/// Node `caller`'s sync stream, from `req.from_revision` (the peer set is sent first
/// unless the node is at this revision already; assignments always). A node may
/// follow only its own. Ends when the receiver is dropped or the store's watch breaks,
/// and with an error when the node is deleted or the certificate it opened the stream
/// with (`caller_key`; `None` in process) is no longer its own.
pub async fn sync_events(
    ctx: &LeaderContext,
    caller: &str,
    caller_key: Option<&str>,
    req: SyncRequest,
) -> StateResult<SyncEvents> {
    speaks_for(caller, &req.node_name, "sync")?;
    let from_revision = req.from_revision;
    let store = ctx.leadership.store.clone();
    let (peers, revision) = peers_now(store.as_ref(), caller).await?;
    let (assignments, assigned_at) =
        state::instances::assignments_for(store.as_ref(), caller).await?;
    let mut node_watch = store.watch(keys::NODES_PREFIX, revision + 1).await?;
    let mut instance_watch = store.watch(keys::INSTANCES_PREFIX, assigned_at + 1).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let caller = caller.to_owned();
    let caller_key = caller_key.map(str::to_owned);
    let ended = || StateError::Unavailable("the leader's watch ended; resync".to_owned());
    // One stream per node: this one ends an older one, and ends when a newer comes.
    let syncs = ctx.syncs.clone();
    let (stream_id, mut replaced) = syncs.open(&caller);
    tokio::spawn(async move {
        let _open = OpenStream {
            syncs,
            node: caller.clone(),
            id: stream_id,
        };
        // A node ahead of the store has seen a future a restore undid: it gets the
        // peers too.
        if from_revision != revision {
            let first = SyncEvent {
                revision,
                payload: Some(sync_event::Payload::Peers(peers)),
            };
            if !send(&tx, Ok(first), &mut replaced).await {
                return;
            }
        }
        // Assignments always: they are cheap, and the node's copy may be older than
        // its revision says (two watches need not arrive in revision order).
        let mut sent = assignments.clone();
        let first = SyncEvent {
            revision: assigned_at,
            payload: Some(sync_event::Payload::Assignments(assignments)),
        };
        if !send(&tx, Ok(first), &mut replaced).await {
            return;
        }
        loop {
            let update = tokio::select! {
                () = tx.closed() => return,
                _ = &mut replaced => {
                    // Said if there is room; a node that reads nothing learns it
                    // when the stream closes.
                    let _ = tx.try_send(Err(StateError::Unavailable(
                        "a newer sync stream of this node replaced this one".to_owned(),
                    )));
                    return;
                }
                event = node_watch.recv() => {
                    let Some(Ok(mut last)) = event else {
                        let _ = tx.try_send(Err(ended()));
                        return;
                    };
                    // A burst of changes becomes one update.
                    while let Ok(Ok(next)) = node_watch.try_recv() {
                        last = next;
                    }
                    // Deleted, or its certificate replaced: the stream ends here.
                    if let Some(key) = &caller_key
                        && let Err(e) = key_is_current(store.as_ref(), &caller, key).await
                    {
                        let _ = tx.try_send(Err(e));
                        return;
                    }
                    peers_now(store.as_ref(), &caller).await.map(|(peers, revision)| {
                        Some(SyncEvent {
                            revision: revision.max(last.kv.mod_revision),
                            payload: Some(sync_event::Payload::Peers(peers)),
                        })
                    })
                }
                event = instance_watch.recv() => {
                    let Some(Ok(first)) = event else {
                        let _ = tx.try_send(Err(ended()));
                        return;
                    };
                    let mut burst = vec![first];
                    while let Ok(Ok(next)) = instance_watch.try_recv() {
                        burst.push(next);
                    }
                    let last = burst[burst.len() - 1].clone();
                    if !concerns(&burst, &caller, &sent) {
                        continue;
                    }
                    match state::instances::assignments_for(store.as_ref(), &caller).await {
                        Ok((set, _)) if set == sent => Ok(None),
                        Ok((set, revision)) => {
                            sent = set.clone();
                            Ok(Some(SyncEvent {
                                revision: revision.max(last.kv.mod_revision),
                                payload: Some(sync_event::Payload::Assignments(set)),
                            }))
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            let update = match update {
                Ok(None) => continue,
                Ok(Some(event)) => Ok(event),
                Err(e) => Err(e),
            };
            let failed = update.is_err();
            if !send(&tx, update, &mut replaced).await || failed {
                return;
            }
        }
    });
    Ok(rx)
}

/// Sends `item` on the stream; false (the stream is over) when the node went, or a
/// newer stream replaced this one while the node was not reading.
async fn send(
    tx: &tokio::sync::mpsc::Sender<StateResult<SyncEvent>>,
    item: StateResult<SyncEvent>,
    replaced: &mut tokio::sync::oneshot::Receiver<()>,
) -> bool {
    tokio::select! {
        sent = tx.send(item) => sent.is_ok(),
        _ = replaced => false,
    }
}

/// Forgets a node's stream when its task ends, however it ends.
struct OpenStream {
    syncs: super::context::SyncStreams,
    node: String,
    id: u64,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.syncs.close(&self.node, self.id);
    }
}

/// Whether a burst of changes to instance records concerns `node`: an instance placed
/// there now, or one it was sent (moved, stopped or deleted). Other nodes' changes
/// cost a node's stream nothing (no list of every instance).
fn concerns(
    burst: &[crate::store::WatchEvent],
    node: &str,
    sent: &kat_proto::v1alpha1::AssignmentSet,
) -> bool {
    use prost::Message;
    let had = |key: &str| {
        let id = key.rsplit('/').next().unwrap_or_default();
        sent.assignments
            .iter()
            .any(|a| a.instance.as_ref().is_some_and(|i| i.id == id))
    };
    burst.iter().any(|e| {
        had(&e.kv.key)
            || kat_proto::v1alpha1::Instance::decode(e.kv.value.as_slice())
                .is_ok_and(|i| i.node == node)
    })
}
