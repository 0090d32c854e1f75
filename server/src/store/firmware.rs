//! Firmware release rows, the signed manifest's bytes and where artifacts live on disk.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use std::path::{Path, PathBuf};

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use protocol::firmware::FirmwareRelease;
use schema::schema::firmware_releases as releases;

/// First line of the signed manifest; a new layout gets a new line.
pub use protocol::firmware::{manifest_bytes, MANIFEST_HEADER};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = releases)]
pub struct ReleaseRow {
    pub id: String,
    pub project: String,
    pub version: String,
    pub channel: String,
    pub filename: String,
    pub stored_name: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub signature_base64: Option<String>,
    pub signature_expires_at: Option<NaiveDateTime>,
    pub uploaded_by: Option<String>,
    pub created_at: NaiveDateTime,
}

impl ReleaseRow {
    pub fn to_api(&self) -> FirmwareRelease {
        FirmwareRelease {
            id: self.id.clone(),
            project: self.project.clone(),
            version: self.version.clone(),
            channel: self.channel.clone(),
            filename: self.filename.clone(),
            stored_name: self.stored_name.clone(),
            size: self.size_bytes,
            sha256: self.sha256.clone(),
            signature_base64: self.signature_base64.clone(),
            signature_expires_at: self.signature_expires_at.map(|t| t.and_utc()),
            uploaded_by: self.uploaded_by.clone(),
            created_at: self.created_at.and_utc(),
            artifact_url: format!("/api/v1/firmware/releases/{}/artifact", self.id),
        }
    }
}

/// `<data dir>/firmware`.
pub fn firmware_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("firmware")
}

/// Deletes the temporary files of uploads that a previous run was killed in the middle of (a
/// crash runs no destructor). Called at start, before any upload can begin; answers how many
/// went.
pub fn remove_partial_uploads(data_dir: &Path) -> std::io::Result<usize> {
    let dir = firmware_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(PART_PREFIX) && name.ends_with(PART_SUFFIX) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A name that is safe as one path component: letters, digits, `.`, `_`, `-`, not starting
/// with a dot (so neither `.`, `..` nor a hidden file), at most `max` bytes. Separators, NUL
/// and every other character are refused rather than cleaned, so what is stored is what was
/// asked for.
pub fn is_safe_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The version as it appears in a file name: semver's build separator `+` becomes `_`, the
/// rest of a semantic version is already `[A-Za-z0-9.-]`.
pub fn safe_version(version: &str) -> String {
    version.replace('+', "_")
}

/// Lowercase hex, as SHA-256 digests are written everywhere here.
pub fn hex(bytes: &[u8]) -> String {
    protocol::hex::encode(bytes)
}

pub fn not_found() -> StoreError {
    StoreError::not_found(ErrorCode::ReleaseNotFound, "no such firmware release")
}

pub fn find(conn: &mut DbConnection, id: &str) -> StoreResult<Option<ReleaseRow>> {
    Ok(releases::table
        .find(id)
        .select(ReleaseRow::as_select())
        .first(conn)
        .optional()?)
}

/// Every release of a project, for the board routes.
pub fn of_project(conn: &mut DbConnection, project: &str) -> StoreResult<Vec<ReleaseRow>> {
    Ok(releases::table
        .filter(releases::project.eq(project))
        .order(releases::created_at.asc())
        .select(ReleaseRow::as_select())
        .load(conn)?)
}

/// Prefix and suffix of an upload's temporary file.
pub const PART_PREFIX: &str = ".upload-";

pub const PART_SUFFIX: &str = ".part";
