//! The REST and WebSocket routes: one file per resource, each handler thin (extract,
//! authorize, call the store or an actor, answer).

pub mod audit;
pub mod boards;
pub mod charts;
pub mod cloud;
pub mod commands;
pub mod dashboard;
pub mod deployments;
pub mod devices;
pub mod firmware;
pub mod groups;
pub mod metrics;
pub mod openapi;
pub mod ota;
pub mod paging;
pub mod sockets;
pub mod sync;
pub mod telemetry;
pub mod ui;
pub mod users;

use std::sync::OnceLock;

use actix_web::dev::ResourceDef;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use protocol::rest::Envelope;

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;

/// Largest JSON body accepted on REST routes.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// Declares the routes once, producing both the actix configuration and `ROUTES`, the list the
/// route-table tests read: a route added here is covered by them at once.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route of the server as (method, path pattern).
        pub const ROUTES: &[(&str, &str)] = &[$((routes!(@name $method), $path)),*];

        /// The handler of each route of `ROUTES`, in the same order, as written here
        /// (`users::login`): the OpenAPI document's operation ids.
        pub const HANDLERS: &[&str] = &[$(stringify!($handler)),*];

        /// Registers every route of the server.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
        }
    };
    (@name get) => { "GET" };
    (@name post) => { "POST" };
    (@name patch) => { "PATCH" };
    (@name put) => { "PUT" };
    (@name delete) => { "DELETE" };
    (@name head) => { "HEAD" };
}

// Order matters where patterns overlap: `/devices/connected` before `/devices/{id}`.
routes! {
    get "/" => ui::index,
    get "/assets/{path:.*}" => ui::asset,
    get "/healthz" => healthz,
    get "/metrics" => metrics::scrape,
    get "/api/v1/openapi.json" => openapi::serve,
    get "/ws/device" => sockets::device_socket,
    get "/ws/dashboard" => dashboard::dashboard_socket,
    post "/api/v1/auth/login" => users::login,
    post "/api/v1/auth/logout" => users::logout,
    get "/api/v1/auth/me" => users::me,
    post "/api/v1/auth/password" => users::change_password,
    get "/api/v1/users" => users::list_users,
    post "/api/v1/users" => users::create_user,
    get "/api/v1/users/{id}" => users::get_user,
    patch "/api/v1/users/{id}" => users::update_user,
    delete "/api/v1/users/{id}" => users::delete_user,
    get "/api/v1/audit" => audit::list_audit,
    get "/api/v1/devices" => devices::list_devices,
    post "/api/v1/devices" => devices::register_device,
    get "/api/v1/devices/connected" => devices::connected_devices,
    post "/api/v1/devices/commands" => commands::bulk_dispatch,
    get "/api/v1/devices/{id}" => devices::get_device,
    patch "/api/v1/devices/{id}" => devices::update_device,
    delete "/api/v1/devices/{id}" => devices::delete_device,
    get "/api/v1/devices/{id}/logs" => telemetry::device_logs,
    get "/api/v1/devices/{id}/events" => telemetry::device_events,
    get "/api/v1/devices/{id}/metrics" => charts::device_metrics,
    post "/api/v1/devices/{id}/token" => devices::issue_token,
    post "/api/v1/devices/{id}/commands" => commands::dispatch,
    get "/api/v1/devices/{id}/commands" => commands::history,
    get "/api/v1/devices/{id}/commands/{cmd_id}" => commands::get_command,
    post "/api/v1/devices/{id}/commands/{cmd_id}/cancel" => commands::cancel_command,
    post "/api/v1/device-groups" => groups::create_group,
    get "/api/v1/device-groups" => groups::list_groups,
    get "/api/v1/device-groups/{id}" => groups::get_group,
    put "/api/v1/device-groups/{id}" => groups::update_group,
    delete "/api/v1/device-groups/{id}" => groups::delete_group,
    post "/api/v1/device-groups/{id}/members" => groups::add_members,
    delete "/api/v1/device-groups/{id}/members" => groups::remove_members,
    post "/api/v1/device-groups/{id}/commands" => groups::dispatch_to_group,
    get "/api/v1/production/throughput" => charts::throughput,
    get "/api/v1/fleet/summary" => charts::fleet_summary,
    post "/api/v1/sync" => sync::ingest,
    get "/api/v1/sync/status" => cloud::status,
    get "/api/v1/sync/dead-letters" => cloud::dead_letters,
    post "/api/v1/sync/dead-letters/requeue" => cloud::requeue,
    put "/api/v1/sync/cloud" => cloud::update_cloud,
    post "/api/v1/firmware/releases" => firmware::upload,
    get "/api/v1/firmware/releases" => firmware::list,
    get "/api/v1/firmware/releases/{id}" => firmware::get,
    delete "/api/v1/firmware/releases/{id}" => firmware::delete,
    get "/api/v1/firmware/transfers" => firmware::transfers,
    get "/api/v1/firmware/releases/{id}/artifact" => firmware::artifact,
    head "/api/v1/firmware/releases/{id}/artifact" => firmware::artifact,
    post "/api/v1/firmware/deployments" => deployments::create,
    get "/api/v1/firmware/deployments" => deployments::list,
    get "/api/v1/firmware/deployments/{id}" => deployments::get,
    post "/api/v1/firmware/deployments/{id}/pause" => deployments::pause,
    post "/api/v1/firmware/deployments/{id}/resume" => deployments::resume,
    post "/api/v1/firmware/deployments/{id}/cancel" => deployments::cancel,
    get "/api/v1/ota/projects/{project}/devices" => boards::list_boards,
    put "/api/v1/ota/projects/{project}/devices/{device_id}" => boards::put_board,
    delete "/api/v1/ota/projects/{project}/devices/{device_id}" => boards::delete_board,
    get "/status" => ota::status,
    get "/favicon.ico" => ota::favicon,
    post "/admin/generate_token" => ota::generate_token,
    post "/admin/revoke_token" => ota::revoke_token,
    get "/firmware/{project}/latest" => ota::latest,
    get "/firmware/{project}/versions" => ota::versions,
    get "/firmware/{project}/{file}" => ota::file,
    head "/firmware/{project}/{file}" => ota::file,
}

async fn healthz(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    state
        .db
        .run(|conn| crate::store::db::ping(conn).map_err(|e| ApiError::unavailable(e.message)))
        .await
        .map_err(|e| match e.code {
            ErrorCode::Internal => ApiError::unavailable("database unreachable"),
            _ => e,
        })?;
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({
        "status": "ok",
        "database": state.db.backend().name(),
        "version": env!("CARGO_PKG_VERSION"),
    }))))
}

/// What no route answered: 405 with `Allow` when the path is a route's under another method,
/// else 404. Both in the JSON error body.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let allowed = allowed_methods(req.path());
    if allowed.is_empty() {
        return ApiError::not_found(ErrorCode::NotFound, "no such route").error_response();
    }
    let allow = allowed.join(", ");
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed here; allowed: {allow}", req.method()),
    )
    .error_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// The methods `ROUTES` lists for a path, in their order, without repeats.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    static PATTERNS: OnceLock<Vec<(&'static str, ResourceDef)>> = OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        ROUTES
            .iter()
            .map(|(method, pattern)| (*method, ResourceDef::new(*pattern)))
            .collect()
    });
    let mut methods = Vec::new();
    for (method, pattern) in patterns {
        if pattern.is_match(path) && !methods.contains(method) {
            methods.push(*method);
        }
    }
    methods
}
