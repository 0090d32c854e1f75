//! Signing a firmware release: the manifest the server and the agents verify
//! (`protocol::firmware::manifest_bytes`), signed with an Ed25519 key kept in a PKCS#8 PEM
//! file. `sign_release` is the one function that builds and signs a manifest, so a field the
//! manifest gains is added in one place.

use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, SubsecRound as _, Utc};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

const PEM_LABEL: &str = "PRIVATE KEY";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not an Ed25519 private key in PKCS#8 PEM")]
    BadKey(String),
    #[error("cannot generate a key")]
    Generate,
}

/// What a release signature covers, besides the format header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseManifest {
    pub project: String,
    pub version: String,
    /// Lowercase hex of the artifact's SHA-256.
    pub sha256: String,
    pub size: u64,
    /// The signature's `signatureExpiresAt`; whole seconds, as the manifest carries it.
    pub expires_at: DateTime<Utc>,
    /// The signer lets this release replace a newer version (`downgrade=allowed`).
    pub allow_downgrade: bool,
    /// The release's security floor: a device that accepted it never stages a lower one.
    pub security_floor: Option<u64>,
}

impl ReleaseManifest {
    /// The manifest of an artifact file, hashed as it is read.
    pub fn of_file(
        project: &str,
        version: &str,
        artifact: &Path,
        expires_at: DateTime<Utc>,
    ) -> Result<Self, SigningError> {
        let io = |source| SigningError::Io {
            path: artifact.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(artifact).map_err(io)?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            size += n as u64;
        }
        Ok(ReleaseManifest {
            project: project.to_owned(),
            version: version.to_owned(),
            sha256: protocol::hex::encode(digest.finish().as_ref()),
            size,
            expires_at: expires_at.trunc_subsecs(0),
            allow_downgrade: false,
            security_floor: None,
        })
    }

    pub fn bytes(&self) -> Vec<u8> {
        protocol::firmware::Manifest {
            project: self.project.clone(),
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            expires_unix: self.expires_at.timestamp(),
            allow_downgrade: self.allow_downgrade,
            security_floor: self.security_floor,
        }
        .bytes()
    }
}

/// A signed manifest: what an upload sends as `signatureBase64` and `signatureExpiresAt`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedRelease {
    pub project: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub signature_base64: String,
    pub signature_expires_at: DateTime<Utc>,
    /// Covered by the signature: the upload must name them as they were signed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_floor: Option<u64>,
}

/// Signs a release's manifest.
pub fn sign_release(key: &Ed25519KeyPair, manifest: &ReleaseManifest) -> SignedRelease {
    let signature = key.sign(&manifest.bytes());
    SignedRelease {
        project: manifest.project.clone(),
        version: manifest.version.clone(),
        sha256: manifest.sha256.clone(),
        size: manifest.size,
        signature_base64: base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
        signature_expires_at: manifest.expires_at,
        allow_downgrade: manifest.allow_downgrade,
        security_floor: manifest.security_floor,
    }
}

/// A new key: its PKCS#8 PEM text and its public key as the trusted-keys settings take it
/// (base64 of the raw 32 bytes).
pub fn generate_key() -> Result<(String, String), SigningError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| SigningError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningError::Generate)?;
    let engine = base64::engine::general_purpose::STANDARD;
    let body = engine.encode(pkcs8.as_ref());
    let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    Ok((pem, public_key_base64(&pair)))
}

/// Reads a key written by `generate_key` (or `openssl genpkey -algorithm ed25519`).
pub fn load_key(path: &Path) -> Result<Ed25519KeyPair, SigningError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bad = || SigningError::BadKey(path.display().to_string());
    let body: String = text
        .lines()
        .skip_while(|l| l.trim() != format!("-----BEGIN {PEM_LABEL}-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| bad())?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| bad())
}

pub fn public_key_base64(key: &Ed25519KeyPair) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.public_key().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ED25519};

    #[test]
    fn a_generated_key_signs_what_the_verifier_checks() {
        let dir = std::env::temp_dir().join(format!("signing-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pem, public) = generate_key().unwrap();
        std::fs::write(dir.join("k.pem"), &pem).unwrap();
        std::fs::write(dir.join("a.bin"), b"release").unwrap();
        let key = load_key(&dir.join("k.pem")).unwrap();
        assert_eq!(public_key_base64(&key), public);
        let expires = Utc::now() + chrono::Duration::days(1);
        let manifest =
            ReleaseManifest::of_file("edge", "1.2.3", &dir.join("a.bin"), expires).unwrap();
        assert_eq!(manifest.size, 7);
        let signed = sign_release(&key, &manifest);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&signed.signature_base64)
            .unwrap();
        let public = base64::engine::general_purpose::STANDARD
            .decode(public)
            .unwrap();
        let expected = protocol::firmware::manifest_bytes(
            "edge",
            "1.2.3",
            &manifest.sha256,
            7,
            signed.signature_expires_at.timestamp(),
        );
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&expected, &raw)
            .expect("the signature verifies");
        assert!(load_key(&dir.join("a.bin")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
