//! Both migration trees must produce the same tables, views and columns (name and nullability), and
//! both must match the diesel schema module, or one backend would fail at run time only.

use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use server::db::{Db, DbConnection};

#[derive(Debug, QueryableByName, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Integer)]
    nullable: i32,
}

fn columns(db: &Db) -> Vec<Column> {
    let mut cols = db
        .run_blocking(|conn| {
            let query = match conn {
                DbConnection::Postgresql(_) => {
                    "SELECT table_name::text AS table_name, column_name::text AS column_name, \
                     CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END AS nullable \
                     FROM information_schema.columns WHERE table_schema = 'public' \
                     AND table_name <> '__diesel_schema_migrations'"
                }
                DbConnection::Sqlite(_) => {
                    "SELECT m.name AS table_name, p.name AS column_name, \
                     CASE WHEN p.\"notnull\" = 1 OR p.pk > 0 THEN 0 ELSE 1 END AS nullable \
                     FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                     WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%' \
                     AND m.name <> '__diesel_schema_migrations'"
                }
            };
            Ok(diesel::sql_query(query).load::<Column>(conn)?)
        })
        .unwrap();
    cols.sort();
    cols
}

#[test]
fn sqlite_and_postgres_migrations_define_the_same_columns() {
    let lite_cols = columns(&crate::common::ServerDb::sqlite().db);
    let pg_cols = columns(&crate::common::ServerDb::postgres().db);

    assert!(!lite_cols.is_empty());
    assert_eq!(
        lite_cols, pg_cols,
        "the SQLite and PostgreSQL migrations differ"
    );

    // The schema module names the same columns.
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    for col in &lite_cols {
        match tables.last_mut() {
            Some((t, cols)) if *t == col.table_name => cols.push(col.column_name.clone()),
            _ => tables.push((col.table_name.clone(), vec![col.column_name.clone()])),
        }
    }
    use diesel::Table;
    let declared: Vec<(&str, Vec<&str>)> = vec![
        (
            "aggregated_batch_fixations",
            schema::schema::aggregated_batch_fixations::table::all_columns().names(),
        ),
        (
            "aggregated_batches",
            schema::schema::aggregated_batches::table::all_columns().names(),
        ),
        (
            "aggregated_bottles",
            schema::schema::aggregated_bottles::table::all_columns().names(),
        ),
        (
            "aggregated_pallets",
            schema::schema::aggregated_pallets::table::all_columns().names(),
        ),
        (
            "audit_log",
            schema::schema::audit_log::table::all_columns().names(),
        ),
        (
            "cloud_sync_queue",
            schema::schema::cloud_sync_queue::table::all_columns().names(),
        ),
        (
            "command_minutes",
            schema::schema::command_minutes::table::all_columns().names(),
        ),
        (
            "commands",
            schema::schema::commands::table::all_columns().names(),
        ),
        (
            "deployment_device_minutes",
            schema::schema::deployment_device_minutes::table::all_columns().names(),
        ),
        (
            "device_events",
            schema::schema::device_events::table::all_columns().names(),
        ),
        (
            "device_group_members",
            schema::schema::device_group_members::table::all_columns().names(),
        ),
        (
            "device_groups",
            schema::schema::device_groups::table::all_columns().names(),
        ),
        (
            "device_logs",
            schema::schema::device_logs::table::all_columns().names(),
        ),
        (
            "device_presence",
            schema::schema::device_presence::table::all_columns().names(),
        ),
        (
            "devices",
            schema::schema::devices::table::all_columns().names(),
        ),
        (
            "failure_counts",
            schema::schema::failure_counts::table::all_columns().names(),
        ),
        (
            "firmware_deployment_devices",
            schema::schema::firmware_deployment_devices::table::all_columns().names(),
        ),
        (
            "firmware_deployments",
            schema::schema::firmware_deployments::table::all_columns().names(),
        ),
        (
            "firmware_releases",
            schema::schema::firmware_releases::table::all_columns().names(),
        ),
        (
            "metric_hours",
            schema::schema::metric_hours::table::all_columns().names(),
        ),
        (
            "metric_minutes",
            schema::schema::metric_minutes::table::all_columns().names(),
        ),
        (
            "metric_samples",
            schema::schema::metric_samples::table::all_columns().names(),
        ),
        (
            "online_hours",
            schema::schema::online_hours::table::all_columns().names(),
        ),
        (
            "online_minutes",
            schema::schema::online_minutes::table::all_columns().names(),
        ),
        (
            "ota_boards",
            schema::schema::ota_boards::table::all_columns().names(),
        ),
        (
            "production_events",
            schema::schema::production_events::table::all_columns().names(),
        ),
        (
            "revoked_tokens",
            schema::schema::revoked_tokens::table::all_columns().names(),
        ),
        ("users", schema::schema::users::table::all_columns().names()),
    ];
    assert_eq!(
        tables.len(),
        declared.len(),
        "a table is missing from schema.rs or the migrations"
    );
    for ((table, mut cols), (declared_table, mut declared_cols)) in tables.into_iter().zip(declared)
    {
        assert_eq!(table, declared_table);
        cols.sort();
        declared_cols.sort();
        assert_eq!(
            cols, declared_cols,
            "schema.rs and the migrations differ on {table}"
        );
    }
}

/// Lists a tuple of diesel columns by name.
trait ColumnNames {
    fn names(&self) -> Vec<&'static str>;
}

macro_rules! column_names_for_tuples {
    ($($n:literal: ($($t:ident),+)),+ $(,)?) => {$(
        impl<$($t: diesel::Column),+> ColumnNames for ($($t,)+) {
            fn names(&self) -> Vec<&'static str> {
                vec![$($t::NAME),+]
            }
        }
    )+};
}

column_names_for_tuples!(
    2: (A, B),
    3: (A, B, C),
    4: (A, B, C, D),
    5: (A, B, C, D, E),
    6: (A, B, C, D, E, F),
    16: (A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P),
    18: (A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P, Q, R),
    8: (A, B, C, D, E, F, G, H),
    9: (A, B, C, D, E, F, G, H, I),
    7: (A, B, C, D, E, F, G),
    11: (A, B, C, D, E, F, G, H, I, J, K),
    13: (A, B, C, D, E, F, G, H, I, J, K, L, M),
    14: (A, B, C, D, E, F, G, H, I, J, K, L, M, N),
    12: (A, B, C, D, E, F, G, H, I, J, K, L),
    10: (A, B, C, D, E, F, G, H, I, J),
    15: (A, B, C, D, E, F, G, H, I, J, K, L, M, N, O),
);
