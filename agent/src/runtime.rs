//! Starts the agent's actors and wires them to each other.
//!
//! The connection and the actors that send events through it need each other's addresses,
//! so the connection's context is made first and its actor runs last.

use std::sync::atomic::AtomicU8;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::watch;

use crate::commands::{CommandHandler, Deps};
use crate::config::{Config, ConfigSource};
use crate::connection::{Connection, Identity};
use crate::drain::Drain;
use crate::logs::LogControl;
use crate::production::Production;
use crate::status::StatusReporter;
use crate::store::{Store, StoreActor};
use crate::updater::Updater;

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
    let store = SyncArbiter::start(1, StoreActor::factory(store));
    let exit_code = Arc::new(AtomicU8::new(0));

    let connection_ctx = Context::<Connection>::new();
    let connection = connection_ctx.address();
    let drain = Drain::new(
        store.clone(),
        config_rx.clone(),
        connection.clone().recipient(),
    )
    .start();
    let status = StatusReporter::new(
        store.clone(),
        connection.clone().recipient(),
        identity.clone(),
        config_rx.clone(),
    )
    .start();
    let production = Production::new(
        store.clone(),
        connection.clone().recipient(),
        drain.clone(),
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
        drain,
        events: connection.clone().recipient(),
        config_changed: connection.clone().recipient(),
        status: status.clone(),
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
        commands.clone(),
        status,
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
