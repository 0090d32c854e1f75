//! Starts the agent's actors and wires them to each other.
//!
//! This is the one file that knows every actor. Each actor gets the addresses of the actors it
//! sends to, and a `Recipient` where the receiver would otherwise have to be imported by its
//! sender: everything that reaches the server goes through the connection as a
//! `Recipient<SendEvent>`, and the connection hands commands to the command handler as a
//! `Recipient<Execute>`. The connection and the actors that send events through it need
//! each other's addresses, so the connection's context is made first and its actor runs last.

use std::sync::atomic::AtomicU8;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::watch;

use crate::actors::commands::{CommandHandler, Deps};
use crate::actors::connection::Connection;
use crate::actors::drain::Drain;
use crate::actors::printer::Printer;
use crate::actors::production::Production;
use crate::actors::queue::QueueActor;
use crate::actors::shell::ShellActor;
use crate::actors::status::StatusReporter;
use crate::actors::store::StoreActor;
use crate::actors::updater::Updater;
use crate::config::{Config, ConfigSource};
use crate::identity::Identity;
use crate::logs::LogControl;
use crate::store::{Shared, Store};

/// Addresses of the running actors.
pub struct Agent {
    #[cfg(test)]
    pub store: Addr<StoreActor>,
    pub connection: Addr<Connection>,
    pub production: Addr<Production>,
    #[cfg(test)]
    pub commands: Addr<CommandHandler>,
    /// Non-zero when a command asked the process to exit with that code.
    pub exit_code: Arc<AtomicU8>,
    /// Commands actually run (not answered from the store).
    #[cfg(test)]
    pub runs: Arc<std::sync::atomic::AtomicU64>,
}

/// Starts every actor; must run inside an actix system. `config` is the effective
/// configuration (pushed settings included) and `source` the layers below the pushed ones.
pub fn start(
    config: Config,
    source: ConfigSource,
    store: Store,
    identity: Identity,
    logs: LogControl,
) -> Agent {
    let (config_tx, config_rx) = watch::channel(config.clone());
    // One thread each: the store and the queue share one connection, whose lock keeps their
    // calls apart, and a single thread per actor keeps each actor's messages in order.
    let shared = Shared::new(store);
    let store = SyncArbiter::start(1, StoreActor::factory(shared.clone()));
    let queue = SyncArbiter::start(1, QueueActor::factory(shared));
    let shell = ShellActor.start();
    let exit_code = Arc::new(AtomicU8::new(0));

    let connection_ctx = Context::<Connection>::new();
    let connection = connection_ctx.address();
    let drain = Drain::new(
        store.clone(),
        queue.clone(),
        config_rx.clone(),
        connection.clone().recipient(),
    )
    .start();
    let status = StatusReporter::new(
        queue.clone(),
        connection.clone().recipient(),
        identity.clone(),
        config_rx.clone(),
    )
    .start();
    // Only with a printer configured: without one no label is ever queued.
    let printer = config.printer.clone().map(|printer| {
        Printer::new(
            queue.clone(),
            connection.clone().recipient(),
            config_rx.clone(),
            printer,
        )
        .start()
    });
    let production = Production::new(
        queue.clone(),
        connection.clone().recipient(),
        drain.clone(),
        printer,
        config_rx.clone(),
    )
    .start();
    let updater = Updater::new(
        store.clone(),
        connection.clone().recipient(),
        config_rx,
        identity.version.clone(),
    )
    .start();
    let handler = CommandHandler::new(Deps {
        updater,
        store: store.clone(),
        queue,
        drain,
        shell,
        events: connection.clone().recipient(),
        config_changed: connection.clone().recipient(),
        status: status.clone().recipient(),
        config: Arc::new(config_tx),
        running: identity.version.clone(),
        source,
        logs,
        downloads: Default::default(),
    });
    #[cfg(test)]
    let runs = handler.runs();
    let commands = handler.start();
    connection_ctx.run(Connection::new(
        config,
        store.clone(),
        commands.clone().recipient(),
        status.recipient(),
        exit_code.clone(),
        identity.version.clone(),
    ));
    Agent {
        #[cfg(test)]
        store,
        connection,
        production,
        #[cfg(test)]
        commands,
        exit_code,
        #[cfg(test)]
        runs,
    }
}
