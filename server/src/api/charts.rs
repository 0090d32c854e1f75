//! The chart routes: `GET /api/v1/devices/{id}/metrics`, `/api/v1/production/throughput` and
//! `/api/v1/fleet/summary`. Each takes `from` and `to` (RFC 3339; default: the last 24 hours)
//! and `step` (seconds; default: about 300 points), and answers the REST envelope, or CSV when
//! the request accepts `text/csv`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use protocol::charts::{DeviceMetrics, FleetSummary, Resolution, Throughput};
use protocol::rest::Envelope;
use serde::Deserialize;

use crate::auth::{Authorized, ViewDevices};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::counters;
use crate::store::metrics::{self, Plan, Retention};

/// The range of a chart query; absent bounds mean the last 24 hours.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct RangeQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Seconds per point.
    pub step: Option<i64>,
    /// One metric instead of all (device metrics only).
    pub metric: Option<String>,
    pub production_line_id: Option<String>,
    pub company_id: Option<String>,
}

impl RangeQuery {
    fn plan(&self, state: &AppState, finest: Resolution) -> ApiResult<Plan> {
        let now = Utc::now();
        let to = self.to.unwrap_or(now);
        let from = self.from.unwrap_or(to - Duration::hours(24));
        let step = match self.step {
            Some(s) => Some(s.checked_mul(1000).ok_or_else(|| {
                ApiError::bad_request(ErrorCode::InvalidParameter, "step is too large")
            })?),
            None => None,
        };
        let keep = Retention::new(
            state.config.metrics_raw_retention_hours,
            state.config.metrics_minute_retention_days,
            state.config.metrics_hour_retention_days,
        );
        Ok(Plan::new(
            from.timestamp_millis(),
            to.timestamp_millis(),
            step,
            now.timestamp_millis(),
            keep,
            finest,
        )?)
    }
}

fn wants_csv(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/csv"))
}

fn csv_answer(name: &str, body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}.csv\""),
        ))
        .body(body)
}

/// `GET /api/v1/devices/{id}/metrics`: each numeric metric as min/avg/max/count per step.
pub async fn device_metrics(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<RangeQuery>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let mut plan = query.plan(&state, Resolution::Raw)?;
    let (id, metric) = (device_id.clone(), query.metric.clone());
    let (series, plan) = state
        .db
        .run(move |conn| {
            let series = metrics::device_series(conn, &id, metric.as_deref(), &mut plan)?;
            Ok((series, plan))
        })
        .await?;
    let answer = DeviceMetrics {
        device_id,
        from: millis(plan.from),
        to: millis(plan.to),
        step: plan.step / 1000,
        resolution: plan.resolution,
        series,
    };
    if wants_csv(&req) {
        return Ok(csv_answer(
            &format!("metrics-{}", answer.device_id),
            metrics_csv(&answer),
        ));
    }
    Ok(HttpResponse::Ok().json(Envelope::ok(answer)))
}

/// `GET /api/v1/production/throughput`: scans, prints, batches and pallets per step and line.
pub async fn throughput(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<RangeQuery>,
) -> ApiResult<HttpResponse> {
    let plan = query.plan(&state, Resolution::Minute)?;
    let (line, company) = (query.production_line_id.clone(), query.company_id.clone());
    let series = state
        .db
        .run(move |conn| {
            Ok(counters::throughput(
                conn,
                line.as_deref(),
                company.as_deref(),
                &plan,
            )?)
        })
        .await?;
    let answer = Throughput {
        from: millis(plan.from),
        to: millis(plan.to),
        step: plan.step / 1000,
        series,
    };
    if wants_csv(&req) {
        return Ok(csv_answer("throughput", throughput_csv(&answer)));
    }
    Ok(HttpResponse::Ok().json(Envelope::ok(answer)))
}

/// `GET /api/v1/fleet/summary`: devices online, commands by outcome, deployments by state.
pub async fn fleet_summary(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<RangeQuery>,
) -> ApiResult<HttpResponse> {
    let plan = query.plan(&state, Resolution::Minute)?;
    let answer = state
        .db
        .run(move |conn| Ok(counters::fleet_summary(conn, &plan)?))
        .await?;
    if wants_csv(&req) {
        return Ok(csv_answer("fleet", fleet_csv(&answer)));
    }
    Ok(HttpResponse::Ok().json(Envelope::ok(answer)))
}

fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// One CSV field: quoted when it holds a separator, quote or line break; text that a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`) gets a leading `'`.
fn field(text: &str) -> String {
    let text = match text.chars().next() {
        Some('=' | '+' | '-' | '@') => format!("'{text}"),
        _ => text.to_owned(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn metrics_csv(answer: &DeviceMetrics) -> String {
    let mut out = String::from("metric,ts,min,avg,max,count\n");
    for series in &answer.series {
        for p in &series.points {
            out.push_str(&format!(
                "{},{},{},{},{},{}\n",
                field(&series.metric),
                ts(&p.ts),
                p.min,
                p.avg,
                p.max,
                p.count
            ));
        }
    }
    out
}

fn throughput_csv(answer: &Throughput) -> String {
    let mut out = String::from(
        "productionLineId,companyId,ts,scansValid,scansInvalid,prints,batches,pallets\n",
    );
    for series in &answer.series {
        let line = field(series.production_line_id.as_deref().unwrap_or(""));
        let company = field(series.company_id.as_deref().unwrap_or(""));
        for p in &series.points {
            out.push_str(&format!(
                "{line},{company},{},{},{},{},{},{}\n",
                ts(&p.ts),
                p.scans_valid,
                p.scans_invalid,
                p.prints,
                p.batches,
                p.pallets
            ));
        }
    }
    out
}

/// One row per step: the online count, then a column per command state and per deployment
/// target state that occurs in the range.
fn fleet_csv(answer: &FleetSummary) -> String {
    let mut commands: Vec<&String> = answer
        .points
        .iter()
        .flat_map(|p| p.commands.keys())
        .collect();
    commands.sort();
    commands.dedup();
    let mut targets: Vec<&String> = answer
        .points
        .iter()
        .flat_map(|p| p.deployment_devices.keys())
        .collect();
    targets.sort();
    targets.dedup();
    let mut out = String::from("ts,online");
    for c in &commands {
        out.push_str(&format!(",{}", field(&format!("commands.{c}"))));
    }
    for t in &targets {
        out.push_str(&format!(",{}", field(&format!("deploymentDevices.{t}"))));
    }
    out.push('\n');
    for p in &answer.points {
        out.push_str(&format!("{},{}", ts(&p.ts), p.online));
        for c in &commands {
            out.push_str(&format!(",{}", p.commands.get(*c).copied().unwrap_or(0)));
        }
        for t in &targets {
            out.push_str(&format!(
                ",{}",
                p.deployment_devices.get(*t).copied().unwrap_or(0)
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(field("line-1"), "line-1");
        assert_eq!(field("-1"), "'-1");
        assert_eq!(field("Line 1"), "Line 1");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=cmd()"), "'=cmd()");
    }
}
