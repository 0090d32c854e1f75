//! A group of command state changes written in one transaction: the command writer's commit.
//!
//! New rows (PENDING or SENT, each with its audit row), SENT transitions, outcomes, queueing
//! and confirmations of many commands share one commit, so a busy server pays one fsync for
//! many commands rather than one or two each. Alike changes are written by multi-row
//! statements; every change keeps the condition of its single-row form in `commands` (a result
//! never overwrites a final state). A multi-row statement must touch every row it names. A
//! group is first written without savepoints, which cost two round trips a statement; when a
//! statement's row is refused (a duplicate id) or no longer in a state it may leave (a cancel
//! came first), that transaction is rolled back and the group written again with each
//! multi-row statement in a savepoint, whose refused ones are rolled back and their rows
//! written one at a time, so each change is answered exactly as if it had been alone.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use protocol::commands::{Command, CommandResult};
use protocol::rest::CommandStatus;
use schema::schema::commands;

use crate::store::audit::{self, AuditEntry};
use crate::store::commands::{self as cmds, cap_output, names, Watch, MAX_STORED_OUTPUT_BYTES};
use crate::store::db::DbConnection;
use crate::store::error::{StoreError, StoreResult};

/// Rows per multi-row statement: 500 commands of 18 columns stay far below the bind-parameter
/// limits of SQLite (32,766) and PostgreSQL (65,535).
pub const CHUNK: usize = 500;

/// A new command and its audit row; SENT when its device's session is open, else PENDING.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub device_id: String,
    pub command: Command,
    pub timeout_ms: i64,
    pub issued_by: Option<String>,
    pub audit: AuditEntry,
    pub online: bool,
    pub watch: Watch,
}

/// One change to one command.
#[derive(Debug, Clone)]
pub enum Write {
    /// Store a new command (`commands::store_new`).
    New(Box<NewCommand>),
    /// PENDING or QUEUED → SENT, the watched id read first (`commands::send_stored`).
    Send {
        id: String,
        device_id: String,
        watch: Watch,
    },
    /// PENDING or SENT → QUEUED (`commands::mark_queued`).
    Queue {
        id: String,
        expires_at: DateTime<Utc>,
    },
    /// An outcome over a state that is not final (`commands::complete`).
    Complete {
        result: CommandResult,
        status: CommandStatus,
    },
    /// SENT → CONFIRMING (`commands::start_confirming`).
    Confirm {
        result: CommandResult,
        previous: Option<String>,
        deadline: DateTime<Utc>,
    },
    /// `pg_notify` sent by the group's commit, after the changes queued before it: a command
    /// handed to another replica is announced by the commit that stores it, with no round trip
    /// of its own (`leases::notify`; nothing on SQLite).
    Notify { channel: String, payload: String },
}

/// What a change answers, as its single-row form would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Stored; the watched id as it was before the command could act.
    Stored(Option<String>),
    /// Sent, with the watched id; `None` when the command was cancelled or expired meanwhile.
    Sent(Option<Option<String>>),
    /// Whether the conditional update changed the row.
    Changed(bool),
}

/// Applies `writes` in one write transaction and answers each by position. An error of the
/// whole (the connection, the commit) is the outer `Err`: then nothing of it was stored.
pub fn apply(conn: &mut DbConnection, writes: &[Write]) -> StoreResult<Vec<StoreResult<Done>>> {
    let first = crate::store::db::write_transaction(conn, |c| apply_in(c, writes, Mode::Bare));
    match first {
        Ok(done) => Ok(done),
        Err(Abort::Failed(e)) => Err(e),
        Err(Abort::Careful) => {
            crate::store::db::write_transaction(conn, |c| apply_in(c, writes, Mode::Careful))
                .map_err(|e| match e {
                    Abort::Failed(e) => e,
                    Abort::Careful => StoreError::internal("a careful write asked to be careful"),
                })
        }
    }
}

/// How the multi-row statements of a group run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// As they are: the first statement refused abandons the whole transaction (`Abort::Careful`).
    Bare,
    /// Each in a savepoint, its rows one at a time when it is refused.
    Careful,
}

/// Why a group's transaction ended without its commit.
#[derive(Debug)]
enum Abort {
    /// A statement was refused in `Mode::Bare`: write the group again, carefully.
    Careful,
    Failed(StoreError),
}

impl From<DieselError> for Abort {
    fn from(e: DieselError) -> Abort {
        Abort::Failed(e.into())
    }
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Abort {
        Abort::Failed(e)
    }
}

/// Runs one multi-row statement the way `mode` says; its own error (or rollback) is the inner
/// one, which only `Mode::Careful` answers, having rolled its savepoint back.
fn together<T>(
    conn: &mut DbConnection,
    mode: Mode,
    f: impl FnOnce(&mut DbConnection) -> QueryResult<T>,
) -> Result<QueryResult<T>, Abort> {
    match mode {
        Mode::Careful => Ok(conn.transaction(f)),
        Mode::Bare => f(conn).map(Ok).map_err(|_| Abort::Careful),
    }
}

fn apply_in(
    conn: &mut DbConnection,
    writes: &[Write],
    mode: Mode,
) -> Result<Vec<StoreResult<Done>>, Abort> {
    let mut done: Vec<Option<StoreResult<Done>>> = writes.iter().map(|_| None).collect();
    store_new(conn, writes, &mut done, mode)?;
    send(conn, writes, &mut done, mode)?;
    complete(conn, writes, &mut done, mode)?;
    for (slot, write) in done.iter_mut().zip(writes) {
        match write {
            Write::Queue { id, expires_at } => {
                *slot = Some(Ok(Done::Changed(cmds::mark_queued(conn, id, *expires_at)?)));
            }
            Write::Confirm {
                result,
                previous,
                deadline,
            } => {
                let changed = cmds::start_confirming(conn, result, previous.as_deref(), *deadline)?;
                *slot = Some(Ok(Done::Changed(changed)));
            }
            Write::Notify { channel, payload } => {
                crate::store::leases::notify(conn, channel, payload)?;
                *slot = Some(Ok(Done::Changed(true)));
            }
            _ => {}
        }
    }
    Ok(done
        .into_iter()
        .map(|d| d.unwrap_or_else(|| Err(StoreError::internal("a command write was lost"))))
        .collect())
}

/// The rows of a multi-row statement did not all change: roll its savepoint back.
fn all_or_rollback(changed: usize, expected: usize) -> QueryResult<()> {
    if changed == expected {
        Ok(())
    } else {
        Err(DieselError::RollbackTransaction)
    }
}

fn store_new(
    conn: &mut DbConnection,
    writes: &[Write],
    done: &mut [Option<StoreResult<Done>>],
    mode: Mode,
) -> Result<(), Abort> {
    let mut rows = Vec::new();
    for (i, write) in writes.iter().enumerate() {
        let Write::New(new) = write else { continue };
        // Read before the command can act, in the transaction that makes it SENT.
        let previous = if new.online {
            new.watch.read(conn, &new.device_id)?
        } else {
            None
        };
        let status = if new.online {
            CommandStatus::Sent
        } else {
            CommandStatus::Pending
        };
        match cmds::new_row(
            &new.device_id,
            &new.command,
            new.timeout_ms,
            new.issued_by.as_deref(),
            status,
        ) {
            Ok(row) => rows.push((i, audit::row_of(&new.audit), row, previous)),
            Err(e) => done[i] = Some(Err(e)),
        }
    }
    for chunk in rows.chunks(CHUNK) {
        let audits: Vec<_> = chunk.iter().map(|(_, a, _, _)| a.clone()).collect();
        let commands: Vec<_> = chunk.iter().map(|(_, _, c, _)| c.clone()).collect();
        let outcome = together(conn, mode, |c| {
            audit::insert_rows(c, &audits)?;
            insert_commands(c, &commands)
        })?;
        match outcome {
            Ok(_) => {
                for (i, _, _, previous) in chunk {
                    done[*i] = Some(Ok(Done::Stored(previous.clone())));
                }
            }
            Err(_) => {
                // One of them is refused (a duplicate id): each alone, so only that one fails.
                for (i, audit_row, row, previous) in chunk {
                    let alone = conn.transaction(|c| {
                        audit::insert_rows(c, std::slice::from_ref(audit_row))?;
                        insert_commands(c, std::slice::from_ref(row))
                    });
                    done[*i] = Some(match alone {
                        Ok(_) => Ok(Done::Stored(previous.clone())),
                        Err(e) => Err(cmds::unique_violation(e, &row.id)),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Writes `rows` with one multi-row statement (at most `CHUNK` of them).
pub(crate) fn insert_commands(
    conn: &mut DbConnection,
    rows: &[cmds::CommandRow],
) -> QueryResult<usize> {
    crate::on_backend!(conn, |c| diesel::insert_into(commands::table)
        .values(rows)
        .execute(c))
}

fn send(
    conn: &mut DbConnection,
    writes: &[Write],
    done: &mut [Option<StoreResult<Done>>],
    mode: Mode,
) -> Result<(), Abort> {
    let mut sends = Vec::new();
    for (i, write) in writes.iter().enumerate() {
        if let Write::Send {
            id,
            device_id,
            watch,
        } = write
        {
            sends.push((i, id.as_str(), watch.read(conn, device_id)?));
        }
    }
    let now = Utc::now().naive_utc();
    for chunk in sends.chunks(CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|(_, id, _)| *id).collect();
        let outcome = together(conn, mode, |c| {
            let changed = diesel::update(commands::table.filter(commands::id.eq_any(&ids)).filter(
                commands::status.eq_any(names(&[CommandStatus::Pending, CommandStatus::Queued])),
            ))
            .set((
                commands::status.eq(CommandStatus::Sent.as_str()),
                commands::sent_at.eq(Some(now)),
            ))
            .execute(c)?;
            all_or_rollback(changed, ids.len())
        })?;
        match outcome {
            Ok(()) => {
                for (i, _, previous) in chunk {
                    done[*i] = Some(Ok(Done::Sent(Some(previous.clone()))));
                }
            }
            Err(DieselError::RollbackTransaction) => {
                for (i, id, previous) in chunk {
                    let sent = cmds::mark_sent(conn, id)?;
                    done[*i] = Some(Ok(Done::Sent(sent.then(|| previous.clone()))));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What an outcome writes besides its status; outcomes alike are written by one statement.
type OutcomeKey = (&'static str, bool, String, Option<String>);

fn complete(
    conn: &mut DbConnection,
    writes: &[Write],
    done: &mut [Option<StoreResult<Done>>],
    mode: Mode,
) -> Result<(), Abort> {
    let mut alike: HashMap<OutcomeKey, Vec<(usize, &CommandResult, CommandStatus)>> =
        HashMap::new();
    for (i, write) in writes.iter().enumerate() {
        if let Write::Complete { result, status } = write {
            let key = (
                status.as_str(),
                result.success,
                cap_output(&result.output, MAX_STORED_OUTPUT_BYTES),
                result.data.as_ref().map(|d| d.to_string()),
            );
            alike.entry(key).or_default().push((i, result, *status));
        }
    }
    let now = Utc::now().naive_utc();
    for (key, group) in &alike {
        let status = group[0].2;
        for chunk in group.chunks(CHUNK) {
            let ids: Vec<&str> = chunk
                .iter()
                .map(|(_, r, _)| r.command_id.as_str())
                .collect();
            let outcome = together(conn, mode, |c| {
                let changed = complete_all(c, &ids, key, status.is_final().then_some(now))?;
                all_or_rollback(changed, ids.len())
            })?;
            match outcome {
                Ok(()) => {
                    for (i, _, _) in chunk {
                        done[*i] = Some(Ok(Done::Changed(true)));
                    }
                }
                Err(DieselError::RollbackTransaction) => {
                    for (i, result, status) in chunk {
                        let changed = cmds::complete(conn, result, *status)?;
                        done[*i] = Some(Ok(Done::Changed(changed)));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// `commands::complete` for many commands with the same outcome.
fn complete_all(
    conn: &mut DbConnection,
    ids: &[&str],
    (status, success, output, data): &OutcomeKey,
    completed_at: Option<NaiveDateTime>,
) -> QueryResult<usize> {
    let open = names(&[
        CommandStatus::Pending,
        CommandStatus::Queued,
        CommandStatus::Sent,
        CommandStatus::Confirming,
    ]);
    diesel::update(
        commands::table
            .filter(commands::id.eq_any(ids))
            .filter(commands::status.eq_any(open)),
    )
    .set((
        commands::status.eq(*status),
        commands::success.eq(Some(*success)),
        commands::output.eq(Some(output.as_str())),
        commands::data.eq(data.as_deref()),
        commands::completed_at.eq(completed_at),
    ))
    .execute(conn)
}
