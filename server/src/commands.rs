//! Commands: the stored record, its queries, and the dispatch and history routes.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::commands::{Command, CommandResult, CommandType};
use protocol::rest::{CommandRecord, CommandStatus, DispatchRequest, Envelope, Page, Role};
use schema::schema::commands;
use serde::Deserialize;
use serde_json::Value;

use crate::audit::{self, AuditEntry};
use crate::auth::{Authorized, DispatchCommands, ViewCommands};
use crate::db::DbConnection;
use crate::devices;
use crate::dispatcher::Dispatch;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;

pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
pub const MAX_TIMEOUT_MS: u64 = 600_000;
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
}

impl CommandRow {
    pub fn to_api(&self) -> ApiResult<CommandRecord> {
        let command_type = self
            .command_type
            .parse::<CommandType>()
            .map_err(ApiError::internal)?;
        let status = CommandStatus::parse(&self.status)
            .ok_or_else(|| ApiError::internal(format!("bad command status {}", self.status)))?;
        Ok(CommandRecord {
            id: self.id.clone(),
            device_id: self.device_id.clone(),
            command_type,
            payload: serde_json::from_str(&self.payload).unwrap_or(Value::Null),
            status,
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
        })
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

pub fn insert_pending(
    conn: &mut DbConnection,
    device_id: &str,
    command: &Command,
    timeout_ms: i64,
    issued_by: Option<&str>,
) -> ApiResult<()> {
    let row = CommandRow {
        id: command.id.clone(),
        device_id: device_id.to_owned(),
        command_type: command.command_type().as_str().to_owned(),
        payload: serde_json::to_string(command).map_err(ApiError::internal)?,
        status: CommandStatus::Pending.as_str().to_owned(),
        success: None,
        output: None,
        data: None,
        issued_by: issued_by.map(str::to_owned),
        timeout_ms,
        created_at: Utc::now().naive_utc(),
        sent_at: None,
        completed_at: None,
    };
    diesel::insert_into(commands::table)
        .values(&row)
        .execute(conn)
        .map_err(|e| match e {
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ) => ApiError::conflict(
                ErrorCode::DuplicateCommandId,
                format!("a command with id {} already exists", command.id),
            ),
            other => other.into(),
        })?;
    Ok(())
}

pub fn mark_sent(conn: &mut DbConnection, id: &str) -> ApiResult<()> {
    diesel::update(commands::table.find(id))
        .set((
            commands::status.eq(CommandStatus::Sent.as_str()),
            commands::sent_at.eq(Some(Utc::now().naive_utc())),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn complete(
    conn: &mut DbConnection,
    result: &CommandResult,
    status: CommandStatus,
) -> ApiResult<()> {
    diesel::update(commands::table.find(&result.command_id))
        .set((
            commands::status.eq(status.as_str()),
            commands::success.eq(Some(result.success)),
            commands::output.eq(Some(cap_output(&result.output, MAX_STORED_OUTPUT_BYTES))),
            commands::data.eq(result.data.as_ref().map(|d| d.to_string())),
            commands::completed_at.eq(Some(Utc::now().naive_utc())),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn find(conn: &mut DbConnection, device_id: &str, id: &str) -> ApiResult<Option<CommandRow>> {
    Ok(commands::table
        .filter(commands::device_id.eq(device_id))
        .filter(commands::id.eq(id))
        .select(CommandRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list_for_device(
    conn: &mut DbConnection,
    device_id: &str,
    limit: i64,
    offset: i64,
) -> ApiResult<Page<CommandRecord>> {
    let total = commands::table
        .filter(commands::device_id.eq(device_id))
        .count()
        .get_result(conn)?;
    let rows: Vec<CommandRow> = commands::table
        .filter(commands::device_id.eq(device_id))
        .order((commands::created_at.desc(), commands::id.desc()))
        .limit(limit)
        .offset(offset)
        .select(CommandRow::as_select())
        .load(conn)?;
    let items = rows
        .iter()
        .map(CommandRow::to_api)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Page { items, total })
}

/// Which role may send which command (`server-management.md` §7): operators run the safe
/// ones, managers add queue and config changes, admins everything.
pub fn role_may_send(role: Role, command: CommandType) -> bool {
    use CommandType::*;
    match command {
        ForceSync | PullLogs | EnableDevice => role >= Role::Operator,
        ClearQueue | PushConfig => role >= Role::Manager,
        RestartService | RebootOs | ShutdownOs | UpdateFirmware | ExecShell | DisableDevice => {
            role >= Role::Admin
        }
    }
}

/// Reads a dispatch body in steps, so each kind of mistake gets its own code: not JSON or no
/// `command` object (`invalid_body`), a type that is not one of the eleven
/// (`unknown_command_type`), fields that do not fit the type (`invalid_command`).
pub fn parse_dispatch(body: &[u8]) -> ApiResult<DispatchRequest> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(ErrorCode::InvalidBody, format!("body is not JSON: {e}"))
    })?;
    let command = value
        .get_mut("command")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            ApiError::bad_request(ErrorCode::InvalidBody, "body needs a `command` object")
        })?;
    let type_name = command.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(ErrorCode::InvalidCommand, "command needs a string `type`")
    })?;
    if let Err(e) = type_name.parse::<CommandType>() {
        return Err(ApiError::bad_request(
            ErrorCode::UnknownCommandType,
            e.to_string(),
        ));
    }
    // A script may leave the id to the server.
    if !command.contains_key("id") {
        command.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
    }
    let request: DispatchRequest = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidCommand, e.to_string()))?;
    request
        .command
        .validate()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidCommand, e))?;
    Ok(request)
}

/// `POST /api/v1/devices/{id}/commands`.
pub async fn dispatch(
    user: Authorized<DispatchCommands>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let request = parse_dispatch(&body)?;
    let command_type = request.command.command_type();
    if !role_may_send(user.role, command_type) {
        return Err(ApiError::forbidden(format!(
            "role {} may not send {}",
            user.role.as_str(),
            command_type
        )));
    }
    if command_type.is_dangerous() && !request.confirm {
        return Err(ApiError::unprocessable(
            ErrorCode::ConfirmationRequired,
            format!("{command_type} is dangerous; send \"confirm\": true to run it"),
        ));
    }
    let timeout_ms = request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            format!("timeoutMs must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    // The audit row is written before the command can reach the device.
    let entry = AuditEntry::new("command.dispatch", "requested")
        .actor(Some(user.username.clone()), Some(user.role))
        .target(Some(device_id.clone()))
        .params(serde_json::json!({
            "commandId": request.command.id,
            "type": command_type.as_str(),
            "confirm": request.confirm,
        }))
        .source(audit::source_of(&req));
    let id = device_id.clone();
    state
        .db
        .run(move |conn| {
            if !devices::exists(conn, &id)? {
                return Err(ApiError::not_found(
                    ErrorCode::DeviceNotFound,
                    "no such device",
                ));
            }
            audit::record(conn, &entry)
        })
        .await?;
    let outcome = state
        .dispatcher
        .send(Dispatch {
            device_id,
            command: request.command,
            timeout: Duration::from_millis(timeout_ms),
            issued_by: Some(user.username.clone()),
        })
        .await
        .map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(Envelope::ok(outcome)))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// `GET /api/v1/devices/{id}/commands`.
pub async fn history(
    _user: Authorized<ViewCommands>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let (limit, offset) = devices::paging(query.limit, query.offset)?;
    let page = state
        .db
        .run(move |conn| {
            if !devices::exists(conn, &device_id)? {
                return Err(ApiError::not_found(
                    ErrorCode::DeviceNotFound,
                    "no such device",
                ));
            }
            list_for_device(conn, &device_id, limit, offset)
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

/// `GET /api/v1/devices/{id}/commands/{cmdId}`.
pub async fn get_command(
    _user: Authorized<ViewCommands>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (device_id, command_id) = path.into_inner();
    let row = state
        .db
        .run(move |conn| find(conn, &device_id, &command_id))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(ErrorCode::CommandNotFound, "no such command on this device")
        })?;
    Ok(HttpResponse::Ok().json(Envelope::ok(row.to_api()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_and_bad_fields_get_their_own_codes() {
        let err =
            parse_dispatch(br#"{"command": {"type": "format_disk", "id": "x"}}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownCommandType);
        let err =
            parse_dispatch(br#"{"command": {"type": "disable_device", "id": "x"}}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCommand);
        let err =
            parse_dispatch(br#"{"command": {"type": "disable_device", "id": "x", "reason": ""}}"#)
                .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidCommand);
        let err = parse_dispatch(b"not json").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidBody);
        let err = parse_dispatch(br#"{"cmd": {}}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidBody);
    }

    #[test]
    fn missing_id_is_generated() {
        let req =
            parse_dispatch(br#"{"command": {"type": "force_sync"}, "timeoutMs": 500}"#).unwrap();
        assert!(uuid::Uuid::parse_str(&req.command.id).is_ok());
        assert_eq!(req.timeout_ms, Some(500));
    }

    #[test]
    fn roles_follow_the_spec_table() {
        assert!(role_may_send(Role::Operator, CommandType::ForceSync));
        assert!(!role_may_send(Role::Operator, CommandType::ClearQueue));
        assert!(role_may_send(Role::Manager, CommandType::PushConfig));
        assert!(!role_may_send(Role::Manager, CommandType::RebootOs));
        assert!(role_may_send(Role::Admin, CommandType::ShutdownOs));
        assert!(CommandType::ALL
            .iter()
            .all(|t| !role_may_send(Role::Viewer, *t)));
    }

    #[test]
    fn output_is_capped_on_a_char_boundary() {
        let long = "é".repeat(100);
        let capped = cap_output(&long, 51);
        assert!(capped.starts_with(&"é".repeat(25)));
        assert!(capped.contains("[truncated: 50 of 200 bytes kept]"));
        assert_eq!(cap_output("short", 10), "short");
    }
}
