//! The agent's SQLite file: the device token, the results of answered commands, and (through
//! `store/queue.rs`, `store/labels.rs` and `remote_config.rs`) the offline queue, production
//! state, the printer's label queue and pushed config.
//!
//! rusqlite blocks, so this is plain code that only ever runs on a `SyncArbiter` thread (the
//! store actor's and the offline queue's, `actors/store.rs` and `actors/queue.rs`), which
//! share the one connection (`Shared`), or before the actors start.

pub mod labels;
pub mod queue;
pub mod trust;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::commands::CommandResult;
use rusqlite::{params, Connection, OptionalExtension};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "agent.db";
/// The `kv` key of the device JWT.
const TOKEN_KEY: &str = "device_token";
/// How long a statement waits for a lock held by another connection to the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every table is created only when missing, so the data directory of an older agent gains
/// the tables added since (the label queue) at its first start, with its rows untouched.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS command_results (
        id TEXT PRIMARY KEY,
        result TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        company_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'PENDING',
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        sent_at TEXT
    );
    CREATE INDEX IF NOT EXISTS queue_state_seq_idx ON queue (state, seq);
    CREATE TABLE IF NOT EXISTS labels (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        code TEXT NOT NULL,
        count INTEGER NOT NULL,
        opened_at TEXT NOT NULL,
        closed_at TEXT NOT NULL,
        pallet_id TEXT
    );
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored result of command {id} is unreadable: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("cannot encode command result: {0}")]
    Encode(serde_json::Error),
    #[error("stored {what} is unreadable: {reason}")]
    BadState { what: &'static str, reason: String },
}

/// One open connection to `<data_dir>/agent.db`.
pub struct Store {
    pub(crate) conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Creates the data directory if needed, opens the file and creates the schema.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // WAL keeps readers and the writer apart; FULL makes a stored token or command
        // result survive a power cut, which matters more on a line PC than write speed.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Store { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn token(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM kv WHERE key = ?1",
                params![TOKEN_KEY],
                |row| row.get(0),
            )
            .optional()?)
    }

    pub fn set_token(&self, token: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![TOKEN_KEY, token],
        )?;
        Ok(())
    }

    /// A `kv` value.
    pub fn kv(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM kv WHERE key = ?1", params![key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    pub fn set_kv(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn clear_token(&self) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM kv WHERE key = ?1", params![TOKEN_KEY])?;
        Ok(())
    }

    pub fn result(&self, id: &str) -> Result<Option<CommandResult>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT result FROM command_results WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|source| StoreError::Corrupt {
                id: id.to_owned(),
                source,
            })
        })
        .transpose()
    }

    /// Keeps the first result stored for an id: a command answered once stays answered
    /// the same way.
    pub fn put_result(&self, result: &CommandResult) -> Result<(), StoreError> {
        let text = serde_json::to_string(result).map_err(StoreError::Encode)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO command_results (id, result, created_at) VALUES (?1, ?2, ?3)",
            params![result.command_id, text, chrono::Utc::now().to_rfc3339()],
        )?;
        Ok(())
    }
}

/// The one open store, shared by the actors whose `SyncArbiter` threads use it. A lock
/// around the connection keeps its use one statement or transaction at a time, as a single
/// thread did before the queue got its own actor.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Store>>);

impl Shared {
    pub fn new(store: Store) -> Shared {
        Shared(Arc::new(Mutex::new(store)))
    }

    /// The store, for one blocking call; a thread that panicked while holding it left no open
    /// transaction behind (rusqlite rolls back on drop), so the connection stays usable.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates the directory readable by its owner only when it is new, because the database
/// holds the device token; an existing directory keeps the permissions its owner chose.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    /// A fresh directory under the system temp dir; tests leave it behind, as it is tiny.
    pub(crate) fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("edge-agent-test-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn open_creates_the_directory_the_file_and_wal_mode() {
        let dir = temp_dir().join("nested");
        let store = Store::open(&dir).unwrap();
        assert!(dir.join(DB_FILE).is_file());
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn token_round_trip_and_survives_reopen() {
        let dir = temp_dir();
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.token().unwrap(), None);
        store.set_token("first").unwrap();
        store.set_token("second").unwrap();
        assert_eq!(store.token().unwrap().as_deref(), Some("second"));
        drop(store);

        let store = Store::open(&dir).unwrap();
        assert_eq!(store.token().unwrap().as_deref(), Some("second"));
        store.clear_token().unwrap();
        assert_eq!(store.token().unwrap(), None);
        store.clear_token().unwrap();
    }

    #[test]
    fn results_are_stored_once_and_read_back() {
        let store = Store::open(&temp_dir()).unwrap();
        assert_eq!(store.result("c1").unwrap(), None);
        let first = CommandResult::ok("c1", "done").with_data(json!({"n": 1}));
        store.put_result(&first).unwrap();
        store
            .put_result(&CommandResult::failed("c1", "later"))
            .unwrap();
        assert_eq!(store.result("c1").unwrap(), Some(first));
    }

    #[test]
    fn a_corrupt_row_is_an_error_not_a_panic() {
        let store = Store::open(&temp_dir()).unwrap();
        store
            .conn
            .execute(
                "INSERT INTO command_results VALUES ('x', 'not json', 'now')",
                [],
            )
            .unwrap();
        assert!(matches!(store.result("x"), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn open_fails_cleanly_when_the_directory_cannot_be_made() {
        let file = temp_dir();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"a file, not a directory").unwrap();
        assert!(Store::open(&file.join("sub")).is_err());
    }
}
