//! Join and API tokens (SPEC §6, §13): `<id>.<secret>`, random, stored only as the
//! secret's SHA-256 with expiry and single-use bookkeeping. Plain functions;
//! `crate::state::tokens` stores and checks them.

use std::time::{Duration, SystemTime};

use kat_proto::timestamp;
use kat_proto::v1alpha1::{StoredToken, TokenKind};
use ring::rand::{SecureRandom, SystemRandom};

/// Join tokens expire after this unless created with another TTL.
pub const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token (expected <id>.<secret>)")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token expired")]
    Expired,
    #[error("single-use token already used")]
    Used,
    #[error("wrong kind of token")]
    WrongKind,
    #[error("no randomness available")]
    Random,
}

pub fn random_hex(bytes: usize) -> Result<String, TokenError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| TokenError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn sha256(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// A new token: the text to hand out once, and the record to store.
pub fn generate(
    kind: TokenKind,
    ttl: Option<Duration>,
    reusable: bool,
    description: &str,
    now: SystemTime,
) -> Result<(String, StoredToken), TokenError> {
    let id = random_hex(6)?;
    let secret = random_hex(16)?;
    let record = StoredToken {
        id: id.clone(),
        kind: kind.into(),
        secret_sha256: sha256(&secret),
        created_at: Some(timestamp(now)),
        expires_at: ttl.map(|ttl| timestamp(now + ttl)),
        reusable,
        used: false,
        description: description.to_owned(),
    };
    Ok((format!("{id}.{secret}"), record))
}

/// Splits a presented token into id and secret.
pub fn parse(token: &str) -> Result<(&str, &str), TokenError> {
    let (id, secret) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(id, 12) && hex(secret, 32) {
        Ok((id, secret))
    } else {
        Err(TokenError::Malformed)
    }
}

/// Checks a presented secret against its record at `now`. On success the caller
/// marks a single-use token used, in the same transaction that acts on it.
pub fn check(
    record: &StoredToken,
    kind: TokenKind,
    secret: &str,
    now: SystemTime,
) -> Result<(), TokenError> {
    let presented = sha256(secret);
    // Compare every byte, so timing does not tell how much of the secret was right.
    let differs = presented.len() != record.secret_sha256.len()
        || presented
            .iter()
            .zip(&record.secret_sha256)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    if differs {
        return Err(TokenError::Unknown);
    }
    if record.kind() != kind {
        return Err(TokenError::WrongKind);
    }
    if let Some(expires) = &record.expires_at
        && timestamp(now).seconds >= expires.seconds
    {
        return Err(TokenError::Expired);
    }
    if record.used && !record.reusable {
        return Err(TokenError::Used);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_fresh_token_checks_out_and_only_its_hash_is_stored() {
        let (token, record) = generate(
            TokenKind::Join,
            Some(DEFAULT_JOIN_TTL),
            false,
            "init",
            now(),
        )
        .unwrap();
        let (id, secret) = parse(&token).unwrap();
        assert_eq!(id, record.id);
        assert!(
            !format!("{record:?}").contains(secret),
            "the secret is not stored"
        );
        assert_eq!(check(&record, TokenKind::Join, secret, now()), Ok(()));
    }

    #[test]
    fn tokens_are_random() {
        let (a, _) = generate(TokenKind::Api, None, true, "", now()).unwrap();
        let (b, _) = generate(TokenKind::Api, None, true, "", now()).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_expired_used_and_malformed_tokens_are_refused() {
        let (token, mut record) = generate(
            TokenKind::Join,
            Some(Duration::from_secs(60)),
            false,
            "",
            now(),
        )
        .unwrap();
        let (_, secret) = parse(&token).unwrap();
        let wrong = "0".repeat(32);
        assert_eq!(
            check(&record, TokenKind::Join, &wrong, now()),
            Err(TokenError::Unknown)
        );
        assert_eq!(
            check(&record, TokenKind::Api, secret, now()),
            Err(TokenError::WrongKind)
        );
        assert_eq!(
            check(
                &record,
                TokenKind::Join,
                secret,
                now() + Duration::from_secs(60)
            ),
            Err(TokenError::Expired)
        );
        record.used = true;
        assert_eq!(
            check(&record, TokenKind::Join, secret, now()),
            Err(TokenError::Used)
        );
        record.reusable = true;
        assert_eq!(
            check(&record, TokenKind::Join, secret, now()),
            Ok(()),
            "reusable tokens can be used again"
        );
        for bad in [
            "",
            "abc",
            "abc.def",
            &format!("{}.{}", "g".repeat(12), "0".repeat(32)),
        ] {
            assert_eq!(parse(bad), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn tokens_without_ttl_do_not_expire() {
        let (token, record) = generate(TokenKind::Api, None, true, "admin", now()).unwrap();
        let (_, secret) = parse(&token).unwrap();
        assert_eq!(
            check(
                &record,
                TokenKind::Api,
                secret,
                now() + Duration::from_secs(10 * 365 * 86400)
            ),
            Ok(())
        );
    }
}
