//! The node API (SPEC §6, §10) as gRPC: each call checks the caller's client
//! certificate where it needs one, finds the leader ([`Served::leader`]) and hands over
//! to the leader's handler (`crate::leader::{join, heartbeats, sync, renewal}`).

use std::pin::Pin;
use std::time::SystemTime;

use kat_proto::v1alpha1::node_api_server::NodeApi;
use kat_proto::v1alpha1::{
    HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, RenewCertificateRequest,
    RenewCertificateResponse, SyncEvent, SyncRequest,
};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::served::Served;
use crate::leader;
use crate::leader::certificate_is_current;
use crate::listener::{peer_key_sha256, peer_node};

/// The tonic service.
#[derive(Clone)]
pub struct NodeApiService {
    served: Served,
}

impl NodeApiService {
    pub fn new(served: Served) -> Self {
        Self { served }
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeApi for NodeApiService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let source = request.remote_addr().map(|a| a.ip());
        let ctx = self.served.leader().await?;
        let answer =
            leader::join::join(&ctx, request.into_inner(), source, SystemTime::now()).await?;
        Ok(Response::new(answer))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let caller = peer_node(&request)?;
        let key = peer_key_sha256(&request)?;
        let ctx = self.served.leader().await?;
        let started = std::time::Instant::now();
        let (request, now) = (request.into_inner(), SystemTime::now());
        let answer = leader::heartbeats::heartbeat(&ctx, &caller, Some(&key), request, now).await;
        let m = crate::metrics::global();
        let result = if answer.is_ok() { "ok" } else { "refused" };
        m.inc(
            "kat_heartbeats_total",
            "Heartbeats handled by this leader, by result.",
            &[("result", result)],
            1.0,
        );
        m.observe(
            "kat_heartbeat_handling_seconds",
            "Time the leader took to record a heartbeat.",
            &[],
            started.elapsed(),
        );
        Ok(Response::new(answer?))
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let caller = peer_node(&request)?;
        let key = peer_key_sha256(&request)?;
        let ctx = self.served.leader().await?;
        certificate_is_current(&ctx, &caller, &key).await?;
        let events =
            leader::sync::sync_events(&ctx, &caller, Some(&key), request.into_inner()).await?;
        let stream = ReceiverStream::new(events).map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateResponse>, Status> {
        let caller = peer_node(&request)?;
        let key = peer_key_sha256(&request)?;
        let ctx = self.served.leader().await?;
        certificate_is_current(&ctx, &caller, &key).await?;
        let answer = leader::renewal::renew_certificate(
            &ctx,
            &caller,
            Some(&key),
            request.into_inner(),
            SystemTime::now(),
        )
        .await?;
        Ok(Response::new(answer))
    }
}
