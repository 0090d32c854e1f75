//! The two places queued records go: the factory server's `POST /api/v1/sync`
//! (`VIA_LOCAL_SERVER`) and the OKTO cloud's per-kind routes (`DIRECT_CLOUD`).
//!
//! Both clients only say whether a call succeeded; the drain loop decides what is marked sent.
//! The cloud client is kept to the shape the contract gives (`POST /companies/{id}/bottles`,
//! `/batches`, `/pallets`, `/batches/fixate`, bearer token, any 2xx is success) so the server's
//! cloud-sync side can share it.

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

/// The cloud path of a record kind.
pub fn cloud_path(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Bottle => "bottles",
        RecordKind::Batch => "batches",
        RecordKind::Pallet => "pallets",
        RecordKind::BatchFixate => "batches/fixate",
    }
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
        .map_err(|e| UpstreamError::Transport(e.to_string()))?;
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

/// Sends records of one company and one kind to the cloud, as `{"records": [...]}`.
pub async fn post_cloud(
    client: &awc::Client,
    cloud_url: &str,
    token: &str,
    company_id: &str,
    kind: RecordKind,
    records: &[SyncRecord],
) -> Result<(), UpstreamError> {
    let body = SyncRequest {
        records: records.to_vec(),
    };
    let url = format!(
        "{cloud_url}/companies/{}/{}",
        encode_segment(company_id),
        cloud_path(kind)
    );
    let mut response = client
        .post(url)
        .timeout(REQUEST_TIMEOUT)
        .bearer_auth(token)
        .send_json(&body)
        .await
        .map_err(|e| UpstreamError::Transport(e.to_string()))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let bytes = response.body().limit(MAX_ANSWER).await.unwrap_or_default();
    let message: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
    if status == 401 {
        return Err(UpstreamError::Unauthorized(message));
    }
    Err(UpstreamError::Status { status, message })
}

/// Percent-encodes a path segment, since a company id is configuration, not a checked name.
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_paths_and_segments() {
        assert_eq!(cloud_path(RecordKind::BatchFixate), "batches/fixate");
        assert_eq!(cloud_path(RecordKind::Bottle), "bottles");
        assert_eq!(encode_segment("acme-1"), "acme-1");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
