//! Firmware release rows, the signed manifest's bytes and where artifacts live on disk.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use std::path::{Path, PathBuf};

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use protocol::firmware::FirmwareRelease;
use protocol::rest::Page;
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
    /// The signed manifest's `downgrade=allowed`.
    pub allow_downgrade: bool,
    /// The signed manifest's `security_floor`.
    pub security_floor: Option<i64>,
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
            allow_downgrade: self.allow_downgrade,
            security_floor: self.security_floor.map(|f| f.max(0) as u64),
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
    remove_stale_partial_uploads(data_dir, std::time::Duration::ZERO)
}

/// Like `remove_partial_uploads`, for the part files last written at least `min_age` ago:
/// replicas share the firmware directory, and a younger one may be another's upload.
pub fn remove_stale_partial_uploads(
    data_dir: &Path,
    min_age: std::time::Duration,
) -> std::io::Result<usize> {
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
        let old_enough = min_age.is_zero()
            || entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
        if name.starts_with(PART_PREFIX) && name.ends_with(PART_SUFFIX) && old_enough {
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

impl ReleaseRow {
    /// The manifest a release signature covers, rollback fields included.
    pub fn manifest(&self, expires_unix: i64) -> protocol::firmware::Manifest {
        protocol::firmware::Manifest {
            project: self.project.clone(),
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            size: self.size_bytes.max(0) as u64,
            expires_unix,
            allow_downgrade: self.allow_downgrade,
            security_floor: self.security_floor.map(|f| f.max(0) as u64),
        }
    }
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

/// The 409 of an upload whose release, or whose file name on disk, is already stored.
pub fn exists_conflict(project: &str, version: &str, filename: &str) -> StoreError {
    StoreError::conflict(
        ErrorCode::ReleaseExists,
        format!("release {project} {version} {filename} exists"),
    )
}

/// Refuses a release whose project, version and file name, or whose stored file name, is
/// already taken; asked before the body is read and again before the insert.
pub fn check_unique(
    conn: &mut DbConnection,
    project: &str,
    version: &str,
    filename: &str,
    stored: &str,
) -> StoreResult<()> {
    let same: i64 = releases::table
        .filter(
            releases::project
                .eq(project)
                .and(releases::version.eq(version))
                .and(releases::filename.eq(filename)),
        )
        .or_filter(releases::stored_name.eq(stored))
        .count()
        .get_result(conn)?;
    if same > 0 {
        return Err(exists_conflict(project, version, filename));
    }
    Ok(())
}

/// Stores a release row after checking it is new. A concurrent upload of the same release
/// that wins the race shows as a unique violation, which is the same conflict.
pub fn insert(conn: &mut DbConnection, row: &ReleaseRow) -> StoreResult<()> {
    check_unique(
        conn,
        &row.project,
        &row.version,
        &row.filename,
        &row.stored_name,
    )?;
    diesel::insert_into(releases::table)
        .values(row)
        .execute(conn)
        .map_err(|e| match e {
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ) => exists_conflict(&row.project, &row.version, &row.filename),
            other => other.into(),
        })?;
    Ok(())
}

/// One page of releases, newest first; `project` and `channel` filter when given.
pub fn page(
    conn: &mut DbConnection,
    project: Option<&str>,
    channel: Option<&str>,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<FirmwareRelease>> {
    let filtered = || {
        let mut q = releases::table.into_boxed();
        if let Some(p) = project {
            q = q.filter(releases::project.eq(p.to_owned()));
        }
        if let Some(c) = channel {
            q = q.filter(releases::channel.eq(c.to_owned()));
        }
        q
    };
    let total = filtered().count().get_result(conn)?;
    let rows: Vec<ReleaseRow> = filtered()
        .order((releases::created_at.desc(), releases::id.asc()))
        .limit(limit)
        .offset(offset)
        .select(ReleaseRow::as_select())
        .load(conn)?;
    Ok(Page {
        items: rows.iter().map(ReleaseRow::to_api).collect(),
        total,
    })
}

/// Deletes a release row unless a running or paused deployment uses it, and answers the row
/// so the caller can remove its file. The check and the delete share the caller's
/// transaction, so no deployment can start sending the URL between them and have it stop
/// working halfway.
pub fn delete_unused(conn: &mut DbConnection, id: &str) -> StoreResult<ReleaseRow> {
    let row = find(conn, id)?.ok_or_else(not_found)?;
    if crate::store::deployments::release_in_use(conn, &row.id)? {
        return Err(StoreError::conflict(
            ErrorCode::ReleaseDeployed,
            "a running or paused deployment uses this release; cancel it first",
        ));
    }
    diesel::delete(releases::table.find(&row.id)).execute(conn)?;
    Ok(row)
}
