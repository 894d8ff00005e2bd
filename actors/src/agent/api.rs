//! The agent API on `agentPort` (SPEC §10): every node serves its instances' logs and
//! `exec` to the leader, which relays them to `katcall logs` / `katcall exec`.
//!
//! mTLS only: the server presents the node's certificate, and a caller must present a
//! certificate of the cluster CA whose CN is the node the last heartbeat answer named
//! as leader (the node view's `leader`). A request names the instance by
//! namespace, workload and ID; only instances this node is told to run are served.
//!
//! | actor | in | restart |
//! |---|---|---|
//! | `agent-api@<node>` | `agent@<node>` (one_for_one) | permanent; a lost listener fails it and the supervisor restarts it |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kat_proto::v1alpha1::agent_api_server::{AgentApi, AgentApiServer as AgentApiGrpc};
use kat_proto::v1alpha1::log_chunk::Stream as ChunkStream;
use kat_proto::v1alpha1::{
    ExecRequest, ExecResponse, LogChunk, LogsRequest, PurgeVolumesRequest, PurgeVolumesResponse,
};
use kat_runtime::host::{DesiredInstance, InstanceHost};
use kat_runtime::{LogOptions, LogStream, RuntimeError};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::certs::RenewedSignal;
use super::view::NodeView;
use crate::listener::{
    ClientAuth, ConnectionLimits, ServerTask, ServingCert, incoming, peer_node, server_config,
};
use crate::pki::ca::CertAndKey;
use crate::pki::local::PkiDir;

/// The longest an `exec` may run (a request may ask for less).
pub const MAX_EXEC: Duration = Duration::from_secs(300);
/// An `exec` without a timeout gets this.
pub const DEFAULT_EXEC: Duration = Duration::from_secs(30);
/// How long a volume purge waits for this node to retire the workload's instances.
pub const PURGE_WAIT: Duration = Duration::from_secs(30);
/// Log streams a node serves at once. Each holds a `podman logs` process (and, with
/// `-f`, holds it until the reader goes): past this, `katcall logs` is refused with the
/// reason rather than letting readers pile up processes on the node.
pub const MAX_LOG_STREAMS: usize = 64;

/// The log streams a node's agent API has open ([`MAX_LOG_STREAMS`] at most).
#[derive(Clone)]
pub struct LogStreams(Arc<tokio::sync::Semaphore>);

impl Default for LogStreams {
    fn default() -> Self {
        Self::new(MAX_LOG_STREAMS)
    }
}

impl LogStreams {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(max)))
    }

    /// A place for one more stream on `node` (given back when the permit drops), or
    /// `ResourceExhausted` saying why.
    fn admit(&self, node: &str) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "node {node} serves {MAX_LOG_STREAMS} log streams at once and all are open; \
                 close one (a `katcall logs -f` left running) and try again"
            ))
        })
    }
}

/// What the service reads.
#[derive(Clone)]
pub struct AgentApiService {
    pub node: String,
    pub host: Arc<dyn InstanceHost>,
    /// What the Runtime runs (`running`) and who leads (`leader`).
    pub view: NodeView,
    /// `volumeBasePath`, where simpleClusterStorage lives (`None`: no volumes here).
    pub volume_base: Option<PathBuf>,
    /// The log streams open now.
    pub log_streams: LogStreams,
}

impl AgentApiService {
    /// Refuses a caller that is not the leader this node knows.
    fn check_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = peer_node(request)?;
        let leader = self.view.leader.borrow().clone();
        if leader.is_empty() {
            return Err(Status::unavailable(format!(
                "node {} has not heard from a leader yet; try again shortly",
                self.node
            )));
        }
        if caller != leader {
            return Err(Status::permission_denied(format!(
                "node {} takes agent calls from the leader ({leader}) only, not from {caller}",
                self.node
            )));
        }
        Ok(())
    }

    /// The desired instance the request names.
    fn instance(&self, ns: &str, workload: &str, id: &str) -> Result<DesiredInstance, Status> {
        let desired = self.view.running.borrow();
        desired
            .as_ref()
            .and_then(|list| {
                list.iter()
                    .find(|d| d.id() == id && d.opts.namespace == ns && d.opts.workload == workload)
                    .cloned()
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {} runs no instance {id} of {ns}/{workload}",
                    self.node
                ))
            })
    }
}

/// Passes a container's log lines on as chunks until they end or the reader goes —
/// noticed at once, not at the next line a quiet container may never print, so a
/// `katcall logs -f` that is gone leaves no `podman logs --follow` behind (the
/// runtime ends it when `lines` is dropped).
async fn relay_lines(
    mut lines: kat_runtime::LogReceiver,
    tx: tokio::sync::mpsc::Sender<Result<LogChunk, Status>>,
    place: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    // The stream's place among the node's log streams, given back when the relay ends.
    let _place = place;
    loop {
        let line = tokio::select! {
            () = tx.closed() => return,
            line = lines.recv() => line,
        };
        let Some(line) = line else { return };
        let chunk = line
            .map(|l| {
                let mut data = l.line;
                data.push(b'\n');
                LogChunk {
                    stream: match l.stream {
                        LogStream::Stdout => ChunkStream::Stdout,
                        LogStream::Stderr => ChunkStream::Stderr,
                    }
                    .into(),
                    data,
                    time: Some(kat_proto::timestamp(std::time::SystemTime::now())),
                }
            })
            .map_err(runtime_status);
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}

fn runtime_status(e: RuntimeError) -> Status {
    match e {
        RuntimeError::NotFound(what) => Status::not_found(format!(
            "{what}: no container (it may have ended and been removed)"
        )),
        other => Status::internal(other.to_string()),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentApi for AgentApiService {
    type StreamLogsStream = BoxStream<LogChunk>;

    async fn stream_logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        self.check_caller(&request)?;
        let req = request.into_inner();
        if req.build {
            return Err(Status::unimplemented(
                "build logs: this build has no image builds yet",
            ));
        }
        let desired = self.instance(&req.namespace, &req.workload, &req.instance_id)?;
        let place = self.log_streams.admit(&self.node)?;
        let opts = LogOptions {
            follow: req.follow,
            since: (req.since_seconds > 0).then(|| Duration::from_secs(req.since_seconds.into())),
            tail: (req.tail > 0).then_some(req.tail),
        };
        let lines = self
            .host
            .logs(&desired, &opts)
            .await
            .map_err(runtime_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(relay_lines(lines, tx, Some(place)));
        Ok(Response::new(Box::pin(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        self.check_caller(&request)?;
        let req = request.into_inner();
        if req.command.is_empty() {
            return Err(Status::invalid_argument("command: must not be empty"));
        }
        let desired = self.instance(&req.namespace, &req.workload, &req.instance_id)?;
        let timeout = match req.timeout_seconds {
            0 => DEFAULT_EXEC,
            n => Duration::from_secs(n.into()).min(MAX_EXEC),
        };
        let out = self
            .host
            .exec(&desired, &req.command, timeout)
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(ExecResponse {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        }))
    }

    async fn purge_volumes(
        &self,
        request: Request<PurgeVolumesRequest>,
    ) -> Result<Response<PurgeVolumesResponse>, Status> {
        self.check_caller(&request)?;
        let req = request.into_inner();
        // Names become path components: only DNS labels (no `/`, no `..`).
        for (field, value) in [("namespace", &req.namespace), ("workload", &req.workload)] {
            if let Some(problem) = kat_proto::names::dns_label_problem(value) {
                return Err(Status::invalid_argument(format!("{field}: {problem}")));
            }
        }
        // The leader deleted the workload first; wait until this node stopped its
        // instances, so no container still writes where the files are removed.
        let mut desired = self.view.running.subscribe();
        let still_runs = |d: &Option<Vec<DesiredInstance>>| {
            d.as_ref().is_some_and(|list| {
                list.iter()
                    .any(|i| i.opts.namespace == req.namespace && i.opts.workload == req.workload)
            })
        };
        // Then until the Runtime actor has retired them (on its next pass).
        let host = &self.host;
        let gone = tokio::time::timeout(PURGE_WAIT, async {
            if desired.wait_for(|d| !still_runs(d)).await.is_err() {
                return false;
            }
            loop {
                match host.has_workload(&req.namespace, &req.workload).await {
                    Ok(false) => return true,
                    Ok(true) => {}
                    Err(e) => tracing::warn!(node = %self.node, error = %e, "cannot list the instances left"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .unwrap_or(false);
        if !gone {
            return Err(Status::failed_precondition(format!(
                "node {} still runs instances of {}/{}; its volumes are left in place",
                self.node, req.namespace, req.workload
            )));
        }
        let mut response = PurgeVolumesResponse::default();
        if let Some(base) = &self.volume_base {
            kat_runtime::volumes::purge(base, &req.namespace, &req.workload)
                .map_err(|e| Status::internal(e.to_string()))?;
            let path = base.join(&req.namespace).join(&req.workload);
            tracing::info!(node = %self.node, path = %path.display(), "volumes purged");
            response.path = path.display().to_string();
        }
        // Rootless: the workload's user goes too, with its image storage.
        match self
            .host
            .remove_workload(&req.namespace, &req.workload)
            .await
        {
            Ok(Some(what)) => {
                tracing::info!(node = %self.node, removed = %what, "workload's host state removed")
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "volumes purged, but the workload's user is left: {e}"
                )));
            }
        }
        Ok(Response::new(response))
    }
}

#[derive(Clone)]
pub struct AgentApiArgs {
    pub service: AgentApiService,
    /// The node's advertise address and `agentPort`.
    pub addr: SocketAddr,
    /// `DIR/pki`: `node.crt`, `node.key` (the server's identity) and `ca.crt`.
    pub pki_dir: PathBuf,
    /// Bumped when NodeCerts has written a renewed pair: served from the next
    /// handshake on.
    pub renewed: RenewedSignal,
}

pub enum AgentApiMsg {
    /// Internal: the server stopped on its own.
    ServerExited(String),
    /// Internal: the node certificate was renewed; serve the new pair.
    Reload,
}

pub struct AgentApiState {
    server: ServerTask,
    serving: Arc<ServingCert>,
    pki_dir: PathBuf,
    /// Turns renewals into `Reload` messages; stopped with the actor.
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for AgentApiState {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Serves [`AgentApiService`]; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentApiServer;

impl AgentApiServer {
    pub fn name(node: &str) -> String {
        format!("agent-api@{node}")
    }
}

fn read_pki(dir: &std::path::Path) -> Result<(CertAndKey, String), ActorProcessingErr> {
    let pki = PkiDir(dir.to_path_buf());
    let ca_path = pki.ca_cert();
    let ca =
        std::fs::read_to_string(&ca_path).map_err(|e| format!("{}: {e}", ca_path.display()))?;
    Ok((pki.read_node_pair()?, ca))
}

impl Actor for AgentApiServer {
    type Msg = AgentApiMsg;
    type State = AgentApiState;
    type Arguments = AgentApiArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentApiMsg>,
        args: AgentApiArgs,
    ) -> Result<AgentApiState, ActorProcessingErr> {
        let (identity, ca) = read_pki(&args.pki_dir)?;
        let serving = ServingCert::new(&identity, "")?;
        let tls = server_config(serving.clone(), &ca, ClientAuth::Required)?;
        let mut renewed = args.renewed.subscribe();
        renewed.mark_unchanged();
        let reload = myself.clone();
        let watcher = tokio::spawn(async move {
            while renewed.changed().await.is_ok() {
                if reload.send_message(AgentApiMsg::Reload).is_err() {
                    return;
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| format!("agent API: cannot listen on {}: {e}", args.addr))?;
        let service = AgentApiGrpc::new(args.service.clone());
        let server = ServerTask::spawn(
            move |stopped| {
                let (ping, ping_timeout) = crate::listener::HTTP2_KEEPALIVE;
                Server::builder()
                    .http2_keepalive_interval(Some(ping))
                    .http2_keepalive_timeout(Some(ping_timeout))
                    .max_concurrent_streams(crate::listener::MAX_STREAMS)
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        incoming(listener, tls, ConnectionLimits::default()),
                        async {
                            let _ = stopped.await;
                        },
                    )
            },
            move |result| {
                let why = match result {
                    Ok(()) => "agent API server stopped".to_owned(),
                    Err(e) => format!("agent API server failed: {e}"),
                };
                let _ = myself.send_message(AgentApiMsg::ServerExited(why));
            },
        );
        tracing::info!(node = %args.service.node, addr = %args.addr, "agent API listening");
        Ok(AgentApiState {
            server,
            serving,
            pki_dir: args.pki_dir,
            watcher,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentApiMsg>,
        msg: AgentApiMsg,
        state: &mut AgentApiState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentApiMsg::ServerExited(why) if !state.server.stopping() => Err(why.into()),
            AgentApiMsg::ServerExited(_) => Ok(()),
            AgentApiMsg::Reload => {
                // A pair that cannot be read leaves the current one served (the next
                // renewal tries again).
                match read_pki(&state.pki_dir)
                    .and_then(|(pair, _)| Ok(state.serving.replace(&pair, "")?))
                {
                    Ok(()) => tracing::info!("agent API serves the renewed node certificate"),
                    Err(e) => {
                        tracing::warn!(error = %e, "agent API cannot load the renewed node certificate")
                    }
                }
                Ok(())
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AgentApiMsg>,
        state: &mut AgentApiState,
    ) -> Result<(), ActorProcessingErr> {
        state.server.stop().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kat_runtime::LogLine;

    #[tokio::test]
    async fn a_reader_that_goes_ends_the_relay_of_a_quiet_container_at_once() {
        let (lines_tx, lines) = tokio::sync::mpsc::channel(4);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let relay = tokio::spawn(relay_lines(lines, tx, None));
        lines_tx
            .send(Ok(LogLine {
                stream: LogStream::Stdout,
                line: b"hello".to_vec(),
            }))
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap().data, b"hello\n");
        // The container prints nothing more; the reader goes.
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay ended without another line")
            .unwrap();
        // And the runtime's side sees it: its follower stops.
        assert!(lines_tx.is_closed());
    }

    #[tokio::test]
    async fn log_streams_past_the_cap_are_refused_until_one_ends() {
        let streams = LogStreams::new(2);
        let mut relays = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..2 {
            let place = streams.admit("n1").unwrap();
            let (lines_tx, lines) = tokio::sync::mpsc::channel(4);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            relays.push((tokio::spawn(relay_lines(lines, tx, Some(place))), rx));
            senders.push(lines_tx);
        }
        let refused = streams.admit("n1").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("node n1 serves"), "{refused:?}");
        // A reader goes: its relay ends and gives its place back.
        let (relay, rx) = relays.pop().unwrap();
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .unwrap()
            .unwrap();
        assert!(streams.admit("n1").is_ok());
        drop(senders);
    }
}
