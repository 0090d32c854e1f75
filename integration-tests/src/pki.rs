//! A plant's own certificate authority, made for one test: a CA file to hand to clients and
//! server certificates for `localhost` and `127.0.0.1` signed by it, as PEM files.
//!
//! Nothing here reaches the internet; the files live in a temporary directory removed with it.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::TempDir;

/// The CA and the directory its files are written to.
pub struct TestPki {
    dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    issued: std::cell::Cell<u32>,
}

/// A server certificate's files: the full chain and the key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    /// A new CA named `name`; its certificate is in `ca_file()`.
    pub fn new(name: &str) -> Self {
        let dir = TempDir::new("test-pki");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA file");
        TestPki {
            dir,
            ca,
            ca_key,
            issued: std::cell::Cell::new(0),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A new server certificate for `localhost` and `127.0.0.1`, each call a new key and serial.
    pub fn server_cert(&self) -> ServerCert {
        let n = self.issued.get() + 1;
        self.issued.set(n);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("server certificate");
        let files = ServerCert {
            cert: self.dir.path().join(format!("server-{n}.pem")),
            key: self.dir.path().join(format!("server-{n}.key")),
        };
        // The full chain, as a plant's certificate files hold it.
        std::fs::write(&files.cert, format!("{}{}", cert.pem(), self.ca.pem())).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// The DER of the leaf in a chain file, to compare with what a handshake presented.
    pub fn leaf_der(cert_file: &std::path::Path) -> Vec<u8> {
        let pem = std::fs::read_to_string(cert_file).expect("read chain");
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("PEM body")
    }
}
