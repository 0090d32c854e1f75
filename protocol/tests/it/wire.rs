//! Round trips of every wire type, and the JSON examples printed in the spec files parsed as
//! they are written there (with the spec's `…` placeholders filled in).

use protocol::commands::{Command, CommandKind, CommandProgress, CommandResult, CommandType};
use protocol::dashboard::{DashboardClientFrame, DashboardEvent, DashboardNotice};
use protocol::device::{DeviceEvent, DeviceFrame, ServerFrame, StatusEvent};
use protocol::ota::{OtaTokenRequest, OtaTokenResponse};
use protocol::rest::{DispatchRequest, Envelope, ErrorEnvelope, LoginRequest};
use protocol::sync::{RecordKind, SyncRequest, SyncResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Debug;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> Value {
    let json = serde_json::to_value(value).unwrap();
    let back: T = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(
        &back, value,
        "round trip changed the value; JSON was {json}"
    );
    json
}

fn every_command() -> Vec<Command> {
    vec![
        Command::new("c1", CommandKind::ForceSync),
        Command::new(
            "c2",
            CommandKind::ClearQueue {
                include_completed: true,
            },
        ),
        Command::new("c3", CommandKind::PullLogs { lines: 20 }),
        Command::new("c4", CommandKind::RestartService),
        Command::new("c5", CommandKind::RebootOs),
        Command::new("c6", CommandKind::ShutdownOs),
        Command::new(
            "c7",
            CommandKind::PushConfig {
                patch: json!({"statusIntervalMs": 1000, "gone": null}),
            },
        ),
        Command::new(
            "c8",
            CommandKind::UpdateFirmware {
                version: "1.2.3".into(),
                url: "http://factory/api/v1/firmware/releases/r1/artifact".into(),
                sha256: "ab".repeat(32),
                size: 1234,
                signature_base64: Some("c2ln".into()),
                signature_expires_at: None,
                deployment_id: None,
                allow_downgrade: false,
                project: Some("edge".into()),
                manifest_allow_downgrade: true,
                security_floor: Some(3),
            },
        ),
        Command::new(
            "c9",
            CommandKind::ExecShell {
                template: "disk_usage".into(),
                args: [("path".to_string(), json!("/"))].into_iter().collect(),
            },
        ),
        Command::new("c10", CommandKind::EnableDevice),
        Command::new(
            "c11",
            CommandKind::DisableDevice {
                reason: "line stop".into(),
            },
        ),
        Command::new(
            "c12",
            CommandKind::RotateFirmwareKeys {
                add: vec![protocol::signing::encode_public_key(&[1; 32])],
                retire: vec![protocol::signing::encode_public_key(&[2; 32])],
                sequence: 1,
                expires_at: "2030-01-01T00:00:00Z".parse().unwrap(),
                signature_base64: "c2ln".into(),
            },
        ),
    ]
}

#[test]
fn every_command_type_round_trips_with_its_contract_name() {
    let commands = every_command();
    let mut seen: Vec<CommandType> = Vec::new();
    for command in &commands {
        let json = round_trip(command);
        let ty = command.command_type();
        assert_eq!(json["type"], ty.as_str());
        assert_eq!(json["id"], command.id.as_str());
        assert_eq!(ty.as_str().parse::<CommandType>().unwrap(), ty);
        seen.push(ty);
    }
    seen.sort();
    let mut all = CommandType::ALL.to_vec();
    all.sort();
    assert_eq!(seen, all, "the test must cover all twelve command types");
}

#[test]
fn command_fields_use_contract_camel_case() {
    let json = serde_json::to_value(Command::new(
        "x",
        CommandKind::ClearQueue {
            include_completed: true,
        },
    ))
    .unwrap();
    assert_eq!(
        json,
        json!({"id": "x", "type": "clear_queue", "includeCompleted": true})
    );
    let fw: Command = serde_json::from_value(json!({
        "type": "update_firmware", "id": "f", "version": "2.0.0", "url": "http://x/a",
        "sha256": "00".repeat(32), "size": 10, "signatureBase64": "AA==", "deploymentId": "d1"
    }))
    .unwrap();
    match fw.kind {
        CommandKind::UpdateFirmware {
            signature_base64,
            deployment_id,
            ..
        } => {
            assert_eq!(signature_base64.as_deref(), Some("AA=="));
            assert_eq!(deployment_id.as_deref(), Some("d1"));
        }
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn command_defaults_follow_the_contract() {
    let c: Command = serde_json::from_str(r#"{"type":"pull_logs","id":"p"}"#).unwrap();
    assert_eq!(c.kind, CommandKind::PullLogs { lines: 100 });
    let c: Command = serde_json::from_str(r#"{"type":"clear_queue","id":"q"}"#).unwrap();
    assert_eq!(
        c.kind,
        CommandKind::ClearQueue {
            include_completed: false
        }
    );
}

#[test]
fn unknown_command_type_is_refused() {
    assert!(serde_json::from_str::<Command>(r#"{"type":"format_disk","id":"x"}"#).is_err());
    assert!("format_disk".parse::<CommandType>().is_err());
}

#[test]
fn validation_refuses_what_serde_accepts() {
    let empty_reason = Command::new(
        "d",
        CommandKind::DisableDevice {
            reason: "  ".into(),
        },
    );
    assert!(empty_reason.validate().is_err());
    let empty_id = Command::new("", CommandKind::ForceSync);
    assert!(empty_id.validate().is_err());
    let bad_patch = Command::new(
        "p",
        CommandKind::PushConfig {
            patch: json!([1, 2]),
        },
    );
    assert!(bad_patch.validate().is_err());
    for command in every_command() {
        command.validate().unwrap();
    }
}

#[test]
fn dangerous_commands_are_the_contract_list() {
    let dangerous: Vec<&str> = CommandType::ALL
        .into_iter()
        .filter(|t| t.is_dangerous())
        .map(|t| t.as_str())
        .collect();
    assert_eq!(
        dangerous,
        vec![
            "clear_queue",
            "reboot_os",
            "shutdown_os",
            "update_firmware",
            "disable_device"
        ]
    );
}

#[test]
fn contract_device_frames_parse() {
    let examples = [
        r#"{"type": "auth", "token": "eyJ"}"#,
        r#"{"type": "command_result", "commandId": "c1", "success": true, "output": "done"}"#,
        r#"{"type": "command_result", "commandId": "c1", "success": true, "output": "done", "data": {"pending": 0}}"#,
        r#"{"type": "command_progress", "commandId": "c1", "percent": 40, "message": "downloading"}"#,
        r#"{"type": "status", "status": "ONLINE", "version": "1.0.0", "bootId": "b", "runId": "r", "metrics": {"cpu": 3}, "ts": "2026-11-25T10:00:00Z"}"#,
        r#"{"type": "log_line", "line": "hello", "level": "ERROR", "ts": "2026-11-25T10:00:00Z"}"#,
        r#"{"type": "scan", "code": "0104601234567893", "valid": true, "ts": "2026-11-25T10:00:00Z"}"#,
        r#"{"type": "print", "code": "0104601234567893", "ts": "2026-11-25T10:00:00Z"}"#,
        r#"{"type": "alert", "severity": "warning", "message": "printer low", "ts": "2026-11-25T10:00:00Z"}"#,
    ];
    for example in examples {
        let frame: DeviceFrame = serde_json::from_str(example)
            .unwrap_or_else(|e| panic!("{example} does not parse: {e}"));
        let again = serde_json::to_value(&frame).unwrap();
        let original: Value = serde_json::from_str(example).unwrap();
        assert_eq!(again["type"], original["type"]);
        round_trip(&frame);
    }
    let auth: DeviceFrame = serde_json::from_str(examples[0]).unwrap();
    assert_eq!(
        auth,
        DeviceFrame::Auth {
            token: "eyJ".into()
        }
    );
}

#[test]
fn unknown_device_frame_is_an_error() {
    assert!(serde_json::from_str::<DeviceFrame>(r#"{"type":"selfdestruct"}"#).is_err());
    assert!(serde_json::from_str::<DeviceFrame>(r#"{"status":"ONLINE"}"#).is_err());
    assert!(serde_json::from_str::<DeviceFrame>("not json").is_err());
}

#[test]
fn contract_server_frames_parse() {
    let hello: ServerFrame = serde_json::from_str(
        r#"{"type": "hello", "deviceId": "edge-1", "serverTime": "2026-11-25T10:00:00Z"}"#,
    )
    .unwrap();
    round_trip(&hello);
    let command: ServerFrame = serde_json::from_str(
        r#"{"type": "command", "command": {"type": "force_sync", "id": "cmd-uuid"}, "timeoutMs": 15000}"#,
    )
    .unwrap();
    assert_eq!(
        command,
        ServerFrame::Command {
            command: Command::new("cmd-uuid", CommandKind::ForceSync),
            timeout_ms: 15000
        }
    );
    let error: ServerFrame =
        serde_json::from_str(r#"{"type": "error", "code": "bad_frame", "message": "x"}"#).unwrap();
    round_trip(&error);
}

#[test]
fn spec_dispatch_request_and_response_parse() {
    // server-management.md, "Dispatch request".
    let req: DispatchRequest = serde_json::from_str(
        r#"{ "command": { "type": "force_sync", "id": "cmd-uuid" }, "timeoutMs": 15000 }"#,
    )
    .unwrap();
    assert_eq!(req.timeout_ms, Some(15000));
    assert!(!req.confirm);
    round_trip(&req);
    let resp: Envelope<CommandResult> = serde_json::from_str(
        r#"{ "success": true, "data": { "commandId": "cmd-uuid", "success": true, "output": "Force-sync completed. In-progress: 7" } }"#,
    )
    .unwrap();
    assert_eq!(resp.data.command_id, "cmd-uuid");
    round_trip(&resp);
}

#[test]
fn error_envelope_matches_contract() {
    let err: ErrorEnvelope = serde_json::from_str(
        r#"{"success": false, "error": {"code": "confirmation_required", "message": "human text"}}"#,
    )
    .unwrap();
    assert!(!err.success);
    assert_eq!(err.error.code, "confirmation_required");
    round_trip(&err);
}

#[test]
fn spec_dashboard_frames_parse() {
    let sub: DashboardClientFrame = serde_json::from_str(
        r#"{"type": "subscribe", "deviceIds": ["edge-1"], "eventTypes": ["status", "scan"]}"#,
    )
    .unwrap();
    round_trip(&sub);
    let all: DashboardClientFrame = serde_json::from_str(r#"{"type": "subscribe"}"#).unwrap();
    assert_eq!(
        all,
        DashboardClientFrame::Subscribe {
            device_ids: None,
            event_types: None
        }
    );
    let status: DashboardEvent = serde_json::from_str(
        r#"{ "type": "status", "deviceId": "edge-1", "status": "ONLINE", "ts": "2026-11-25T10:00:00Z", "metrics": { "cpu": 1 } }"#,
    )
    .unwrap();
    assert_eq!(status.device_id, "edge-1");
    assert!(matches!(
        status.event,
        DeviceEvent::Status(StatusEvent { ref status, .. }) if status == "ONLINE"
    ));
    round_trip(&status);
    let scan: DashboardEvent = serde_json::from_str(
        r#"{ "type": "scan", "deviceId": "edge-1", "code": "010", "valid": true, "ts": "2026-11-25T10:00:00Z" }"#,
    )
    .unwrap();
    round_trip(&scan);
    let dropped: DashboardNotice =
        serde_json::from_str(r#"{"type": "dropped", "count": 7}"#).unwrap();
    assert_eq!(dropped, DashboardNotice::Dropped { count: 7 });
}

#[test]
fn sync_body_matches_contract() {
    let body: SyncRequest = serde_json::from_str(
        r#"{"records": [{"id": "0b7c6f1e-3f7e-4c55-9a39-1d8f0c1c2f10", "kind": "batch_fixate", "companyId": "c1", "payload": {"batch": 1}, "createdAt": "2026-11-25T10:00:00Z"}]}"#,
    )
    .unwrap();
    assert_eq!(body.records[0].kind, RecordKind::BatchFixate);
    round_trip(&body);
    let resp: SyncResponse = serde_json::from_str(r#"{"accepted": 3, "duplicates": 1}"#).unwrap();
    round_trip(&resp);
    assert!(serde_json::from_str::<SyncRequest>(
        r#"{"records": [{"id": "x", "kind": "crate", "companyId": "c", "payload": {}, "createdAt": "2026-11-25T10:00:00Z"}]}"#
    )
    .is_err());
}

#[test]
fn spec_ota_bodies_parse() {
    // ota-firmware-server.md, "Token Generation".
    let req: OtaTokenRequest = serde_json::from_str(
        r#"{ "device_id": "e6f87d77-4216-4be1-ab83-b5fa6792b747", "project": "smart_fan", "expires_minutes": 30, "current_fw": "1.0.0" }"#,
    )
    .unwrap();
    assert_eq!(req.expires_minutes, Some(30));
    round_trip(&req);
    let resp: OtaTokenResponse = serde_json::from_str(
        r#"{ "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9....", "expires_at": "2025-10-09T15:34:12+00:00", "payload": { "sub": "e6f87d77-4216-4be1-ab83-b5fa6792b747", "project": "smart_fan", "roles": ["device", "ota_client"], "iat": 1739083200, "exp": 1739085000, "jti": "e6f87d77-4216-4be1-ab83-b5fa6792b747-1739083200", "fw_version": "1.0.0" } }"#,
    )
    .unwrap();
    round_trip(&resp);
}

#[test]
fn login_and_progress_round_trip() {
    round_trip(&LoginRequest {
        username: "admin".into(),
        password: "pw".into(),
    });
    let p = round_trip(&CommandProgress {
        command_id: "c".into(),
        percent: 40,
        message: "m".into(),
    });
    assert_eq!(p["commandId"], "c");
}

#[test]
fn deployment_bodies_use_the_documented_names() {
    use protocol::firmware::{DeploymentRequest, DeviceDeploymentStatus};
    let request: DeploymentRequest = serde_json::from_value(json!({
        "releaseId": "r1", "groupId": "g1", "wavePercent": 25, "maxConcurrentDownloads": 5,
        "failureThresholdPercent": 10, "soakSecs": 120, "allowDowngrade": true
    }))
    .unwrap();
    assert_eq!(request.release_id, "r1");
    assert_eq!(request.group_id.as_deref(), Some("g1"));
    assert!(request.device_ids.is_empty());
    assert_eq!(request.wave_percent, Some(25));
    assert_eq!(request.max_concurrent_downloads, Some(5));
    assert_eq!(request.failure_threshold_percent, Some(10));
    assert_eq!(request.soak_secs, Some(120));
    assert!(request.allow_downgrade);
    assert_eq!(
        serde_json::to_value(DeviceDeploymentStatus::InProgress).unwrap(),
        json!("IN_PROGRESS")
    );
    for s in DeviceDeploymentStatus::ALL {
        assert_eq!(s.as_str().parse::<DeviceDeploymentStatus>().unwrap(), s);
    }
}

#[test]
fn allow_downgrade_is_sent_only_when_true() {
    let mut fw: Command = serde_json::from_value(json!({
        "type": "update_firmware", "id": "f", "version": "1.0.0", "url": "/a",
        "sha256": "00".repeat(32), "size": 1
    }))
    .unwrap();
    assert!(!serde_json::to_string(&fw)
        .unwrap()
        .contains("allowDowngrade"));
    if let CommandKind::UpdateFirmware {
        allow_downgrade, ..
    } = &mut fw.kind
    {
        *allow_downgrade = true;
    }
    let text = serde_json::to_string(&fw).unwrap();
    assert!(text.contains(r#""allowDowngrade":true"#), "{text}");
}

#[test]
fn batch_frames_carry_telemetry_only() {
    use protocol::device::TelemetryEvent;
    let text = r#"{"type": "batch", "events": [
        {"type": "scan", "code": "0104601234567893", "valid": true, "ts": "2026-11-25T10:00:00Z"},
        {"type": "log_line", "line": "hello", "level": "ERROR", "ts": "2026-11-25T10:00:00Z"},
        {"type": "status", "status": "ONLINE", "ts": "2026-11-25T10:00:00Z"},
        {"type": "print", "code": "0104601234567893", "ts": "2026-11-25T10:00:00Z"},
        {"type": "alert", "severity": "warning", "message": "printer low", "ts": "2026-11-25T10:00:00Z"}
    ]}"#;
    let frame: DeviceFrame = serde_json::from_str(text).unwrap();
    let DeviceFrame::Batch { events } = &frame else {
        panic!("not a batch: {frame:?}");
    };
    let types: Vec<&str> = events
        .iter()
        .map(|e| DeviceEvent::from(e.clone()).event_type())
        .collect();
    assert_eq!(types, ["scan", "log_line", "status", "print", "alert"]);
    assert_eq!(round_trip(&frame)["type"], "batch");

    // Command results never ride in a batch, and a bad event spoils the whole frame.
    for bad in [
        r#"{"type": "batch", "events": [{"type": "command_result", "commandId": "c1", "success": true, "output": ""}]}"#,
        r#"{"type": "batch", "events": [{"type": "scan", "code": "1", "valid": true, "ts": "2026-11-25T10:00:00Z"}, {"type": "scan"}]}"#,
        r#"{"type": "batch", "events": {}}"#,
        r#"{"type": "batch"}"#,
    ] {
        assert!(serde_json::from_str::<DeviceFrame>(bad).is_err(), "{bad}");
    }
    let result = DeviceEvent::CommandResult(CommandResult::ok("c1", "done"));
    assert!(TelemetryEvent::try_from(result).is_err());
}
