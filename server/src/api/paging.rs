//! `Paging`, the one extractor of a list route's `limit` and `offset`: parsed like any query
//! parameter, checked (with the defaults applied) by `checked` where the handler asks.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult, ErrorCode};

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// Checks paging parameters and applies the defaults.
pub fn paging(limit: Option<i64>, offset: Option<i64>) -> ApiResult<(i64, i64)> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    let offset = offset.unwrap_or(0);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            format!("limit must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    if offset < 0 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "offset must not be negative",
        ));
    }
    Ok((limit, offset))
}

/// A list route's `limit` and `offset` as the query string gave them.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::IntoParams)]
pub struct Paging {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl Paging {
    /// The limit and offset to use: checked, with the defaults applied.
    pub fn checked(self) -> ApiResult<(i64, i64)> {
        paging(self.limit, self.offset)
    }
}

impl FromRequest for Paging {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // The same answer a malformed query parameter gets from any other query extractor.
        ready(
            web::Query::<Paging>::from_query(req.query_string())
                .map(web::Query::into_inner)
                .map_err(|e| ApiError::bad_request(ErrorCode::InvalidParameter, e.to_string())),
        )
    }
}
