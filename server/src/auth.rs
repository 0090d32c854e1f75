//! Tokens, passwords and the extractor that guards every user route.
//!
//! Both token kinds are HS256 JWTs with a `scope` claim. The algorithm is pinned on decode, so
//! a token that names another algorithm (`none` included) is refused before its claims are read.

use std::future::Future;
use std::marker::PhantomData;
use std::path::Path;
use std::pin::Pin;

use actix_web::{web, FromRequest, HttpRequest};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::Argon2;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use protocol::rest::Role;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::audit::{self, AuditEntry};
use crate::store::{tokens, users};

/// Clock skew tolerated on `exp`, in seconds.
const JWT_LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    User,
    Device,
    /// Tokens of boards that fetch firmware from `/firmware/…` (`POST /admin/generate_token`).
    Ota,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The user's token version at issue time; a bump revokes every older token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<i64>,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("token has the wrong scope")]
    WrongScope,
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => ApiError::unauthorized(ErrorCode::TokenExpired, "token expired"),
            TokenError::Invalid => ApiError::unauthorized(ErrorCode::InvalidToken, "invalid token"),
            TokenError::WrongScope => ApiError::unauthorized(
                ErrorCode::InvalidToken,
                "this token is not valid for this route",
            ),
        }
    }
}

/// The claims of an OTA token: the seed's payload (`ota-firmware-server.md`) plus `scope`,
/// which keeps it apart from user and device tokens signed with the same key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaClaims {
    pub sub: String,
    pub project: String,
    pub roles: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub fw_version: String,
    pub scope: Scope,
}

/// A token just issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn issue_user(
        &self,
        user_id: &str,
        role: Role,
        version: i64,
        ttl_secs: u64,
    ) -> ApiResult<IssuedToken> {
        self.issue(user_id, Scope::User, Some(role), Some(version), ttl_secs)
    }

    pub fn issue_device(&self, device_id: &str, ttl_secs: u64) -> ApiResult<IssuedToken> {
        self.issue(device_id, Scope::Device, None, None, ttl_secs)
    }

    fn issue(
        &self,
        sub: &str,
        scope: Scope,
        role: Option<Role>,
        ver: Option<i64>,
        ttl_secs: u64,
    ) -> ApiResult<IssuedToken> {
        let now = Utc::now();
        let expires_at = now + chrono::Duration::seconds(ttl_secs as i64);
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = Claims {
            sub: sub.to_owned(),
            scope,
            role,
            ver,
            jti: jti.clone(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok(IssuedToken {
            token,
            jti,
            expires_at,
        })
    }

    /// Signs OTA claims; the caller fills them in and must have set `scope: Ota`.
    pub fn issue_ota(&self, claims: &OtaClaims) -> ApiResult<String> {
        if claims.scope != Scope::Ota {
            return Err(ApiError::internal("OTA token without the ota scope"));
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// Verifies an OTA token: signature, pinned algorithm, expiry, the `ota` scope and the
    /// `ota_client` role. User and device tokens fail on the scope.
    pub fn verify_ota(&self, token: &str) -> Result<OtaClaims, TokenError> {
        // Decoded as the common claims first, so a user or device token is told apart by its
        // scope rather than by a missing field.
        let common = jsonwebtoken::decode::<ScopeOnly>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if common.claims.scope != Scope::Ota {
            return Err(TokenError::WrongScope);
        }
        let data = jsonwebtoken::decode::<OtaClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        if !data.claims.roles.iter().any(|r| r == "ota_client") {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }

    /// Verifies signature, algorithm, expiry and scope.
    pub fn verify(&self, token: &str, scope: Scope) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if data.claims.scope != scope {
            return Err(TokenError::WrongScope);
        }
        if scope == Scope::User && (data.claims.role.is_none() || data.claims.ver.is_none()) {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }
}

#[derive(Deserialize)]
struct ScopeOnly {
    scope: Scope,
}

/// Loads the JWT secret: the configured one, else the one persisted in the data dir, else a
/// new random one written there (mode 0600) so that tokens survive a restart.
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> std::io::Result<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt-secret");
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        return Ok(text.trim().as_bytes().to_vec());
    }
    let mut bytes = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    write_secret_file(&path, &encoded)?;
    Ok(encoded.into_bytes())
}

/// Writes a file readable by its owner only.
pub fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// A random password of letters and digits, for the first admin.
pub fn random_password() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24)
}

/// Argon2's working memory (19 MiB with the default parameters), kept by a thread between
/// hashes. Allocating and freeing it per hash makes glibc raise its mmap threshold and then
/// keep every freed copy in the heap of whichever thread freed it: each verification left
/// 19 MiB behind until a dozen were resident.
pub type HashMemory = Vec<argon2::Block>;

/// Largest memory cost taken from a stored hash, in KiB; ours use 19 MiB.
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// Runs Argon2 with `params` into `out` using `memory` (grown to the parameters' need and
/// kept).
fn argon2_into(
    algorithm: argon2::Algorithm,
    version: argon2::Version,
    params: argon2::Params,
    (password, salt): (&str, &[u8]),
    out: &mut [u8],
    memory: &mut HashMemory,
) -> bool {
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    // Every block is written before it is read, so what an earlier hash left needs no reset.
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .is_ok()
}

/// A new argon2id hash (PHC string) of `password`, computed in `memory`.
pub fn hash_password_in(password: &str, memory: &mut HashMemory) -> ApiResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(ApiError::internal)?;
    let params = argon2::Params::default();
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    let (algorithm, version) = (argon2::Algorithm::Argon2id, argon2::Version::V0x13);
    if !argon2_into(
        algorithm,
        version,
        params.clone(),
        (password, salt_bytes),
        &mut out,
        memory,
    ) {
        return Err(ApiError::internal("argon2 hashing failed"));
    }
    let phc = PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: argon2::password_hash::ParamsString::try_from(&params)
            .map_err(ApiError::internal)?,
        salt: Some(salt.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&out).map_err(ApiError::internal)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc`, computed in `memory`; the comparison is
/// constant-time.
pub fn verify_password_in(password: &str, phc: &str, memory: &mut HashMemory) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    argon2_into(
        algorithm,
        version,
        params,
        (password, salt_bytes),
        &mut out,
        memory,
    ) && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// A new argon2id hash of `password`, with memory of its own; for the rare hash outside the
/// hashing threads (the first admin at start).
pub fn hash_password(password: &str) -> ApiResult<String> {
    hash_password_in(password, &mut HashMemory::new())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    verify_password_in(password, phc, &mut HashMemory::new())
}

/// A hash of nothing in particular, verified against when a username is unknown so that the
/// answer takes as long as for a wrong password. Computed once, in `memory`.
pub fn dummy_hash(memory: &mut HashMemory) -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password_in("not-a-real-password", memory).unwrap_or_default())
}

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

// The spec's table (`server-management.md` §7). Which command types a role may send is finer
// than a route and lives in `policy::role_may_send`.
permission!(Authenticated, "self", Role::Viewer);
permission!(ViewDevices, "devices.view", Role::Viewer);
permission!(ViewCommands, "commands.view", Role::Viewer);
permission!(ViewAudit, "audit.view", Role::Viewer);
permission!(DispatchCommands, "commands.dispatch", Role::Operator);
permission!(ManageDevices, "devices.manage", Role::Manager);
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
        .run(move |conn| {
            Ok((
                users::find_by_id(conn, &user_id)?,
                tokens::is_revoked(conn, &jti)?,
            ))
        })
        .await?;
    let user =
        user.ok_or_else(|| ApiError::unauthorized(ErrorCode::InvalidToken, "unknown user"))?;
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

/// Who a verified device token belongs to.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    pub device_id: String,
    pub token_id: String,
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

    fn keys() -> JwtKeys {
        JwtKeys::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn issued_tokens_verify_with_their_scope_only() {
        let keys = keys();
        let user = keys.issue_user("u1", Role::Admin, 0, 60).unwrap();
        let claims = keys.verify(&user.token, Scope::User).unwrap();
        assert_eq!(claims.sub, "u1");
        assert_eq!(claims.role, Some(Role::Admin));
        assert_eq!(
            keys.verify(&user.token, Scope::Device),
            Err(TokenError::WrongScope)
        );
        let device = keys.issue_device("edge-1", 60).unwrap();
        assert_eq!(
            keys.verify(&device.token, Scope::User),
            Err(TokenError::WrongScope)
        );
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let keys = keys();
        let token = keys.issue_user("u1", Role::Viewer, 0, 60).unwrap().token;
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            br#"{"sub":"u1","scope":"user","role":"ADMIN","jti":"x","iat":0,"exp":9999999999}"#,
        );
        parts[1] = payload;
        assert_eq!(
            keys.verify(&parts.join("."), Scope::User),
            Err(TokenError::Invalid)
        );
        let other = JwtKeys::new(b"another-secret-another-secret-xx");
        assert_eq!(other.verify(&token, Scope::User), Err(TokenError::Invalid));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            br#"{"sub":"u1","scope":"user","role":"ADMIN","jti":"x","iat":0,"exp":9999999999}"#,
        );
        let token = format!("{header}.{payload}.");
        assert_eq!(keys().verify(&token, Scope::User), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_tokens_are_refused_as_expired() {
        let keys = keys();
        let claims = Claims {
            sub: "u1".into(),
            scope: Scope::User,
            role: Some(Role::Admin),
            ver: Some(0),
            jti: "j".into(),
            iat: 0,
            exp: Utc::now().timestamp() - 3600,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert_eq!(keys.verify(&token, Scope::User), Err(TokenError::Expired));
    }

    fn ota_claims(exp: i64) -> OtaClaims {
        let now = Utc::now().timestamp();
        OtaClaims {
            sub: "board-1".into(),
            project: "fan".into(),
            roles: vec!["device".into(), "ota_client".into()],
            iat: now,
            exp: now + exp,
            jti: "board-1-1".into(),
            fw_version: "1.0.0".into(),
            scope: Scope::Ota,
        }
    }

    #[test]
    fn ota_tokens_and_other_tokens_never_stand_in_for_each_other() {
        let keys = keys();
        let ota = keys.issue_ota(&ota_claims(600)).unwrap();
        assert_eq!(keys.verify_ota(&ota).unwrap().project, "fan");
        assert_eq!(keys.verify(&ota, Scope::User), Err(TokenError::WrongScope));
        assert_eq!(
            keys.verify(&ota, Scope::Device),
            Err(TokenError::WrongScope)
        );
        let user = keys.issue_user("u1", Role::Admin, 0, 60).unwrap().token;
        assert_eq!(keys.verify_ota(&user), Err(TokenError::WrongScope));
        let device = keys.issue_device("edge-1", 60).unwrap().token;
        assert_eq!(keys.verify_ota(&device), Err(TokenError::WrongScope));
        let expired = keys.issue_ota(&ota_claims(-3600)).unwrap();
        assert_eq!(keys.verify_ota(&expired), Err(TokenError::Expired));
        let other = JwtKeys::new(b"another-secret-another-secret-xx");
        assert_eq!(other.verify_ota(&ota), Err(TokenError::Invalid));
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn hashes_agree_with_the_argon2_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut memory = HashMemory::new();
        let ours = hash_password_in("correct horse", &mut memory).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"battery staple", &salt)
            .unwrap()
            .to_string();
        // The same memory, reused, gives the same answers.
        for _ in 0..2 {
            assert!(verify_password_in("battery staple", &theirs, &mut memory));
            assert!(!verify_password_in("battery", &theirs, &mut memory));
            assert!(verify_password_in("correct horse", &ours, &mut memory));
        }
        assert_eq!(memory.len(), 19 * 1024, "one 19 MiB buffer, kept");
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
