//! Benchmark of the charts' storage and queries on SQLite and PostgreSQL: the bytes one device
//! costs per day (raw samples at a status every 5 s with 4 numeric metrics, and their minute
//! and hour rollups), the write and rollup rates, and the query times of 7 days of metrics
//! for each of 1,000 devices, 24 hours for 100 of them, and the fleet summary over 7 days.
//! Prints figures (BENCHMARKS.md has them); asserts only that every sample was stored.
//! Run with `bash scripts/bench-charts.sh`.

use std::time::{Duration, Instant};

use chrono::Utc;
use protocol::charts::Resolution;
use server::config::DatabaseTarget;
use server::db::Db;
use server::store::counters;
use server::store::metrics::{self, Plan, Retention, SampleRow, DAY_MS, HOUR_MS, MINUTE_MS};
use server::store::telemetry::{write_batch, Telemetry};
use testdb::{Target, TestDb};

const DEVICES: usize = 1000;
/// Devices whose full day of raw samples is written to measure the cost per device-day.
const DAY_DEVICES: usize = 10;
const STATUS_EVERY_MS: i64 = 5000;
const METRICS: [&str; 4] = [
    "diskFreeBytes",
    "uptimeSecs",
    "queueDepth",
    "labelQueueDepth",
];
/// Statuses per telemetry batch, about what the sink flushes at (500 records).
const STATUSES_PER_BATCH: usize = 500;

fn main() {
    // `BENCH_BACKEND=sqlite` or `postgres` runs one.
    let only = std::env::var("BENCH_BACKEND").unwrap_or_default();
    for backend in [
        integration_tests::Backend::Sqlite,
        integration_tests::Backend::Postgres,
    ] {
        if only.is_empty() || format!("{backend:?}").eq_ignore_ascii_case(&only) {
            run(backend);
        }
    }
}

/// Runs SQL with the backend's own client (the fill and the size queries differ by dialect).
struct Native {
    target: Target,
}

impl Native {
    fn execute(&self, sql: &str) {
        match &self.target {
            Target::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open sqlite");
                conn.busy_timeout(Duration::from_secs(60)).unwrap();
                conn.execute_batch(sql).expect("sqlite statement");
            }
            Target::Postgres(url) => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).expect("pg");
                client.batch_execute(sql).expect("pg statement");
            }
        }
    }

    fn int(&self, sql: &str) -> i64 {
        match &self.target {
            Target::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open sqlite");
                conn.query_row(sql, [], |r| r.get(0)).expect("sqlite query")
            }
            Target::Postgres(url) => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).expect("pg");
                client.query_one(sql, &[]).expect("pg query").get(0)
            }
        }
    }

    /// Bytes the database holds now: the whole file on SQLite (WAL checkpointed first, free
    /// pages left out), the named tables with their indexes on PostgreSQL.
    fn bytes(&self, tables: &[&str]) -> i64 {
        match &self.target {
            Target::Sqlite(_) => {
                self.execute("PRAGMA wal_checkpoint(TRUNCATE);");
                let pages = self.int("PRAGMA page_count") - self.int("PRAGMA freelist_count");
                pages * self.int("PRAGMA page_size")
            }
            Target::Postgres(_) => {
                self.execute("VACUUM ANALYZE;");
                tables
                    .iter()
                    .map(|t| self.int(&format!("SELECT pg_total_relation_size('{t}')::bigint")))
                    .sum()
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(backend: integration_tests::Backend) {
    let test = TestDb::new(backend);
    let target = test.target();
    let db = Db::open(match &target {
        Target::Sqlite(path) => DatabaseTarget::Sqlite(path.clone()),
        Target::Postgres(url) => DatabaseTarget::Postgres(url.clone()),
    })
    .expect("open the database");
    let native = Native { target };
    let name = format!("{backend:?}");
    println!("== {name}");
    for chunk in (0..DEVICES).collect::<Vec<_>>().chunks(100) {
        native.execute(&format!(
            "INSERT INTO devices (id, name, status, created_at, updated_at) VALUES {}",
            chunk
                .iter()
                .map(|i| format!(
                    "('edge-{i:04}', 'edge-{i:04}', 'ONLINE', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // One day of statuses for DAY_DEVICES devices, written the way the telemetry writer does.
    let now = Utc::now().timestamp_millis();
    let day_start = (now - DAY_MS - HOUR_MS) / HOUR_MS * HOUR_MS;
    let tables = [
        "metric_samples",
        "metric_minutes",
        "metric_hours",
        "online_minutes",
        "online_hours",
    ];
    let empty = native.bytes(&tables);
    let statuses = (DAY_MS / STATUS_EVERY_MS) as usize;
    let started = Instant::now();
    for d in 0..DAY_DEVICES {
        let device = format!("edge-{d:04}");
        for chunk in (0..statuses).collect::<Vec<_>>().chunks(STATUSES_PER_BATCH) {
            let batch: Vec<Telemetry> = chunk
                .iter()
                .map(|i| {
                    let ts = day_start + *i as i64 * STATUS_EVERY_MS;
                    Telemetry::Metrics(
                        METRICS
                            .iter()
                            .enumerate()
                            .map(|(m, metric)| SampleRow {
                                device_id: device.clone(),
                                metric: (*metric).to_owned(),
                                ts,
                                value: (38_962_409_472 - *i as i64 * 4096 + m as i64) as f64,
                            })
                            .collect(),
                    )
                })
                .collect();
            db.run_blocking(move |conn| Ok(write_batch(conn, &batch)?))
                .expect("write batch");
        }
    }
    let write_time = started.elapsed();
    let samples = native.int("SELECT COUNT(*) FROM metric_samples");
    assert_eq!(samples, (DAY_DEVICES * statuses * METRICS.len()) as i64);
    let raw = native.bytes(&tables) - empty;
    let started = Instant::now();
    let rollup_now = day_start + DAY_MS;
    db.run_blocking(move |conn| {
        Ok(metrics::rollup(
            conn,
            chrono::DateTime::from_timestamp_millis(rollup_now).unwrap(),
        )?)
    })
    .expect("rollup");
    let rollup_day = started.elapsed();
    let rolled = native.bytes(&tables) - empty - raw;
    let per_day = |bytes: i64| bytes as f64 / DAY_DEVICES as f64 / 1024.0 / 1024.0;
    println!(
        "write: {samples} samples ({} statuses) in {:.1} s = {:.0} samples/s",
        DAY_DEVICES * statuses,
        write_time.as_secs_f64(),
        samples as f64 / write_time.as_secs_f64()
    );
    println!(
        "storage per device-day: raw {:.2} MiB ({:.0} B/sample), minute+hour rollups {:.3} MiB",
        per_day(raw),
        raw as f64 / samples as f64,
        per_day(rolled)
    );
    println!(
        "rollup of {DAY_DEVICES} device-days of raw samples (catching up): {:.1} s",
        rollup_day.as_secs_f64()
    );
    native.execute("DELETE FROM metric_samples; DELETE FROM metric_minutes; DELETE FROM metric_hours; DELETE FROM online_minutes; DELETE FROM online_hours;");

    // 7 days of hours and one day of minutes for every device, filled in SQL.
    let hours_from = (now - 7 * DAY_MS) / HOUR_MS * HOUR_MS;
    let minutes_from = (now - DAY_MS) / MINUTE_MS * MINUTE_MS;
    let started = Instant::now();
    native.execute(&fill_sql(
        &native.target,
        "metric_hours",
        hours_from,
        HOUR_MS,
        7 * 24 + 1,
    ));
    native.execute(&fill_sql(
        &native.target,
        "metric_minutes",
        minutes_from,
        MINUTE_MS,
        24 * 60 + 1,
    ));
    // Statistics as autovacuum (PostgreSQL) or a periodic ANALYZE would have them.
    native.execute("ANALYZE;");
    let (hours, minutes) = (
        native.int("SELECT COUNT(*) FROM metric_hours"),
        native.int("SELECT COUNT(*) FROM metric_minutes"),
    );
    println!(
        "filled {hours} hour rows and {minutes} minute rows for {DEVICES} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let keep = Retention::new(24, 30, 365);
    let week = Plan::new(now - 7 * DAY_MS, now, None, now, keep, Resolution::Raw).unwrap();
    let day = Plan::new(now - DAY_MS, now, None, now, keep, Resolution::Raw).unwrap();
    let time_devices = |plan: Plan, n: usize, want: Resolution| {
        let mut times = Vec::with_capacity(n);
        let started = Instant::now();
        for i in 0..n {
            let id = format!("edge-{:04}", i * (DEVICES / n));
            let t = Instant::now();
            let (series, plan) = db
                .run_blocking(move |conn| {
                    let mut plan = plan;
                    Ok((metrics::device_series(conn, &id, None, &mut plan)?, plan))
                })
                .expect("device series");
            times.push(t.elapsed());
            assert_eq!(plan.resolution, want);
            assert_eq!(series.len(), METRICS.len());
        }
        let total = started.elapsed();
        times.sort();
        (times[n / 2], times[n * 99 / 100], total)
    };
    let (p50, p99, total) = time_devices(week, DEVICES, Resolution::Hour);
    println!(
        "7 days of 4 metrics (hours, {} points each) for each of {DEVICES} devices: p50 {:.2} ms, p99 {:.2} ms, all {DEVICES} in {:.2} s",
        7 * 24,
        ms(p50),
        ms(p99),
        total.as_secs_f64()
    );
    let (p50, p99, total) = time_devices(day, 100, Resolution::Minute);
    println!(
        "24 h of 4 metrics (minutes, 5-min steps) for 100 devices: p50 {:.2} ms, p99 {:.2} ms, all in {:.2} s",
        ms(p50),
        ms(p99),
        total.as_secs_f64()
    );
    let fleet = Plan::new(now - 7 * DAY_MS, now, None, now, keep, Resolution::Minute).unwrap();
    native.execute(&format!(
        "INSERT INTO online_hours (bucket, devices) SELECT DISTINCT bucket, {DEVICES} FROM metric_hours"
    ));
    let t = Instant::now();
    db.run_blocking(move |conn| Ok(counters::fleet_summary(conn, &fleet)?))
        .expect("fleet");
    println!("fleet summary over 7 days: {:.2} ms", ms(t.elapsed()));

    // One pass of the janitor at steady state: the current minute of 1,000 devices (12
    // statuses each) rolled up, and the hours re-rolled from the minutes.
    let minute = now / MINUTE_MS * MINUTE_MS;
    let rows: Vec<Telemetry> = (0..DEVICES)
        .flat_map(|d| {
            (0..12).map(move |s| {
                Telemetry::Metrics(
                    METRICS
                        .iter()
                        .map(|m| SampleRow {
                            device_id: format!("edge-{d:04}"),
                            metric: (*m).to_owned(),
                            ts: minute + s * STATUS_EVERY_MS,
                            value: s as f64,
                        })
                        .collect(),
                )
            })
        })
        .collect();
    for chunk in rows.chunks(STATUSES_PER_BATCH) {
        let batch = chunk.to_vec();
        db.run_blocking(move |conn| Ok(write_batch(conn, &batch)?))
            .expect("write");
    }
    let t = Instant::now();
    let report = db
        .run_blocking(move |conn| {
            let now = chrono::DateTime::from_timestamp_millis(minute + 59_000).unwrap();
            Ok(metrics::rollup(conn, now).inspect_err(|e| eprintln!("rollup: {e}"))?)
        })
        .expect("rollup");
    println!(
        "one rollup pass at {DEVICES} devices: {:.0} ms ({} minute rows, {} hour rows written)",
        ms(t.elapsed()),
        report.minute_rows,
        report.hour_rows
    );
    drop(db);
}

/// SQL that fills `table` with `count` buckets from `from` for every device and metric.
fn fill_sql(target: &Target, table: &str, from: i64, size: i64, count: i64) -> String {
    let metrics = METRICS
        .iter()
        .map(|m| format!("SELECT '{m}' AS metric"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let series = match target {
        Target::Sqlite(_) => format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) SELECT i FROM n",
            count - 1
        ),
        Target::Postgres(_) => format!("SELECT generate_series(0, {}) AS i", count - 1),
    };
    format!(
        "INSERT INTO {table} (device_id, metric, bucket, min_value, max_value, sum_value, sample_count) \
         SELECT d.id, m.metric, {from} + s.i * {size}, 1.0, 3.0, 24.0, 12 \
         FROM devices d CROSS JOIN ({metrics}) m CROSS JOIN ({series}) s"
    )
}
