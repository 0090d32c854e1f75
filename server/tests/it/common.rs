//! A fresh database of each backend for tests that call the server's queries directly: the
//! workspace's shared `testdb::TestDb`, opened with the server's `Db`.

use server::config::DatabaseTarget;
use server::db::Db;
use testdb::{Target, TestDb};

/// A test database and the server's pool on it; the pool closes before the database goes.
pub struct ServerDb {
    pub db: Db,
    _test: TestDb,
}

impl ServerDb {
    pub fn sqlite() -> ServerDb {
        Self::open(TestDb::sqlite())
    }

    pub fn postgres() -> ServerDb {
        Self::open(TestDb::postgres())
    }

    fn open(test: TestDb) -> ServerDb {
        let target = match test.target() {
            Target::Sqlite(path) => DatabaseTarget::Sqlite(path),
            Target::Postgres(url) => DatabaseTarget::Postgres(url),
        };
        ServerDb {
            db: Db::open(target).unwrap(),
            _test: test,
        }
    }
}

/// Runs each named test function, which takes a `ServerDb`, once on SQLite and once on
/// PostgreSQL, as `sqlite::name` and `postgres::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::ServerDb::sqlite()) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::ServerDb::postgres()) })*
        }
    };
}
