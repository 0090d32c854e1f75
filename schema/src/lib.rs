//! The factory server's database: the diesel schema and the migrations of both backends.
//!
//! The two migration trees hold the same tables in each dialect; a change to one without the
//! other is a bug, which `server/tests/it/schema_parity.rs` catches by comparing the columns both
//! produce.

use diesel_migrations::{embed_migrations, EmbeddedMigrations};

pub mod schema;

/// Migrations for PostgreSQL, embedded in the binary and run at start.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// Migrations for SQLite, embedded in the binary and run at start.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
