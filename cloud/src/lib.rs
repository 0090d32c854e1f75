//! The OKTO cloud client: one module for the factory server's cloud sync and for agents in
//! `DIRECT_CLOUD` mode, so both speak to the cloud the same way.
//!
//! The cloud's routes (`contract.md`): `POST /companies/{id}/bottles`, `/batches`, `/pallets`,
//! `/batches/fixate`, bearer token, body `{"records": [...]}`. Any 2xx is success; anything
//! else, or no answer, is an error the caller retries.
//!
//! It also builds the HTTP client both binaries use for every outside connection
//! ([`https_client`]), so TLS is set up, and refused certificates are reported, in one place.

use std::sync::Arc;
use std::time::Duration;

use awc::error::{ConnectError, SendRequestError};

use protocol::sync::{RecordKind, SyncRecord, SyncRequest};

/// How long one call may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest error body kept for the message.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The cloud refused the token (401 or 403); retrying with the same token will not help.
    #[error("cloud refused the token ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("cloud answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("cloud unreachable: {0}")]
    Transport(String),
}

/// An HTTP client that speaks https with `tls` (the platform's roots plus the plant's CA; see
/// the `tls` crate) and plain http. Without `tls` an https URL fails to connect. `timeout`
/// bounds each request, connect to last byte; `None` leaves requests unbounded (a caller that
/// streams a large body watches for stalls itself).
pub fn https_client(
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Option<Duration>,
) -> awc::Client {
    let connector = awc::Connector::new();
    let connector = match tls {
        Some(config) => connector.rustls_0_23(config.clone()),
        None => connector,
    };
    let builder = awc::Client::builder().connector(connector);
    match timeout {
        Some(limit) => builder.timeout(limit).finish(),
        None => builder.disable_timeout().finish(),
    }
}

/// One line saying why a request failed. A refused server certificate is named as such, with
/// what to check, rather than as the generic I/O error awc reports it as.
pub fn transport_reason(error: &SendRequestError) -> String {
    // awc's errors do not expose what they wrap through `source()`, so the one place a TLS
    // failure sits is opened by hand.
    if let SendRequestError::Connect(ConnectError::Io(io)) = error {
        if let Some(reason) = tls::describe_failure(io) {
            return reason;
        }
    }
    if let SendRequestError::Connect(ConnectError::SslIsNotSupported) = error {
        return "https is not available: no trusted root certificates were loaded".to_owned();
    }
    error.to_string()
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

/// Percent-encodes a path segment: a company id is data, not a checked name.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL records of one company and kind go to.
pub fn records_url(base_url: &str, company_id: &str, kind: RecordKind) -> String {
    format!(
        "{}/companies/{}/{}",
        base_url.trim_end_matches('/'),
        encode_segment(company_id),
        cloud_path(kind)
    )
}

/// Sends records of one company and one kind. `Ok` only for a 2xx.
pub async fn post_records(
    client: &awc::Client,
    base_url: &str,
    token: &str,
    company_id: &str,
    kind: RecordKind,
    records: &[SyncRecord],
) -> Result<(), CloudError> {
    let body = SyncRequest {
        records: records.to_vec(),
    };
    let mut response = client
        .post(records_url(base_url, company_id, kind))
        .timeout(REQUEST_TIMEOUT)
        .bearer_auth(token)
        .send_json(&body)
        .await
        .map_err(|e| CloudError::Transport(transport_reason(&e)))?;
    let status = response.status().as_u16();
    // The whole answer must arrive: a 2xx whose body is cut off is not a confirmed delivery.
    let body = response.body().limit(MAX_ANSWER).await;
    if (200..300).contains(&status) {
        return body
            .map(|_| ())
            .map_err(|e| CloudError::Transport(format!("answer cut off: {e}")));
    }
    let bytes = body.unwrap_or_default();
    let message: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
    if status == 401 || status == 403 {
        return Err(CloudError::Unauthorized { status, message });
    }
    Err(CloudError::Status { status, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_segments() {
        assert_eq!(cloud_path(RecordKind::BatchFixate), "batches/fixate");
        assert_eq!(cloud_path(RecordKind::Bottle), "bottles");
        assert_eq!(encode_segment("acme-1"), "acme-1");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(
            records_url("http://cloud/", "acme", RecordKind::Pallet),
            "http://cloud/companies/acme/pallets"
        );
    }
}
