//! The agent's HTTP clients: every connection it opens (to the server, the cloud and firmware
//! URLs) verifies TLS against the platform's roots plus the `ca_file` setting.
//!
//! What to trust is fixed at start and cannot be pushed (`remote_config` refuses `caFile`),
//! so it is set once for the process and every actor builds its clients from it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use awc::error::{SendRequestError, WsClientError};

static TRUST: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();

/// Reads the CA file (when given) with the platform's roots. Fails when the file cannot be
/// used; with no roots at all and no file, https is simply unavailable (plain http works).
pub fn init(ca_file: Option<&Path>) -> Result<(), tls::TlsError> {
    let trust = load(ca_file)?;
    if trust.is_none() {
        tracing::warn!(
            "no trusted root certificates and no ca_file: https and wss connections will be refused"
        );
    }
    // A second call (tests start several agents in one process) keeps the first answer.
    let _ = TRUST.set(trust);
    Ok(())
}

fn load(ca_file: Option<&Path>) -> Result<Option<Arc<rustls::ClientConfig>>, tls::TlsError> {
    match tls::client_config(ca_file) {
        Ok(config) => Ok(Some(Arc::new(config))),
        Err(tls::TlsError::NoRoots) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A client with the process's trust (without `init`, the platform's roots); see
/// `cloud::https_client` for `timeout`.
pub fn client(timeout: Option<std::time::Duration>) -> awc::Client {
    let trust = TRUST.get_or_init(|| load(None).ok().flatten());
    cloud::https_client(trust.as_ref(), timeout)
}

/// One line saying why a request failed, naming a refused certificate as such.
pub fn reason(error: &SendRequestError) -> String {
    cloud::transport_reason(error)
}

/// The same for a WebSocket handshake.
pub fn ws_reason(error: &WsClientError) -> String {
    match error {
        WsClientError::SendRequest(e) => reason(e),
        other => other.to_string(),
    }
}
