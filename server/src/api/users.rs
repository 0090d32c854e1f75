//! The user routes: login/logout, the caller's own account and password, and user management;
//! and the first-admin bootstrap. The rows and their queries live in `store::users`.

use actix_web::{web, HttpRequest, HttpResponse};
use protocol::rest::{
    ChangePasswordRequest, CreateUserRequest, Envelope, LoginRequest, LoginResponse, Role,
    UpdateUserRequest,
};

use crate::api::audit::{audited, by_user};
use crate::api::paging::Paging;
use crate::auth::{self, Authenticated, Authorized, ListUsers, ManageUsers};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::refusals;
use crate::state::AppState;
use crate::store::audit::{self, AuditEntry};
use crate::store::db::Db;
use crate::store::tokens;
use crate::store::users::*;

pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 1024;

pub fn validate_username(username: &str) -> ApiResult<()> {
    let ok = !username.is_empty()
        && username.len() <= 64
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "username must be 1-64 characters of letters, digits, '.', '_', '-' or '@'",
        ))
    }
}

pub fn validate_password(password: &str) -> ApiResult<()> {
    if password.chars().count() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            format!("password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// The name of the account created on an empty database.
pub const FIRST_ADMIN: &str = "admin";

/// Creates the first admin when the user table is empty. Without a configured password a
/// random one is generated, logged once and written to `<data dir>/initial-admin-password`
/// (mode 0600); there is no fixed default password.
pub fn bootstrap_admin(
    db: &Db,
    configured: Option<&str>,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let existing = db
        .run_blocking(|conn| Ok(count(conn)?))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    if existing > 0 {
        // The setting is read only while the user table is empty; saying so spares an
        // operator a login that fails with nothing in the log to say why.
        if configured.is_some() {
            tracing::warn!(
                users = existing,
                "the admin password setting is ignored: users exist already (it sets only the first admin's password; use `factory-server user passwd` to change one)"
            );
        }
        return Ok(());
    }
    let (password, generated) = match configured {
        Some(p) => (p.to_owned(), false),
        None => (auth::random_password(), true),
    };
    let hash = auth::hash_password(&password).map_err(|e| anyhow::anyhow!(e.message))?;
    // Another server process may have bootstrapped between the count and now, so
    // `bootstrap` counts again in its transaction.
    db.run_blocking(|conn| Ok(bootstrap(conn, FIRST_ADMIN, hash.clone())?))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    if generated {
        let path = data_dir.join("initial-admin-password");
        auth::write_secret_file(&path, &password)?;
        tracing::warn!(
            username = FIRST_ADMIN,
            password = %password,
            file = %path.display(),
            "created the first admin with a generated password; change it after the first login"
        );
    } else {
        tracing::info!(
            username = FIRST_ADMIN,
            "created the first admin with the configured password"
        );
    }
    Ok(())
}

fn login_response(state: &AppState, user: &User) -> ApiResult<LoginResponse> {
    let role = user.role()?;
    let issued = state.jwt.issue_user(
        &user.id,
        role,
        user.token_version,
        state.config.user_token_ttl_secs,
    )?;
    Ok(LoginResponse {
        token: issued.token,
        expires_at: issued.expires_at,
        role,
    })
}

/// `POST /api/v1/auth/login`. Failed attempts are counted per account and per source address;
/// past the limit both are refused with 429 until the lock ends, correct password or not.
/// Each attempt takes its slot in both counts before its password is checked, so a burst of
/// concurrent guesses gets no more checks than the limit; the check itself waits its turn on
/// the hashing threads (`hashing.rs`).
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<LoginRequest>,
) -> ApiResult<HttpResponse> {
    let LoginRequest { username, password } = body.into_inner();
    if username.is_empty() || username.len() > 128 || password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            "username or password has a bad length",
        ));
    }
    let source = crate::auth::source_of(&req);
    let source_key = source.clone().unwrap_or_default();
    let account_key = username.to_lowercase();
    let limits = &state.limits;
    let mut slots = refusals::admit(
        &[
            (&limits.login_by_source, source_key.as_str()),
            (&limits.login_by_account, account_key.as_str()),
        ],
        "too many failed logins; try again later",
    )
    .await
    .inspect_err(|_| crate::metrics::login_failed("locked"))?;
    let (Some(by_account), Some(by_source)) = (slots.pop(), slots.pop()) else {
        return Err(ApiError::internal("login admission lost a slot"));
    };
    let name = username.clone();
    let user = state
        .db
        .run(move |conn| Ok(find_by_username(conn, &name)?))
        .await?;
    // An unknown name is checked against a dummy hash, so both failures take as long.
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let ok = limits.hashing.verify(password, hash).await?;
    let Some(user) = user.filter(|u| ok && !u.disabled) else {
        let mut entries = vec![AuditEntry::new("auth.login", "failure")
            .actor(Some(username.clone()), None)
            .target(Some(username))
            .source(source)];
        let (source_lock, account_lock) = tokio::join!(by_source.fail(), by_account.fail());
        entries.extend(source_lock.as_ref().map(refusals::lockout_entry));
        entries.extend(account_lock.as_ref().map(refusals::lockout_entry));
        crate::metrics::login_failed("credentials");
        refusals::record_all(&state.db, entries).await?;
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidCredentials,
            "wrong username or password",
        ));
    };
    tokio::join!(by_account.succeed(true), by_source.succeed(false));
    let response = login_response(&state, &user)?;
    let entry = AuditEntry::new("auth.login", "success")
        .actor(Some(user.username.clone()), Some(response.role))
        .target(Some(user.username.clone()))
        .source(source);
    state
        .db
        .run(move |conn| Ok(audit::record(conn, &entry)?))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(response)))
}

/// `POST /api/v1/auth/logout`: revokes the token the request came with.
pub async fn logout(
    user: Authorized<Authenticated>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let entry = by_user(&user, &req, "auth.logout").target(Some(user.username.clone()));
    let (jti, id, exp) = (user.jti.clone(), user.id.clone(), user.expires_at);
    audited(&state.db, entry, move |conn| {
        Ok(tokens::revoke(conn, &jti, &id, exp)?)
    })
    .await?;
    // Committed: a dashboard opened with this token closes now, not at its next check.
    state.dashboards.revoke_token(&user.jti, "logged out");
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"loggedOut": true}))))
}

/// `GET /api/v1/auth/me`.
pub async fn me(
    user: Authorized<Authenticated>,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    let id = user.id.clone();
    let row = state.db.run(move |conn| Ok(require(conn, &id)?)).await?;
    let user = row.to_api()?;
    let rights = state
        .policy
        .rights_of(user.role, crate::auth::permissions_of(user.role));
    Ok(HttpResponse::Ok().json(Envelope::ok(protocol::rest::Me { user, rights })))
}

/// `POST /api/v1/auth/password`: changes one's own password, revokes every other token of the
/// user, and answers with a fresh token.
pub async fn change_password(
    user: Authorized<Authenticated>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<ChangePasswordRequest>,
) -> ApiResult<HttpResponse> {
    let ChangePasswordRequest {
        current_password,
        new_password,
    } = body.into_inner();
    validate_password(&new_password)?;
    let account_key = user.username.to_lowercase();
    let slot = state
        .limits
        .login_by_account
        .reserve(&account_key, refusals::ADMISSION_WAIT)
        .await
        .map_err(|r| refusals::refusal_error(r, "too many failed attempts"))?;
    let id = user.id.clone();
    let hash = state
        .db
        .run(move |conn| Ok(require(conn, &id)?.password_hash))
        .await?;
    let current_ok = state
        .limits
        .hashing
        .verify(current_password, Some(hash))
        .await?;
    let entry = by_user(&user, &req, "user.password").target(Some(user.username.clone()));
    if !current_ok {
        let mut entries = vec![entry.outcome("failure: wrong current password")];
        entries.extend(slot.fail().await.as_ref().map(refusals::lockout_entry));
        refusals::record_all(&state.db, entries).await?;
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidCredentials,
            "current password is wrong",
        ));
    }
    slot.succeed(false).await;
    let hash = state.limits.hashing.hash(new_password).await?;
    let id = user.id.clone();
    let updated = audited(&state.db, entry, move |conn| {
        Ok(set_password(conn, &id, hash)?)
    })
    .await?;
    // Every token issued before is revoked, so every dashboard open with one closes.
    state.dashboards.revoke_user(&user.id, "password changed");
    Ok(HttpResponse::Ok().json(Envelope::ok(login_response(&state, &updated)?)))
}

/// `GET /api/v1/users`.
pub async fn list_users(
    _user: Authorized<ListUsers>,
    state: web::Data<AppState>,
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = paging.checked()?;
    let page = state
        .db
        .run(move |conn| Ok(list(conn, limit, offset)?))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

/// `POST /api/v1/users`.
pub async fn create_user(
    admin: Authorized<ManageUsers>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CreateUserRequest>,
) -> ApiResult<HttpResponse> {
    let CreateUserRequest {
        username,
        password,
        role,
    } = body.into_inner();
    validate_username(&username)?;
    validate_password(&password)?;
    let entry = by_user(&admin, &req, "user.create")
        .target(Some(username.clone()))
        .params(serde_json::json!({"role": role.as_str()}));
    let hash = state.limits.hashing.hash(password).await?;
    let user = audited(&state.db, entry, move |conn| {
        Ok(insert(conn, &username, hash, role)?)
    })
    .await?;
    Ok(HttpResponse::Created().json(Envelope::ok(user.to_api()?)))
}

/// `GET /api/v1/users/{id}`.
pub async fn get_user(
    _admin: Authorized<ManageUsers>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let user = state.db.run(move |conn| Ok(require(conn, &id)?)).await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(user.to_api()?)))
}

/// `PATCH /api/v1/users/{id}`: role, disabled, password. Any change revokes the user's
/// earlier tokens; the last enabled admin cannot be demoted or disabled.
pub async fn update_user(
    admin: Authorized<ManageUsers>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<UpdateUserRequest>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let change = body.into_inner();
    if let Some(p) = &change.password {
        validate_password(p)?;
    }
    let reason = if change.disabled == Some(true) {
        "user disabled"
    } else if change.role.is_some() {
        "role changed"
    } else if change.password.is_some() {
        "password changed"
    } else {
        "user changed"
    };
    let target = id.clone();
    let entry = by_user(&admin, &req, "user.update")
        .target(Some(id.clone()))
        .params(serde_json::json!({
            "role": change.role.map(Role::as_str),
            "disabled": change.disabled,
            "passwordChanged": change.password.is_some(),
        }));
    let hash = match change.password.clone() {
        Some(password) => Some(state.limits.hashing.hash(password).await?),
        None => None,
    };
    let (role, disabled) = (change.role, change.disabled);
    let user = audited(&state.db, entry, move |conn| {
        Ok(update(conn, &id, role, disabled, hash)?)
    })
    .await?;
    // The change revoked every earlier token of the user (`token_version`), so their open
    // dashboards close now.
    state.dashboards.revoke_user(&target, reason);
    Ok(HttpResponse::Ok().json(Envelope::ok(user.to_api()?)))
}

/// `DELETE /api/v1/users/{id}`. A deleted user's tokens fail at once: the user is looked up on
/// every request.
pub async fn delete_user(
    admin: Authorized<ManageUsers>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let entry = by_user(&admin, &req, "user.delete").target(Some(id.clone()));
    let deleted = id.clone();
    audited(&state.db, entry, move |conn| Ok(delete(conn, &id)?)).await?;
    state.dashboards.revoke_user(&deleted, "user deleted");
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"deleted": deleted}))))
}
