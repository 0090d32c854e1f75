//! `GET /metrics`: the Prometheus text, for a scraper that holds the metrics token.
//!
//! The route is off (403) until `metrics_token` is set, and then answers only a bearer that
//! matches it: the numbers describe the fleet and the server's load, which is worth keeping
//! from whoever else shares the plant network, and a token is what Prometheus's
//! `authorization` setting sends with no proxy in between.

use actix_web::{web, HttpRequest, HttpResponse};
use protocol::firmware::DeploymentStatus;

use crate::auth;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::metrics;
use crate::state::AppState;
use crate::store::{deployments, outbox};

/// Every deployment state, so a state no deployment is in reads 0 rather than vanishing.
const DEPLOYMENT_STATES: [DeploymentStatus; 4] = [
    DeploymentStatus::Running,
    DeploymentStatus::Paused,
    DeploymentStatus::Cancelled,
    DeploymentStatus::Completed,
];

/// `GET /metrics`. 403 while no metrics token is configured; 401 for a missing or wrong
/// bearer. The gauges that mirror the database are read here, in one database job, so they
/// cost nothing between scrapes.
pub async fn scrape(state: web::Data<AppState>, req: HttpRequest) -> ApiResult<HttpResponse> {
    let Some(expected) = state.config.metrics_token.as_deref() else {
        return Err(ApiError::forbidden(
            "metrics are disabled: no metrics token is configured",
        ));
    };
    let Some(given) = auth::bearer_token(&req) else {
        return Err(ApiError::unauthorized(
            ErrorCode::Unauthorized,
            "the metrics token is required as a bearer token",
        ));
    };
    if !auth::secrets_equal(given, expected) {
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidToken,
            "wrong metrics token",
        ));
    }
    let (queue, by_status) = state
        .db
        .run(|conn| {
            Ok((
                outbox::counts_by_state(conn)?,
                deployments::counts_by_status(conn)?,
            ))
        })
        .await?;
    let count = |rows: &[(String, i64)], name: &str| {
        rows.iter()
            .filter(|(s, _)| s == name)
            .map(|(_, n)| n)
            .sum::<i64>()
    };
    metrics::set_cloud_records(
        count(&queue, outbox::STATE_PENDING),
        count(&queue, outbox::STATE_DEAD),
    );
    for status in DEPLOYMENT_STATES {
        metrics::set_deployments(status.as_str(), count(&by_status, status.as_str()));
    }
    metrics::set_dashboard_sockets(state.dashboards.open_count());
    let (connections, idle) = state.db.pool_state();
    metrics::set_db_pool(connections, idle);
    Ok(HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render()))
}
