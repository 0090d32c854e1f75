//! The extractor that guards every user route, and the checks behind it: a user token still
//! valid against the database, a device token still current, where a request came from.
//!
//! The tokens themselves are in `jwt` and the password hashes in `passwords`; both are
//! re-exported here, where handlers look for them.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};
use chrono::{DateTime, Utc};
use protocol::rest::Role;
use subtle::ConstantTimeEq;

use crate::actors::session::DeviceIdentity;
use crate::error::{ApiError, ApiResult, ErrorCode};
pub use crate::jwt::*;
pub use crate::passwords::{
    dummy_hash, hash_password, hash_password_in, verify_password, verify_password_in, HashMemory,
};
use crate::state::AppState;
use crate::store::audit::{self, AuditEntry};
use crate::store::users;

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The bearer token of a request: the `Authorization` header only. Query tokens are for
/// WebSocket upgrades, which handle them themselves.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A user whose token was verified and who still exists and is enabled.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

/// A right a route needs. Each route states one in its signature as `Authorized<P>`, so the
/// rule lives in the type, not in the body of the handler.
pub trait Permission {
    const NAME: &'static str;
    fn allows(role: Role) -> bool;
}

macro_rules! permission {
    ($name:ident, $label:literal, $min:expr) => {
        #[derive(Debug)]
        pub struct $name;
        impl Permission for $name {
            const NAME: &'static str = $label;
            fn allows(role: Role) -> bool {
                role >= $min
            }
        }
    };
}

// The spec's table (`server-management.md` §7): managers change a device's settings and
// groups, admins register and delete devices (terminal CRUD). Which command types a role may
// send is finer than a route and lives in `policy::Policy`, which the settings can change.
permission!(Authenticated, "self", Role::Viewer);
permission!(ViewDevices, "devices.view", Role::Viewer);
permission!(ViewCommands, "commands.view", Role::Viewer);
permission!(ViewAudit, "audit.view", Role::Viewer);
permission!(DispatchCommands, "commands.dispatch", Role::Operator);
permission!(ManageDevices, "devices.manage", Role::Manager);
permission!(RegisterDevices, "devices.register", Role::Admin);
permission!(DeleteDevices, "devices.delete", Role::Admin);
permission!(ListUsers, "users.list", Role::Manager);
permission!(ManageUsers, "users.manage", Role::Admin);
permission!(ManageFirmware, "firmware.manage", Role::Admin);

/// Whether a role holds a permission.
type Allows = fn(Role) -> bool;

/// Every permission by name, for telling a client what its role holds.
const PERMISSIONS: &[(&str, Allows)] = &[
    (ViewDevices::NAME, ViewDevices::allows),
    (ViewCommands::NAME, ViewCommands::allows),
    (ViewAudit::NAME, ViewAudit::allows),
    (DispatchCommands::NAME, DispatchCommands::allows),
    (ManageDevices::NAME, ManageDevices::allows),
    (RegisterDevices::NAME, RegisterDevices::allows),
    (DeleteDevices::NAME, DeleteDevices::allows),
    (ListUsers::NAME, ListUsers::allows),
    (ManageUsers::NAME, ManageUsers::allows),
    (ManageFirmware::NAME, ManageFirmware::allows),
];

/// The names of the permissions `role` holds.
pub fn permissions_of(role: Role) -> Vec<String> {
    PERMISSIONS
        .iter()
        .filter(|(_, allows)| allows(role))
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

/// The extractor: authenticates the bearer token, reloads the user, and checks `P`.
#[derive(Debug)]
pub struct Authorized<P: Permission> {
    pub user: AuthUser,
    _permission: PhantomData<P>,
}

impl<P: Permission> std::ops::Deref for Authorized<P> {
    type Target = AuthUser;
    fn deref(&self) -> &AuthUser {
        &self.user
    }
}

impl<P: Permission + 'static> FromRequest for Authorized<P> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(req).map(str::to_owned);
        let (method, path) = (req.method().to_string(), req.path().to_owned());
        let source = crate::auth::source_of(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("application state missing"))?;
            let token = token.ok_or_else(|| {
                ApiError::unauthorized(ErrorCode::Unauthorized, "missing bearer token")
            })?;
            let checked = authenticate_user(&state, &token).await;
            let user = crate::refusals::count_token(&state, source.as_deref(), checked).await?;
            if !P::allows(user.role) {
                // A refused attempt at a privileged call is itself worth a row.
                let entry = AuditEntry::new("access.denied", "denied")
                    .actor(Some(user.username.clone()), Some(user.role))
                    .target(Some(format!("{method} {path}")))
                    .params(serde_json::json!({"permission": P::NAME}))
                    .source(source);
                state
                    .db
                    .run(move |conn| Ok(audit::record(conn, &entry)?))
                    .await?;
                return Err(ApiError::forbidden(format!(
                    "role {} lacks the permission {}",
                    user.role.as_str(),
                    P::NAME
                )));
            }
            Ok(Authorized {
                user,
                _permission: PhantomData,
            })
        })
    }
}

/// Checks a user token: signature, scope and expiry; that it was not logged out; and that its
/// user still exists, is enabled and has not revoked older tokens (by disabling, a password or
/// role change) since it was issued.
pub async fn authenticate_user(state: &AppState, token: &str) -> ApiResult<AuthUser> {
    let claims = state.jwt.verify(token, Scope::User)?;
    let (user_id, jti) = (claims.sub.clone(), claims.jti.clone());
    let (user, revoked) = state
        .db
        .run(move |conn| Ok(users::find_for_token(conn, &user_id, &jti)?))
        .await?
        .ok_or_else(|| ApiError::unauthorized(ErrorCode::InvalidToken, "unknown user"))?;
    let role = Role::parse(&user.role).ok_or_else(|| ApiError::internal("bad role in database"))?;
    if revoked
        || user.disabled
        || Some(user.token_version) != claims.ver
        || Some(role) != claims.role
    {
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidToken,
            "token was revoked",
        ));
    }
    Ok(AuthUser {
        id: user.id,
        username: user.username,
        role,
        jti: claims.jti,
        expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now),
    })
}

/// The `token` query parameter of a WebSocket upgrade.
pub fn query_token(req: &HttpRequest) -> Option<String> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned())
        .filter(|t| !t.is_empty())
}

/// The token a WebSocket upgrade carries: the `Authorization` header, else `?token=` while
/// the compatibility setting allows it. `None`: the client will send an `auth` frame.
pub fn upgrade_token(req: &HttpRequest, allow_query: bool) -> ApiResult<Option<String>> {
    match (bearer_token(req), query_token(req)) {
        (Some(header), _) => Ok(Some(header.to_owned())),
        (None, Some(query)) if allow_query => Ok(Some(query)),
        (None, Some(_)) => Err(ApiError::unauthorized(
            ErrorCode::Unauthorized,
            "?token= is turned off on this server; send the token in the Authorization header or an auth frame",
        )),
        (None, None) => Ok(None),
    }
}

/// The peer address of a request. The proxy's forwarded header is not trusted here: a client
/// could forge it, and the audit log must name where a call really came from.
pub fn source_of(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|a| a.ip().to_string())
}

/// Verifies a device token: signature, scope, expiry, and that it is the device's current
/// token (an older one was revoked by rotation).
pub async fn verify_device_token(state: &AppState, token: &str) -> ApiResult<DeviceIdentity> {
    let claims = state.jwt.verify(token, Scope::Device)?;
    let device_id = claims.sub.clone();
    let row = state
        .db
        .run(move |conn| Ok(crate::store::devices::find(conn, &device_id)?))
        .await?
        .ok_or_else(|| ApiError::unauthorized(ErrorCode::InvalidToken, "unknown device"))?;
    if row.token_id.as_deref() != Some(claims.jti.as_str()) {
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidToken,
            "device token was revoked",
        ));
    }
    Ok(DeviceIdentity {
        device_id: claims.sub,
        token_id: claims.jti,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
