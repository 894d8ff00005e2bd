//! The cluster's own records: its identity and configuration (written once), the
//! cluster CA's certificate (never its key), and the control-plane members' API
//! addresses.

use kat_proto::v1alpha1::{CertificateAuthority, ClusterConfiguration};
use prost::Message;

use super::error::{StateError, StateResult};
use super::keys;
use super::leadership::Leadership;
use crate::store::{Compare, StateStore, Txn, TxnOp, TxnOpResult};

/// A new random cluster UID (RFC 4122 version 4 layout).
fn new_uid() -> StateResult<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| StateError::Internal("no randomness available for the cluster UID".into()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    ))
}

/// The value of the first read of a refused write whose else-branch read it first
/// and the election key last; [`StateError::NotLeader`] when the key is not ours.
fn first_read(leadership: &Leadership, results: &[TxnOpResult]) -> StateResult<Option<Vec<u8>>> {
    if !leadership.still_leading(results) {
        return Err(StateError::NotLeader);
    }
    Ok(match results.first() {
        Some(TxnOpResult::Get(kvs)) => kvs.first().map(|kv| kv.value.clone()),
        _ => None,
    })
}

/// Records the cluster once; returns the UID and whether this call created it.
pub async fn record(
    leadership: &Leadership,
    cluster: &ClusterConfiguration,
) -> StateResult<(String, bool)> {
    let uid = new_uid()?;
    let txn = Txn::new()
        .when([Compare::absent(keys::CLUSTER_UID), leadership.fence()])
        .and_then([
            TxnOp::put(keys::CLUSTER_UID, uid.clone()),
            TxnOp::put(keys::CLUSTER_CONFIG, cluster.encode_to_vec()),
        ])
        .or_else([
            TxnOp::get(keys::CLUSTER_UID),
            TxnOp::get(&leadership.key.key),
        ]);
    let result = leadership.store.txn(txn).await?;
    if result.succeeded {
        return Ok((uid, true));
    }
    match first_read(leadership, &result.results)? {
        Some(uid) => Ok((String::from_utf8_lossy(&uid).into_owned(), false)),
        None => Err(StateError::Internal(
            "cluster UID missing although the write was refused".into(),
        )),
    }
}

/// Records the cluster CA's certificate at `/kat/pki/ca` once, fenced. Its key is never
/// stored: a record with one (a cluster made by kat-agent 0.1) is rewritten without
/// it. A record of another CA is refused: this member would sign certificates the
/// cluster does not trust.
pub async fn record_ca(leadership: &Leadership, ca_cert_pem: &str) -> StateResult<()> {
    let certificate_only = CertificateAuthority {
        cert_pem: ca_cert_pem.to_owned(),
        key_pem: String::new(),
    };
    let store = leadership.store();
    for _ in 0..3 {
        let stored = store.get(keys::CA).await?;
        let when = match &stored {
            None => Compare::absent(keys::CA),
            Some(kv) => {
                let record = CertificateAuthority::decode(kv.value.as_slice())
                    .map_err(|e| StateError::corrupt("the cluster CA", e))?;
                if record.cert_pem.trim() != ca_cert_pem.trim() {
                    return Err(StateError::Precondition(
                        "this member's cluster CA (DIR/pki/ca.crt) is not the cluster's; \
                         it cannot lead"
                            .to_owned(),
                    ));
                }
                if record.key_pem.is_empty() {
                    return Ok(());
                }
                Compare::unchanged(keys::CA, kv.mod_revision)
            }
        };
        let put = TxnOp::put(keys::CA, certificate_only.encode_to_vec());
        if leadership.commit([when], [put]).await? {
            match stored {
                None => tracing::info!(node = %leadership.node, "cluster CA certificate recorded"),
                Some(_) => tracing::warn!(
                    node = %leadership.node,
                    "the cluster CA's key was in etcd (a cluster made by kat-agent 0.1): removed"
                ),
            }
            return Ok(());
        }
    }
    Err(StateError::Conflict(
        "the cluster CA record kept changing".to_owned(),
    ))
}

/// Every control-plane member's API address (HOST:PORT).
pub async fn control_plane_apis(store: &dyn StateStore) -> StateResult<Vec<String>> {
    let (kvs, _) = store.list(keys::CONTROL_PLANE_PREFIX).await?;
    Ok(kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect())
}

/// The API address of control-plane member `node`, if it is one.
pub async fn control_plane_api(store: &dyn StateStore, node: &str) -> StateResult<Option<String>> {
    Ok(store
        .get(&keys::control_plane(node))
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// The name of the node leading now, per the election keys.
pub async fn leader_name(store: &dyn StateStore) -> StateResult<Option<String>> {
    Ok(crate::store::election::leader(store, keys::ELECTION_PREFIX)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}
