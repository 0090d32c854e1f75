//! The operation table, second half: sync and the cloud queue, firmware releases and
//! deployments, and the OTA routes of boards without an agent.

use protocol::firmware::{Deployment, DeploymentRequest, FirmwareRelease};
use protocol::ota::{
    OtaBoard, OtaBoardRequest, OtaTokenRequest, OtaTokenResponse, RevokeTokenRequest,
};
use protocol::sync::{SyncRequest, SyncResponse};
use serde_json::json;

use super::operations::deleted;
use super::prelude::*;
use crate::api::{deployments, firmware};
use crate::auth::{ManageDevices, ManageFirmware, ManageUsers, ViewDevices};
use crate::budget::BudgetView;
use crate::store::outbox::DeadLetter;

fn binary() -> serde_json::Value {
    json!({"type": "string", "format": "binary"})
}

/// The artifact answers every download route shares (`firmware::serve`).
fn download(doc: Doc, head: bool) -> Doc {
    let body = if head {
        "The headers of the file, without its body."
    } else {
        "The file."
    };
    doc.header("Range", false, "One byte range (`bytes=…`); answered 206.")
        .header(
            "If-None-Match",
            false,
            "The ETag (the quoted SHA-256) of a copy held; answered 304.",
        )
        .respond(200, body, "application/octet-stream", inline(binary()))
        .respond(
            206,
            "The range asked for, with `Content-Range`.",
            "application/octet-stream",
            inline(binary()),
        )
        .empty(304, "Not modified: the ETag matches.")
        .empty(416, "The range cannot be satisfied.")
        .about(
            "A body is sent only within the download budget (all transfers at once, and per \
             production line): past it the request is refused at once with `Retry-After`.",
        )
}

/// A board route's refusals: the seed's plain-text bodies, which boards in the field read.
fn plain_refusals(doc: Doc) -> Doc {
    let text = || String::schema();
    doc.respond(401, "No valid OTA token, or a revoked one.", "text/plain", text())
        .respond(403, "The token is for another project or board, or the board is not listed with firmware access.", "text/plain", text())
        .respond(404, "No such project or file.", "text/plain", text())
        .respond(429, "Too many refused tokens from this address, or every download slot of the line is taken; `Retry-After` says when to ask again.", "text/plain", text())
}

pub fn all() -> Vec<Doc> {
    vec![
        op("POST", "/api/v1/sync", "sync", "A device's records, stored once each")
            .auth(Auth::Device)
            .about(
                "A record id seen before is a duplicate and changes nothing. Every record must \
                 carry the device's own company (403 `company_mismatch`, nothing stored); a \
                 batch over the record count or a record over the size limit is refused whole \
                 (413).",
            )
            .json::<SyncRequest>()
            .ok::<SyncResponse>(200, "How many were new and how many duplicates.")
            .errors(&[403]),
        op("GET", "/api/v1/sync/status", "sync", "The cloud queue per company")
            .user::<ViewDevices>()
            .ok_inline(
                200,
                "Records pending, sent and dead, in all and per company.",
                json!({
                    "type": "object",
                    "properties": {
                        "cloudConfigured": {"type": "boolean"},
                        "pending": {"type": "integer"},
                        "sent": {"type": "integer"},
                        "dead": {"type": "integer"},
                        "oldestPendingAgeSecs": {"type": ["integer", "null"]},
                        "companies": {"type": "object", "additionalProperties": {"type": "object"}},
                    },
                }),
            ),
        op("GET", "/api/v1/sync/dead-letters", "sync", "Records the cloud drain gave up on")
            .user::<ManageDevices>()
            .page::<DeadLetter>("The dead letters."),
        op("POST", "/api/v1/sync/dead-letters/requeue", "sync", "Queue dead letters again")
            .user::<ManageDevices>()
            .about("Back to PENDING with a fresh attempt count; without `ids`, every dead letter.")
            .json_inline(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {"ids": {"type": "array", "items": {"type": "string"}}},
            }))
            .ok_inline(
                200,
                "How many were requeued.",
                json!({"type": "object", "properties": {"requeued": {"type": "integer"}}}),
            ),
        op("PUT", "/api/v1/sync/cloud", "sync", "Change the cloud target")
            .user::<ManageUsers>()
            .about("A new cloud URL and/or token, in effect at once; the token is never echoed or audited.")
            .json_inline(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {"url": {"type": "string"}, "token": {"type": "string"}},
            }))
            .ok_inline(
                200,
                "The target is changed.",
                json!({"type": "object", "properties": {"updated": {"type": "boolean"}}}),
            ),
        op("POST", "/api/v1/firmware/releases", "firmware", "Upload a release")
            .user::<ManageFirmware>()
            .about(
                "The artifact is the raw request body (not JSON, not multipart), streamed to \
                 disk and hashed; the names and the signature are query parameters. A server \
                 with trusted keys takes only releases signed over the manifest \
                 (422 `signature_required`, `invalid_signature`, `signature_expired`).",
            )
            .query::<firmware::UploadQuery>()
            .body_of("application/octet-stream", inline(binary()))
            .ok::<FirmwareRelease>(201, "The stored release.")
            .errors(&[400, 409, 413, 422]),
        op("GET", "/api/v1/firmware/releases", "firmware", "List releases, newest first")
            .user::<ViewDevices>()
            .query::<firmware::ListQuery>()
            .page::<FirmwareRelease>("The releases."),
        op("GET", "/api/v1/firmware/releases/{id}", "firmware", "One release")
            .user::<ViewDevices>()
            .path("id", "The release's id.")
            .ok::<FirmwareRelease>(200, "The release.")
            .errors(&[404]),
        op("DELETE", "/api/v1/firmware/releases/{id}", "firmware", "Delete a release and its file")
            .user::<ManageFirmware>()
            .about("A release a deployment still uses answers 409 `release_deployed`.")
            .path("id", "The release's id.")
            .ok_inline(200, "The release is gone.", deleted())
            .errors(&[404, 409]),
        op("GET", "/api/v1/firmware/transfers", "firmware", "The download budget now")
            .user::<ViewDevices>()
            .ok::<BudgetView>(200, "Its slots, the transfers now and its peaks."),
        download(
            op("GET", "/api/v1/firmware/releases/{id}/artifact", "firmware", "Download a release's file")
                .auth(Auth::UserOrDevice)
                .path("id", "The release's id."),
            false,
        )
        .errors(&[403, 404]),
        download(
            op("HEAD", "/api/v1/firmware/releases/{id}/artifact", "firmware", "A release file's headers")
                .auth(Auth::UserOrDevice)
                .path("id", "The release's id."),
            true,
        )
        .errors(&[403, 404]),
        op("POST", "/api/v1/firmware/deployments", "firmware", "Deploy a release to devices or a group")
            .user::<ManageFirmware>()
            .about("In waves, with a download cap, a soak and an automatic pause past a failure share.")
            .json::<DeploymentRequest>()
            .ok::<Deployment>(201, "The deployment with its devices.")
            .errors(&[404, 409]),
        op("GET", "/api/v1/firmware/deployments", "firmware", "List deployments, newest first")
            .user::<ViewDevices>()
            .query::<deployments::ListQuery>()
            .page::<Deployment>("The deployments with per-status counts."),
        op("GET", "/api/v1/firmware/deployments/{id}", "firmware", "One deployment with every device's state")
            .user::<ViewDevices>()
            .path("id", "The deployment's id.")
            .ok::<Deployment>(200, "The deployment.")
            .errors(&[404]),
        op("POST", "/api/v1/firmware/deployments/{id}/pause", "firmware", "Pause a deployment")
            .user::<ManageFirmware>()
            .path("id", "The deployment's id.")
            .ok::<Deployment>(200, "The deployment as changed.")
            .errors(&[404, 409]),
        op("POST", "/api/v1/firmware/deployments/{id}/resume", "firmware", "Resume a paused deployment")
            .user::<ManageFirmware>()
            .path("id", "The deployment's id.")
            .ok::<Deployment>(200, "The deployment as changed.")
            .errors(&[404, 409]),
        op("POST", "/api/v1/firmware/deployments/{id}/cancel", "firmware", "Cancel a deployment")
            .user::<ManageFirmware>()
            .path("id", "The deployment's id.")
            .ok::<Deployment>(200, "The deployment as changed.")
            .errors(&[404, 409]),
        op("GET", "/api/v1/ota/projects/{project}/devices", "ota", "The boards listed for a project")
            .user::<ManageFirmware>()
            .path("project", "The OTA project.")
            .page::<OtaBoard>("The boards by id."),
        op("PUT", "/api/v1/ota/projects/{project}/devices/{device_id}", "ota", "List a board for a project, or change it")
            .user::<ManageFirmware>()
            .about("Only a listed board with `fwAccess` downloads the project's firmware.")
            .path("project", "The OTA project.")
            .path("device_id", "The board's id.")
            .json::<OtaBoardRequest>()
            .ok::<OtaBoard>(200, "The board as listed."),
        op("DELETE", "/api/v1/ota/projects/{project}/devices/{device_id}", "ota", "Unlist a board")
            .user::<ManageFirmware>()
            .path("project", "The OTA project.")
            .path("device_id", "The board's id.")
            .ok_inline(200, "The board is no longer listed.", deleted())
            .errors(&[400, 404]),
        op("GET", "/status", "ota", "That the OTA service is up")
            .respond(
                200,
                "Up; whether it wants tokens (not enveloped, as boards of the seed read it).",
                "application/json",
                inline(json!({
                    "type": "object",
                    "required": ["status", "jwt", "version", "time"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok"]},
                        "jwt": {"type": "boolean"},
                        "version": {"type": "string"},
                        "time": {"type": "string", "format": "date-time"},
                    },
                })),
            ),
        op("GET", "/favicon.ico", "ota", "The favicon of the data directory")
            .respond(200, "`<data dir>/www/favicon.ico`.", "image/x-icon", inline(binary()))
            .errors(&[404]),
        op("POST", "/admin/generate_token", "ota", "An OTA token for one board and project")
            .auth(Auth::OtaAdmin)
            .about("Every token issued is audited. The answer is not enveloped (the seed's shape).")
            .json::<OtaTokenRequest>()
            .respond(200, "The token and its claims.", "application/json", reference::<OtaTokenResponse>())
            .with_schema::<OtaTokenResponse>(),
        op("POST", "/admin/revoke_token", "ota", "Revoke an OTA token")
            .auth(Auth::OtaAdmin)
            .about("By the token itself or its `jti`; refused on every board route from then on, across restarts.")
            .json::<RevokeTokenRequest>()
            .respond(
                200,
                "Revoked (not enveloped).",
                "application/json",
                inline(json!({
                    "type": "object",
                    "properties": {
                        "revoked": {"type": "boolean"},
                        "jti": {"type": "string"},
                        "expires_at": {"type": "string", "format": "date-time"},
                    },
                })),
            ),
        plain_refusals(
            op("GET", "/firmware/{project}/latest", "ota", "The project's newest release")
                .auth(Auth::OtaBoard)
                .path("project", "The OTA project.")
                .header("X-Device-ID", false, "The board's id (or `?device_id=`); must be the token's subject.")
                .respond(
                    200,
                    "The highest semantic version (not enveloped).",
                    "application/json",
                    inline(json!({
                        "type": "object",
                        "properties": {
                            "project": {"type": "string"},
                            "version": {"type": "string"},
                            "channel": {"type": "string"},
                            "file": {"type": "string"},
                            "url": {"type": "string"},
                            "size": {"type": "integer"},
                            "sha256": {"type": "string"},
                        },
                    })),
                ),
        ),
        plain_refusals(
            op("GET", "/firmware/{project}/versions", "ota", "Every version of the project, lowest first")
                .auth(Auth::OtaBoard)
                .path("project", "The OTA project.")
                .header("X-Device-ID", false, "The board's id (or `?device_id=`); must be the token's subject.")
                .respond(
                    200,
                    "In semantic-version order (not enveloped).",
                    "application/json",
                    inline(json!({
                        "type": "object",
                        "properties": {
                            "project": {"type": "string"},
                            "versions": {"type": "array", "items": {"type": "string"}},
                        },
                    })),
                ),
        ),
        plain_refusals(download(
            op("GET", "/firmware/{project}/{file}", "ota", "Download a release file as a board")
                .auth(Auth::OtaBoard)
                .path("project", "The OTA project.")
                .path("file", "The release's stored file name.")
                .header("X-Device-ID", false, "The board's id (or `?device_id=`); must be the token's subject."),
            false,
        ))
        .errors(&[503]),
        plain_refusals(download(
            op("HEAD", "/firmware/{project}/{file}", "ota", "A release file's headers, as a board")
                .auth(Auth::OtaBoard)
                .path("project", "The OTA project.")
                .path("file", "The release's stored file name.")
                .header("X-Device-ID", false, "The board's id (or `?device_id=`); must be the token's subject."),
            true,
        )),
    ]
}
