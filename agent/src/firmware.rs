//! Firmware releases as plain checks and paths: the `update_firmware` request, the project,
//! signature, version and floor checks made before a byte is fetched, the staging file names
//! and the fsync + rename that stages a verified download.
//!
//! Secure by default: while any release key is trusted (configured or added by a rotation),
//! an unsigned release is refused unless `firmware_allow_unsigned` is on. Rollback: an older
//! version is staged only when the signed manifest permits it (`downgrade=allowed`) and the
//! command asks for it, or when the local `allow_firmware_downgrade` is on; the command's
//! `allowDowngrade` alone no longer suffices, since no signature covers it. A release below
//! the security floor this device accepted for its project is refused whatever else says
//! yes; an unverified release counts as floor 0.
//!
//! Nothing here is an actor, so the updater (which downloads) and `install` (which activates
//! what was staged) can both use it without knowing each other.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::trust::{keys_in_force, TrustState};
use protocol::firmware::{Manifest, AGENT_PROJECT};

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
    /// The release's project (`edge` when the command names none).
    pub project: String,
    /// The signed manifest's `downgrade=allowed`, as the command carries it.
    pub manifest_allow_downgrade: bool,
    /// The signed manifest's `security_floor`, as the command carries it.
    pub security_floor: Option<u64>,
}

/// What the signature check established about a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// A trusted key signed the manifest; otherwise nothing below was vouched for.
    pub verified: bool,
    /// The signed permission to replace a newer version.
    pub allow_downgrade: bool,
    /// The signed floor; 0 when unsigned or absent.
    pub floor: u64,
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
    #[error("refused: downgrade from {running} to {wanted}: {why}")]
    Downgrade {
        running: String,
        wanted: String,
        why: &'static str,
    },
    #[error("refused: the release's security floor {release} is below {accepted}, the floor this device accepted for `{project}`")]
    BelowFloor {
        project: String,
        release: u64,
        accepted: u64,
    },
    #[error("refused: the release is of project `{0}`; this agent stages `{AGENT_PROJECT}` releases only")]
    OtherProject(String),
    #[error("refused: url `{0}` is neither an http(s) URL nor a path on the server")]
    BadUrl(String),
    #[error("refused: the release is unsigned and {0}")]
    SignatureRequired(&'static str),
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
    /// The keys in force: configured, plus added and less retired by rotations.
    pub trusted_keys: Vec<[u8; 32]>,
    pub require_signature: bool,
    pub allow_unsigned: bool,
    pub allow_downgrade: bool,
    /// The floor accepted for the agent's project.
    pub floor: u64,
    /// The firmware version this process runs (`install::Startup::running`).
    pub running: semver::Version,
    /// The base a path-only `url` is resolved against, without a trailing slash.
    pub server_url: String,
}

impl Policy {
    pub fn from_config(config: &Config, running: &str, trust: &TrustState) -> Policy {
        Policy {
            staging_dir: config.firmware_staging_dir.clone(),
            trusted_keys: keys_in_force(&config.firmware_trusted_keys, &trust.keyring),
            require_signature: config.firmware_require_signature,
            allow_unsigned: config.firmware_allow_unsigned,
            allow_downgrade: config.allow_firmware_downgrade,
            floor: trust.floor(AGENT_PROJECT),
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

/// Refuses a release of another project: its manifest names that project, and installing it
/// would replace the agent with another product's build.
pub fn check_project(request: &UpdateRequest) -> Result<(), UpdateError> {
    if request.project == AGENT_PROJECT {
        Ok(())
    } else {
        Err(UpdateError::OtherProject(request.project.clone()))
    }
}

/// Refuses a version that is not semver, or that is older than the running one unless the
/// local setting allows downgrades or the signed manifest permits one and the command asks
/// for it. The same version is allowed: staging it again is harmless.
pub fn check_version(
    policy: &Policy,
    version: &str,
    asked_by_command: bool,
    verified: Verified,
) -> Result<semver::Version, UpdateError> {
    let wanted =
        semver::Version::parse(version).map_err(|_| UpdateError::BadVersion(version.into()))?;
    if policy.allow_downgrade || wanted.cmp_precedence(&policy.running).is_ge() {
        return Ok(wanted);
    }
    let why = match (verified.allow_downgrade, asked_by_command) {
        (true, true) => return Ok(wanted),
        (true, false) => "the signed manifest permits it but the command does not ask for it",
        (false, true) => {
            "the signed manifest does not permit it (the command's allowDowngrade alone does not suffice) and allow_firmware_downgrade is off"
        }
        (false, false) => {
            "neither the signed manifest nor allow_firmware_downgrade permits it"
        }
    };
    Err(UpdateError::Downgrade {
        running: policy.running.to_string(),
        wanted: wanted.to_string(),
        why,
    })
}

/// Refuses a release below the floor accepted for the project.
pub fn check_floor(
    policy: &Policy,
    request: &UpdateRequest,
    verified: Verified,
) -> Result<(), UpdateError> {
    if verified.floor < policy.floor {
        return Err(UpdateError::BelowFloor {
            project: request.project.clone(),
            release: verified.floor,
            accepted: policy.floor,
        });
    }
    Ok(())
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

/// The manifest the request's signature must cover.
pub fn manifest_of(request: &UpdateRequest, expires: DateTime<Utc>) -> Manifest {
    Manifest {
        project: request.project.clone(),
        version: request.version.clone(),
        sha256: request.sha256.to_ascii_lowercase(),
        size: request.size,
        expires_unix: expires.timestamp(),
        allow_downgrade: request.manifest_allow_downgrade,
        security_floor: request.security_floor,
    }
}

/// Checks the request's signature; answers what it vouches for. A signature needs its expiry,
/// since the manifest covers it. Unsigned: refused while a key is trusted (unless
/// `firmware_allow_unsigned`) or signatures are required. Signed with no key trusted: staged
/// unverified unless signatures are required (then no key can vouch for it).
pub fn check_signature(
    policy: &Policy,
    request: &UpdateRequest,
    now: DateTime<Utc>,
) -> Result<Verified, UpdateError> {
    let unverified = Verified {
        verified: false,
        allow_downgrade: false,
        floor: 0,
    };
    let Some(encoded) = &request.signature_base64 else {
        if policy.require_signature {
            return Err(UpdateError::SignatureRequired(
                "firmware_require_signature is on",
            ));
        }
        if !policy.trusted_keys.is_empty() && !policy.allow_unsigned {
            return Err(UpdateError::SignatureRequired(
                "this agent trusts release keys (firmware_allow_unsigned is off)",
            ));
        }
        return Ok(unverified);
    };
    if policy.trusted_keys.is_empty() {
        if policy.require_signature {
            return Err(UpdateError::BadSignature(
                "no trusted key is configured".into(),
            ));
        }
        tracing::warn!("release is signed but no trusted key is configured; not verified");
        return Ok(unverified);
    }
    let expires = request.signature_expires_at.ok_or_else(|| {
        UpdateError::BadSignature(
            "the command has no signatureExpiresAt, which the signed manifest covers".into(),
        )
    })?;
    if expires <= now {
        return Err(UpdateError::BadSignature(format!(
            "the signed manifest expired at {} (a frozen release)",
            expires.to_rfc3339()
        )));
    }
    let manifest = manifest_of(request, expires);
    match protocol::signing::verify(&policy.trusted_keys, &manifest.bytes(), encoded) {
        Ok(_) => Ok(Verified {
            verified: true,
            allow_downgrade: manifest.allow_downgrade,
            floor: manifest.security_floor.unwrap_or(0),
        }),
        Err(protocol::signing::SigningError::Untrusted) => Err(UpdateError::BadSignature(
            "no trusted key verifies the release manifest".into(),
        )),
        Err(e) => Err(UpdateError::BadSignature(e.to_string())),
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
