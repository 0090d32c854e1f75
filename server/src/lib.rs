//! The factory server: REST API, device sessions and command dispatch over one database.
//!
//! `start` wires the pieces: the database (SQLite or PostgreSQL), the actors
//! (`PresenceWriter`, `DeviceRegistry`, `CommandDispatcher`) and the HTTP server whose routes
//! `routes` lists.

pub mod audit;
pub mod auth;
pub mod cloud_sync;
pub mod command_api;
pub mod commands;
pub mod config;
pub mod connection;
pub mod dashboard;
pub mod dashboard_registry;
pub mod db;
pub mod deployer;
pub mod deployments;
pub mod devices;
pub mod dispatcher;
pub mod error;
pub mod events;
pub mod firmware;
pub mod groups;
pub mod hashing;
pub mod input;
pub mod janitor;
pub mod ota;
pub mod presence;
pub mod private_files;
pub mod ratelimit;
pub mod refusals;
pub mod registry;
pub mod session;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod tokens;
pub mod ui;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Actor, SyncArbiter};
use actix_web::{middleware, web, App, HttpResponse, HttpServer};
use anyhow::Context as _;
use protocol::rest::Envelope;

use crate::cloud_sync::{CloudSettings, CloudSync, CloudTarget, SharedStats, UpdateTarget};
use crate::config::Config;
use crate::dashboard_registry::DashboardRegistry;
use crate::db::Db;
use crate::deployer::FirmwareDeployer;
use crate::dispatcher::{CommandDispatcher, ConfirmWindows};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::events::EventBus;
use crate::janitor::Janitor;
use crate::presence::PresenceWriter;
use crate::registry::DeviceRegistry;
use crate::state::{AppState, Limits};
use crate::telemetry::{TelemetrySink, TelemetryWriter};

/// Largest JSON body accepted on REST routes.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// Declares the routes once, producing both the actix configuration and `ROUTES`, the list the
/// route-table tests read: a route added here is covered by them at once.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route of the server as (method, path pattern).
        pub const ROUTES: &[(&str, &str)] = &[$((routes!(@name $method), $path)),*];

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
    get "/ws/device" => session::device_socket,
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
    get "/api/v1/devices/connected" => devices::connected_devices,
    post "/api/v1/devices/commands" => command_api::bulk_dispatch,
    get "/api/v1/devices/{id}" => devices::get_device,
    patch "/api/v1/devices/{id}" => devices::update_device,
    delete "/api/v1/devices/{id}" => devices::delete_device,
    get "/api/v1/devices/{id}/logs" => telemetry::device_logs,
    get "/api/v1/devices/{id}/events" => telemetry::device_events,
    post "/api/v1/devices/{id}/token" => devices::issue_token,
    post "/api/v1/devices/{id}/commands" => command_api::dispatch,
    get "/api/v1/devices/{id}/commands" => command_api::history,
    get "/api/v1/devices/{id}/commands/{cmd_id}" => command_api::get_command,
    post "/api/v1/devices/{id}/commands/{cmd_id}/cancel" => command_api::cancel_command,
    post "/api/v1/device-groups" => groups::create_group,
    get "/api/v1/device-groups" => groups::list_groups,
    get "/api/v1/device-groups/{id}" => groups::get_group,
    put "/api/v1/device-groups/{id}" => groups::update_group,
    delete "/api/v1/device-groups/{id}" => groups::delete_group,
    post "/api/v1/device-groups/{id}/members" => groups::add_members,
    delete "/api/v1/device-groups/{id}/members" => groups::remove_members,
    post "/api/v1/device-groups/{id}/commands" => groups::dispatch_to_group,
    post "/api/v1/sync" => sync::ingest,
    get "/api/v1/sync/status" => cloud_sync::status,
    get "/api/v1/sync/dead-letters" => cloud_sync::dead_letters,
    post "/api/v1/sync/dead-letters/requeue" => cloud_sync::requeue,
    put "/api/v1/sync/cloud" => cloud_sync::update_cloud,
    post "/api/v1/firmware/releases" => firmware::upload,
    get "/api/v1/firmware/releases" => firmware::list,
    get "/api/v1/firmware/releases/{id}" => firmware::get,
    delete "/api/v1/firmware/releases/{id}" => firmware::delete,
    get "/api/v1/firmware/releases/{id}/artifact" => firmware::artifact,
    head "/api/v1/firmware/releases/{id}/artifact" => firmware::artifact,
    post "/api/v1/firmware/deployments" => deployments::create,
    get "/api/v1/firmware/deployments" => deployments::list,
    get "/api/v1/firmware/deployments/{id}" => deployments::get,
    post "/api/v1/firmware/deployments/{id}/pause" => deployments::pause,
    post "/api/v1/firmware/deployments/{id}/resume" => deployments::resume,
    post "/api/v1/firmware/deployments/{id}/cancel" => deployments::cancel,
    get "/status" => ota::status,
    post "/admin/generate_token" => ota::generate_token,
    get "/firmware/{project}/latest" => ota::latest,
    get "/firmware/{project}/versions" => ota::versions,
    get "/firmware/{project}/{file}" => ota::file,
}

async fn healthz(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    use diesel::connection::SimpleConnection;
    state
        .db
        .run(|conn| {
            conn.batch_execute("SELECT 1")
                .map_err(|e| ApiError::unavailable(format!("database unreachable: {e}")))
        })
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

/// The request line for the access log with the value of every `token` query parameter
/// hidden: boards (`/firmware/…`) and older devices send their tokens there, and tokens are
/// never logged. A key written with escapes (`%74oken`) is hidden too, whatever it decodes to.
fn redacted_request_line(req: &actix_web::dev::ServiceRequest) -> String {
    let query = req.query_string();
    let query = if query.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("token") || key.contains(['%', '+']) => {
                    format!("{key}=REDACTED")
                }
                _ => pair.to_owned(),
            })
            .collect();
        format!("?{}", parts.join("&"))
    };
    format!(
        "{} {}{} {:?}",
        req.method(),
        req.path(),
        query,
        req.version()
    )
}

async fn not_found() -> ApiResult<HttpResponse> {
    Err(ApiError::not_found(ErrorCode::NotFound, "no such route"))
}

/// On SIGHUP, reads the settings again (flags, environment, TOML file, token file) and points
/// the cloud drain at the cloud URL and token they now name: a rotated cloud token needs no
/// restart. A bad reload is logged and changes nothing.
fn reload_cloud_on_sighup(
    cloud: actix::Addr<CloudSync>,
    current: Arc<std::sync::Mutex<Option<CloudTarget>>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; cloud settings reload only through the API");
        return;
    };
    actix_web::rt::spawn(async move {
        while hangups.recv().await.is_some() {
            use clap::Parser;
            let reloaded = config::Cli::try_parse()
                .map_err(|e| e.to_string())
                .and_then(|cli| Config::load(cli).map_err(|e| e.to_string()))
                .and_then(|c| c.cloud_target().map_err(|e| e.to_string()));
            match reloaded {
                Ok(target) => {
                    let target = target.map(|(url, token)| CloudTarget { url, token });
                    if let Ok(mut slot) = current.lock() {
                        slot.clone_from(&target);
                    }
                    tracing::info!(
                        configured = target.is_some(),
                        "SIGHUP: cloud settings reloaded"
                    );
                    cloud.do_send(UpdateTarget(target));
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: settings not reloaded"),
            }
        }
    });
}

/// A server that is listening.
pub struct Running {
    pub server: actix_web::dev::Server,
    pub addrs: Vec<SocketAddr>,
}

/// Opens the database, starts the actors and binds the HTTP server. Must be called inside an
/// actix system; the returned server runs until it is awaited to completion or stopped.
pub fn start(config: Config) -> anyhow::Result<Running> {
    private_files::create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let db = Db::open(config.database())?;
    users::bootstrap_admin(&db, config.admin_password.as_deref(), &config.data_dir)?;
    let reset = db
        .run_blocking(devices::mark_all_offline)
        .map_err(|e| anyhow::anyhow!(e.message))?;
    if reset > 0 {
        tracing::info!(
            devices = reset,
            "devices left ONLINE by the previous run marked OFFLINE"
        );
    }
    let swept = firmware::remove_partial_uploads(&config.data_dir)
        .context("cannot clean the firmware directory")?;
    if swept > 0 {
        tracing::info!(
            files = swept,
            "partial firmware uploads of the previous run removed"
        );
    }
    let secret = auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)
        .context("cannot load or create the JWT secret")?;

    let presence = {
        let db = db.clone();
        SyncArbiter::start(1, move || PresenceWriter::new(db.clone()))
    };
    let bus = EventBus::default().start();
    let telemetry = {
        let db = db.clone();
        let writer = SyncArbiter::start(1, move || TelemetryWriter::new(db.clone()));
        TelemetrySink::new(writer).start()
    };
    let registry = DeviceRegistry::new(presence.clone(), bus.clone()).start();
    let windows = ConfirmWindows {
        restart: std::time::Duration::from_secs(config.restart_confirm_secs),
        reboot: std::time::Duration::from_secs(config.reboot_confirm_secs),
    };
    let dispatcher =
        CommandDispatcher::new(db.clone(), registry.clone(), bus.clone(), windows).start();
    let deployer = FirmwareDeployer::new(
        db.clone(),
        dispatcher.clone(),
        bus.clone(),
        std::time::Duration::from_secs(config.deployment_stage_timeout_secs),
        std::time::Duration::from_secs(config.deployment_activate_timeout_secs),
    )
    .start();
    let limits = Arc::new(
        Limits::from_config(&config).context("cannot start the password-hashing threads")?,
    );
    let cloud_target = config
        .cloud_target()
        .map_err(|e| anyhow::anyhow!(e))?
        .map(|(url, token)| CloudTarget { url, token });
    let cloud_stats = SharedStats::default();
    let cloud = CloudSync::new(
        db.clone(),
        cloud_target.clone(),
        CloudSettings {
            batch_size: config.cloud_batch_size,
            concurrency: config.cloud_concurrency,
            max_attempts: config.cloud_max_attempts,
            retry_max: std::time::Duration::from_secs(config.cloud_retry_max_secs),
        },
        cloud_stats.clone(),
    )
    .start();
    let cloud_target = Arc::new(std::sync::Mutex::new(cloud_target));
    reload_cloud_on_sighup(cloud.clone(), cloud_target.clone());
    Janitor::new(
        db.clone(),
        limits.clone(),
        config.log_retention_days,
        std::time::Duration::from_secs(config.audit_summary_secs),
    )
    .start();
    let state = web::Data::new(AppState {
        cloud,
        cloud_stats,
        cloud_target,
        bus,
        telemetry,
        limits,
        dashboards: DashboardRegistry::new(
            config.dashboard_max_total,
            config.dashboard_max_per_user,
        ),
        db,
        jwt: auth::JwtKeys::new(&secret),
        config: Arc::new(config.clone()),
        registry,
        dispatcher,
        deployer,
        presence,
    });

    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_JSON_BODY)
                    .error_handler(error::json_error_handler),
            )
            .app_data(web::PayloadConfig::new(MAX_JSON_BODY))
            .app_data(web::QueryConfig::default().error_handler(error::query_error_handler))
            .app_data(web::PathConfig::default().error_handler(error::path_error_handler))
            // Innermost first: the NUL check answers with `ApiError`s, and `json_errors`
            // turns whatever actix answers on its own into the JSON error body.
            .wrap(middleware::from_fn(input::reject_nul))
            .wrap(middleware::from_fn(error::json_errors))
            .wrap(
                middleware::Logger::new("%a \"%{line}xi\" %s %b %Dms")
                    .custom_request_replace("line", redacted_request_line)
                    .exclude("/healthz"),
            )
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .on_connect(connection::remember)
    .bind(config.bind_addr())
    .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addrs = server.addrs();
    Ok(Running {
        server: server.run(),
        addrs,
    })
}
