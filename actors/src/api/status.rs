//! The API's one error edge: a [`StateError`] becomes the gRPC status a client sees
//! (and, through `crate::api::rest`, the HTTP status and JSON body).

use tonic::Status;

use crate::state::StateError;

impl From<StateError> for Status {
    fn from(e: StateError) -> Self {
        let message = e.to_string();
        match e {
            StateError::NotFound(_) => Status::not_found(message),
            StateError::AlreadyExists(_) => Status::already_exists(message),
            StateError::Conflict(_) => Status::aborted(message),
            StateError::NotLeader | StateError::Unavailable(_) => Status::unavailable(message),
            StateError::Invalid { .. } | StateError::BadRequest(_) => {
                Status::invalid_argument(message)
            }
            StateError::Precondition(_) => Status::failed_precondition(message),
            StateError::Denied(_) => Status::permission_denied(message),
            StateError::Unauthenticated(_) => Status::unauthenticated(message),
            StateError::Unsupported(_) => Status::unimplemented(message),
            StateError::TimedOut(_) => Status::deadline_exceeded(message),
            StateError::Internal(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_kind_of_failure_has_its_own_code_and_keeps_its_message() {
        let cases = [
            (
                StateError::NotFound("workload a/b not found".into()),
                Code::NotFound,
            ),
            (StateError::AlreadyExists("x".into()), Code::AlreadyExists),
            (StateError::Conflict("x".into()), Code::Aborted),
            (StateError::NotLeader, Code::Unavailable),
            (StateError::Unavailable("x".into()), Code::Unavailable),
            (
                StateError::invalid("spec.replicas", "must not be negative"),
                Code::InvalidArgument,
            ),
            (StateError::BadRequest("x".into()), Code::InvalidArgument),
            (
                StateError::Precondition("x".into()),
                Code::FailedPrecondition,
            ),
            (StateError::Denied("x".into()), Code::PermissionDenied),
            (
                StateError::Unauthenticated("x".into()),
                Code::Unauthenticated,
            ),
            (StateError::Unsupported("x".into()), Code::Unimplemented),
            (StateError::TimedOut("x".into()), Code::DeadlineExceeded),
            (StateError::Internal("x".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
        let field = Status::from(StateError::invalid("spec.replicas", "must not be negative"));
        assert_eq!(field.message(), "spec.replicas: must not be negative");
    }
}
