//! The shared test-database helper (crate `testdb`) itself: fresh databases per test, gone
//! once dropped.

use ::testdb::Target;
use integration_tests::{postgres_admin_url, Backend, TestDb};

fn database_exists(name: &str) -> bool {
    let mut admin = postgres::Client::connect(&postgres_admin_url(), postgres::NoTls)
        .expect("connect to the admin database");
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .expect("query pg_database");
    row.get::<_, i64>(0) == 1
}

#[test]
fn sqlite_databases_are_fresh_files_removed_on_drop() {
    let (a, b) = (TestDb::sqlite(), TestDb::new(Backend::Sqlite));
    let path = a.sqlite_path().expect("a SQLite path");
    assert_eq!(a.backend(), Backend::Sqlite);
    assert_ne!(Some(&path), b.sqlite_path().as_ref());
    assert_eq!(a.url(), None);
    assert_eq!(a.target(), Target::Sqlite(path.clone()));
    let dir = path.parent().expect("the database's directory").to_owned();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&path, b"").unwrap();
    drop(a);
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn postgres_databases_are_new_databases_dropped_on_drop() {
    let db = TestDb::new(Backend::Postgres);
    let url = db.url().expect("a PostgreSQL URL");
    assert_eq!(db.target(), Target::Postgres(url.clone()));
    assert_eq!(db.sqlite_path(), None);
    let admin = postgres_admin_url();
    let (server, name) = url.rsplit_once('/').expect("a database in the URL");
    assert!(
        admin.starts_with(server),
        "{url} is not on {admin}'s server"
    );
    assert!(name.starts_with("factory_test_"), "{name}");
    // Connections still open do not keep the database from being dropped.
    let mut open = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    open.batch_execute("CREATE TABLE t (x int)")
        .expect("use it");
    assert!(database_exists(name));
    drop(db);
    assert!(!database_exists(name), "{name} is left behind");
}
