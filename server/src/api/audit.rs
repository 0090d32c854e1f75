//! The audit log's route; `by_user`, the audit row of a signed-in user's request; and
//! `audited`, which runs a privileged change and its audit row (`store::audit::AuditEntry`)
//! in one transaction.

use actix_web::{web, HttpRequest, HttpResponse};

use protocol::rest::Envelope;

use crate::auth::{AuthUser, Authorized, ViewAudit};
use crate::state::AppState;

use crate::error::{ApiError, ApiResult};
use crate::store::audit::*;
use crate::store::db::{Db, DbConnection};

/// The audit row of a signed-in user's request, outcome "success": the user's name and role
/// as actor and the request's peer address as source. It lives here, not in `store::audit`,
/// because the store knows neither users of a request nor HTTP.
pub fn by_user(user: &AuthUser, req: &HttpRequest, action: &str) -> AuditEntry {
    AuditEntry::new(action, "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .source(crate::auth::source_of(req))
}

/// Runs a mutation with its audit row: the row is written first, in the same transaction, so
/// the action never takes effect unrecorded. If the mutation fails, its transaction is rolled
/// back and a row with the failure is written instead.
pub async fn audited<T, F>(db: &Db, entry: AuditEntry, f: F) -> ApiResult<T>
where
    F: FnOnce(&mut DbConnection) -> ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    db.run(move |conn| crate::store::audit::audited(conn, entry, f, |e: &ApiError| e.code))
        .await
}

/// `GET /api/v1/audit`. The log is append-only: no route changes or deletes a row.
pub async fn list_audit(
    _user: Authorized<ViewAudit>,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let (limit, offset) = crate::api::paging::paging(query.limit, query.offset)?;
    let page = state
        .db
        .run(move |conn| Ok(list(conn, &query, limit, offset)?))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}
