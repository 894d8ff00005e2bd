//! `katcall`'s connection to the leader's API: configuration (SPEC §11: `--config`,
//! `KAT_CONFIG`, `~/.config/kat/config`, `--server`/`--token` overrides), a TLS channel
//! verified against the cluster CA, and the bearer token on every call.

use std::path::{Path, PathBuf};

use kat_actors::client::{KatcallConfig, api_channel_with_timeout};
use kat_proto::v1alpha1::user_api_client::UserApiClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Where the configuration comes from, after flags and environment.
#[derive(Debug, Default, Clone)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub server: Option<String>,
    pub token: Option<String>,
}

/// `~/.config/kat/config`.
pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".config/kat/config"))
}

/// Reads the configuration file and applies `--server` / `--token`.
pub fn load_config(source: &ConfigSource) -> Result<KatcallConfig, String> {
    let (path, explicit) = match &source.file {
        Some(path) => (path.clone(), true),
        None => match default_config_path() {
            Some(path) => (path, false),
            None => {
                return Err(
                    "no configuration: pass --config FILE (the katcall.yaml that \
                     kat-agent init wrote) or set KAT_CONFIG"
                        .to_owned(),
                );
            }
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Err(format!(
                "no configuration at {}: pass --config FILE (the DIR/katcall.yaml that \
                 kat-agent init wrote) or set KAT_CONFIG",
                path.display()
            ));
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut config = KatcallConfig::parse(&path.display().to_string(), &text)?;
    if let Some(server) = &source.server {
        if !server.starts_with("https://") {
            return Err(format!("--server {server:?}: must start with https://"));
        }
        config.server = server.clone();
    }
    if let Some(token) = &source.token {
        config.token = token.trim().to_owned();
    }
    Ok(config)
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Client = UserApiClient<InterceptedService<Channel, Bearer>>;

/// A user-API client for `config`.
pub fn connect(config: &KatcallConfig) -> Result<Client, String> {
    connect_with_timeout(config, kat_actors::client::CALL_TIMEOUT)
}

/// [`connect`] with calls that may take up to `call_timeout` (until the answer, or a
/// stream's first message, arrives).
pub fn connect_with_timeout(
    config: &KatcallConfig,
    call_timeout: std::time::Duration,
) -> Result<Client, String> {
    let addr = config
        .server
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let channel = api_channel_with_timeout(addr, &config.certificate_authority, None, call_timeout)
        .map_err(|e| e.to_string())?;
    let value = format!("Bearer {}", config.token)
        .parse()
        .map_err(|_| "token: not valid in a header".to_owned())?;
    Ok(UserApiClient::with_interceptor(channel, Bearer(value)))
}

/// A failed command: its one-line message; for a failed call, also where the leader
/// is (when a control-plane member that does not lead answered) and whether the
/// server could not be reached at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    pub message: String,
    pub leader_api: Option<String>,
    pub unreachable: bool,
}

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for CmdError {
    fn from(message: String) -> Self {
        Self {
            message,
            leader_api: None,
            unreachable: false,
        }
    }
}

impl From<&str> for CmdError {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

impl From<tonic::Status> for CmdError {
    fn from(status: tonic::Status) -> Self {
        let leader_api = status
            .metadata()
            .get(kat_actors::api::LEADER_API_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let message = status.message();
        // The transport's own failures, not an answer from a server.
        let unreachable = status.code() == tonic::Code::Unavailable
            && leader_api.is_none()
            && (message.contains("connect") || message.contains("transport"));
        Self {
            message: format!("{:?}: {message}", status.code()),
            leader_api,
            unreachable,
        }
    }
}
