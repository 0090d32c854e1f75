//! The client side: a configuration that trusts the platform's roots and, when given, the
//! plant's own CA; and a one-line reading of why a handshake was refused.
//!
//! There is deliberately no way to turn verification off: a line PC that would talk to any
//! certificate would hand its device token to whoever answers on the plant network.

use std::error::Error as StdError;
use std::path::Path;

use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::{pem, provider, TlsError};

/// A client configuration trusting the platform's root certificates plus every certificate
/// in `ca_file`. Fails when `ca_file` cannot be read or adds nothing, and when no root at
/// all is left to trust.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a platform root certificate could not be read");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "platform root certificates");
    if let Some(path) = ca_file {
        let certs = pem::certificates(path).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::BadCa {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// When `error` (or anything it wraps) is a refused server certificate, one line saying why,
/// for the log; `None` for every other failure.
pub fn describe_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(rustls_error) = as_rustls(error) {
            return describe(rustls_error);
        }
        next = error.source();
    }
    None
}

/// rustls errors reach callers inside `io::Error`s, whose `source()` skips the error they
/// carry, so each `io::Error` is opened by hand.
fn as_rustls<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(e) = error.downcast_ref::<rustls::Error>() {
        return Some(e);
    }
    let io = error.downcast_ref::<std::io::Error>()?;
    let inner = io.get_ref()?;
    inner.downcast_ref::<rustls::Error>()
}

fn describe(error: &rustls::Error) -> Option<String> {
    let rustls::Error::InvalidCertificate(reason) = error else {
        return Some(format!("TLS handshake failed: {error}"));
    };
    Some(match reason {
        // A CA of the same name but another key shows as a bad signature: to the operator it
        // is the same mistake.
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "the server's certificate is not signed by a trusted CA (give the plant's CA with \
             the CA-file setting)"
                .to_owned()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet (check this machine's clock)".to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the server's certificate is not valid for the name in the URL".to_owned()
        }
        other => format!("the server's certificate was refused: {other:?}"),
    })
}
