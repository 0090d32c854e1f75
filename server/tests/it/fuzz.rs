//! Fuzz targets for the server's own decoding and checking of outside input: dispatch bodies
//! (parsing, validation, the role and limit checks), sync batches (`sync::parse_body`),
//! device frames as a session turns them into stored rows and dashboard events, and the TOML
//! configuration file. The wire examples come from `protocol/tests/corpus`, the configuration
//! examples from `tests/corpus/config`; see the `fuzzing` crate for the mutations.

use std::path::{Path, PathBuf};

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fuzzing::{corpus, json_inputs, run, Seed, Verdict};
use protocol::dashboard::DashboardEvent;
use protocol::device::{DeviceEvent, DeviceFrame};
use protocol::rest::Role;
use server::actors::events::Publish;
use server::auth::AuthUser;
use server::config::{Cli, Config};
use server::error::ApiError;
use server::store::telemetry::{Telemetry, MAX_STORED_TEXT};

fn protocol_corpus(target: &str) -> Vec<Seed> {
    corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../protocol/tests/corpus")
            .join(target),
    )
}

const VOCABULARY: &[&str] = &[
    "type",
    "id",
    "command",
    "confirm",
    "wait",
    "timeoutMs",
    "queueIfOffline",
    "queueTtlMs",
    "deviceIds",
    "patch",
    "template",
    "args",
    "reason",
    "sha256",
    "records",
    "kind",
    "companyId",
    "payload",
    "createdAt",
    "status",
    "metrics",
    "ts",
    "line",
    "level",
    "percent",
    "message",
    "force_sync",
    "reboot_os",
    "push_config",
    "exec_shell",
    "disk_usage",
    "update_firmware",
    "disable_device",
    "bottle",
    "batch_fixate",
    "log_line",
    "alert",
    "command_progress",
];

/// A refusal must be a client error with a code other than `internal`: bad input is never a
/// 5xx (`contract.md`).
fn client_error(e: &ApiError) -> Result<Verdict, String> {
    if e.status.is_client_error() && e.code.as_str() != "internal" {
        Ok(Verdict::Refused)
    } else {
        Err(format!(
            "refused with {} {}: {}",
            e.status,
            e.code.as_str(),
            e.message
        ))
    }
}

fn user(role: Role) -> AuthUser {
    AuthUser {
        id: "u1".into(),
        username: "fuzz".into(),
        role,
        jti: "j1".into(),
        expires_at: Utc::now(),
    }
}

#[test]
fn fuzz_dispatch_bodies() {
    let seeds: Vec<Seed> = protocol_corpus("rest")
        .into_iter()
        .filter(|s| s.name.starts_with("dispatch-") || s.name.starts_with("bulk-dispatch"))
        .chain(protocol_corpus("command").into_iter().map(|s| {
            // Each command of the corpus, as a confirmed dispatch.
            let command: serde_json::Value = serde_json::from_slice(&s.bytes).unwrap();
            let body = serde_json::json!({"command": command, "confirm": true, "timeoutMs": 1000});
            Seed::new(format!("dispatch-{}", s.name), body.to_string())
        }))
        .collect();
    run(
        "server_dispatch",
        &seeds,
        json_inputs(&seeds, VOCABULARY),
        |seed, bytes| {
            // A bulk body is read by its own parser: `deviceIds` is no field of a single one.
            let parsed = if seed.name.starts_with("bulk-dispatch") {
                server::api::commands::parse_bulk_dispatch(bytes).map(|bulk| bulk.request)
            } else {
                server::api::commands::parse_dispatch(bytes)
            };
            let request = match parsed {
                Ok(request) => request,
                Err(e) => return client_error(&e),
            };
            if let Err(why) = request.command.validate() {
                return Err(format!("parse_dispatch passed an invalid command: {why}"));
            }
            // The admin may send anything of the right shape; other roles may be refused,
            // but only with a client error.
            let mut verdict = Verdict::Refused;
            for role in [Role::Admin, Role::Manager, Role::Operator, Role::Viewer] {
                match server::api::commands::check(
                    &server::policy::Policy::default(),
                    &user(role),
                    &request,
                ) {
                    Ok(checked) => {
                        if checked.timeout.is_zero() {
                            return Err("a dispatch was allowed without a timeout".into());
                        }
                        verdict = Verdict::Accepted;
                    }
                    Err(e) => {
                        client_error(&e)?;
                    }
                }
            }
            Ok(verdict)
        },
    );
}

#[test]
fn fuzz_sync_batches() {
    let seeds = protocol_corpus("sync");
    run(
        "server_sync",
        &seeds,
        json_inputs(&seeds, VOCABULARY),
        |_, bytes| match server::api::sync::parse_body(bytes) {
            Err(e) => client_error(&e),
            Ok(records) => {
                if records.len() > server::api::sync::MAX_SYNC_RECORDS {
                    return Err(format!("{} records accepted", records.len()));
                }
                for r in &records {
                    if r.id.trim().is_empty() || r.id.len() > server::api::sync::MAX_RECORD_ID_LEN {
                        return Err(format!("record id {:?} accepted", r.id));
                    }
                    if r.company_id.trim().is_empty() {
                        return Err("empty companyId accepted".into());
                    }
                    if !r.payload.is_object() {
                        return Err(format!("payload {} accepted", r.payload));
                    }
                }
                Ok(Verdict::Accepted)
            }
        },
    );
}

/// What a device session does with a decoded frame, short of the actors: the rows the
/// telemetry writer stores and the event dashboards receive.
#[test]
fn fuzz_device_frames_as_a_session_takes_them() {
    let seeds = protocol_corpus("device_frame");
    let marker = "\n[truncated: ";
    run(
        "server_device_frame",
        &seeds,
        json_inputs(&seeds, VOCABULARY),
        |_, bytes| {
            let Ok(frame) = serde_json::from_slice::<DeviceFrame>(bytes) else {
                return Ok(Verdict::Refused);
            };
            let DeviceFrame::Event(event) = frame else {
                return Ok(Verdict::Accepted);
            };
            let bounded = |text: &str| text.len() <= MAX_STORED_TEXT + marker.len() + 40;
            match &event {
                DeviceEvent::LogLine(log) => {
                    let Telemetry::Log(row) =
                        Telemetry::log("edge-1", log.ts, &log.level, &log.line)
                    else {
                        return Err("a log line made no log row".into());
                    };
                    if row.level.chars().count() > 16 || !bounded(&row.line) {
                        return Err(format!(
                            "stored log row is not bounded: level {} chars, line {} bytes",
                            row.level.chars().count(),
                            row.line.len()
                        ));
                    }
                }
                DeviceEvent::Alert(alert) => {
                    let payload =
                        serde_json::json!({"severity": alert.severity, "message": alert.message});
                    let Telemetry::Event(row) =
                        Telemetry::event("edge-1", alert.ts, "alert", &payload)
                    else {
                        return Err("an alert made no event row".into());
                    };
                    if !bounded(&row.payload) {
                        return Err(format!("stored payload of {} bytes", row.payload.len()));
                    }
                }
                _ => {}
            }
            let publish = Publish::device_event("edge-1", event.clone())
                .ok_or("an accepted event cannot be published")?;
            let shown: DashboardEvent = serde_json::from_str(&publish.json)
                .map_err(|e| format!("the published event does not decode: {e}"))?;
            if shown.event != event || publish.event_type != event.event_type() {
                return Err(format!("published {} for {event:?}", publish.json));
            }
            Ok(Verdict::Accepted)
        },
    );
}

/// The TOML examples: the shipped one and those of the configuration tests.
fn config_seeds() -> Vec<Seed> {
    let mut seeds = corpus(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/config"));
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/factory-server.toml");
    seeds.push(Seed::new(
        "deploy-factory-server.toml",
        std::fs::read(shipped).expect("the shipped example"),
    ));
    seeds
}

/// What an accepted configuration must allow: every address, URL and key it names parses,
/// and every lifetime and period, added to now, is still a time (a setting the server takes
/// and then cannot add to a clock panics when a login, a janitor pass or a wait uses it).
fn usable(config: &Config) -> Result<(), String> {
    let _ = config.bind_addr();
    let _ = config.database();
    config.firmware_keys().map_err(|e| e.to_string())?;
    let now = Utc::now();
    let later = |what: &str, secs: u64| -> Result<(), String> {
        i64::try_from(secs)
            .ok()
            .and_then(TimeDelta::try_seconds)
            .and_then(|d| now.checked_add_signed(d))
            .and_then(|_| std::time::Instant::now().checked_add(Duration::from_secs(secs)))
            .map(|_| ())
            .ok_or_else(|| format!("{what} = {secs} was accepted but is past any clock"))
    };
    later("user_token_ttl_secs", config.user_token_ttl_secs)?;
    later("device_token_ttl_secs", config.device_token_ttl_secs)?;
    later("lockout_secs", config.lockout_secs)?;
    later("restart_confirm_secs", config.restart_confirm_secs)?;
    later("reboot_confirm_secs", config.reboot_confirm_secs)?;
    later(
        "deployment_stage_timeout_secs",
        config.deployment_stage_timeout_secs,
    )?;
    later(
        "deployment_activate_timeout_secs",
        config.deployment_activate_timeout_secs,
    )?;
    later("cloud_retry_max_secs", config.cloud_retry_max_secs)?;
    later(
        "ota_jwt_expiry_minutes",
        config.ota_jwt_expiry_minutes.saturating_mul(60),
    )?;
    TimeDelta::try_days(i64::from(config.log_retention_days))
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| {
            format!(
                "log_retention_days = {} was accepted but reaches before any date",
                config.log_retention_days
            )
        })?;
    Ok(())
}

const SETTINGS: [&str; 33] = [
    "bind",
    "data_dir",
    "database_url",
    "jwt_secret",
    "enrollment_key",
    "admin_password",
    "allow_auto_enrollment",
    "allow_query_token",
    "user_token_ttl_secs",
    "device_token_ttl_secs",
    "login_max_failures",
    "source_max_failures",
    "lockout_secs",
    "log_retention_days",
    "restart_confirm_secs",
    "reboot_confirm_secs",
    "deployment_stage_timeout_secs",
    "deployment_activate_timeout_secs",
    "cloud_url",
    "cloud_token",
    "cloud_token_file",
    "cloud_batch_size",
    "cloud_concurrency",
    "cloud_max_attempts",
    "cloud_retry_max_secs",
    "firmware_max_bytes",
    "firmware_trusted_keys",
    "firmware_require_signature",
    "ota_admin_secret",
    "ota_jwt_expiry_minutes",
    "ota_no_jwt",
    "log_level",
    "tls_cert",
];

#[test]
fn fuzz_config_files() {
    let seeds = config_seeds();
    let dir = std::env::temp_dir().join(format!("factory-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("factory-server.toml");
    run(
        "server_config",
        &seeds,
        fuzzing::settings_inputs(&seeds, &SETTINGS),
        |_, bytes| {
            std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
            // Built rather than parsed, so no FACTORY_* variable of the machine leaks in.
            let cli = Cli {
                config: Some(file.clone()),
                ..Cli::default()
            };
            match Config::load(cli) {
                Err(e) => {
                    let text = e.to_string();
                    if text.contains('\n') || text.is_empty() {
                        return Err(format!("not a one-line reason: {text:?}"));
                    }
                    Ok(Verdict::Refused)
                }
                Ok(config) => {
                    usable(&config)?;
                    Ok(Verdict::Accepted)
                }
            }
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}
