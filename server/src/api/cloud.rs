//! The cloud drain's routes: its status, the dead letters, requeueing them and the target.

use std::collections::BTreeMap;

use crate::actors::cloud_sync::*;
use crate::api::audit::{audited, by_user};
use crate::api::paging::Paging;
use crate::auth::{Authorized, ManageDevices, ManageUsers, ViewDevices};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::audit;
use crate::store::outbox::*;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{NaiveDateTime, Utc};
use protocol::rest::Envelope;
use serde::{Deserialize, Serialize};

/// `GET /api/v1/sync/status`.
pub async fn status(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    let rows: Vec<(String, String, i64)> =
        state.db.run(|conn| Ok(counts_by_company(conn)?)).await?;
    let oldest: Vec<(String, Option<NaiveDateTime>)> = state
        .db
        .run(|conn| Ok(oldest_pending_by_company(conn)?))
        .await?;
    let now = Utc::now();
    let (configured, per_company) = {
        let s = state
            .cloud_stats
            .lock()
            .map_err(|_| ApiError::internal("stats lock"))?;
        (s.configured, s.per_company.clone())
    };
    let mut companies: BTreeMap<String, CompanyStatus> = BTreeMap::new();
    for (company, st, n) in rows {
        let c = companies
            .entry(company.clone())
            .or_insert_with(|| CompanyStatus {
                pending: 0,
                sent: 0,
                dead: 0,
                oldest_pending_age_secs: None,
                stats: per_company.get(&company).cloned().unwrap_or_default(),
            });
        match st.as_str() {
            STATE_PENDING => c.pending += n,
            STATE_SENT => c.sent += n,
            STATE_DEAD => c.dead += n,
            _ => {}
        }
    }
    for (company, ts) in oldest {
        if let (Some(c), Some(ts)) = (companies.get_mut(&company), ts) {
            c.oldest_pending_age_secs = Some((now - ts.and_utc()).num_seconds().max(0));
        }
    }
    let total = |f: fn(&CompanyStatus) -> i64| companies.values().map(f).sum::<i64>();
    let body = serde_json::json!({
        "cloudConfigured": configured,
        "pending": total(|c| c.pending),
        "sent": total(|c| c.sent),
        "dead": total(|c| c.dead),
        "oldestPendingAgeSecs": companies.values().filter_map(|c| c.oldest_pending_age_secs).max(),
        "companies": companies,
    });
    Ok(HttpResponse::Ok().json(Envelope::ok(body)))
}

/// `GET /api/v1/sync/dead-letters`.
pub async fn dead_letters(
    _user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = paging.checked()?;
    let page = state
        .db
        .run(move |conn| Ok(dead_letters_page(conn, limit, offset)?))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequeueRequest {
    /// Absent: every dead letter.
    pub ids: Option<Vec<String>>,
}

/// `POST /api/v1/sync/dead-letters/requeue`: back to PENDING with a fresh attempt count.
pub async fn requeue(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RequeueRequest>,
) -> ApiResult<HttpResponse> {
    let ids = body.into_inner().ids;
    if ids
        .as_ref()
        .is_some_and(|ids| ids.is_empty() || ids.len() > 10_000)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "ids must list 1 to 10000 records",
        ));
    }
    let entry = by_user(&user, &req, "sync.requeue")
        .params(serde_json::json!({"count": ids.as_ref().map(Vec::len)}));
    let n = audited(&state.db, entry, move |conn| {
        Ok(requeue_dead(conn, ids.as_deref())?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"requeued": n}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudUpdate {
    pub url: Option<String>,
    pub token: Option<String>,
}

/// `PUT /api/v1/sync/cloud`: a new cloud URL and/or token, in effect at once (ADMIN). The
/// token is never echoed or audited.
pub async fn update_cloud(
    user: Authorized<ManageUsers>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CloudUpdate>,
) -> ApiResult<HttpResponse> {
    let update = body.into_inner();
    if let Some(url) = &update.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                "url must be an http(s) URL",
            ));
        }
    }
    if update
        .token
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > 8192)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "token must be 1-8192 characters",
        ));
    }
    let target = {
        let mut current = state
            .cloud_target
            .lock()
            .map_err(|_| ApiError::internal("target lock"))?;
        let url = update
            .url
            .clone()
            .or_else(|| current.as_ref().map(|t| t.url.clone()));
        let token = update
            .token
            .clone()
            .or_else(|| current.as_ref().map(|t| t.token.clone()));
        let target = match (url, token) {
            (Some(url), Some(token)) => Some(CloudTarget { url, token }),
            _ => {
                return Err(ApiError::unprocessable(
                    ErrorCode::InvalidParameter,
                    "both a cloud url and a token are needed",
                ))
            }
        };
        *current = target.clone();
        target
    };
    let entry = by_user(&user, &req, "sync.cloud.update")
        .params(serde_json::json!({"url": update.url, "tokenChanged": update.token.is_some()}));
    state
        .db
        .run(move |conn| Ok(audit::record(conn, &entry)?))
        .await?;
    state.cloud.do_send(UpdateTarget(target));
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"updated": true}))))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CompanyStatus {
    pending: i64,
    sent: i64,
    dead: i64,
    oldest_pending_age_secs: Option<i64>,
    #[serde(flatten)]
    stats: CompanyStats,
}
