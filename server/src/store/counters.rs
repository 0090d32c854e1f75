//! Counts over time from rows stored for other reasons: production throughput (scans, prints,
//! batches, pallets per line and company) and the fleet summary (online devices, commands by
//! outcome, deployment targets by state).
//!
//! The sources are the views of the charts migration, which give every row its minute in
//! epoch milliseconds (the one expression each dialect writes its own way). Steps are whole
//! minutes, so the step of a row is `minute / step * step`, the same text on both backends;
//! it is written into the query as an integer, and every value from a request is bound.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::dsl::{count_star, sql};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use protocol::charts::{FleetPoint, FleetSummary, ThroughputPoint, ThroughputSeries};
use schema::schema::{
    command_minutes, deployment_device_minutes, firmware_deployments, production_events,
};

use crate::store::db::DbConnection;
use crate::store::error::{StoreError, StoreResult};
use crate::store::metrics::{online_series, Plan, MAX_ROWS};

fn naive(ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Every step of the plan, oldest first.
fn steps(plan: &Plan) -> impl Iterator<Item = i64> + '_ {
    let first = plan.step_of(plan.from);
    (0..)
        .map(move |i| first + i * plan.step)
        .take_while(|s| *s < plan.to)
}

type Counted = ((Option<String>, Option<String>, Option<String>, i64), i64);

/// Scans (valid and invalid), prints, batches and pallets per step, one series per production
/// line and company (a device's line and company as stored now; a batch's or pallet's company
/// as its record names it), narrowed to one line or company when given. Every step of the
/// range is present, zeros included, so a stop shows as a drop to zero.
pub fn throughput(
    conn: &mut DbConnection,
    line: Option<&str>,
    company: Option<&str>,
    plan: &Plan,
) -> StoreResult<Vec<ThroughputSeries>> {
    let columns = format!(
        "production_line_id, company_id, kind, minute / {step} * {step}",
        step = plan.step
    );
    // A filter not given is `… OR true`, so the query has one type (a boxed query cannot be
    // grouped by an SQL fragment).
    let rows: Vec<Counted> = production_events::table
        .filter(production_events::ts.ge(naive(plan.from)))
        .filter(production_events::ts.lt(naive(plan.to)))
        .filter(
            production_events::production_line_id
                .eq(line.unwrap_or_default().to_owned())
                .or(line.is_none().into_sql::<Bool>().nullable()),
        )
        .filter(
            production_events::company_id
                .eq(company.unwrap_or_default().to_owned())
                .or(company.is_none().into_sql::<Bool>().nullable()),
        )
        .group_by(sql::<BigInt>(&columns))
        .select((
            sql::<(Nullable<Text>, Nullable<Text>, Nullable<Text>, BigInt)>(&columns),
            count_star(),
        ))
        .limit(MAX_ROWS + 1)
        .load(conn)?;
    if rows.len() as i64 > MAX_ROWS {
        return Err(too_many());
    }
    let mut by_series: BTreeMap<(Option<String>, Option<String>), BTreeMap<i64, ThroughputPoint>> =
        BTreeMap::new();
    for ((line, company, kind, step), n) in rows {
        let points = by_series.entry((line, company)).or_insert_with(|| {
            steps(plan)
                .map(|s| {
                    (
                        s,
                        ThroughputPoint {
                            ts: utc(s),
                            ..ThroughputPoint::default()
                        },
                    )
                })
                .collect()
        });
        let Some(point) = points.get_mut(&step) else {
            continue;
        };
        match kind.as_deref() {
            Some("scan_valid") => point.scans_valid += n,
            Some("scan_invalid") => point.scans_invalid += n,
            Some("print") => point.prints += n,
            Some("batch") => point.batches += n,
            Some("pallet") => point.pallets += n,
            _ => {}
        }
    }
    Ok(by_series
        .into_iter()
        .map(
            |((production_line_id, company_id), points)| ThroughputSeries {
                production_line_id,
                company_id,
                points: points.into_values().collect(),
            },
        )
        .collect())
}

fn too_many() -> StoreError {
    StoreError::bad_request(
        protocol::rest::ErrorCode::RangeTooLarge,
        "too many rows in this range: choose a shorter range or a larger step",
    )
}

type ByState = Vec<((Option<String>, i64), i64)>;

/// Online devices, commands by the state they are in now (counted in the step they were
/// created in) and deployment targets by state (counted in the step of their last change),
/// for every step of the plan; and the deployments by state now.
pub fn fleet_summary(conn: &mut DbConnection, plan: &Plan) -> StoreResult<FleetSummary> {
    let columns = format!("status, minute / {step} * {step}", step = plan.step);
    let commands: ByState = command_minutes::table
        .filter(command_minutes::ts.ge(naive(plan.from)))
        .filter(command_minutes::ts.lt(naive(plan.to)))
        .group_by(sql::<BigInt>(&columns))
        .select((sql::<(Nullable<Text>, BigInt)>(&columns), count_star()))
        .limit(MAX_ROWS + 1)
        .load(conn)?;
    let targets: ByState = deployment_device_minutes::table
        .filter(deployment_device_minutes::ts.ge(naive(plan.from)))
        .filter(deployment_device_minutes::ts.lt(naive(plan.to)))
        .group_by(sql::<BigInt>(&columns))
        .select((sql::<(Nullable<Text>, BigInt)>(&columns), count_star()))
        .limit(MAX_ROWS + 1)
        .load(conn)?;
    if commands.len() as i64 > MAX_ROWS || targets.len() as i64 > MAX_ROWS {
        return Err(too_many());
    }
    let online = online_series(conn, plan)?;
    let mut points: BTreeMap<i64, FleetPoint> = steps(plan)
        .map(|s| {
            (
                s,
                FleetPoint {
                    ts: utc(s),
                    online: 0,
                    commands: BTreeMap::new(),
                    deployment_devices: BTreeMap::new(),
                },
            )
        })
        .collect();
    for (step, devices) in online {
        if let Some(p) = points.get_mut(&step) {
            p.online = devices;
        }
    }
    for ((status, step), n) in commands {
        if let Some(p) = points.get_mut(&step) {
            *p.commands.entry(status.unwrap_or_default()).or_default() += n;
        }
    }
    for ((status, step), n) in targets {
        if let Some(p) = points.get_mut(&step) {
            *p.deployment_devices
                .entry(status.unwrap_or_default())
                .or_default() += n;
        }
    }
    let deployments: Vec<(String, i64)> = firmware_deployments::table
        .group_by(firmware_deployments::status)
        .select((firmware_deployments::status, count_star()))
        .load(conn)?;
    Ok(FleetSummary {
        from: utc(plan.from),
        to: utc(plan.to),
        step: plan.step / 1000,
        resolution: plan.resolution,
        points: points.into_values().collect(),
        deployments: deployments.into_iter().collect(),
    })
}
