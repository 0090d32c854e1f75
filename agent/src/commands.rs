//! The command handler actor: runs server commands once each and remembers their results.
//!
//! Dispatch is by command type; each type's work lives with the actor or module that owns
//! it (the drain for `force_sync`, the store for the queue, production and configuration,
//! `shell` for templates and the OS commands, `logs` for `pull_logs`, the updater and
//! `install` for `update_firmware`).
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
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::{Config, ConfigSource};
use crate::connection::{ConfigChanged, SendEvent};
use crate::drain::{Drain, DrainNow};
use crate::install;
use crate::logs::{self, LogControl};
use crate::queue::{ClearQueue, SetProduction};
use crate::remote_config::{self, ApplyConfig};
use crate::shell;
use crate::status::{ReportNow, StatusReporter};
use crate::store::{GetResult, PutResult, StoreActor};
use crate::updater::{parse_running, StageRelease, UpdateRequest, Updater};

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
            allow_downgrade,
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
        agent_in(&temp_dir(), extra)
    }

    /// The same, with its data in `dir` and a device token stored (downloads need one).
    fn agent_in(dir: &std::path::Path, extra: &[&str]) -> crate::runtime::Agent {
        let dir = dir.to_owned();
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
        store.set_token("device-token").unwrap();
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

    /// Serves one download: the head and the first half of `body` at once, the rest only
    /// after the returned sender is used, so the download is in flight until then.
    fn held_download(body: Vec<u8>) -> (String, std::sync::mpsc::Sender<()>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/artifact", listener.local_addr().unwrap());
        let (release, released) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
            }
            let half = body.len() / 2;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body[..half]).unwrap();
            stream.flush().unwrap();
            // A dropped sender (a failed test) releases too.
            let _ = released.recv();
            stream.write_all(&body[half..]).unwrap();
        });
        (url, release)
    }

    fn update(version: &str, url: &str, body: &[u8]) -> CommandKind {
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        CommandKind::UpdateFirmware {
            version: version.into(),
            url: url.into(),
            sha256: crate::updater::hex(digest.as_ref()),
            size: body.len() as u64,
            signature_base64: None,
            signature_expires_at: None,
            deployment_id: Some("dep-1".into()),
            allow_downgrade: false,
        }
    }

    #[actix::test]
    async fn other_commands_are_answered_while_a_download_runs_and_activation_restarts() {
        let dir = temp_dir();
        let agent = agent_in(&dir, &[]);
        let body = vec![7u8; 64 * 1024];
        let (url, release) = held_download(body.clone());
        let first = agent
            .commands
            .send(Execute(Command::new("up-1", update("99.0.0", &url, &body))));
        // The same id again while it runs: answered with the first run's result.
        let repeat = agent
            .commands
            .send(Execute(Command::new("up-1", update("99.0.0", &url, &body))));

        let sync = tokio::time::timeout(
            Duration::from_secs(10),
            exec(&agent, "fs-1", CommandKind::ForceSync),
        )
        .await
        .expect("force_sync waited for the download");
        assert_eq!(sync.result.command_id, "fs-1");
        // A restart would cut the download off: refused with the reason, and no exit. (The
        // first half is on disk by then, so the download has surely begun.)
        let part = crate::updater::part_path(&dir.join("staging"), "99.0.0");
        for _ in 0..200 {
            if part.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(part.exists(), "the download never began");
        let restart = exec(&agent, "rs-during", CommandKind::RestartService).await;
        assert!(!restart.result.success);
        assert!(
            restart
                .result
                .output
                .contains("firmware 99.0.0 is downloading"),
            "{}",
            restart.result.output
        );
        assert_eq!(restart.exit, None);
        let staging = dir.join("staging");
        assert!(!staging.join(install::CURRENT_LINK).exists());

        release.send(()).unwrap();
        let first = first.await.unwrap();
        assert!(first.result.success, "{}", first.result.output);
        assert_eq!(first.exit, Some(EXIT_RESTART));
        let data = first.result.data.clone().unwrap();
        assert_eq!(data["activating"], true);
        assert_eq!(data["previousVersion"], env!("CARGO_PKG_VERSION"));
        assert_eq!(data["version"], "99.0.0");
        assert_eq!(data["size"], body.len());
        let repeat = repeat.await.unwrap();
        assert_eq!(repeat.result, first.result);
        assert_eq!(repeat.exit, None);
        // up-1 (once, for both deliveries), fs-1 and rs-during.
        assert_eq!(agent.runs.load(Ordering::Relaxed), 3);

        assert_eq!(
            std::fs::read_link(staging.join(install::CURRENT_LINK)).unwrap(),
            std::path::PathBuf::from("edge-service-99.0.0")
        );
        let state = install::load(&staging).unwrap();
        assert_eq!(state.active.as_deref(), Some("99.0.0"));
        assert_eq!(state.previous.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(state.trial.map(|t| t.starts), Some(0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[actix::test]
    async fn no_activation_when_it_is_off_or_the_version_already_runs() {
        let dir = temp_dir();
        let agent = agent_in(&dir, &["--firmware-activate", "false"]);
        let body = b"new build".to_vec();
        let (url, release) = held_download(body.clone());
        release.send(()).unwrap();
        let r = exec(&agent, "up-2", update("99.0.0", &url, &body)).await;
        assert!(r.result.success, "{}", r.result.output);
        assert_eq!(r.exit, None);
        let data = r.result.data.unwrap();
        assert_eq!(data["activating"], false);
        assert!(data.get("previousVersion").is_none());
        let staging = dir.join("staging");
        assert!(staging.join("edge-service-99.0.0").is_file());
        assert!(!staging.join(install::CURRENT_LINK).exists());
        assert!(!staging.join(install::STATE_FILE).exists());
        // The download ended, so a restart is no longer refused.
        let restart = exec(&agent, "rs-after", CommandKind::RestartService).await;
        assert!(restart.result.success, "{}", restart.result.output);
        assert_eq!(restart.exit, Some(EXIT_RESTART));

        let dir = temp_dir();
        let agent = agent_in(&dir, &[]);
        let (url, release) = held_download(body.clone());
        release.send(()).unwrap();
        let own = env!("CARGO_PKG_VERSION");
        let r = exec(&agent, "up-3", update(own, &url, &body)).await;
        assert!(r.result.success, "{}", r.result.output);
        assert_eq!(r.exit, None);
        assert_eq!(r.result.data.unwrap()["activating"], false);
        let staging = dir.join("staging");
        assert!(!staging.join(install::CURRENT_LINK).exists());
        assert!(!staging.join(install::STATE_FILE).exists());
    }
}
