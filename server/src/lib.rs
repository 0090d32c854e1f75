//! The factory server: REST API, device sessions and command dispatch over one database.
//!
//! `start` wires the pieces: the database (SQLite or PostgreSQL), the actors
//! (`PresenceWriter`, `DeviceRegistry`, `CommandDispatcher`) and the HTTP server whose routes
//! `routes` lists.

pub mod actors;
pub mod admin;
pub mod api;
pub mod auth;
pub mod budget;
pub mod config;
pub mod connection;
pub mod db;
pub mod error;
pub mod hashing;
pub mod input;
pub mod jwt;
pub mod limiter;
pub mod limits;
pub mod metrics;
pub mod passwords;
pub mod policy;
pub mod private_files;
pub mod ratelimit;
pub mod refusals;
pub mod release_signing;
pub mod state;
pub mod store;

pub use api::{routes, ROUTES};

use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Actor, SyncArbiter};
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context as _;

use crate::actors::cloud_sync::{CloudSync, CloudTarget, SharedStats, UpdateTarget};
use crate::actors::cluster::{Cluster, Peers as ClusterPeers};
use crate::actors::dashboard_registry::DashboardRegistry;
use crate::actors::deployer::FirmwareDeployer;
use crate::actors::dispatcher::{CommandDispatcher, ConfirmWindows};
use crate::actors::events::EventBus;
use crate::actors::janitor::Janitor;
use crate::actors::presence::PresenceWriter;
use crate::actors::registry::DeviceRegistry;
use crate::actors::telemetry::{TelemetrySink, TelemetryWriter};
use crate::config::Config;
use crate::state::{AppState, Limits};
use crate::store::db::Db;
use crate::store::outbox::CloudSettings;

pub use api::MAX_JSON_BODY;

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

/// On SIGHUP, reads the certificate chain and key again and serves them from the next
/// handshake on. Connections already open, device sessions among them, keep theirs; a file
/// that cannot be used is logged and the certificate in use stays.
fn reload_certificate_on_sighup(cert: Arc<tls::ReloadingCert>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; the TLS certificate reloads only on restart");
        return;
    };
    actix_web::rt::spawn(async move {
        while hangups.recv().await.is_some() {
            match cert.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the old one stays")
                }
            }
        }
    });
}

/// A server that is listening.
pub struct Running {
    pub server: actix_web::dev::Server,
    pub addrs: Vec<SocketAddr>,
    /// `https` when it serves TLS, else `http`.
    pub scheme: &'static str,
}

/// Everything the server needs that can fail, done: the data dir, the database (migrated, the
/// first admin created), the TLS files, the JWT secret, the hashing threads, the cloud
/// target and the bound listener. Nothing runs yet.
///
/// Every fallible step of a start happens here, before any actor exists: an actor started
/// in a system whose future then returns an error is dropped unpolled, and dropping it polls
/// it outside the runtime, which panics ("there is no reactor running").
pub struct Prepared {
    config: Config,
    db: Db,
    policy: Arc<policy::Policy>,
    certificate: Option<Arc<tls::ReloadingCert>>,
    server_tls: Option<rustls::ServerConfig>,
    cloud_tls: Option<Arc<rustls::ClientConfig>>,
    secret: Vec<u8>,
    limits: Arc<Limits>,
    cloud_target: Option<CloudTarget>,
    listener: std::net::TcpListener,
    /// This process's id among the replicas on its database.
    replica: String,
    /// The lock that keeps a second process off a SQLite file, held for the whole run.
    sqlite_lock: Option<std::fs::File>,
}

/// Takes an exclusive lock on a file beside the SQLite database, so that a second server on
/// the same file is refused at start: two processes would each believe they hold every
/// device, and each start would mark the other's devices OFFLINE.
fn lock_sqlite(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another factory-server is using the SQLite database {} (it holds {}); a SQLite database serves one server process, run replicas on PostgreSQL",
            path.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
}

/// Does every fallible step of a start (see `Prepared`); a failure is the one-line reason
/// the binary prints before it exits 2.
pub fn prepare(config: Config) -> anyhow::Result<Prepared> {
    private_files::create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    // Binding first: a busy port is the likeliest failure and costs nothing to find out.
    let listener = std::net::TcpListener::bind(config.bind_addr())
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let policy = Arc::new(config.policy());
    if config.firmware_allow_unsigned {
        tracing::warn!(
            "firmware_allow_unsigned is on: unsigned firmware releases are accepted although release keys are trusted"
        );
    }
    if config.ota_legacy_boards {
        tracing::warn!(
            "ota_legacy_boards is on: any holder of a board token downloads any file of its project"
        );
    }
    // A grant that opens nothing is a setting that does not do what its writer meant.
    for warning in policy.ineffective_templates() {
        tracing::warn!("{warning}");
    }
    let sqlite_lock = match config.database() {
        config::DatabaseTarget::Sqlite(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                private_files::create_private_dir(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            Some(lock_sqlite(&path)?)
        }
        config::DatabaseTarget::Postgres(_) => None,
    };
    let db = Db::open(config.database())?;
    api::users::bootstrap_admin(&db, config.admin_password.as_deref(), &config.data_dir)?;
    let replica = config.replica();
    // Only this replica's rows and expired ones: other replicas' devices are still connected.
    let reset = {
        let (replica, sole) = (replica.clone(), !db.shared());
        db.run_blocking(move |conn| {
            Ok(store::presence::start(
                conn,
                &replica,
                chrono::Utc::now(),
                sole,
            )?)
        })
        .map_err(|e| anyhow::anyhow!(e.message))?
    };
    tracing::info!(replica = %replica, "replica id");
    if reset > 0 {
        tracing::info!(
            devices = reset,
            "devices left ONLINE that no live replica holds marked OFFLINE"
        );
    }
    // Replicas share the data dir's firmware files: a part file may be another replica's
    // upload under way, so on a shared database only day-old ones are a dead run's.
    let part_age = if db.shared() {
        std::time::Duration::from_secs(24 * 3600)
    } else {
        std::time::Duration::ZERO
    };
    let swept = store::firmware::remove_stale_partial_uploads(&config.data_dir, part_age)
        .context("cannot clean the firmware directory")?;
    if swept > 0 {
        tracing::info!(
            files = swept,
            "partial firmware uploads of the previous run removed"
        );
    }
    let certificate = config.server_tls().map_err(|e| anyhow::anyhow!(e))?;
    let server_tls = match &certificate {
        Some(cert) => Some(tls::server_config(cert.clone()).context("TLS configuration")?),
        None => None,
    };
    let cloud_tls = config.cloud_tls().map_err(|e| anyhow::anyhow!(e))?;
    if cloud_tls.is_none() {
        tracing::warn!(
            "no trusted root certificates and no cloud_ca_file: an https cloud URL will be refused"
        );
    }
    let secret = auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)
        .context("cannot load or create the JWT secret")?;
    let limits = Arc::new(
        Limits::from_config(&config, &db).context("cannot start the password-hashing threads")?,
    );
    let cloud_target = config
        .cloud_target()
        .map_err(|e| anyhow::anyhow!(e))?
        .map(|(url, token)| CloudTarget { url, token });
    Ok(Prepared {
        config,
        db,
        policy,
        certificate,
        server_tls,
        cloud_tls,
        secret,
        limits,
        cloud_target,
        listener,
        replica,
        sqlite_lock,
    })
}

/// Prepares (see `prepare`) and starts the server. Must be called inside an actix system; the
/// returned server runs until it is awaited to completion or stopped.
pub fn start(config: Config) -> anyhow::Result<Running> {
    prepare(config)?.start()
}

impl Prepared {
    /// Starts the actors and the HTTP server on the bound listener. Must be called inside an
    /// actix system. Its one fallible step hands actix a listener that is already bound and
    /// non-blocking, which fails only if the socket itself broke since `prepare`.
    pub fn start(self) -> anyhow::Result<Running> {
        let Prepared {
            config,
            db,
            policy,
            certificate,
            server_tls,
            cloud_tls,
            secret,
            limits,
            cloud_target,
            listener,
            replica,
            sqlite_lock,
        } = self;
        let lease = std::time::Duration::from_secs(config.presence_lease_secs);
        let presence = {
            let (db, replica) = (db.clone(), replica.clone());
            SyncArbiter::start(1, move || {
                PresenceWriter::new(db.clone(), replica.clone(), lease)
            })
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
            cloud_tls,
        )
        .start();
        let cloud_target = Arc::new(std::sync::Mutex::new(cloud_target));
        reload_cloud_on_sighup(cloud.clone(), cloud_target.clone());
        let janitor = Janitor::new(
            db.clone(),
            limits.clone(),
            config.log_retention_days,
            std::time::Duration::from_secs(config.audit_summary_secs),
            (
                crate::store::metrics::Retention::new(
                    config.metrics_raw_retention_hours,
                    config.metrics_minute_retention_days,
                    config.metrics_hour_retention_days,
                ),
                std::time::Duration::from_secs(config.metrics_rollup_secs),
            ),
        )
        .start();
        Cluster::new(
            db.clone(),
            replica,
            lease,
            ClusterPeers {
                dispatcher: dispatcher.clone(),
                registry: registry.clone(),
                bus: bus.clone(),
                deployer: deployer.clone(),
                followers: vec![
                    deployer.clone().recipient(),
                    cloud.clone().recipient(),
                    janitor.recipient(),
                ],
            },
            sqlite_lock,
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
            downloads: budget::DownloadBudget::new(
                config.download_slots,
                config.download_slots_per_line,
            ),
            db,
            jwt: auth::JwtKeys::new(&secret).with_ota_algorithm(config.ota_algorithm()),
            policy,
            config: Arc::new(config.clone()),
            registry,
            dispatcher,
            deployer,
            presence,
        });

        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // Built here, once per worker: the device sessions of a worker share it.
                .app_data(api::sockets::SharedPeers::new(&state))
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
                .default_service(web::to(api::not_found))
        })
        .on_connect(connection::remember);
        let listening = format!("cannot listen on {}", config.bind);
        let (server, scheme) = match (certificate, server_tls) {
            (Some(cert), Some(tls)) => {
                reload_certificate_on_sighup(cert);
                let server = server
                    .listen_rustls_0_23(listener, tls)
                    .context(listening)?;
                (server, "https")
            }
            _ => (server.listen(listener).context(listening)?, "http"),
        };
        let addrs = server.addrs();
        Ok(Running {
            server: server.run(),
            addrs,
            scheme,
        })
    }
}
