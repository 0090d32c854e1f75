//! The command routes: dispatch to one device, to many, history, one command, cancel.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::{join_all, Either};
use protocol::commands::{Command, CommandResult, CommandType};
use protocol::rest::{
    BulkDispatchRequest, CommandStatus, DispatchRequest, DispatchResponse, Envelope,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::actors::dispatcher::{Dispatch, DispatchSent, StoreAndDispatch};
use crate::actors::registry::Lookup;
use crate::api::audit::by_user;
use crate::api::paging::Paging;
use crate::auth::{AuthUser, Authorized, DispatchCommands, ViewCommands};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::policy::Policy;
use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::commands::{
    self, HistoryFilter, DEFAULT_QUEUE_TTL_MS, DEFAULT_TIMEOUT_MS, MAX_QUEUE_TTL_MS, MAX_TIMEOUT_MS,
};

/// Most targets of one bulk or group dispatch.
pub const MAX_BULK_TARGETS: usize = 10_000;

/// Reads a dispatch body in steps, so each kind of mistake gets its own code: not JSON or no
/// `command` object (`invalid_body`), a type that is not one of the eleven
/// (`unknown_command_type`), fields that do not fit the type (`invalid_command`).
pub fn parse_command_body(body: &[u8]) -> ApiResult<Value> {
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
    if let Some(field) = Command::unknown_field(command) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidCommand,
            format!("unknown field `{field}` for command type {type_name}"),
        ));
    }
    // A script may leave the id to the server.
    if !command.contains_key("id") {
        command.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
    }
    Ok(value)
}

pub fn parse_dispatch(body: &[u8]) -> ApiResult<DispatchRequest> {
    let request: DispatchRequest = serde_json::from_value(parse_command_body(body)?)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidCommand, e.to_string()))?;
    request
        .command
        .validate()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidCommand, e))?;
    Ok(request)
}

/// Role, confirmation and limits: what every dispatch checks before anything is stored.
pub struct Checked {
    pub timeout: Duration,
    pub queue_ttl: Option<Duration>,
}

pub fn check(policy: &Policy, user: &AuthUser, request: &DispatchRequest) -> ApiResult<Checked> {
    let command_type = request.command.command_type();
    if !policy.may_send(user.role, &request.command) {
        return Err(ApiError::forbidden(format!(
            "role {} may not send {}",
            user.role.as_str(),
            describe(&request.command)
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
    let queue_ttl = if request.queue_if_offline {
        let ttl = request.queue_ttl_ms.unwrap_or(DEFAULT_QUEUE_TTL_MS);
        if !(1..=MAX_QUEUE_TTL_MS).contains(&ttl) {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                format!("queueTtlMs must be between 1 and {MAX_QUEUE_TTL_MS}"),
            ));
        }
        Some(Duration::from_millis(ttl))
    } else {
        None
    };
    Ok(Checked {
        timeout: Duration::from_millis(timeout_ms),
        queue_ttl,
    })
}

fn describe(command: &Command) -> String {
    match &command.kind {
        protocol::commands::CommandKind::ExecShell { template, .. } => {
            format!("exec_shell template {template}")
        }
        _ => command.command_type().to_string(),
    }
}

/// What the audit row says about a command: its id and type, and for `exec_shell` the
/// template and arguments, so that what ran on a device can be read back.
fn audit_params(command: &Command, confirm: bool) -> Value {
    let mut params = serde_json::json!({
        "commandId": command.id,
        "type": command.command_type().as_str(),
        "confirm": confirm,
    });
    if let protocol::commands::CommandKind::ExecShell { template, args } = &command.kind {
        params["template"] = Value::String(template.clone());
        params["args"] = serde_json::to_value(args).unwrap_or_default();
    }
    params
}

fn dispatch_entry(
    user: &AuthUser,
    req: &HttpRequest,
    device_id: &str,
    command: &Command,
    confirm: bool,
) -> AuditEntry {
    by_user(user, req, "command.dispatch")
        .outcome("requested")
        .target(Some(device_id.to_owned()))
        .params(audit_params(command, confirm))
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
    let checked = check(&state.policy, &user, &request)?;
    let entry = dispatch_entry(&user, &req, &device_id, &request.command, request.confirm);
    let (id, command_id) = (device_id.clone(), request.command.id.clone());
    // The same id again is answered from the record, never run twice: a retrying script gets
    // the outcome it missed.
    let existing = state
        .db
        .run(move |conn| Ok(commands::device_and_command(conn, &id, &command_id)?))
        .await?;
    if let Some(row) = existing {
        if row.device_id != device_id {
            return Err(ApiError::conflict(
                ErrorCode::DuplicateCommandId,
                "this command id was used for another device",
            ));
        }
        let status = row.status()?;
        if !status.is_final() {
            return Err(ApiError::conflict(
                ErrorCode::CommandInFlight,
                format!("command {} is {}", row.id, row.status),
            ));
        }
        return Ok(HttpResponse::Ok().json(Envelope::ok(DispatchResponse {
            result: row.result(),
            status,
        })));
    }
    let (accepted_tx, accepted_rx) = oneshot::channel();
    let outcome = state.dispatcher.send(StoreAndDispatch {
        dispatch: Dispatch {
            device_id,
            command: request.command.clone(),
            timeout: checked.timeout,
            issued_by: Some(user.username.clone()),
            queue_ttl: checked.queue_ttl,
        },
        accepted: accepted_tx,
        // Written with the command, before it can reach the device.
        audit: entry,
    });
    if !request.wait {
        // The dispatch goes on without this request; answer once the command is stored. Its
        // error has no caller left to hear it, so it is logged (the dispatcher's sweep ends a
        // command whose outcome could not be stored).
        let command_id = request.command.id.clone();
        actix_web::rt::spawn(async move {
            if let Ok(Err(e)) = outcome.await {
                tracing::warn!(%command_id, error = %e, "dispatch ended without storing an outcome");
            }
        });
        accepted_rx.await.map_err(ApiError::internal)??;
        return Ok(
            HttpResponse::Accepted().json(Envelope::ok(serde_json::json!({
                "commandId": request.command.id,
                "status": CommandStatus::Pending,
            }))),
        );
    }
    let outcome = outcome.await.map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(Envelope::ok(outcome)))
}

/// Sends one command to many devices at once, each with a fresh command id, and answers per
/// device. Unknown devices get a failed result without a stored command.
pub async fn fan_out(
    state: &AppState,
    user: &AuthUser,
    req: &HttpRequest,
    device_ids: Vec<String>,
    request: DispatchRequest,
) -> ApiResult<HttpResponse> {
    let checked = check(&state.policy, user, &request)?;
    if device_ids.len() > MAX_BULK_TARGETS {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyTargets,
            format!("at most {MAX_BULK_TARGETS} devices per dispatch"),
        ));
    }
    let mut seen = HashSet::new();
    let targets: Vec<String> = device_ids
        .into_iter()
        .filter(|d| seen.insert(d.clone()))
        .collect();
    let wanted = targets.clone();
    let known: HashSet<String> = state
        .db
        .run(move |conn| Ok(crate::store::devices::known_ids(conn, &wanted)?))
        .await?;
    // A fresh id per target; every audit row and PENDING command stored in one transaction
    // before any is sent.
    let planned: Vec<(String, Command)> = targets
        .iter()
        .filter(|d| known.contains(*d))
        .map(|d| {
            let mut command = request.command.clone();
            command.id = uuid::Uuid::new_v4().to_string();
            (d.clone(), command)
        })
        .collect();
    let entries: Vec<AuditEntry> = planned
        .iter()
        .map(|(d, c)| dispatch_entry(user, req, d, c, request.confirm))
        .collect();
    // Rows of devices whose session is open are written SENT at once (a restart or reboot
    // reads the device's run or boot id first, so it takes the usual way).
    let sent: HashSet<String> = if commands::Watch::for_command(request.command.command_type())
        == commands::Watch::Nothing
    {
        let lookups = planned.iter().map(|(d, _)| {
            let lookup = state.registry.send(Lookup {
                device_id: d.clone(),
            });
            async move { (d.clone(), matches!(lookup.await, Ok(Some(_)))) }
        });
        join_all(lookups)
            .await
            .into_iter()
            .filter_map(|(d, online)| online.then_some(d))
            .collect()
    } else {
        HashSet::new()
    };
    let rows = planned.clone();
    let sent_rows = sent.clone();
    let (by, timeout_ms) = (user.username.clone(), checked.timeout.as_millis() as i64);
    state
        .db
        .run(move |conn| {
            Ok(commands::insert_pending_audited(
                conn,
                &rows,
                &entries,
                timeout_ms,
                Some(&by),
                &sent_rows,
            )?)
        })
        .await?;
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    for d in targets.iter().filter(|d| !known.contains(*d)) {
        let missing = DispatchResponse {
            result: CommandResult::failed("", "no such device"),
            status: CommandStatus::Failed,
        };
        answers.insert(d.clone(), serde_json::to_value(missing).unwrap_or_default());
    }
    let sends: Vec<_> = planned
        .into_iter()
        .map(|(device_id, command)| {
            let dispatch = Dispatch {
                device_id: device_id.clone(),
                command: command.clone(),
                timeout: checked.timeout,
                issued_by: Some(user.username.clone()),
                queue_ttl: checked.queue_ttl,
            };
            let send = if sent.contains(&device_id) {
                Either::Left(state.dispatcher.send(DispatchSent(dispatch)))
            } else {
                Either::Right(state.dispatcher.send(dispatch))
            };
            (device_id, command.id, send)
        })
        .collect();
    if !request.wait {
        // Every command is stored already; the sends go on without this request.
        for (device_id, command_id, send) in sends {
            actix_web::rt::spawn(send);
            let pending =
                serde_json::json!({"commandId": command_id, "status": CommandStatus::Pending});
            answers.insert(device_id, pending);
        }
        return Ok(HttpResponse::Accepted().json(Envelope::ok(answers)));
    }
    // All at once, never one device after another.
    let outcomes = join_all(
        sends
            .into_iter()
            .map(
                |(device_id, command_id, send)| async move { (device_id, command_id, send.await) },
            ),
    )
    .await;
    for (device_id, command_id, outcome) in outcomes {
        let answer = match outcome {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => DispatchResponse {
                result: CommandResult::failed(command_id, e.message),
                status: CommandStatus::Failed,
            },
            Err(e) => return Err(ApiError::internal(e)),
        };
        answers.insert(device_id, serde_json::to_value(answer).unwrap_or_default());
    }
    Ok(HttpResponse::Ok().json(Envelope::ok(answers)))
}

/// Reads a bulk dispatch body: `deviceIds` taken out, the rest read as a single dispatch,
/// which refuses unknown fields (serde cannot through the `flatten` of
/// `BulkDispatchRequest`).
pub fn parse_bulk_dispatch(body: &[u8]) -> ApiResult<BulkDispatchRequest> {
    let mut value = parse_command_body(body)?;
    let device_ids = value
        .as_object_mut()
        .and_then(|body| body.remove("deviceIds"))
        .ok_or_else(|| ApiError::bad_request(ErrorCode::InvalidBody, "body needs `deviceIds`"))?;
    let bulk = BulkDispatchRequest {
        device_ids: serde_json::from_value(device_ids).map_err(|e| {
            ApiError::bad_request(ErrorCode::InvalidBody, format!("deviceIds: {e}"))
        })?,
        request: serde_json::from_value(value)
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidCommand, e.to_string()))?,
    };
    bulk.request
        .command
        .validate()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidCommand, e))?;
    Ok(bulk)
}

/// `POST /api/v1/devices/commands`: `{"deviceIds": [...], "command": …}`.
pub async fn bulk_dispatch(
    user: Authorized<DispatchCommands>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let bulk = parse_bulk_dispatch(&body)?;
    if bulk.device_ids.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            "deviceIds must not be empty",
        ));
    }
    fan_out(&state, &user, &req, bulk.device_ids, bulk.request).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub command_type: Option<String>,
}

/// `GET /api/v1/devices/{id}/commands`: newest first, by `status` and `type`.
pub async fn history(
    _user: Authorized<ViewCommands>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let q = query.into_inner();
    let (limit, offset) = paging.checked()?;
    let filter = HistoryFilter {
        status: q
            .status
            .map(|s| {
                CommandStatus::parse(&s).ok_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidParameter,
                        format!("unknown status `{s}`"),
                    )
                })
            })
            .transpose()?,
        command_type: q
            .command_type
            .map(|t| {
                t.parse::<CommandType>()
                    .map_err(|e| ApiError::bad_request(ErrorCode::InvalidParameter, e.to_string()))
            })
            .transpose()?,
    };
    let page = state
        .db
        .run(move |conn| {
            crate::store::devices::require(conn, &device_id)?;
            Ok(commands::list_for_device(
                conn, &device_id, &filter, limit, offset,
            )?)
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
        .run(move |conn| Ok(commands::find(conn, &device_id, &command_id)?))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(ErrorCode::CommandNotFound, "no such command on this device")
        })?;
    Ok(HttpResponse::Ok().json(Envelope::ok(row.to_api()?)))
}

/// `POST /api/v1/devices/{id}/commands/{cmdId}/cancel`: a command not yet sent (PENDING or
/// QUEUED) ends CANCELLED and is never delivered.
pub async fn cancel_command(
    user: Authorized<DispatchCommands>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (device_id, command_id) = path.into_inner();
    let entry = by_user(&user, &req, "command.cancel")
        .target(Some(device_id.clone()))
        .params(serde_json::json!({"commandId": command_id}));
    let by = user.username.clone();
    let row = crate::api::audit::audited(&state.db, entry, move |conn| {
        Ok(commands::cancel(conn, &device_id, &command_id, &by)?)
    })
    .await?;
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
    fn missing_id_is_generated_and_wait_defaults_to_true() {
        let req =
            parse_dispatch(br#"{"command": {"type": "force_sync"}, "timeoutMs": 500}"#).unwrap();
        assert!(uuid::Uuid::parse_str(&req.command.id).is_ok());
        assert_eq!(req.timeout_ms, Some(500));
        assert!(req.wait);
        assert!(!req.queue_if_offline);
    }
}
