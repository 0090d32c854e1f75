//! The server side: a rustls configuration whose certificate can be swapped while it serves.
//!
//! The certificate lives behind a resolver rather than in the configuration, so a reload
//! (SIGHUP) changes what new handshakes get without rebuilding the listener: connections
//! already open, device sessions among them, keep the keys they agreed on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::{pem, provider, TlsError};

/// The serving certificate and the files it is read from.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    /// Reads the chain and key; fails when either is unreadable or they do not match.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let key = read(cert_path, key_path)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(key),
        })
    }

    /// Reads the files again and serves what they hold from the next handshake on. On error
    /// the certificate in use stays, so a half-copied renewal never takes the server down.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = read(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    /// The leaf certificate now served (DER), for logs and tests.
    pub fn leaf(&self) -> Vec<u8> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn read(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = pem::certificates(cert_path)?;
    let key = pem::private_key(key_path)?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            reason: e.to_string(),
        })
}

/// A server configuration (TLS 1.2 and 1.3, HTTP/1.1 over ALPN, no client certificates)
/// serving `cert`.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    // actix-web speaks HTTP/1.1 here; offering h2 would break WebSocket upgrades.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
