//! REST bodies: the envelope, the error body and the request and response types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::commands::{Command, CommandResult, CommandType};
use chrono::{DateTime, Utc};

/// `{"success": true, "data": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub success: bool,
    pub data: T,
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Envelope {
            success: true,
            data,
        }
    }
}

/// `{"success": false, "error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorEnvelope {
    pub success: bool,
    pub error: ErrorBody,
}

/// Codes scripts can match on; renaming one is an API break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidBody,
    InvalidParameter,
    /// A chart query asked for more points, or a longer range, than one answer holds.
    RangeTooLarge,
    UnknownCommandType,
    InvalidCommand,
    ConfirmationRequired,
    Unauthorized,
    InvalidToken,
    TokenExpired,
    InvalidCredentials,
    InvalidEnrollmentKey,
    EnrollmentDisabled,
    RateLimited,
    /// Too many sockets of one kind open at once (per user or for the whole server).
    TooManyConnections,
    Forbidden,
    UsernameTaken,
    LastAdmin,
    UserNotFound,
    NotFound,
    /// The path exists, not with this method (405, with `Allow`).
    MethodNotAllowed,
    DeviceNotFound,
    /// A device of that id is registered already.
    DeviceExists,
    CommandNotFound,
    DuplicateCommandId,
    CommandInFlight,
    CommandNotCancellable,
    GroupNotFound,
    GroupNameTaken,
    TooManyTargets,
    PayloadTooLarge,
    ReleaseNotFound,
    ReleaseExists,
    ReleaseDeployed,
    DeploymentNotFound,
    DeploymentState,
    DeviceInDeployment,
    InvalidSignature,
    SignatureRequired,
    SignatureExpired,
    InvalidAdminSecret,
    /// 503 / 429: every download slot of the line or of the server is taken; `Retry-After`
    /// says when to ask again.
    DownloadBusy,
    /// No board of that id is listed for the project (`/api/v1/ota/projects/{p}/devices`).
    BoardNotFound,
    DatabaseUnavailable,
    /// A device sent a sync record for a company that is not its own.
    CompanyMismatch,
    /// A request the HTTP layer refused for a reason no other code names (a WebSocket route
    /// called without the upgrade headers, say).
    BadRequest,
    /// 503: too many requests need a scarce resource (password checks) at once.
    ServerBusy,
    Internal,
}

impl ErrorCode {
    /// The wire name, the same text serde writes.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::RangeTooLarge => "range_too_large",
            ErrorCode::UnknownCommandType => "unknown_command_type",
            ErrorCode::InvalidCommand => "invalid_command",
            ErrorCode::ConfirmationRequired => "confirmation_required",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::InvalidEnrollmentKey => "invalid_enrollment_key",
            ErrorCode::EnrollmentDisabled => "enrollment_disabled",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::LastAdmin => "last_admin",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::DeviceNotFound => "device_not_found",
            ErrorCode::DeviceExists => "device_exists",
            ErrorCode::CommandNotFound => "command_not_found",
            ErrorCode::DuplicateCommandId => "duplicate_command_id",
            ErrorCode::CommandInFlight => "command_in_flight",
            ErrorCode::CommandNotCancellable => "command_not_cancellable",
            ErrorCode::GroupNotFound => "group_not_found",
            ErrorCode::GroupNameTaken => "group_name_taken",
            ErrorCode::TooManyTargets => "too_many_targets",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ReleaseNotFound => "release_not_found",
            ErrorCode::ReleaseExists => "release_exists",
            ErrorCode::ReleaseDeployed => "release_deployed",
            ErrorCode::DeploymentNotFound => "deployment_not_found",
            ErrorCode::DeploymentState => "deployment_state",
            ErrorCode::DeviceInDeployment => "device_in_deployment",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::SignatureRequired => "signature_required",
            ErrorCode::SignatureExpired => "signature_expired",
            ErrorCode::InvalidAdminSecret => "invalid_admin_secret",
            ErrorCode::DownloadBusy => "download_busy",
            ErrorCode::BoardNotFound => "board_not_found",
            ErrorCode::DatabaseUnavailable => "database_unavailable",
            ErrorCode::CompanyMismatch => "company_mismatch",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of a REST answer. `code` stays a string so that a client reads codes newer than
/// itself; a server writes it from `ErrorCode::as_str`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Documented as the `ErrorCode` names this server writes; read as any string.
    #[cfg_attr(feature = "openapi", schema(value_type = ErrorCode))]
    pub code: String,
    pub message: String,
}

/// Lists answer `{"items": [...], "total": N}` inside `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Viewer,
    Operator,
    Manager,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "VIEWER",
            Role::Operator => "OPERATOR",
            Role::Manager => "MANAGER",
            Role::Admin => "ADMIN",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Manager, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceTokenResponse {
    pub token: String,
    pub device_id: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum DeviceStatus {
    Online,
    Offline,
    Disabled,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Online => "ONLINE",
            DeviceStatus::Offline => "OFFLINE",
            DeviceStatus::Disabled => "DISABLED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub id: String,
    pub name: String,
    pub company_id: Option<String>,
    pub production_line_id: Option<String>,
    pub status: DeviceStatus,
    pub version: Option<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub remote_addr: Option<String>,
    pub created_at: DateTime<Utc>,
    /// From the device's latest `status` frame.
    #[serde(default)]
    pub connection_mode: Option<String>,
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub metrics: Option<Value>,
    #[serde(default)]
    pub status_at: Option<DateTime<Utc>>,
}

/// `PATCH /api/v1/devices/{id}`: rename or move a device; absent fields stay as they are,
/// `POST /api/v1/devices`: registers a device before it is switched on, so it may enroll
/// while auto-enrollment is off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterDeviceRequest {
    pub id: String,
    /// Defaults to the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_line_id: Option<String>,
    /// Groups the device joins at once; each must exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_ids: Vec<String>,
}

/// `null` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateDeviceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub company_id: Option<Option<String>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub production_line_id: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A log line a device sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceLogLine {
    pub id: String,
    pub device_id: String,
    pub ts: DateTime<Utc>,
    pub level: String,
    pub line: String,
}

/// A `scan`, `print` or `alert` event a device sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceEventRecord {
    pub id: String,
    pub device_id: String,
    pub ts: DateTime<Utc>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub payload: Value,
}

/// `POST /api/v1/devices/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatchRequest {
    pub command: Command,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Dangerous commands need it (`contract.md`).
    #[serde(default)]
    pub confirm: bool,
    /// `false`: answer 202 with the command id at once instead of waiting for the device.
    #[serde(default = "yes")]
    pub wait: bool,
    /// Keep the command for an offline device and deliver it when it connects.
    #[serde(default)]
    pub queue_if_offline: bool,
    /// How long a queued command stays deliverable; then it ends EXPIRED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ttl_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// `POST /api/v1/devices/commands`: the single-device body plus the targets. Serde cannot
/// refuse unknown fields through `flatten`; the server takes `deviceIds` out and reads the
/// rest as a `DispatchRequest`, which refuses them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BulkDispatchRequest {
    pub device_ids: Vec<String>,
    #[serde(flatten)]
    pub request: DispatchRequest,
}

/// Where a command is. PENDING (stored, not yet handed over), QUEUED (kept for an offline
/// device), SENT, then SUCCESS, FAILED, TIMEOUT, CANCELLED (before it was sent) or EXPIRED (its
/// queue time ran out). `restart_service` and `reboot_os` go from the device's answer to
/// CONFIRMING, and to CONFIRMED only when the device comes back with a new run or boot id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum CommandStatus {
    Pending,
    Queued,
    Sent,
    Success,
    Failed,
    Timeout,
    Cancelled,
    Expired,
    Confirming,
    Confirmed,
}

impl CommandStatus {
    pub const ALL: [CommandStatus; 10] = [
        CommandStatus::Pending,
        CommandStatus::Queued,
        CommandStatus::Sent,
        CommandStatus::Success,
        CommandStatus::Failed,
        CommandStatus::Timeout,
        CommandStatus::Cancelled,
        CommandStatus::Expired,
        CommandStatus::Confirming,
        CommandStatus::Confirmed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Pending => "PENDING",
            CommandStatus::Queued => "QUEUED",
            CommandStatus::Sent => "SENT",
            CommandStatus::Success => "SUCCESS",
            CommandStatus::Failed => "FAILED",
            CommandStatus::Timeout => "TIMEOUT",
            CommandStatus::Cancelled => "CANCELLED",
            CommandStatus::Expired => "EXPIRED",
            CommandStatus::Confirming => "CONFIRMING",
            CommandStatus::Confirmed => "CONFIRMED",
        }
    }

    pub fn parse(s: &str) -> Option<CommandStatus> {
        CommandStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// No further change will happen.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CommandStatus::Pending
                | CommandStatus::Queued
                | CommandStatus::Sent
                | CommandStatus::Confirming
        )
    }
}

/// A device group with its member count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceGroup {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub member_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Present on `GET /api/v1/device-groups/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ids: Option<Vec<String>>,
}

/// `POST /api/v1/device-groups` and `PUT /api/v1/device-groups/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST`/`DELETE /api/v1/device-groups/{id}/members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MembersRequest {
    pub device_ids: Vec<String>,
}

/// The answer of a dispatch: the device's result and the state the command ended in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DispatchResponse {
    #[serde(flatten)]
    pub result: CommandResult,
    pub status: CommandStatus,
}

/// A command in a device's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandRecord {
    pub id: String,
    pub device_id: String,
    #[serde(rename = "type")]
    pub command_type: CommandType,
    pub payload: Value,
    pub status: CommandStatus,
    pub success: Option<bool>,
    pub output: Option<String>,
    pub data: Option<Value>,
    pub issued_by: Option<String>,
    pub timeout_ms: i64,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Latest progress the device reported, 0-100.
    #[serde(default)]
    pub progress: Option<i64>,
    #[serde(default)]
    pub progress_message: Option<String>,
    /// When a queued command stops being deliverable.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A user as the API shows it; never with its password hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /api/v1/auth/me`: the caller, and what the caller's role may do, so a dashboard shows
/// only the actions that will be allowed without keeping its own copy of the rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Me {
    #[serde(flatten)]
    pub user: UserInfo,
    pub rights: Rights,
}

/// Permission names (`devices.manage`, `firmware.manage`, …), the command types the role may
/// send, and the `exec_shell` templates it may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Rights {
    pub permissions: Vec<String>,
    pub commands: Vec<String>,
    pub templates: Vec<String>,
    /// Whether templates not listed in `templates` (a device's own) may be run.
    pub other_templates: bool,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    pub password: String,
    pub role: Role,
}

/// `PATCH /api/v1/users/{id}`: absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /api/v1/auth/password`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// A row of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: String,
    pub ts: DateTime<Utc>,
    pub actor: Option<String>,
    pub role: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub params: Option<Value>,
    pub source: Option<String>,
    pub outcome: String,
}
