//! `StoreError`, the one error of the store: what went wrong (`Kind`), the contract's code
//! for it and a message. The REST edge maps it to its answer in `crate::error`.

pub use protocol::rest::ErrorCode;

/// What kind of failure a store call met; the edge chooses the answer's status from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The caller's input cannot be stored (400).
    Invalid,
    /// The caller may not do this (403).
    Forbidden,
    /// A row the caller named does not exist (404).
    NotFound,
    /// The change collides with what is stored (409).
    Conflict,
    /// The input is well formed but refused by a rule (422).
    Unprocessable,
    /// The input is larger than the store keeps (413).
    TooLarge,
    /// The database cannot be reached now; retrying later may work (503).
    Unavailable,
    /// A bug or an unexpected database answer (500).
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct StoreError {
    pub kind: Kind,
    pub code: ErrorCode,
    pub message: String,
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn new(kind: Kind, code: ErrorCode, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, code, message)
    }

    pub fn forbidden_with(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, code, message)
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, message)
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }

    pub fn unprocessable(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Kind::Unprocessable, code, message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(Kind::TooLarge, ErrorCode::PayloadTooLarge, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, ErrorCode::DatabaseUnavailable, message)
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(Kind::Internal, ErrorCode::Internal, "internal server error")
    }
}

/// Why text with NUL is refused, wherever it is refused.
pub const NUL_REFUSED: &str = "NUL characters (U+0000) are not accepted";

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        if lost_database(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return StoreError::unavailable("database unavailable; retry later");
        }
        match e {
            Error::NotFound => StoreError::not_found(ErrorCode::NotFound, "not found"),
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::conflict(ErrorCode::InvalidParameter, info.message().to_owned())
            }
            // A backstop: text with NUL is refused where it enters (`input`), but should some
            // reach PostgreSQL, which cannot store it ("invalid byte sequence for encoding
            // "UTF8": 0x00"), it is the client's bad input, not the server's fault.
            Error::DatabaseError(_, info) if info.message().contains("invalid byte sequence") => {
                StoreError::bad_request(
                    ErrorCode::InvalidBody,
                    format!("text that cannot be stored: {NUL_REFUSED}"),
                )
            }
            other => StoreError::internal(other),
        }
    }
}

/// Whether the error says the database itself is gone (closed, locked), not the query wrong.
fn lost_database(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | Error::BrokenTransactionManager => true,
        Error::DatabaseError(_, info) => info.message().contains("database is locked"),
        Error::RollbackErrorOnCommit {
            rollback_error,
            commit_error,
        } => lost_database(commit_error) || lost_database(rollback_error),
        _ => false,
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        tracing::warn!(error = %e, "database pool");
        StoreError::unavailable("database unavailable; retry later")
    }
}
