//! The production `StateStore`: an etcd member reached with `etcd-client`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client as ec;

use super::state_store::{
    CmpOp, Compare, EventKind, KeyValue, Lease, LeaseId, Revision, StateStore, StoreError,
    StoreMember, StoreResult, Txn, TxnOp, TxnOpResult, TxnResult, WatchEvent, WatchReceiver,
};

/// How long a member may take to answer a health probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// The longest a member's defragmentation may take (a 2 GiB file takes seconds).
const DEFRAG_TIMEOUT: Duration = Duration::from_secs(120);

/// `StateStore` over an etcd cluster. Cloning shares the connection, and
/// [`EtcdStore::reconnect`] replaces it for every clone.
#[derive(Clone)]
pub struct EtcdStore {
    connection: Arc<RwLock<Connection>>,
    endpoints: Vec<String>,
    timeout: Duration,
    /// The files this node presents to etcd (read again at each reconnect).
    files: Option<super::etcd_tls::EtcdTls>,
}

struct Connection {
    client: ec::Client,
    /// How to reach other members (probes), when etcd speaks mTLS.
    tls: Option<ec::TlsOptions>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the given endpoints (`http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String], timeout: Duration) -> StoreResult<Self> {
        Self::connect_tls(endpoints, timeout, None).await
    }

    /// Connects presenting this node's certificate (`https://` endpoints) when `tls`
    /// is given.
    pub async fn connect_tls(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<&super::etcd_tls::EtcdTls>,
    ) -> StoreResult<Self> {
        let connection = Self::open(endpoints, timeout, tls).await?;
        Ok(Self {
            connection: Arc::new(RwLock::new(connection)),
            endpoints: endpoints.to_vec(),
            timeout,
            files: tls.cloned(),
        })
    }

    async fn open(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<&super::etcd_tls::EtcdTls>,
    ) -> StoreResult<Connection> {
        let tls = tls
            .map(super::etcd_tls::EtcdTls::client_options)
            .transpose()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut options = ec::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(tls) = &tls {
            options = options.with_tls(tls.clone());
        }
        let client = ec::Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(Connection { client, tls })
    }

    /// Connects again with the certificate files as they are now (after a renewal),
    /// for this store and every clone of it. Calls under way finish on the old
    /// connection; a failure keeps the old one.
    pub async fn reconnect(&self) -> StoreResult<()> {
        let connection = Self::open(&self.endpoints, self.timeout, self.files.as_ref()).await?;
        *self
            .connection
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = connection;
        Ok(())
    }

    /// The underlying client, for operations outside `StateStore` (status, members).
    pub fn client(&self) -> ec::Client {
        self.connection
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .client
            .clone()
    }

    /// A client of one member only (status and defragment act on the member asked).
    async fn member_client(&self, url: &str, timeout: Duration) -> Result<ec::Client, ec::Error> {
        let mut options = ec::ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(timeout);
        if let Some(tls) = self.tls() {
            options = options.with_tls(tls);
        }
        ec::Client::connect([url], Some(options)).await
    }

    fn tls(&self) -> Option<ec::TlsOptions> {
        self.connection
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tls
            .clone()
    }
}

fn member(m: &ec::Member) -> StoreMember {
    StoreMember {
        id: m.id(),
        name: m.name().to_owned(),
        peer_urls: m.peer_urls().to_vec(),
        learner: m.is_learner(),
    }
}

fn unavailable(e: ec::Error) -> StoreError {
    match e {
        ec::Error::GRpcStatus(status) if status.message().contains("requested lease not found") => {
            StoreError::Other(status.message().to_owned())
        }
        ec::Error::GRpcStatus(status) if status.code() == tonic::Code::InvalidArgument => {
            StoreError::Invalid(status.message().to_owned())
        }
        ec::Error::InvalidArgs(msg) => StoreError::Invalid(msg),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Maps a lease-related failure, recognising etcd's "lease not found".
fn lease_error(lease: LeaseId, e: ec::Error) -> StoreError {
    let not_found = match &e {
        ec::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        ec::Error::LeaseKeepAliveError(msg) => msg.contains("lease not found"),
        _ => false,
    };
    if not_found {
        StoreError::LeaseNotFound(lease)
    } else {
        unavailable(e)
    }
}

fn kv_from(kv: &ec::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn op_of(op: CmpOp) -> ec::CompareOp {
    match op {
        CmpOp::Equal => ec::CompareOp::Equal,
        CmpOp::NotEqual => ec::CompareOp::NotEqual,
        CmpOp::Less => ec::CompareOp::Less,
        CmpOp::Greater => ec::CompareOp::Greater,
    }
}

fn compare_of(c: &Compare) -> ec::Compare {
    match c {
        Compare::ModRevision(k, op, v) => ec::Compare::mod_revision(k.as_str(), op_of(*op), *v),
        Compare::CreateRevision(k, op, v) => {
            ec::Compare::create_revision(k.as_str(), op_of(*op), *v)
        }
        Compare::Version(k, op, v) => ec::Compare::version(k.as_str(), op_of(*op), *v),
        Compare::Value(k, op, v) => ec::Compare::value(k.as_str(), op_of(*op), v.clone()),
    }
}

fn txn_op_of(op: &TxnOp) -> ec::TxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            let options = lease
                .filter(|l| *l != 0)
                .map(|l| ec::PutOptions::new().with_lease(l));
            ec::TxnOp::put(key.as_str(), value.clone(), options)
        }
        TxnOp::Delete { key } => ec::TxnOp::delete(key.as_str(), None),
        TxnOp::DeletePrefix { prefix } => ec::TxnOp::delete(
            prefix.as_str(),
            Some(ec::DeleteOptions::new().with_prefix()),
        ),
        TxnOp::Get { key } => ec::TxnOp::get(key.as_str(), None),
        TxnOp::List { prefix } => {
            ec::TxnOp::get(prefix.as_str(), Some(ec::GetOptions::new().with_prefix()))
        }
    }
}

fn revision_of(header: Option<&ec::ResponseHeader>) -> Revision {
    header.map_or(0, ec::ResponseHeader::revision)
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let resp = self.client().get(key, None).await.map_err(unavailable)?;
        Ok(resp.kvs().first().map(kv_from))
    }

    async fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let options = ec::GetOptions::new().with_prefix();
        let resp = self
            .client()
            .get(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        Ok((
            resp.kvs().iter().map(kv_from).collect(),
            revision_of(resp.header()),
        ))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Revision> {
        let options = lease
            .filter(|l| *l != 0)
            .map(|l| ec::PutOptions::new().with_lease(l));
        let resp = self
            .client()
            .put(key, value, options)
            .await
            .map_err(|e| lease_error(lease.unwrap_or(0), e))?;
        Ok(revision_of(resp.header()))
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let resp = self.client().delete(key, None).await.map_err(unavailable)?;
        Ok(resp.deleted() > 0)
    }

    async fn txn(&self, txn: Txn) -> StoreResult<TxnResult> {
        let lease = txn
            .then
            .iter()
            .chain(&txn.otherwise)
            .find_map(|op| match op {
                TxnOp::Put { lease: Some(l), .. } => Some(*l),
                _ => None,
            })
            .unwrap_or(0);
        let request = ec::Txn::new()
            .when(txn.compares.iter().map(compare_of).collect::<Vec<_>>())
            .and_then(txn.then.iter().map(txn_op_of).collect::<Vec<_>>())
            .or_else(txn.otherwise.iter().map(txn_op_of).collect::<Vec<_>>());
        let resp = self
            .client()
            .txn(request)
            .await
            .map_err(|e| lease_error(lease, e))?;
        let results = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                ec::TxnOpResponse::Put(_) => TxnOpResult::Put,
                ec::TxnOpResponse::Delete(d) => TxnOpResult::Delete(d.deleted()),
                ec::TxnOpResponse::Get(g) => {
                    TxnOpResult::Get(g.kvs().iter().map(kv_from).collect())
                }
                ec::TxnOpResponse::Txn(_) => TxnOpResult::Put,
            })
            .collect();
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: revision_of(resp.header()),
            results,
        })
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> StoreResult<WatchReceiver> {
        let mut options = ec::WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let mut stream = self
            .client()
            .watch(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        // The first response confirms creation, or reports a compacted start revision.
        let first = stream.message().await.map_err(unavailable)?;
        if let Some(resp) = &first
            && resp.compact_revision() > 0
        {
            return Err(StoreError::Compacted {
                requested: from_revision,
                oldest: resp.compact_revision(),
            });
        }
        let (tx, rx) = super::watch_channel();
        let mut pending = first;
        tokio::spawn(async move {
            loop {
                let Some(resp) = pending.take() else {
                    super::end_watch(
                        &tx,
                        StoreError::Unavailable("watch stream ended".to_owned()),
                    );
                    return;
                };
                if resp.compact_revision() > 0 {
                    super::end_watch(
                        &tx,
                        StoreError::Compacted {
                            requested: from_revision,
                            oldest: resp.compact_revision(),
                        },
                    );
                    return;
                }
                if resp.canceled() {
                    let reason = resp.cancel_reason().to_owned();
                    super::end_watch(
                        &tx,
                        StoreError::Unavailable(format!("watch canceled: {reason}")),
                    );
                    return;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let kind = match event.event_type() {
                        ec::EventType::Put => EventKind::Put,
                        ec::EventType::Delete => EventKind::Delete,
                    };
                    let mut kv = kv_from(kv);
                    if kind == EventKind::Delete {
                        kv = KeyValue {
                            key: kv.key,
                            mod_revision: kv.mod_revision,
                            ..Default::default()
                        };
                    }
                    if !super::deliver(&tx, Ok(WatchEvent { kind, kv })) {
                        // The receiver is gone, or too far behind: the watch is
                        // cancelled with the stream.
                        return;
                    }
                }
                tokio::select! {
                    next = stream.message() => match next {
                        Ok(resp) => pending = resp,
                        Err(e) => {
                            super::end_watch(&tx, unavailable(e));
                            return;
                        }
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }

    async fn grant_lease(&self, ttl: Duration) -> StoreResult<Lease> {
        if ttl.is_zero() {
            return Err(StoreError::Invalid(
                "a lease needs a TTL of at least 1 s".to_owned(),
            ));
        }
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs)
            .map_err(|_| StoreError::Invalid("lease TTL too large".to_owned()))?;
        let resp = self
            .client()
            .lease_grant(secs, None)
            .await
            .map_err(unavailable)?;
        Ok(Lease {
            id: resp.id(),
            ttl: Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)),
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<Duration> {
        let (mut keeper, mut responses) = self
            .client()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| lease_error(lease, e))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| lease_error(lease, e))?;
        let resp = responses
            .message()
            .await
            .map_err(|e| lease_error(lease, e))?
            .ok_or_else(|| StoreError::Unavailable("lease keep-alive stream ended".to_owned()))?;
        // etcd answers a keep-alive of an expired lease with TTL 0.
        if resp.ttl() <= 0 {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)))
    }

    async fn member_reachable(&self, member: &str) -> StoreResult<Option<bool>> {
        let members = self.client().member_list().await.map_err(unavailable)?;
        let url = members
            .members()
            .iter()
            .find(|m| m.name() == member)
            .and_then(|m| m.client_urls().first().cloned());
        let Some(url) = url else { return Ok(None) };
        let mut options = ec::ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(PROBE_TIMEOUT);
        if let Some(tls) = self.tls() {
            options = options.with_tls(tls);
        }
        let probe = async move {
            let mut client = ec::Client::connect([url], Some(options)).await?;
            client.status().await
        };
        let answered = tokio::time::timeout(PROBE_TIMEOUT * 2, probe).await;
        Ok(Some(matches!(answered, Ok(Ok(_)))))
    }

    async fn space(&self) -> StoreResult<Option<super::StoreSpace>> {
        let mut client = self.client();
        let status = client.status().await.map_err(unavailable)?;
        let revision = revision_of(status.header());
        let alarms = client
            .alarm(ec::AlarmAction::Get, ec::AlarmType::None, None)
            .await
            .map_err(unavailable)?;
        let out_of_space = alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == ec::AlarmType::Nospace);
        let members = client.member_list().await.map_err(unavailable)?;
        let mut space = Vec::new();
        for m in members.members() {
            let Some(url) = m.client_urls().first() else {
                continue;
            };
            // A member that does not answer now is left out of this look.
            if let Ok(mut c) = self.member_client(url, self.timeout).await
                && let Ok(Ok(st)) = tokio::time::timeout(self.timeout, c.status()).await
            {
                space.push(super::MemberSpace {
                    name: m.name().to_owned(),
                    db_size: st.db_size(),
                    in_use: st.raft_used_db_size(),
                });
            }
        }
        Ok(Some(super::StoreSpace {
            revision,
            members: space,
            out_of_space,
        }))
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        let options = ec::CompactionOptions::new().with_physical();
        match self.client().compact(revision, Some(options)).await {
            Ok(_) => Ok(()),
            // Compacted there (or later) already: nothing to do.
            Err(ec::Error::GRpcStatus(s)) if s.message().contains("compacted") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn defragment(&self, member: &str) -> StoreResult<()> {
        let members = self.client().member_list().await.map_err(unavailable)?;
        let Some(url) = members
            .members()
            .iter()
            .find(|m| m.name() == member)
            .and_then(|m| m.client_urls().first().cloned())
        else {
            return Err(StoreError::Invalid(format!(
                "no store member named {member:?}"
            )));
        };
        let mut client = self
            .member_client(&url, DEFRAG_TIMEOUT)
            .await
            .map_err(unavailable)?;
        // A large file takes a while; the member answers nothing meanwhile.
        tokio::time::timeout(DEFRAG_TIMEOUT, client.defragment())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "defragmenting {member} took over {DEFRAG_TIMEOUT:?}"
                ))
            })?
            .map_err(unavailable)?;
        Ok(())
    }

    async fn disarm_out_of_space(&self) -> StoreResult<()> {
        let mut client = self.client();
        let alarms = client
            .alarm(ec::AlarmAction::Get, ec::AlarmType::None, None)
            .await
            .map_err(unavailable)?;
        for a in alarms.alarms() {
            if a.alarm() == ec::AlarmType::Nospace {
                let mut options = ec::AlarmOptions::new();
                options.with_member(a.member_id());
                client
                    .alarm(
                        ec::AlarmAction::Deactivate,
                        ec::AlarmType::Nospace,
                        Some(options),
                    )
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    fn can_snapshot(&self) -> bool {
        true
    }

    async fn snapshot(&self, to: &std::path::Path) -> StoreResult<Revision> {
        use tokio::io::AsyncWriteExt;
        let file_err = |e: std::io::Error| StoreError::Other(format!("{}: {e}", to.display()));
        let mut stream = self.client().snapshot().await.map_err(unavailable)?;
        let mut file = tokio::fs::File::create(to).await.map_err(file_err)?;
        let mut revision = 0;
        while let Some(part) = stream.message().await.map_err(unavailable)? {
            if let Some(h) = part.header() {
                revision = revision.max(h.revision());
            }
            file.write_all(part.blob()).await.map_err(file_err)?;
        }
        file.sync_all().await.map_err(file_err)?;
        Ok(revision)
    }

    async fn members(&self) -> StoreResult<Vec<StoreMember>> {
        let list = self.client().member_list().await.map_err(unavailable)?;
        Ok(list.members().iter().map(member).collect())
    }

    async fn add_learner(&self, peer_url: &str) -> StoreResult<Vec<StoreMember>> {
        let added = self
            .client()
            .member_add(
                [peer_url],
                Some(ec::MemberAddOptions::new().with_is_learner()),
            )
            .await
            .map_err(unavailable)?;
        Ok(added.member_list().iter().map(member).collect())
    }

    async fn remove_member(&self, id: u64) -> StoreResult<()> {
        self.client().member_remove(id).await.map_err(unavailable)?;
        Ok(())
    }

    async fn promote(&self, id: u64) -> StoreResult<()> {
        self.client()
            .member_promote(id)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> StoreResult<()> {
        self.client()
            .lease_revoke(lease)
            .await
            .map_err(|e| lease_error(lease, e))?;
        Ok(())
    }
}
