//! `katcall`'s connection to the leader's API: configuration (SPEC §11: `--config`,
//! `KAT_CONFIG`, `~/.config/kat/config`, `--server`/`--token` overrides), a TLS channel
//! verified against the cluster CA, and the bearer token on every call; and [`remote`],
//! which every command that talks to the cluster runs its calls through.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use kat_actors::client::{KatcallConfig, api_channel_with_timeout};
use kat_proto::v1alpha1::user_api_client::UserApiClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Where the configuration comes from, after flags and environment.
#[derive(Debug, Default, Clone)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    /// `--context`: which cluster of a file that lists several.
    pub context: Option<String>,
    pub server: Option<String>,
    pub token: Option<String>,
    /// `--token-file`: read when the configuration is loaded.
    pub token_file: Option<PathBuf>,
}

/// `~/.config/kat/config`.
pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".config/kat/config"))
}

/// Reads the configuration file and applies `--server` / `--token`.
pub fn load_config(source: &ConfigSource) -> Result<KatcallConfig, String> {
    // The flags' own errors first.
    let token_from_file = source
        .token_file
        .as_ref()
        .map(|file| crate::read_token_file("--token-file", file))
        .transpose()?;
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
    let mut config = parse_config(
        &path.display().to_string(),
        &text,
        source.context.as_deref(),
    )?;
    if let Some(server) = &source.server {
        if !server.starts_with("https://") {
            return Err(format!("--server {server:?}: must start with https://"));
        }
        config.server = server.clone();
    }
    if let Some(token) = &source.token {
        config.token = token.trim().to_owned();
    }
    if let Some(token) = token_from_file {
        config.token = token;
    }
    Ok(config)
}

/// A configuration file's cluster: the file itself (what `kat-agent init` writes), or
/// one of its `contexts` (several clusters: `currentContext` names the one used unless
/// `--context` says):
///
/// ```yaml
/// currentContext: home
/// contexts:
///   - name: home
///     server: https://192.168.1.10:9115
///     certificateAuthority: |
///       -----BEGIN CERTIFICATE-----
///       ...
///     token: <id>.<secret>
///   - name: lab
///     ...
/// ```
pub fn parse_config(
    origin: &str,
    text: &str,
    context: Option<&str>,
) -> Result<KatcallConfig, String> {
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    let Some(contexts) = value.get("contexts") else {
        if let Some(name) = context {
            return Err(format!(
                "{origin}: --context {name:?}: this file has no contexts (it is one cluster's; \
                 list clusters under `contexts:` to choose among them)"
            ));
        }
        return KatcallConfig::parse(origin, text);
    };
    if let Some(map) = value.as_mapping() {
        for key in map.keys() {
            let key = key.as_str().unwrap_or_default();
            if key != "contexts" && key != "currentContext" {
                return Err(format!(
                    "{origin}: {key}: unknown field beside contexts (expected contexts, currentContext)"
                ));
            }
        }
    }
    let list = contexts
        .as_sequence()
        .ok_or_else(|| format!("{origin}: contexts: must be a list"))?;
    let names: Vec<&str> = list
        .iter()
        .map(|c| c.get("name").and_then(|n| n.as_str()).unwrap_or_default())
        .collect();
    let current = value.get("currentContext").and_then(|c| c.as_str());
    let wanted = match (context, current) {
        (Some(name), _) | (None, Some(name)) => name,
        (None, None) if names.len() == 1 => names[0],
        (None, None) => {
            return Err(format!(
                "{origin}: several contexts ({}) and no currentContext: pass --context NAME \
                 or set KAT_CONTEXT",
                names.join(", ")
            ));
        }
    };
    let Some(index) = names.iter().position(|n| *n == wanted) else {
        return Err(format!(
            "{origin}: no context {wanted:?} (there are: {})",
            names.join(", ")
        ));
    };
    let mut entry = list[index].clone();
    if let Some(map) = entry.as_mapping_mut() {
        map.remove("name");
    }
    let body = serde_yaml_ng::to_string(&entry).map_err(|e| format!("{origin}: {e}"))?;
    KatcallConfig::parse(&format!("{origin} (context {wanted})"), &body)
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
    call_timeout: Duration,
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

/// A command's result: its failure is one line on stderr.
pub type CmdResult = Result<(), CmdError>;

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
            .get(kat_actors::client::LEADER_API_METADATA)
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

/// Runs `f` against the API with the configured client; prints a one-line error and
/// fails if anything goes wrong.
pub fn remote<F, Fut>(source: &ConfigSource, what: &str, f: F) -> ExitCode
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = CmdResult>,
{
    remote_with(source, what, kat_actors::client::CALL_TIMEOUT, f)
}

/// [`remote`] with calls that may take up to `call_timeout`.
pub fn remote_with<F, Fut>(
    source: &ConfigSource,
    what: &str,
    call_timeout: Duration,
    f: F,
) -> ExitCode
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = CmdResult>,
{
    let mut interrupted = false;
    let result = load_config(source).and_then(|mut config| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        runtime
            .block_on(async {
                let work = async {
                    let client = connect_with_timeout(&config, call_timeout)?;
                    match f(client).await {
                        // A member that does not lead names the leader: ask it instead.
                        Err(CmdError {
                            leader_api: Some(leader),
                            ..
                        }) => {
                            config.server = format!("https://{leader}");
                            f(connect_with_timeout(&config, call_timeout)?).await
                        }
                        other => other,
                    }
                };
                // Ctrl-C stops following, not the work: the leader carries on with
                // what it was asked (a rollout, a drain), and nothing is undone.
                tokio::select! {
                    r = work => r,
                    _ = tokio::signal::ctrl_c() => {
                        interrupted = true;
                        Err(CmdError::from(
                            "interrupted; the cluster carries on with what it was asked (nothing is undone)".to_owned(),
                        ))
                    }
                }
            })
            .map_err(|e| {
                if e.unreachable {
                    format!(
                        "{e}: cannot reach {} (is kat-agent running there, and is that member the leader? \
                         another control-plane member can be named with --server)",
                        config.server
                    )
                } else {
                    e.message
                }
            })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("katcall {what}: {e}");
            if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const TOKEN_A: &str = "aaaaaaaaaaaa.0123456789abcdef0123456789abcdef";
    const TOKEN_B: &str = "bbbbbbbbbbbb.0123456789abcdef0123456789abcdef";

    fn indented(pem: &str, by: usize) -> String {
        pem.lines()
            .map(|l| format!("{}{l}\n", " ".repeat(by)))
            .collect()
    }

    fn two_clusters(current: Option<&str>) -> String {
        let ca = kat_actors::pki::ca::generate_ca("test").unwrap().cert_pem;
        let mut text = String::new();
        if let Some(c) = current {
            text.push_str(&format!("currentContext: {c}\n"));
        }
        text.push_str("contexts:\n");
        for (name, port, token) in [("home", 9115, TOKEN_A), ("lab", 9116, TOKEN_B)] {
            text.push_str(&format!(
                "  - name: {name}\n    server: https://10.0.0.1:{port}\n    token: {token}\n    certificateAuthority: |\n{}",
                indented(&ca, 6)
            ));
        }
        text
    }

    #[test]
    fn a_context_is_chosen_by_flag_then_current_context() {
        let text = two_clusters(Some("home"));
        let home = parse_config("f", &text, None).unwrap();
        assert_eq!(home.server, "https://10.0.0.1:9115");
        assert_eq!(home.token, TOKEN_A);
        let lab = parse_config("f", &text, Some("lab")).unwrap();
        assert_eq!(lab.server, "https://10.0.0.1:9116");
        assert_eq!(lab.token, TOKEN_B);
        assert_eq!(
            parse_config("f", &text, Some("work")).unwrap_err(),
            "f: no context \"work\" (there are: home, lab)"
        );
    }

    #[test]
    fn several_contexts_without_a_current_one_need_the_flag() {
        let text = two_clusters(None);
        let err = parse_config("f", &text, None).unwrap_err();
        assert!(err.contains("several contexts (home, lab)"), "{err}");
        assert!(parse_config("f", &text, Some("lab")).is_ok());
    }

    #[test]
    fn a_one_cluster_file_refuses_a_context_and_bad_contexts_name_their_field() {
        let ca = kat_actors::pki::ca::generate_ca("test").unwrap().cert_pem;
        let flat = format!(
            "server: https://10.0.0.1:9115\ntoken: {TOKEN_A}\ncertificateAuthority: |\n{}",
            indented(&ca, 2)
        );
        assert!(parse_config("f", &flat, None).is_ok());
        let err = parse_config("f", &flat, Some("home")).unwrap_err();
        assert!(err.contains("this file has no contexts"), "{err}");
        let bad = two_clusters(Some("home")).replace("https://10.0.0.1:9115", "http://x");
        let err = parse_config("f", &bad, None).unwrap_err();
        assert!(
            err.starts_with("f (context home): server: \"http://x\" must start with https://"),
            "{err}"
        );
        let err = parse_config("f", "contexts: {}\n", None).unwrap_err();
        assert_eq!(err, "f: contexts: must be a list");
        let err = parse_config("f", "contexts: []\nextra: 1\n", None).unwrap_err();
        assert!(err.starts_with("f: extra: unknown field"), "{err}");
    }
}
