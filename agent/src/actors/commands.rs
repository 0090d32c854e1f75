//! The command handler actor: runs server commands once each and remembers their results.
//!
//! Dispatch is by command type; each type's work lives with the actor or module that owns
//! it (the drain for `force_sync`, the offline queue for the queue and production, the store
//! for pushed configuration, the shell-template actor for templates and the OS commands,
//! `logs` for `pull_logs`, the updater and `install` for `update_firmware`). The handler
//! answers each `Execute` with its result; the connection that asked sends it, so the
//! handler never needs the connection, only recipients for the events it sends on its own.
//!
//! Commands run one at a time in arrival order, except `update_firmware`: its download may
//! take minutes, so it runs beside the others (the updater still takes one update at a time)
//! and only its activation waits for its turn. A command that ends in an exit keeps its turn
//! for good, so nothing queued behind it starts while the process goes down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use protocol::commands::{Command, CommandKind, CommandResult};
use protocol::device::{DeviceEvent, LogLineEvent};
use protocol::firmware::{KeyRotation, AGENT_PROJECT};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::actors::drain::{Drain, DrainNow};
use crate::actors::queue::{ClearQueue, QueueActor, SetProduction};
use crate::actors::shell::{RunProgram, RunTemplate, ShellActor};
use crate::actors::store::{ApplyConfig, GetResult, PutResult, Rotate, StoreActor};
use crate::actors::updater::{StageRelease, Updater};
use crate::config::{Config, ConfigSource};
use crate::firmware::{parse_running, UpdateRequest};
use crate::install;
use crate::logs::{self, LogControl};
use crate::messages::{Answered, ConfigChanged, Execute, ReportNow, SendEvent};
use crate::remote_config;
use crate::shell;

/// Exit code of `restart_service`: EX_TEMPFAIL, "try again", for the supervisor
/// (`Restart=always` in `deploy/systemd/edge-agent.service`) to start the agent again.
pub const EXIT_RESTART: u8 = 75;
/// How long `reboot_os` / `shutdown_os` programs may run.
const OS_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the handler talks to.
#[derive(Clone)]
pub struct Deps {
    pub store: Addr<StoreActor>,
    pub queue: Addr<QueueActor>,
    pub drain: Addr<Drain>,
    pub shell: Addr<ShellActor>,
    pub events: Recipient<SendEvent>,
    pub config_changed: Recipient<ConfigChanged>,
    pub status: Recipient<ReportNow>,
    pub config: Arc<watch::Sender<Config>>,
    pub source: ConfigSource,
    pub logs: LogControl,
    pub updater: Addr<Updater>,
    /// The firmware version this process runs.
    pub running: String,
    /// The releases `update_firmware` is downloading.
    pub downloads: Downloads,
}

/// The versions being downloaded, so that `restart_service` does not cut a download off (it
/// would be lost with the process, and its deployment would wait out the stage timeout).
#[derive(Clone, Default)]
pub struct Downloads(Arc<std::sync::Mutex<Vec<String>>>);

impl Downloads {
    /// Counts `version` as downloading until the guard is dropped.
    fn begin(&self, version: &str) -> DownloadGuard {
        self.lock().push(version.to_owned());
        DownloadGuard {
            downloads: self.clone(),
            version: version.to_owned(),
        }
    }

    fn under_way(&self) -> Vec<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct DownloadGuard {
    downloads: Downloads,
    version: String,
}

impl Drop for DownloadGuard {
    fn drop(&mut self) {
        let mut list = self.downloads.lock();
        if let Some(i) = list.iter().position(|v| *v == self.version) {
            list.remove(i);
        }
    }
}

/// The turn of commands that run one at a time.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// Executes commands. A command id being run is remembered until its result is stored, and
/// a second delivery of it waits for that run's answer; after that the store answers it. So
/// two deliveries of the same id never both run, although commands run concurrently.
pub struct CommandHandler {
    deps: Deps,
    runs: Arc<AtomicU64>,
    turn: Turn,
    in_flight: HashMap<String, Shared<BoxFuture<'static, Answered>>>,
}

impl CommandHandler {
    pub fn new(deps: Deps) -> Self {
        CommandHandler {
            deps,
            runs: Arc::new(AtomicU64::new(0)),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            in_flight: HashMap::new(),
        }
    }

    /// A counter of commands actually run (not answered from the store).
    #[cfg(test)]
    pub fn runs(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.runs)
    }
}

/// Answers the stored result of an earlier run, or runs the command (in its turn, unless it
/// is `update_firmware`) and stores the result before answering it.
async fn execute(deps: Deps, runs: Arc<AtomicU64>, turn: Turn, command: Command) -> Answered {
    let id = command.id.clone();
    match deps.store.send(GetResult { id: id.clone() }).await {
        Ok(Ok(Some(previous))) => {
            tracing::info!(command_id = %id, "command already answered; sending the stored result");
            return answer(previous);
        }
        Ok(Ok(None)) => {}
        // Without the store the agent cannot tell whether the command already ran, and
        // running a reboot twice is worse than refusing it once.
        Ok(Err(e)) => {
            return answer(CommandResult::failed(
                id,
                format!("command store unavailable: {e}"),
            ))
        }
        Err(e) => {
            return answer(CommandResult::failed(
                id,
                format!("command store unavailable: {e}"),
            ))
        }
    }
    let fresh = if matches!(command.kind, CommandKind::UpdateFirmware { .. }) {
        run(deps.clone(), &runs, turn, command).await
    } else {
        let held = turn.clone().lock_owned().await;
        let fresh = run(deps.clone(), &runs, turn, command).await;
        if fresh.exit.is_some() {
            // The process is about to exit: nothing queued behind may start now.
            std::mem::forget(held);
        }
        fresh
    };
    // The result is stored before it is sent, and before a restart.
    match deps
        .store
        .send(PutResult {
            result: fresh.result.clone(),
        })
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(command_id = %id, "cannot store command result: {e}"),
        Err(e) => tracing::error!(command_id = %id, "cannot store command result: {e}"),
    }
    fresh
}

/// Runs a command that has no stored result yet.
fn run(deps: Deps, runs: &AtomicU64, turn: Turn, command: Command) -> BoxFuture<'static, Answered> {
    runs.fetch_add(1, Ordering::Relaxed);
    let id = command.id.clone();
    if let Err(reason) = command.validate() {
        return done(CommandResult::failed(
            id,
            format!("invalid command: {reason}"),
        ));
    }
    match command.kind {
        CommandKind::ForceSync => force_sync(deps, id).boxed(),
        CommandKind::ClearQueue { include_completed } => {
            clear_queue(deps, id, include_completed).boxed()
        }
        CommandKind::PullLogs { lines } => pull_logs(deps, id, lines).boxed(),
        CommandKind::RestartService => {
            let downloading = deps.downloads.under_way();
            if !downloading.is_empty() {
                return done(CommandResult::failed(
                    id,
                    format!(
                        "refused: firmware {} is downloading, and a restart now would cut it off; \
                             send restart_service once the update ends, or cancel its deployment",
                        downloading.join(", ")
                    ),
                ));
            }
            ready(Answered {
                    result: CommandResult::ok(
                        id,
                        format!(
                            "restarting: the agent exits with code {EXIT_RESTART} and its supervisor starts it again"
                        ),
                    ),
                    exit: Some(EXIT_RESTART),
                })
        }
        CommandKind::RebootOs => {
            let argv = deps.config.borrow().reboot_command.clone();
            os_command(deps, id, "reboot", argv).boxed()
        }
        CommandKind::ShutdownOs => {
            let argv = deps.config.borrow().shutdown_command.clone();
            os_command(deps, id, "shutdown", argv).boxed()
        }
        CommandKind::PushConfig { patch } => push_config(deps, id, patch).boxed(),
        CommandKind::UpdateFirmware {
            version,
            url,
            sha256,
            size,
            signature_base64,
            signature_expires_at,
            deployment_id: _,
            allow_downgrade,
            project,
            manifest_allow_downgrade,
            security_floor,
        } => update_firmware(
            deps,
            turn,
            UpdateRequest {
                command_id: id,
                version,
                url,
                sha256,
                size,
                signature_base64,
                signature_expires_at,
                allow_downgrade,
                project: project.unwrap_or_else(|| AGENT_PROJECT.to_owned()),
                manifest_allow_downgrade,
                security_floor,
            },
        )
        .boxed(),
        CommandKind::RotateFirmwareKeys {
            add,
            retire,
            sequence,
            expires_at,
            signature_base64,
        } => {
            let rotation = KeyRotation {
                add,
                retire,
                sequence,
                expires_unix: expires_at.timestamp(),
            };
            rotate_keys(deps, id, rotation, signature_base64).boxed()
        }
        CommandKind::ExecShell { template, args } => exec_shell(deps, id, template, args).boxed(),
        CommandKind::EnableDevice => production(deps, id, true, None).boxed(),
        CommandKind::DisableDevice { reason } => production(deps, id, false, Some(reason)).boxed(),
    }
}

fn answer(result: CommandResult) -> Answered {
    Answered { result, exit: None }
}

fn ready(answered: Answered) -> BoxFuture<'static, Answered> {
    futures_util::future::ready(answered).boxed()
}

fn done(result: CommandResult) -> BoxFuture<'static, Answered> {
    ready(answer(result))
}

/// A result from a program run: success on exit code 0, its output, and the details.
fn finished_result(id: String, run: std::io::Result<shell::Finished>) -> CommandResult {
    match run {
        Ok(finished) => {
            let data = serde_json::to_value(&finished).unwrap_or(Value::Null);
            let result = if finished.success() {
                CommandResult::ok(id, finished.output())
            } else {
                CommandResult::failed(id, finished.output())
            };
            result.with_data(data)
        }
        Err(e) => CommandResult::failed(id, format!("cannot start the program: {e}")),
    }
}

async fn force_sync(deps: Deps, id: String) -> Answered {
    let report = match deps.drain.send(DrainNow).await {
        Ok(report) => report,
        Err(e) => return answer(CommandResult::failed(id, format!("drain unavailable: {e}"))),
    };
    let data = json!({"sent": report.sent, "pending": report.pending, "error": report.error});
    let result = match &report.error {
        None => CommandResult::ok(
            id,
            format!(
                "Force-sync completed. Sent: {}, Pending: {}",
                report.sent, report.pending
            ),
        ),
        Some(e) => CommandResult::failed(
            id,
            format!(
                "Force-sync failed: {e}. Sent: {}, Pending: {}",
                report.sent, report.pending
            ),
        ),
    };
    answer(result.with_data(data))
}

async fn clear_queue(deps: Deps, id: String, include_completed: bool) -> Answered {
    answer(
        match deps.queue.send(ClearQueue { include_completed }).await {
            Ok(Ok(cleared)) => CommandResult::ok(
                id,
                format!(
                    "Cleared {} pending and {} sent records",
                    cleared.pending, cleared.sent
                ),
            )
            .with_data(json!({"deletedPending": cleared.pending, "deletedSent": cleared.sent})),
            Ok(Err(e)) => CommandResult::failed(id, format!("cannot clear the queue: {e}")),
            Err(e) => CommandResult::failed(id, format!("store unavailable: {e}")),
        },
    )
}

async fn pull_logs(deps: Deps, id: String, lines: u32) -> Answered {
    let wanted = lines.min(logs::MAX_PULL_LINES) as usize;
    let file = deps.config.borrow().log_file.clone();
    let read = tokio::task::spawn_blocking(move || logs::tail(&file, wanted)).await;
    let lines = match read {
        Ok(Ok(lines)) => lines,
        Ok(Err(e)) => {
            return answer(CommandResult::failed(
                id,
                format!("cannot read the log file: {e}"),
            ))
        }
        Err(e) => return answer(CommandResult::failed(id, format!("log reader failed: {e}"))),
    };
    let ts = chrono::Utc::now();
    for line in &lines {
        deps.events
            .do_send(SendEvent(DeviceEvent::LogLine(LogLineEvent {
                level: logs::level_of(line).into(),
                line: line.clone(),
                ts,
            })));
    }
    answer(
        CommandResult::ok(id, format!("Sent {} log lines", lines.len()))
            .with_data(json!({"lines": lines.len(), "capped": lines.len() < wanted})),
    )
}

async fn exec_shell(
    deps: Deps,
    id: String,
    template: String,
    args: std::collections::BTreeMap<String, Value>,
) -> Answered {
    let ran = deps.shell.send(RunTemplate { template, args }).await;
    answer(match ran {
        Ok(Ok(finished)) => finished_result(id, Ok(finished)),
        Ok(Err(e)) => CommandResult::failed(id, e.to_string()),
        Err(e) => CommandResult::failed(id, format!("shell runner unavailable: {e}")),
    })
}

async fn os_command(deps: Deps, id: String, what: &str, argv: Vec<String>) -> Answered {
    tracing::warn!(?argv, "{what} requested by the server");
    let ran = deps
        .shell
        .send(RunProgram {
            argv,
            timeout: OS_COMMAND_TIMEOUT,
        })
        .await;
    answer(match ran {
        Ok(run) => finished_result(id, run),
        Err(e) => CommandResult::failed(id, format!("shell runner unavailable: {e}")),
    })
}

async fn push_config(deps: Deps, id: String, patch: Value) -> Answered {
    let applied = deps
        .store
        .send(ApplyConfig {
            source: deps.source.clone(),
            patch: patch.clone(),
        })
        .await;
    let (document, config) = match applied {
        Ok(Ok(applied)) => applied,
        Ok(Err(e)) => return answer(CommandResult::failed(id, format!("refused: {e}"))),
        Err(e) => return answer(CommandResult::failed(id, format!("store unavailable: {e}"))),
    };
    if let Err(e) = deps.logs.set_level(&config.log_level) {
        tracing::warn!("cannot change the log level: {e}");
    }
    deps.config.send_replace(config.clone());
    deps.config_changed.do_send(ConfigChanged(config));
    let restart = remote_config::restart_needed(&patch);
    let live: Vec<String> = patch
        .as_object()
        .map(|o| o.keys().filter(|k| !restart.contains(k)).cloned().collect())
        .unwrap_or_default();
    let mut output = String::from("Configuration stored.");
    if !live.is_empty() {
        output.push_str(&format!(" Applied now: {}.", live.join(", ")));
    }
    if !restart.is_empty() {
        output.push_str(&format!(
            " Needs restart_service to take effect: {}.",
            restart.join(", ")
        ));
    }
    tracing::info!(applied = ?live, restart_needed = ?restart, "configuration pushed");
    answer(CommandResult::ok(id, output).with_data(json!({
        "config": document,
        "applied": live,
        "restartRequired": restart,
    })))
}

/// Stages the release (not in the turn of other commands: the download may take long), then,
/// in the turn, activates it and asks for the restart onto it, unless activation is off or
/// the release is the version already running.
async fn update_firmware(deps: Deps, turn: Turn, request: UpdateRequest) -> Answered {
    let id = request.command_id.clone();
    let version = request.version.clone();
    let downloading = deps.downloads.begin(&version);
    let staged = deps.updater.send(StageRelease(request)).await;
    drop(downloading);
    let staged = match staged {
        Ok(Ok(staged)) => staged,
        Ok(Err(e)) => {
            tracing::warn!(%version, "firmware not staged: {e}");
            return answer(CommandResult::failed(id, e.to_string()));
        }
        Err(e) => {
            return answer(CommandResult::failed(
                id,
                format!("updater unavailable: {e}"),
            ))
        }
    };
    tracing::info!(%version, path = %staged.path.display(), "firmware staged");
    let mut data = json!({
        "stagedPath": staged.path.display().to_string(),
        "sha256": staged.sha256,
        "size": staged.size,
        "version": version,
        "signatureVerified": staged.signature_verified,
        "activating": false,
    });
    let staged_text = format!("Firmware {version} staged at {}", staged.path.display());
    let (activate, staging_dir) = {
        let config = deps.config.borrow();
        (
            config.firmware_activate,
            config.firmware_staging_dir.clone(),
        )
    };
    // The checks passed, so the version parses; equal builds need no restart.
    let already_running =
        semver::Version::parse(&version).is_ok_and(|wanted| wanted == parse_running(&deps.running));
    if already_running {
        return answer(
            CommandResult::ok(
                id,
                format!("{staged_text}; it is already the running version"),
            )
            .with_data(data),
        );
    }
    if !activate {
        return answer(
            CommandResult::ok(id, format!("{staged_text}; firmware_activate is off"))
                .with_data(data),
        );
    }
    let held = turn.lock_owned().await;
    let running = deps.running.clone();
    let wanted = version.clone();
    let activated =
        tokio::task::spawn_blocking(move || install::activate(&staging_dir, &wanted, &running))
            .await;
    match activated {
        Ok(Ok(activation)) => {
            tracing::warn!(%version, previous = %activation.previous, "firmware activated; restarting on it");
            data["activating"] = json!(true);
            data["previousVersion"] = json!(activation.previous);
            // The process is about to exit: nothing queued behind may start now.
            std::mem::forget(held);
            Answered {
                result: CommandResult::ok(
                    id,
                    format!(
                        "{staged_text} and activated; the agent exits with code {EXIT_RESTART} to be restarted on it ({} is kept for rollback)",
                        activation.previous
                    ),
                )
                .with_data(data),
                exit: Some(EXIT_RESTART),
            }
        }
        // Staged but not installed: a success would have the server wait for a version that
        // never comes.
        Ok(Err(e)) => {
            tracing::error!(%version, "firmware staged but not activated: {e}");
            answer(
                CommandResult::failed(id, format!("{staged_text} but not activated: {e}"))
                    .with_data(data),
            )
        }
        Err(e) => answer(
            CommandResult::failed(id, format!("{staged_text} but not activated: {e}"))
                .with_data(data),
        ),
    }
}

/// Applies a signed key rotation to the release keyring (checked and stored by the store
/// actor, `trust::rotate`); answers the keys in force after it.
async fn rotate_keys(
    deps: Deps,
    id: String,
    rotation: KeyRotation,
    signature_base64: String,
) -> Answered {
    let configured = deps.config.borrow().firmware_trusted_keys.clone();
    let sequence = rotation.sequence;
    let rotated = deps
        .store
        .send(Rotate {
            configured,
            rotation,
            signature_base64,
        })
        .await;
    match rotated {
        Ok(Ok(keys)) => {
            let keys: Vec<String> = keys
                .iter()
                .map(protocol::signing::encode_public_key)
                .collect();
            tracing::warn!(sequence, keys = ?keys, "firmware release keys rotated");
            answer(
                CommandResult::ok(
                    id,
                    format!(
                        "release keys rotated (sequence {sequence}); {} key(s) trusted",
                        keys.len()
                    ),
                )
                .with_data(json!({"trustedKeys": keys, "sequence": sequence})),
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(sequence, "key rotation refused: {e}");
            answer(CommandResult::failed(id, e.to_string()))
        }
        Err(e) => answer(CommandResult::failed(id, format!("store unavailable: {e}"))),
    }
}

async fn production(deps: Deps, id: String, enabled: bool, reason: Option<String>) -> Answered {
    let result = match deps
        .queue
        .send(SetProduction {
            enabled,
            reason: reason.clone(),
        })
        .await
    {
        Ok(Ok(before)) => {
            let output = match (enabled, &reason) {
                (true, _) if before.enabled => "Production was already enabled".to_owned(),
                (true, _) => "Production enabled".to_owned(),
                (false, Some(reason)) => format!("Production disabled: {reason}"),
                (false, None) => "Production disabled".to_owned(),
            };
            tracing::warn!("{output}");
            deps.status.do_send(ReportNow);
            CommandResult::ok(id, output).with_data(json!({
                "productionEnabled": enabled,
                "wasEnabled": before.enabled,
            }))
        }
        Ok(Err(e)) => CommandResult::failed(id, format!("cannot store the change: {e}")),
        Err(e) => CommandResult::failed(id, format!("store unavailable: {e}")),
    };
    answer(result)
}

impl Actor for CommandHandler {
    type Context = Context<Self>;
}

impl Handler<Execute> for CommandHandler {
    /// Not atomic: the handler is free for the next command while this one runs.
    type Result = ResponseActFuture<Self, Answered>;

    fn handle(&mut self, Execute(command): Execute, _ctx: &mut Self::Context) -> Self::Result {
        let id = command.id.clone();
        if let Some(running) = self.in_flight.get(&id) {
            tracing::info!(command_id = %id, "command is running; the repeat gets its answer");
            let running = running.clone();
            // Only the first delivery acts on an exit.
            return Box::pin(
                async move {
                    Answered {
                        exit: None,
                        ..running.await
                    }
                }
                .into_actor(self),
            );
        }
        let work = execute(
            self.deps.clone(),
            Arc::clone(&self.runs),
            Arc::clone(&self.turn),
            command,
        )
        .boxed()
        .shared();
        self.in_flight.insert(id.clone(), work.clone());
        Box::pin(work.into_actor(self).map(move |answered, act, _ctx| {
            // Stored by now, so a later delivery is answered from the store.
            act.in_flight.remove(&id);
            answered
        }))
    }
}

#[cfg(test)]
mod tests;
