//! Turning gRPC answers into HTTP responses, and HTTP requests into gRPC calls: the
//! gateway's status mapping, JSON and NDJSON bodies, body limits and query flags.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;

use crate::client::LEADER_API_METADATA;

/// The value of an `Ok`, or returns the `Err`'s response from the handler.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(response) => return response,
        }
    };
}

/// Largest request body with a bundle. Bundles themselves are limited to 1 MiB
/// compressed (`kat_proto::bundle::Limits`), which the service checks with its own
/// message; this only stops a client from streaming without end.
pub const BUNDLE_BODY_LIMIT: usize = 4 << 20;
/// Largest JSON request body.
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// The HTTP status for a gRPC code (the usual gateway mapping).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::Aborted => StatusCode::CONFLICT,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::Unknown | C::Internal | C::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i32,
    status: String,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<&'a str>,
}

/// A gRPC status as an HTTP answer.
pub fn error_response(status: &Status) -> Response {
    let leader = status
        .metadata()
        .get(LEADER_API_METADATA)
        .and_then(|v| v.to_str().ok());
    let body = ErrorBody {
        code: status.code() as i32,
        status: format!("{:?}", status.code()),
        message: status.message(),
        leader,
    };
    let mut response = json_response(http_status(status.code()), &body);
    let headers = response.headers_mut();
    if let Some(leader) = leader.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(LEADER_API_METADATA, leader);
    }
    if status.code() == tonic::Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

pub(super) fn json_response<T: Serialize>(code: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            (
                code,
                [(header::CONTENT_TYPE, "application/json")],
                Bytes::from(bytes),
            )
                .into_response()
        }
        Err(e) => error_response(&Status::internal(format!("cannot encode the answer: {e}"))),
    }
}

pub(super) fn bad_request(message: String) -> Response {
    error_response(&Status::invalid_argument(message))
}

/// The call's metadata: the HTTP headers (the bearer token among them).
pub(super) fn grpc<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = MetadataMap::from_headers(headers.clone());
    request
}

pub(super) fn reply<T: Serialize>(result: Result<tonic::Response<T>, Status>) -> Response {
    match result {
        Ok(answer) => json_response(StatusCode::OK, answer.get_ref()),
        Err(status) => error_response(&status),
    }
}

/// A stream of messages as NDJSON; an error in the middle ends it with an
/// `{"error": ...}` line (the HTTP status has been sent by then).
pub(super) fn ndjson<T, S>(result: Result<tonic::Response<S>, Status>) -> Response
where
    T: Serialize,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let stream = match result {
        Ok(answer) => answer.into_inner(),
        Err(status) => return error_response(&status),
    };
    let lines = stream.map(|item| {
        let mut line = match item {
            Ok(message) => serde_json::to_vec(&message),
            Err(status) => serde_json::to_vec(&serde_json::json!({
                "error": {"code": status.code() as i32, "status": format!("{:?}", status.code()), "message": status.message()}
            })),
        }
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(line))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Reads a body of at most `limit` bytes; a larger one is refused with the limit —
/// before a byte of it is read when its `Content-Length` says so.
pub(super) async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, Response> {
    use axum::body::HttpBody;
    let announced = body.size_hint().lower();
    if usize::try_from(announced).map_or(true, |n| n > limit) {
        return Err(bad_request(format!(
            "request body: {what} larger than {} KiB",
            limit / 1024
        )));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_large {
            bad_request(format!(
                "request body: {what} larger than {} KiB",
                limit / 1024
            ))
        } else {
            bad_request(format!("request body: {e}"))
        }
    })
}

/// A JSON body as `T` (an empty body: all defaults).
pub(super) async fn json_body<T: DeserializeOwned + Default>(body: Body) -> Result<T, Response> {
    let bytes = read_body(body, JSON_BODY_LIMIT, "JSON").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("request body: {e}")))
}

/// A query flag: `true`/`1`/empty are true, `false`/`0` false.
pub(super) fn flag(query: &HashMap<String, String>, name: &str) -> Result<bool, String> {
    match query.get(name).map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(format!(
            "query parameter {name}: {other:?} is not true or false"
        )),
    }
}

pub(super) fn text(query: &HashMap<String, String>, name: &str) -> String {
    query.get(name).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kat_proto::v1alpha1::ExecRequest;

    #[test]
    fn every_grpc_code_maps_to_a_sensible_http_status() {
        assert_eq!(
            http_status(tonic::Code::Unauthenticated),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            http_status(tonic::Code::InvalidArgument),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(tonic::Code::AlreadyExists),
            StatusCode::CONFLICT
        );
        assert_eq!(
            http_status(tonic::Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(tonic::Code::Unimplemented),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            http_status(tonic::Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_with_the_limit() {
        let big = Body::from(vec![0u8; BUNDLE_BODY_LIMIT + 1]);
        let refused = read_body(big, BUNDLE_BODY_LIMIT, "the bundle is")
            .await
            .err()
            .map(|r| r.status());
        assert_eq!(refused, Some(StatusCode::BAD_REQUEST));
        let fits = Body::from(vec![0u8; 1000]);
        assert_eq!(
            read_body(fits, BUNDLE_BODY_LIMIT, "the bundle is")
                .await
                .map(|b| b.len())
                .ok(),
            Some(1000)
        );
        let refused = json_body::<ExecRequest>(Body::from("{\"command\": 7}"))
            .await
            .err()
            .map(|r| r.status());
        assert_eq!(refused, Some(StatusCode::BAD_REQUEST));
        let empty = json_body::<ExecRequest>(Body::empty()).await.ok();
        assert_eq!(empty, Some(ExecRequest::default()));
    }
}
