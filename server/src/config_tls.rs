//! The TLS settings read into what rustls takes: the server's certificate and the cloud
//! client's trust. Kept apart from the rest of `config` so that file stays readable.

use super::{Config, ConfigError};

impl Config {
    /// The serving certificate when TLS is configured: both files read and matching.
    pub fn server_tls(&self) -> Result<Option<std::sync::Arc<tls::ReloadingCert>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => tls::ReloadingCert::load(cert, key)
                .map(|c| Some(std::sync::Arc::new(c)))
                .map_err(|e| ConfigError(format!("tls: {e}"))),
            _ => Err(ConfigError(
                "tls_cert and tls_key: give both (HTTPS) or neither (plain HTTP)".into(),
            )),
        }
    }

    /// What the cloud client trusts. `None` when the platform has no root certificates and no
    /// CA file is given: plain http still works, and an https cloud is refused with that reason.
    pub fn cloud_tls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, ConfigError> {
        match tls::client_config(self.cloud_ca_file.as_deref()) {
            Ok(config) => Ok(Some(std::sync::Arc::new(config))),
            Err(tls::TlsError::NoRoots) => Ok(None),
            Err(e) => Err(ConfigError(format!("cloud_ca_file: {e}"))),
        }
    }
}
