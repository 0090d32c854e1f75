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

/// A device row as an enrollment leaves it, for tests that hang other rows on it.
pub fn add_device(
    db: &ServerDb,
    id: &str,
    name: &str,
    company: Option<&str>,
    line: Option<&str>,
    status: &str,
) {
    let (id, name, company, line, status) = (
        id.to_owned(),
        name.to_owned(),
        company.map(str::to_owned),
        line.map(str::to_owned),
        status.to_owned(),
    );
    use diesel::prelude::*;
    use schema::schema::devices;
    db.db
        .run_blocking(move |conn| {
            let now = chrono::Utc::now().naive_utc();
            diesel::insert_into(devices::table)
                .values((
                    devices::id.eq(id),
                    devices::name.eq(name),
                    devices::company_id.eq(company),
                    devices::production_line_id.eq(line),
                    devices::status.eq(status),
                    devices::created_at.eq(now),
                    devices::updated_at.eq(now),
                ))
                .execute(conn)
                .map_err(server::error::ApiError::from)?;
            Ok(())
        })
        .unwrap();
}
