//! The messages that travel "up" between the agent's actors: to the connection (events,
//! settings, re-enrollment, shutdown), to the status reporter and to the command handler.
//!
//! They live apart from the actors that handle them so that a sender holds a
//! `Recipient<M>` and never imports its receiver's module: the command handler answers
//! through the connection, and the connection hands commands to the handler, without either
//! file knowing the other. Messages an actor only receives from the actors that start it
//! (the store, the queue, the drain, the shell runner, the updater) stay in that actor's file.

use actix::Message;
use protocol::commands::{Command, CommandResult};
use protocol::device::DeviceEvent;

use crate::config::Config;

/// An event for the server: sent when a session is open, dropped otherwise (records never
/// travel as events, so nothing that must survive is lost). Telemetry is coalesced and
/// paced (`outbox`); command results and progress go out at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendEvent(pub DeviceEvent);

/// New settings after a `push_config`. The server URL is not among the settings a push may
/// change (`remote_config::REMOTE_SETTINGS`), so the session stays where it is.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConfigChanged(pub Config);

/// Closes the socket with a normal close frame and stops the system.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The upstream refused the device token; the connection enrolls again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reenroll;

/// Send a status now (after `hello`, or after production was switched).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReportNow;

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
