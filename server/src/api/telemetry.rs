//! `GET /api/v1/devices/{id}/logs` and `/events`: a device's telemetry, newest first.

use crate::api::paging::Paging;
use crate::auth::{Authorized, ViewDevices};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::store::telemetry::*;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use protocol::rest::Envelope;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
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
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let q = query.into_inner();
    let (limit, offset) = paging.checked()?;
    let window = Window {
        kind: q.level.map(|l| l.to_uppercase()),
        since: q.since,
        until: q.until,
    };
    let page = state
        .db
        .run(move |conn| Ok(logs_page(conn, &device_id, &window, limit, offset)?))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventQuery {
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
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let q = query.into_inner();
    let (limit, offset) = paging.checked()?;
    let window = Window {
        kind: q.event_type,
        since: q.since,
        until: q.until,
    };
    let page = state
        .db
        .run(move |conn| Ok(events_page(conn, &device_id, &window, limit, offset)?))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}
