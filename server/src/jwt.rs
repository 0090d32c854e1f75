//! JSON Web Tokens: the claims of user, device and OTA tokens, their keys, and the secret
//! they are signed with. HS256 is pinned on decode (for OTA tokens, the algorithm of
//! `ota_jwt_algorithm`, HS256 or HS512), so a token that names another algorithm (`none`
//! included) is refused before its claims are read.

use std::path::Path;

use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use protocol::rest::Role;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult, ErrorCode};

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

/// The audience of board tokens (the OTA seed's latest version).
pub const OTA_AUDIENCE: &str = "ota_api";
/// The issuer this server writes into board tokens and wants back.
pub const OTA_ISSUER: &str = "factory-server";
/// The roles of a board token: a board, allowed to download firmware.
pub const OTA_ROLES: [&str; 2] = ["device", "fw_download"];
/// The roles of the seed document's tokens (`--ota-legacy-boards`).
pub const OTA_LEGACY_ROLES: [&str; 2] = ["device", "ota_client"];

/// The claims of an OTA token: the seed's payload (`ota-firmware-server.md`) plus `scope`,
/// which keeps it apart from user and device tokens signed with the same key, and the latest
/// seed version's `aud` and `iss` (absent in legacy tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
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

impl OtaClaims {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// A token of the latest seed version: this server's issuer and audience, the board role.
    pub fn is_current(&self) -> bool {
        self.aud.as_deref() == Some(OTA_AUDIENCE)
            && self.iss.as_deref() == Some(OTA_ISSUER)
            && self.has_role("device")
    }

    /// A token of the seed document, as boards already in the field hold.
    pub fn is_legacy(&self) -> bool {
        self.aud.is_none() && self.has_role("ota_client")
    }
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ota_algorithm: Algorithm,
    ota_validation: Validation,
}

fn pinned(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.algorithms = vec![algorithm];
    validation.leeway = JWT_LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp", "sub"]);
    // The audience of board tokens is checked by `verify_ota` itself, so that a legacy token
    // without one can be told apart from a token for another audience.
    validation.validate_aud = false;
    validation
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: pinned(Algorithm::HS256),
            ota_algorithm: Algorithm::HS256,
            ota_validation: pinned(Algorithm::HS256),
        }
    }

    /// The same keys with OTA tokens signed and pinned to `algorithm` (HS256 or HS512).
    pub fn with_ota_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.ota_algorithm = algorithm;
        self.ota_validation = pinned(algorithm);
        self
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
        jsonwebtoken::encode(&Header::new(self.ota_algorithm), claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// Verifies an OTA token: signature, pinned algorithm, expiry, the `ota` scope, and either
    /// the latest seed version's audience, issuer and `device` role or (only when `legacy`)
    /// the seed document's `ota_client` role. User and device tokens fail on the scope.
    pub fn verify_ota(&self, token: &str, legacy: bool) -> Result<OtaClaims, TokenError> {
        // Decoded as the common claims first, so a user or device token is told apart by its
        // scope rather than by a missing field.
        let common = jsonwebtoken::decode::<ScopeOnly>(token, &self.decoding, &self.ota_validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if common.claims.scope != Scope::Ota {
            return Err(TokenError::WrongScope);
        }
        let data = jsonwebtoken::decode::<OtaClaims>(token, &self.decoding, &self.ota_validation)
            .map_err(|_| TokenError::Invalid)?;
        let claims = data.claims;
        if claims.is_current() || (legacy && claims.is_legacy()) {
            Ok(claims)
        } else {
            Err(TokenError::Invalid)
        }
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
            aud: Some(OTA_AUDIENCE.into()),
            iss: Some(OTA_ISSUER.into()),
            sub: "board-1".into(),
            project: "fan".into(),
            roles: vec!["device".into(), "fw_download".into()],
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
        assert_eq!(keys.verify_ota(&ota, false).unwrap().project, "fan");
        assert_eq!(keys.verify(&ota, Scope::User), Err(TokenError::WrongScope));
        assert_eq!(
            keys.verify(&ota, Scope::Device),
            Err(TokenError::WrongScope)
        );
        let user = keys.issue_user("u1", Role::Admin, 0, 60).unwrap().token;
        assert_eq!(keys.verify_ota(&user, false), Err(TokenError::WrongScope));
        let device = keys.issue_device("edge-1", 60).unwrap().token;
        assert_eq!(keys.verify_ota(&device, false), Err(TokenError::WrongScope));
        let expired = keys.issue_ota(&ota_claims(-3600)).unwrap();
        assert_eq!(keys.verify_ota(&expired, false), Err(TokenError::Expired));
        let other = JwtKeys::new(b"another-secret-another-secret-xx");
        assert_eq!(other.verify_ota(&ota, false), Err(TokenError::Invalid));
    }

    #[test]
    fn legacy_tokens_pass_only_in_legacy_mode_and_the_algorithm_is_pinned() {
        let keys = keys();
        let mut legacy = ota_claims(600);
        legacy.aud = None;
        legacy.iss = None;
        legacy.roles = vec!["device".into(), "ota_client".into()];
        let token = keys.issue_ota(&legacy).unwrap();
        assert_eq!(keys.verify_ota(&token, false), Err(TokenError::Invalid));
        assert!(keys.verify_ota(&token, true).is_ok());
        let mut stranger = ota_claims(600);
        stranger.aud = Some("someone_else".into());
        let token = keys.issue_ota(&stranger).unwrap();
        assert_eq!(keys.verify_ota(&token, true), Err(TokenError::Invalid));
        let hs512 = keys.clone().with_ota_algorithm(Algorithm::HS512);
        let token = hs512.issue_ota(&ota_claims(600)).unwrap();
        assert!(hs512.verify_ota(&token, false).is_ok());
        assert_eq!(keys.verify_ota(&token, false), Err(TokenError::Invalid));
        let token = keys.issue_ota(&ota_claims(600)).unwrap();
        assert_eq!(hs512.verify_ota(&token, false), Err(TokenError::Invalid));
    }
}
