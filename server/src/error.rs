//! The one error type of the REST API: a status, a stable `snake_case` code and a message,
//! rendered as `{"success": false, "error": {"code", "message"}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use protocol::rest::{ErrorBody, ErrorEnvelope};

pub use protocol::rest::ErrorCode;

use crate::store::error::{Kind, StoreError};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 and 503 answers).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The `Retry-After` of a `database_unavailable` answer: a restarting database is usually back
/// within seconds, and the pool waits up to 10 s for a connection on the next try anyway.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 5;

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn too_many_requests(retry_after_secs: u64, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                message,
            )
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// 403 with a code more precise than `forbidden`.
    pub fn forbidden_with(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            message,
        )
    }

    /// The database cannot be reached (pool timeout, refused or lost connection): 503 with
    /// `Retry-After`, so a client retries the same request later instead of giving it up.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(DATABASE_RETRY_AFTER_SECS),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::DatabaseUnavailable,
                message,
            )
        }
    }

    /// 503 `server_busy` with `Retry-After`: the request was fine, the server has no room for
    /// it right now.
    pub fn busy(retry_after_secs: u64, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServerBusy,
                message,
            )
        }
    }

    /// For faults of the server itself. The detail goes to the log, not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal server error",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        response.json(ErrorEnvelope {
            success: false,
            error: ErrorBody {
                code: self.code.as_str().to_owned(),
                message: self.message.clone(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e.kind {
            Kind::Invalid => StatusCode::BAD_REQUEST,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // A lost database is worth retrying soon; say when.
        let retry_after = (e.kind == Kind::Unavailable).then_some(DATABASE_RETRY_AFTER_SECS);
        ApiError {
            status,
            code: e.code,
            message: e.message,
            retry_after,
        }
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<r2d2::Error> for ApiError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::from(e).into()
    }
}

/// The error a scanned body's stream ends with when it holds a NUL.
#[derive(Debug, thiserror::Error)]
#[error(
    "the body contains a \\u0000 escape: {}",
    crate::store::error::NUL_REFUSED
)]
pub struct NulInBody;

/// Whether a payload error is the scan's refusal.
pub fn is_nul_in_body(error: &actix_web::error::PayloadError) -> bool {
    matches!(error, actix_web::error::PayloadError::Io(io) if io.get_ref().is_some_and(|e| e.is::<NulInBody>()))
}

/// A request body that could not be read: NUL in it (`input`), too large, or cut short.
pub fn payload_error(err: &actix_web::error::PayloadError) -> ApiError {
    use actix_web::error::PayloadError;
    if is_nul_in_body(err) {
        return ApiError::bad_request(ErrorCode::InvalidBody, err.to_string());
    }
    match err {
        PayloadError::Overflow => ApiError::payload_too_large(format!(
            "the body is larger than the {} bytes this route accepts",
            crate::MAX_JSON_BODY
        )),
        other => ApiError::bad_request(
            ErrorCode::InvalidBody,
            format!("cannot read the body: {other}"),
        ),
    }
}

/// The `ApiError` for an error actix produced itself (an extractor without an error handler
/// of ours, a WebSocket handshake, …), keeping its status.
pub fn from_actix(err: &actix_web::Error) -> ApiError {
    if let Some(api) = err.as_error::<ApiError>() {
        return api.clone();
    }
    if let Some(payload) = err.as_error::<actix_web::error::PayloadError>() {
        return payload_error(payload);
    }
    // The status of the answer actix would give: some errors (the WebSocket handshake's)
    // choose it in `error_response` and leave `status_code` at 500.
    let status = err.as_response_error().error_response().status();
    let code = match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        s if s.is_client_error() => ErrorCode::BadRequest,
        _ => return ApiError::internal(err),
    };
    ApiError::new(status, code, err.to_string())
}

/// The middleware that gives every error answer the contract's JSON body: an error actix
/// produced itself (plain text) is replaced by its `ApiError`. Answers that carry no error,
/// such as the plain refusals boards get on `/firmware/…`, are left alone.
pub async fn json_errors(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse, actix_web::Error> {
    // An error returned rather than answered is rendered by actix from the error itself, so
    // handing it back as an `ApiError` is enough. (The request cannot be cloned here to build
    // an answer: routing needs it unshared.)
    let res = next
        .call(req)
        .await
        .map_err(|err| actix_web::Error::from(from_actix(&err)))?;
    let replacement = res
        .response()
        .error()
        .filter(|e| e.as_error::<ApiError>().is_none())
        .map(from_actix);
    Ok(match replacement {
        Some(api) => {
            let (request, _) = res.into_parts();
            actix_web::dev::ServiceResponse::new(request, HttpResponse::from_error(api))
        }
        None => res.map_into_boxed_body(),
    })
}

/// Extractor failures (bad JSON, bad query, bad path) become `400 invalid_body` or
/// `invalid_parameter` in the JSON shape instead of actix's plain text.
pub fn json_error_handler(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                err.to_string(),
            )
            .into()
        }
        JsonPayloadError::Payload(payload) => payload_error(&payload).into(),
        other => ApiError::bad_request(ErrorCode::InvalidBody, other.to_string()).into(),
    }
}

pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request(ErrorCode::InvalidParameter, err.to_string()).into()
}

pub fn path_error_handler(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request(ErrorCode::InvalidParameter, err.to_string()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn error_body_has_the_contract_shape() {
        let resp = ApiError::unprocessable(
            ErrorCode::ConfirmationRequired,
            "reboot_os needs confirm: true",
        )
        .error_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let bytes = resp.into_body().try_into_bytes().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "success": false,
                "error": {"code": "confirmation_required", "message": "reboot_os needs confirm: true"}
            })
        );
    }

    fn db_error(kind: diesel::result::DatabaseErrorKind, message: &str) -> diesel::result::Error {
        diesel::result::Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn a_lost_database_is_503_with_retry_after() {
        use diesel::result::{DatabaseErrorKind, Error};
        let lost = [
            db_error(
                DatabaseErrorKind::ClosedConnection,
                "server closed the connection unexpectedly",
            ),
            db_error(DatabaseErrorKind::UnableToSendCommand, "no connection"),
            Error::BrokenTransactionManager,
            Error::RollbackErrorOnCommit {
                rollback_error: Box::new(Error::BrokenTransactionManager),
                commit_error: Box::new(db_error(DatabaseErrorKind::ClosedConnection, "gone")),
            },
            db_error(DatabaseErrorKind::Unknown, "database is locked"),
        ];
        for e in lost {
            let api = ApiError::from(e);
            assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE, "{api:?}");
            assert_eq!(api.code, ErrorCode::DatabaseUnavailable);
            let resp = api.error_response();
            assert_eq!(
                resp.headers()
                    .get(actix_web::http::header::RETRY_AFTER)
                    .unwrap(),
                &DATABASE_RETRY_AFTER_SECS.to_string()
            );
        }
        let bug = ApiError::from(db_error(DatabaseErrorKind::Unknown, "syntax error"));
        assert_eq!(bug.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn actix_payload_errors_become_the_envelope() {
        use actix_web::error::PayloadError;
        let too_large = from_actix(&PayloadError::Overflow.into());
        assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(too_large.code, ErrorCode::PayloadTooLarge);
        let nul = PayloadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            NulInBody,
        ));
        let refused = from_actix(&nul.into());
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(refused.code, ErrorCode::InvalidBody);
        assert!(refused.message.contains("U+0000"), "{}", refused.message);
    }

    #[test]
    fn codes_are_snake_case() {
        assert_eq!(
            ErrorCode::UnknownCommandType.as_str(),
            "unknown_command_type"
        );
        assert_eq!(
            ErrorCode::InvalidEnrollmentKey.as_str(),
            "invalid_enrollment_key"
        );
    }
}
