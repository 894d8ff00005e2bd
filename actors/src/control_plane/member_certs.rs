//! `MemberCerts` (`member-certs@N`, control-plane members whose store is etcd): keeps
//! the member's etcd certificate (`DIR/pki/etcd.crt`, its etcd client and peer
//! identity) valid. It looks every tenth of the certificate's life (1 s – 1 h); past
//! two thirds of it, it makes a new key, signs it with the etcd CA this member holds
//! (same names, the cluster's certificate lifetime), writes the pair crash-safe
//! (`crate::pki::local::write_pair`) and has the Store connect again with it. etcd
//! itself reads its files at every new connection (client and peer), so the member
//! serves the new certificate without a restart. A failed attempt is retried at the
//! next look; the old certificate stays valid meanwhile.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use time::OffsetDateTime;

use crate::pki::ca::{
    CertAndKey, ClusterCa, needs_renewal, node_key_and_csr, renewal_check_interval, validity_of,
};
use crate::store::{EtcdTls, StoreMsg};

#[derive(Clone)]
pub struct MemberCertsArgs {
    pub node: String,
    /// The member's advertise address (a SAN of its etcd certificate).
    pub address: IpAddr,
    /// The etcd CA (this member's `DIR/pki/etcd-ca.*`).
    pub etcd_ca: CertAndKey,
    /// The files etcd serves with and the Store presents.
    pub files: EtcdTls,
    pub lifetime: Duration,
    /// The Store actor to reconnect after a renewal.
    pub store_actor: String,
    pub now: fn() -> SystemTime,
}

pub enum MemberCertsMsg {
    Check,
    /// Replies with the number of renewals so far.
    Renewals(ractor::RpcReplyPort<u64>),
}

pub struct MemberCertsState {
    args: MemberCertsArgs,
    renewals: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MemberCerts;

impl MemberCerts {
    pub fn name(node: &str) -> String {
        format!("member-certs@{node}")
    }
}

/// How long to wait after a failure to read the certificate.
const RETRY: Duration = Duration::from_secs(60);

impl MemberCertsState {
    /// Renews if due; says whether it did and when to look next.
    async fn check(&mut self) -> (Result<bool, String>, Duration) {
        let files = &self.args.files;
        let current = match crate::pki::local::read_pair(&files.cert_file, &files.key_file) {
            Ok(pair) => pair,
            Err(e) => return (Err(e.to_string()), RETRY),
        };
        let (from, until) = match validity_of(&current.cert_pem) {
            Ok(v) => v,
            Err(e) => return (Err(e.to_string()), RETRY),
        };
        let next = renewal_check_interval(from, until);
        if !needs_renewal(from, until, OffsetDateTime::from((self.args.now)())) {
            return (Ok(false), next);
        }
        (self.renew().await.map(|()| true), next)
    }

    async fn renew(&mut self) -> Result<(), String> {
        let args = &self.args;
        let (key_pem, csr_pem) = node_key_and_csr(&args.node).map_err(|e| e.to_string())?;
        let cert_pem = ClusterCa::from_pem(&args.etcd_ca)
            .and_then(|ca| ca.sign_node_csr(&csr_pem, &args.node, args.address, args.lifetime))
            .map_err(|e| e.to_string())?;
        let pair = CertAndKey { cert_pem, key_pem };
        crate::pki::local::write_pair(&args.files.cert_file, &args.files.key_file, &pair)
            .map_err(|e| e.to_string())?;
        let store = ractor::registry::where_is(args.store_actor.clone())
            .ok_or_else(|| format!("{} is not running", args.store_actor))?;
        ractor::call_t!(
            ActorRef::<StoreMsg>::from(store),
            StoreMsg::Reconnect,
            30_000
        )
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the store cannot connect with the new certificate: {e}"))
    }
}

impl Actor for MemberCerts {
    type Msg = MemberCertsMsg;
    type State = MemberCertsState;
    type Arguments = MemberCertsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MemberCertsMsg>,
        args: MemberCertsArgs,
    ) -> Result<MemberCertsState, ActorProcessingErr> {
        let _ = myself.cast(MemberCertsMsg::Check);
        Ok(MemberCertsState { args, renewals: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<MemberCertsMsg>,
        msg: MemberCertsMsg,
        state: &mut MemberCertsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MemberCertsMsg::Renewals(reply) => {
                let _ = reply.send(state.renewals);
            }
            MemberCertsMsg::Check => {
                let (result, next) = state.check().await;
                match result {
                    Ok(true) => {
                        state.renewals += 1;
                        tracing::info!(node = %state.args.node, "etcd certificate renewed");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(node = %state.args.node, error = %e, "etcd certificate renewal failed; retrying at the next check");
                    }
                }
                myself.send_after(next, || MemberCertsMsg::Check);
            }
        }
        Ok(())
    }
}
