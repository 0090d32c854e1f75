//! Firmware releases: upload (streamed to disk, hashed, optionally signature-checked), list,
//! get, delete, and the artifact download with ranges, ETag and HEAD.
//!
//! An artifact is written to a temporary file in `<data dir>/firmware`, synced, and linked to
//! its final name `<safeVersion>-<filename>` only when the whole body arrived within the size
//! limit and its signature (if any) holds; every other outcome deletes the temporary file.
//!
//! # Signed manifest
//!
//! A release signature is Ed25519 over these UTF-8 bytes, each line ending in `\n`, nothing
//! else before, between or after:
//!
//! ```text
//! factory-firmware-manifest-v1
//! project=<project>
//! version=<version>
//! sha256=<64 lowercase hex digits>
//! size=<bytes, decimal>
//! expires=<unix seconds, decimal>
//! downgrade=allowed          (only with allowDowngrade=true)
//! security_floor=<decimal>   (only with securityFloor)
//! ```
//!
//! `expires` is the upload's `signatureExpiresAt`; a manifest past it is refused. The last two
//! lines are the rollback fields (`protocol::firmware::Manifest`); without them the manifest is
//! the original one. A server with trusted keys takes signed uploads only, unless it runs with
//! `--firmware-allow-unsigned`.

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_files::NamedFile;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::header::{self, EntityTag, Header, IfNoneMatch};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use protocol::rest::Envelope;
use serde::Deserialize;

use crate::api::audit::{audited, by_user};
use crate::api::paging::Paging;
use crate::auth::{self, Authorized, ManageFirmware, Permission, Scope, ViewDevices};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::firmware::*;

/// Bytes gathered from the request before one write to disk.
const WRITE_CHUNK: usize = 256 * 1024;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidParameter, message)
}

/// Checks an upload's names and version before any byte of the body is read.
fn validate_release(project: &str, version: &str, channel: &str, filename: &str) -> ApiResult<()> {
    if !is_safe_name(project, 64) {
        return Err(invalid(
            "project must be 1-64 of [A-Za-z0-9._-], not starting with a dot",
        ));
    }
    if !is_safe_name(filename, 128) {
        return Err(invalid(
            "filename must be 1-128 of [A-Za-z0-9._-], not starting with a dot (no paths)",
        ));
    }
    if !is_safe_name(channel, 32) {
        return Err(invalid("channel must be 1-32 of [A-Za-z0-9._-]"));
    }
    if version.len() > 64 || semver::Version::parse(version).is_err() {
        return Err(invalid(format!(
            "version `{version}` is not a semantic version like 1.2.3"
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct UploadQuery {
    pub version: String,
    /// The seed's upload names no project; its releases are the edge agent's.
    #[serde(default = "agent_project")]
    pub project: String,
    pub filename: String,
    pub channel: Option<String>,
    pub signature_base64: Option<String>,
    pub signature_expires_at: Option<String>,
    /// The signed manifest's downgrade permission.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// The signed manifest's security floor.
    pub security_floor: Option<u64>,
}

fn agent_project() -> String {
    protocol::firmware::AGENT_PROJECT.to_owned()
}

/// A signature asked for with an upload, checked once the hash and size are known.
struct PendingSignature {
    encoded: String,
    expires_at: DateTime<Utc>,
}

fn pending_signature(query: &UploadQuery, state: &AppState) -> ApiResult<Option<PendingSignature>> {
    let Some(encoded) = &query.signature_base64 else {
        if state.config.signatures_required() {
            return Err(ApiError::unprocessable(
                ErrorCode::SignatureRequired,
                "this server accepts signed releases only: give signatureBase64 and signatureExpiresAt",
            ));
        }
        if query.allow_downgrade || query.security_floor.is_some() {
            return Err(invalid(
                "allowDowngrade and securityFloor are part of the signed manifest: give them with a signature",
            ));
        }
        return Ok(None);
    };
    if query.security_floor.is_some_and(|f| f > i64::MAX as u64) {
        return Err(invalid("securityFloor is too large"));
    }
    // Decoded now only to refuse a malformed signature before the body is read.
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|b| b.len() == 64)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidSignature,
                "signatureBase64 is not base64 of a 64-byte Ed25519 signature",
            )
        })?;
    let expires_at = query
        .signature_expires_at
        .as_deref()
        .ok_or_else(|| invalid("signatureExpiresAt (RFC 3339) is required with a signature"))
        .and_then(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| invalid("signatureExpiresAt is not an RFC 3339 time"))
        })?;
    if expires_at <= Utc::now() {
        return Err(ApiError::unprocessable(
            ErrorCode::SignatureExpired,
            "the signed manifest has expired",
        ));
    }
    Ok(Some(PendingSignature {
        encoded: encoded.clone(),
        expires_at,
    }))
}

fn verify_signature(
    keys: &[[u8; 32]],
    manifest: &[u8],
    signature: &PendingSignature,
) -> ApiResult<()> {
    match protocol::signing::verify(keys, manifest, &signature.encoded) {
        Ok(_) => Ok(()),
        Err(_) => Err(ApiError::unprocessable(
            ErrorCode::InvalidSignature,
            "the signature does not verify against any trusted key",
        )),
    }
}

/// The temporary file of an upload in progress; deleted when dropped, so an error, a refusal
/// or a client that goes away leaves nothing behind, and a success leaves only the final name
/// (a hard link to the same data).
struct PartFile {
    path: PathBuf,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        // Removing one directory entry is quick; doing it here covers the futures that are
        // dropped mid-upload, which cannot await anything.
        let _ = std::fs::remove_file(&self.path);
    }
}

type Sink = (std::fs::File, ring::digest::Context);

/// Hashes and writes one chunk on the blocking pool.
async fn write_chunk(sink: Sink, buf: Vec<u8>) -> ApiResult<Sink> {
    web::block(move || {
        let (mut file, mut digest) = sink;
        digest.update(&buf);
        file.write_all(&buf).map(|_| (file, digest))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

/// `POST /api/v1/firmware/releases?version&filename[&project][&channel][&signatureBase64&signatureExpiresAt]`,
/// the artifact as the body.
pub async fn upload(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<UploadQuery>,
    mut payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let channel = query.channel.clone().unwrap_or_else(|| "stable".into());
    validate_release(&query.project, &query.version, &channel, &query.filename)?;
    let signature = pending_signature(&query, &state)?;
    let max = state.config.firmware_max_bytes;
    let too_large = || ApiError::payload_too_large(format!("firmware is limited to {max} bytes"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let stored = format!("{}-{}", safe_version(&query.version), query.filename);
    {
        let (p, v, f, s) = (
            query.project.clone(),
            query.version.clone(),
            query.filename.clone(),
            stored.clone(),
        );
        state
            .db
            .run(move |conn| Ok(check_unique(conn, &p, &v, &f, &s)?))
            .await?;
    }

    let dir = firmware_dir(&state.config.data_dir);
    let part = PartFile {
        path: dir.join(format!(
            "{PART_PREFIX}{}{PART_SUFFIX}",
            uuid::Uuid::new_v4()
        )),
    };
    let file = {
        let (dir, path) = (dir.clone(), part.path.clone());
        web::block(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
    };
    let mut sink: Sink = (file, ring::digest::Context::new(&ring::digest::SHA256));
    let mut buf = Vec::with_capacity(WRITE_CHUNK);
    let mut size: u64 = 0;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(ErrorCode::InvalidBody, format!("upload interrupted: {e}"))
        })?;
        size += chunk.len() as u64;
        if size > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
        if buf.len() >= WRITE_CHUNK {
            sink = write_chunk(
                sink,
                std::mem::replace(&mut buf, Vec::with_capacity(WRITE_CHUNK)),
            )
            .await?;
        }
    }
    if size == 0 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            "the artifact is empty",
        ));
    }
    let (file, digest) = write_chunk(sink, buf).await?;
    web::block(move || file.sync_all())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let sha256 = hex(digest.finish().as_ref());

    if let Some(signature) = &signature {
        let keys = state
            .config
            .firmware_keys()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let manifest = protocol::firmware::Manifest {
            project: query.project.clone(),
            version: query.version.clone(),
            sha256: sha256.clone(),
            size,
            expires_unix: signature.expires_at.timestamp(),
            allow_downgrade: query.allow_downgrade,
            security_floor: query.security_floor,
        };
        verify_signature(&keys, &manifest.bytes(), signature)?;
    }

    // A hard link never replaces an existing name, so two racing uploads cannot overwrite each
    // other's artifact: the loser gets 409 and its temporary file is removed.
    let final_path = dir.join(&stored);
    {
        let (from, to, dir) = (part.path.clone(), final_path.clone(), dir.clone());
        let linked = web::block(move || {
            std::fs::hard_link(&from, &to)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(ApiError::internal)?;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(exists_conflict(&query.project, &query.version, &query.filename).into())
            }
            Err(e) => return Err(ApiError::internal(e)),
        }
    }

    let row = ReleaseRow {
        id: uuid::Uuid::new_v4().to_string(),
        project: query.project.clone(),
        version: query.version.clone(),
        channel,
        filename: query.filename.clone(),
        stored_name: stored,
        size_bytes: size as i64,
        sha256,
        signature_base64: signature.as_ref().map(|s| s.encoded.clone()),
        signature_expires_at: signature.as_ref().map(|s| s.expires_at.naive_utc()),
        uploaded_by: Some(user.username.clone()),
        created_at: Utc::now().naive_utc(),
        allow_downgrade: query.allow_downgrade,
        security_floor: query.security_floor.map(|f| f as i64),
    };
    let entry = by_user(&user, &req, "firmware.upload")
        .target(Some(row.id.clone()))
        .params(serde_json::json!({
            "project": row.project, "version": row.version, "filename": row.filename,
            "size": row.size_bytes, "sha256": row.sha256, "signed": row.signature_base64.is_some(),
            "allowDowngrade": row.allow_downgrade, "securityFloor": row.security_floor,
        }));
    let inserted = {
        let row = row.clone();
        audited(&state.db, entry, move |conn| Ok(insert(conn, &row)?)).await
    };
    if let Err(e) = inserted {
        // The row is the release; without it the linked file is an orphan.
        let _ = web::block(move || std::fs::remove_file(final_path)).await;
        return Err(e);
    }
    // The temporary name goes; the final name keeps the data.
    drop(part);
    tracing::info!(release = %row.id, project = %row.project, version = %row.version, size, "firmware release stored");
    Ok(HttpResponse::Created().json(Envelope::ok(row.to_api())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    pub project: Option<String>,
    pub channel: Option<String>,
}

/// `GET /api/v1/firmware/releases`: newest first; `project` and `channel` filter.
pub async fn list(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = paging.checked()?;
    let ListQuery {
        project, channel, ..
    } = query.into_inner();
    let page = state
        .db
        .run(move |conn| {
            Ok(page(
                conn,
                project.as_deref(),
                channel.as_deref(),
                limit,
                offset,
            )?)
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

/// `GET /api/v1/firmware/releases/{id}`.
pub async fn get(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let row = state
        .db
        .run(move |conn| Ok(find(conn, &id)?))
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(Envelope::ok(row.to_api())))
}

/// `DELETE /api/v1/firmware/releases/{id}`: the row, then the file.
pub async fn delete(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let entry = by_user(&user, &req, "firmware.delete").target(Some(id.clone()));
    let row = audited(&state.db, entry, move |conn| Ok(delete_unused(conn, &id)?)).await?;
    let path = firmware_dir(&state.config.data_dir).join(&row.stored_name);
    match web::block(move || std::fs::remove_file(path)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(release = %row.id, error = %e, "firmware file not removed"),
        Err(e) => tracing::warn!(release = %row.id, error = %e, "firmware file not removed"),
    }
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"deleted": row.id}))))
}

/// Who may download an artifact: any user (VIEWER and up) or an enrolled device, each with a
/// valid bearer token. Answers the device's production line, whose budget the transfer counts
/// against (a user's counts in the total only).
async fn authorize_reader(req: &HttpRequest, state: &AppState) -> ApiResult<Option<String>> {
    let token = auth::bearer_token(req)
        .ok_or_else(|| ApiError::unauthorized(ErrorCode::Unauthorized, "missing bearer token"))?;
    match state.jwt.verify(token, Scope::Device) {
        Ok(_) => {
            let device = crate::auth::verify_device_token(state, token).await?;
            let line = state
                .db
                .run(move |conn| Ok(crate::store::devices::find(conn, &device.device_id)?))
                .await?
                .and_then(|row| row.production_line_id);
            Ok(line)
        }
        Err(auth::TokenError::WrongScope) => {
            let user = auth::authenticate_user(state, token).await?;
            if ViewDevices::allows(user.role) {
                Ok(None)
            } else {
                Err(ApiError::forbidden("this role may not download firmware"))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET` and `HEAD /api/v1/firmware/releases/{id}/artifact`.
pub async fn artifact(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let checked = authorize_reader(&req, &state).await;
    let source = crate::auth::source_of(&req);
    let line = crate::refusals::count_token(&state, source.as_deref(), checked).await?;
    let id = path.into_inner();
    let row = state
        .db
        .run(move |conn| Ok(find(conn, &id)?))
        .await?
        .ok_or_else(not_found)?;
    serve(&req, &state, &row, Downloader { line, board: false }).await
}

/// `GET /api/v1/firmware/transfers`: the download budget, its transfers now and its peaks.
pub async fn transfers(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(Envelope::ok(state.downloads.view())))
}

/// Who asks for an artifact, for the download budget and the form of its refusal.
#[derive(Debug, Clone)]
pub struct Downloader {
    /// The production line whose budget the transfer counts against, besides the total.
    pub line: Option<String>,
    /// Boards get the seed's plain text and 429; agents and users the JSON body and 503.
    pub board: bool,
}

/// Serves a release's file: `Range` (one range; 206 with `Content-Range`, 416 when it cannot
/// be satisfied) and `HEAD` by `NamedFile`; the ETag is the quoted SHA-256, so it names the
/// content whatever the file's inode or time, and `If-None-Match` with it answers 304. A body
/// is sent only within the download budget: its slot is held until the body is dropped.
pub async fn serve(
    req: &HttpRequest,
    state: &AppState,
    row: &ReleaseRow,
    who: Downloader,
) -> ApiResult<HttpResponse> {
    let etag = EntityTag::new_strong(row.sha256.clone());
    let not_modified = match IfNoneMatch::parse(req) {
        Ok(IfNoneMatch::Any) => true,
        Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(&etag)),
        Err(_) => false,
    };
    if not_modified {
        return Ok(HttpResponse::NotModified()
            .insert_header(header::ETag(etag))
            .finish());
    }
    let head = req.method() == actix_web::http::Method::HEAD;
    let slot = if head {
        None
    } else {
        match state.downloads.try_acquire(who.line.as_deref()) {
            Ok(slot) => Some(slot),
            Err(busy) if who.board => {
                return Ok(HttpResponse::TooManyRequests()
                    .insert_header((header::RETRY_AFTER, busy.retry_after_secs))
                    .content_type("text/plain; charset=utf-8")
                    .body(format!("Too many downloads: {}\n", busy.reason)))
            }
            Err(busy) => {
                return Err(ApiError {
                    code: ErrorCode::DownloadBusy,
                    ..ApiError::busy(busy.retry_after_secs, busy.reason)
                })
            }
        }
    };
    let path = firmware_dir(&state.config.data_dir).join(&row.stored_name);
    let file = web::block(move || NamedFile::open(path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            tracing::error!(release = %row.id, error = %e, "firmware file missing");
            not_found()
        })?;
    let file = file
        .use_etag(false)
        .set_content_type(header::ContentType::octet_stream().0)
        .set_content_disposition(header::ContentDisposition {
            disposition: header::DispositionType::Attachment,
            parameters: vec![header::DispositionParam::Filename(row.stored_name.clone())],
        });
    let mut response = file.into_response(req);
    response.headers_mut().insert(
        header::ETAG,
        header::HeaderValue::from_str(&etag.to_string()).map_err(ApiError::internal)?,
    );
    if head || !response.status().is_success() {
        return Ok(response);
    }
    let offset = response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(range_start)
        .unwrap_or(0);
    let release = row.id.clone();
    Ok(response.map_body(move |_, body| {
        let expected = match body.size() {
            BodySize::Sized(n) => n,
            _ => 0,
        };
        BoxBody::new(Counted {
            inner: body,
            release,
            offset,
            expected,
            sent: 0,
            _slot: slot,
        })
    }))
}

/// The first byte of a `Content-Range: bytes <first>-<last>/<size>` value.
fn range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// An artifact body that counts what it handed to the connection, and logs it when the
/// transfer ends, complete or cut: how much a resumed download really cost the server.
struct Counted {
    inner: BoxBody,
    release: String,
    offset: u64,
    expected: u64,
    sent: u64,
    /// The transfer's place in the download budget, given back when the body is dropped.
    _slot: Option<crate::budget::Slot>,
}

impl MessageBody for Counted {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.sent += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        tracing::info!(
            release = %self.release,
            offset = self.offset,
            sent = self.sent,
            complete = self.sent == self.expected,
            "artifact transfer ended"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_paths_or_odd_bytes_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a\0b",
            "a/b",
            "a\\b",
            "..",
            ".",
            ".hidden",
            "",
            "a b",
            "ü",
        ] {
            assert!(!is_safe_name(bad, 128), "{bad:?}");
        }
        for good in ["fw.bin", "edge-service_1.2.jar", "A9"] {
            assert!(is_safe_name(good, 128), "{good:?}");
        }
        assert!(!is_safe_name(&"a".repeat(129), 128));
    }

    #[test]
    fn versions_must_be_semantic_and_map_to_file_names() {
        assert!(validate_release("p", "1.2.3", "stable", "f.bin").is_ok());
        assert!(validate_release("p", "1.2", "stable", "f.bin").is_err());
        assert!(validate_release("p", "../1.2.3", "stable", "f.bin").is_err());
        assert_eq!(safe_version("1.2.3-rc.1+build.7"), "1.2.3-rc.1_build.7");
        assert!(is_safe_name(&safe_version("1.2.3-rc.1+build.7"), 64));
    }

    #[test]
    fn partial_uploads_of_a_killed_run_are_removed_and_releases_kept() {
        let data = std::env::temp_dir().join(format!("fw-sweep-{}", uuid::Uuid::new_v4()));
        assert_eq!(
            remove_partial_uploads(&data).unwrap(),
            0,
            "no firmware dir yet"
        );
        let dir = firmware_dir(&data);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".upload-abc.part"), b"half").unwrap();
        std::fs::write(dir.join("1.0.0-fw.bin"), b"whole").unwrap();
        assert_eq!(remove_partial_uploads(&data).unwrap(), 1);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["1.0.0-fw.bin"]);
        std::fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn manifest_has_its_documented_form() {
        let m = manifest_bytes("fan", "1.2.3", "ab", 10, 1_900_000_000);
        assert_eq!(
            String::from_utf8(m).unwrap(),
            "factory-firmware-manifest-v1\nproject=fan\nversion=1.2.3\nsha256=ab\nsize=10\nexpires=1900000000\n"
        );
    }

    #[test]
    fn signatures_verify_against_trusted_keys_only() {
        use ring::signature::{Ed25519KeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pair = |rng| {
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(rng).unwrap().as_ref())
                .unwrap()
        };
        let (signer, stranger) = (pair(&rng), pair(&rng));
        let trusted: [u8; 32] = signer.public_key().as_ref().try_into().unwrap();
        let manifest = manifest_bytes("fan", "1.0.0", "00", 1, 2_000_000_000);
        let signed = |key: &Ed25519KeyPair, m: &[u8]| PendingSignature {
            encoded: base64::engine::general_purpose::STANDARD.encode(key.sign(m).as_ref()),
            expires_at: Utc::now(),
        };
        assert!(verify_signature(&[trusted], &manifest, &signed(&signer, &manifest)).is_ok());
        let err = verify_signature(&[trusted], &manifest, &signed(&stranger, &manifest));
        assert_eq!(err.unwrap_err().code, ErrorCode::InvalidSignature);
        let other = manifest_bytes("fan", "1.0.0", "00", 2, 2_000_000_000);
        assert!(verify_signature(&[trusted], &other, &signed(&signer, &manifest)).is_err());
        assert!(verify_signature(&[], &manifest, &signed(&signer, &manifest)).is_err());
    }
}
