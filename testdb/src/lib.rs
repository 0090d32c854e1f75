//! The workspace's one test-database helper: a fresh database per test, a SQLite file in a new
//! temporary directory or a new PostgreSQL database, removed when the [`TestDb`] is dropped.
//!
//! PostgreSQL databases are created on the server named by `TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, where CI starts one). The helper knows
//! nothing of the server's code: the server's own tests open [`TestDb::target`] with its `Db`,
//! the end-to-end tests hand [`TestDb::url`] to a `factory-server` process. Its own tests are
//! in `integration-tests/tests/it/testdb.rs` (this crate builds no test binary of its own).

use std::path::{Path, PathBuf};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where a test database is: what a server's `--database-url` or its `DatabaseTarget` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A SQLite file (its directory is created by whoever opens it).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

/// The PostgreSQL server tests create their databases on: `TEST_POSTGRES_URL`, else the local
/// default CI starts.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of database `name` on the server of `admin` (the admin URL's last path segment is
/// the database).
fn database_url(admin: &str, name: &str) -> String {
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    format!("{base}/{name}")
}

fn admin_client(admin: &str) -> postgres::Client {
    postgres::Client::connect(admin, postgres::NoTls).unwrap_or_else(|e| {
        panic!("PostgreSQL is required for this test and is not reachable at {admin}: {e}")
    })
}

/// A database for one test, removed on drop: the SQLite file's directory, or the PostgreSQL
/// database (`DROP DATABASE … WITH (FORCE)`, so connections still open do not keep it).
#[derive(Debug)]
pub struct TestDb {
    backend: Backend,
    /// SQLite: a fresh directory (not created here) holding `factory.db`.
    dir: PathBuf,
    /// PostgreSQL: the database's name.
    pg_name: Option<String>,
}

impl TestDb {
    pub fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => TestDb::postgres(),
        }
    }

    /// A SQLite file `factory.db` in a fresh temporary directory. Nothing is created on disk
    /// until the database is opened.
    pub fn sqlite() -> TestDb {
        TestDb {
            backend: Backend::Sqlite,
            dir: std::env::temp_dir().join(format!("factory-test-{}", uuid::Uuid::new_v4())),
            pg_name: None,
        }
    }

    /// A new, empty PostgreSQL database on [`postgres_admin_url`]'s server.
    pub fn postgres() -> TestDb {
        let admin = postgres_admin_url();
        let name = format!("factory_test_{}", uuid::Uuid::new_v4().simple());
        admin_client(&admin)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        TestDb {
            backend: Backend::Postgres,
            dir: PathBuf::new(),
            pg_name: Some(name),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The PostgreSQL URL of this database; `None` for SQLite.
    pub fn url(&self) -> Option<String> {
        self.pg_name
            .as_ref()
            .map(|name| database_url(&postgres_admin_url(), name))
    }

    /// The SQLite file; `None` for PostgreSQL.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        (self.backend == Backend::Sqlite).then(|| self.dir.join("factory.db"))
    }

    /// The database, whichever backend.
    pub fn target(&self) -> Target {
        match (self.url(), self.sqlite_path()) {
            (Some(url), _) => Target::Postgres(url),
            (None, Some(path)) => Target::Sqlite(path),
            (None, None) => unreachable!("a test database is SQLite or PostgreSQL"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.pg_name {
            Some(name) => {
                if let Ok(mut client) =
                    postgres::Client::connect(&postgres_admin_url(), postgres::NoTls)
                {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            }
            None => remove_dir(&self.dir),
        }
    }
}

fn remove_dir(dir: &Path) {
    if !dir.as_os_str().is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
