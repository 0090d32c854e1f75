//! The OTA routes for boards that run no agent (`ota-firmware-server.md`): firmware files,
//! the latest version and the version list of a project, the server status, and OTA tokens.
//!
//! They serve the release store of `firmware.rs`: a release uploaded with `project=P` is
//! `/firmware/P/<stored name>`. Boards get the seed's plain-text error bodies on `/firmware/…`
//! (their HTTP clients look at the status and log the text); `/status` and
//! `/admin/generate_token` are called by tools and answer the JSON error body.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use protocol::ota::{OtaTokenRequest, OtaTokenResponse};
use serde::Serialize;

use crate::api::audit::audited;
use crate::auth::{self, OtaClaims, Scope, TokenError};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::refusals;
use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::firmware::{is_safe_name, ReleaseRow};

/// The roles the seed puts in every OTA token.
const OTA_ROLES: [&str; 2] = ["device", "ota_client"];

/// Longest lifetime a token request may ask for, in minutes (one week).
const MAX_EXPIRY_MINUTES: u64 = 7 * 24 * 60;

fn plain(status: StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{text}\n"))
}

/// The token of a board request: the `Authorization: Bearer` header, else `?token=` (these
/// routes are all GET, the only methods for which the seed took a query token).
fn board_token(req: &HttpRequest) -> Option<String> {
    if let Some(token) = auth::bearer_token(req) {
        return Some(token.to_owned());
    }
    let method = req.method();
    if method == actix_web::http::Method::GET || method == actix_web::http::Method::HEAD {
        crate::auth::query_token(req)
    } else {
        None
    }
}

/// The plain refusal of a board request for `project`, or `None` to let it through: 401
/// without a valid OTA token, 403 when the token is for another project, 404 for a project
/// name that cannot exist, 429 once the address has had too many tokens refused.
async fn refusal(req: &HttpRequest, state: &AppState, project: &str) -> Option<HttpResponse> {
    if !is_safe_name(project, 64) {
        return Some(plain(StatusCode::NOT_FOUND, "Not Found"));
    }
    if state.config.ota_no_jwt {
        return None;
    }
    let Some(token) = board_token(req) else {
        return Some(plain(StatusCode::UNAUTHORIZED, "Missing token"));
    };
    let text = match state.jwt.verify_ota(&token) {
        Ok(claims) if claims.project == project => return None,
        Ok(_) => {
            return Some(plain(
                StatusCode::FORBIDDEN,
                "Token not valid for this project",
            ))
        }
        Err(TokenError::Expired) => "Token expired",
        Err(_) => "Invalid token",
    };
    let refused = ApiError::unauthorized(ErrorCode::InvalidToken, text);
    let source = crate::auth::source_of(req);
    match refusals::count_token::<()>(state, source.as_deref(), Err(refused)).await {
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
            let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "Too many refused tokens");
            if let Some(secs) = e.retry_after {
                response.headers_mut().insert(
                    actix_web::http::header::RETRY_AFTER,
                    actix_web::http::header::HeaderValue::from(secs),
                );
            }
            Some(response)
        }
        // The audit row of a lock could not be written: the board gets the plain 503.
        Err(e) if e.status != StatusCode::UNAUTHORIZED => {
            Some(plain(e.status, "Service unavailable"))
        }
        _ => Some(plain(StatusCode::UNAUTHORIZED, text)),
    }
}

async fn releases_of(state: &AppState, project: &str) -> ApiResult<Vec<ReleaseRow>> {
    let project = project.to_owned();
    state
        .db
        .run(move |conn| Ok(crate::store::firmware::of_project(conn, &project)?))
        .await
}

/// `GET /firmware/{project}/{file}`: the artifact, with ranges and the SHA-256 ETag.
pub async fn file(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project, file) = path.into_inner();
    if let Some(refused) = refusal(&req, &state, &project).await {
        return Ok(refused);
    }
    if !is_safe_name(&file, 200) {
        return Ok(plain(StatusCode::NOT_FOUND, "Not Found"));
    }
    let row = releases_of(&state, &project)
        .await?
        .into_iter()
        .find(|r| r.stored_name == file);
    match row {
        Some(row) => crate::api::firmware::serve(&req, &state, &row).await,
        None => Ok(plain(StatusCode::NOT_FOUND, "Not Found")),
    }
}

/// A release as the board routes describe it.
#[derive(Debug, Serialize)]
struct BoardRelease {
    project: String,
    version: String,
    channel: String,
    file: String,
    url: String,
    size: i64,
    sha256: String,
}

fn semver_of(row: &ReleaseRow) -> Option<semver::Version> {
    semver::Version::parse(&row.version).ok()
}

/// `GET /firmware/{project}/latest`: the release with the highest semantic version (of several
/// files of that version, the last uploaded).
pub async fn latest(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let project = path.into_inner();
    if let Some(refused) = refusal(&req, &state, &project).await {
        return Ok(refused);
    }
    let rows = releases_of(&state, &project).await?;
    // `max_by` keeps the last of equal elements; rows come oldest first.
    let Some(row) = rows
        .into_iter()
        .filter_map(|r| semver_of(&r).map(|v| (v, r)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, r)| r)
    else {
        return Ok(plain(StatusCode::NOT_FOUND, "No firmware for this project"));
    };
    Ok(HttpResponse::Ok().json(BoardRelease {
        url: format!("/firmware/{}/{}", row.project, row.stored_name),
        project: row.project,
        version: row.version,
        channel: row.channel,
        file: row.stored_name,
        size: row.size_bytes,
        sha256: row.sha256,
    }))
}

/// `GET /firmware/{project}/versions`: every version of the project once, lowest first in
/// semantic-version order (so `1.10.0` comes after `1.9.0`, and `1.0.0-rc.1` before `1.0.0`).
pub async fn versions(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let project = path.into_inner();
    if let Some(refused) = refusal(&req, &state, &project).await {
        return Ok(refused);
    }
    let mut versions: Vec<(semver::Version, String)> = releases_of(&state, &project)
        .await?
        .into_iter()
        .filter_map(|r| semver_of(&r).map(|v| (v, r.version)))
        .collect();
    versions.sort_by(|a, b| a.0.cmp(&b.0));
    versions.dedup_by(|a, b| a.1 == b.1);
    let versions: Vec<String> = versions.into_iter().map(|(_, v)| v).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"project": project, "versions": versions})))
}

/// `GET /status`: that the OTA service is up and whether it wants tokens.
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "jwt": !state.config.ota_no_jwt,
        "version": env!("CARGO_PKG_VERSION"),
        "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}

/// `POST /admin/generate_token` with `X-Admin-Secret`: an OTA token for one board and project.
/// 403 while no secret is configured, 401 for a missing or wrong one, 429 with `Retry-After`
/// once an address has had `source_max_failures` wrong ones (even the right secret, until the
/// lock ends). Wrong secrets are audited up to the lock, the lock once, later refusals as
/// summaries (`refusals.rs`); every token issued is audited.
pub async fn generate_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let source = crate::auth::source_of(&req);
    let Some(secret) = state.config.ota_admin_secret.as_deref() else {
        return Err(ApiError::forbidden(
            "OTA token generation is disabled: no OTA admin secret is configured",
        ));
    };
    let source_key = source.clone().unwrap_or_default();
    let slot = state
        .limits
        .ota_by_source
        .reserve(&source_key, refusals::ADMISSION_WAIT)
        .await
        .map_err(|r| refusals::refusal_error(r, "too many wrong admin secrets; try again later"))?;
    let given = req
        .headers()
        .get("X-Admin-Secret")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !auth::secrets_equal(given, secret) {
        let mut entries = vec![AuditEntry::new("ota.token.generate", "denied")
            .params(serde_json::json!({"reason": "wrong admin secret"}))
            .source(source)];
        entries.extend(slot.fail().as_ref().map(refusals::lockout_entry));
        refusals::record_all(&state.db, entries).await?;
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidAdminSecret,
            "missing or wrong X-Admin-Secret",
        ));
    }
    slot.succeed(false);
    let request: OtaTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidBody, e.to_string()))?;
    if request.device_id.is_empty()
        || request.device_id.len() > 128
        || request.device_id.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            "device_id must be 1-128 characters without control characters",
        ));
    }
    if !is_safe_name(&request.project, 64) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            "project must be 1-64 of [A-Za-z0-9._-]",
        ));
    }
    let minutes = request
        .expires_minutes
        .unwrap_or(state.config.ota_jwt_expiry_minutes);
    if !(1..=MAX_EXPIRY_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            format!("expires_minutes must be 1-{MAX_EXPIRY_MINUTES}"),
        ));
    }
    let now = Utc::now();
    let expires_at = now + chrono::Duration::minutes(minutes as i64);
    let claims = OtaClaims {
        sub: request.device_id.clone(),
        project: request.project.clone(),
        roles: OTA_ROLES.iter().map(|r| (*r).to_owned()).collect(),
        iat: now.timestamp(),
        exp: expires_at.timestamp(),
        jti: format!("{}-{}", request.device_id, uuid::Uuid::new_v4()),
        // The seed's default when a board does not say.
        fw_version: request.current_fw.clone().unwrap_or_else(|| "1.0.0".into()),
        scope: Scope::Ota,
    };
    let entry = AuditEntry::new("ota.token.generate", "success")
        .target(Some(claims.sub.clone()))
        .params(serde_json::json!({
            "project": claims.project, "exp": claims.exp, "jti": claims.jti,
            "fwVersion": claims.fw_version,
        }))
        .source(source);
    // The row is written before the token exists, so no token is ever unrecorded.
    audited(&state.db, entry, |_| Ok(())).await?;
    let token = state.jwt.issue_ota(&claims)?;
    tracing::info!(device = %claims.sub, project = %claims.project, exp = claims.exp, "OTA token issued");
    Ok(HttpResponse::Ok().json(OtaTokenResponse {
        token,
        expires_at: expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        payload: serde_json::to_value(&claims).map_err(ApiError::internal)?,
    }))
}
