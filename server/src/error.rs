//! The one error type of the REST API: a status, a stable `snake_case` code and a message,
//! rendered as `{"success": false, "error": {"code", "message"}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use protocol::rest::{ErrorBody, ErrorEnvelope};
use serde::Serialize;

/// Codes scripts can match on; renaming one is an API break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidBody,
    InvalidParameter,
    UnknownCommandType,
    InvalidCommand,
    ConfirmationRequired,
    Unauthorized,
    InvalidToken,
    TokenExpired,
    InvalidCredentials,
    InvalidEnrollmentKey,
    EnrollmentDisabled,
    RateLimited,
    Forbidden,
    UsernameTaken,
    LastAdmin,
    UserNotFound,
    NotFound,
    DeviceNotFound,
    CommandNotFound,
    DuplicateCommandId,
    CommandInFlight,
    CommandNotCancellable,
    GroupNotFound,
    GroupNameTaken,
    TooManyTargets,
    PayloadTooLarge,
    ReleaseNotFound,
    ReleaseExists,
    ReleaseDeployed,
    DeploymentNotFound,
    DeploymentState,
    DeviceInDeployment,
    InvalidSignature,
    SignatureRequired,
    SignatureExpired,
    InvalidAdminSecret,
    DatabaseUnavailable,
    /// 503: too many requests need a scarce resource (password checks) at once.
    ServerBusy,
    Internal,
}

impl ErrorCode {
    /// The wire name, which is the serde name.
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s,
            _ => "internal".to_owned(),
        }
    }
}

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

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::DatabaseUnavailable,
            message,
        )
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
                code: self.code.name(),
                message: self.message.clone(),
            },
        })
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => ApiError::not_found(ErrorCode::NotFound, "not found"),
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                ApiError::conflict(ErrorCode::InvalidParameter, info.message().to_owned())
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<r2d2::Error> for ApiError {
    fn from(e: r2d2::Error) -> Self {
        tracing::warn!(error = %e, "database pool");
        ApiError::unavailable("database unavailable")
    }
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

    #[test]
    fn codes_are_snake_case() {
        assert_eq!(ErrorCode::UnknownCommandType.name(), "unknown_command_type");
        assert_eq!(
            ErrorCode::InvalidEnrollmentKey.name(),
            "invalid_enrollment_key"
        );
    }
}
