//! The shell-template actor: runs the programs the server may ask for, `exec_shell`'s
//! allow-listed templates and the configured `reboot_os` / `shutdown_os` commands.
//!
//! The allow-list and the runner are plain code (`shell.rs`); this actor is the one place
//! that starts programs, so the command handler never spawns a process itself. A program runs
//! as a child process awaited on the event loop (tokio's process support), never a blocking
//! wait, and its timeout kills it.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;

use crate::shell::{self, Finished, ShellError};

/// Why a template did not run to an end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The template or an argument is not allowed; nothing was started.
    #[error("refused: {0}")]
    Refused(#[from] ShellError),
    /// The program could not be started.
    #[error("cannot start the program: {0}")]
    Start(#[from] std::io::Error),
}

/// Runs one `exec_shell` template with the command's arguments.
#[derive(Message)]
#[rtype(result = "Result<Finished, RunError>")]
pub struct RunTemplate {
    pub template: String,
    pub args: BTreeMap<String, Value>,
}

/// Runs a configured program (program first), as `reboot_os` and `shutdown_os` do.
#[derive(Message)]
#[rtype(result = "std::io::Result<Finished>")]
pub struct RunProgram {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// Starts programs; holds nothing, as every run is independent of the others.
#[derive(Default)]
pub struct ShellActor;

impl Actor for ShellActor {
    type Context = Context<Self>;
}

impl Handler<RunTemplate> for ShellActor {
    /// Not atomic: a slow program does not hold up the next message.
    type Result = ResponseFuture<Result<Finished, RunError>>;

    fn handle(&mut self, msg: RunTemplate, _ctx: &mut Self::Context) -> Self::Result {
        Box::pin(async move {
            let (template, args) = shell::build(&msg.template, &msg.args)?;
            let mut argv = vec![template.program.to_owned()];
            argv.extend(args);
            Ok(shell::run(&argv, template.timeout).await?)
        })
    }
}

impl Handler<RunProgram> for ShellActor {
    type Result = ResponseFuture<std::io::Result<Finished>>;

    fn handle(&mut self, msg: RunProgram, _ctx: &mut Self::Context) -> Self::Result {
        Box::pin(async move { shell::run(&msg.argv, msg.timeout).await })
    }
}
