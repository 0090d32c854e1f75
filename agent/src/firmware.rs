//! Firmware releases as plain checks and paths: the `update_firmware` request, the version
//! and signature checks made before a byte is fetched, the staging file names and the
//! fsync + rename that stages a verified download.
//!
//! Nothing here is an actor, so the updater (which downloads) and `install` (which activates
//! what was staged) can both use it without knowing each other.

use std::fs::File;
use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, Utc};

use crate::config::Config;
use protocol::firmware::{manifest_bytes, AGENT_PROJECT};

/// Name of a staged release, before the version.
const STAGED_PREFIX: &str = "edge-service-";

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
        AGENT_PROJECT,
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
