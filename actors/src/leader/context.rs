//! [`LeaderContext`]: what the leader's API handlers work with while this node leads —
//! its [`Leadership`] (store, election fence, events lease), the cluster CA and
//! configuration, and two short-lived caches.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kat_proto::quadlet::ClusterSettings;

use crate::pki::ca::{CertAndKey, ClusterCa, node_key_and_csr};
use crate::pki::local::ClusterPki;
use crate::state::{self, Leadership, StateError, StateResult};
use crate::store::StateStore;

/// The leader's context; see the module docs.
#[derive(Clone)]
pub struct LeaderContext {
    pub leadership: Leadership,
    /// The cluster CA: node and API server certificates.
    pub ca: CertAndKey,
    /// The etcd CA: control-plane members' etcd certificates (none where the store is
    /// not etcd).
    pub etcd_ca: Option<CertAndKey>,
    /// The cluster configuration and its typed settings.
    pub settings: ClusterSettings,
    /// Control-plane API addresses, re-read at most every few seconds (every
    /// heartbeat answer carries them).
    pub control_plane: ControlPlaneCache,
    /// The certificate this leader presents to agent APIs (logs, exec).
    pub agent_client: AgentClientCert,
    /// Each node's open sync stream (one per node: a new one ends the old).
    pub syncs: SyncStreams,
}

/// The open sync stream of each node: a way to end it, and which stream it is.
#[derive(Clone, Default)]
pub struct SyncStreams(Arc<std::sync::Mutex<SyncTable>>);

#[derive(Default)]
struct SyncTable {
    next: u64,
    open: std::collections::HashMap<String, (u64, tokio::sync::oneshot::Sender<()>)>,
}

impl SyncStreams {
    /// Registers a new stream of `node`, ending the one it had; returns the stream's
    /// number (for [`SyncStreams::close`]) and what fires when a newer one replaces it.
    pub fn open(&self, node: &str) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.next += 1;
        let id = t.next;
        if let Some((_, old)) = t.open.insert(node.to_owned(), (id, tx)) {
            let _ = old.send(());
        }
        (id, rx)
    }

    /// Forgets stream `id` of `node` when it ends (unless a newer one took its place).
    pub fn close(&self, node: &str, id: u64) {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.open.get(node).is_some_and(|(open, _)| *open == id) {
            t.open.remove(node);
        }
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .open
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LeaderContext {
    pub fn new(leadership: Leadership, pki: ClusterPki, settings: ClusterSettings) -> Self {
        Self {
            leadership,
            ca: pki.cluster,
            etcd_ca: pki.etcd,
            settings,
            control_plane: ControlPlaneCache::default(),
            agent_client: AgentClientCert::default(),
            syncs: SyncStreams::default(),
        }
    }

    pub fn store(&self) -> &dyn StateStore {
        self.leadership.store()
    }

    /// The leading node's name.
    pub fn node(&self) -> &str {
        &self.leadership.node
    }
}

/// A short-lived cache of [`state::cluster::control_plane_apis`].
#[derive(Clone, Default)]
pub struct ControlPlaneCache(Arc<std::sync::Mutex<Option<CachedApis>>>);

/// When the addresses were read, and what they were.
type CachedApis = (tokio::time::Instant, Vec<String>);

impl ControlPlaneCache {
    const FRESH_FOR: Duration = Duration::from_secs(5);

    /// Drops the cached addresses: the next [`get`](Self::get) reads the store.
    pub fn forget(&self) {
        if let Ok(mut cached) = self.0.lock() {
            *cached = None;
        }
    }

    /// The addresses, read from the store when the cached ones are older than 5 s.
    pub async fn get(&self, store: &dyn StateStore) -> Vec<String> {
        if let Ok(cached) = self.0.lock()
            && let Some((at, apis)) = cached.as_ref()
            && at.elapsed() < Self::FRESH_FOR
        {
            return apis.clone();
        }
        match state::cluster::control_plane_apis(store).await {
            Ok(apis) => {
                if let Ok(mut cached) = self.0.lock() {
                    *cached = Some((tokio::time::Instant::now(), apis.clone()));
                }
                apis
            }
            Err(_) => Vec::new(),
        }
    }
}

/// Longest lifetime of the leader's agent-client certificate (shorter when the
/// cluster's certificate lifetime is); a new one is made after half of it.
const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The leader's client certificate for agent calls, made once per half lifetime.
#[derive(Clone, Default)]
pub struct AgentClientCert(Arc<std::sync::Mutex<Option<(Instant, CertAndKey)>>>);

impl AgentClientCert {
    pub(super) fn get(
        &self,
        ca: &CertAndKey,
        node: &str,
        address: IpAddr,
        lifetime: Duration,
    ) -> StateResult<CertAndKey> {
        let lifetime = lifetime.min(CLIENT_CERT_VALIDITY);
        let mut cached = self.0.lock().map_err(|_| {
            StateError::Internal("agent client certificate cache poisoned".to_owned())
        })?;
        if let Some((made, cert)) = cached.as_ref()
            && made.elapsed() < lifetime / 2
        {
            return Ok(cert.clone());
        }
        let failed = |e: crate::pki::ca::PkiError| {
            StateError::Internal(format!(
                "cannot make the leader's agent client certificate: {e}"
            ))
        };
        let (key_pem, csr_pem) = node_key_and_csr(node).map_err(failed)?;
        let cert_pem = ClusterCa::from_pem(ca)
            .and_then(|ca| ca.sign_node_csr(&csr_pem, node, address, lifetime))
            .map_err(failed)?;
        let cert = CertAndKey { cert_pem, key_pem };
        *cached = Some((Instant::now(), cert.clone()));
        Ok(cert)
    }
}

/// A node certificate speaks only for its own node: `caller` (the name in the
/// certificate) may `verb` ("report", "renew", "sync") only for `claimed` when they
/// are the same.
pub fn speaks_for(caller: &str, claimed: &str, verb: &str) -> StateResult<()> {
    if claimed == caller {
        return Ok(());
    }
    Err(StateError::Denied(format!(
        "this certificate belongs to node {caller:?}; it cannot {verb} for {claimed:?}"
    )))
}

/// Whether the certificate whose public key hashes to `key` is one node `node` may
/// present now: one its record lists (the current one, or the one it renewed from).
/// A deleted node has no record, so its certificates are refused; a node that joined
/// again under the same name has a new key, so the old holder's certificate is
/// refused. A record from before keys were recorded lists none and accepts any (its
/// next renewal records one). Ok(true): the key is the newest of two, and the older
/// one can go ([`confirm_certificate`]).
pub async fn certificate_is_current(
    ctx: &LeaderContext,
    node: &str,
    key: &str,
) -> StateResult<bool> {
    key_is_current(ctx.store(), node, key).await
}

/// [`certificate_is_current`] against `store`.
pub(super) async fn key_is_current(
    store: &dyn StateStore,
    node: &str,
    key: &str,
) -> StateResult<bool> {
    let (registered, _) = state::nodes::read(store, node).await.map_err(|e| match e {
        StateError::NotFound(_) => StateError::NotFound(format!(
            "node {node:?} is not registered (deleted?); its certificate is no longer accepted"
        )),
        other => other,
    })?;
    key_is_listed(&registered, key)
}

/// [`certificate_is_current`] against node `registered`'s record, read already.
pub(super) fn key_is_listed(
    registered: &kat_proto::v1alpha1::Node,
    key: &str,
) -> StateResult<bool> {
    let keys: &[String] = registered
        .spec
        .as_ref()
        .map_or(&[], |s| s.certificate_key_sha256.as_slice());
    if keys.is_empty() || keys.iter().any(|k| k == key) {
        return Ok(keys.len() > 1 && keys[0] == key);
    }
    let node = registered.metadata.as_ref().map_or("", |m| m.name.as_str());
    Err(StateError::Unauthenticated(format!(
        "this certificate of node {node:?} was replaced or revoked; the node has to join again"
    )))
}

/// The node has shown the certificate its last renewal made: the one it renewed from
/// is no longer accepted (whoever might hold that old key cannot renew with it and
/// push the node's current key out).
pub async fn confirm_certificate(
    ctx: &LeaderContext,
    node: &str,
    key: &str,
    now: std::time::SystemTime,
) -> StateResult<()> {
    let confirm = |n: &mut kat_proto::v1alpha1::Node| {
        let spec = n.spec.get_or_insert_with(Default::default);
        if spec.certificate_key_sha256.first().map(String::as_str) == Some(key) {
            spec.certificate_key_sha256.truncate(1);
        }
        Ok(
            "the node uses its renewed certificate; the one before it is no longer accepted"
                .to_owned(),
        )
    };
    state::nodes::update(&ctx.leadership, node, "CertificateConfirmed", confirm, now).await?;
    Ok(())
}
