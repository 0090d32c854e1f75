//! The two places queued records go: the factory server's `POST /api/v1/sync`
//! (`VIA_LOCAL_SERVER`) and the OKTO cloud's per-kind routes (`DIRECT_CLOUD`).
//!
//! Both clients only say whether a call succeeded; the drain loop decides what is marked sent.
//! The cloud side is the shared `cloud` crate, the same code the factory server's cloud sync
//! runs.

use std::time::Duration;

use protocol::rest::{Envelope, ErrorEnvelope};
use protocol::sync::{RecordKind, SyncRecord, SyncRequest, SyncResponse};

/// How long one call may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body read.
const MAX_ANSWER: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The token was refused (401); the device must enroll again.
    #[error("token refused ({0})")]
    Unauthorized(String),
    #[error("answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("{0}")]
    Transport(String),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Sends records to the factory server; `Ok` only for a 2xx with a sync answer.
pub async fn post_sync(
    client: &awc::Client,
    server_url: &str,
    token: &str,
    records: &[SyncRecord],
) -> Result<SyncResponse, UpstreamError> {
    let body = SyncRequest {
        records: records.to_vec(),
    };
    let mut response = client
        .post(format!("{server_url}/api/v1/sync"))
        .timeout(REQUEST_TIMEOUT)
        .bearer_auth(token)
        .send_json(&body)
        .await
        .map_err(|e| UpstreamError::Transport(crate::http::reason(&e)))?;
    let status = response.status().as_u16();
    let bytes = response
        .body()
        .limit(MAX_ANSWER)
        .await
        .map_err(|e| UpstreamError::Transport(format!("reading the answer: {e}")))?;
    if (200..300).contains(&status) {
        return serde_json::from_slice::<Envelope<SyncResponse>>(&bytes)
            .map(|e| e.data)
            .map_err(|e| UpstreamError::Unexpected(e.to_string()));
    }
    let message = serde_json::from_slice::<ErrorEnvelope>(&bytes)
        .map(|e| format!("{}: {}", e.error.code, e.error.message))
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
    if status == 401 {
        return Err(UpstreamError::Unauthorized(message));
    }
    Err(UpstreamError::Status { status, message })
}

/// Sends records of one company and one kind to the cloud through the client the factory
/// server's cloud sync uses too (the `cloud` crate), so both speak to the cloud the same way.
pub async fn post_cloud(
    client: &awc::Client,
    cloud_url: &str,
    token: &str,
    company_id: &str,
    kind: RecordKind,
    records: &[SyncRecord],
) -> Result<(), UpstreamError> {
    cloud::post_records(client, cloud_url, token, company_id, kind, records)
        .await
        .map_err(|e| match e {
            cloud::CloudError::Unauthorized { message, .. } => UpstreamError::Unauthorized(message),
            cloud::CloudError::Status { status, message } => {
                UpstreamError::Status { status, message }
            }
            cloud::CloudError::Transport(message) => UpstreamError::Transport(message),
        })
}
