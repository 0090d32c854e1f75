//! `factory-server user add|list|passwd|disable`: the REST API's user changes from the
//! command line, with the same checks (name, password length, the last enabled admin) and an
//! audit row each.

use clap::Subcommand;
use protocol::rest::Role;

use crate::admin::{actor, read_or_generate_password};
use crate::auth::hash_password;
use crate::error::ApiResult;
use crate::store::audit::{audited, AuditEntry};
use crate::store::db::Db;
use crate::store::users::{self, User};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Adds a user; prints a generated password unless --password-stdin gives one.
    Add {
        username: String,
        /// VIEWER, OPERATOR, MANAGER or ADMIN.
        #[arg(long, default_value = "VIEWER")]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Lists the users: name, role, state, id.
    List,
    /// Sets a user's password and revokes its tokens; prints a generated password unless
    /// --password-stdin gives one.
    Passwd {
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disables a user and revokes its tokens (the last enabled admin stays enabled).
    Disable { username: String },
}

pub fn run(command: UserCommand, db: &Db) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            username,
            role,
            password_stdin,
        } => {
            crate::api::users::validate_username(&username).map_err(message)?;
            let role = Role::parse(&role.to_ascii_uppercase()).ok_or_else(|| {
                anyhow::anyhow!("`{role}` is not a role (VIEWER, OPERATOR, MANAGER, ADMIN)")
            })?;
            let (password, generated) = read_or_generate_password(password_stdin)?;
            let hash = hash_password(&password).map_err(message)?;
            let entry =
                entry("user.create", &username).params(serde_json::json!({"role": role.as_str()}));
            let user = db
                .run_blocking(|conn| {
                    audited(
                        conn,
                        entry,
                        |conn| Ok(users::insert(conn, &username, hash, role)?),
                        code_of,
                    )
                })
                .map_err(message)?;
            println!("added {} ({}) id {}", user.username, user.role, user.id);
            print_generated(&password, generated);
        }
        UserCommand::List => {
            let page = db
                .run_blocking(|conn| Ok(users::list(conn, i64::MAX, 0)?))
                .map_err(message)?;
            println!("{:<24} {:<9} {:<9} id", "username", "role", "state");
            for user in page.items {
                let state = if user.disabled { "disabled" } else { "enabled" };
                println!(
                    "{:<24} {:<9} {:<9} {}",
                    user.username,
                    user.role.as_str(),
                    state,
                    user.id
                );
            }
        }
        UserCommand::Passwd {
            username,
            password_stdin,
        } => {
            let user = find(db, &username)?;
            let (password, generated) = read_or_generate_password(password_stdin)?;
            let hash = hash_password(&password).map_err(message)?;
            let entry =
                entry("user.update", &user.id).params(serde_json::json!({"passwordChanged": true}));
            change(db, entry, &user.id, None, Some(hash))?;
            println!("password of {username} set; its tokens stop working");
            print_generated(&password, generated);
        }
        UserCommand::Disable { username } => {
            let user = find(db, &username)?;
            let entry =
                entry("user.update", &user.id).params(serde_json::json!({"disabled": true}));
            change(db, entry, &user.id, Some(true), None)?;
            println!("{username} disabled; its tokens stop working");
        }
    }
    Ok(())
}

fn entry(action: &str, target: &str) -> AuditEntry {
    AuditEntry::new(action, "success")
        .actor(Some(actor()), None)
        .target(Some(target.to_owned()))
}

fn code_of(e: &crate::error::ApiError) -> crate::error::ErrorCode {
    e.code
}

fn message(e: crate::error::ApiError) -> anyhow::Error {
    anyhow::anyhow!(e.message)
}

fn find(db: &Db, username: &str) -> anyhow::Result<User> {
    db.run_blocking(|conn| Ok(users::find_by_username(conn, username)?))
        .map_err(message)?
        .ok_or_else(|| anyhow::anyhow!("no user named {username}"))
}

/// A change through `store::users::update`, which bumps the token version (every earlier
/// token of the user stops working) and keeps the last enabled admin.
fn change(
    db: &Db,
    entry: AuditEntry,
    id: &str,
    disabled: Option<bool>,
    hash: Option<String>,
) -> anyhow::Result<User> {
    db.run_blocking(|conn| -> ApiResult<User> {
        audited(
            conn,
            entry,
            |conn| Ok(users::update(conn, id, None, disabled, hash)?),
            code_of,
        )
    })
    .map_err(message)
}

fn print_generated(password: &str, generated: bool) {
    if generated {
        println!("password: {password}");
    }
}
