//! The command handler actor: runs server commands once each and remembers their results.
//!
//! Dispatch is by command type; each type's work lives with the actor or module that owns
//! it (the drain for `force_sync`, the store for the queue, production and configuration,
//! `shell` for templates and the OS commands, `logs` for `pull_logs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use protocol::commands::{Command, CommandKind, CommandResult};
use protocol::device::{DeviceEvent, LogLineEvent};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::{Config, ConfigSource};
use crate::connection::{ConfigChanged, SendEvent};
use crate::drain::{Drain, DrainNow};
use crate::logs::{self, LogControl};
use crate::queue::{ClearQueue, SetProduction};
use crate::remote_config::{self, ApplyConfig};
use crate::shell;
use crate::status::{ReportNow, StatusReporter};
use crate::store::{GetResult, PutResult, StoreActor};
use crate::updater::{StageRelease, UpdateRequest, Updater};

/// Exit code of `restart_service`: EX_TEMPFAIL, "try again", for the supervisor
/// (`Restart=always` in `deploy/systemd/edge-agent.service`) to start the agent again.
pub const EXIT_RESTART: u8 = 75;
/// How long `reboot_os` / `shutdown_os` programs may run.
const OS_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs one command, or answers with the stored result of an earlier run of the same id.
#[derive(Message)]
#[rtype(result = "Answered")]
pub struct Execute(pub Command);

/// A result, and what the agent must do once it has been sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub result: CommandResult,
    /// Exit the process with this code after the result is on its way.
    pub exit: Option<u8>,
}

/// Everything the handler talks to.
#[derive(Clone)]
pub struct Deps {
    pub store: Addr<StoreActor>,
    pub drain: Addr<Drain>,
    pub events: Recipient<SendEvent>,
    pub config_changed: Recipient<ConfigChanged>,
    pub status: Addr<StatusReporter>,
    pub config: Arc<watch::Sender<Config>>,
    pub source: ConfigSource,
    pub logs: LogControl,
    pub updater: Addr<Updater>,
}

/// Executes commands. Messages are handled one at a time (`AtomicResponse`), so two
/// deliveries of the same id cannot both miss the stored result and both run.
pub struct CommandHandler {
    deps: Deps,
    runs: Arc<AtomicU64>,
}

impl CommandHandler {
    pub fn new(deps: Deps) -> Self {
        CommandHandler {
            deps,
            runs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A counter of commands actually run (not answered from the store).
    #[cfg(test)]
    pub fn runs(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.runs)
    }

    /// Runs a command that has no stored result yet.
    fn run(&self, command: Command) -> BoxFuture<'static, Answered> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let id = command.id.clone();
        if let Err(reason) = command.validate() {
            return done(CommandResult::failed(
                id,
                format!("invalid command: {reason}"),
            ));
        }
        let deps = self.deps.clone();
        match command.kind {
            CommandKind::ForceSync => force_sync(deps, id).boxed(),
            CommandKind::ClearQueue { include_completed } => {
                clear_queue(deps, id, include_completed).boxed()
            }
            CommandKind::PullLogs { lines } => pull_logs(deps, id, lines).boxed(),
            CommandKind::RestartService => ready(Answered {
                result: CommandResult::ok(
                    id,
                    format!(
                        "restarting: the agent exits with code {EXIT_RESTART} and its supervisor starts it again"
                    ),
                ),
                exit: Some(EXIT_RESTART),
            }),
            CommandKind::RebootOs => {
                let argv = deps.config.borrow().reboot_command.clone();
                os_command(id, "reboot", argv).boxed()
            }
            CommandKind::ShutdownOs => {
                let argv = deps.config.borrow().shutdown_command.clone();
                os_command(id, "shutdown", argv).boxed()
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
                allow_downgrade: _,
            } => update_firmware(
                deps,
                UpdateRequest {
                    command_id: id,
                    version,
                    url,
                    sha256,
                    size,
                    signature_base64,
                    signature_expires_at,
                },
            )
            .boxed(),
            CommandKind::ExecShell { template, args } => async move {
                let (t, argv) = match shell::build(&template, &args) {
                    Ok(built) => built,
                    Err(e) => return answer(CommandResult::failed(id, format!("refused: {e}"))),
                };
                let mut full = vec![t.program.to_owned()];
                full.extend(argv);
                answer(finished_result(id, shell::run(&full, t.timeout).await))
            }
            .boxed(),
            CommandKind::EnableDevice => production(deps, id, true, None).boxed(),
            CommandKind::DisableDevice { reason } => {
                production(deps, id, false, Some(reason)).boxed()
            }
        }
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
        match deps.store.send(ClearQueue { include_completed }).await {
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

async fn os_command(id: String, what: &str, argv: Vec<String>) -> Answered {
    tracing::warn!(?argv, "{what} requested by the server");
    answer(finished_result(
        id,
        shell::run(&argv, OS_COMMAND_TIMEOUT).await,
    ))
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
        "config": remote_config::redacted(&document),
        "applied": live,
        "restartRequired": restart,
    })))
}

async fn update_firmware(deps: Deps, request: UpdateRequest) -> Answered {
    let id = request.command_id.clone();
    let version = request.version.clone();
    let result = match deps.updater.send(StageRelease(request)).await {
        Ok(Ok(staged)) => {
            tracing::info!(%version, path = %staged.path.display(), "firmware staged");
            CommandResult::ok(
                id,
                format!("Firmware {version} staged at {}", staged.path.display()),
            )
            .with_data(json!({
                "stagedPath": staged.path.display().to_string(),
                "sha256": staged.sha256,
                "size": staged.size,
                "version": version,
                "signatureVerified": staged.signature_verified,
            }))
        }
        Ok(Err(e)) => {
            tracing::warn!(%version, "firmware not staged: {e}");
            CommandResult::failed(id, e.to_string())
        }
        Err(e) => CommandResult::failed(id, format!("updater unavailable: {e}")),
    };
    answer(result)
}

async fn production(deps: Deps, id: String, enabled: bool, reason: Option<String>) -> Answered {
    let result = match deps
        .store
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
    type Result = AtomicResponse<Self, Answered>;

    fn handle(&mut self, Execute(command): Execute, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.deps.store.clone();
        let lookup = store.send(GetResult {
            id: command.id.clone(),
        });
        AtomicResponse::new(Box::pin(lookup.into_actor(self).then(
            move |stored, act, _ctx| {
                let result = match stored {
                    Ok(Ok(Some(previous))) => {
                        tracing::info!(
                            command_id = %command.id,
                            "command already answered; sending the stored result"
                        );
                        Err(previous)
                    }
                    Ok(Ok(None)) => Ok(act.run(command.clone())),
                    // Without the store the agent cannot tell whether the command already
                    // ran, and running a reboot twice is worse than refusing it once.
                    Ok(Err(e)) => Err(CommandResult::failed(
                        &command.id,
                        format!("command store unavailable: {e}"),
                    )),
                    Err(e) => Err(CommandResult::failed(
                        &command.id,
                        format!("command store unavailable: {e}"),
                    )),
                };
                async move {
                    match result {
                        Err(previous) => answer(previous),
                        Ok(running) => {
                            let fresh = running.await;
                            // The result is stored before it is sent, and before a restart.
                            match store
                                .send(PutResult {
                                    result: fresh.result.clone(),
                                })
                                .await
                            {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => tracing::error!(
                                    command_id = %fresh.result.command_id,
                                    "cannot store command result: {e}"
                                ),
                                Err(e) => tracing::error!(
                                    command_id = %fresh.result.command_id,
                                    "cannot store command result: {e}"
                                ),
                            }
                            fresh
                        }
                    }
                }
                .into_actor(act)
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::config::Cli;
    use crate::connection::Identity;
    use crate::logs::LogControl;
    use crate::store::tests::temp_dir;
    use crate::store::Store;

    /// Every actor of an agent whose server does not answer (port 9 is discard).
    fn agent(extra: &[&str]) -> crate::runtime::Agent {
        let dir = temp_dir();
        let dir_text = dir.display().to_string();
        let mut args = vec![
            "edge-agent",
            "--server-url",
            "http://127.0.0.1:9",
            "--device-id",
            "edge-u",
            "--company-id",
            "acme",
            "--data-dir",
            &dir_text,
        ];
        args.extend_from_slice(extra);
        let source = ConfigSource::from_cli(Cli::try_parse_from(args).unwrap()).unwrap();
        let config = source.resolve::<()>(None).unwrap();
        let store = Store::open(&dir).unwrap();
        crate::runtime::start(
            config,
            source,
            store,
            Identity::for_this_process(),
            LogControl::detached(),
        )
    }

    async fn exec(agent: &crate::runtime::Agent, id: &str, kind: CommandKind) -> Answered {
        agent
            .commands
            .send(Execute(Command::new(id, kind)))
            .await
            .unwrap()
    }

    #[actix::test]
    async fn the_same_id_runs_once_even_when_delivered_concurrently() {
        let agent = agent(&[]);
        let enable = || CommandKind::EnableDevice;
        let first = exec(&agent, "en-1", enable()).await;
        let second = exec(&agent, "en-1", enable()).await;
        assert_eq!(first, second);
        assert_eq!(agent.runs.load(Ordering::Relaxed), 1);

        let command = Command::new("en-2", enable());
        let (a, b) = futures_util::future::join(
            agent.commands.send(Execute(command.clone())),
            agent.commands.send(Execute(command)),
        )
        .await;
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(agent.runs.load(Ordering::Relaxed), 2);
    }

    #[actix::test]
    async fn restart_asks_for_the_exit_code_once() {
        let agent = agent(&[]);
        let first = exec(&agent, "rs-1", CommandKind::RestartService).await;
        assert!(first.result.success);
        assert_eq!(first.exit, Some(EXIT_RESTART));
        // Answered from the store: the result again, but no second restart.
        let again = exec(&agent, "rs-1", CommandKind::RestartService).await;
        assert_eq!(again.result, first.result);
        assert_eq!(again.exit, None);
    }

    #[actix::test]
    async fn invalid_and_unsupported_commands_are_refused_with_the_reason() {
        let agent = agent(&[]);
        let r = exec(
            &agent,
            "dd-1",
            CommandKind::DisableDevice { reason: " ".into() },
        )
        .await;
        assert!(!r.result.success);
        assert!(
            r.result.output.starts_with("invalid command:"),
            "{}",
            r.result.output
        );
        let r = exec(
            &agent,
            "sh-1",
            CommandKind::ExecShell {
                template: "format_disk".into(),
                args: Default::default(),
            },
        )
        .await;
        assert!(
            r.result.output.starts_with("refused: unknown template"),
            "{}",
            r.result.output
        );
        let r = exec(
            &agent,
            "pc-1",
            CommandKind::PushConfig {
                patch: json!({"statusIntervalMs": 1}),
            },
        )
        .await;
        assert!(!r.result.success);
        assert!(
            r.result.output.contains("below the minimum"),
            "{}",
            r.result.output
        );
    }

    #[actix::test]
    async fn force_sync_reports_failure_and_counts_when_the_server_is_away() {
        let agent = agent(&[]);
        let codes: Vec<String> = (0..3).map(|i| format!("010400638133393121U{i}")).collect();
        let outcome = agent
            .production
            .send(crate::production::ScanLines(codes))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.bottles, 3);
        let r = exec(&agent, "fs-1", CommandKind::ForceSync).await;
        assert!(!r.result.success, "{}", r.result.output);
        assert_eq!(r.result.data.as_ref().unwrap()["pending"], 3);
        let r = exec(
            &agent,
            "cq-1",
            CommandKind::ClearQueue {
                include_completed: false,
            },
        )
        .await;
        assert_eq!(r.result.output, "Cleared 3 pending and 0 sent records");
    }
}
