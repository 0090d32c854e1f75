//! Charts on both databases: metric rollups at bucket edges (a sample exactly on a minute edge
//! counts once, in the minute it starts), rollups run again or with late samples, retention at
//! its cutoffs, the production and fleet counters at minute edges, and how a query picks its
//! resolution.

use crate::common::{add_device, ServerDb};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use protocol::charts::Resolution;
use schema::schema::{
    aggregated_batches, commands, metric_hours, metric_minutes, metric_samples, online_hours,
    online_minutes,
};
use server::store::counters;
use server::store::metrics::{self, Plan, Retention, SampleRow, HOUR_MS, MINUTE_MS};
use server::store::telemetry::{write_batch, Telemetry};

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// A device of the company `acme` on `line`.
fn acme_device(db: &ServerDb, id: &str, line: &str) {
    add_device(db, id, id, Some("acme"), Some(line), "ONLINE");
}

fn sample(device: &str, metric: &str, ts: i64, value: f64) -> SampleRow {
    SampleRow {
        device_id: device.into(),
        metric: metric.into(),
        ts,
        value,
    }
}

fn write(db: &ServerDb, batch: Vec<Telemetry>) {
    db.db
        .run_blocking(move |conn| Ok(write_batch(conn, &batch)?))
        .unwrap();
}

fn rollup(db: &ServerDb, now: i64) {
    db.db
        .run_blocking(move |conn| Ok(metrics::rollup(conn, at(now))?))
        .unwrap();
}

type Bucket = (String, String, i64, f64, f64, f64, i64);

fn minutes(db: &ServerDb) -> Vec<Bucket> {
    db.db
        .run_blocking(|conn| {
            Ok(metric_minutes::table
                .select((
                    metric_minutes::device_id,
                    metric_minutes::metric,
                    metric_minutes::bucket,
                    metric_minutes::min_value,
                    metric_minutes::max_value,
                    metric_minutes::sum_value,
                    metric_minutes::sample_count,
                ))
                .order((
                    metric_minutes::device_id,
                    metric_minutes::metric,
                    metric_minutes::bucket,
                ))
                .load(conn)?)
        })
        .unwrap()
}

fn hours(db: &ServerDb) -> Vec<Bucket> {
    db.db
        .run_blocking(|conn| {
            Ok(metric_hours::table
                .select((
                    metric_hours::device_id,
                    metric_hours::metric,
                    metric_hours::bucket,
                    metric_hours::min_value,
                    metric_hours::max_value,
                    metric_hours::sum_value,
                    metric_hours::sample_count,
                ))
                .order((
                    metric_hours::device_id,
                    metric_hours::metric,
                    metric_hours::bucket,
                ))
                .load(conn)?)
        })
        .unwrap()
}

/// (bucket, devices) rows of the online minutes and hours.
type Online = Vec<(i64, i64)>;

fn online(db: &ServerDb) -> (Online, Online) {
    db.db
        .run_blocking(|conn| {
            let m = online_minutes::table
                .order(online_minutes::bucket)
                .select((online_minutes::bucket, online_minutes::devices))
                .load(conn)?;
            let h = online_hours::table
                .order(online_hours::bucket)
                .select((online_hours::bucket, online_hours::devices))
                .load(conn)?;
            Ok((m, h))
        })
        .unwrap()
}

/// An hour edge two hours ago: every sample of the tests lies in the past.
fn base() -> i64 {
    (Utc::now().timestamp_millis() / HOUR_MS - 2) * HOUR_MS
}

fn rollups_are_exact_at_bucket_edges(db: ServerDb) {
    acme_device(&db, "edge-a", "line-1");
    acme_device(&db, "edge-b", "line-1");
    let t0 = base();
    write(
        &db,
        vec![
            Telemetry::Metrics(vec![sample("edge-a", "disk", t0 + MINUTE_MS - 1, 1.0)]),
            // Exactly on the edge: the second minute, and only it.
            Telemetry::Metrics(vec![
                sample("edge-a", "disk", t0 + MINUTE_MS, 10.0),
                sample("edge-b", "disk", t0 + MINUTE_MS, 7.0),
            ]),
            Telemetry::Metrics(vec![sample("edge-a", "disk", t0 + MINUTE_MS + 1, 20.0)]),
            Telemetry::Metrics(vec![sample("edge-a", "disk", t0 + 2 * MINUTE_MS - 1, 30.0)]),
            Telemetry::Metrics(vec![sample("edge-a", "disk", t0 + 2 * MINUTE_MS, 5.0)]),
            // The last millisecond of the hour, and the next hour's first.
            Telemetry::Metrics(vec![sample("edge-a", "disk", t0 + HOUR_MS - 1, 2.0)]),
            Telemetry::Metrics(vec![sample("edge-a", "disk", t0 + HOUR_MS, 3.0)]),
        ],
    );
    // The same status again (a resend) is stored once.
    write(
        &db,
        vec![Telemetry::Metrics(vec![
            sample("edge-a", "disk", t0 + MINUTE_MS, 10.0),
            sample("edge-a", "queue", t0 + MINUTE_MS, 4.0),
        ])],
    );
    let now = t0 + HOUR_MS + 30 * MINUTE_MS;
    rollup(&db, now);
    let row = |d: &str, m: &str, b: i64, min: f64, max: f64, sum: f64, n: i64| -> Bucket {
        (d.into(), m.into(), b, min, max, sum, n)
    };
    let want_minutes = |late: bool| {
        vec![
            row("edge-a", "disk", t0, 1.0, 1.0, 1.0, 1),
            row("edge-a", "disk", t0 + MINUTE_MS, 10.0, 30.0, 60.0, 3),
            row("edge-a", "disk", t0 + 2 * MINUTE_MS, 5.0, 5.0, 5.0, 1),
            if late {
                row("edge-a", "disk", t0 + 59 * MINUTE_MS, 2.0, 9.0, 11.0, 2)
            } else {
                row("edge-a", "disk", t0 + 59 * MINUTE_MS, 2.0, 2.0, 2.0, 1)
            },
            row("edge-a", "disk", t0 + HOUR_MS, 3.0, 3.0, 3.0, 1),
            row("edge-a", "queue", t0 + MINUTE_MS, 4.0, 4.0, 4.0, 1),
            row("edge-b", "disk", t0 + MINUTE_MS, 7.0, 7.0, 7.0, 1),
        ]
    };
    assert_eq!(minutes(&db), want_minutes(false));
    assert_eq!(
        hours(&db),
        vec![
            row("edge-a", "disk", t0, 1.0, 30.0, 68.0, 6),
            row("edge-a", "disk", t0 + HOUR_MS, 3.0, 3.0, 3.0, 1),
            row("edge-a", "queue", t0, 4.0, 4.0, 4.0, 1),
            row("edge-b", "disk", t0, 7.0, 7.0, 7.0, 1),
        ]
    );
    let (online_m, online_h) = online(&db);
    assert_eq!(
        online_m,
        vec![
            (t0, 1),
            (t0 + MINUTE_MS, 2),
            (t0 + 2 * MINUTE_MS, 1),
            (t0 + 59 * MINUTE_MS, 1),
            (t0 + HOUR_MS, 1)
        ]
    );
    assert_eq!(online_h, vec![(t0, 2), (t0 + HOUR_MS, 1)]);

    // Run again: nothing changes.
    rollup(&db, now);
    assert_eq!(minutes(&db), want_minutes(false));
    assert_eq!(hours(&db).len(), 4);

    // A sample arriving after its minute was rolled up, within the re-roll window before the
    // newest minute: the next pass recomputes the minute and its hour with it.
    write(
        &db,
        vec![Telemetry::Metrics(vec![sample(
            "edge-a",
            "disk",
            t0 + HOUR_MS - 2,
            9.0,
        )])],
    );
    rollup(&db, now);
    assert_eq!(minutes(&db), want_minutes(true));
    assert_eq!(hours(&db)[0], row("edge-a", "disk", t0, 1.0, 30.0, 77.0, 7));
}

#[test]
fn sqlite_rollups_are_exact_at_bucket_edges() {
    rollups_are_exact_at_bucket_edges(ServerDb::sqlite());
}

#[test]
fn postgres_rollups_are_exact_at_bucket_edges() {
    rollups_are_exact_at_bucket_edges(ServerDb::postgres());
}

fn count(db: &ServerDb) -> [i64; 5] {
    db.db
        .run_blocking(|conn| {
            Ok([
                metric_samples::table.count().get_result(conn)?,
                metric_minutes::table.count().get_result(conn)?,
                metric_hours::table.count().get_result(conn)?,
                online_minutes::table.count().get_result(conn)?,
                online_hours::table.count().get_result(conn)?,
            ])
        })
        .unwrap()
}

fn retention_deletes_exactly_what_is_older(db: ServerDb) {
    acme_device(&db, "edge-a", "line-1");
    let keep = Retention::new(24, 30, 365);
    let now = base() + 17 * MINUTE_MS + 123;
    let raw_cut = now - keep.raw_ms;
    let minute_cut = now - keep.minutes_ms;
    let hour_cut = now - keep.hours_ms;
    write(
        &db,
        vec![Telemetry::Metrics(vec![
            sample("edge-a", "disk", raw_cut - MINUTE_MS * 3, 1.0),
            sample("edge-a", "disk", raw_cut - 1, 1.0),
            sample("edge-a", "disk", raw_cut, 1.0),
            sample("edge-a", "disk", raw_cut + 1, 1.0),
        ])],
    );
    db.db
        .run_blocking(move |conn| {
            for (bucket, table_hours) in [
                (minute_cut - 2 * HOUR_MS, false),
                (minute_cut - 1, false),
                (minute_cut, false),
                (hour_cut - 1, true),
                (hour_cut, true),
                (hour_cut + 1, true),
            ] {
                let values = (
                    metric_minutes::device_id.eq("edge-a"),
                    metric_minutes::metric.eq("disk"),
                    metric_minutes::bucket.eq(bucket),
                    metric_minutes::min_value.eq(1.0),
                    metric_minutes::max_value.eq(1.0),
                    metric_minutes::sum_value.eq(1.0),
                    metric_minutes::sample_count.eq(1i64),
                );
                if table_hours {
                    diesel::insert_into(metric_hours::table)
                        .values((
                            metric_hours::device_id.eq("edge-a"),
                            metric_hours::metric.eq("disk"),
                            metric_hours::bucket.eq(bucket),
                            metric_hours::min_value.eq(1.0),
                            metric_hours::max_value.eq(1.0),
                            metric_hours::sum_value.eq(1.0),
                            metric_hours::sample_count.eq(1i64),
                        ))
                        .execute(conn)?;
                    diesel::insert_into(online_hours::table)
                        .values((
                            online_hours::bucket.eq(bucket),
                            online_hours::devices.eq(1i64),
                        ))
                        .execute(conn)?;
                } else {
                    diesel::insert_into(metric_minutes::table)
                        .values(values)
                        .execute(conn)?;
                    diesel::insert_into(online_minutes::table)
                        .values((
                            online_minutes::bucket.eq(bucket),
                            online_minutes::devices.eq(1i64),
                        ))
                        .execute(conn)?;
                }
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(count(&db), [4, 3, 3, 3, 3]);
    let deleted = db
        .db
        .run_blocking(move |conn| Ok(metrics::prune(conn, at(now), keep)?))
        .unwrap();
    assert_eq!(deleted, 2 + 2 + 1 + 2 + 1);
    assert_eq!(count(&db), [2, 1, 2, 1, 2]);
    let left = db
        .db
        .run_blocking(|conn| {
            Ok(metric_samples::table
                .select(metric_samples::ts)
                .order(metric_samples::ts)
                .load::<i64>(conn)?)
        })
        .unwrap();
    assert_eq!(left, vec![raw_cut, raw_cut + 1]);
    // Nothing more to delete at the same instant.
    let again = db
        .db
        .run_blocking(move |conn| Ok(metrics::prune(conn, at(now), keep)?))
        .unwrap();
    assert_eq!(again, 0);
}

#[test]
fn sqlite_retention_deletes_exactly_what_is_older() {
    retention_deletes_exactly_what_is_older(ServerDb::sqlite());
}

#[test]
fn postgres_retention_deletes_exactly_what_is_older() {
    retention_deletes_exactly_what_is_older(ServerDb::postgres());
}

fn plan(from: i64, to: i64, step: Option<i64>) -> Plan {
    Plan::new(
        from,
        to,
        step,
        to,
        Retention::new(24, 30, 365),
        Resolution::Minute,
    )
    .unwrap()
}

fn counters_count_each_row_once_at_minute_edges(db: ServerDb) {
    acme_device(&db, "edge-a", "line-1");
    acme_device(&db, "edge-b", "line-2");
    let t0 = base();
    let scan = |d: &str, ms: i64, valid: bool| {
        Telemetry::event(
            d,
            at(ms),
            "scan",
            &serde_json::json!({"code": "0104601234567893", "valid": valid}),
        )
    };
    write(
        &db,
        vec![
            scan("edge-a", t0 + MINUTE_MS - 1, true),
            scan("edge-a", t0 + MINUTE_MS, true),
            scan("edge-a", t0 + MINUTE_MS + 1, false),
            scan("edge-b", t0 + MINUTE_MS, true),
            Telemetry::event(
                "edge-a",
                at(t0 + MINUTE_MS),
                "print",
                &serde_json::json!({"code": "x"}),
            ),
            Telemetry::event(
                "edge-a",
                at(t0 + MINUTE_MS),
                "alert",
                &serde_json::json!({"severity": "warning", "message": "m"}),
            ),
        ],
    );
    db.db
        .run_blocking(move |conn| {
            let now = Utc::now().naive_utc();
            diesel::insert_into(aggregated_batches::table)
                .values((
                    aggregated_batches::id.eq("b-1"),
                    aggregated_batches::device_id.eq("edge-a"),
                    aggregated_batches::company_id.eq("acme"),
                    aggregated_batches::payload.eq("{}"),
                    aggregated_batches::created_at.eq(at(t0 + 2 * MINUTE_MS).naive_utc()),
                    aggregated_batches::received_at.eq(now),
                ))
                .execute(conn)?;
            for (id, status, ms) in [
                ("c-1", "SUCCESS", t0 + MINUTE_MS - 1),
                ("c-2", "SUCCESS", t0 + MINUTE_MS),
                ("c-3", "FAILED", t0 + MINUTE_MS),
            ] {
                diesel::insert_into(commands::table)
                    .values((
                        commands::id.eq(id),
                        commands::device_id.eq("edge-a"),
                        commands::command_type.eq("force_sync"),
                        commands::payload.eq("{}"),
                        commands::status.eq(status),
                        commands::timeout_ms.eq(1000i64),
                        commands::created_at.eq(at(ms).naive_utc()),
                    ))
                    .execute(conn)?;
            }
            Ok(())
        })
        .unwrap();
    let p = plan(t0, t0 + 3 * MINUTE_MS, Some(MINUTE_MS));
    let series = db
        .db
        .run_blocking(move |conn| Ok(counters::throughput(conn, None, None, &p)?))
        .unwrap();
    assert_eq!(series.len(), 2);
    let a = &series[0];
    assert_eq!(a.production_line_id.as_deref(), Some("line-1"));
    assert_eq!(a.points.len(), 3, "every step, zeros included");
    let counts: Vec<[i64; 5]> = a
        .points
        .iter()
        .map(|p| {
            [
                p.scans_valid,
                p.scans_invalid,
                p.prints,
                p.batches,
                p.pallets,
            ]
        })
        .collect();
    assert_eq!(
        counts,
        vec![[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0]]
    );
    assert_eq!(series[1].points[1].scans_valid, 1);

    // One line only, in a step of two minutes.
    let p = plan(t0, t0 + 4 * MINUTE_MS, Some(2 * MINUTE_MS));
    let series = db
        .db
        .run_blocking(move |conn| Ok(counters::throughput(conn, Some("line-2"), None, &p)?))
        .unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].points.len(), 2);
    assert_eq!(series[0].points[0].scans_valid, 1);

    let p = plan(t0, t0 + 3 * MINUTE_MS, Some(MINUTE_MS));
    let fleet = db
        .db
        .run_blocking(move |conn| Ok(counters::fleet_summary(conn, &p)?))
        .unwrap();
    assert_eq!(fleet.points.len(), 3);
    assert_eq!(fleet.points[0].commands.get("SUCCESS"), Some(&1));
    assert_eq!(fleet.points[1].commands.get("SUCCESS"), Some(&1));
    assert_eq!(fleet.points[1].commands.get("FAILED"), Some(&1));
    assert!(fleet.points[2].commands.is_empty());
}

#[test]
fn sqlite_counters_count_each_row_once_at_minute_edges() {
    counters_count_each_row_once_at_minute_edges(ServerDb::sqlite());
}

#[test]
fn postgres_counters_count_each_row_once_at_minute_edges() {
    counters_count_each_row_once_at_minute_edges(ServerDb::postgres());
}

#[test]
fn a_query_reads_the_finest_resolution_its_range_and_step_allow() {
    let keep = Retention::new(24, 30, 365);
    let now = 1_000 * 24 * HOUR_MS;
    let new =
        |from: i64, step: Option<i64>| Plan::new(now - from, now, step, now, keep, Resolution::Raw);
    // One hour: raw samples, a step of 15 s by default.
    let p = new(HOUR_MS, None).unwrap();
    assert_eq!((p.resolution, p.step), (Resolution::Raw, 15_000));
    // A day: minutes (raw is read for at most six hours).
    let p = new(24 * HOUR_MS, None).unwrap();
    assert_eq!((p.resolution, p.step), (Resolution::Minute, 5 * MINUTE_MS));
    // Seven days: hours; ten hours with a 90 s step: minutes, the step raised to whole minutes.
    let p = new(7 * 24 * HOUR_MS, None).unwrap();
    assert_eq!((p.resolution, p.step), (Resolution::Hour, HOUR_MS));
    let p = new(HOUR_MS * 10, Some(90_000)).unwrap();
    assert_eq!((p.resolution, p.step), (Resolution::Minute, 2 * MINUTE_MS));
    // Forty days: past the minutes' retention, so hours.
    let p = new(40 * 24 * HOUR_MS, None).unwrap();
    assert_eq!((p.resolution, p.step), (Resolution::Hour, 6 * HOUR_MS));
    // Bounds: too many points, too long, backwards, a zero step.
    assert!(new(7 * 24 * HOUR_MS, Some(MINUTE_MS)).is_err());
    assert!(new(500 * 24 * HOUR_MS, None).is_err());
    assert!(Plan::new(now, now - 1, None, now, keep, Resolution::Raw).is_err());
    assert!(new(HOUR_MS, Some(0)).is_err());
    // A step of exactly the points limit is accepted.
    assert!(new(2000 * MINUTE_MS, Some(MINUTE_MS)).is_ok());
}

#[test]
fn a_status_gives_a_sample_per_finite_number_at_a_believable_time() {
    let now = at(1_800_000_000_000);
    let metrics = serde_json::json!({
        "diskFreeBytes": 38962409472u64,
        "uptimeSecs": 12,
        "cpuPercent": 3.5,
        "version": "1.2.3",
        "productionEnabled": true,
        "labelQueueDepth": null,
        "shellTemplates": ["disk_usage"],
        "x".repeat(65): 1,
    });
    let mut rows = metrics::samples_of("edge-a", at(1_800_000_000_000 - 2_000), now, &metrics);
    rows.sort_by(|a, b| a.metric.cmp(&b.metric));
    let got: Vec<(&str, i64, f64)> = rows
        .iter()
        .map(|r| (r.metric.as_str(), r.ts, r.value))
        .collect();
    assert_eq!(
        got,
        vec![
            ("cpuPercent", 1_800_000_000_000 - 2_000, 3.5),
            ("diskFreeBytes", 1_800_000_000_000 - 2_000, 38962409472.0),
            ("uptimeSecs", 1_800_000_000_000 - 2_000, 12.0),
        ]
    );
    // A clock an hour off: the server's time instead.
    let skewed = metrics::samples_of("edge-a", at(1_800_000_000_000 + HOUR_MS), now, &metrics);
    assert!(skewed.iter().all(|r| r.ts == 1_800_000_000_000));
    // At most 32 series per status, whatever the device sends.
    let many: serde_json::Map<String, serde_json::Value> = (0..100)
        .map(|i| (format!("m{i}"), serde_json::json!(i)))
        .collect();
    let capped = metrics::samples_of("edge-a", now, now, &serde_json::Value::Object(many));
    assert_eq!(capped.len(), metrics::MAX_METRICS_PER_STATUS);
}
