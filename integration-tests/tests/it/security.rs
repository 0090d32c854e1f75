//! The security core against the real server, on SQLite and PostgreSQL: every route as every
//! kind of caller, token revocation (also across a restart), rate limits, and the audit log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::b64url;
use integration_tests::*;
use serde_json::{json, Value};

const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";
const USER_PASSWORD: &str = "role-user-password";
const OTA_SECRET: &str = "route-table-ota-admin-secret";
const METRICS_TOKEN: &str = "route-table-metrics-token";

fn start(backend: Backend, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--jwt-secret", JWT_SECRET];
    args.extend_from_slice(extra);
    ServerProcess::start_with(TestDb::new(backend), TempDir::new("factory-data"), &args)
}

on_both_backends!(
    every_route_as_every_caller,
    logged_out_token_is_refused_after_a_restart,
    disabling_deleting_and_password_changes_revoke_tokens,
    failed_logins_and_enrollments_are_rate_limited,
    audit_log_records_dangerous_commands_to_offline_devices,
);

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    Admin,
    Manager,
    Operator,
    Viewer,
    Expired,
    Tampered,
    AlgNone,
    Device,
}

const CALLERS: [Caller; 9] = [
    Caller::Anonymous,
    Caller::Admin,
    Caller::Manager,
    Caller::Operator,
    Caller::Viewer,
    Caller::Expired,
    Caller::Tampered,
    Caller::AlgNone,
    Caller::Device,
];

impl Caller {
    fn role(self) -> Option<(&'static str, u8)> {
        match self {
            Caller::Admin => Some(("ADMIN", 3)),
            Caller::Manager => Some(("MANAGER", 2)),
            Caller::Operator => Some(("OPERATOR", 1)),
            Caller::Viewer => Some(("VIEWER", 0)),
            _ => None,
        }
    }
}

/// What a route needs (also what `openapi.rs` checks the document's security against).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access {
    Public,
    /// The enrollment key, not a bearer token.
    Enrollment,
    /// The device socket: a device token.
    DeviceSocket,
    /// The dashboard socket: any user token.
    DashboardSocket,
    /// A device token (the sync route).
    DeviceToken,
    /// A user token of at least this rank (0 viewer … 3 admin).
    MinRole(u8),
    /// Any user token or a device token (the firmware artifact).
    UserOrDevice,
    /// `X-Admin-Secret`, not a bearer token: the OTA token route.
    AdminSecret,
    /// The metrics token as a bearer: no caller of the table holds it, so every one is
    /// refused (`metrics.rs` scrapes with it).
    MetricsToken,
    /// A board route: an OTA token, sent as `?token=`. A bearer header takes precedence, and no
    /// user or device token is an OTA token, so every caller that sends one is refused.
    OtaBoard,
}

pub(crate) struct Case {
    pub(crate) access: Access,
    /// Status of a permitted call.
    pub(crate) ok: u16,
    /// The call spends its caller's token (logout, password change): use a fresh user.
    spends_token: bool,
}

fn case(access: Access, ok: u16) -> Case {
    Case {
        access,
        ok,
        spends_token: false,
    }
}

/// The exact status every caller must get from a route.
fn expected(case: &Case, caller: Caller) -> u16 {
    match case.access {
        Access::Public | Access::Enrollment | Access::AdminSecret => case.ok,
        Access::UserOrDevice => match caller {
            Caller::Device => case.ok,
            _ if caller.role().is_some() => case.ok,
            _ => 401,
        },
        Access::MetricsToken => 401,
        Access::OtaBoard => match caller {
            Caller::Anonymous => case.ok,
            _ => 401,
        },
        // A plain GET (no upgrade headers) that passes authentication fails the handshake.
        Access::DeviceSocket => match caller {
            Caller::Anonymous | Caller::Device => 400,
            _ => 401,
        },
        Access::DeviceToken => match caller {
            Caller::Device => case.ok,
            _ => 401,
        },
        Access::DashboardSocket => match caller.role() {
            Some(_) => 400,
            None if caller == Caller::Anonymous => 400,
            None => 401,
        },
        Access::MinRole(min) => match caller.role() {
            Some((_, rank)) if rank >= min => case.ok,
            Some(_) => 403,
            None => 401,
        },
    }
}

pub(crate) fn cases() -> BTreeMap<(&'static str, &'static str), Case> {
    let viewer = Access::MinRole(0);
    let operator = Access::MinRole(1);
    let manager = Access::MinRole(2);
    let admin = Access::MinRole(3);
    let mut cases = BTreeMap::new();
    cases.insert(("GET", "/"), case(Access::Public, 200));
    cases.insert(("GET", "/assets/{path:.*}"), case(Access::Public, 200));
    cases.insert(("GET", "/healthz"), case(Access::Public, 200));
    cases.insert(("GET", "/api/v1/openapi.json"), case(Access::Public, 200));
    cases.insert(("GET", "/metrics"), case(Access::MetricsToken, 200));
    cases.insert(("GET", "/ws/device"), case(Access::DeviceSocket, 400));
    cases.insert(("GET", "/ws/dashboard"), case(Access::DashboardSocket, 400));
    cases.insert(("POST", "/api/v1/auth/login"), case(Access::Public, 200));
    cases.insert(
        ("POST", "/api/v1/auth/logout"),
        Case {
            spends_token: true,
            ..case(viewer, 200)
        },
    );
    cases.insert(("GET", "/api/v1/auth/me"), case(viewer, 200));
    cases.insert(
        ("POST", "/api/v1/auth/password"),
        Case {
            spends_token: true,
            ..case(viewer, 200)
        },
    );
    cases.insert(("GET", "/api/v1/users"), case(manager, 200));
    cases.insert(("POST", "/api/v1/users"), case(admin, 201));
    cases.insert(("GET", "/api/v1/users/{id}"), case(admin, 200));
    cases.insert(("PATCH", "/api/v1/users/{id}"), case(admin, 200));
    cases.insert(("DELETE", "/api/v1/users/{id}"), case(admin, 200));
    cases.insert(("GET", "/api/v1/audit"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/devices"), case(viewer, 200));
    cases.insert(("POST", "/api/v1/devices"), case(admin, 201));
    cases.insert(("GET", "/api/v1/devices/connected"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/devices/{id}"), case(viewer, 200));
    cases.insert(("PATCH", "/api/v1/devices/{id}"), case(manager, 200));
    cases.insert(("DELETE", "/api/v1/devices/{id}"), case(admin, 200));
    cases.insert(("GET", "/api/v1/devices/{id}/logs"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/devices/{id}/events"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/devices/{id}/metrics"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/production/throughput"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/fleet/summary"), case(viewer, 200));
    cases.insert(
        ("POST", "/api/v1/devices/{id}/token"),
        case(Access::Enrollment, 200),
    );
    cases.insert(
        ("POST", "/api/v1/devices/{id}/commands"),
        case(operator, 200),
    );
    cases.insert(("GET", "/api/v1/devices/{id}/commands"), case(viewer, 200));
    cases.insert(("POST", "/api/v1/devices/commands"), case(operator, 200));
    cases.insert(
        ("POST", "/api/v1/devices/{id}/commands/{cmd_id}/cancel"),
        case(operator, 200),
    );
    cases.insert(("POST", "/api/v1/device-groups"), case(manager, 201));
    cases.insert(("GET", "/api/v1/device-groups"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/device-groups/{id}"), case(viewer, 200));
    cases.insert(("PUT", "/api/v1/device-groups/{id}"), case(manager, 200));
    cases.insert(("DELETE", "/api/v1/device-groups/{id}"), case(manager, 200));
    cases.insert(
        ("POST", "/api/v1/device-groups/{id}/members"),
        case(manager, 200),
    );
    cases.insert(
        ("DELETE", "/api/v1/device-groups/{id}/members"),
        case(manager, 200),
    );
    cases.insert(
        ("POST", "/api/v1/device-groups/{id}/commands"),
        case(operator, 200),
    );
    cases.insert(("POST", "/api/v1/sync"), case(Access::DeviceToken, 200));
    cases.insert(("GET", "/api/v1/sync/status"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/sync/dead-letters"), case(manager, 200));
    cases.insert(
        ("POST", "/api/v1/sync/dead-letters/requeue"),
        case(manager, 200),
    );
    cases.insert(("PUT", "/api/v1/sync/cloud"), case(admin, 200));
    cases.insert(
        ("GET", "/api/v1/devices/{id}/commands/{cmd_id}"),
        case(viewer, 200),
    );
    cases.insert(("POST", "/api/v1/firmware/releases"), case(admin, 201));
    cases.insert(("GET", "/api/v1/firmware/releases"), case(viewer, 200));
    cases.insert(("GET", "/api/v1/firmware/releases/{id}"), case(viewer, 200));
    cases.insert(
        ("DELETE", "/api/v1/firmware/releases/{id}"),
        case(admin, 200),
    );
    cases.insert(
        ("GET", "/api/v1/firmware/releases/{id}/artifact"),
        case(Access::UserOrDevice, 200),
    );
    cases.insert(
        ("HEAD", "/api/v1/firmware/releases/{id}/artifact"),
        case(Access::UserOrDevice, 200),
    );
    cases.insert(("POST", "/api/v1/firmware/deployments"), case(admin, 201));
    cases.insert(("GET", "/api/v1/firmware/deployments"), case(viewer, 200));
    cases.insert(
        ("GET", "/api/v1/firmware/deployments/{id}"),
        case(viewer, 200),
    );
    for action in ["pause", "resume", "cancel"] {
        let pattern: &'static str = match action {
            "pause" => "/api/v1/firmware/deployments/{id}/pause",
            "resume" => "/api/v1/firmware/deployments/{id}/resume",
            _ => "/api/v1/firmware/deployments/{id}/cancel",
        };
        cases.insert(("POST", pattern), case(admin, 200));
    }
    cases.insert(("GET", "/api/v1/firmware/transfers"), case(viewer, 200));
    cases.insert(
        ("GET", "/api/v1/ota/projects/{project}/devices"),
        case(admin, 200),
    );
    cases.insert(
        ("PUT", "/api/v1/ota/projects/{project}/devices/{device_id}"),
        case(admin, 200),
    );
    cases.insert(
        (
            "DELETE",
            "/api/v1/ota/projects/{project}/devices/{device_id}",
        ),
        case(admin, 200),
    );
    cases.insert(("GET", "/status"), case(Access::Public, 200));
    // No favicon in the data dir: a permitted call finds none.
    cases.insert(("GET", "/favicon.ico"), case(Access::Public, 404));
    cases.insert(
        ("POST", "/admin/revoke_token"),
        case(Access::AdminSecret, 200),
    );
    cases.insert(
        ("HEAD", "/firmware/{project}/{file}"),
        case(Access::OtaBoard, 200),
    );
    cases.insert(
        ("POST", "/admin/generate_token"),
        case(Access::AdminSecret, 200),
    );
    cases.insert(
        ("GET", "/firmware/{project}/latest"),
        case(Access::OtaBoard, 200),
    );
    cases.insert(
        ("GET", "/firmware/{project}/versions"),
        case(Access::OtaBoard, 200),
    );
    cases.insert(
        ("GET", "/firmware/{project}/{file}"),
        case(Access::OtaBoard, 200),
    );
    cases
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn admin_claims(admin_id: &str, exp_offset: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": admin_id, "scope": "user", "role": "ADMIN", "ver": 0,
           "jti": uuid::Uuid::new_v4().to_string(), "iat": now - 7200, "exp": now + exp_offset})
}

struct World<'a> {
    server: &'a ServerProcess,
    admin: Api,
    tokens: BTreeMap<&'static str, String>,
    forged: BTreeMap<&'static str, String>,
    device_token: String,
    patch_target: String,
    group_id: String,
    /// A firmware release of project `table`, stored as `0.0.1-table.bin`.
    release_id: String,
    /// An OTA token for project `table`.
    ota_token: String,
    /// A deployment of that release to `edge-fw`, which stays offline, so it stays RUNNING.
    deployment_id: String,
    counter: AtomicU32,
}

/// Enrolls `device` (which stays offline), deploys `release_id` to it as the admin, and
/// returns the deployment's id.
fn deploy_to_offline_device(admin: &Api, release_id: &str, device: &str) -> String {
    admin.enroll(device);
    let reply = admin.post(
        "/api/v1/firmware/deployments",
        &json!({"releaseId": release_id, "deviceIds": [device]}),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.data()["id"].as_str().unwrap().to_owned()
}

/// Uploads a small release as the admin and returns its id.
fn upload_release(admin: &Api, version: &str) -> String {
    let reply = admin.call(
        "POST",
        &format!("/api/v1/firmware/releases?version={version}&filename=table.bin&project=table"),
        Some(&json!("firmware bytes")),
        &[],
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.data()["id"].as_str().unwrap().to_owned()
}

impl World<'_> {
    fn next(&self) -> u32 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A token for `caller`; a fresh user's when the call spends it. Also the password of
    /// that user, for the password-change route.
    fn token_for(&self, caller: Caller, fresh: bool) -> Option<(String, String)> {
        match caller {
            Caller::Anonymous => None,
            Caller::Expired => Some((self.forged["expired"].clone(), String::new())),
            Caller::Tampered => Some((self.forged["tampered"].clone(), String::new())),
            Caller::AlgNone => Some((self.forged["none"].clone(), String::new())),
            Caller::Device => Some((self.device_token.clone(), String::new())),
            _ => {
                let (role, _) = caller.role().unwrap();
                if fresh {
                    let name = format!("fresh-{}-{}", role.to_lowercase(), self.next());
                    self.admin.create_user(&name, USER_PASSWORD, role);
                    let api = Api::login(self.server, &name, USER_PASSWORD);
                    Some((api.token().unwrap().to_owned(), USER_PASSWORD.to_owned()))
                } else {
                    Some((self.tokens[role].clone(), USER_PASSWORD.to_owned()))
                }
            }
        }
    }

    /// The concrete request for a route pattern: path, body, extra headers.
    fn request(
        &self,
        method: &str,
        pattern: &str,
        password: &str,
    ) -> (String, Option<Value>, Vec<(&'static str, String)>) {
        let n = self.next();
        match (method, pattern) {
            ("POST", "/api/v1/auth/login") => (
                pattern.into(),
                Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
                vec![],
            ),
            ("POST", "/api/v1/auth/password") => (
                pattern.into(),
                Some(
                    json!({"currentPassword": password, "newPassword": format!("changed-password-{n}")}),
                ),
                vec![],
            ),
            ("POST", "/api/v1/users") => (
                pattern.into(),
                Some(
                    json!({"username": format!("created-{n}"), "password": USER_PASSWORD, "role": "VIEWER"}),
                ),
                vec![],
            ),
            ("GET", "/api/v1/users/{id}") => {
                (format!("/api/v1/users/{}", self.patch_target), None, vec![])
            }
            ("PATCH", "/api/v1/users/{id}") => (
                format!("/api/v1/users/{}", self.patch_target),
                Some(json!({"disabled": false})),
                vec![],
            ),
            ("DELETE", "/api/v1/users/{id}") => {
                let victim =
                    self.admin
                        .create_user(&format!("victim-{n}"), USER_PASSWORD, "VIEWER");
                (format!("/api/v1/users/{victim}"), None, vec![])
            }
            ("GET", "/api/v1/devices/{id}") => ("/api/v1/devices/edge-t".into(), None, vec![]),
            ("PATCH", "/api/v1/devices/{id}") => (
                "/api/v1/devices/edge-t".into(),
                Some(json!({"name": format!("Line PC {n}")})),
                vec![],
            ),
            ("DELETE", "/api/v1/devices/{id}") => {
                let victim = format!("edge-victim-{n}");
                self.admin.enroll(&victim);
                (format!("/api/v1/devices/{victim}"), None, vec![])
            }
            ("POST", "/api/v1/sync") => (
                pattern.into(),
                Some(json!({"records": [{
                    "id": format!("00000000-0000-4000-8000-{n:012}"),
                    "kind": "bottle",
                    "companyId": "company-1",
                    "payload": {"code": "0104601234567893"},
                    "createdAt": "2026-11-25T10:00:00Z",
                }]})),
                vec![],
            ),
            ("POST", "/api/v1/devices/commands") => (
                pattern.into(),
                Some(
                    json!({"deviceIds": ["edge-t", "edge-u"], "command": {"type": "force_sync"}, "timeoutMs": 1000}),
                ),
                vec![],
            ),
            ("POST", "/api/v1/devices/{id}/commands/{cmd_id}/cancel") => {
                let queued = self.admin.post(
                    "/api/v1/devices/edge-t/commands",
                    &json!({"command": {"type": "force_sync", "id": format!("to-cancel-{n}")}, "queueIfOffline": true}),
                );
                assert_eq!(queued.data()["status"], "QUEUED", "{}", queued.body);
                (
                    format!("/api/v1/devices/edge-t/commands/to-cancel-{n}/cancel"),
                    None,
                    vec![],
                )
            }
            ("POST", "/api/v1/device-groups") => (
                pattern.into(),
                Some(json!({"name": format!("group-{n}")})),
                vec![],
            ),
            ("POST", "/api/v1/devices") => (
                pattern.into(),
                Some(json!({"id": format!("registered-{n}")})),
                vec![],
            ),
            ("GET", "/api/v1/device-groups/{id}") => (
                format!("/api/v1/device-groups/{}", self.group_id),
                None,
                vec![],
            ),
            ("PUT", "/api/v1/device-groups/{id}") => (
                format!("/api/v1/device-groups/{}", self.group_id),
                Some(json!({"description": format!("described {n}")})),
                vec![],
            ),
            ("DELETE", "/api/v1/device-groups/{id}") => {
                let victim = self.admin.post(
                    "/api/v1/device-groups",
                    &json!({"name": format!("victim-group-{n}")}),
                );
                let id = victim.data()["id"].as_str().unwrap().to_owned();
                (format!("/api/v1/device-groups/{id}"), None, vec![])
            }
            ("POST", "/api/v1/device-groups/{id}/members") => (
                format!("/api/v1/device-groups/{}/members", self.group_id),
                Some(json!({"deviceIds": ["edge-u"]})),
                vec![],
            ),
            ("DELETE", "/api/v1/device-groups/{id}/members") => (
                format!("/api/v1/device-groups/{}/members", self.group_id),
                Some(json!({"deviceIds": ["edge-u"]})),
                vec![],
            ),
            ("POST", "/api/v1/device-groups/{id}/commands") => (
                format!("/api/v1/device-groups/{}/commands", self.group_id),
                Some(json!({"command": {"type": "force_sync"}, "timeoutMs": 1000})),
                vec![],
            ),
            ("POST", "/api/v1/sync/dead-letters/requeue") => {
                (pattern.into(), Some(json!({})), vec![])
            }
            ("PUT", "/api/v1/sync/cloud") => (
                pattern.into(),
                Some(json!({"url": "http://127.0.0.1:9", "token": format!("token-{n}")})),
                vec![],
            ),
            ("GET", "/api/v1/devices/{id}/logs") => {
                ("/api/v1/devices/edge-t/logs".into(), None, vec![])
            }
            ("GET", "/api/v1/devices/{id}/events") => {
                ("/api/v1/devices/edge-t/events".into(), None, vec![])
            }
            ("GET", "/api/v1/devices/{id}/metrics") => {
                ("/api/v1/devices/edge-t/metrics".into(), None, vec![])
            }
            ("POST", "/api/v1/devices/{id}/token") => (
                "/api/v1/devices/edge-enroll/token".into(),
                None,
                vec![("X-Enrollment-Key", ENROLLMENT_KEY.to_owned())],
            ),
            ("POST", "/api/v1/devices/{id}/commands") => (
                "/api/v1/devices/edge-t/commands".into(),
                Some(
                    json!({"command": {"type": "force_sync", "id": format!("table-{n}")}, "timeoutMs": 1000}),
                ),
                vec![],
            ),
            ("GET", "/api/v1/devices/{id}/commands") => {
                ("/api/v1/devices/edge-t/commands".into(), None, vec![])
            }
            ("GET", "/api/v1/devices/{id}/commands/{cmd_id}") => (
                "/api/v1/devices/edge-t/commands/setup-cmd".into(),
                None,
                vec![],
            ),
            ("POST", "/api/v1/firmware/releases") => (
                format!("/api/v1/firmware/releases?version=1.0.{n}&filename=t.bin&project=table"),
                Some(json!(format!("artifact {n}"))),
                vec![],
            ),
            ("GET", "/api/v1/firmware/releases/{id}") => (
                format!("/api/v1/firmware/releases/{}", self.release_id),
                None,
                vec![],
            ),
            ("DELETE", "/api/v1/firmware/releases/{id}") => {
                let victim = upload_release(&self.admin, &format!("5.0.{n}"));
                (format!("/api/v1/firmware/releases/{victim}"), None, vec![])
            }
            ("POST", "/api/v1/firmware/deployments") => {
                let device = format!("edge-fw-{n}");
                self.admin.enroll(&device);
                (
                    pattern.into(),
                    Some(json!({"releaseId": self.release_id, "deviceIds": [device]})),
                    vec![],
                )
            }
            ("GET", "/api/v1/firmware/deployments/{id}") => (
                format!("/api/v1/firmware/deployments/{}", self.deployment_id),
                None,
                vec![],
            ),
            ("POST", "/api/v1/firmware/deployments/{id}/pause")
            | ("POST", "/api/v1/firmware/deployments/{id}/cancel") => {
                let victim =
                    deploy_to_offline_device(&self.admin, &self.release_id, &format!("fw-v{n}"));
                (pattern.replace("{id}", &victim), None, vec![])
            }
            ("POST", "/api/v1/firmware/deployments/{id}/resume") => {
                let victim =
                    deploy_to_offline_device(&self.admin, &self.release_id, &format!("fw-v{n}"));
                let paused = self.admin.post(
                    &format!("/api/v1/firmware/deployments/{victim}/pause"),
                    &json!({}),
                );
                assert_eq!(paused.data()["status"], "PAUSED", "{}", paused.body);
                (pattern.replace("{id}", &victim), None, vec![])
            }
            ("GET" | "HEAD", "/api/v1/firmware/releases/{id}/artifact") => (
                format!("/api/v1/firmware/releases/{}/artifact", self.release_id),
                None,
                vec![],
            ),
            ("POST", "/admin/generate_token") => (
                pattern.into(),
                Some(json!({"device_id": format!("board-{n}"), "project": "table"})),
                vec![("X-Admin-Secret", OTA_SECRET.to_owned())],
            ),
            ("GET", "/firmware/{project}/latest") => (
                format!("/firmware/table/latest?token={}", self.ota_token),
                None,
                vec![],
            ),
            ("GET", "/firmware/{project}/versions") => (
                format!("/firmware/table/versions?token={}", self.ota_token),
                None,
                vec![],
            ),
            ("GET", "/assets/{path:.*}") => ("/assets/js/app.js".into(), None, vec![]),
            ("GET" | "HEAD", "/firmware/{project}/{file}") => (
                format!(
                    "/firmware/table/0.0.1-table.bin?token={}&device_id=board-table",
                    self.ota_token
                ),
                None,
                vec![],
            ),
            ("GET", "/api/v1/ota/projects/{project}/devices") => {
                ("/api/v1/ota/projects/table/devices".into(), None, vec![])
            }
            ("PUT", "/api/v1/ota/projects/{project}/devices/{device_id}") => (
                format!("/api/v1/ota/projects/table/devices/board-put-{n}"),
                Some(json!({"fwAccess": true})),
                vec![],
            ),
            ("DELETE", "/api/v1/ota/projects/{project}/devices/{device_id}") => {
                let victim = format!("/api/v1/ota/projects/table/devices/board-victim-{n}");
                let put = self.admin.put(&victim, &json!({"fwAccess": false}));
                assert_eq!(put.status, 200, "{}", put.body);
                (victim, None, vec![])
            }
            ("POST", "/admin/revoke_token") => (
                pattern.into(),
                Some(json!({"jti": format!("table-jti-{n}")})),
                vec![("X-Admin-Secret", OTA_SECRET.to_owned())],
            ),
            _ => {
                assert!(
                    !pattern.contains('{'),
                    "no request is defined for {method} {pattern}"
                );
                (pattern.into(), None, vec![])
            }
        }
    }
}

fn every_route_as_every_caller(backend: Backend) {
    let server = start(
        backend,
        &[
            "--ota-admin-secret",
            OTA_SECRET,
            "--metrics-token",
            METRICS_TOKEN,
        ],
    );
    let admin = Api::admin(&server);
    let admin_id = admin.get("/api/v1/auth/me").data()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut tokens = BTreeMap::new();
    tokens.insert("ADMIN", admin.token().unwrap().to_owned());
    let mut viewer_id = String::new();
    for role in ["MANAGER", "OPERATOR", "VIEWER"] {
        let name = format!("table-{}", role.to_lowercase());
        let id = admin.create_user(&name, USER_PASSWORD, role);
        if role == "VIEWER" {
            viewer_id = id;
        }
        tokens.insert(
            role,
            Api::login(&server, &name, USER_PASSWORD)
                .token()
                .unwrap()
                .to_owned(),
        );
    }
    let patch_target = admin.create_user("patch-target", USER_PASSWORD, "VIEWER");

    // Forged tokens: expired (right key), tampered (a viewer's signature over admin claims),
    // and unsigned with `alg: none`.
    let mut forged = BTreeMap::new();
    forged.insert("expired", sign(&admin_claims(&admin_id, -3600)));
    let viewer_token = &tokens["VIEWER"];
    let parts: Vec<&str> = viewer_token.split('.').collect();
    let mut claims = admin_claims(&viewer_id, 3600);
    claims["sub"] = json!(viewer_id);
    forged.insert(
        "tampered",
        format!(
            "{}.{}.{}",
            parts[0],
            b64url(claims.to_string().as_bytes()),
            parts[2]
        ),
    );
    forged.insert(
        "none",
        format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(admin_claims(&admin_id, 3600).to_string().as_bytes())
        ),
    );

    let device_token = admin.enroll("edge-t");
    admin.enroll("edge-u");
    let group = admin.post("/api/v1/device-groups", &json!({"name": "table-group"}));
    let group_id = group.data()["id"].as_str().unwrap().to_owned();
    let members = admin.post(
        &format!("/api/v1/device-groups/{group_id}/members"),
        &json!({"deviceIds": ["edge-t"]}),
    );
    assert_eq!(members.status, 200, "{}", members.body);
    let setup = admin.post(
        "/api/v1/devices/edge-t/commands",
        &json!({"command": {"type": "force_sync", "id": "setup-cmd"}}),
    );
    assert_eq!(setup.status, 200);
    let release_id = upload_release(&admin, "0.0.1");
    let ota = Api::new(&server).call(
        "POST",
        "/admin/generate_token",
        Some(&json!({"device_id": "board-table", "project": "table"})),
        &[("X-Admin-Secret", OTA_SECRET)],
    );
    assert_eq!(ota.status, 200, "{}", ota.body);
    let ota_token = ota.body["token"].as_str().unwrap().to_owned();
    let listed = admin.put(
        "/api/v1/ota/projects/table/devices/board-table",
        &json!({"fwAccess": true}),
    );
    assert_eq!(listed.status, 200, "{}", listed.body);

    // Deployments to an offline device stay RUNNING (the update waits queued for it), so
    // pause, resume and cancel have something to act on.
    let deployment_id = deploy_to_offline_device(&admin, &release_id, "edge-fw");

    let world = World {
        server: &server,
        admin,
        tokens,
        forged,
        device_token,
        patch_target,
        group_id,
        release_id,
        ota_token,
        deployment_id,
        counter: AtomicU32::new(0),
    };

    let cases = cases();
    let routes: Vec<(&str, &str)> = server::ROUTES.to_vec();
    for route in &routes {
        assert!(
            cases.contains_key(route),
            "route {} {} has no case in this table",
            route.0,
            route.1
        );
    }
    for key in cases.keys() {
        assert!(
            routes.contains(key),
            "case {} {} names no route of the server",
            key.0,
            key.1
        );
    }

    let mut mismatches = Vec::new();
    let mut calls = 0;
    for (method, pattern) in &routes {
        let case = &cases[&(*method, *pattern)];
        for caller in CALLERS {
            let credential = world.token_for(caller, case.spends_token);
            let password = credential
                .as_ref()
                .map(|(_, p)| p.clone())
                .unwrap_or_default();
            let (path, body, headers) = world.request(method, pattern, &password);
            let api = match &credential {
                Some((token, _)) => Api::new(&server).with_token(token),
                None => Api::new(&server),
            };
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let reply = api.call(method, &path, body.as_ref(), &headers);
            calls += 1;
            let want = expected(case, caller);
            if reply.status != want {
                mismatches.push(format!(
                    "{method} {path} as {caller:?}: got {} want {want}: {}",
                    reply.status, reply.body
                ));
            }
            // Refusals carry the JSON error body with a code, except where there is no body
            // (sockets, HEAD) or the seed's boards expect plain text.
            let no_json_body = matches!(
                case.access,
                Access::DeviceSocket | Access::DashboardSocket | Access::OtaBoard
            ) || *method == "HEAD";
            let is_refusal = reply.status >= 400 && !no_json_body;
            if matches!(case.access, Access::OtaBoard)
                && reply.status >= 400
                && !reply.body.is_string()
            {
                mismatches.push(format!(
                    "{method} {path} as {caller:?}: a board refusal must be plain text, got {}",
                    reply.body
                ));
            }
            if is_refusal
                && (reply.body["success"] != false || !reply.body["error"]["code"].is_string())
            {
                mismatches.push(format!(
                    "{method} {path} as {caller:?}: error body {}",
                    reply.body
                ));
            }
        }
    }
    eprintln!("{calls} calls over {} routes", routes.len());
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

fn logged_out_token_is_refused_after_a_restart(backend: Backend) {
    let server = start(backend, &[]);
    let api = Api::admin(&server);
    let token = api.token().unwrap().to_owned();
    assert_eq!(api.get("/api/v1/auth/me").status, 200);
    assert_eq!(api.post("/api/v1/auth/logout", &json!({})).status, 200);
    let refused = api.get("/api/v1/auth/me");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.error_code(), "invalid_token");

    let (db, dir) = server.stop();
    let server = ServerProcess::start_with(db, dir, &["--jwt-secret", JWT_SECRET]);
    let after = Api::new(&server).with_token(&token).get("/api/v1/auth/me");
    assert_eq!(
        after.status, 401,
        "a logged-out token came back to life after a restart"
    );
    // Other tokens and new logins are unaffected.
    let fresh = Api::admin(&server);
    assert_eq!(fresh.get("/api/v1/auth/me").status, 200);
}

fn disabling_deleting_and_password_changes_revoke_tokens(backend: Backend) {
    let server = start(backend, &[]);
    let admin = Api::admin(&server);
    let id = admin.create_user("op", USER_PASSWORD, "OPERATOR");
    let op = Api::login(&server, "op", USER_PASSWORD);
    assert_eq!(op.get("/api/v1/devices").status, 200);

    assert_eq!(
        admin
            .patch(&format!("/api/v1/users/{id}"), &json!({"disabled": true}))
            .status,
        200
    );
    assert_eq!(
        op.get("/api/v1/devices").status,
        401,
        "a disabled user's token must stop working"
    );
    let login = Api::new(&server).post(
        "/api/v1/auth/login",
        &json!({"username": "op", "password": USER_PASSWORD}),
    );
    assert_eq!(login.status, 401, "a disabled user cannot log in");
    assert_eq!(
        admin
            .patch(&format!("/api/v1/users/{id}"), &json!({"disabled": false}))
            .status,
        200
    );
    assert_eq!(
        op.get("/api/v1/devices").status,
        401,
        "re-enabling does not revive old tokens"
    );

    // A role change revokes too: the old token would carry the old rights.
    let op = Api::login(&server, "op", USER_PASSWORD);
    assert_eq!(
        admin
            .patch(&format!("/api/v1/users/{id}"), &json!({"role": "VIEWER"}))
            .status,
        200
    );
    assert_eq!(op.get("/api/v1/devices").status, 401);

    // Password change: the other sessions end, the answer carries a working token.
    let first = Api::login(&server, "op", USER_PASSWORD);
    let second = Api::login(&server, "op", USER_PASSWORD);
    let wrong = first.post(
        "/api/v1/auth/password",
        &json!({"currentPassword": "not-it-at-all", "newPassword": "brand-new-password"}),
    );
    assert_eq!(wrong.status, 401);
    let changed = first.post(
        "/api/v1/auth/password",
        &json!({"currentPassword": USER_PASSWORD, "newPassword": "brand-new-password"}),
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    let third = Api::new(&server).with_token(changed.data()["token"].as_str().unwrap());
    assert_eq!(second.get("/api/v1/auth/me").status, 401);
    assert_eq!(first.get("/api/v1/auth/me").status, 401);
    assert_eq!(third.get("/api/v1/auth/me").status, 200);
    let old_pw = Api::new(&server).post(
        "/api/v1/auth/login",
        &json!({"username": "op", "password": USER_PASSWORD}),
    );
    assert_eq!(old_pw.status, 401);

    assert_eq!(admin.delete(&format!("/api/v1/users/{id}")).status, 200);
    assert_eq!(
        third.get("/api/v1/auth/me").status,
        401,
        "a deleted user's token must stop working"
    );

    // The last enabled admin cannot lock everyone out.
    let me = admin.get("/api/v1/auth/me");
    let admin_id = me.data()["id"].as_str().unwrap();
    let demote = admin.patch(
        &format!("/api/v1/users/{admin_id}"),
        &json!({"role": "VIEWER"}),
    );
    assert_eq!(demote.status, 409);
    assert_eq!(demote.error_code(), "last_admin");
    let delete = admin.delete(&format!("/api/v1/users/{admin_id}"));
    assert_eq!(delete.error_code(), "last_admin");
    assert_eq!(
        admin.get("/api/v1/auth/me").status,
        200,
        "a refused change must not revoke anything"
    );
}

fn failed_logins_and_enrollments_are_rate_limited(backend: Backend) {
    let server = start(
        backend,
        &["--login-max-failures", "3", "--source-max-failures", "6"],
    );
    let admin = Api::admin(&server);
    admin.create_user("target", USER_PASSWORD, "VIEWER");
    let anonymous = Api::new(&server);
    let login = |user: &str, pw: &str| {
        anonymous.post(
            "/api/v1/auth/login",
            &json!({"username": user, "password": pw}),
        )
    };

    // Successes never count.
    for _ in 0..5 {
        assert_eq!(login("target", USER_PASSWORD).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(login("target", "wrong-password").status, 401);
    }
    let locked = login("target", USER_PASSWORD);
    assert_eq!(
        locked.status, 429,
        "the right password is refused while the account is locked"
    );
    assert_eq!(locked.error_code(), "rate_limited");
    let retry: u64 = locked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 900, "Retry-After {retry}");
    // Another account is not locked by this one's failures...
    assert_eq!(login("admin", ADMIN_PASSWORD).status, 200);
    // ...until the source address passes its own limit.
    for _ in 0..3 {
        assert_eq!(login("nobody", "guess").status, 401);
    }
    assert_eq!(
        login("admin", ADMIN_PASSWORD).status,
        429,
        "the address is locked now"
    );

    // Enrollment failures are limited per device id...
    let enroll = |device: &str, key: &str| {
        anonymous.post_with_header(
            &format!("/api/v1/devices/{device}/token"),
            ("X-Enrollment-Key", key),
        )
    };
    for _ in 0..3 {
        assert_eq!(enroll("edge-dev", "wrong-key-123").status, 401);
    }
    assert_eq!(
        enroll("edge-dev", ENROLLMENT_KEY).status,
        429,
        "the device id is locked"
    );
    assert_eq!(
        enroll("edge-other", ENROLLMENT_KEY).status,
        200,
        "other devices still enroll"
    );
    // ...and per source address.
    for i in 0..3 {
        assert_eq!(enroll(&format!("edge-rl-{i}"), "wrong-key-123").status, 401);
    }
    let r = anonymous.post_with_header(
        "/api/v1/devices/edge-rl/token",
        ("X-Enrollment-Key", ENROLLMENT_KEY),
    );
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    // Tokens already issued keep working.
    assert_eq!(admin.get("/api/v1/devices").status, 200);
}

fn audit_log_records_dangerous_commands_to_offline_devices(backend: Backend) {
    let server = start(backend, &[]);
    let admin = Api::admin(&server);
    let bad = Api::new(&server).post(
        "/api/v1/auth/login",
        &json!({"username": "admin", "password": "secret-guess-1"}),
    );
    assert_eq!(bad.status, 401);
    admin.enroll("edge-off");

    let reply = admin.post(
        "/api/v1/devices/edge-off/commands",
        &json!({"command": {"type": "reboot_os", "id": "reboot-1"}, "confirm": true}),
    );
    assert_eq!(reply.data()["success"], false);
    assert_eq!(reply.data()["status"], "FAILED");

    let rows = admin.get("/api/v1/audit?action=command.dispatch&target=edge-off");
    let items = rows.data()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{}", rows.body);
    assert_eq!(items[0]["actor"], "admin");
    assert_eq!(items[0]["role"], "ADMIN");
    assert_eq!(items[0]["params"]["type"], "reboot_os");
    assert_eq!(items[0]["params"]["commandId"], "reboot-1");
    assert_eq!(items[0]["source"], "127.0.0.1");

    // Filters: actor, action family, time window, paging.
    let failed_logins = admin.get("/api/v1/audit?action=auth.login");
    let outcomes: Vec<&str> = failed_logins.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"failure") && outcomes.contains(&"success"),
        "{outcomes:?}"
    );
    let family = admin.get("/api/v1/audit?action=device.");
    assert!(family.data()["total"].as_i64().unwrap() >= 1);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let none = admin.get(&format!("/api/v1/audit?since={future}"));
    assert_eq!(none.data()["total"], 0);
    let page = admin.get("/api/v1/audit?limit=1&offset=0");
    assert_eq!(page.data()["items"].as_array().unwrap().len(), 1);
    let bad_filter = admin.get("/api/v1/audit?since=yesterday");
    assert_eq!(bad_filter.status, 400);

    // No secret reaches the log.
    let all = admin.get("/api/v1/audit?limit=500");
    let text = all.body.to_string();
    for secret in [ADMIN_PASSWORD, "secret-guess-1", ENROLLMENT_KEY, JWT_SECRET] {
        assert!(!text.contains(secret), "the audit log contains a secret");
    }

    // Nobody can change or delete audit rows through the API.
    let before = all.data()["total"].as_i64().unwrap();
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let r = admin.call(method, "/api/v1/audit", Some(&json!({})), &[]);
        assert!(
            r.status == 404 || r.status == 405,
            "{method} /api/v1/audit answered {}",
            r.status
        );
    }
    let id = all.data()["items"][0]["id"].as_str().unwrap();
    assert_eq!(admin.delete(&format!("/api/v1/audit/{id}")).status, 404);
    std::thread::sleep(Duration::from_millis(50));
    let after = admin.get("/api/v1/audit?limit=500").data()["total"]
        .as_i64()
        .unwrap();
    assert!(after >= before, "audit rows disappeared");
}
