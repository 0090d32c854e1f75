//! What a refused unauthenticated attempt costs the server: little, and a bounded number of
//! audit rows.
//!
//! Failures that count towards a lock keep their row each (the limits bound them), a key that
//! locks gets one row (`locked`), and the attempts refused while it is locked are only counted
//! in memory, then written as one `refused` row per key every `audit_summary_secs` with the
//! count and the time span. However many requests an attacker sends, the audit table grows by
//! O(keys × periods), and the keys are capped by the limiters.

use std::time::Duration;

use actix_web::http::StatusCode;

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::limiter::{Limiter, Slot};
pub use crate::limits::{flush_summaries, lockout_entry, record_all};
use crate::ratelimit::{retry_after_secs, Refusal};
use crate::state::AppState;

/// How long an attempt waits while its key's remaining attempts are all being checked.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// The answer to an attempt that was not admitted.
pub fn refusal_error(refusal: Refusal, locked: &str) -> ApiError {
    match refusal {
        Refusal::Locked(wait) => ApiError::too_many_requests(retry_after_secs(wait), locked),
        Refusal::Busy => {
            ApiError::too_many_requests(1, "too many attempts at once for this key; try again")
        }
        Refusal::Unavailable => ApiError::unavailable(
            "the failure counts the replicas share cannot be read; try again shortly",
        ),
    }
}

/// Admits one attempt for each `(limiter, key)` in order, or answers why not. Slots already
/// taken are given back when a later key refuses.
pub async fn admit<'a>(keys: &[(&'a Limiter, &str)], locked: &str) -> ApiResult<Vec<Slot<'a>>> {
    let mut taken = Vec::with_capacity(keys.len());
    for &(limiter, key) in keys {
        let slot = limiter
            .reserve(key, ADMISSION_WAIT)
            .await
            .map_err(|r| refusal_error(r, locked))?;
        taken.push(slot);
    }
    Ok(taken)
}

/// Counts a refused token (401) against its source address. Past the limit the refusal is
/// answered 429 with `Retry-After` instead, and is only counted for the summary; the failure
/// that locks the address writes the one `auth.token` `locked` row. A valid token is never
/// refused here, whatever its address did: tokens cannot be guessed, so a lock would protect
/// nothing and would let one broken client lock out its neighbours behind the same NAT.
pub async fn count_token<T>(
    state: &AppState,
    source: Option<&str>,
    result: ApiResult<T>,
) -> ApiResult<T> {
    let err = match result {
        Ok(value) => return Ok(value),
        // A missing token is no attempt at anything; only a token that was refused counts.
        Err(e) if e.status == StatusCode::UNAUTHORIZED && e.code != ErrorCode::Unauthorized => e,
        Err(e) => return Err(e),
    };
    match state
        .limits
        .token_by_source
        .note_failure(source.unwrap_or_default())
    {
        Ok(None) => Err(err),
        Ok(Some(lock)) => {
            record_all(&state.db, vec![lockout_entry(&lock)]).await?;
            Err(err)
        }
        Err(wait) => Err(ApiError::too_many_requests(
            retry_after_secs(wait),
            "too many refused tokens from this address; try again later",
        )),
    }
}
