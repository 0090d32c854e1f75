//! The operation table, first half: the dashboard's files, operations, sockets, sign-in,
//! users, audit, devices, commands, groups and charts. Each entry names a route of `ROUTES`
//! by its method and actix pattern; `gaps` checks that both lists agree.

use protocol::charts::{DeviceMetrics, FleetSummary, Throughput};
use protocol::rest::{
    AuditRecord, BulkDispatchRequest, ChangePasswordRequest, CommandRecord, CreateUserRequest,
    Device, DeviceEventRecord, DeviceGroup, DeviceLogLine, DeviceTokenResponse, DispatchRequest,
    DispatchResponse, GroupRequest, LoginRequest, LoginResponse, Me, MembersRequest,
    RegisterDeviceRequest, UpdateDeviceRequest, UpdateUserRequest, UserInfo,
};
use serde_json::json;

use super::prelude::*;
use crate::actors::registry::ConnectedDevice;
use crate::api::{charts, commands, devices, telemetry};
use crate::auth::{
    Authenticated, DeleteDevices, DispatchCommands, ListUsers, ManageDevices, ManageUsers,
    RegisterDevices, ViewAudit, ViewCommands, ViewDevices,
};
use crate::store::audit::AuditQuery;

/// `{"deleted": "<id>"}`, what the delete routes answer.
pub fn deleted() -> serde_json::Value {
    json!({"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}})
}

/// What a dispatch without `wait` answers: the stored command, not yet sent.
fn accepted() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["commandId", "status"],
        "properties": {
            "commandId": {"type": "string"},
            "status": {"$ref": "#/components/schemas/CommandStatus"},
        },
    })
}

/// The answers of a dispatch to many devices, by device id.
fn per_device(answer: serde_json::Value) -> serde_json::Value {
    json!({"type": "object", "additionalProperties": answer})
}

fn csv_note(doc: Doc) -> Doc {
    doc.about(
        "With `Accept: text/csv` the same data comes as CSV (`text/csv; charset=utf-8`, \
         one row per point, as a download).",
    )
    .respond(200, "", "text/csv", String::schema())
}

pub fn all() -> Vec<Doc> {
    let dispatch_ok = json!({"$ref": "#/components/schemas/DispatchResponse"});
    vec![
        op("GET", "/", "operations", "The dashboard's page")
            .respond(200, "The single page of the dashboard.", "text/html", String::schema())
            .empty(304, "Not modified (`If-None-Match` with its ETag)."),
        op("GET", "/assets/{path:.*}", "operations", "A file of the dashboard")
            .path("path", "The file's path under `web/assets/`, e.g. `js/app.js`.")
            .respond(
                200,
                "The file, with its content type and a SHA-256 ETag.",
                "application/octet-stream",
                inline(json!({"type": "string", "format": "binary"})),
            )
            .empty(304, "Not modified (`If-None-Match` with its ETag).")
            .errors(&[404]),
        op("GET", "/healthz", "operations", "Whether the server reaches its database")
            .ok_inline(
                200,
                "The database answers.",
                json!({
                    "type": "object",
                    "required": ["status", "database", "version"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok"]},
                        "database": {"type": "string", "enum": ["sqlite", "postgres"]},
                        "version": {"type": "string"},
                    },
                }),
            )
            .errors(&[503]),
        op("GET", "/metrics", "operations", "Prometheus metrics")
            .auth(Auth::Metrics)
            .about("403 while no metrics token is configured; 401 without the right bearer.")
            .respond(
                200,
                "The Prometheus text format.",
                "text/plain; version=0.0.4",
                String::schema(),
            )
            .errors(&[503]),
        op("GET", "/api/v1/openapi.json", "operations", "This document")
            .about("The OpenAPI 3 description of every route, generated from the server's code.")
            .respond(
                200,
                "The document.",
                "application/json",
                inline(json!({"type": "object"})),
            ),
        op("GET", "/ws/device", "sockets", "The device socket")
            .auth(Auth::DeviceSocket)
            .about(
                "A device token as `Authorization: Bearer`, as `?token=`, or in a first \
                 frame `{\"type\": \"auth\", \"token\": …}` within 10 s; the server then \
                 sends `hello`. A second socket of the same device replaces the first.",
            )
            .websocket("Device WebSocket: `/ws/device`"),
        op("GET", "/ws/dashboard", "sockets", "The dashboard socket")
            .auth(Auth::DashboardSocket)
            .about(
                "A user token by the same three means as the device socket (browsers use \
                 the first frame); then `subscribe` frames choose devices and event types. \
                 Too many sockets of one user or of the server answer 429 \
                 `too_many_connections`.",
            )
            .websocket("Dashboard WebSocket: `/ws/dashboard`"),
        op("POST", "/api/v1/auth/login", "auth", "Sign in")
            .about(
                "Failed attempts are counted per account and per address; past the limit \
                 both answer 429 with `Retry-After` until the lock ends.",
            )
            .json::<LoginRequest>()
            .ok::<LoginResponse>(200, "The user's token, its expiry and role.")
            .errors(&[401, 429, 503]),
        op("POST", "/api/v1/auth/logout", "auth", "Revoke the token of this request")
            .user::<Authenticated>()
            .ok_inline(
                200,
                "The token is revoked.",
                json!({"type": "object", "properties": {"loggedOut": {"type": "boolean"}}}),
            ),
        op("GET", "/api/v1/auth/me", "auth", "The caller and the rights of its role")
            .user::<Authenticated>()
            .ok::<Me>(200, "The user and what its role may do."),
        op("POST", "/api/v1/auth/password", "auth", "Change one's own password")
            .user::<Authenticated>()
            .about("Revokes every other token of the user and answers with a fresh one.")
            .json::<ChangePasswordRequest>()
            .ok::<LoginResponse>(200, "A fresh token.")
            .errors(&[401]),
        op("GET", "/api/v1/users", "users", "List users")
            .user::<ListUsers>()
            .page::<UserInfo>("The users."),
        op("POST", "/api/v1/users", "users", "Create a user")
            .user::<ManageUsers>()
            .json::<CreateUserRequest>()
            .ok::<UserInfo>(201, "The new user.")
            .errors(&[409]),
        op("GET", "/api/v1/users/{id}", "users", "One user")
            .user::<ManageUsers>()
            .path("id", "The user's id.")
            .ok::<UserInfo>(200, "The user.")
            .errors(&[404]),
        op("PATCH", "/api/v1/users/{id}", "users", "Change a user's role, state or password")
            .user::<ManageUsers>()
            .about(
                "Any change revokes the user's earlier tokens; the last enabled admin cannot \
                 be demoted or disabled (409 `last_admin`).",
            )
            .path("id", "The user's id.")
            .json::<UpdateUserRequest>()
            .ok::<UserInfo>(200, "The user as changed.")
            .errors(&[404, 409]),
        op("DELETE", "/api/v1/users/{id}", "users", "Delete a user")
            .user::<ManageUsers>()
            .path("id", "The user's id.")
            .ok_inline(200, "The user is gone; its tokens fail at once.", deleted())
            .errors(&[404, 409]),
        op("GET", "/api/v1/audit", "audit", "The audit log, newest first")
            .user::<ViewAudit>()
            .query::<AuditQuery>()
            .ok_inline(
                200,
                "A page of audit rows.",
                json!({
                    "type": "object",
                    "required": ["items", "total"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}},
                        "total": {"type": "integer", "format": "int64"},
                    },
                }),
            )
            .with_schema::<AuditRecord>(),
        op("GET", "/api/v1/devices", "devices", "List devices")
            .user::<ViewDevices>()
            .query_param("status", String::schema(), "ONLINE, OFFLINE or DISABLED.")
            .query_param("groupId", String::schema(), "Members of this group only.")
            .query_param("productionLineId", String::schema(), "This line's devices only.")
            .query_param("companyId", String::schema(), "This company's devices only.")
            .query_param("q", String::schema(), "A case-insensitive part of the id or name.")
            .page::<Device>("The devices."),
        op("POST", "/api/v1/devices", "devices", "Register a device before it enrolls")
            .user::<RegisterDevices>()
            .about("With auto-enrollment off, only a registered device gets a token.")
            .json::<RegisterDeviceRequest>()
            .ok::<Device>(201, "The registered device.")
            .errors(&[404, 409]),
        op("GET", "/api/v1/devices/connected", "devices", "The sessions this server holds now")
            .user::<ViewDevices>()
            .ok_inline(
                200,
                "Every connected device (not paged).",
                json!({
                    "type": "object",
                    "required": ["items", "total"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/ConnectedDevice"}},
                        "total": {"type": "integer", "format": "int64"},
                    },
                }),
            )
            .with_schema::<ConnectedDevice>(),
        op("POST", "/api/v1/devices/commands", "commands", "Send one command to many devices")
            .user::<DispatchCommands>()
            .about(
                "Each device gets the command with a fresh id; the role must also be allowed \
                 the command type (and an `exec_shell` template) by the server's rights \
                 (`GET /api/v1/auth/me` lists them). Unknown devices get a failed result.",
            )
            .json::<BulkDispatchRequest>()
            .ok_inline(200, "Each device's result, by device id.", per_device(dispatch_ok.clone()))
            .ok_inline(202, "With `\"wait\": false`: each stored command, by device id.", per_device(accepted()))
            .with_schema::<DispatchResponse>()
            .errors(&[403, 422]),
        op("GET", "/api/v1/devices/{id}", "devices", "One device")
            .user::<ViewDevices>()
            .path("id", "The device's id.")
            .ok::<Device>(200, "The device with its latest status.")
            .errors(&[404]),
        op("PATCH", "/api/v1/devices/{id}", "devices", "Rename or move a device")
            .user::<ManageDevices>()
            .about("Absent fields stay as they are; `null` clears an optional one.")
            .path("id", "The device's id.")
            .json::<UpdateDeviceRequest>()
            .ok::<Device>(200, "The device as changed.")
            .errors(&[404]),
        op("DELETE", "/api/v1/devices/{id}", "devices", "Forget a device")
            .user::<DeleteDevices>()
            .about("With its commands, logs and events; its token stops working and a connected session is closed.")
            .path("id", "The device's id.")
            .ok_inline(200, "The device is gone.", deleted())
            .errors(&[404, 409]),
        op("GET", "/api/v1/devices/{id}/logs", "devices", "A device's log lines, newest first")
            .user::<ViewDevices>()
            .path("id", "The device's id.")
            .query::<telemetry::LogQuery>()
            .page::<DeviceLogLine>("The log lines.")
            .errors(&[404]),
        op("GET", "/api/v1/devices/{id}/events", "devices", "A device's scans, prints and alerts, newest first")
            .user::<ViewDevices>()
            .path("id", "The device's id.")
            .query::<telemetry::EventQuery>()
            .page::<DeviceEventRecord>("The events.")
            .errors(&[404]),
        csv_note(
            op("GET", "/api/v1/devices/{id}/metrics", "charts", "A device's metrics over time")
                .user::<ViewDevices>()
                .about("Each numeric metric as min/avg/max/count per step; 400 `range_too_large` past one answer's points.")
                .path("id", "The device's id.")
                .query::<charts::RangeQuery>()
                .ok::<DeviceMetrics>(200, "The series.")
                .errors(&[404]),
        ),
        op("POST", "/api/v1/devices/{id}/token", "devices", "Enroll: a device token for the enrollment key")
            .auth(Auth::Enrollment)
            .about(
                "Issues a new device token and revokes the device's previous one (a socket on \
                 it is closed). An unknown device is created when auto-enrollment is on, else \
                 refused with 403 `enrollment_disabled`.",
            )
            .path("id", "The device's id (`[A-Za-z0-9._-]`).")
            .query::<devices::EnrollQuery>()
            .ok::<DeviceTokenResponse>(200, "The device token.")
            .errors(&[400, 403]),
        op("POST", "/api/v1/devices/{id}/commands", "commands", "Send a command to a device")
            .user::<DispatchCommands>()
            .about(
                "The role must also be allowed the command type (and an `exec_shell` \
                 template) by the server's rights (403 otherwise). Dangerous commands need \
                 `\"confirm\": true` (422 `confirmation_required`). Audited before it is sent.",
            )
            .path("id", "The device's id.")
            .json::<DispatchRequest>()
            .ok::<DispatchResponse>(200, "The device's result and the state the command ended in.")
            .ok_inline(202, "With `\"wait\": false`: the command is stored.", accepted())
            .errors(&[403, 404, 409, 422]),
        op("GET", "/api/v1/devices/{id}/commands", "commands", "A device's command history, newest first")
            .user::<ViewCommands>()
            .path("id", "The device's id.")
            .query::<commands::HistoryQuery>()
            .page::<CommandRecord>("The commands.")
            .errors(&[404]),
        op("GET", "/api/v1/devices/{id}/commands/{cmd_id}", "commands", "One command")
            .user::<ViewCommands>()
            .path("id", "The device's id.")
            .path("cmd_id", "The command's id.")
            .ok::<CommandRecord>(200, "The command.")
            .errors(&[404]),
        op("POST", "/api/v1/devices/{id}/commands/{cmd_id}/cancel", "commands", "Cancel a command not yet sent")
            .user::<DispatchCommands>()
            .about("A PENDING or QUEUED command ends CANCELLED and is never delivered; any other answers 409 `command_not_cancellable`.")
            .path("id", "The device's id.")
            .path("cmd_id", "The command's id.")
            .ok::<CommandRecord>(200, "The cancelled command.")
            .errors(&[404, 409]),
        op("POST", "/api/v1/device-groups", "groups", "Create a group")
            .user::<ManageDevices>()
            .json::<GroupRequest>()
            .ok::<DeviceGroup>(201, "The new group.")
            .errors(&[409]),
        op("GET", "/api/v1/device-groups", "groups", "List groups")
            .user::<ViewDevices>()
            .page::<DeviceGroup>("The groups with their member counts."),
        op("GET", "/api/v1/device-groups/{id}", "groups", "One group with its members' ids")
            .user::<ViewDevices>()
            .path("id", "The group's id.")
            .ok::<DeviceGroup>(200, "The group.")
            .errors(&[404]),
        op("PUT", "/api/v1/device-groups/{id}", "groups", "Rename or describe a group")
            .user::<ManageDevices>()
            .path("id", "The group's id.")
            .json::<GroupRequest>()
            .ok::<DeviceGroup>(200, "The group as changed.")
            .errors(&[404, 409]),
        op("DELETE", "/api/v1/device-groups/{id}", "groups", "Delete a group; its devices stay")
            .user::<ManageDevices>()
            .path("id", "The group's id.")
            .ok_inline(200, "The group is gone.", deleted())
            .errors(&[404]),
        op("POST", "/api/v1/device-groups/{id}/members", "groups", "Add devices to a group")
            .user::<ManageDevices>()
            .about("All must exist, or nothing is added.")
            .path("id", "The group's id.")
            .json::<MembersRequest>()
            .ok::<DeviceGroup>(200, "The group with its members.")
            .errors(&[404]),
        op("DELETE", "/api/v1/device-groups/{id}/members", "groups", "Remove devices from a group")
            .user::<ManageDevices>()
            .path("id", "The group's id.")
            .json::<MembersRequest>()
            .ok::<DeviceGroup>(200, "The group with its members.")
            .errors(&[404]),
        op("POST", "/api/v1/device-groups/{id}/commands", "commands", "Send a command to every member of a group")
            .user::<DispatchCommands>()
            .about("The single-device body, sent to every member at once; the same rights and confirmation rules.")
            .path("id", "The group's id.")
            .json::<DispatchRequest>()
            .ok_inline(200, "Each member's result, by device id.", per_device(dispatch_ok))
            .ok_inline(202, "With `\"wait\": false`: each stored command, by device id.", per_device(accepted()))
            .with_schema::<DispatchResponse>()
            .errors(&[403, 404, 422]),
        csv_note(
            op("GET", "/api/v1/production/throughput", "charts", "Production per step and line")
                .user::<ViewDevices>()
                .about("Scans (valid and invalid), prints, batches and pallets per step, one series per line and company.")
                .query::<charts::RangeQuery>()
                .ok::<Throughput>(200, "The series."),
        ),
        csv_note(
            op("GET", "/api/v1/fleet/summary", "charts", "The fleet per step")
                .user::<ViewDevices>()
                .about("Devices online, commands by outcome and deployment targets by state per step, and deployments by state now.")
                .query::<charts::RangeQuery>()
                .ok::<FleetSummary>(200, "The summary."),
        ),
    ]
}
