//! Files and directories only the server's own user may read: the data dir it creates (0700)
//! and the SQLite database with its `-wal` and `-shm` files (0600), which hold password hashes
//! and device tokens' ids. The JWT secret and the initial admin password are written 0600 by
//! `auth::write_secret_file`.

use std::path::{Path, PathBuf};

/// Creates `dir` and any missing parents as 0700; an existing directory is left as it is (its
/// mode is the operator's choice).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The SQLite database file and the two files SQLite keeps beside it in WAL mode.
pub fn sqlite_files(db: &Path) -> [PathBuf; 3] {
    let with_suffix = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [db.to_owned(), with_suffix("-wal"), with_suffix("-shm")]
}

/// Makes the SQLite database 0600 before SQLite opens it. SQLite gives the `-wal` and `-shm`
/// files it creates the mode of the database file, so creating the file 0600 first covers all
/// three; files of an earlier run that were made readable by others are narrowed too.
pub fn prepare_sqlite_file(db: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(db)?;
    #[cfg(unix)]
    for path in sqlite_files(db) {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                tracing::info!(file = %path.display(), "database file made private (0600)");
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_dirs_are_private_and_existing_ones_kept() {
        let base = std::env::temp_dir().join(format!("private-{}", uuid::Uuid::new_v4()));
        let dir = base.join("a").join("data");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&base.join("a")), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o750, "an existing directory keeps its mode");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn database_files_become_private() {
        let dir = std::env::temp_dir().join(format!("private-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("factory.db");
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        // Files left readable by an earlier version are narrowed.
        let [_, wal, _] = sqlite_files(&db);
        std::fs::write(&wal, b"").unwrap();
        for path in [&db, &wal] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        prepare_sqlite_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&wal), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
