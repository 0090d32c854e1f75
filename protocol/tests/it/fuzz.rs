//! Fuzz targets for every decoder of outside input in this crate: device, server and dashboard
//! frames, commands, REST bodies and sync batches. Each decodes its corpus
//! (`tests/corpus/<target>/`, the spec's and the tests' examples), then proptest-generated
//! mutations of it; nothing may panic, and whatever decodes must come back unchanged from its
//! own encoding. See the `fuzzing` crate for the mutations and the counts each target prints.

use std::fmt::Debug;
use std::path::Path;

use fuzzing::{corpus, json_inputs, run, Seed, Verdict};
use protocol::commands::Command;
use protocol::dashboard::{DashboardClientFrame, DashboardEvent};
use protocol::device::{DeviceFrame, ServerFrame};
use protocol::firmware::DeploymentRequest;
use protocol::ota::OtaTokenRequest;
use protocol::rest::{
    BulkDispatchRequest, ChangePasswordRequest, CreateUserRequest, DispatchRequest, GroupRequest,
    LoginRequest, MembersRequest, UpdateDeviceRequest, UpdateUserRequest,
};
use protocol::sync::SyncRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn seeds(target: &str) -> Vec<Seed> {
    corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus")
            .join(target),
    )
}

/// Field names and tags of the wire types: what the mutations insert and use as keys.
const VOCABULARY: &[&str] = &[
    "type",
    "id",
    "token",
    "command",
    "commandId",
    "success",
    "output",
    "data",
    "percent",
    "message",
    "status",
    "version",
    "bootId",
    "runId",
    "metrics",
    "ts",
    "line",
    "level",
    "code",
    "valid",
    "severity",
    "deviceId",
    "deviceIds",
    "eventTypes",
    "timeoutMs",
    "patch",
    "template",
    "args",
    "reason",
    "lines",
    "url",
    "sha256",
    "size",
    "records",
    "kind",
    "companyId",
    "payload",
    "createdAt",
    "auth",
    "hello",
    "error",
    "subscribe",
    "command_result",
    "command_progress",
    "log_line",
    "scan",
    "print",
    "alert",
    "force_sync",
    "push_config",
    "exec_shell",
    "update_firmware",
    "disable_device",
    "bottle",
    "batch_fixate",
    "ONLINE",
    "ADMIN",
];

/// Decodes `bytes` as `T`; an accepted value must survive its own encoding unchanged.
fn decode<T>(bytes: &[u8]) -> Result<Option<T>, String>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(bytes) else {
        return Ok(None);
    };
    round_trip(&value)?;
    Ok(Some(value))
}

fn round_trip<T>(value: &T) -> Result<(), String>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let encoded = serde_json::to_vec(value)
        .map_err(|e| format!("accepted {value:?} does not encode: {e}"))?;
    let back: T = serde_json::from_slice(&encoded).map_err(|e| {
        format!(
            "the encoding of an accepted value does not decode ({e}): {}",
            String::from_utf8_lossy(&encoded)
        )
    })?;
    if &back != value {
        return Err(format!(
            "round trip changed the value: {value:?} became {back:?}"
        ));
    }
    Ok(())
}

fn verdict<T>(decoded: Option<T>) -> Verdict {
    match decoded {
        Some(_) => Verdict::Accepted,
        None => Verdict::Refused,
    }
}

#[test]
fn fuzz_device_frames() {
    let seeds = seeds("device_frame");
    run(
        "device_frame",
        &seeds,
        json_inputs(&seeds, VOCABULARY),
        |_, bytes| {
            let frame = decode::<DeviceFrame>(bytes)?;
            if let Some(DeviceFrame::Event(event)) = &frame {
                // What the server makes of it for dashboards must decode as the same event.
                let shown = DashboardEvent {
                    device_id: "edge-1".into(),
                    event: event.clone(),
                };
                round_trip(&shown)?;
                let text = serde_json::to_value(event).map_err(|e| e.to_string())?;
                if text["type"] != event.event_type() {
                    return Err(format!("event_type {} for {text}", event.event_type()));
                }
            }
            Ok(verdict(frame))
        },
    );
}

#[test]
fn fuzz_server_frames() {
    let seeds = seeds("server_frame");
    run(
        "server_frame",
        &seeds,
        json_inputs(&seeds, VOCABULARY),
        |_, bytes| {
            let frame = decode::<ServerFrame>(bytes)?;
            if let Some(ServerFrame::Command { command, .. }) = &frame {
                // The agent checks what serde cannot; it must not panic either.
                let _ = command.validate();
            }
            Ok(verdict(frame))
        },
    );
}

#[test]
fn fuzz_dashboard_frames() {
    let seeds = seeds("dashboard_frame");
    run(
        "dashboard_frame",
        &seeds,
        json_inputs(&seeds, VOCABULARY),
        |_, bytes| Ok(verdict(decode::<DashboardClientFrame>(bytes)?)),
    );
}

#[test]
fn fuzz_commands() {
    let seeds = seeds("command");
    run(
        "command",
        &seeds,
        json_inputs(&seeds, VOCABULARY),
        |_, bytes| {
            let Some(command) = decode::<Command>(bytes)? else {
                return Ok(Verdict::Refused);
            };
            let ty = command.command_type();
            if ty.as_str().parse() != Ok(ty) {
                return Err(format!("type name {ty} does not parse back"));
            }
            Ok(match command.validate() {
                Ok(()) => {
                    if command.id.trim().is_empty()
                        || command.id.len() > protocol::commands::MAX_COMMAND_ID_LEN
                    {
                        return Err(format!("validate accepted the id {:?}", command.id));
                    }
                    Verdict::Accepted
                }
                Err(_) => Verdict::Refused,
            })
        },
    );
}

/// The REST bodies, each seed decoded as the type its file name starts with.
fn decode_rest(seed: &Seed, bytes: &[u8]) -> Result<Verdict, String> {
    let name = seed.name.as_str();
    let accepted = if name.starts_with("dispatch-") {
        decode::<DispatchRequest>(bytes)?.is_some()
    } else if name.starts_with("bulk-dispatch") {
        decode::<BulkDispatchRequest>(bytes)?.is_some()
    } else if name.starts_with("login") {
        decode::<LoginRequest>(bytes)?.is_some()
    } else if name.starts_with("create-user") {
        decode::<CreateUserRequest>(bytes)?.is_some()
    } else if name.starts_with("update-user") {
        decode::<UpdateUserRequest>(bytes)?.is_some()
    } else if name.starts_with("change-password") {
        decode::<ChangePasswordRequest>(bytes)?.is_some()
    } else if name.starts_with("update-device") {
        decode::<UpdateDeviceRequest>(bytes)?.is_some()
    } else if name.starts_with("group") {
        decode::<GroupRequest>(bytes)?.is_some()
    } else if name.starts_with("members") {
        decode::<MembersRequest>(bytes)?.is_some()
    } else if name.starts_with("deployment") {
        decode::<DeploymentRequest>(bytes)?.is_some()
    } else if name.starts_with("ota-token") {
        decode::<OtaTokenRequest>(bytes)?.is_some()
    } else {
        return Err(format!("no decoder for corpus file {name}"));
    };
    Ok(if accepted {
        Verdict::Accepted
    } else {
        Verdict::Refused
    })
}

#[test]
fn fuzz_rest_bodies() {
    let seeds = seeds("rest");
    run("rest", &seeds, json_inputs(&seeds, VOCABULARY), decode_rest);
}

#[test]
fn fuzz_sync_batches() {
    let seeds = seeds("sync");
    run(
        "sync",
        &seeds,
        json_inputs(&seeds, VOCABULARY),
        |_, bytes| Ok(verdict(decode::<SyncRequest>(bytes)?)),
    );
}
