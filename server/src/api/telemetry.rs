//! `GET /api/v1/devices/{id}/logs` and `/events`: a device's telemetry, newest first.

use crate::api::devices;
use crate::auth::{Authorized, ViewDevices};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::store::telemetry::*;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{DeviceEventRecord, DeviceLogLine, Envelope, Page};
use schema::schema::{device_events, device_logs};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub level: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// `GET /api/v1/devices/{id}/logs`: newest first.
pub async fn device_logs(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<LogQuery>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let q = query.into_inner();
    let (limit, offset) = devices::paging(q.limit, q.offset)?;
    let level = q.level.map(|l| l.to_uppercase());
    let page = state
        .db
        .run(move |conn| {
            crate::store::devices::require(conn, &device_id)?;
            let filtered = || {
                let mut query = device_logs::table
                    .filter(device_logs::device_id.eq(device_id.clone()))
                    .into_boxed();
                if let Some(level) = &level {
                    query = query.filter(device_logs::level.eq(level.clone()));
                }
                if let Some(since) = q.since {
                    query = query.filter(device_logs::ts.ge(since.naive_utc()));
                }
                if let Some(until) = q.until {
                    query = query.filter(device_logs::ts.lt(until.naive_utc()));
                }
                query
            };
            let total = filtered().count().get_result(conn)?;
            let rows: Vec<LogRow> = filtered()
                .order((device_logs::ts.desc(), device_logs::id.desc()))
                .limit(limit)
                .offset(offset)
                .select(LogRow::as_select())
                .load(conn)?;
            let items = rows
                .into_iter()
                .map(|r| DeviceLogLine {
                    id: r.id,
                    device_id: r.device_id,
                    ts: r.ts.and_utc(),
                    level: r.level,
                    line: r.line,
                })
                .collect();
            Ok(Page { items, total })
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// `GET /api/v1/devices/{id}/events`: scans, prints and alerts, newest first.
pub async fn device_events(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<EventQuery>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let q = query.into_inner();
    let (limit, offset) = devices::paging(q.limit, q.offset)?;
    let page = state
        .db
        .run(move |conn| {
            crate::store::devices::require(conn, &device_id)?;
            let filtered = || {
                let mut query = device_events::table
                    .filter(device_events::device_id.eq(device_id.clone()))
                    .into_boxed();
                if let Some(t) = &q.event_type {
                    query = query.filter(device_events::event_type.eq(t.clone()));
                }
                if let Some(since) = q.since {
                    query = query.filter(device_events::ts.ge(since.naive_utc()));
                }
                if let Some(until) = q.until {
                    query = query.filter(device_events::ts.lt(until.naive_utc()));
                }
                query
            };
            let total = filtered().count().get_result(conn)?;
            let rows: Vec<EventRow> = filtered()
                .order((device_events::ts.desc(), device_events::id.desc()))
                .limit(limit)
                .offset(offset)
                .select(EventRow::as_select())
                .load(conn)?;
            let items = rows
                .into_iter()
                .map(|r| DeviceEventRecord {
                    id: r.id,
                    device_id: r.device_id,
                    ts: r.ts.and_utc(),
                    event_type: r.event_type,
                    payload: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::Null),
                })
                .collect();
            Ok(Page { items, total })
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}
