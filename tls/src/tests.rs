//! Handshakes between this crate's client and server configurations, in memory, with
//! certificates made for each test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use crate::{client_config, describe_failure, server_config, ReloadingCert, TlsError};

/// A CA and a leaf certificate for `localhost` signed by it, written as PEM files.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tls-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca, ca_key }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes a leaf for `name` as `<file>.pem` and `<file>.key`; returns both paths.
    fn leaf(&self, file: &str, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}.key"));
        // A full chain, as a plant's certificate files hold it.
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(cert: &Path, key: &Path) -> (Arc<ReloadingCert>, ServerConfig) {
    let reloading = Arc::new(ReloadingCert::load(cert, key).unwrap());
    let config = server_config(reloading.clone()).unwrap();
    (reloading, config)
}

/// Runs a handshake over in-memory buffers; the first side to refuse ends it.
fn handshake(client: ClientConfig, server: ServerConfig, name: &str) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name)?;
    let mut server = ServerConnection::new(Arc::new(server))?;
    for _ in 0..20 {
        let mut buffer = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buffer).unwrap();
        }
        let mut unread = &buffer[..];
        while !unread.is_empty() {
            server.read_tls(&mut unread).unwrap();
            server.process_new_packets()?;
        }
        let mut buffer = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buffer).unwrap();
        }
        let mut unread = &buffer[..];
        while !unread.is_empty() {
            client.read_tls(&mut unread).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish in 20 rounds");
}

#[test]
fn a_client_given_the_plants_ca_completes_a_handshake() {
    let pki = Pki::new("trusted");
    let (cert, key) = pki.leaf("server", "localhost");
    let (_, server) = serve(&cert, &key);
    let client = client_config(Some(&pki.ca_file())).unwrap();
    handshake(client, server, "localhost").unwrap();
}

#[test]
fn a_certificate_from_an_unknown_ca_is_refused_with_a_reason() {
    let pki = Pki::new("unknown");
    let other = Pki::new("other");
    let (cert, key) = pki.leaf("server", "localhost");
    let (_, server) = serve(&cert, &key);
    let client = client_config(Some(&other.ca_file())).unwrap();
    let error = handshake(client, server, "localhost").unwrap_err();
    let reason = describe_failure(&error).unwrap();
    assert!(reason.contains("not signed by a trusted CA"), "{reason}");
    // Wrapped as the socket layers wrap it, the reason is still found.
    let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
    assert_eq!(describe_failure(&wrapped).unwrap(), reason);
}

#[test]
fn a_certificate_for_another_name_is_refused_with_a_reason() {
    let pki = Pki::new("name");
    let (cert, key) = pki.leaf("server", "factory.example.lan");
    let (_, server) = serve(&cert, &key);
    let client = client_config(Some(&pki.ca_file())).unwrap();
    let error = handshake(client, server, "localhost").unwrap_err();
    let reason = describe_failure(&error).unwrap();
    assert!(reason.contains("not valid for the name"), "{reason}");
}

#[test]
fn a_reload_serves_the_new_certificate_and_a_broken_one_keeps_the_old() {
    let pki = Pki::new("reload");
    let (cert, key) = pki.leaf("server", "localhost");
    let (reloading, server) = serve(&cert, &key);
    let before = reloading.leaf();

    // A renewal from another CA is written over the same files and reloaded: the same
    // server configuration now serves it, and only clients trusting the new CA accept it.
    let renewed = Pki::new("reload-renewed");
    let (new_cert, new_key) = renewed.leaf("server", "localhost");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    reloading.reload().unwrap();
    assert_ne!(reloading.leaf(), before);
    let new_client = client_config(Some(&renewed.ca_file())).unwrap();
    handshake(new_client, server.clone(), "localhost").unwrap();
    let old_client = client_config(Some(&pki.ca_file())).unwrap();
    assert!(handshake(old_client, server.clone(), "localhost").is_err());

    // A half-written file is refused, naming it, and the renewed certificate stays.
    let served = reloading.leaf();
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB").unwrap();
    let error = reloading.reload().unwrap_err();
    assert!(
        error.to_string().contains(&cert.display().to_string()),
        "{error}"
    );
    assert_eq!(reloading.leaf(), served);
    let new_client = client_config(Some(&renewed.ca_file())).unwrap();
    handshake(new_client, server, "localhost").unwrap();
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_refused_at_load() {
    let pki = Pki::new("mismatch");
    let (cert, _) = pki.leaf("one", "localhost");
    let (_, other_key) = pki.leaf("two", "localhost");
    let error = ReloadingCert::load(&cert, &other_key).unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    let line = error.to_string();
    assert!(
        line.contains("one.pem") && line.contains("two.key"),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn files_without_pem_content_are_refused_naming_the_file() {
    let pki = Pki::new("empty");
    let empty = pki.dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let error = client_config(Some(&empty)).unwrap_err();
    assert!(matches!(error, TlsError::BadCa { .. }), "{error}");
    assert!(error.to_string().contains("empty.pem"), "{error}");
    let (cert, _) = pki.leaf("server", "localhost");
    let error = ReloadingCert::load(&cert, &empty).unwrap_err();
    assert!(error.to_string().contains("empty.pem"), "{error}");
    let missing = pki.dir.join("missing.pem");
    let error = ReloadingCert::load(&missing, &empty).unwrap_err();
    assert!(error.to_string().contains("missing.pem"), "{error}");
}
