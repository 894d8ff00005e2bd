//! The NodeCerts actor (SPEC §3, §6), on every node with a state directory: looks at
//! the node certificate in `DIR/pki` at start and then every tenth of its life (1 s –
//! 1 h), and once it is past two thirds of its life makes a new key here, sends only
//! the CSR to the leader (`RenewCertificate`, authenticated with the current
//! certificate), writes the new pair (crash-safe: `crate::pki::local::write_pair`),
//! and tells its users: the link reconnects with it and the agent API serves it from
//! the next handshake ([`NodeCertsArgs::renewed`]). A failed attempt is retried at the
//! next check; the old certificate stays valid meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::RenewCertificateRequest;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::link::LeaderLink;
use crate::pki::ca::{
    CertAndKey, needs_renewal, node_key_and_csr, renewal_check_interval, validity_of,
};
use crate::pki::local::PkiDir;

/// Counts renewals of the node certificate; whoever serves or presents it watches it.
pub type RenewedSignal = Arc<tokio::sync::watch::Sender<u64>>;

#[derive(Clone)]
pub struct NodeCertsArgs {
    pub node: String,
    pub pki_dir: PathBuf,
    /// Control-plane API addresses, tried in turn.
    pub targets: Vec<String>,
    pub link: Arc<dyn LeaderLink>,
    /// The longest time between two looks at the certificate.
    pub check_every: Duration,
    pub now: fn() -> SystemTime,
    /// Bumped after each renewal is written.
    pub renewed: RenewedSignal,
}

pub enum NodeCertsMsg {
    Check,
    /// Replies with the number of renewals so far.
    Renewals(ractor::RpcReplyPort<u64>),
}

pub struct NodeCertsState {
    args: NodeCertsArgs,
    renewals: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct NodeCerts;

impl NodeCerts {
    pub fn name(node: &str) -> String {
        format!("node-certs@{node}")
    }
}

impl NodeCertsState {
    /// When to look again after a failure to read the certificate.
    fn retry(&self) -> Duration {
        self.args.check_every.min(Duration::from_secs(60))
    }

    /// Renews if due; Ok(true) if a new certificate was written. Also says when to
    /// look next.
    async fn check(&mut self) -> (Result<bool, String>, Duration) {
        let pki = PkiDir(self.args.pki_dir.clone());
        let cert = match pki.read_node_pair() {
            Ok(pair) => pair.cert_pem,
            Err(e) => return (Err(e.to_string()), self.retry()),
        };
        let (not_before, not_after) = match validity_of(&cert) {
            Ok(v) => v,
            Err(e) => return (Err(e.to_string()), self.retry()),
        };
        let next = renewal_check_interval(not_before, not_after).min(self.args.check_every);
        let now = time::OffsetDateTime::from((self.args.now)());
        if !needs_renewal(not_before, not_after, now) {
            return (Ok(false), next);
        }
        (self.renew(&pki).await, next)
    }

    async fn renew(&mut self, pki: &PkiDir) -> Result<bool, String> {
        let (key_pem, csr_pem) = node_key_and_csr(&self.args.node).map_err(|e| e.to_string())?;
        let mut last = String::from("no control-plane address known");
        for target in &self.args.targets {
            let request = RenewCertificateRequest {
                node_name: self.args.node.clone(),
                csr_pem: csr_pem.clone(),
            };
            match self.args.link.renew(target, request).await {
                Ok(response) => {
                    let pair = CertAndKey {
                        cert_pem: response.certificate_pem,
                        key_pem,
                    };
                    pki.write_node_pair(&pair).map_err(|e| e.to_string())?;
                    self.args.link.reload();
                    self.args.renewed.send_modify(|n| *n += 1);
                    return Ok(true);
                }
                Err(e) => last = format!("{target}: {e}"),
            }
        }
        Err(last)
    }
}

impl Actor for NodeCerts {
    type Msg = NodeCertsMsg;
    type State = NodeCertsState;
    type Arguments = NodeCertsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeCertsMsg>,
        args: NodeCertsArgs,
    ) -> Result<NodeCertsState, ActorProcessingErr> {
        let _ = myself.cast(NodeCertsMsg::Check);
        Ok(NodeCertsState { args, renewals: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeCertsMsg>,
        msg: NodeCertsMsg,
        state: &mut NodeCertsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeCertsMsg::Renewals(reply) => {
                let _ = reply.send(state.renewals);
            }
            NodeCertsMsg::Check => {
                let (result, next) = state.check().await;
                match result {
                    Ok(true) => {
                        state.renewals += 1;
                        tracing::info!(node = %state.args.node, "node certificate renewed");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(node = %state.args.node, error = %e, "node certificate renewal failed; retrying at the next check");
                    }
                }
                myself.send_after(next, || NodeCertsMsg::Check);
            }
        }
        Ok(())
    }
}
