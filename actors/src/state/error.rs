//! [`StateError`]: the one error of cluster-state operations and the leader's
//! behaviours. Each variant says what kind of failure it is (the API edge maps the
//! kind to a gRPC code in one place, `crate::api::status`) and carries the message
//! a user reads.

use crate::store::StoreError;

/// Why a cluster-state operation did not happen. Nothing was written when it fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// What the call names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// What the call would create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object changed between read and write (or a racing call won): ask again.
    #[error("{0}")]
    Conflict(String),
    /// This member does not lead (any more); the fenced write was refused.
    #[error("this member is no longer the leader; ask again")]
    NotLeader,
    /// A field of the request is wrong.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A request that is malformed as a whole (a bundle's list of problems).
    #[error("{0}")]
    BadRequest(String),
    /// The request is fine but the cluster is not in a state that allows it.
    #[error("{0}")]
    Precondition(String),
    /// The caller may not do this (a node speaking for another).
    #[error("{0}")]
    Denied(String),
    /// The caller's credential was refused.
    #[error("{0}")]
    Unauthenticated(String),
    /// The store (or another part the call needs) cannot be reached; the caller may
    /// retry.
    #[error("{0}")]
    Unavailable(String),
    /// This cluster cannot do it at all (e.g. snapshots of the in-memory store).
    #[error("{0}")]
    Unsupported(String),
    /// A wait the caller asked for ran out.
    #[error("{0}")]
    TimedOut(String),
    /// A stored record that does not decode, or a fault of ours.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        StateError::Unavailable(e.to_string())
    }
}

impl From<prost::DecodeError> for StateError {
    fn from(e: prost::DecodeError) -> Self {
        StateError::Internal(format!("stored record unreadable: {e}"))
    }
}

impl StateError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        StateError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A stored record of `what` that does not decode.
    pub fn corrupt(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        StateError::Internal(format!("{what}: stored record unreadable: {e}"))
    }
}

/// The result of cluster-state operations.
pub type StateResult<T> = Result<T, StateError>;
