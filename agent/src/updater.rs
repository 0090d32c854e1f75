//! The updater actor: `update_firmware` downloads a release, checks it, and stages it.
//!
//! Order of work, cheapest refusal first: the version (no downgrade unless allowed), the
//! signature (it covers version, hash and size, so it is checked before a byte is fetched),
//! then the download to `<staging dir>/.edge-service-<version>.part`, streamed to disk and
//! hashed as it arrives, resumed with `Range` after a dropped connection. Only a file of the
//! announced size and SHA-256 is synced and renamed to `<staging dir>/edge-service-<version>`;
//! every failure removes the `.part` file. Earlier staged versions stay for rollback.
//!
//! A `url` that is a path (`/api/v1/firmware/releases/<id>/artifact`, as the server's deployer
//! sends it) is fetched from the configured server. Installing the staged file (`current`,
//! the trial, the restart) is `install.rs`'s job, run by the command handler after a stage.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use base64::Engine;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use protocol::commands::CommandProgress;
use protocol::device::DeviceEvent;
use ring::digest;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::connection::SendEvent;
use crate::store::{GetToken, StoreActor};

/// The `project` the agent's own releases are uploaded under; the signed manifest names it.
pub const FIRMWARE_PROJECT: &str = "edge";
/// Name of a staged release, before the version.
const STAGED_PREFIX: &str = "edge-service-";
/// Download attempts after the first before giving up.
const MAX_RETRIES: u32 = 4;
/// How long the server may take to answer a request with its headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the body may stall between two chunks before the connection counts as dropped.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes gathered before one write to disk, so a write is not a blocking call per packet.
const WRITE_CHUNK: usize = 256 * 1024;
/// First line of the signed manifest (server/src/firmware.rs documents the layout).
const MANIFEST_HEADER: &str = "factory-firmware-manifest-v1";

/// One `update_firmware` command.
#[derive(Debug, Clone)]
pub struct UpdateRequest {
    pub command_id: String,
    pub version: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub signature_base64: Option<String>,
    pub signature_expires_at: Option<DateTime<Utc>>,
    /// The command's `allowDowngrade`: the operator chose an older release on purpose.
    pub allow_downgrade: bool,
}

/// A release staged for installation.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// False when the release was unsigned, or signed but no trusted key is configured.
    pub signature_verified: bool,
}

/// Why a release was not staged; the text is the command's failure output.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("refused: version `{0}` is not a semantic version")]
    BadVersion(String),
    #[error("refused: downgrade from {running} to {wanted} (neither the command's allowDowngrade nor allow_firmware_downgrade is on)")]
    Downgrade { running: String, wanted: String },
    #[error("refused: url `{0}` is neither an http(s) URL nor a path on the server")]
    BadUrl(String),
    #[error("refused: the release is unsigned and firmware_require_signature is on")]
    SignatureRequired,
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("download error: {0}")]
    Download(String),
    #[error("size mismatch: expected {expected} bytes, got {got}")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("wrong hash: expected sha256 {expected}, got {got}")]
    WrongHash { expected: String, got: String },
    #[error("staging failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The settings an update is checked against, read from the configuration per command.
#[derive(Debug, Clone)]
pub struct Policy {
    pub staging_dir: PathBuf,
    pub trusted_keys: Vec<[u8; 32]>,
    pub require_signature: bool,
    pub allow_downgrade: bool,
    /// The firmware version this process runs (`install::Startup::running`).
    pub running: semver::Version,
    /// The base a path-only `url` is resolved against, without a trailing slash.
    pub server_url: String,
}

impl Policy {
    pub fn from_config(config: &Config, running: &str) -> Policy {
        Policy {
            staging_dir: config.firmware_staging_dir.clone(),
            trusted_keys: config.firmware_trusted_keys.clone(),
            require_signature: config.firmware_require_signature,
            allow_downgrade: config.allow_firmware_downgrade,
            running: parse_running(running),
            server_url: config.server_url.clone(),
        }
    }
}

/// The running version as semver; the agent only ever activates semantic versions and the
/// crate version is one by Cargo's rules, so the fallback is for a hand-edited state file.
pub fn parse_running(running: &str) -> semver::Version {
    semver::Version::parse(running).unwrap_or(semver::Version::new(0, 0, 0))
}

/// Refuses a version that is not semver, or that is older than the running one when neither
/// the command (`allowDowngrade`) nor the local setting allows a downgrade. The same version
/// is allowed: staging it again is harmless.
pub fn check_version(
    policy: &Policy,
    version: &str,
    allowed_by_command: bool,
) -> Result<semver::Version, UpdateError> {
    let wanted =
        semver::Version::parse(version).map_err(|_| UpdateError::BadVersion(version.into()))?;
    let allowed = policy.allow_downgrade || allowed_by_command;
    if !allowed && wanted.cmp_precedence(&policy.running).is_lt() {
        return Err(UpdateError::Downgrade {
            running: policy.running.to_string(),
            wanted: wanted.to_string(),
        });
    }
    Ok(wanted)
}

/// The URL to download from: an http(s) URL as it is; a path (`/api/v1/…`) appended to the
/// configured server URL, the same way the agent builds every other route of its server (so a
/// server URL with a base path behind a proxy keeps that base).
pub fn resolve_url(server_url: &str, url: &str) -> Result<String, UpdateError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(url.to_owned());
    }
    // `//host/…` would be a scheme-relative URL to another host, not a path on this one.
    if url.starts_with('/') && !url.starts_with("//") {
        return Ok(format!("{}{url}", server_url.trim_end_matches('/')));
    }
    Err(UpdateError::BadUrl(url.to_owned()))
}

/// The bytes a release signature covers, as the server builds them.
pub fn manifest_bytes(version: &str, sha256_hex: &str, size: u64, expires_unix: i64) -> Vec<u8> {
    format!(
        "{MANIFEST_HEADER}\nproject={FIRMWARE_PROJECT}\nversion={version}\nsha256={sha256_hex}\nsize={size}\nexpires={expires_unix}\n"
    )
    .into_bytes()
}

/// Checks the request's signature; answers whether one was verified. A signature needs its
/// expiry, since the manifest covers it; a signed release with no trusted key configured is
/// staged unverified unless signatures are required (then no key can vouch for it).
pub fn check_signature(
    policy: &Policy,
    request: &UpdateRequest,
    now: DateTime<Utc>,
) -> Result<bool, UpdateError> {
    use ring::signature::{UnparsedPublicKey, ED25519};
    let Some(encoded) = &request.signature_base64 else {
        if policy.require_signature {
            return Err(UpdateError::SignatureRequired);
        }
        return Ok(false);
    };
    if policy.trusted_keys.is_empty() {
        if policy.require_signature {
            return Err(UpdateError::BadSignature(
                "no trusted key is configured".into(),
            ));
        }
        tracing::warn!("release is signed but no trusted key is configured; not verified");
        return Ok(false);
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|b| b.len() == 64)
        .ok_or_else(|| {
            UpdateError::BadSignature("not base64 of a 64-byte Ed25519 signature".into())
        })?;
    let expires = request.signature_expires_at.ok_or_else(|| {
        UpdateError::BadSignature(
            "the command has no signatureExpiresAt, which the signed manifest covers".into(),
        )
    })?;
    if expires <= now {
        return Err(UpdateError::BadSignature(format!(
            "the signed manifest expired at {}",
            expires.to_rfc3339()
        )));
    }
    let manifest = manifest_bytes(
        &request.version,
        &request.sha256.to_ascii_lowercase(),
        request.size,
        expires.timestamp(),
    );
    let trusted = policy.trusted_keys.iter().any(|key| {
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&manifest, &signature)
            .is_ok()
    });
    if trusted {
        Ok(true)
    } else {
        Err(UpdateError::BadSignature(
            "no trusted key verifies the release manifest".into(),
        ))
    }
}

/// The file name of a staged version: semver's `+` is not wanted in file names.
pub fn staged_name(version: &str) -> String {
    format!("{STAGED_PREFIX}{}", version.replace('+', "_"))
}

/// `<staging dir>/.edge-service-<version>.part`.
pub fn part_path(staging_dir: &Path, version: &str) -> PathBuf {
    staging_dir.join(format!(".{}.part", staged_name(version)))
}

/// `<staging dir>/edge-service-<version>`.
pub fn staged_path(staging_dir: &Path, version: &str) -> PathBuf {
    staging_dir.join(staged_name(version))
}

/// Lowercase hex, as SHA-256 digests are written on the wire.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a finished download's size and hash against the command.
pub fn verify_download(
    request: &UpdateRequest,
    got_size: u64,
    got_sha256: &str,
) -> Result<(), UpdateError> {
    if got_size != request.size {
        return Err(UpdateError::SizeMismatch {
            expected: request.size,
            got: got_size,
        });
    }
    if !got_sha256.eq_ignore_ascii_case(&request.sha256) {
        return Err(UpdateError::WrongHash {
            expected: request.sha256.to_ascii_lowercase(),
            got: got_sha256.into(),
        });
    }
    Ok(())
}

/// Makes a complete, verified `.part` file the staged release: its data is synced first, so a
/// power cut after the rename cannot leave a staged name over missing bytes, and the directory
/// is synced after, so the rename itself survives one. Other staged versions are left alone.
pub fn stage(part: &Path, staged: &Path) -> std::io::Result<()> {
    File::open(part)?.sync_all()?;
    std::fs::rename(part, staged)?;
    if let Some(dir) = staged.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The download's open `.part` file, hash so far and length so far.
struct Sink {
    file: File,
    hash: digest::Context,
    have: u64,
}

impl Sink {
    fn create(path: &Path) -> std::io::Result<Sink> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Sink {
            file,
            hash: digest::Context::new(&digest::SHA256),
            have: 0,
        })
    }

    /// Back to zero bytes, for a server that answered a range request with the whole body.
    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hash = digest::Context::new(&digest::SHA256);
        self.have = 0;
        Ok(())
    }
}

/// Writes one gathered chunk off the actor's thread, handing the sink back.
async fn write(mut sink: Sink, buf: Vec<u8>) -> Result<Sink, UpdateError> {
    tokio::task::spawn_blocking(move || {
        sink.file.write_all(&buf)?;
        sink.hash.update(&buf);
        sink.have += buf.len() as u64;
        Ok::<_, std::io::Error>(sink)
    })
    .await
    .map_err(|e| UpdateError::Io(std::io::Error::other(e)))?
    .map_err(UpdateError::Io)
}

/// How one attempt ended, when it did not fail outright.
enum Attempt {
    Complete(Sink),
    /// The connection dropped; what arrived is kept and the next attempt resumes.
    Dropped(Sink, String),
}

/// The start offset of a `Content-Range: bytes <start>-<end>/<total>` header.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One request: from byte `sink.have` on (a range request when that is not zero), streamed
/// into the sink until the body ends, the connection drops, or more than `size` arrived.
async fn attempt(
    client: &awc::Client,
    request: &UpdateRequest,
    token: &str,
    mut sink: Sink,
    progress: &mut Progress,
) -> Result<Attempt, UpdateError> {
    let mut call = client
        .get(&request.url)
        .timeout(REQUEST_TIMEOUT)
        .bearer_auth(token)
        // Offsets and the hash are of the file's own bytes, so no content coding.
        .insert_header(("Accept-Encoding", "identity"));
    if sink.have > 0 {
        call = call.insert_header(("Range", format!("bytes={}-", sink.have)));
    }
    let mut response = match call.send().await {
        Ok(response) => response,
        Err(e) => return Ok(Attempt::Dropped(sink, e.to_string())),
    };
    let status = response.status().as_u16();
    match status {
        200 if sink.have > 0 => {
            // The server ignored the range: its body starts at byte zero.
            sink = tokio::task::spawn_blocking(move || sink.restart().map(|()| sink))
                .await
                .map_err(|e| UpdateError::Io(std::io::Error::other(e)))??;
        }
        200 => {}
        206 => {
            let start = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start != Some(sink.have) {
                return Err(UpdateError::Download(format!(
                    "asked for bytes from {}, the server sent a range starting at {start:?}",
                    sink.have
                )));
            }
        }
        500..=599 => {
            return Ok(Attempt::Dropped(sink, format!("server answered {status}")));
        }
        _ => {
            return Err(UpdateError::Download(format!("server answered {status}")));
        }
    }
    let mut buf = Vec::with_capacity(WRITE_CHUNK);
    loop {
        let next = match tokio::time::timeout(CHUNK_TIMEOUT, response.next()).await {
            Ok(next) => next,
            Err(_) => Some(Err(awc::error::PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no data for 30 s",
            )))),
        };
        match next {
            Some(Ok(bytes)) => {
                if sink.have + (buf.len() + bytes.len()) as u64 > request.size {
                    return Err(UpdateError::SizeMismatch {
                        expected: request.size,
                        got: sink.have + (buf.len() + bytes.len()) as u64,
                    });
                }
                buf.extend_from_slice(&bytes);
                if buf.len() >= WRITE_CHUNK {
                    sink = write(sink, std::mem::take(&mut buf)).await?;
                    progress.report(sink.have);
                }
            }
            Some(Err(e)) => {
                // Keep what did arrive: the next attempt asks for the rest.
                let sink = write(sink, buf).await?;
                // Every byte arrived before the error (a close instead of a clean end): a
                // range request for nothing more would only be refused with 416.
                if sink.have == request.size {
                    return Ok(Attempt::Complete(sink));
                }
                return Ok(Attempt::Dropped(sink, e.to_string()));
            }
            None => {
                let sink = write(sink, buf).await?;
                progress.report(sink.have);
                // A body cut short can end like a whole one (awc does not always report the
                // missing bytes of its Content-Length), so the size decides, not the stream.
                if sink.have < request.size {
                    let reason = format!("the body ended after {} bytes", sink.have);
                    return Ok(Attempt::Dropped(sink, reason));
                }
                return Ok(Attempt::Complete(sink));
            }
        }
    }
}

/// Sends `command_progress` frames, one per whole ten percent.
struct Progress {
    events: Recipient<SendEvent>,
    command_id: String,
    size: u64,
    last: Option<u8>,
}

impl Progress {
    fn report(&mut self, have: u64) {
        // An empty release is complete at once.
        let percent = (have.min(self.size) * 100)
            .checked_div(self.size)
            .map_or(100, |p| p as u8);
        let step = percent / 10 * 10;
        if self.last.is_some_and(|last| last >= step) {
            return;
        }
        self.last = Some(step);
        self.events
            .do_send(SendEvent(DeviceEvent::CommandProgress(CommandProgress {
                command_id: self.command_id.clone(),
                percent: step,
                message: format!("downloaded {have} of {} bytes", self.size),
            })));
    }
}

/// Downloads into the `.part` file with resumes; answers the finished sink.
async fn download(
    client: &awc::Client,
    request: &UpdateRequest,
    token: &str,
    part: &Path,
    progress: &mut Progress,
) -> Result<Sink, UpdateError> {
    let path = part.to_owned();
    let mut sink = tokio::task::spawn_blocking(move || Sink::create(&path))
        .await
        .map_err(|e| UpdateError::Io(std::io::Error::other(e)))??;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
    let mut retries = 0;
    loop {
        match attempt(client, request, token, sink, progress).await? {
            Attempt::Complete(done) => return Ok(done),
            Attempt::Dropped(kept, reason) => {
                if retries == MAX_RETRIES {
                    return Err(UpdateError::Download(format!(
                        "gave up after {} attempts: {reason}",
                        retries + 1
                    )));
                }
                retries += 1;
                tracing::warn!(have = kept.have, %reason, "firmware download interrupted; resuming");
                sink = kept;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Everything after the checks: download, verify, stage. The `.part` file is removed on
/// every failure.
async fn fetch_and_stage(
    client: awc::Client,
    policy: Policy,
    request: UpdateRequest,
    token: String,
    events: Recipient<SendEvent>,
) -> Result<(PathBuf, String), UpdateError> {
    let dir = policy.staging_dir.clone();
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(dir))
        .await
        .map_err(|e| UpdateError::Io(std::io::Error::other(e)))??;
    let part = part_path(&policy.staging_dir, &request.version);
    let staged = staged_path(&policy.staging_dir, &request.version);
    let mut progress = Progress {
        events,
        command_id: request.command_id.clone(),
        size: request.size,
        last: None,
    };
    let outcome = async {
        let sink = download(&client, &request, &token, &part, &mut progress).await?;
        let got = hex(sink.hash.finish().as_ref());
        verify_download(&request, sink.have, &got)?;
        drop(sink.file);
        let (from, to) = (part.clone(), staged.clone());
        tokio::task::spawn_blocking(move || stage(&from, &to))
            .await
            .map_err(|e| UpdateError::Io(std::io::Error::other(e)))??;
        Ok::<_, UpdateError>(got)
    }
    .await;
    match outcome {
        Ok(got) => Ok((staged, got)),
        Err(e) => {
            if let Err(rm) = std::fs::remove_file(&part) {
                if rm.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %part.display(), error = %rm, "partial firmware file not removed");
                }
            }
            Err(e)
        }
    }
}

/// Stages one release; answers where.
#[derive(Message)]
#[rtype(result = "Result<Staged, UpdateError>")]
pub struct StageRelease(pub UpdateRequest);

/// Runs one update at a time, so two commands never write the same `.part` file.
pub struct Updater {
    store: Addr<StoreActor>,
    events: Recipient<SendEvent>,
    config: watch::Receiver<Config>,
    client: awc::Client,
    /// The firmware version of this process.
    running: String,
}

impl Updater {
    pub fn new(
        store: Addr<StoreActor>,
        events: Recipient<SendEvent>,
        config: watch::Receiver<Config>,
        running: String,
    ) -> Self {
        Updater {
            store,
            events,
            config,
            running,
            // No overall timeout: a large release may take long; stalls are caught per chunk.
            client: awc::Client::builder().disable_timeout().finish(),
        }
    }
}

/// Deletes `.part` files a killed run left behind (a crash runs no clean-up); answers how
/// many went. Staged releases are not touched.
pub fn remove_partial_downloads(staging_dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(staging_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&format!(".{STAGED_PREFIX}")) && name.ends_with(".part") {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

impl Actor for Updater {
    type Context = Context<Self>;

    /// Runs before the first message, so no download of this run can be removed.
    fn started(&mut self, _ctx: &mut Self::Context) {
        let dir = self.config.borrow().firmware_staging_dir.clone();
        match remove_partial_downloads(&dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "partial firmware downloads of an earlier run removed"
            ),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot clean the staging directory")
            }
        }
    }
}

impl Handler<StageRelease> for Updater {
    type Result = AtomicResponse<Self, Result<Staged, UpdateError>>;

    fn handle(
        &mut self,
        StageRelease(mut request): StageRelease,
        _ctx: &mut Self::Context,
    ) -> Self::Result {
        let policy = Policy::from_config(&self.config.borrow(), &self.running);
        let store = self.store.clone();
        let events = self.events.clone();
        let client = self.client.clone();
        let work = async move {
            check_version(&policy, &request.version, request.allow_downgrade)?;
            request.url = resolve_url(&policy.server_url, &request.url)?;
            let signature_verified = check_signature(&policy, &request, Utc::now())?;
            let token = match store.send(GetToken).await {
                Ok(Ok(Some(token))) => token,
                Ok(Ok(None)) => {
                    return Err(UpdateError::Download("no device token yet".into()));
                }
                Ok(Err(e)) => return Err(UpdateError::Download(format!("token unavailable: {e}"))),
                Err(e) => return Err(UpdateError::Download(format!("store unavailable: {e}"))),
            };
            let size = request.size;
            let (path, sha256) = fetch_and_stage(client, policy, request, token, events).await?;
            Ok(Staged {
                path,
                sha256,
                size,
                signature_verified,
            })
        };
        AtomicResponse::new(Box::pin(work.into_actor(self)))
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;
    use crate::store::tests::temp_dir;

    fn key_pair(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn public(pair: &Ed25519KeyPair) -> [u8; 32] {
        pair.public_key().as_ref().try_into().unwrap()
    }

    fn policy(keys: Vec<[u8; 32]>) -> Policy {
        Policy {
            staging_dir: temp_dir(),
            trusted_keys: keys,
            require_signature: false,
            allow_downgrade: false,
            running: semver::Version::new(1, 0, 0),
            server_url: "http://factory:8080".into(),
        }
    }

    fn request(version: &str) -> UpdateRequest {
        UpdateRequest {
            command_id: "c1".into(),
            version: version.into(),
            url: "http://127.0.0.1:9/a".into(),
            sha256: "ab".repeat(32),
            size: 10,
            signature_base64: None,
            signature_expires_at: None,
            allow_downgrade: false,
        }
    }

    fn signed(
        pair: &Ed25519KeyPair,
        mut r: UpdateRequest,
        expires: DateTime<Utc>,
    ) -> UpdateRequest {
        let manifest = manifest_bytes(&r.version, &r.sha256, r.size, expires.timestamp());
        r.signature_base64 =
            Some(base64::engine::general_purpose::STANDARD.encode(pair.sign(&manifest).as_ref()));
        r.signature_expires_at = Some(expires);
        r
    }

    #[test]
    fn manifest_matches_the_server_layout() {
        assert_eq!(
            String::from_utf8(manifest_bytes("1.2.3", "ab", 10, 1_900_000_000)).unwrap(),
            "factory-firmware-manifest-v1\nproject=edge\nversion=1.2.3\nsha256=ab\nsize=10\nexpires=1900000000\n"
        );
    }

    #[test]
    fn downgrades_are_refused_unless_the_setting_or_the_command_allows_them() {
        let mut p = policy(vec![]);
        assert!(check_version(&p, "1.0.0", false).is_ok());
        assert!(check_version(&p, "1.0.1", false).is_ok());
        let err = check_version(&p, "0.9.9", false).unwrap_err();
        assert!(err.to_string().contains("downgrade"), "{err}");
        assert!(matches!(
            check_version(&p, "one", true),
            Err(UpdateError::BadVersion(_))
        ));
        // The command alone may allow it.
        assert!(check_version(&p, "0.9.9", true).is_ok());
        p.allow_downgrade = true;
        assert!(check_version(&p, "0.9.9", false).is_ok());
        // The running version is the installed one, not the crate's.
        p.allow_downgrade = false;
        p.running = parse_running("7.0.0");
        assert!(check_version(&p, "6.9.0", false).is_err());
        assert!(check_version(&p, "6.9.0", true).is_ok());
    }

    #[test]
    fn a_path_url_is_fetched_from_the_configured_server() {
        let path = "/api/v1/firmware/releases/r-1/artifact";
        assert_eq!(
            resolve_url("http://factory:8080", path).unwrap(),
            "http://factory:8080/api/v1/firmware/releases/r-1/artifact"
        );
        assert_eq!(
            resolve_url("https://proxy/base/", path).unwrap(),
            "https://proxy/base/api/v1/firmware/releases/r-1/artifact"
        );
        let absolute = "https://cdn.example/edge-2.0.0";
        assert_eq!(
            resolve_url("http://factory:8080", absolute).unwrap(),
            absolute
        );
        for bad in ["//evil.example/x", "api/v1/x", "ftp://host/x", ""] {
            assert!(
                matches!(
                    resolve_url("http://factory:8080", bad),
                    Err(UpdateError::BadUrl(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn signatures_verify_with_trusted_keys_only_and_before_expiry() {
        let signer = key_pair(1);
        let stranger = key_pair(2);
        let now = Utc::now();
        let later = now + chrono::Duration::hours(1);
        let p = policy(vec![public(&signer)]);

        assert!(check_signature(&p, &signed(&signer, request("1.1.0"), later), now).unwrap());
        let err = check_signature(&p, &signed(&stranger, request("1.1.0"), later), now);
        assert!(matches!(err, Err(UpdateError::BadSignature(_))));
        // Any change to what the manifest covers breaks the signature.
        let mut tampered = signed(&signer, request("1.1.0"), later);
        tampered.size = 11;
        assert!(check_signature(&p, &tampered, now).is_err());
        let mut no_expiry = signed(&signer, request("1.1.0"), later);
        no_expiry.signature_expires_at = None;
        assert!(check_signature(&p, &no_expiry, now).is_err());
        let expired = signed(
            &signer,
            request("1.1.0"),
            now - chrono::Duration::seconds(1),
        );
        let err = check_signature(&p, &expired, now).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn required_signatures_refuse_unsigned_releases() {
        let signer = key_pair(1);
        let mut p = policy(vec![]);
        assert!(!check_signature(&p, &request("1.1.0"), Utc::now()).unwrap());
        p.require_signature = true;
        assert!(matches!(
            check_signature(&p, &request("1.1.0"), Utc::now()),
            Err(UpdateError::SignatureRequired)
        ));
        let later = Utc::now() + chrono::Duration::hours(1);
        assert!(
            check_signature(&p, &signed(&signer, request("1.1.0"), later), Utc::now()).is_err()
        );
    }

    #[test]
    fn downloads_are_checked_for_size_and_hash() {
        let r = request("1.1.0");
        assert!(verify_download(&r, 10, &"AB".repeat(32)).is_ok());
        assert!(matches!(
            verify_download(&r, 9, &"ab".repeat(32)),
            Err(UpdateError::SizeMismatch {
                expected: 10,
                got: 9
            })
        ));
        assert!(matches!(
            verify_download(&r, 10, &"cd".repeat(32)),
            Err(UpdateError::WrongHash { .. })
        ));
    }

    #[test]
    fn staging_renames_the_part_file_and_keeps_earlier_versions() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (version, body) in [("1.1.0", b"old"), ("1.2.0", b"new")] {
            let part = part_path(&dir, version);
            std::fs::write(&part, body).unwrap();
            stage(&part, &staged_path(&dir, version)).unwrap();
            assert!(!part.exists());
        }
        assert_eq!(
            std::fs::read(dir.join("edge-service-1.1.0")).unwrap(),
            b"old"
        );
        assert_eq!(
            std::fs::read(dir.join("edge-service-1.2.0")).unwrap(),
            b"new"
        );
        assert_eq!(
            staged_path(&dir, "1.0.0+build.1"),
            dir.join("edge-service-1.0.0_build.1")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sink_restart_forgets_what_was_written() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = part_path(&dir, "1.1.0");
        let mut sink = Sink::create(&path).unwrap();
        sink.file.write_all(b"garbage").unwrap();
        sink.hash.update(b"garbage");
        sink.have = 7;
        sink.restart().unwrap();
        sink.file.write_all(b"abc").unwrap();
        sink.hash.update(b"abc");
        drop(sink.file);
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(
            hex(sink.hash.finish().as_ref()),
            hex(digest::digest(&digest::SHA256, b"abc").as_ref())
        );
        assert_eq!(content_range_start("bytes 7-9/10"), Some(7));
        assert_eq!(content_range_start("bytes */10"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn partial_downloads_of_a_killed_run_are_removed_and_releases_kept() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(part_path(&dir, "1.1.0"), b"half").unwrap();
        std::fs::write(staged_path(&dir, "1.0.0"), b"whole").unwrap();
        assert_eq!(remove_partial_downloads(&dir).unwrap(), 1);
        assert_eq!(staged_files(&dir), vec!["edge-service-1.0.0"]);
        assert_eq!(remove_partial_downloads(&dir.join("absent")).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn staged_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Collects the progress frames the updater sends.
    struct Frames(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Actor for Frames {
        type Context = Context<Self>;
    }

    impl Handler<SendEvent> for Frames {
        type Result = ();

        fn handle(&mut self, SendEvent(event): SendEvent, _ctx: &mut Self::Context) {
            if let DeviceEvent::CommandProgress(p) = event {
                self.0.lock().unwrap().push(p.percent);
            }
        }
    }

    /// A one-file HTTP server, one connection per entry of `plan`: the first answers 200 and
    /// cuts the body at `cut` bytes; the next answers the `Range` it was sent with 206, or
    /// the whole body with 200 when `honour_range` is off. Answers the Range headers seen.
    fn flaky_server(
        body: Vec<u8>,
        cut: usize,
        honour_range: bool,
    ) -> (String, std::thread::JoinHandle<Vec<Option<String>>>) {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/artifact", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut ranges = Vec::new();
            for round in 0..2 {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut range = None;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("range") {
                            range = Some(value.trim().to_owned());
                        }
                    }
                }
                ranges.push(range.clone());
                let total = body.len();
                if round == 0 {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
                    stream.write_all(head.as_bytes()).unwrap();
                    stream.write_all(&body[..cut]).unwrap();
                    // Dropped here: the client sees the body end early.
                    continue;
                }
                let start = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
                    .filter(|_| honour_range)
                    .unwrap_or(0);
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
                        total - start,
                        total - 1
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
                    )
                };
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&body[start..]).unwrap();
            }
            ranges
        });
        (url, handle)
    }

    async fn run_download(honour_range: bool) {
        let body: Vec<u8> = (0..700_000u32).map(|i| (i * 7) as u8).collect();
        let sha = hex(digest::digest(&digest::SHA256, &body).as_ref());
        let (url, server) = flaky_server(body.clone(), 300_000, honour_range);
        let mut p = policy(vec![]);
        p.staging_dir = temp_dir();
        let mut r = request("1.1.0");
        r.url = url;
        r.sha256 = sha.clone();
        r.size = body.len() as u64;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let frames = Frames(seen.clone()).start().recipient();
        let (path, got) = fetch_and_stage(awc::Client::default(), p.clone(), r, "t".into(), frames)
            .await
            .unwrap();
        assert_eq!(got, sha);
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(staged_files(&p.staging_dir), vec!["edge-service-1.1.0"]);
        let ranges = server.join().unwrap();
        assert_eq!(ranges, vec![None, Some("bytes=300000-".to_owned())]);
        // Let the progress frames arrive; the last says 100.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seen.lock().unwrap().last(), Some(&100));
        std::fs::remove_dir_all(&p.staging_dir).unwrap();
    }

    #[actix::test]
    async fn a_dropped_download_resumes_with_a_range() {
        run_download(true).await;
    }

    #[actix::test]
    async fn a_whole_body_answer_to_a_range_starts_again_from_zero() {
        run_download(false).await;
    }

    #[actix::test]
    async fn a_wrong_hash_leaves_nothing_in_the_staging_dir() {
        let body = vec![5u8; 1000];
        let (url, server) = flaky_server(body.clone(), 400, true);
        let mut p = policy(vec![]);
        p.staging_dir = temp_dir();
        let mut r = request("1.1.0");
        r.url = url;
        r.size = body.len() as u64;
        let frames = Frames(Default::default()).start().recipient();
        let err = fetch_and_stage(awc::Client::default(), p.clone(), r, "t".into(), frames)
            .await
            .unwrap_err();
        assert!(matches!(err, UpdateError::WrongHash { .. }), "{err}");
        server.join().unwrap();
        assert!(staged_files(&p.staging_dir).is_empty());
        std::fs::remove_dir_all(&p.staging_dir).unwrap();
    }
}
