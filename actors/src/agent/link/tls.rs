//! The production [`LeaderLink`]: the node certificate from `DIR/pki` over TLS, one
//! lazily connected channel per control-plane address.

use std::collections::HashMap;
use std::sync::Mutex;

use kat_proto::v1alpha1::node_api_client::NodeApiClient;
use kat_proto::v1alpha1::{
    HeartbeatRequest, HeartbeatResponse, RenewCertificateRequest, RenewCertificateResponse,
    SyncRequest,
};
use tonic::transport::Channel;

use super::{LeaderLink, LinkError, SyncReceiver};
use crate::client::{LEADER_API_METADATA, api_channel};
use crate::pki::ca::CertAndKey;
use crate::pki::local::PkiDir;

fn status_error(status: &tonic::Status) -> LinkError {
    if let Some(leader) = status
        .metadata()
        .get(LEADER_API_METADATA)
        .and_then(|v| v.to_str().ok())
    {
        return LinkError::NotLeader(leader.to_owned());
    }
    if status.code() == tonic::Code::Unavailable {
        LinkError::Unreachable(status.message().to_owned())
    } else {
        LinkError::Refused(format!("{:?}: {}", status.code(), status.message()))
    }
}

/// The production link: the node certificate from `DIR/pki` over TLS, one lazily
/// connected channel per address. The files are read at first use, so the init node's
/// agent can start before its leader has written them.
pub struct TlsLeaderLink {
    pki_dir: std::path::PathBuf,
    loaded: Mutex<Option<(String, CertAndKey)>>,
    clients: Mutex<HashMap<String, NodeApiClient<Channel>>>,
}

impl TlsLeaderLink {
    pub fn new(pki_dir: std::path::PathBuf) -> Self {
        Self {
            pki_dir,
            loaded: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn credentials(&self) -> Result<(String, CertAndKey), LinkError> {
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| LinkError::Unreachable("poisoned".to_owned()))?;
        if let Some(c) = loaded.as_ref() {
            return Ok(c.clone());
        }
        let pki = PkiDir(self.pki_dir.clone());
        let ca_path = pki.ca_cert();
        let ca = std::fs::read_to_string(&ca_path)
            .map_err(|e| LinkError::Unreachable(format!("{}: {e}", ca_path.display())))?;
        let pair = pki
            .read_node_pair()
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let creds = (ca, pair);
        *loaded = Some(creds.clone());
        Ok(creds)
    }

    fn client(&self, target: &str) -> Result<NodeApiClient<Channel>, LinkError> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| LinkError::Unreachable("poisoned".to_owned()))?;
        if let Some(c) = clients.get(target) {
            return Ok(c.clone());
        }
        let (ca, identity) = self.credentials()?;
        let channel = api_channel(target, &ca, Some(&identity))
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let client = NodeApiClient::new(channel);
        clients.insert(target.to_owned(), client.clone());
        Ok(client)
    }
}

#[async_trait::async_trait]
impl LeaderLink for TlsLeaderLink {
    async fn heartbeat(
        &self,
        target: &str,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, LinkError> {
        let mut client = self.client(target)?;
        client
            .heartbeat(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error(&s))
    }

    async fn renew(
        &self,
        target: &str,
        request: RenewCertificateRequest,
    ) -> Result<RenewCertificateResponse, LinkError> {
        let mut client = self.client(target)?;
        client
            .renew_certificate(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_error(&s))
    }

    async fn sync(&self, target: &str, request: SyncRequest) -> Result<SyncReceiver, LinkError> {
        let mut client = self.client(target)?;
        let mut stream = client
            .sync(request)
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    () = tx.closed() => return,
                    item = stream.message() => item,
                };
                let item = match item {
                    Ok(Some(event)) => Ok(event),
                    Ok(None) => return,
                    Err(status) => Err(status_error(&status)),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
    }

    fn reload(&self) {
        if let Ok(mut loaded) = self.loaded.lock() {
            *loaded = None;
        }
        if let Ok(mut clients) = self.clients.lock() {
            clients.clear();
        }
    }
}
