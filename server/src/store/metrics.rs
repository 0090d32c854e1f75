//! Device metrics over time: the numeric metrics of every `status` as raw samples, their
//! minute and hour rollups (min, max, sum, count), the online devices per bucket, retention,
//! and the series the chart routes read.
//!
//! Times are epoch milliseconds, so a bucket is `ts / 60000 * 60000` in either dialect and the
//! rollups are one SQL text for both backends. A rollup recomputes whole buckets from their
//! source and replaces what was stored (`ON CONFLICT … DO UPDATE`), so running it twice, or
//! over a bucket still filling, changes nothing that a later run would not set the same way.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use protocol::charts::{MetricPoint, MetricSeries, Resolution};
use schema::schema::{metric_hours, metric_minutes, metric_samples, online_hours, online_minutes};

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};

pub const SECOND_MS: i64 = 1000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Metrics taken from one status; a device cannot grow the table faster than this.
pub const MAX_METRICS_PER_STATUS: usize = 32;
/// Longest metric name stored; longer names are skipped, not cut (a cut name would merge two).
pub const MAX_METRIC_NAME: usize = 64;
/// A status stamped further than this from the server's clock is stored at the server's time:
/// a device with a wrong clock must not put samples where the rollup has already passed.
pub const MAX_CLOCK_SKEW_MS: i64 = MINUTE_MS;
/// Buckets before the newest rolled-up one that each pass computes again, for samples that
/// arrive late (a batch flushed after its minute ended).
pub const REROLL_MS: i64 = 5 * MINUTE_MS;
/// Rows per multi-row insert: 4 columns each stays far below both backends' parameter limits.
const INSERT_CHUNK: usize = 500;
/// Source range per rollup statement, so catching up after a stop is many short statements.
const ROLLUP_CHUNK_MINUTES_MS: i64 = HOUR_MS;
const ROLLUP_CHUNK_HOURS_MS: i64 = DAY_MS;

#[derive(Debug, Clone, PartialEq, Insertable, Queryable, Selectable)]
#[diesel(table_name = metric_samples)]
pub struct SampleRow {
    pub device_id: String,
    pub metric: String,
    pub ts: i64,
    pub value: f64,
}

/// The numeric metrics of a status frame as sample rows: finite numbers at the top level,
/// at most `MAX_METRICS_PER_STATUS`, names of at most `MAX_METRIC_NAME` bytes. Text, flags and
/// lists (version, connection mode, templates) are not series.
pub fn samples_of(
    device_id: &str,
    ts: DateTime<Utc>,
    now: DateTime<Utc>,
    metrics: &serde_json::Value,
) -> Vec<SampleRow> {
    let Some(map) = metrics.as_object() else {
        return Vec::new();
    };
    let stamped = ts.timestamp_millis();
    let now_ms = now.timestamp_millis();
    let ts = if (stamped - now_ms).abs() > MAX_CLOCK_SKEW_MS {
        now_ms
    } else {
        stamped
    };
    map.iter()
        .filter(|(name, _)| !name.is_empty() && name.len() <= MAX_METRIC_NAME)
        .filter_map(|(name, value)| match value {
            serde_json::Value::Number(n) => n.as_f64().filter(|v| v.is_finite()).map(|v| (name, v)),
            _ => None,
        })
        .take(MAX_METRICS_PER_STATUS)
        .map(|(name, value)| SampleRow {
            device_id: device_id.to_owned(),
            metric: name.clone(),
            ts,
            value,
        })
        .collect()
}

/// Inserts samples; one already stored (the same device, metric and time: a status sent
/// twice) is kept as it is. SQLite has no multi-row insert that skips conflicts in diesel, so
/// each chunk goes in whole inside a savepoint, and only a chunk that collides is retried
/// row by row, skipping the rows already there.
pub fn insert_samples(conn: &mut DbConnection, rows: &[SampleRow]) -> QueryResult<usize> {
    let mut written = 0;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let whole = conn.transaction(|conn| {
            crate::on_backend!(conn, |c| diesel::insert_into(metric_samples::table)
                .values(chunk.iter().collect::<Vec<_>>())
                .execute(c))
        });
        match whole {
            Ok(n) => written += n,
            Err(_) => {
                for row in chunk {
                    written +=
                        crate::on_backend!(conn, |c| diesel::insert_into(metric_samples::table)
                            .values(row)
                            .on_conflict_do_nothing()
                            .execute(c))?;
                }
            }
        }
    }
    Ok(written)
}

fn floor_to(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit
}

/// What one rollup pass wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupReport {
    pub minute_rows: usize,
    pub hour_rows: usize,
}

/// Rolls raw samples up into minutes, from a little before the newest minute stored up to the
/// minute that holds `now` (stored partial, completed by later passes), and those minutes'
/// hours up from their minutes.
pub fn rollup(conn: &mut DbConnection, now: DateTime<Utc>) -> StoreResult<RollupReport> {
    let now = now.timestamp_millis();
    let mut report = RollupReport::default();
    let newest_minute: Option<i64> = metric_minutes::table
        .select(diesel::dsl::max(metric_minutes::bucket))
        .first(conn)?;
    let newest_minute = newest_minute.map(|b| b.min(floor_to(now, MINUTE_MS)));
    let oldest_sample: Option<i64> = metric_samples::table
        .filter(metric_samples::ts.ge(newest_minute.map_or(i64::MIN, |b| b - REROLL_MS)))
        .select(diesel::dsl::min(metric_samples::ts))
        .first(conn)?;
    let mut touched = None;
    if let Some(first) = oldest_sample {
        let end = floor_to(now, MINUTE_MS) + MINUTE_MS;
        let mut from = floor_to(first, MINUTE_MS);
        touched = Some(floor_to(from, HOUR_MS));
        while from < end {
            let to = (from + ROLLUP_CHUNK_MINUTES_MS).min(end);
            report.minute_rows += roll_minutes(conn, from, to)?;
            from = to;
        }
    }
    // Hours change only where minutes did: the hours of the minutes just recomputed; while no
    // hour is stored yet (a first pass over kept minutes), from the oldest minute.
    let any_hour: Option<i64> = metric_hours::table
        .select(diesel::dsl::max(metric_hours::bucket))
        .first(conn)?;
    let first_hour = match any_hour {
        Some(_) => touched,
        None => metric_minutes::table
            .select(diesel::dsl::min(metric_minutes::bucket))
            .first::<Option<i64>>(conn)?
            .map(|b| floor_to(b, HOUR_MS)),
    };
    if let Some(mut from) = first_hour {
        let end = floor_to(now, HOUR_MS) + HOUR_MS;
        while from < end {
            let to = (from + ROLLUP_CHUNK_HOURS_MS).min(end);
            report.hour_rows += roll_hours(conn, from, to)?;
            from = to;
        }
    }
    Ok(report)
}

/// Recomputes the minute buckets of `[from, to)` (both on minute edges) from raw samples. The
/// SQL has no parameters: the bounds are integers written into it, so the same text runs on
/// both backends (their placeholders differ).
fn roll_minutes(conn: &mut DbConnection, from: i64, to: i64) -> StoreResult<usize> {
    let metrics = format!(
        "INSERT INTO metric_minutes \
         (device_id, metric, bucket, min_value, max_value, sum_value, sample_count) \
         SELECT device_id, metric, ts / {MINUTE_MS} * {MINUTE_MS}, \
         MIN(value), MAX(value), SUM(value), COUNT(*) \
         FROM metric_samples WHERE ts >= {from} AND ts < {to} \
         GROUP BY device_id, metric, ts / {MINUTE_MS} * {MINUTE_MS} \
         ON CONFLICT (device_id, metric, bucket) DO UPDATE SET \
         min_value = excluded.min_value, max_value = excluded.max_value, \
         sum_value = excluded.sum_value, sample_count = excluded.sample_count"
    );
    let online = format!(
        "INSERT INTO online_minutes (bucket, devices) \
         SELECT ts / {MINUTE_MS} * {MINUTE_MS}, COUNT(DISTINCT device_id) \
         FROM metric_samples WHERE ts >= {from} AND ts < {to} \
         GROUP BY ts / {MINUTE_MS} * {MINUTE_MS} \
         ON CONFLICT (bucket) DO UPDATE SET devices = excluded.devices"
    );
    crate::store::db::write_transaction(conn, |conn| {
        let n = diesel::sql_query(metrics).execute(conn)?;
        diesel::sql_query(online).execute(conn)?;
        StoreResult::Ok(n)
    })
}

/// Recomputes the hour buckets of `[from, to)` (both on hour edges) from minute buckets.
fn roll_hours(conn: &mut DbConnection, from: i64, to: i64) -> StoreResult<usize> {
    let metrics = format!(
        "INSERT INTO metric_hours \
         (device_id, metric, bucket, min_value, max_value, sum_value, sample_count) \
         SELECT device_id, metric, bucket / {HOUR_MS} * {HOUR_MS}, \
         MIN(min_value), MAX(max_value), SUM(sum_value), SUM(sample_count) \
         FROM metric_minutes WHERE bucket >= {from} AND bucket < {to} \
         GROUP BY device_id, metric, bucket / {HOUR_MS} * {HOUR_MS} \
         ON CONFLICT (device_id, metric, bucket) DO UPDATE SET \
         min_value = excluded.min_value, max_value = excluded.max_value, \
         sum_value = excluded.sum_value, sample_count = excluded.sample_count"
    );
    let online = format!(
        "INSERT INTO online_hours (bucket, devices) \
         SELECT bucket / {HOUR_MS} * {HOUR_MS}, COUNT(DISTINCT device_id) \
         FROM metric_minutes WHERE bucket >= {from} AND bucket < {to} \
         GROUP BY bucket / {HOUR_MS} * {HOUR_MS} \
         ON CONFLICT (bucket) DO UPDATE SET devices = excluded.devices"
    );
    crate::store::db::write_transaction(conn, |conn| {
        let n = diesel::sql_query(metrics).execute(conn)?;
        diesel::sql_query(online).execute(conn)?;
        StoreResult::Ok(n)
    })
}

/// How long each resolution is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw_ms: i64,
    pub minutes_ms: i64,
    pub hours_ms: i64,
}

impl Retention {
    pub fn new(raw_hours: u32, minute_days: u32, hour_days: u32) -> Self {
        Retention {
            raw_ms: i64::from(raw_hours) * HOUR_MS,
            minutes_ms: i64::from(minute_days) * DAY_MS,
            hours_ms: i64::from(hour_days) * DAY_MS,
        }
    }
}

/// Deletes raw samples stamped before `now - raw`, and minute and hour buckets that start
/// before their cutoffs; what is exactly at a cutoff stays. Deletes go a minute (raw) or an
/// hour (buckets) of rows per statement, so a large backlog never holds a long lock.
pub fn prune(conn: &mut DbConnection, now: DateTime<Utc>, keep: Retention) -> StoreResult<usize> {
    let now = now.timestamp_millis();
    let mut total = 0;
    let cutoff = now - keep.raw_ms;
    loop {
        let oldest: Option<i64> = metric_samples::table
            .select(diesel::dsl::min(metric_samples::ts))
            .first(conn)?;
        let Some(oldest) = oldest.filter(|t| *t < cutoff) else {
            break;
        };
        let upto = (floor_to(oldest, MINUTE_MS) + MINUTE_MS).min(cutoff);
        total += diesel::delete(metric_samples::table.filter(metric_samples::ts.lt(upto)))
            .execute(conn)?;
    }
    macro_rules! prune_buckets {
        ($table:ident, $cutoff:expr) => {{
            let cutoff = $cutoff;
            loop {
                let oldest: Option<i64> = $table::table
                    .select(diesel::dsl::min($table::bucket))
                    .first(conn)?;
                let Some(oldest) = oldest.filter(|b| *b < cutoff) else {
                    break;
                };
                let upto = (floor_to(oldest, HOUR_MS) + HOUR_MS).min(cutoff);
                total +=
                    diesel::delete($table::table.filter($table::bucket.lt(upto))).execute(conn)?;
            }
        }};
    }
    prune_buckets!(metric_minutes, now - keep.minutes_ms);
    prune_buckets!(online_minutes, now - keep.minutes_ms);
    prune_buckets!(metric_hours, now - keep.hours_ms);
    prune_buckets!(online_hours, now - keep.hours_ms);
    Ok(total)
}

/// Longest range of one chart query: a year of hourly buckets and a margin.
pub const MAX_RANGE_MS: i64 = 400 * DAY_MS;
/// Most points one series may hold.
pub const MAX_POINTS: i64 = 2000;
/// Points a series has when the caller names no step.
pub const DEFAULT_POINTS: i64 = 300;
/// Longest range raw samples are read for; longer ranges read minutes.
pub const MAX_RAW_RANGE_MS: i64 = 6 * HOUR_MS;
/// Most stored rows one answer reads; past it, a coarser resolution is read instead.
pub const MAX_ROWS: i64 = 500_000;
/// Steps a chart is drawn in when none is named, in milliseconds.
const NICE_STEPS_MS: &[i64] = &[
    SECOND_MS,
    5 * SECOND_MS,
    10 * SECOND_MS,
    15 * SECOND_MS,
    30 * SECOND_MS,
    MINUTE_MS,
    2 * MINUTE_MS,
    5 * MINUTE_MS,
    10 * MINUTE_MS,
    15 * MINUTE_MS,
    30 * MINUTE_MS,
    HOUR_MS,
    2 * HOUR_MS,
    3 * HOUR_MS,
    6 * HOUR_MS,
    12 * HOUR_MS,
    DAY_MS,
];

/// A checked chart query: a range, a step that divides time into whole buckets of the
/// resolution it reads, and at most `MAX_POINTS` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub from: i64,
    pub to: i64,
    pub step: i64,
    pub resolution: Resolution,
}

impl Plan {
    /// Picks the resolution for `[from, to)`: raw samples for short ranges with steps under a
    /// minute, minutes while they are kept and the step is under an hour, else hours. A step
    /// finer than the resolution is raised to it, and any step is a whole number of the
    /// resolution's buckets, so each bucket falls into exactly one step.
    pub fn new(
        from: i64,
        to: i64,
        step: Option<i64>,
        now: i64,
        keep: Retention,
        finest: Resolution,
    ) -> StoreResult<Plan> {
        let invalid = |m: &str| StoreError::bad_request(ErrorCode::InvalidParameter, m);
        if from >= to {
            return Err(invalid("from must be before to"));
        }
        let range = to - from;
        if range > MAX_RANGE_MS {
            return Err(StoreError::bad_request(
                ErrorCode::RangeTooLarge,
                "a chart spans at most 400 days",
            ));
        }
        let step = match step {
            Some(s) if s <= 0 => return Err(invalid("step must be a positive number of seconds")),
            Some(s) => s,
            None => {
                let want = range / DEFAULT_POINTS;
                *NICE_STEPS_MS
                    .iter()
                    .find(|s| **s >= want)
                    .unwrap_or(&DAY_MS)
            }
        };
        let resolution = if finest == Resolution::Raw
            && step < MINUTE_MS
            && range <= MAX_RAW_RANGE_MS
            && from >= now - keep.raw_ms
        {
            Resolution::Raw
        } else if finest != Resolution::Hour && step < HOUR_MS && from >= now - keep.minutes_ms {
            Resolution::Minute
        } else {
            Resolution::Hour
        };
        let unit = match resolution {
            Resolution::Raw => SECOND_MS,
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
        };
        let step = ((step + unit - 1) / unit).max(1) * unit;
        if range / step > MAX_POINTS {
            return Err(StoreError::bad_request(
                ErrorCode::RangeTooLarge,
                format!("at most {MAX_POINTS} points per series: choose a larger step"),
            ));
        }
        Ok(Plan {
            from,
            to,
            step,
            resolution,
        })
    }

    /// The start of the step that holds `ms`; steps are aligned to multiples of the step.
    pub fn step_of(&self, ms: i64) -> i64 {
        floor_to(ms, self.step)
    }
}

/// min, max, sum and count of the values that fell into one step.
#[derive(Debug, Clone, Copy)]
struct Acc {
    min: f64,
    max: f64,
    sum: f64,
    count: i64,
}

impl Acc {
    fn add(&mut self, min: f64, max: f64, sum: f64, count: i64) {
        self.min = self.min.min(min);
        self.max = self.max.max(max);
        self.sum += sum;
        self.count += count;
    }
}

type Bucketed = (String, i64, f64, f64, f64, i64);

/// A device's metrics over the plan's range, one series per metric (all, or the one named).
pub fn device_series(
    conn: &mut DbConnection,
    device_id: &str,
    metric: Option<&str>,
    plan: &mut Plan,
) -> StoreResult<Vec<MetricSeries>> {
    crate::store::devices::require(conn, device_id)?;
    loop {
        let rows = match read_rows(conn, device_id, metric, plan)? {
            Some(rows) => rows,
            None => {
                // Too many stored rows for this resolution: read the next coarser one.
                let coarser = match plan.resolution {
                    Resolution::Raw => Resolution::Minute,
                    Resolution::Minute => Resolution::Hour,
                    Resolution::Hour => {
                        return Err(StoreError::bad_request(
                            ErrorCode::RangeTooLarge,
                            "too many samples in this range: choose a shorter one",
                        ))
                    }
                };
                let unit = if coarser == Resolution::Minute {
                    MINUTE_MS
                } else {
                    HOUR_MS
                };
                plan.resolution = coarser;
                plan.step = ((plan.step + unit - 1) / unit).max(1) * unit;
                continue;
            }
        };
        return Ok(to_series(plan, rows));
    }
}

/// The stored rows of the plan's resolution, or `None` when there are more than `MAX_ROWS`.
fn read_rows(
    conn: &mut DbConnection,
    device_id: &str,
    metric: Option<&str>,
    plan: &Plan,
) -> StoreResult<Option<Vec<Bucketed>>> {
    let device_id = device_id.to_owned();
    let rows: Vec<Bucketed> = match plan.resolution {
        Resolution::Raw => {
            let mut q = metric_samples::table
                .filter(metric_samples::device_id.eq(device_id))
                .filter(metric_samples::ts.ge(plan.from))
                .filter(metric_samples::ts.lt(plan.to))
                .into_boxed();
            if let Some(m) = metric {
                q = q.filter(metric_samples::metric.eq(m.to_owned()));
            }
            q.select((
                metric_samples::metric,
                metric_samples::ts,
                metric_samples::value,
            ))
            .order((metric_samples::metric, metric_samples::ts))
            .limit(MAX_ROWS + 1)
            .load::<(String, i64, f64)>(conn)?
            .into_iter()
            .map(|(m, ts, v)| (m, ts, v, v, v, 1))
            .collect()
        }
        Resolution::Minute => {
            let mut q = metric_minutes::table
                .filter(metric_minutes::device_id.eq(device_id))
                .filter(metric_minutes::bucket.ge(floor_to(plan.from, MINUTE_MS)))
                .filter(metric_minutes::bucket.lt(plan.to))
                .into_boxed();
            if let Some(m) = metric {
                q = q.filter(metric_minutes::metric.eq(m.to_owned()));
            }
            q.select((
                metric_minutes::metric,
                metric_minutes::bucket,
                metric_minutes::min_value,
                metric_minutes::max_value,
                metric_minutes::sum_value,
                metric_minutes::sample_count,
            ))
            .order((metric_minutes::metric, metric_minutes::bucket))
            .limit(MAX_ROWS + 1)
            .load(conn)?
        }
        Resolution::Hour => {
            let mut q = metric_hours::table
                .filter(metric_hours::device_id.eq(device_id))
                .filter(metric_hours::bucket.ge(floor_to(plan.from, HOUR_MS)))
                .filter(metric_hours::bucket.lt(plan.to))
                .into_boxed();
            if let Some(m) = metric {
                q = q.filter(metric_hours::metric.eq(m.to_owned()));
            }
            q.select((
                metric_hours::metric,
                metric_hours::bucket,
                metric_hours::min_value,
                metric_hours::max_value,
                metric_hours::sum_value,
                metric_hours::sample_count,
            ))
            .order((metric_hours::metric, metric_hours::bucket))
            .limit(MAX_ROWS + 1)
            .load(conn)?
        }
    };
    Ok((rows.len() as i64 <= MAX_ROWS).then_some(rows))
}

/// Sums rows (ordered by metric, then time) up into the plan's steps.
fn to_series(plan: &Plan, rows: Vec<Bucketed>) -> Vec<MetricSeries> {
    let mut out: Vec<MetricSeries> = Vec::new();
    let mut current: Option<(String, i64, Acc)> = None;
    let emit = |out: &mut Vec<MetricSeries>, (metric, step, acc): (String, i64, Acc)| {
        let point = MetricPoint {
            ts: DateTime::from_timestamp_millis(step).unwrap_or_default(),
            min: acc.min,
            avg: acc.sum / acc.count.max(1) as f64,
            max: acc.max,
            count: acc.count,
        };
        match out.last_mut() {
            Some(series) if series.metric == metric => series.points.push(point),
            _ => out.push(MetricSeries {
                metric,
                points: vec![point],
            }),
        }
    };
    for (metric, ts, min, max, sum, count) in rows {
        let step = plan.step_of(ts);
        match &mut current {
            Some((m, s, acc)) if *m == metric && *s == step => acc.add(min, max, sum, count),
            _ => {
                if let Some(done) = current.take() {
                    emit(&mut out, done);
                }
                current = Some((
                    metric,
                    step,
                    Acc {
                        min,
                        max,
                        sum,
                        count,
                    },
                ));
            }
        }
    }
    if let Some(done) = current.take() {
        emit(&mut out, done);
    }
    out
}

/// Devices online in each step of the plan (minute or hour resolution): the most that sent a
/// status in any one bucket of the step. Steps with none are absent.
pub fn online_series(conn: &mut DbConnection, plan: &Plan) -> StoreResult<Vec<(i64, i64)>> {
    let rows: Vec<(i64, i64)> = match plan.resolution {
        Resolution::Hour => online_hours::table
            .filter(online_hours::bucket.ge(floor_to(plan.from, HOUR_MS)))
            .filter(online_hours::bucket.lt(plan.to))
            .order(online_hours::bucket)
            .select((online_hours::bucket, online_hours::devices))
            .load(conn)?,
        _ => online_minutes::table
            .filter(online_minutes::bucket.ge(floor_to(plan.from, MINUTE_MS)))
            .filter(online_minutes::bucket.lt(plan.to))
            .order(online_minutes::bucket)
            .select((online_minutes::bucket, online_minutes::devices))
            .load(conn)?,
    };
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (bucket, devices) in rows {
        let step = plan.step_of(bucket);
        match out.last_mut() {
            Some((s, n)) if *s == step => *n = (*n).max(devices),
            _ => out.push((step, devices)),
        }
    }
    Ok(out)
}
