//! `edge-agent`: reads its settings, opens its database and keeps the factory connection.

mod backoff;
mod commands;
mod config;
mod connection;
mod enroll;
mod store;

use std::io::IsTerminal;
use std::process::ExitCode;

use actix::{Actor, SyncArbiter, System};
use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::commands::CommandHandler;
use crate::config::Config;
use crate::connection::{Connection, Identity, Shutdown};
use crate::store::{Store, StoreActor};

/// Exit code of a bad or missing setting, the same clap uses for a bad flag.
const EXIT_BAD_SETTING: u8 = 2;

fn main() -> ExitCode {
    let config = match Config::from_args() {
        Ok(config) => config,
        Err(e) => return bad_setting(&e.to_string()),
    };
    init_tracing(&config.log_level);

    let store = match Store::open(&config.data_dir) {
        Ok(store) => store,
        Err(e) => return bad_setting(&e.to_string()),
    };
    // Without a token and without a key the agent could only retry a doomed enrollment.
    match store.token() {
        Ok(None) if config.enrollment_key.is_none() => {
            return bad_setting(
                "no device token is stored and no enrollment key is set \
                 (flag --enrollment-key or env EDGE_ENROLLMENT_KEY)",
            )
        }
        Ok(_) => {}
        Err(e) => return bad_setting(&e.to_string()),
    }

    match run(config, store) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("edge-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a one-line reason and gives the exit code of a bad setting.
fn bad_setting(reason: &str) -> ExitCode {
    let line: String = reason.lines().collect::<Vec<_>>().join("; ");
    eprintln!("edge-agent: {line}");
    ExitCode::from(EXIT_BAD_SETTING)
}

fn init_tracing(filter: &str) {
    // The filter was already checked while validating the settings.
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::DEFAULT_LOG_LEVEL));
    // Colour codes only help a person at a terminal; journald and log files get plain text.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

fn run(config: Config, store: Store) -> anyhow::Result<()> {
    tracing::info!(
        "edge-agent {} starting, device {}",
        env!("CARGO_PKG_VERSION"),
        config.device_id
    );
    tracing::info!(
        data_dir = %config.data_dir.display(),
        server_url = %config.server_url,
        connection_mode = config.connection_mode.as_str(),
        status_interval_ms = config.status_interval.as_millis() as u64,
        cloud_url = config.cloud_url.as_deref().unwrap_or("-"),
        cloud_token_set = config.cloud_token.is_some(),
        "settings"
    );
    if config.uses_tls() {
        tracing::warn!(
            "this build has no TLS support; connections to an https:// server will fail"
        );
    }

    let system = System::new();
    system.block_on(async move {
        let identity = Identity::for_this_process();
        tracing::info!(run_id = %identity.run_id, boot_id = ?identity.boot_id, "process identity");
        let store = SyncArbiter::start(1, StoreActor::factory(store));
        let commands = CommandHandler::new(store.clone()).start();
        let connection = Connection::new(config, identity, store, commands).start();

        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        actix::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            }
            connection.do_send(Shutdown);
        });
        anyhow::Ok(())
    })?;
    system.run().context("actor system failed")?;
    tracing::info!("edge-agent stopped");
    Ok(())
}
