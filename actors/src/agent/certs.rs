//! The NodeCerts actor (SPEC §3, §6), on every node with a state directory: checks the
//! node certificate in `DIR/pki` at start and every hour, and once it is past two
//! thirds of its life makes a new key here, sends only the CSR to the leader
//! (`RenewCertificate`, authenticated with the current certificate), writes the new
//! key (0600) and certificate, and tells the link to use them. A failed attempt is
//! retried at the next check; the old certificate stays valid meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::RenewCertificateRequest;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::link::LeaderLink;
use crate::pki::ca::{needs_renewal, node_key_and_csr, validity_of};

#[derive(Clone)]
pub struct NodeCertsArgs {
    pub node: String,
    pub pki_dir: PathBuf,
    /// Control-plane API addresses, tried in turn.
    pub targets: Vec<String>,
    pub link: Arc<dyn LeaderLink>,
    pub check_every: Duration,
    pub now: fn() -> SystemTime,
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
    /// Renews if due; Ok(true) if a new certificate was written.
    async fn check(&mut self) -> Result<bool, String> {
        let cert_path = self.args.pki_dir.join("node.crt");
        let key_path = self.args.pki_dir.join("node.key");
        let cert = match std::fs::read_to_string(&cert_path) {
            Ok(cert) => cert,
            // init's node: the leader writes it shortly.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("{}: {e}", cert_path.display())),
        };
        let (not_before, not_after) = validity_of(&cert).map_err(|e| e.to_string())?;
        let now = time::OffsetDateTime::from((self.args.now)());
        if !needs_renewal(not_before, not_after, now) {
            return Ok(false);
        }
        let (key_pem, csr_pem) = node_key_and_csr(&self.args.node).map_err(|e| e.to_string())?;
        let mut last = String::from("no control-plane address known");
        for target in &self.args.targets {
            let request = RenewCertificateRequest {
                node_name: self.args.node.clone(),
                csr_pem: csr_pem.clone(),
            };
            match self.args.link.renew(target, request).await {
                Ok(response) => {
                    // Each file is replaced atomically; only a crash between the two
                    // renames could pair the new key with the old certificate.
                    crate::files::write_atomic(&key_path, key_pem.as_bytes(), 0o600)
                        .map_err(|e| format!("{}: {e}", key_path.display()))?;
                    crate::files::write_atomic(
                        &cert_path,
                        response.certificate_pem.as_bytes(),
                        0o644,
                    )
                    .map_err(|e| format!("{}: {e}", cert_path.display()))?;
                    self.args.link.reload();
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
        myself.send_interval(args.check_every, || NodeCertsMsg::Check);
        Ok(NodeCertsState { args, renewals: 0 })
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeCertsMsg>,
        msg: NodeCertsMsg,
        state: &mut NodeCertsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeCertsMsg::Renewals(reply) => {
                let _ = reply.send(state.renewals);
            }
            NodeCertsMsg::Check => match state.check().await {
                Ok(true) => {
                    state.renewals += 1;
                    tracing::info!(node = %state.args.node, "node certificate renewed");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(node = %state.args.node, error = %e, "node certificate renewal failed; retrying at the next check");
                }
            },
        }
        Ok(())
    }
}
