//! One connection type over PostgreSQL and SQLite, its pool, migrations at start, and the
//! helper that runs blocking queries off the event loop.
//!
//! The backend is chosen by the URL scheme alone. diesel's derived `establish` would try each
//! backend in turn, and SQLite accepts any string as a file name, so a mistyped or unreachable
//! `postgres://` URL would silently create a SQLite file; the manager below never guesses.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel_migrations::MigrationHarness;

use crate::config::{redact_url, DatabaseTarget};
use crate::store::error::{StoreError, StoreResult};

/// Runs `$body` with `$c` bound to the backend's own connection, for the few statements diesel
/// builds only for a concrete backend (multi-row inserts): one piece of code, compiled for both.
#[macro_export]
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::db::DbConnection::Postgresql($c) => $body,
            $crate::store::db::DbConnection::Sqlite($c) => $body,
        }
    };
}

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgresql(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// SQLite waits this long for a writer to finish before answering "database is locked".
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;
/// Database threads `Db::run` hands work to on PostgreSQL. Each waits on a round trip most
/// of the time, but more of them than this only add task switches: on 2 cores, 16 threads
/// completed fewer commands at 5,000/s than 8 or 4 (BENCHMARKS.md).
const DB_THREADS_POSTGRES: u32 = 8;
/// SQLite allows one writer at a time; more threads only add lock contention.
const DB_THREADS_SQLITE: u32 = 8;
/// Threads outside the executor that hold a pooled connection while they work: the command
/// writer (`actors::command_writer`), the presence writer and the telemetry writer (one
/// `SyncArbiter` thread each). The pool has a connection for each of them on top of one per
/// database thread, so none of them ever waits for a connection a database thread holds.
const DEDICATED_CONNECTIONS: u32 = 3;
const POOL_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DbManager {
    target: DatabaseTarget,
}

impl r2d2::ManageConnection for DbManager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        match &self.target {
            DatabaseTarget::Postgres(url) => {
                // PostgreSQL's plan cache keeps its default (`plan_cache_mode = auto`): after
                // five runs a prepared statement may run a generic plan, made once. Forcing a
                // fresh plan at every run instead (as this server did, against slow generic
                // plans of `id = ANY($1)` batch lookups) spent a quarter of the database's CPU
                // on planning at 1,000 commands/s, a foreign key check of every inserted row
                // among it. The cost of the default: a generic plan made while a table was
                // tiny may scan the table until autovacuum analyzes it again (within a minute
                // of 10 % growth), which only a fresh database filling fast meets; the sync
                // batch, where that was seen, is now one unprepared statement, planned with its
                // parameters at every run.
                let conn = diesel::PgConnection::establish(url)
                    .map_err(diesel::r2d2::Error::ConnectionError)?;
                Ok(DbConnection::Postgresql(conn))
            }
            DatabaseTarget::Sqlite(path) => {
                let url = path.to_string_lossy();
                let mut conn = diesel::SqliteConnection::establish(&url)
                    .map_err(diesel::r2d2::Error::ConnectionError)?;
                // WAL lets readers proceed during a write; foreign keys are off by default in
                // SQLite and the schema relies on ON DELETE CASCADE. `synchronous = FULL`
                // syncs the WAL at every commit: with NORMAL, a power loss could take away
                // records the server had already acknowledged (agents delete what they were
                // told is stored).
                conn.batch_execute(&format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};"
                ))
                .map_err(diesel::r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

pub type Pool = r2d2::Pool<DbManager>;

/// The handle every handler and actor holds: a pool and the backend it talks to.
#[derive(Clone)]
pub struct Db {
    pub(crate) pool: Pool,
    backend: Backend,
    /// The URL of a PostgreSQL database, for `postgres_url`.
    postgres_url: Option<String>,
    /// The fixed set of threads `Db::run` hands work to, one per pooled connection.
    pub(crate) executor: super::executor::Executor,
}

#[derive(Debug, thiserror::Error)]
pub enum DbInitError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the database {url}: {source}")]
    Connect { url: String, source: r2d2::Error },
    #[error("cannot connect to the database {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("migrations failed: {0}")]
    Migrate(String),
    #[error("cannot start the database threads: {0}")]
    Threads(std::io::Error),
}

impl Db {
    /// Opens the pool, checks one connection can be made, and runs pending migrations.
    pub fn open(target: DatabaseTarget) -> Result<Db, DbInitError> {
        let (backend, threads, shown) = match &target {
            DatabaseTarget::Postgres(url) => {
                (Backend::Postgres, DB_THREADS_POSTGRES, redact_url(url))
            }
            DatabaseTarget::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::private_files::create_private_dir(parent).map_err(|source| {
                        DbInitError::CreateDir {
                            path: parent.display().to_string(),
                            source,
                        }
                    })?;
                }
                crate::private_files::prepare_sqlite_file(path).map_err(|source| {
                    DbInitError::CreateDir {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                (
                    Backend::Sqlite,
                    DB_THREADS_SQLITE,
                    path.display().to_string(),
                )
            }
        };
        let postgres_url = match &target {
            DatabaseTarget::Postgres(url) => Some(url.clone()),
            DatabaseTarget::Sqlite(_) => None,
        };
        let manager = DbManager { target };
        // One direct attempt first: a wrong URL fails at once with one clear reason instead of
        // a pool retrying (and logging) until its timeout.
        r2d2::ManageConnection::connect(&manager).map_err(|e| DbInitError::Unreachable {
            url: shown.clone(),
            reason: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let pool = r2d2::Pool::builder()
            .max_size(threads + DEDICATED_CONNECTIONS)
            // No `SELECT 1` before every checkout: it was a round trip (and on PostgreSQL a
            // transaction) for each of a request's connections, four for a single command. A
            // connection is checked after a statement on it failed instead (`check_after_error`),
            // and a dead one is then dropped by the pool rather than handed out again.
            .test_on_check_out(false)
            // No idle minimum: keeping one would make r2d2 open connections from its own threads
            // whenever the idle count drops, and a process ending meanwhile (a one-shot admin
            // command) would tear OpenSSL down under a TLS handshake to PostgreSQL, which crashes.
            // Connections are opened on demand and kept until their idle timeout.
            .min_idle(Some(0))
            .connection_timeout(POOL_CONNECTION_TIMEOUT)
            // Failures surface where a connection is asked for (ApiError's From<r2d2::Error>).
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(|source| DbInitError::Connect {
                url: shown.clone(),
                source,
            })?;
        let executor =
            super::executor::Executor::start(threads as usize).map_err(DbInitError::Threads)?;
        let db = Db {
            pool,
            backend,
            postgres_url,
            executor,
        };
        db.migrate()?;
        tracing::info!(backend = backend.name(), database = %shown, "database ready");
        Ok(db)
    }

    fn migrate(&self) -> Result<(), DbInitError> {
        let mut conn = self.pool.get().map_err(|source| DbInitError::Connect {
            url: self.backend.name().into(),
            source,
        })?;
        let applied = match &mut *conn {
            DbConnection::Postgresql(c) => c
                .run_pending_migrations(schema::POSTGRES_MIGRATIONS)
                .map(|v| v.len()),
            DbConnection::Sqlite(c) => c
                .run_pending_migrations(schema::SQLITE_MIGRATIONS)
                .map(|v| v.len()),
        }
        .map_err(|e| DbInitError::Migrate(e.to_string()))?;
        if applied > 0 {
            tracing::info!(applied, "migrations applied");
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether other server processes may use this database at once: PostgreSQL takes any
    /// number of replicas, a SQLite file one process (which `lib.rs` holds a lock for).
    pub fn shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// The PostgreSQL URL, for the one connection a replica keeps outside the pool (LISTEN and
    /// the leader's advisory lock, `store::leases`); `None` on SQLite.
    pub fn postgres_url(&self) -> Option<String> {
        self.postgres_url.clone()
    }
}

/// The PostgreSQL connection under a pooled one, for the statements only PostgreSQL has
/// (`pg_notify`); `None` on SQLite, where there is no other process to tell.
pub fn as_postgres(conn: &mut DbConnection) -> Option<&mut diesel::PgConnection> {
    match conn {
        DbConnection::Postgresql(c) => Some(c),
        DbConnection::Sqlite(_) => None,
    }
}

/// The SQLite connection under a pooled one, for the statements whose fastest form is
/// SQLite's own (the bulk inserts of `store::sync`); `None` on PostgreSQL.
pub fn as_sqlite(conn: &mut DbConnection) -> Option<&mut diesel::SqliteConnection> {
    match conn {
        DbConnection::Sqlite(c) => Some(c),
        DbConnection::Postgresql(_) => None,
    }
}

/// A transaction that writes. On SQLite it begins with `BEGIN IMMEDIATE`, taking the write
/// lock at once: a deferred transaction that reads first and writes later cannot wait for the
/// lock (SQLite answers "database is locked" at once to avoid a deadlock), so concurrent
/// enrollments or dispatches would fail. Inside another transaction it is a savepoint.
pub fn write_transaction<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    E: From<diesel::result::Error> + From<StoreError>,
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
{
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let DbConnection::Sqlite(inner) = conn else {
        return conn.transaction(f);
    };
    let nested = AnsiTransactionManager::transaction_manager_status_mut(inner)
        .transaction_depth()?
        .is_some();
    if nested {
        return conn.transaction(f);
    }
    AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")?;
    let result = f(conn);
    let DbConnection::Sqlite(inner) = conn else {
        return Err(StoreError::internal("connection changed backend").into());
    };
    match result {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(inner)?;
            Ok(value)
        }
        Err(e) => {
            AnsiTransactionManager::rollback_transaction(inner)?;
            Err(e)
        }
    }
}

/// After a statement on `conn` failed: whether the connection still answers `SELECT 1`, and
/// when it does not (the server restarted, the socket was cut), marks it broken, so the pool
/// drops it when it comes back instead of handing it to the next request. The pool does not
/// test connections at checkout (`Db::open`); this is what stands in for that test, at the
/// cost of one round trip after an error only.
pub fn check_after_error(conn: &mut DbConnection) {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    if conn.ping().is_ok() {
        return;
    }
    tracing::warn!("a pooled database connection stopped answering; it is dropped");
    on_backend!(conn, |c| {
        AnsiTransactionManager::transaction_manager_status_mut(c).set_in_error()
    });
}

/// `SELECT 1`: whether the database answers at all, for `/healthz`. Any failure means it is
/// unreachable from here, so the error is always `Unavailable` with the driver's words.
pub fn ping(conn: &mut DbConnection) -> Result<(), StoreError> {
    conn.batch_execute("SELECT 1")
        .map_err(|e| StoreError::unavailable(format!("database unreachable: {e}")))
}

/// Writes a consistent copy of a SQLite database to `dest` with `VACUUM INTO`, which reads
/// in one transaction, so writers may go on meanwhile (WAL) and the copy is one point in time.
/// Answers `None` on PostgreSQL, whose copies are `pg_dump`'s job.
pub fn backup_sqlite(conn: &mut DbConnection, dest: &std::path::Path) -> StoreResult<Option<()>> {
    let DbConnection::Sqlite(inner) = conn else {
        return Ok(None);
    };
    let dest = dest.to_str().ok_or_else(|| {
        StoreError::bad_request(
            crate::store::error::ErrorCode::InvalidParameter,
            "the path is not UTF-8",
        )
    })?;
    diesel::sql_query("VACUUM INTO ?")
        .bind::<diesel::sql_types::Text, _>(dest)
        .execute(inner)?;
    Ok(Some(()))
}
