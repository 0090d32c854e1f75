//! The `CommandDispatcher` actor: carries a command to its device and its outcome back.
//!
//! A dispatch is stored PENDING, moved to SENT (a conditional update, so a cancel that came
//! first wins) and handed to the device's session; then it waits for the device's
//! `command_result` up to its timeout: SUCCESS or FAILED as the device says, TIMEOUT when it
//! says nothing. A device that is not connected fails the command at once, or, with
//! `queueIfOffline`, keeps it QUEUED until the device connects or the queue time runs out
//! (EXPIRED). `restart_service` and `reboot_os` are not taken on the device's word: after its
//! answer they are CONFIRMING until the device reports a new run id (restart) or boot id
//! (reboot), then CONFIRMED, or FAILED when the window passes. A dispatch that ended without
//! storing an outcome (the server was killed, or the database refused the final write) would
//! leave its command PENDING or SENT forever; the sweep ends such a command TIMEOUT once its
//! timeout has passed and no dispatch of this process awaits it.
//!
//! Each dispatch runs in its own future, so one slow device never holds up another. Every
//! state change it stores goes through the `CommandWriter`, which shares one commit among
//! the changes of all commands in flight and answers each only after that commit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use protocol::commands::{Command, CommandProgress, CommandResult, CommandType};
use protocol::device::{DeviceEvent, ServerFrame};
use protocol::rest::{CommandStatus, DispatchResponse};
use tokio::sync::oneshot;

use crate::actors::command_writer::CommandWriter;
use crate::actors::events::{EventBus, Publish};
use crate::actors::registry::{DeviceRegistry, Lookup};
use crate::actors::session::DeliverCommand;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::store::audit::AuditEntry;
use crate::store::command_batch::NewCommand as NewRow;
use crate::store::commands;
use crate::store::db::Db;

#[path = "dispatcher_forward.rs"]
mod forward;
pub use forward::{JoinCluster, RemoteEnded};

pub const DEVICE_OFFLINE: &str = "Device offline";
/// How often queue expiry and confirmation deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

struct Waiting {
    device_id: String,
    reply: oneshot::Sender<CommandResult>,
}

struct Confirming {
    device_id: String,
    kind: CommandType,
    previous: Option<String>,
    deadline: chrono::DateTime<Utc>,
}

/// How long a device has to come back after `restart_service` and `reboot_os`.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmWindows {
    pub restart: Duration,
    pub reboot: Duration,
}

pub struct CommandDispatcher {
    db: Db,
    /// Every command state change goes through it, to share a commit with others.
    writer: CommandWriter,
    registry: Addr<DeviceRegistry>,
    bus: Addr<EventBus>,
    windows: ConfirmWindows,
    waiting: HashMap<String, Waiting>,
    confirming: HashMap<String, Confirming>,
    sweeping: bool,
    /// This replica when several share the database (`forward`).
    replica: Option<forward::Member>,
}

impl CommandDispatcher {
    pub fn new(
        db: Db,
        registry: Addr<DeviceRegistry>,
        bus: Addr<EventBus>,
        windows: ConfirmWindows,
    ) -> Self {
        CommandDispatcher {
            writer: CommandWriter::start(db.clone()),
            db,
            registry,
            bus,
            windows,
            waiting: HashMap::new(),
            confirming: HashMap::new(),
            sweeping: false,
            replica: None,
        }
    }

    /// Tells dashboards about an outcome the server decided (offline, timeout, expiry,
    /// confirmation); outcomes a device sends reach them from its session.
    fn publish(&self, device_id: &str, result: CommandResult) {
        if let Some(p) = Publish::device_event(device_id, DeviceEvent::CommandResult(result)) {
            self.bus.do_send(p);
        }
    }
}

impl Actor for CommandDispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Confirmations outlive a server restart: they are in the database.
        let db = self.db.clone();
        async move { db.run(|conn| Ok(commands::confirming(conn)?)).await }
            .into_actor(self)
            .map(|rows, act, _| act.watch_confirming(rows.unwrap_or_default(), None))
            .spawn(ctx);
        ctx.run_interval(SWEEP_INTERVAL, |act, ctx| act.sweep(ctx));
    }
}

impl CommandDispatcher {
    /// Watches the CONFIRMING commands among `rows` (those of `only_device` when given) that
    /// are not watched yet, each until its new run or boot id or its deadline.
    fn watch_confirming(&mut self, rows: Vec<commands::CommandRow>, only_device: Option<&str>) {
        for row in rows {
            let other_device = only_device.is_some_and(|d| d != row.device_id);
            if other_device || self.confirming.contains_key(&row.id) {
                continue;
            }
            let kind = row.command_type.parse::<CommandType>();
            if let (Ok(kind), Some(deadline)) = (kind, row.confirm_deadline) {
                self.confirming.insert(
                    row.id.clone(),
                    Confirming {
                        device_id: row.device_id.clone(),
                        kind,
                        previous: row.confirm_previous.clone(),
                        deadline: deadline.and_utc(),
                    },
                );
            }
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let now = Utc::now();
        let overdue: Vec<String> = self
            .confirming
            .iter()
            .filter(|(_, c)| c.deadline < now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in overdue {
            if let Some(c) = self.confirming.remove(&id) {
                let what = if c.kind == CommandType::RebootOs {
                    "boot id"
                } else {
                    "run id"
                };
                let result = CommandResult::failed(
                    &id,
                    format!("the device did not come back with a new {what} in time"),
                );
                self.end_confirming(c.device_id, result, CommandStatus::Failed, ctx);
            }
        }
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let db = self.db.clone();
        async move {
            let expired = db
                .run(move |conn| Ok(commands::expire_queued(conn, now)?))
                .await;
            let overdue = db
                .run(move |conn| Ok(commands::overdue_in_flight(conn, now)?))
                .await;
            (expired, overdue)
        }
        .into_actor(self)
        .map(move |(expired, overdue), act, ctx| {
            for (id, device_id) in expired.unwrap_or_default() {
                act.publish(
                    &device_id,
                    CommandResult::failed(id, "expired in the queue"),
                );
            }
            // Only commands no dispatch of this process awaits: a live one ends its own.
            let abandoned: Vec<(String, String)> = overdue
                .unwrap_or_default()
                .into_iter()
                .filter(|(id, _)| !act.waiting.contains_key(id))
                .collect();
            act.abandon(abandoned, now, ctx);
        })
        .spawn(ctx);
    }

    /// Ends commands left PENDING or SENT by a dispatch that is gone (a killed server, a
    /// final write the database refused), so none stays in flight forever; then the next
    /// sweep may run.
    fn abandon(
        &mut self,
        rows: Vec<(String, String)>,
        now: chrono::DateTime<Utc>,
        ctx: &mut Context<Self>,
    ) {
        if rows.is_empty() {
            self.sweeping = false;
            return;
        }
        let db = self.db.clone();
        async move {
            db.run(move |conn| {
                let mut ended = Vec::new();
                for (id, device_id) in rows {
                    if commands::abandon(conn, &id, now)? {
                        ended.push((id, device_id));
                    }
                }
                Ok(ended)
            })
            .await
        }
        .into_actor(self)
        .map(|ended, act, _| {
            act.sweeping = false;
            for (id, device_id) in ended.unwrap_or_default() {
                tracing::warn!(command_id = %id, device_id = %device_id, "command abandoned in flight ended as TIMEOUT");
                act.publish(
                    &device_id,
                    CommandResult::failed(id, commands::ABANDONED_OUTPUT),
                );
            }
        })
        .spawn(ctx);
    }
}

/// Send `command`, whose PENDING row exists already (bulk dispatch, a deployment, queued
/// delivery), to `device_id` and answer with its outcome.
#[derive(Message)]
#[rtype(result = "ApiResult<DispatchResponse>")]
pub struct Dispatch {
    pub device_id: String,
    pub command: Command,
    pub timeout: Duration,
    pub issued_by: Option<String>,
    /// Keep the command this long for a device that is offline.
    pub queue_ttl: Option<Duration>,
}

/// Send `0.command`, whose row was stored as SENT already because its device's session was
/// open (bulk dispatch), and answer with its outcome: no write before the frame goes out.
/// Only for commands whose outcome needs nothing read first (not a restart or reboot).
#[derive(Message)]
#[rtype(result = "ApiResult<DispatchResponse>")]
pub struct DispatchSent(pub Dispatch);

/// Store `dispatch.command` with its audit row (in one transaction, before anything is sent),
/// tell `accepted` once it is stored (or refused), then send it like `Dispatch` and answer
/// with its outcome.
#[derive(Message)]
#[rtype(result = "ApiResult<DispatchResponse>")]
pub struct StoreAndDispatch {
    pub dispatch: Dispatch,
    pub accepted: oneshot::Sender<ApiResult<()>>,
    pub audit: AuditEntry,
}

/// What a command not yet stored brings: whom to tell it is stored, and its audit row.
struct NewCommand {
    accepted: oneshot::Sender<ApiResult<()>>,
    audit: AuditEntry,
}

/// Where a command's row stands when its dispatch starts.
enum Stored {
    /// Not written yet.
    Not(NewCommand),
    /// PENDING or QUEUED: it becomes SENT before the frame goes out.
    Waiting,
    /// SENT already.
    Sent,
}

/// A device answered a command.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResultReceived {
    pub device_id: String,
    pub result: CommandResult,
}

/// A device reported progress on a command.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProgressReceived {
    pub device_id: String,
    pub progress: CommandProgress,
}

/// A device sent a `status` with these ids.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StatusSeen {
    pub device_id: String,
    pub boot_id: Option<String>,
    pub run_id: Option<String>,
}

/// A device connected: deliver what is queued for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceConnected {
    pub device_id: String,
}

#[derive(Message)]
#[rtype(result = "()")]
struct StartConfirming {
    command_id: String,
    device_id: String,
    kind: CommandType,
    previous: Option<String>,
    deadline: chrono::DateTime<Utc>,
}

impl Handler<Dispatch> for CommandDispatcher {
    type Result = ResponseActFuture<Self, ApiResult<DispatchResponse>>;

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) -> Self::Result {
        self.start(msg, Stored::Waiting, ctx)
    }
}

impl Handler<DispatchSent> for CommandDispatcher {
    type Result = ResponseActFuture<Self, ApiResult<DispatchResponse>>;

    fn handle(&mut self, msg: DispatchSent, ctx: &mut Context<Self>) -> Self::Result {
        self.start(msg.0, Stored::Sent, ctx)
    }
}

impl Handler<StoreAndDispatch> for CommandDispatcher {
    type Result = ResponseActFuture<Self, ApiResult<DispatchResponse>>;

    fn handle(&mut self, msg: StoreAndDispatch, ctx: &mut Context<Self>) -> Self::Result {
        let new = NewCommand {
            accepted: msg.accepted,
            audit: msg.audit,
        };
        self.start(msg.dispatch, Stored::Not(new), ctx)
    }
}

impl CommandDispatcher {
    /// Registers the command's reply slot and runs its dispatch from where its row stands.
    /// The slot is freed when the dispatch ends, back on the actor.
    fn start(
        &mut self,
        msg: Dispatch,
        stored: Stored,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ApiResult<DispatchResponse>> {
        let command_id = msg.command.id.clone();
        if self.waiting.contains_key(&command_id) {
            let err = ApiError::conflict(
                ErrorCode::CommandInFlight,
                format!("command {command_id} is already in flight"),
            );
            if let Stored::Not(new) = stored {
                let _ = new.accepted.send(Err(err.clone()));
            }
            return Box::pin(actix::fut::ready(Err(err)));
        }
        // Registered before anything is sent, so an answer can never arrive unclaimed.
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(
            command_id.clone(),
            Waiting {
                device_id: msg.device_id.clone(),
                reply: tx,
            },
        );
        let ctx_ = Ctx {
            db: self.db.clone(),
            writer: self.writer.clone(),
            registry: self.registry.clone(),
            me: ctx.address(),
            windows: self.windows,
            replica: self.replica.clone(),
        };
        let (kind, started) = (msg.command.command_type(), Instant::now());
        Box::pin(
            async move { run_dispatch(&ctx_, msg, stored, rx).await }
                .into_actor(self)
                .map(move |outcome, act, _| {
                    act.waiting.remove(&command_id);
                    // A dispatch that failed before any outcome (the database refused it)
                    // counts as `ERROR`, so every dispatch is counted once.
                    let status = match &outcome {
                        Ok(r) => r.status.as_str(),
                        Err(_) => "ERROR",
                    };
                    crate::metrics::command_finished(kind.as_str(), status, started.elapsed());
                    outcome
                }),
        )
    }
}

struct Ctx {
    db: Db,
    writer: CommandWriter,
    registry: Addr<DeviceRegistry>,
    me: Addr<CommandDispatcher>,
    windows: ConfirmWindows,
    replica: Option<forward::Member>,
}

fn response(result: CommandResult, status: CommandStatus) -> DispatchResponse {
    DispatchResponse { result, status }
}

/// Stores an outcome. `announce`: the server decided it (offline, timeout), so dashboards
/// hear it from here; what a device answers reaches them from its session.
async fn finish(
    ctx: &Ctx,
    device_id: &str,
    result: CommandResult,
    status: CommandStatus,
    announce: bool,
) -> ApiResult<DispatchResponse> {
    let changed = ctx.writer.complete(result.clone(), status).await?;
    if !changed {
        // Someone else ended it first (a cancel); answer with what is stored.
        return stored_outcome(ctx, &result.command_id).await;
    }
    if announce {
        ctx.me.do_send(PublishOutcome {
            device_id: device_id.to_owned(),
            result: result.clone(),
        });
    }
    Ok(response(result, status))
}

async fn stored_outcome(ctx: &Ctx, id: &str) -> ApiResult<DispatchResponse> {
    let id = id.to_owned();
    let row = ctx
        .db
        .run(move |conn| Ok(commands::find_by_id(conn, &id)?))
        .await?
        .ok_or_else(|| ApiError::not_found(ErrorCode::CommandNotFound, "command vanished"))?;
    Ok(response(row.result(), row.status()?))
}

#[derive(Message)]
#[rtype(result = "()")]
struct PublishOutcome {
    device_id: String,
    result: CommandResult,
}

impl Handler<PublishOutcome> for CommandDispatcher {
    type Result = ();
    fn handle(&mut self, msg: PublishOutcome, _: &mut Context<Self>) {
        self.publish(&msg.device_id, msg.result);
    }
}

async fn run_dispatch(
    ctx: &Ctx,
    msg: Dispatch,
    stored: Stored,
    rx: oneshot::Receiver<CommandResult>,
) -> ApiResult<DispatchResponse> {
    let command_id = msg.command.id.clone();
    let device_id = msg.device_id.clone();
    let kind = msg.command.command_type();
    // The session is looked up first, so a new command for a connected device is written
    // once, as SENT, rather than as PENDING and then SENT.
    let session = ctx
        .registry
        .send(Lookup {
            device_id: device_id.clone(),
        })
        .await
        .map_err(ApiError::internal)?;
    // A device another replica holds is reached through it (dispatcher_forward.rs).
    let (msg, stored, rx) = match forward::elsewhere(ctx, session.is_some(), msg, stored, rx).await
    {
        Ok(outcome) => return outcome,
        Err(here) => here,
    };
    // What must change for a restart or reboot to count, read before the command can act,
    // in the transaction that stores or sends it.
    let watch = commands::Watch::for_command(kind);
    let (sent, previous) = match stored {
        Stored::Not(NewCommand { accepted, audit }) => {
            let online = session.is_some();
            let stored = ctx
                .writer
                .store_new(NewRow {
                    device_id: device_id.clone(),
                    command: msg.command.clone(),
                    timeout_ms: msg.timeout.as_millis() as i64,
                    issued_by: msg.issued_by.clone(),
                    audit,
                    online,
                    watch,
                })
                .await;
            let _ = accepted.send(stored.as_ref().map(|_| ()).map_err(Clone::clone));
            (online, stored?)
        }
        Stored::Waiting => (false, None),
        Stored::Sent => (true, None),
    };
    let Some(session) = session else {
        return offline(ctx, &msg).await;
    };
    let previous = if sent {
        previous
    } else {
        let marked = ctx
            .writer
            .send_stored(command_id.clone(), device_id.clone(), watch)
            .await?;
        match marked {
            Some(previous) => previous,
            None => return stored_outcome(ctx, &command_id).await,
        }
    };
    let delivered = session
        .send(DeliverCommand(ServerFrame::Command {
            command: msg.command.clone(),
            timeout_ms: msg.timeout.as_millis() as u64,
        }))
        .await
        .is_ok();
    if !delivered {
        return offline(ctx, &msg).await;
    }
    match tokio::time::timeout(msg.timeout, rx).await {
        Ok(Ok(result))
            if result.success
                && matches!(kind, CommandType::RestartService | CommandType::RebootOs) =>
        {
            let window = if kind == CommandType::RebootOs {
                ctx.windows.reboot
            } else {
                ctx.windows.restart
            };
            let deadline = Utc::now() + chrono::Duration::from_std(window).unwrap_or_default();
            ctx.writer
                .start_confirming(result.clone(), previous.clone(), deadline)
                .await?;
            ctx.me.do_send(StartConfirming {
                command_id,
                device_id,
                kind,
                previous,
                deadline,
            });
            Ok(response(result, CommandStatus::Confirming))
        }
        Ok(Ok(result)) => {
            let status = if result.success {
                CommandStatus::Success
            } else {
                CommandStatus::Failed
            };
            finish(ctx, &device_id, result, status, false).await
        }
        // The sender is dropped only if the dispatcher stopped; treat it as no answer.
        Ok(Err(_)) | Err(_) => {
            let result = CommandResult::failed(
                &command_id,
                format!(
                    "no answer from the device within {} ms",
                    msg.timeout.as_millis()
                ),
            );
            finish(ctx, &device_id, result, CommandStatus::Timeout, true).await
        }
    }
}

/// The device is not connected: queue the command if asked to, else fail it.
async fn offline(ctx: &Ctx, msg: &Dispatch) -> ApiResult<DispatchResponse> {
    let command_id = msg.command.id.clone();
    if let Some(ttl) = msg.queue_ttl {
        let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        if ctx
            .writer
            .mark_queued(command_id.clone(), expires_at)
            .await?
        {
            let result = CommandResult::failed(
                &command_id,
                format!("{DEVICE_OFFLINE}; queued until {}", expires_at.to_rfc3339()),
            );
            return Ok(response(result, CommandStatus::Queued));
        }
        return stored_outcome(ctx, &command_id).await;
    }
    let result = CommandResult::failed(&command_id, DEVICE_OFFLINE);
    finish(ctx, &msg.device_id, result, CommandStatus::Failed, true).await
}

impl Handler<ResultReceived> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, msg: ResultReceived, _: &mut Context<Self>) {
        let id = msg.result.command_id.clone();
        match self.waiting.get(&id) {
            Some(w) if w.device_id == msg.device_id => {
                if let Some(w) = self.waiting.remove(&id) {
                    // The waiting future may have timed out a moment ago; then it is dropped.
                    let _ = w.reply.send(msg.result);
                }
            }
            Some(_) => {
                tracing::warn!(device = %msg.device_id, command = %id, "result for another device's command ignored");
            }
            None => {
                tracing::info!(device = %msg.device_id, command = %id, "result for a command nobody waits for (late or unknown)");
            }
        }
    }
}

impl Handler<ProgressReceived> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, msg: ProgressReceived, _: &mut Context<Self>) {
        let known = self
            .waiting
            .get(&msg.progress.command_id)
            .is_some_and(|w| w.device_id == msg.device_id);
        if !known {
            return;
        }
        let db = self.db.clone();
        let p = msg.progress;
        actix::spawn(async move {
            let _ = db
                .run(move |conn| {
                    Ok(commands::set_progress(
                        conn,
                        &p.command_id,
                        p.percent,
                        &p.message,
                    )?)
                })
                .await;
        });
    }
}

impl Handler<StatusSeen> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, msg: StatusSeen, ctx: &mut Context<Self>) {
        let done: Vec<String> = self
            .confirming
            .iter()
            .filter(|(_, c)| c.device_id == msg.device_id)
            .filter(|(_, c)| {
                let now = if c.kind == CommandType::RebootOs {
                    &msg.boot_id
                } else {
                    &msg.run_id
                };
                now.is_some() && *now != c.previous
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            let Some(c) = self.confirming.remove(&id) else {
                continue;
            };
            let what = if c.kind == CommandType::RebootOs {
                "boot id"
            } else {
                "run id"
            };
            let result = CommandResult::ok(
                &id,
                format!("confirmed: the device came back with a new {what}"),
            );
            self.end_confirming(c.device_id, result, CommandStatus::Confirmed, ctx);
        }
    }
}

impl Handler<DeviceConnected> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, msg: DeviceConnected, ctx: &mut Context<Self>) {
        self.adopt_confirming(&msg.device_id, ctx);
        let db = self.db.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let device_id = msg.device_id;
            let d = device_id.clone();
            let Ok(queued) = db
                .run(move |conn| Ok(commands::queued_for_device(conn, &d)?))
                .await
            else {
                return;
            };
            // In the order they were given, each after the previous one ended.
            for row in queued {
                let Ok(command) = row.command() else { continue };
                let remaining = row
                    .expires_at
                    .map(|t| (t.and_utc() - Utc::now()).to_std().unwrap_or_default())
                    .unwrap_or_default();
                if remaining.is_zero() {
                    continue; // the sweep expires it
                }
                let outcome = me
                    .send(Dispatch {
                        device_id: device_id.clone(),
                        command,
                        timeout: Duration::from_millis(row.timeout_ms.max(1) as u64),
                        issued_by: row.issued_by.clone(),
                        queue_ttl: Some(remaining),
                    })
                    .await;
                if let Ok(Ok(r)) = outcome {
                    tracing::info!(device = %device_id, command = %row.id, status = r.status.as_str(), "queued command delivered");
                    if r.status == CommandStatus::Queued {
                        break; // the device went away again
                    }
                }
            }
        });
    }
}

impl Handler<StartConfirming> for CommandDispatcher {
    type Result = ();
    fn handle(&mut self, msg: StartConfirming, _: &mut Context<Self>) {
        self.confirming.insert(
            msg.command_id,
            Confirming {
                device_id: msg.device_id,
                kind: msg.kind,
                previous: msg.previous,
                deadline: msg.deadline,
            },
        );
    }
}
