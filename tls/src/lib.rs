//! TLS for both binaries: rustls on ring, a server certificate that reloads in place, and
//! client configurations that verify against the platform's roots plus an optional CA file.
//!
//! This crate depends on neither actix nor diesel: it turns PEM files into rustls
//! configurations, and the binaries hand those to actix-web and awc.

mod client;
mod pem;
mod server;

pub use client::{client_config, describe_failure};
pub use server::{server_config, ReloadingCert};

use std::path::PathBuf;
use std::sync::Arc;

/// The one crypto provider every configuration is built on.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate, key or CA file could not be used. Each message is one line that names
/// the file, so an operator reading the log knows which one to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no {what} in PEM form")]
    Empty { path: PathBuf, what: &'static str },
    #[error("the key in {key} does not fit the certificate in {cert}: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the CA file {path} has no usable certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("no trusted root certificates: the platform has none and no CA file was given")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Config(String),
}

#[cfg(test)]
mod tests;
