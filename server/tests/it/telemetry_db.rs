//! Telemetry storage, the retention job and the device-list filters, against both databases.

use crate::common::{add_device, ServerDb};
use chrono::{Duration, NaiveDateTime, SubsecRound, Utc};
use diesel::prelude::*;
use schema::schema::{device_events, device_group_members, device_groups, device_logs};
use server::store::devices::{list as list_devices, DeviceFilter};
use server::store::telemetry::{self, Telemetry};

fn count_rows(db: &ServerDb) -> (i64, i64) {
    db.db
        .run_blocking(|conn| {
            let logs = device_logs::table.count().get_result(conn)?;
            let events = device_events::table.count().get_result(conn)?;
            Ok((logs, events))
        })
        .unwrap()
}

fn retention_deletes_exactly_what_is_older(db: ServerDb) {
    add_device(&db, "edge-1", "Line 1", None, None, "OFFLINE");
    // PostgreSQL keeps microseconds; a cut-off finer than that could not be compared exactly.
    let now = Utc::now().trunc_subsecs(6);
    let cutoff = now - Duration::days(30);
    // 25 rows of each kind on each side of the cut-off, and one exactly at it (kept: the
    // job deletes what is older).
    let mut batch = Vec::new();
    for i in 1..=25 {
        let old = cutoff - Duration::minutes(i);
        let young = cutoff + Duration::minutes(i);
        batch.push(Telemetry::log("edge-1", old, "INFO", &format!("old {i}")));
        batch.push(Telemetry::log(
            "edge-1",
            young,
            "INFO",
            &format!("young {i}"),
        ));
        batch.push(Telemetry::event(
            "edge-1",
            old,
            "scan",
            &serde_json::json!({"i": i}),
        ));
        batch.push(Telemetry::event(
            "edge-1",
            young,
            "scan",
            &serde_json::json!({"i": i}),
        ));
    }
    batch.push(Telemetry::log("edge-1", cutoff, "INFO", "at the cut-off"));
    let written = db
        .db
        .run_blocking(|conn| Ok(telemetry::write_batch(conn, &batch)?))
        .unwrap();
    assert_eq!(written, batch.len());
    assert_eq!(count_rows(&db), (51, 50));

    // A batch of 7 makes the job loop several times per table.
    let deleted = db
        .db
        .run_blocking(|conn| Ok(telemetry::prune_older_than(conn, cutoff, 7)?))
        .unwrap();
    assert_eq!(deleted, 50);
    assert_eq!(count_rows(&db), (26, 25));
    let oldest: NaiveDateTime = db
        .db
        .run_blocking(|conn| {
            Ok(device_logs::table
                .select(device_logs::ts)
                .order(device_logs::ts.asc())
                .first(conn)?)
        })
        .unwrap();
    assert!(oldest >= cutoff.naive_utc());
    // Running again deletes nothing more.
    assert_eq!(
        db.db
            .run_blocking(|conn| Ok(telemetry::prune_older_than(conn, cutoff, 7)?))
            .unwrap(),
        0
    );
}

fn a_batch_survives_a_deleted_device(db: ServerDb) {
    add_device(&db, "edge-1", "Line 1", None, None, "OFFLINE");
    let now = Utc::now();
    let batch = vec![
        Telemetry::log("edge-1", now, "INFO", "kept"),
        Telemetry::log("edge-gone", now, "INFO", "no such device"),
        Telemetry::event(
            "edge-1",
            now,
            "alert",
            &serde_json::json!({"severity": "warning"}),
        ),
    ];
    let written = db
        .db
        .run_blocking(|conn| Ok(telemetry::write_batch(conn, &batch)?))
        .unwrap();
    assert_eq!(written, 2, "only the rows of the missing device are lost");
    assert_eq!(count_rows(&db), (1, 1));
}

fn device_filters(db: ServerDb) {
    add_device(
        &db,
        "edge-a1",
        "Bottling A",
        Some("acme"),
        Some("line-1"),
        "ONLINE",
    );
    add_device(
        &db,
        "edge-a2",
        "Capping A",
        Some("acme"),
        Some("line-2"),
        "OFFLINE",
    );
    add_device(
        &db,
        "edge-b1",
        "Bottling B",
        Some("bolt"),
        Some("line-1"),
        "OFFLINE",
    );
    add_device(&db, "edge_100%", "Odd name", None, None, "DISABLED");
    db.db
        .run_blocking(|conn| {
            let now = Utc::now().naive_utc();
            diesel::insert_into(device_groups::table)
                .values((
                    device_groups::id.eq("g1"),
                    device_groups::name.eq("Hall 1"),
                    device_groups::created_at.eq(now),
                    device_groups::updated_at.eq(now),
                ))
                .execute(conn)?;
            for d in ["edge-a1", "edge-b1"] {
                diesel::insert_into(device_group_members::table)
                    .values((
                        device_group_members::group_id.eq("g1"),
                        device_group_members::device_id.eq(d),
                    ))
                    .execute(conn)?;
            }
            Ok(())
        })
        .unwrap();
    let ids = |filter: DeviceFilter| -> Vec<String> {
        let page = db
            .db
            .run_blocking(move |conn| Ok(list_devices(conn, &filter, 50, 0)?))
            .unwrap();
        assert_eq!(page.total as usize, page.items.len());
        page.items.into_iter().map(|d| d.id).collect()
    };
    let f = DeviceFilter::default;
    assert_eq!(ids(f()).len(), 4);
    assert_eq!(
        ids(DeviceFilter {
            status: Some("OFFLINE".into()),
            ..f()
        }),
        ["edge-a2", "edge-b1"]
    );
    assert_eq!(
        ids(DeviceFilter {
            company_id: Some("acme".into()),
            ..f()
        }),
        ["edge-a1", "edge-a2"]
    );
    assert_eq!(
        ids(DeviceFilter {
            production_line_id: Some("line-1".into()),
            ..f()
        }),
        ["edge-a1", "edge-b1"]
    );
    assert_eq!(
        ids(DeviceFilter {
            group_id: Some("g1".into()),
            ..f()
        }),
        ["edge-a1", "edge-b1"]
    );
    assert_eq!(
        ids(DeviceFilter {
            q: Some("BOTTLING".into()),
            ..f()
        }),
        ["edge-a1", "edge-b1"]
    );
    assert_eq!(
        ids(DeviceFilter {
            q: Some("a2".into()),
            ..f()
        }),
        ["edge-a2"]
    );
    // LIKE wildcards in the search text match only themselves.
    assert_eq!(
        ids(DeviceFilter {
            q: Some("_".into()),
            ..f()
        }),
        ["edge_100%"]
    );
    assert_eq!(
        ids(DeviceFilter {
            q: Some("%".into()),
            ..f()
        }),
        ["edge_100%"]
    );
    assert_eq!(
        ids(DeviceFilter {
            company_id: Some("acme".into()),
            production_line_id: Some("line-1".into()),
            ..f()
        }),
        ["edge-a1"]
    );
    // Paging.
    let page = db
        .db
        .run_blocking(|conn| Ok(list_devices(conn, &DeviceFilter::default(), 2, 2)?))
        .unwrap();
    assert_eq!(page.total, 4);
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].id, "edge-b1");
}

on_both_backends!(
    retention_deletes_exactly_what_is_older,
    a_batch_survives_a_deleted_device,
    device_filters
);
