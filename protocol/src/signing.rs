//! Ed25519 signing and checking of firmware manifests and key rotations, for the agent and the
//! server (which verify) and for the admin CLI (`factory-server firmware keygen|sign`, which
//! calls these plain functions).
//!
//! Formats, so that files and settings written by one tool are read by the others:
//! - a **public key** is base64 (standard alphabet, padded) of the raw 32 bytes, as the
//!   `firmware_trusted_keys` settings of both binaries take it;
//! - a **private key** is base64 of its PKCS#8 v2 document (what `generate_key` answers and
//!   `sign_manifest` / `sign_rotation` take), to be kept in a file readable by its owner only;
//! - a **signature** is base64 of the 64-byte Ed25519 signature over `Manifest::bytes` or
//!   `KeyRotation::bytes` (`signatureBase64` of uploads and commands).
//!
//! Example, what the CLI does for `firmware sign`:
//!
//! ```
//! use protocol::firmware::Manifest;
//! use protocol::signing::{generate_key, sign_manifest, verify, parse_public_key};
//!
//! let key = generate_key().unwrap();
//! let manifest = Manifest {
//!     project: "edge".into(),
//!     version: "1.4.0".into(),
//!     sha256: "ab".repeat(32),
//!     size: 1024,
//!     expires_unix: 4_000_000_000,
//!     allow_downgrade: false,
//!     security_floor: Some(3),
//! };
//! let signature = sign_manifest(&key.private_base64, &manifest).unwrap();
//! let trusted = [parse_public_key(&key.public_base64).unwrap()];
//! assert!(verify(&trusted, &manifest.bytes(), &signature).is_ok());
//! ```

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::firmware::{KeyRotation, Manifest};

const B64: base64::engine::general_purpose::GeneralPurpose =
    base64::engine::general_purpose::STANDARD;

/// Why a key or signature could not be used; the text is for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningError {
    /// A public key that is not base64 of 32 bytes.
    BadPublicKey(String),
    /// A private key that is not base64 of an Ed25519 PKCS#8 document.
    BadPrivateKey,
    /// A signature that is not base64 of 64 bytes.
    BadSignature,
    /// No trusted key verifies the signature (or none is trusted).
    Untrusted,
    /// The system's random source failed.
    Random,
}

impl std::fmt::Display for SigningError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningError::BadPublicKey(k) => {
                write!(f, "`{k}` is not base64 of a 32-byte Ed25519 public key")
            }
            SigningError::BadPrivateKey => {
                f.write_str("the private key is not base64 of an Ed25519 PKCS#8 document")
            }
            SigningError::BadSignature => f.write_str("not base64 of a 64-byte Ed25519 signature"),
            SigningError::Untrusted => f.write_str("no trusted key verifies the signature"),
            SigningError::Random => f.write_str("the random source failed"),
        }
    }
}

impl std::error::Error for SigningError {}

/// A new key pair: the private key to keep, the public key to trust.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// Base64 of the PKCS#8 document; a secret.
    pub private_base64: String,
    /// Base64 of the raw 32-byte public key.
    pub public_base64: String,
}

/// Makes a new Ed25519 key pair from the system's random source.
pub fn generate_key() -> Result<GeneratedKey, SigningError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| SigningError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningError::Random)?;
    Ok(GeneratedKey {
        private_base64: B64.encode(pkcs8.as_ref()),
        public_base64: B64.encode(pair.public_key().as_ref()),
    })
}

fn key_pair(private_base64: &str) -> Result<Ed25519KeyPair, SigningError> {
    let der = B64
        .decode(private_base64.trim())
        .map_err(|_| SigningError::BadPrivateKey)?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| SigningError::BadPrivateKey)
}

/// The public key (base64 of 32 bytes) of a private key.
pub fn public_key_of(private_base64: &str) -> Result<String, SigningError> {
    Ok(B64.encode(key_pair(private_base64)?.public_key().as_ref()))
}

/// Signs any message; answers base64 of the signature.
pub fn sign(private_base64: &str, message: &[u8]) -> Result<String, SigningError> {
    Ok(B64.encode(key_pair(private_base64)?.sign(message).as_ref()))
}

/// Signs a release manifest (`signatureBase64` of the upload).
pub fn sign_manifest(private_base64: &str, manifest: &Manifest) -> Result<String, SigningError> {
    sign(private_base64, &manifest.bytes())
}

/// Signs a key rotation (`signatureBase64` of `rotate_firmware_keys`).
pub fn sign_rotation(private_base64: &str, rotation: &KeyRotation) -> Result<String, SigningError> {
    sign(private_base64, &rotation.bytes())
}

/// Reads a public key as the settings write it.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], SigningError> {
    B64.decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| SigningError::BadPublicKey(text.to_owned()))
}

/// Base64 of a raw public key, the form settings and rotations use.
pub fn encode_public_key(key: &[u8; 32]) -> String {
    B64.encode(key)
}

/// Checks `signature_base64` over `message` against each trusted key; answers the index of the
/// key that verifies it.
pub fn verify(
    trusted: &[[u8; 32]],
    message: &[u8],
    signature_base64: &str,
) -> Result<usize, SigningError> {
    let signature = B64
        .decode(signature_base64.trim())
        .ok()
        .filter(|b| b.len() == 64)
        .ok_or(SigningError::BadSignature)?;
    trusted
        .iter()
        .position(|key| {
            UnparsedPublicKey::new(&ED25519, key)
                .verify(message, &signature)
                .is_ok()
        })
        .ok_or(SigningError::Untrusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            project: "edge".into(),
            version: "1.0.0".into(),
            sha256: "AB".repeat(32),
            size: 10,
            expires_unix: 1_900_000_000,
            allow_downgrade: false,
            security_floor: None,
        }
    }

    #[test]
    fn a_manifest_without_rollback_fields_keeps_the_original_bytes() {
        let m = manifest();
        assert_eq!(
            m.bytes(),
            crate::firmware::manifest_bytes("edge", "1.0.0", &"ab".repeat(32), 10, 1_900_000_000)
        );
        let extended = Manifest {
            allow_downgrade: true,
            security_floor: Some(4),
            ..manifest()
        };
        let text = String::from_utf8(extended.bytes()).unwrap();
        assert!(
            text.ends_with("expires=1900000000\ndowngrade=allowed\nsecurity_floor=4\n"),
            "{text}"
        );
    }

    #[test]
    fn signatures_verify_with_the_signing_key_only() {
        let (signer, stranger) = (generate_key().unwrap(), generate_key().unwrap());
        let trusted = [parse_public_key(&signer.public_base64).unwrap()];
        let signed = sign_manifest(&signer.private_base64, &manifest()).unwrap();
        assert_eq!(verify(&trusted, &manifest().bytes(), &signed), Ok(0));
        let foreign = sign_manifest(&stranger.private_base64, &manifest()).unwrap();
        assert_eq!(
            verify(&trusted, &manifest().bytes(), &foreign),
            Err(SigningError::Untrusted)
        );
        // The permission and the floor are covered: adding either breaks the signature.
        let widened = Manifest {
            allow_downgrade: true,
            ..manifest()
        };
        assert_eq!(
            verify(&trusted, &widened.bytes(), &signed),
            Err(SigningError::Untrusted)
        );
        assert_eq!(
            verify(&trusted, &manifest().bytes(), "not base64!"),
            Err(SigningError::BadSignature)
        );
        assert_eq!(
            public_key_of(&signer.private_base64).unwrap(),
            signer.public_base64
        );
    }

    #[test]
    fn rotations_cover_every_key_and_the_sequence() {
        let signer = generate_key().unwrap();
        let trusted = [parse_public_key(&signer.public_base64).unwrap()];
        let rotation = KeyRotation {
            add: vec!["A".into()],
            retire: vec!["B".into()],
            sequence: 2,
            expires_unix: 1_900_000_000,
        };
        let text = String::from_utf8(rotation.bytes()).unwrap();
        assert_eq!(
            text,
            "factory-keyring-rotation-v1\nsequence=2\nexpires=1900000000\nadd=A\nretire=B\n"
        );
        let signed = sign_rotation(&signer.private_base64, &rotation).unwrap();
        assert!(verify(&trusted, &rotation.bytes(), &signed).is_ok());
        let replayed = KeyRotation {
            sequence: 3,
            ..rotation
        };
        assert!(verify(&trusted, &replayed.bytes(), &signed).is_err());
        assert!(parse_public_key("short").is_err());
    }
}
