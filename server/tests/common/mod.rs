//! A fresh database of each backend for tests that call the server's queries directly.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use diesel::prelude::*;
use server::config::DatabaseTarget;
use server::db::Db;

/// A database that is removed when dropped.
pub struct TestDb {
    pub db: Db,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(std::path::PathBuf),
    Postgres { admin: String, name: String },
}

pub fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("factory-test-{}", uuid::Uuid::new_v4()));
        let db = Db::open(DatabaseTarget::Sqlite(dir.join("factory.db"))).unwrap();
        TestDb {
            db,
            cleanup: Cleanup::Dir(dir),
        }
    }

    pub fn postgres() -> TestDb {
        let admin = admin_url();
        let name = format!("factory_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = diesel::PgConnection::establish(&admin)
            .unwrap_or_else(|e| panic!("PostgreSQL is required at {admin}: {e}"));
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let db = Db::open(DatabaseTarget::Postgres(format!("{base}/{name}"))).unwrap();
        TestDb {
            db,
            cleanup: Cleanup::Postgres { admin, name },
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin, name } => {
                if let Ok(mut conn) = diesel::PgConnection::establish(admin) {
                    let _ =
                        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn);
                }
            }
        }
    }
}
