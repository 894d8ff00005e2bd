//! Join and API tokens in the store (`/kat/tokens/<join|api>/<id>`, SPEC §6, §13):
//! only the secret's SHA-256 is kept (`crate::pki::tokens` makes and checks them).
//! Every refusal of a presented token says the same thing, so a caller learns
//! nothing about which tokens exist.

use std::time::{Duration, SystemTime};

use kat_proto::v1alpha1::{CreateTokenRequest, CreateTokenResponse, StoredToken, TokenKind};
use prost::Message;

use super::error::{StateError, StateResult};
use super::keys;
use super::leadership::Leadership;
use crate::pki::{pin, tokens};
use crate::store::{KeyValue, StateStore, TxnOp, TxnOpResult};

/// What every refused API token is told.
pub const API_TOKEN_REFUSED: &str = "missing or invalid API token";
/// What every refused join token is told.
pub const JOIN_TOKEN_REFUSED: &str = "join token refused (unknown, expired or already used)";

/// Checks a presented API token (`<id>.<secret>`) against `/kat/tokens/api/<id>`.
pub async fn authorize_api(
    store: &dyn StateStore,
    presented: &str,
    now: SystemTime,
) -> StateResult<()> {
    let refused = || StateError::Unauthenticated(API_TOKEN_REFUSED.to_owned());
    let (id, secret) = tokens::parse(presented).map_err(|_| refused())?;
    let stored = store
        .get(&keys::token(TokenKind::Api, id))
        .await?
        .ok_or_else(refused)?;
    let record = StoredToken::decode(stored.value.as_slice()).map_err(|_| refused())?;
    tokens::check(&record, TokenKind::Api, secret, now).map_err(|_| refused())
}

/// A join token that checked out: its record (to spend it) and the stored version
/// (the spend compares against it, so two joins cannot use one token).
#[derive(Debug, Clone)]
pub struct ValidJoinToken {
    pub record: StoredToken,
    pub key: String,
    pub stored: KeyValue,
}

impl ValidJoinToken {
    /// The write that marks a single-use token used (none for a reusable one).
    pub fn spend(&self) -> Option<TxnOp> {
        (!self.record.reusable).then(|| {
            let mut used = self.record.clone();
            used.used = true;
            TxnOp::put(&self.key, used.encode_to_vec())
        })
    }
}

/// Checks a presented join token (`<id>.<secret>`).
pub async fn check_join(
    store: &dyn StateStore,
    presented: &str,
    now: SystemTime,
) -> StateResult<ValidJoinToken> {
    let refused = || StateError::Unauthenticated(JOIN_TOKEN_REFUSED.to_owned());
    let (id, secret) = tokens::parse(presented).map_err(|_| refused())?;
    let key = keys::token(TokenKind::Join, id);
    let stored = store.get(&key).await?.ok_or_else(refused)?;
    let record = StoredToken::decode(stored.value.as_slice()).map_err(|_| refused())?;
    tokens::check(&record, TokenKind::Join, secret, now).map_err(|_| refused())?;
    Ok(ValidJoinToken {
        record,
        key,
        stored,
    })
}

/// Makes a token of `kind` and stores its record (fenced); returns the token text,
/// shown once.
pub async fn issue(
    leadership: &Leadership,
    kind: TokenKind,
    ttl: Option<Duration>,
    reusable: bool,
    description: &str,
    now: SystemTime,
) -> StateResult<(String, StoredToken)> {
    let (token, record) = tokens::generate(kind, ttl, reusable, description, now)
        .map_err(|e| StateError::Internal(e.to_string()))?;
    let put = TxnOp::put(keys::token(kind, &record.id), record.encode_to_vec());
    leadership.commit([], [put]).await?;
    Ok((token, record))
}

/// Creates a token as a user asks; a join token comes back with the CA hash appended,
/// as `kat-agent join --token` takes it.
pub async fn create(
    leadership: &Leadership,
    ca_pem: &str,
    kind: TokenKind,
    req: &CreateTokenRequest,
    now: SystemTime,
) -> StateResult<CreateTokenResponse> {
    let ttl = match (req.ttl_seconds, kind) {
        (0, TokenKind::Join) => Some(tokens::DEFAULT_JOIN_TTL),
        (0, _) => None,
        (s, _) => Some(Duration::from_secs(u64::from(s))),
    };
    let description = if req.description.is_empty() {
        "created with katcall"
    } else {
        req.description.as_str()
    };
    // An API token is a client's credential, used on every call: it has no single-use
    // mode (the flag used to be stored and then ignored), only its TTL and deletion.
    let reusable = req.reusable || kind == TokenKind::Api;
    let (token, record) = issue(leadership, kind, ttl, reusable, description, now).await?;
    let token = if kind == TokenKind::Join {
        pin::join_credential(&token, ca_pem).map_err(|e| StateError::Internal(e.to_string()))?
    } else {
        token
    };
    Ok(CreateTokenResponse {
        id: record.id,
        token,
        expires_at: record.expires_at,
    })
}

/// Deletes the token with id `id`, whichever kind it is.
pub async fn delete(leadership: &Leadership, id: &str) -> StateResult<()> {
    let ops = [
        TxnOp::delete(keys::token(TokenKind::Join, id)),
        TxnOp::delete(keys::token(TokenKind::Api, id)),
    ];
    let result = leadership.commit_txn([], ops).await?;
    let deleted = result
        .results
        .iter()
        .any(|r| matches!(r, TxnOpResult::Delete(n) if *n > 0));
    if !deleted {
        return Err(StateError::NotFound(format!("no token with id {id:?}")));
    }
    Ok(())
}
