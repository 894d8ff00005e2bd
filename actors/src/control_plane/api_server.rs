//! `ApiServer` (`api-server@N`, every control-plane member): listens on
//! `advertise:apiPort` with TLS and serves the API ([`crate::api::serve`]) from its
//! [`ApiSlot`]: as the leader while this member leads, and otherwise by pointing every
//! caller to the leader.
//!
//! Its server certificate is issued here from the cluster CA (the chain includes the
//! CA, for joiners' pin check), valid for the cluster's certificate lifetime, and
//! issued again once past two thirds of it: the listener takes the new one from the
//! next handshake on, without a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use time::OffsetDateTime;

use crate::api::Served;
use crate::leader::ApiSlot;
use crate::listener::{ServerTask, ServingCert};
use crate::pki::ca::{CertAndKey, ClusterCa, needs_renewal, renewal_check_interval, validity_of};

#[derive(Clone)]
pub struct ApiServerArgs {
    pub node: String,
    /// The Store actor to get the store handle from.
    pub store_actor: String,
    pub addr: SocketAddr,
    pub slot: ApiSlot,
    /// The cluster CA (this member's `DIR/pki/ca.*`): it issues the server certificate.
    pub ca: CertAndKey,
    /// How long each server certificate is valid (`certificateLifetimeSeconds`).
    pub cert_lifetime: Duration,
    pub now: fn() -> SystemTime,
}

pub enum ApiServerMsg {
    /// Internal: the server stopped on its own.
    ServerExited(String),
    /// Internal: issue a new server certificate if the current one is due.
    Renew,
    /// The certificate served now (PEM) and how many times it was renewed.
    Served(ractor::RpcReplyPort<(String, u64)>),
}

pub struct ApiServerState {
    args: ApiServerArgs,
    server: ServerTask,
    serving: Arc<ServingCert>,
    current: String,
    renewals: u64,
}

/// Listens on `apiPort` on every control-plane member; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiServer;

impl ApiServer {
    pub fn name(node: &str) -> String {
        format!("api-server@{node}")
    }
}

/// A new server certificate for `args.node` and its address.
fn issue(args: &ApiServerArgs) -> Result<CertAndKey, ActorProcessingErr> {
    let signer = ClusterCa::from_pem(&args.ca)?;
    let names = [args.node.clone(), "localhost".to_owned()];
    Ok(signer.issue_server_cert(&names, &[args.addr.ip()], args.cert_lifetime)?)
}

/// How long until the next look at `cert_pem` (a tenth of its life, 1 s – 1 h).
fn check_interval(cert_pem: &str) -> Duration {
    validity_of(cert_pem).map_or(Duration::from_secs(60), |(from, until)| {
        renewal_check_interval(from, until)
    })
}

impl ApiServerState {
    /// Issues and serves a new certificate when the current one is past two thirds of
    /// its life (by the wall clock, so a clock step forward is noticed at the next
    /// check); Ok(true) if it did.
    fn renew_if_due(&mut self) -> Result<bool, ActorProcessingErr> {
        let (from, until) = validity_of(&self.current)?;
        let now = OffsetDateTime::from((self.args.now)());
        if !needs_renewal(from, until, now) {
            return Ok(false);
        }
        let cert = issue(&self.args)?;
        self.serving.replace(&cert, &self.args.ca.cert_pem)?;
        self.current = cert.cert_pem;
        self.renewals += 1;
        Ok(true)
    }
}

impl Actor for ApiServer {
    type Msg = ApiServerMsg;
    type State = ApiServerState;
    type Arguments = ApiServerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ApiServerMsg>,
        args: ApiServerArgs,
    ) -> Result<ApiServerState, ActorProcessingErr> {
        use crate::store::StoreMsg;
        let store_actor = ractor::registry::where_is(args.store_actor.clone())
            .ok_or_else(|| format!("{} is not running", args.store_actor))?;
        let store: std::sync::Arc<dyn crate::store::StateStore> = ractor::call_t!(
            ActorRef::<StoreMsg>::from(store_actor),
            StoreMsg::Handle,
            10_000
        )?;
        let cert = issue(&args)?;
        // The chain carries the CA too: a joining node checks it against its pin.
        let serving = ServingCert::new(&cert, &args.ca.cert_pem)?;
        // Bind here, so a taken port fails the start (and the supervisor retries).
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
        let served = Served {
            slot: args.slot.clone(),
            store,
            ca_pem: args.ca.cert_pem.clone(),
            node: args.node.clone(),
        };
        let server_cert = serving.clone();
        let exited = myself.clone();
        let server = ServerTask::spawn(
            move |stopped| async move {
                crate::api::serve(listener, server_cert, served, async {
                    let _ = stopped.await;
                })
                .await
            },
            move |result| {
                let why = match result {
                    Ok(()) => "API server stopped".to_owned(),
                    Err(e) => format!("API server failed: {e}"),
                };
                let _ = exited.send_message(ApiServerMsg::ServerExited(why));
            },
        );
        tracing::info!(node = %args.node, addr = %args.addr, "API listening");
        myself.send_after(check_interval(&cert.cert_pem), || ApiServerMsg::Renew);
        Ok(ApiServerState {
            args,
            server,
            serving,
            current: cert.cert_pem,
            renewals: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ApiServerMsg>,
        msg: ApiServerMsg,
        state: &mut ApiServerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ApiServerMsg::ServerExited(why) if !state.server.stopping() => return Err(why.into()),
            ApiServerMsg::ServerExited(_) => {}
            ApiServerMsg::Renew => {
                match state.renew_if_due() {
                    Ok(true) => {
                        tracing::info!(node = %state.args.node, "API server certificate renewed");
                    }
                    Ok(false) => {}
                    // The current certificate stays; the next check tries again.
                    Err(e) => {
                        tracing::warn!(node = %state.args.node, error = %e, "API server certificate renewal failed");
                    }
                }
                myself.send_after(check_interval(&state.current), || ApiServerMsg::Renew);
            }
            ApiServerMsg::Served(reply) => {
                let _ = reply.send((state.current.clone(), state.renewals));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ApiServerMsg>,
        state: &mut ApiServerState,
    ) -> Result<(), ActorProcessingErr> {
        state.server.stop().await;
        Ok(())
    }
}
