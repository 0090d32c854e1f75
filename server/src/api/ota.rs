//! The OTA routes for boards that run no agent (`ota-firmware-server.md`): firmware files,
//! the latest version and the version list of a project, the server status, and OTA tokens.
//!
//! They serve the release store of `firmware.rs`: a release uploaded with `project=P` is
//! `/firmware/P/<stored name>`. Boards get the seed's plain-text error bodies on `/firmware/…`
//! (their HTTP clients look at the status and log the text); `/status`, `/favicon.ico` and
//! the `/admin/…` routes are called by tools and answer the JSON error body.
//!
//! Board identity, as in the OTA seed's latest version: a token carries `aud: ota_api`, this
//! server's `iss` and the roles `device` and `fw_download`; a download names the board in
//! `X-Device-ID` (or `?device_id=`), which must be the token's `sub`, and the board must be
//! listed for the project with firmware access (`api/boards.rs`), else 403. A revoked token
//! (`POST /admin/revoke_token`, kept in `revoked_tokens` as `ota:<jti>`) is 401 at once.
//! `--ota-legacy-boards` keeps the seed document's behaviour for boards already in the field:
//! its tokens (no audience, role `ota_client`), no device id, no list.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use protocol::ota::{OtaTokenRequest, OtaTokenResponse, RevokeTokenRequest, DEVICE_ID_HEADER};
use serde::Serialize;

use crate::api::audit::audited;
use crate::api::firmware::Downloader;
use crate::auth::{self, OtaClaims, Scope, TokenError};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::jwt::{OTA_AUDIENCE, OTA_ISSUER, OTA_LEGACY_ROLES, OTA_ROLES};
use crate::refusals;
use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::firmware::{is_safe_name, ReleaseRow};

/// How OTA revocations are kept apart from user-token revocations in `revoked_tokens`: the
/// OTA admin secret must not be able to log users out by naming their `jti`.
fn revocation_key(jti: &str) -> String {
    format!("ota:{jti}")
}

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

/// The plain refusal of a board request for `project`, or the token's claims to let it
/// through (`None` with `--ota-no-jwt`): 401 without a valid OTA token or with a revoked one,
/// 403 when the token is for another project, 404 for a project name that cannot exist, 429
/// once the address has had too many tokens refused.
async fn admit(
    req: &HttpRequest,
    state: &AppState,
    project: &str,
) -> Result<Option<OtaClaims>, HttpResponse> {
    if !is_safe_name(project, 64) {
        return Err(plain(StatusCode::NOT_FOUND, "Not Found"));
    }
    if state.config.ota_no_jwt {
        return Ok(None);
    }
    let Some(token) = board_token(req) else {
        return Err(plain(StatusCode::UNAUTHORIZED, "Missing token"));
    };
    let text = match state.jwt.verify_ota(&token, state.config.ota_legacy_boards) {
        Ok(claims) => {
            let key = revocation_key(&claims.jti);
            let revoked = state
                .db
                .run(move |conn| Ok(crate::store::tokens::is_revoked(conn, &key)?))
                .await;
            match revoked {
                Ok(false) if claims.project == project => return Ok(Some(claims)),
                Ok(false) => {
                    return Err(plain(
                        StatusCode::FORBIDDEN,
                        "Token not valid for this project",
                    ))
                }
                Ok(true) => "Token revoked",
                Err(e) => return Err(plain(e.status, "Service unavailable")),
            }
        }
        Err(TokenError::Expired) => "Token expired",
        Err(_) => "Invalid token",
    };
    let refused = ApiError::unauthorized(ErrorCode::InvalidToken, text);
    let source = crate::auth::source_of(req);
    Err(
        match refusals::count_token::<()>(state, source.as_deref(), Err(refused)).await {
            Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
                let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "Too many refused tokens");
                if let Some(secs) = e.retry_after {
                    response.headers_mut().insert(
                        actix_web::http::header::RETRY_AFTER,
                        actix_web::http::header::HeaderValue::from(secs),
                    );
                }
                response
            }
            // The audit row of a lock could not be written: the board gets the plain 503.
            Err(e) if e.status != StatusCode::UNAUTHORIZED => {
                plain(e.status, "Service unavailable")
            }
            _ => plain(StatusCode::UNAUTHORIZED, text),
        },
    )
}

/// The board a download names: `X-Device-ID`, else `?device_id=`.
fn named_board(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(DEVICE_ID_HEADER) {
        return value.to_str().ok().map(str::to_owned);
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("device_id").cloned())
}

/// Checks who downloads: the token allows downloads, the request names the token's board,
/// and that board is listed for the project with firmware access (403 otherwise). Answers the
/// board's production line, for the download budget. Legacy boards and `--ota-no-jwt` skip
/// it, as the seed document did.
async fn board_identity(
    req: &HttpRequest,
    state: &AppState,
    project: &str,
    claims: Option<&OtaClaims>,
) -> Result<Option<String>, HttpResponse> {
    let Some(claims) = claims else {
        return Ok(None);
    };
    if state.config.ota_legacy_boards {
        return Ok(None);
    }
    let forbidden = |text: &str| plain(StatusCode::FORBIDDEN, text);
    if !claims.has_role("fw_download") {
        return Err(forbidden("Token does not allow firmware downloads"));
    }
    let Some(named) = named_board(req) else {
        return Err(forbidden("Missing X-Device-ID"));
    };
    if !auth::secrets_equal(&named, &claims.sub) {
        return Err(forbidden("X-Device-ID does not match the token"));
    }
    let (p, d) = (project.to_owned(), claims.sub.clone());
    let board = state
        .db
        .run(move |conn| Ok(crate::store::boards::find(conn, &p, &d)?))
        .await
        .map_err(|e| plain(e.status, "Service unavailable"))?;
    match board {
        Some(board) if board.fw_access => Ok(board.production_line_id),
        Some(_) => Err(forbidden("Device has no firmware access for this project")),
        None => Err(forbidden("Device not registered for this project")),
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
    let claims = match admit(&req, &state, &project).await {
        Ok(claims) => claims,
        Err(refused) => return Ok(refused),
    };
    let line = match board_identity(&req, &state, &project, claims.as_ref()).await {
        Ok(line) => line,
        Err(refused) => return Ok(refused),
    };
    if !is_safe_name(&file, 200) {
        return Ok(plain(StatusCode::NOT_FOUND, "Not Found"));
    }
    let row = releases_of(&state, &project)
        .await?
        .into_iter()
        .find(|r| r.stored_name == file);
    match row {
        Some(row) => {
            let who = Downloader { line, board: true };
            crate::api::firmware::serve(&req, &state, &row, who).await
        }
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
    if let Err(refused) = admit(&req, &state, &project).await {
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
    if let Err(refused) = admit(&req, &state, &project).await {
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

/// Checks `X-Admin-Secret` for an `/admin/…` route: 403 while no secret is configured, 401
/// for a missing or wrong one (audited as `action` denied, up to the lock), 429 with
/// `Retry-After` once the address has had `source_max_failures` wrong ones.
async fn check_admin_secret(state: &AppState, req: &HttpRequest, action: &str) -> ApiResult<()> {
    let source = crate::auth::source_of(req);
    let Some(secret) = state.config.ota_admin_secret.as_deref() else {
        return Err(ApiError::forbidden(
            "the OTA admin routes are disabled: no OTA admin secret is configured",
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
        let mut entries = vec![AuditEntry::new(action, "denied")
            .params(serde_json::json!({"reason": "wrong admin secret"}))
            .source(source)];
        entries.extend(slot.fail().await.as_ref().map(refusals::lockout_entry));
        refusals::record_all(&state.db, entries).await?;
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidAdminSecret,
            "missing or wrong X-Admin-Secret",
        ));
    }
    slot.succeed(false).await;
    Ok(())
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
    check_admin_secret(&state, &req, "ota.token.generate").await?;
    let source = crate::auth::source_of(&req);
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
    // Legacy mode issues the seed document's tokens, which its boards expect; otherwise the
    // latest version's, with audience, issuer and the download role.
    let legacy = state.config.ota_legacy_boards;
    let roles = if legacy { OTA_LEGACY_ROLES } else { OTA_ROLES };
    let claims = OtaClaims {
        aud: (!legacy).then(|| OTA_AUDIENCE.to_owned()),
        iss: (!legacy).then(|| OTA_ISSUER.to_owned()),
        sub: request.device_id.clone(),
        project: request.project.clone(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
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

/// `POST /admin/revoke_token` with `X-Admin-Secret` and `{"token"}` or `{"jti"}`: the token
/// is refused on every board route from now on, across restarts (`revoked_tokens`, pruned once
/// the token would have expired anyway). Audited as `ota.token.revoke`.
pub async fn revoke_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    check_admin_secret(&state, &req, "ota.token.revoke").await?;
    let request: RevokeTokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidBody, e.to_string()))?;
    let (jti, subject, expires_at) = match (&request.token, &request.jti) {
        (Some(token), None) => {
            // Legacy tokens too: a board of the field must be revocable whatever the mode.
            let claims = state.jwt.verify_ota(token, true).map_err(|e| {
                ApiError::bad_request(
                    ErrorCode::InvalidBody,
                    format!("token is not a live OTA token of this server: {e}"),
                )
            })?;
            let expires = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(|| {
                Utc::now() + chrono::Duration::minutes(MAX_EXPIRY_MINUTES as i64)
            });
            (claims.jti, claims.sub, expires)
        }
        (None, Some(jti)) if !jti.is_empty() && jti.len() <= 256 => {
            // The token's expiry is unknown: kept as long as any token can live.
            let expires = Utc::now() + chrono::Duration::minutes(MAX_EXPIRY_MINUTES as i64);
            (jti.clone(), "ota".to_owned(), expires)
        }
        _ => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidBody,
                "give either token or jti (1-256 characters)",
            ))
        }
    };
    let entry = AuditEntry::new("ota.token.revoke", "success")
        .target(Some(subject.clone()))
        .params(serde_json::json!({ "jti": jti }))
        .source(crate::auth::source_of(&req));
    let key = revocation_key(&jti);
    audited(&state.db, entry, move |conn| {
        Ok(crate::store::tokens::revoke(
            conn, &key, &subject, expires_at,
        )?)
    })
    .await?;
    tracing::info!(%jti, "OTA token revoked");
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "revoked": true,
        "jti": jti,
        "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
    })))
}

/// `GET /favicon.ico`: `<data dir>/www/favicon.ico` when there is one, as the seed served it
/// from its `www/` directory; 404 otherwise.
pub async fn favicon(state: web::Data<AppState>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let path = state.config.data_dir.join("www").join("favicon.ico");
    let file = web::block(move || actix_files::NamedFile::open(path))
        .await
        .map_err(ApiError::internal)?;
    match file {
        Ok(file) => Ok(file
            .set_content_type("image/x-icon".parse().map_err(ApiError::internal)?)
            .into_response(&req)),
        Err(_) => Err(ApiError::not_found(ErrorCode::NotFound, "no favicon.ico")),
    }
}
