//! `factory-server device register|token`: a device registered before it is switched on, and
//! its token issued on the server's host (for a line PC set up without the enrollment key).

use clap::Subcommand;
use protocol::rest::RegisterDeviceRequest;

use crate::admin::actor;
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::store::audit::{audited, AuditEntry};
use crate::store::db::Db;
use crate::store::devices::{self, Enrollment};

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Registers a device (OFFLINE, without a token) so it may enroll while auto-enrollment
    /// is off.
    Register {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        company_id: Option<String>,
        #[arg(long)]
        production_line_id: Option<String>,
        /// A group to put it in (repeatable).
        #[arg(long = "group-id")]
        group_ids: Vec<String>,
    },
    /// Issues a registered device's token and prints it; the device's earlier token stops
    /// working at its next connection.
    Token { id: String },
}

pub fn run(command: DeviceCommand, db: &Db, config: &Config) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Register {
            id,
            name,
            company_id,
            production_line_id,
            group_ids,
        } => {
            let request = RegisterDeviceRequest {
                id,
                name,
                company_id,
                production_line_id,
                group_ids,
            };
            crate::api::devices::check_registration(&request).map_err(message)?;
            let entry = AuditEntry::new("device.register", "success")
                .actor(Some(actor()), None)
                .target(Some(request.id.clone()))
                .params(serde_json::to_value(&request).unwrap_or_default());
            let row = db
                .run_blocking(|conn| {
                    audited(
                        conn,
                        entry,
                        |conn| Ok(devices::register(conn, &request)?),
                        |e: &ApiError| e.code,
                    )
                })
                .map_err(message)?;
            println!("registered {} ({})", row.id, row.name);
        }
        DeviceCommand::Token { id } => {
            crate::api::devices::validate_device_id(&id).map_err(message)?;
            let secret =
                crate::auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
            let keys = crate::auth::JwtKeys::new(&secret);
            let issued = keys
                .issue_device(&id, config.device_token_ttl_secs)
                .map_err(message)?;
            // Never auto-enrolled: a token for a mistyped id must not create a device.
            db.run_blocking(|conn| {
                devices::require(conn, &id)?;
                Ok(devices::enroll(
                    conn,
                    &id,
                    &issued.jti,
                    &Enrollment::default(),
                    false,
                    Some(actor()),
                )?)
            })
            .map_err(|e| match e.code {
                ErrorCode::DeviceNotFound => {
                    anyhow::anyhow!("no device {id}; register it first (`device register {id}`)")
                }
                _ => message(e),
            })?;
            eprintln!(
                "token of {id}, valid until {}:",
                issued.expires_at.to_rfc3339()
            );
            println!("{}", issued.token);
        }
    }
    Ok(())
}

fn message(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!(e.message)
}
