//! Commands: the stored record and its queries. Every state change is a conditional update
//! (from the states it may leave), so a cancel and a delivery racing each other cannot both win.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::commands::{Command, CommandResult, CommandType};
use protocol::rest::{CommandRecord, CommandStatus, Page};
use schema::schema::commands;
use serde_json::Value;

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};

pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Longest a command may wait in the queue for an offline device.
pub const MAX_QUEUE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Queue time of a `queueIfOffline` command that names none.
pub const DEFAULT_QUEUE_TTL_MS: u64 = 3600 * 1000;
/// Output kept per command; a device may print far more, and the history is for people.
pub const MAX_STORED_OUTPUT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = commands)]
pub struct CommandRow {
    pub id: String,
    pub device_id: String,
    pub command_type: String,
    pub payload: String,
    pub status: String,
    pub success: Option<bool>,
    pub output: Option<String>,
    pub data: Option<String>,
    pub issued_by: Option<String>,
    pub timeout_ms: i64,
    pub created_at: NaiveDateTime,
    pub sent_at: Option<NaiveDateTime>,
    pub completed_at: Option<NaiveDateTime>,
    pub progress: Option<i64>,
    pub progress_message: Option<String>,
    pub expires_at: Option<NaiveDateTime>,
    pub confirm_previous: Option<String>,
    pub confirm_deadline: Option<NaiveDateTime>,
}

impl CommandRow {
    pub fn status(&self) -> StoreResult<CommandStatus> {
        CommandStatus::parse(&self.status)
            .ok_or_else(|| StoreError::internal(format!("bad command status {}", self.status)))
    }

    pub fn command(&self) -> StoreResult<Command> {
        serde_json::from_str(&self.payload).map_err(StoreError::internal)
    }

    pub fn to_api(&self) -> StoreResult<CommandRecord> {
        let command_type = self
            .command_type
            .parse::<CommandType>()
            .map_err(StoreError::internal)?;
        Ok(CommandRecord {
            id: self.id.clone(),
            device_id: self.device_id.clone(),
            command_type,
            payload: serde_json::from_str(&self.payload).unwrap_or(Value::Null),
            status: self.status()?,
            success: self.success,
            output: self.output.clone(),
            data: self
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok()),
            issued_by: self.issued_by.clone(),
            timeout_ms: self.timeout_ms,
            created_at: self.created_at.and_utc(),
            sent_at: self.sent_at.map(|t| t.and_utc()),
            completed_at: self.completed_at.map(|t| t.and_utc()),
            progress: self.progress,
            progress_message: self.progress_message.clone(),
            expires_at: self.expires_at.map(|t| t.and_utc()),
        })
    }

    /// The stored outcome as a device result.
    pub fn result(&self) -> CommandResult {
        CommandResult {
            command_id: self.id.clone(),
            success: self.success.unwrap_or(false),
            output: self.output.clone().unwrap_or_default(),
            data: self
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok()),
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, saying so at the end.
pub fn cap_output(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[truncated: {} of {} bytes kept]",
        &s[..end],
        end,
        s.len()
    )
}

pub fn unique_violation(e: diesel::result::Error, id: &str) -> StoreError {
    match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => StoreError::conflict(
            ErrorCode::DuplicateCommandId,
            format!("a command with id {id} already exists"),
        ),
        other => other.into(),
    }
}

pub fn insert_pending(
    conn: &mut DbConnection,
    device_id: &str,
    command: &Command,
    timeout_ms: i64,
    issued_by: Option<&str>,
) -> StoreResult<()> {
    insert(
        conn,
        device_id,
        command,
        timeout_ms,
        issued_by,
        CommandStatus::Pending,
    )
}

/// The identity a restart or reboot must change before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Nothing,
    RunId,
    BootId,
}

impl Watch {
    pub fn for_command(kind: CommandType) -> Watch {
        match kind {
            CommandType::RestartService => Watch::RunId,
            CommandType::RebootOs => Watch::BootId,
            _ => Watch::Nothing,
        }
    }

    /// The device's watched id as it is now.
    pub(crate) fn read(
        self,
        conn: &mut DbConnection,
        device_id: &str,
    ) -> StoreResult<Option<String>> {
        if self == Watch::Nothing {
            return Ok(None);
        }
        let row = crate::store::devices::find(conn, device_id)?;
        Ok(row.and_then(|r| match self {
            Watch::BootId => r.boot_id,
            _ => r.run_id,
        }))
    }
}

fn insert(
    conn: &mut DbConnection,
    device_id: &str,
    command: &Command,
    timeout_ms: i64,
    issued_by: Option<&str>,
    status: CommandStatus,
) -> StoreResult<()> {
    let row = new_row(device_id, command, timeout_ms, issued_by, status)?;
    diesel::insert_into(commands::table)
        .values(&row)
        .execute(conn)
        .map_err(|e| unique_violation(e, &command.id))?;
    Ok(())
}

/// The row a new command becomes, stamped now (and sent now when `status` is SENT).
pub fn new_row(
    device_id: &str,
    command: &Command,
    timeout_ms: i64,
    issued_by: Option<&str>,
    status: CommandStatus,
) -> StoreResult<CommandRow> {
    let now = Utc::now().naive_utc();
    Ok(CommandRow {
        id: command.id.clone(),
        device_id: device_id.to_owned(),
        command_type: command.command_type().as_str().to_owned(),
        payload: serde_json::to_string(command).map_err(StoreError::internal)?,
        status: status.as_str().to_owned(),
        success: None,
        output: None,
        data: None,
        issued_by: issued_by.map(str::to_owned),
        timeout_ms,
        created_at: now,
        sent_at: (status == CommandStatus::Sent).then_some(now),
        completed_at: None,
        progress: None,
        progress_message: None,
        expires_at: None,
        confirm_previous: None,
        confirm_deadline: None,
    })
}

pub fn names(states: &[CommandStatus]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

/// PENDING or QUEUED → SENT. `false` when the command was cancelled or expired meanwhile.
pub fn mark_sent(conn: &mut DbConnection, id: &str) -> StoreResult<bool> {
    let changed =
        diesel::update(commands::table.find(id).filter(
            commands::status.eq_any(names(&[CommandStatus::Pending, CommandStatus::Queued])),
        ))
        .set((
            commands::status.eq(CommandStatus::Sent.as_str()),
            commands::sent_at.eq(Some(Utc::now().naive_utc())),
        ))
        .execute(conn)?;
    Ok(changed == 1)
}

/// PENDING or SENT → QUEUED until `expires_at`.
pub fn mark_queued(
    conn: &mut DbConnection,
    id: &str,
    expires_at: DateTime<Utc>,
) -> StoreResult<bool> {
    let changed =
        diesel::update(commands::table.find(id).filter(
            commands::status.eq_any(names(&[CommandStatus::Pending, CommandStatus::Sent])),
        ))
        .set((
            commands::status.eq(CommandStatus::Queued.as_str()),
            commands::expires_at.eq(Some(expires_at.naive_utc())),
        ))
        .execute(conn)?;
    Ok(changed == 1)
}

/// Records an outcome, but only over a state that is not final yet.
pub fn complete(
    conn: &mut DbConnection,
    result: &CommandResult,
    status: CommandStatus,
) -> StoreResult<bool> {
    let open = names(&[
        CommandStatus::Pending,
        CommandStatus::Queued,
        CommandStatus::Sent,
        CommandStatus::Confirming,
    ]);
    let changed = diesel::update(
        commands::table
            .find(&result.command_id)
            .filter(commands::status.eq_any(open)),
    )
    .set((
        commands::status.eq(status.as_str()),
        commands::success.eq(Some(result.success)),
        commands::output.eq(Some(cap_output(&result.output, MAX_STORED_OUTPUT_BYTES))),
        commands::data.eq(result.data.as_ref().map(|d| d.to_string())),
        commands::completed_at.eq(if status.is_final() {
            Some(Utc::now().naive_utc())
        } else {
            None
        }),
    ))
    .execute(conn)?;
    Ok(changed == 1)
}

/// SENT → CONFIRMING, remembering what must change and by when.
pub fn start_confirming(
    conn: &mut DbConnection,
    result: &CommandResult,
    previous: Option<&str>,
    deadline: DateTime<Utc>,
) -> StoreResult<bool> {
    let changed = diesel::update(
        commands::table
            .find(&result.command_id)
            .filter(commands::status.eq(CommandStatus::Sent.as_str())),
    )
    .set((
        commands::status.eq(CommandStatus::Confirming.as_str()),
        commands::success.eq(Some(true)),
        commands::output.eq(Some(cap_output(&result.output, MAX_STORED_OUTPUT_BYTES))),
        commands::data.eq(result.data.as_ref().map(|d| d.to_string())),
        commands::confirm_previous.eq(previous),
        commands::confirm_deadline.eq(Some(deadline.naive_utc())),
    ))
    .execute(conn)?;
    Ok(changed == 1)
}

pub fn set_progress(
    conn: &mut DbConnection,
    id: &str,
    percent: u8,
    message: &str,
) -> StoreResult<()> {
    diesel::update(
        commands::table
            .find(id)
            .filter(commands::status.eq(CommandStatus::Sent.as_str())),
    )
    .set((
        commands::progress.eq(Some(i64::from(percent))),
        commands::progress_message.eq(Some(cap_output(message, 1024))),
    ))
    .execute(conn)?;
    Ok(())
}

/// PENDING or QUEUED → CANCELLED. A command already sent cannot be called back.
pub fn cancel(
    conn: &mut DbConnection,
    device_id: &str,
    id: &str,
    by: &str,
) -> StoreResult<CommandRow> {
    let changed = diesel::update(
        commands::table
            .filter(commands::id.eq(id))
            .filter(commands::device_id.eq(device_id))
            .filter(
                commands::status.eq_any(names(&[CommandStatus::Pending, CommandStatus::Queued])),
            ),
    )
    .set((
        commands::status.eq(CommandStatus::Cancelled.as_str()),
        commands::success.eq(Some(false)),
        commands::output.eq(Some(format!("cancelled by {by}"))),
        commands::completed_at.eq(Some(Utc::now().naive_utc())),
    ))
    .execute(conn)?;
    let row = find(conn, device_id, id)?.ok_or_else(|| {
        StoreError::not_found(ErrorCode::CommandNotFound, "no such command on this device")
    })?;
    if changed == 0 {
        return Err(StoreError::conflict(
            ErrorCode::CommandNotCancellable,
            format!(
                "command is {}; only PENDING or QUEUED commands can be cancelled",
                row.status
            ),
        ));
    }
    Ok(row)
}

/// Queued commands of a device, oldest first.
pub fn queued_for_device(conn: &mut DbConnection, device_id: &str) -> StoreResult<Vec<CommandRow>> {
    Ok(commands::table
        .filter(commands::device_id.eq(device_id))
        .filter(commands::status.eq(CommandStatus::Queued.as_str()))
        .order((commands::created_at.asc(), commands::id.asc()))
        .select(CommandRow::as_select())
        .load(conn)?)
}

/// QUEUED past its time → EXPIRED; returns the ids that expired.
pub fn expire_queued(
    conn: &mut DbConnection,
    now: DateTime<Utc>,
) -> StoreResult<Vec<(String, String)>> {
    let due: Vec<(String, String)> = commands::table
        .filter(commands::status.eq(CommandStatus::Queued.as_str()))
        .filter(commands::expires_at.lt(now.naive_utc()))
        .select((commands::id, commands::device_id))
        .load(conn)?;
    let mut expired = Vec::new();
    for (id, device_id) in due {
        let changed = diesel::update(
            commands::table
                .find(&id)
                .filter(commands::status.eq(CommandStatus::Queued.as_str())),
        )
        .set((
            commands::status.eq(CommandStatus::Expired.as_str()),
            commands::success.eq(Some(false)),
            commands::output.eq(Some(
                "the device did not connect before the queue time ran out",
            )),
            commands::completed_at.eq(Some(now.naive_utc())),
        ))
        .execute(conn)?;
        if changed == 1 {
            expired.push((id, device_id));
        }
    }
    Ok(expired)
}

/// How long past its timeout a PENDING or SENT command no dispatch awaits is left alone: a
/// bulk or deployment row is stored before its dispatch starts, and that start may queue.
pub const ABANDON_GRACE: chrono::Duration = chrono::Duration::seconds(10);

/// PENDING and SENT commands past their timeout (counted from when they were sent, or
/// stored if never sent) plus `ABANDON_GRACE`, as (id, device id). A live dispatch ends its
/// command at the timeout, so these are the ones a dispatch stopped awaiting without
/// storing an outcome: the server was killed, or the database failed the final write.
pub fn overdue_in_flight(
    conn: &mut DbConnection,
    now: DateTime<Utc>,
) -> StoreResult<Vec<(String, String)>> {
    let rows: Vec<(String, String, i64, NaiveDateTime, Option<NaiveDateTime>)> = commands::table
        .filter(commands::status.eq_any(names(&[CommandStatus::Pending, CommandStatus::Sent])))
        .select((
            commands::id,
            commands::device_id,
            commands::timeout_ms,
            commands::created_at,
            commands::sent_at,
        ))
        .load(conn)?;
    let now = now.naive_utc();
    Ok(rows
        .into_iter()
        .filter(|(_, _, timeout_ms, created, sent)| {
            let since = sent.unwrap_or(*created);
            since + chrono::Duration::milliseconds(*timeout_ms) + ABANDON_GRACE < now
        })
        .map(|(id, device_id, ..)| (id, device_id))
        .collect())
}

/// PENDING or SENT → TIMEOUT for a command whose dispatch is gone; `false` when it ended
/// meanwhile.
pub fn abandon(conn: &mut DbConnection, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
    let changed =
        diesel::update(commands::table.find(id).filter(
            commands::status.eq_any(names(&[CommandStatus::Pending, CommandStatus::Sent])),
        ))
        .set((
            commands::status.eq(CommandStatus::Timeout.as_str()),
            commands::success.eq(Some(false)),
            commands::output.eq(Some(ABANDONED_OUTPUT)),
            commands::completed_at.eq(Some(now.naive_utc())),
        ))
        .execute(conn)?;
    Ok(changed == 1)
}

/// The output of a command `abandon` ended.
pub const ABANDONED_OUTPUT: &str =
    "no outcome was stored within the timeout: the server restarted or lost its database while the command was in flight";

/// Commands waiting for a device to come back (after a server restart, from the database).
pub fn confirming(conn: &mut DbConnection) -> StoreResult<Vec<CommandRow>> {
    Ok(commands::table
        .filter(commands::status.eq(CommandStatus::Confirming.as_str()))
        .select(CommandRow::as_select())
        .load(conn)?)
}

pub fn find_by_id(conn: &mut DbConnection, id: &str) -> StoreResult<Option<CommandRow>> {
    Ok(commands::table
        .find(id)
        .select(CommandRow::as_select())
        .first(conn)
        .optional()?)
}

/// What a single dispatch checks before storing a command, in one statement (one round trip,
/// one transaction): that the device `device_id` exists (else the 404 `device_not_found`), and
/// the command already stored under `id`, if any, for answering a retry from the record.
pub fn device_and_command(
    conn: &mut DbConnection,
    device_id: &str,
    id: &str,
) -> StoreResult<Option<CommandRow>> {
    use schema::schema::devices;
    devices::table
        .left_join(commands::table.on(commands::id.eq(id)))
        .filter(devices::id.eq(device_id))
        .select(Option::<CommandRow>::as_select())
        .first::<Option<CommandRow>>(conn)
        .optional()?
        .ok_or_else(crate::store::devices::not_found)
}

pub fn find(conn: &mut DbConnection, device_id: &str, id: &str) -> StoreResult<Option<CommandRow>> {
    Ok(commands::table
        .filter(commands::device_id.eq(device_id))
        .filter(commands::id.eq(id))
        .select(CommandRow::as_select())
        .first(conn)
        .optional()?)
}

/// Filters of a device's history.
#[derive(Debug, Default, Clone)]
pub struct HistoryFilter {
    pub status: Option<CommandStatus>,
    pub command_type: Option<CommandType>,
}

pub fn list_for_device(
    conn: &mut DbConnection,
    device_id: &str,
    filter: &HistoryFilter,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<CommandRecord>> {
    let filtered = || {
        let mut query = commands::table
            .filter(commands::device_id.eq(device_id.to_owned()))
            .into_boxed();
        if let Some(status) = filter.status {
            query = query.filter(commands::status.eq(status.as_str()));
        }
        if let Some(t) = filter.command_type {
            query = query.filter(commands::command_type.eq(t.as_str()));
        }
        query
    };
    let total = filtered().count().get_result(conn)?;
    let rows: Vec<CommandRow> = filtered()
        .order((commands::created_at.desc(), commands::id.desc()))
        .limit(limit)
        .offset(offset)
        .select(CommandRow::as_select())
        .load(conn)?;
    let items = rows
        .iter()
        .map(CommandRow::to_api)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { items, total })
}

/// Stores PENDING commands with their audit rows, all in one write transaction, before any
/// is sent; `planned` and `entries` pair up by position. One multi-row statement per table
/// and chunk, not two statements per command: a bulk dispatch to 10,000 devices is 40.
pub fn insert_pending_audited(
    conn: &mut DbConnection,
    planned: &[(String, Command)],
    entries: &[crate::store::audit::AuditEntry],
    timeout_ms: i64,
    issued_by: Option<&str>,
    sent: &std::collections::HashSet<String>,
) -> StoreResult<()> {
    let mut rows = Vec::with_capacity(planned.len());
    for (device_id, command) in planned {
        // A device whose session is open gets its row as SENT at once (see `command_batch`).
        let status = if sent.contains(device_id) {
            CommandStatus::Sent
        } else {
            CommandStatus::Pending
        };
        rows.push(new_row(device_id, command, timeout_ms, issued_by, status)?);
    }
    let audits: Vec<_> = entries.iter().map(crate::store::audit::row_of).collect();
    crate::store::db::write_transaction(conn, |conn| {
        for (commands, audits) in rows
            .chunks(crate::store::command_batch::CHUNK)
            .zip(audits.chunks(crate::store::command_batch::CHUNK))
        {
            crate::store::audit::insert_rows(conn, audits)?;
            crate::store::command_batch::insert_commands(conn, commands).map_err(|e| {
                let id = commands.first().map(|c| c.id.as_str()).unwrap_or_default();
                unique_violation(e, id)
            })?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::cap_output;

    #[test]
    fn output_is_capped_on_a_char_boundary() {
        let long = "é".repeat(100);
        let capped = cap_output(&long, 51);
        assert!(capped.starts_with(&"é".repeat(25)));
        assert!(capped.contains("[truncated: 50 of 200 bytes kept]"));
        assert_eq!(cap_output("short", 10), "short");
    }
}
