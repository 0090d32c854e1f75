//! The `CommandDispatcher` actor: carries a command to its device and its result back.
//!
//! Each dispatch is persisted PENDING, handed to the device's session and marked SENT, then
//! waits for the device's `command_result` up to its timeout: SUCCESS or FAILED as the device
//! says, TIMEOUT when it says nothing, FAILED at once when the device is not connected. The
//! waiting happens in a future per command, so one slow device never holds up another.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use protocol::commands::{Command, CommandProgress, CommandResult};
use protocol::device::ServerFrame;
use protocol::rest::{CommandStatus, DispatchResponse};
use tokio::sync::oneshot;

use crate::commands;
use crate::db::Db;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::registry::{DeviceRegistry, Lookup};
use crate::session::DeliverCommand;

pub const DEVICE_OFFLINE: &str = "Device offline";

struct Waiting {
    device_id: String,
    reply: oneshot::Sender<CommandResult>,
}

pub struct CommandDispatcher {
    db: Db,
    registry: Addr<DeviceRegistry>,
    waiting: HashMap<String, Waiting>,
}

impl CommandDispatcher {
    pub fn new(db: Db, registry: Addr<DeviceRegistry>) -> Self {
        CommandDispatcher {
            db,
            registry,
            waiting: HashMap::new(),
        }
    }
}

impl Actor for CommandDispatcher {
    type Context = Context<Self>;
}

/// Send `command` to `device_id` and answer with its outcome.
#[derive(Message)]
#[rtype(result = "ApiResult<DispatchResponse>")]
pub struct Dispatch {
    pub device_id: String,
    pub command: Command,
    pub timeout: Duration,
    pub issued_by: Option<String>,
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

/// The dispatch of a command gave up waiting.
#[derive(Message)]
#[rtype(result = "()")]
struct StopWaiting {
    command_id: String,
}

impl Handler<Dispatch> for CommandDispatcher {
    type Result = ResponseFuture<ApiResult<DispatchResponse>>;

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) -> Self::Result {
        let command_id = msg.command.id.clone();
        if self.waiting.contains_key(&command_id) {
            return Box::pin(async move {
                Err(ApiError::conflict(
                    ErrorCode::DuplicateCommandId,
                    format!("command {command_id} is already in flight"),
                ))
            });
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
        let me = ctx.address();
        let db = self.db.clone();
        let registry = self.registry.clone();
        Box::pin(async move {
            let outcome = run_dispatch(&db, &registry, msg, rx).await;
            me.do_send(StopWaiting { command_id });
            outcome
        })
    }
}

async fn run_dispatch(
    db: &Db,
    registry: &Addr<DeviceRegistry>,
    msg: Dispatch,
    rx: oneshot::Receiver<CommandResult>,
) -> ApiResult<DispatchResponse> {
    let Dispatch {
        device_id,
        command,
        timeout,
        issued_by,
    } = msg;
    let command_id = command.id.clone();
    {
        let (device_id, command) = (device_id.clone(), command.clone());
        let timeout_ms = timeout.as_millis() as i64;
        db.run(move |conn| {
            commands::insert_pending(conn, &device_id, &command, timeout_ms, issued_by.as_deref())
        })
        .await?;
    }
    let session = registry
        .send(Lookup {
            device_id: device_id.clone(),
        })
        .await
        .map_err(ApiError::internal)?;
    let delivered = match session {
        Some(session) => session
            .send(DeliverCommand(ServerFrame::Command {
                command,
                timeout_ms: timeout.as_millis() as u64,
            }))
            .await
            .is_ok(),
        None => false,
    };
    if !delivered {
        let result = CommandResult::failed(&command_id, DEVICE_OFFLINE);
        return finish(db, result, CommandStatus::Failed).await;
    }
    {
        let id = command_id.clone();
        db.run(move |conn| commands::mark_sent(conn, &id)).await?;
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => {
            let status = if result.success {
                CommandStatus::Success
            } else {
                CommandStatus::Failed
            };
            finish(db, result, status).await
        }
        // The sender is dropped only if the dispatcher stopped; treat it as no answer.
        Ok(Err(_)) | Err(_) => {
            let result = CommandResult::failed(
                &command_id,
                format!(
                    "no answer from the device within {} ms",
                    timeout.as_millis()
                ),
            );
            finish(db, result, CommandStatus::Timeout).await
        }
    }
}

async fn finish(
    db: &Db,
    result: CommandResult,
    status: CommandStatus,
) -> ApiResult<DispatchResponse> {
    let stored = result.clone();
    db.run(move |conn| commands::complete(conn, &stored, status))
        .await?;
    Ok(DispatchResponse { result, status })
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
        if known {
            tracing::debug!(
                device = %msg.device_id,
                command = %msg.progress.command_id,
                percent = msg.progress.percent,
                "command progress"
            );
        }
    }
}

impl Handler<StopWaiting> for CommandDispatcher {
    type Result = ();

    fn handle(&mut self, msg: StopWaiting, _: &mut Context<Self>) {
        self.waiting.remove(&msg.command_id);
    }
}
