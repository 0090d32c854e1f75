//! The command handler actor: runs server commands once each and remembers their results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, ActorFutureExt, Addr, AtomicResponse, Context, Handler, Message, WrapFuture};
use protocol::commands::{Command, CommandKind, CommandResult};
use serde_json::json;

use crate::store::{GetResult, PutResult, StoreActor};

/// Runs one command, or answers with the stored result of an earlier run of the same id.
#[derive(Message)]
#[rtype(result = "CommandResult")]
pub struct Execute(pub Command);

/// Executes commands. Messages are handled one at a time (`AtomicResponse`), so two
/// deliveries of the same id cannot both miss the stored result and both run.
pub struct CommandHandler {
    store: Addr<StoreActor>,
    runs: Arc<AtomicU64>,
}

impl CommandHandler {
    pub fn new(store: Addr<StoreActor>) -> Self {
        CommandHandler {
            store,
            runs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A counter of commands actually run (not answered from the store).
    #[cfg(test)]
    pub fn runs(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.runs)
    }

    /// Runs a command that has no stored result yet.
    fn run(&self, command: &Command) -> CommandResult {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let id = command.id.clone();
        if let Err(reason) = command.validate() {
            return CommandResult::failed(id, format!("invalid command: {reason}"));
        }
        match &command.kind {
            // The offline queue comes later; until then there is never anything to send.
            CommandKind::ForceSync => CommandResult::ok(id, "Force-sync completed. Pending: 0")
                .with_data(json!({"pending": 0, "sent": 0})),
            other => CommandResult::failed(
                id,
                format!(
                    "{} is not supported by this agent version",
                    other.command_type()
                ),
            ),
        }
    }
}

impl Actor for CommandHandler {
    type Context = Context<Self>;
}

impl Handler<Execute> for CommandHandler {
    type Result = AtomicResponse<Self, CommandResult>;

    fn handle(&mut self, Execute(command): Execute, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
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
                    Ok(Ok(None)) => Ok(act.run(&command)),
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
                        Err(answer) => answer,
                        Ok(fresh) => {
                            // The command has run; its result goes back even if saving fails.
                            match store
                                .send(PutResult {
                                    result: fresh.clone(),
                                })
                                .await
                            {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => tracing::error!(
                                    command_id = %fresh.command_id,
                                    "cannot store command result: {e}"
                                ),
                                Err(e) => tracing::error!(
                                    command_id = %fresh.command_id,
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
    use actix::SyncArbiter;

    use super::*;
    use crate::store::tests::temp_dir;
    use crate::store::Store;

    fn handler() -> (Addr<CommandHandler>, Arc<AtomicU64>) {
        let store = Store::open(&temp_dir()).unwrap();
        let store = SyncArbiter::start(1, crate::store::StoreActor::factory(store));
        let handler = CommandHandler::new(store);
        let runs = handler.runs();
        (handler.start(), runs)
    }

    #[actix::test]
    async fn force_sync_reports_an_empty_queue() {
        let (addr, _) = handler();
        let result = addr
            .send(Execute(Command::new("fs-1", CommandKind::ForceSync)))
            .await
            .unwrap();
        assert_eq!(result.command_id, "fs-1");
        assert!(result.success);
        assert_eq!(result.output, "Force-sync completed. Pending: 0");
        assert_eq!(result.data, Some(json!({"pending": 0, "sent": 0})));
    }

    #[actix::test]
    async fn the_same_id_runs_once() {
        let (addr, runs) = handler();
        let command = Command::new("dup-1", CommandKind::ForceSync);
        let first = addr.send(Execute(command.clone())).await.unwrap();
        let second = addr.send(Execute(command)).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(runs.load(Ordering::Relaxed), 1);

        // Delivered concurrently, still once.
        let command = Command::new("dup-2", CommandKind::ForceSync);
        let (a, b) = futures_util::future::join(
            addr.send(Execute(command.clone())),
            addr.send(Execute(command)),
        )
        .await;
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(runs.load(Ordering::Relaxed), 2);
    }

    #[actix::test]
    async fn unsupported_commands_are_refused_and_remembered() {
        let (addr, runs) = handler();
        let command = Command::new("rb-1", CommandKind::RebootOs);
        let result = addr.send(Execute(command.clone())).await.unwrap();
        assert!(!result.success);
        assert_eq!(
            result.output,
            "reboot_os is not supported by this agent version"
        );
        assert_eq!(result.data, None);
        let again = addr.send(Execute(command)).await.unwrap();
        assert_eq!(again, result);
        assert_eq!(runs.load(Ordering::Relaxed), 1);
    }

    #[actix::test]
    async fn invalid_commands_are_refused_with_the_reason() {
        let (addr, _) = handler();
        let command = Command::new("dd-1", CommandKind::DisableDevice { reason: " ".into() });
        let result = addr.send(Execute(command)).await.unwrap();
        assert!(!result.success);
        assert!(
            result.output.starts_with("invalid command:"),
            "{}",
            result.output
        );
    }
}
