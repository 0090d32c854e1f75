//! `edge-agent`: reads its settings, opens its database and runs the agent's actors.

mod actors;
mod admin;
mod backoff;
mod config;
mod enroll;
mod firmware;
#[cfg(test)]
mod fuzz;
mod gs1;
mod http;
mod identity;
mod install;
mod label;
mod logs;
mod messages;
mod outbox;
mod remote_config;
mod runtime;
mod shell;
mod store;
mod trust;
mod upstream;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use actix::System;
use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::actors::commands::EXIT_RESTART;
use crate::actors::production;
use crate::config::{Cli, Config, ConfigSource};
use crate::identity::Identity;
use crate::logs::LogControl;
use crate::messages::Shutdown;
use crate::store::Store;

/// Exit code of a bad or missing setting, the same clap uses for a bad flag.
const EXIT_BAD_SETTING: u8 = 2;

fn main() -> ExitCode {
    // A staged build on trial counts its start before it reads a setting: a build that
    // refuses the settings its predecessor ran on must be rolled back like one that crashes.
    // A subcommand reads or sets up the data dir and exits; it is no start of the agent, so
    // it is never counted as a trial's.
    let parsed = match Cli::try_parse() {
        Ok(mut cli) => match cli.command.take() {
            Some(command) => return run_admin(command, cli),
            None => Ok(cli),
        },
        Err(e) => Err(e),
    };
    let early = own_trial_dir().map(|dir| install::begin_run(&dir));
    let cli = match parsed {
        Ok(cli) => cli,
        // `--help` and `--version` print and exit 0; a flag error exits 2 with clap's text.
        Err(e) if early.is_none() || !e.use_stderr() => e.exit(),
        Err(e) => return bad_setting(&e.to_string(), true),
    };
    let source = match ConfigSource::from_cli(cli) {
        Ok(source) => source,
        Err(e) => return bad_setting(&e.to_string(), early.is_some()),
    };
    let base = match source.resolve::<()>(None) {
        Ok(config) => config,
        Err(e) => return bad_setting(&e.to_string(), early.is_some()),
    };
    // Counted before anything else can fail, so that a build that crash-loops is rolled back.
    let firmware = match early {
        Some(startup) => startup,
        None => install::begin_run(&base.firmware_staging_dir),
    };
    // From here on a bad setting of a build on trial (or one just rolled back) asks for a
    // restart: the supervisor then counts it again, or starts the previous build.
    let on_trial = matches!(
        &firmware,
        Ok(s) if s.trial.is_some() || s.rolled_back.is_some()
    );
    let store = match Store::open(&base.data_dir) {
        Ok(store) => store,
        Err(e) => return bad_setting(&e.to_string(), on_trial),
    };
    // Settings pushed by the server lie over the others. If they no longer fit (a flag
    // changed under them), the agent runs on the rest rather than not at all.
    // Keys an older agent stored that may no longer be pushed are dropped, never applied.
    let mut dropped = Vec::new();
    let (config, pushed_error) = match remote_config::load(&store)
        .map_err(|e| e.to_string())
        .and_then(|loaded| {
            dropped = loaded.dropped;
            remote_config::resolve(&source, &loaded.document).map_err(|e| e.to_string())
        }) {
        Ok(config) => (config, None),
        Err(e) => (base, Some(e)),
    };
    let logs = logs::init(
        &config.log_level,
        &config.log_file,
        std::io::stderr().is_terminal(),
    );
    remote_config::warn_dropped(&dropped);
    if let Some(e) = pushed_error {
        tracing::error!("pushed configuration ignored: {e}");
    }
    // The start that rolls a build back is that build's own (the supervisor started
    // `current`): it hands over to the build it rolled back to by asking for a restart.
    let rolled_back_self = matches!(
        &firmware,
        Ok(install::Startup { rolled_back: Some(rb), .. }) if exe_is_staged(&rb.from)
    );
    let version = firmware_version(firmware);
    if rolled_back_self {
        tracing::warn!(
            code = EXIT_RESTART,
            "this build was rolled back; exiting so the supervisor starts the previous one"
        );
        return ExitCode::from(EXIT_RESTART);
    }
    // Without a token and without a key the agent could only retry a doomed enrollment.
    match store.token() {
        Ok(None) if config.enrollment_key.is_none() => {
            return bad_setting(
                "no device token is stored and no enrollment key is set \
                 (flag --enrollment-key or env EDGE_ENROLLMENT_KEY)",
                on_trial,
            )
        }
        Ok(_) => {}
        Err(e) => return bad_setting(&e.to_string(), on_trial),
    }

    match run(config, source, store, logs, version) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(EXIT_BAD_SETTING) if on_trial => ExitCode::from(EXIT_RESTART),
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("edge-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one subcommand (`admin`): a bad setting exits 2, a failure 1, each with one line.
fn run_admin(command: config::AdminCommand, cli: Cli) -> ExitCode {
    let source = match ConfigSource::from_cli(cli) {
        Ok(source) => source,
        Err(e) => return bad_setting(&e.to_string(), false),
    };
    match admin::run(command, &source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether this process runs the staged build of `version` (started through `current`).
fn exe_is_staged(version: &str) -> bool {
    let expected = firmware::staged_name(version);
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n == std::ffi::OsStr::new(&expected)))
        .unwrap_or(false)
}

/// Prints a one-line reason and gives the exit code of a bad setting: 2, which the systemd
/// unit does not restart, except for a build on trial. That one exits 75 so it is started
/// again and counted, and after `MAX_TRIAL_STARTS` rolled back to the build that ran.
fn bad_setting(reason: &str, on_trial: bool) -> ExitCode {
    let line: String = reason
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!("edge-agent: {line}");
    if on_trial {
        eprintln!(
            "edge-agent: this build is on trial; exiting {EXIT_RESTART} so it is counted, and rolled back after {} starts",
            install::MAX_TRIAL_STARTS
        );
        return ExitCode::from(EXIT_RESTART);
    }
    ExitCode::from(EXIT_BAD_SETTING)
}

/// The staging dir this process runs from, when it is the staged build a trial names: found
/// from the executable alone (`current` resolves to `<staging dir>/edge-service-<version>`),
/// so that it is known before any setting is read.
fn own_trial_dir() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let trial = install::load(dir).ok()?.trial?;
    let staged = firmware::staged_name(&trial.version);
    (exe.file_name()? == std::ffi::OsStr::new(&staged)).then(|| dir.to_owned())
}

/// Logs what the start-up check of the installed firmware found; answers the firmware version
/// this process runs. An unreadable state is not a reason to stop: the agent must stay
/// reachable to be repaired, so it runs as its own build's version.
fn firmware_version(startup: Result<install::Startup, install::InstallError>) -> String {
    let own = env!("CARGO_PKG_VERSION");
    let startup = match startup {
        Ok(startup) => startup,
        Err(e) => {
            tracing::error!("installed firmware state not usable, running as {own}: {e}");
            return own.to_owned();
        }
    };
    if let Some(rolled_back) = &startup.rolled_back {
        tracing::warn!("{}", rolled_back.message());
    }
    if let Some(trial) = &startup.trial {
        tracing::warn!(
            version = %trial.version,
            "firmware on trial: start {} of {} before it is rolled back unless it reaches the server",
            trial.starts,
            install::MAX_TRIAL_STARTS
        );
    }
    // The version reported is the installed one; a supervisor that does not start
    // `<staging dir>/current` would make that report wrong, which is worth a loud line.
    if startup.running != own {
        let expected = firmware::staged_name(&startup.running);
        let exe = std::env::current_exe().ok();
        if exe.as_ref().and_then(|p| p.file_name()) != Some(std::ffi::OsStr::new(&expected)) {
            tracing::warn!(
                installed = %startup.running,
                exe = ?exe,
                "the installed firmware is not the running executable; does the supervisor start <staging dir>/current?"
            );
        }
    }
    startup.running
}

/// A setting that turned out bad once the system ran (the scanner address cannot be bound).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadSetting(String);

/// Runs the agent until it is stopped; answers the exit code a command asked for, or 0.
fn run(
    config: Config,
    source: ConfigSource,
    store: Store,
    logs: LogControl,
    version: String,
) -> anyhow::Result<u8> {
    tracing::info!(
        "edge-agent {} (firmware {version}) starting, device {}",
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
        scanner_listen = ?config.scanner_listen,
        batch_size = config.batch_size,
        pallet_size = config.pallet_size,
        log_file = %config.log_file.display(),
        "settings"
    );
    if config.firmware_allow_unsigned {
        tracing::warn!(
            "firmware_allow_unsigned is on: unsigned firmware releases are staged although release keys are trusted"
        );
    }
    http::init(config.ca_file.as_deref()).map_err(|e| anyhow::anyhow!("ca_file: {e}"))?;

    let system = System::new();
    let exit_code = system.block_on(async move {
        let identity = Identity::for_this_process().running(version);
        tracing::info!(run_id = %identity.run_id, boot_id = ?identity.boot_id, "process identity");
        let scanner = config.scanner_listen;
        let agent = runtime::start(config, source, store, identity, logs);

        if let Some(addr) = scanner {
            let listener = production::bind(addr)
                .await
                .map_err(|e| BadSetting(format!("scanner_listen: cannot listen on {addr}: {e}")))?;
            let bound = listener.local_addr().context("scanner listener address")?;
            tracing::info!(%bound, "scanner listening");
            // Machine-readable, like factory-server's address line; tests read it.
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "edge-agent scanner listening on {bound}");
            let _ = stdout.flush();
            actix::spawn(production::serve(listener, agent.production.clone()));
        }

        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let connection = agent.connection.clone();
        actix::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            }
            connection.do_send(Shutdown);
        });
        anyhow::Ok(agent.exit_code)
    });
    let exit_code = match exit_code {
        Ok(code) => code,
        Err(e) => {
            if let Some(bad) = e.downcast_ref::<BadSetting>() {
                eprintln!("edge-agent: {bad}");
                return Ok(EXIT_BAD_SETTING);
            }
            return Err(e);
        }
    };
    system.run().context("actor system failed")?;
    let code = exit_code.load(Ordering::SeqCst);
    tracing::info!(exit_code = code, "edge-agent stopped");
    Ok(code)
}
