//! What the agent trusts for firmware beyond its settings: the keys added and retired by
//! signed rotations (`rotate_firmware_keys`), the sequence of the last rotation applied, and
//! the highest security floor accepted per project. The store keeps it (`store/trust.rs`);
//! this file is the rules, as plain functions.
//!
//! The keys in force are the configured ones plus the added ones, less the retired ones: a
//! rotation can retire a key the settings name (a stolen signing key stops working on every
//! line PC without touching their files), and a key added by a rotation survives restarts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use protocol::firmware::KeyRotation;
use protocol::signing::{encode_public_key, parse_public_key, verify};
use serde::{Deserialize, Serialize};

/// The persisted changes to the configured keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// Base64 public keys added by rotations.
    pub added: Vec<String>,
    /// Base64 public keys retired by rotations; they win over the settings.
    pub retired: Vec<String>,
    /// The sequence of the last rotation applied; only a higher one is taken.
    pub sequence: u64,
}

/// Everything persisted about firmware trust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustState {
    pub keyring: Keyring,
    /// The highest `security_floor` of a release staged, per project.
    pub floors: BTreeMap<String, u64>,
}

impl TrustState {
    pub fn floor(&self, project: &str) -> u64 {
        self.floors.get(project).copied().unwrap_or(0)
    }
}

/// The keys in force: configured and added, less retired, each once.
pub fn keys_in_force(configured: &[[u8; 32]], keyring: &Keyring) -> Vec<[u8; 32]> {
    let retired: Vec<[u8; 32]> = keyring
        .retired
        .iter()
        .filter_map(|k| parse_public_key(k).ok())
        .collect();
    let mut keys: Vec<[u8; 32]> = Vec::new();
    let added = keyring
        .added
        .iter()
        .filter_map(|k| parse_public_key(k).ok());
    for key in configured.iter().copied().chain(added) {
        if !retired.contains(&key) && !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// Why a rotation was not applied; the text is the command's failure output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    #[error("refused: the key rotation expired at {0}")]
    Expired(String),
    #[error("refused: rotation sequence {got} is not above {applied}, the last one applied (a replayed rotation)")]
    Replayed { got: u64, applied: u64 },
    #[error("refused: the key rotation is not signed by a trusted key ({0})")]
    BadSignature(String),
    #[error("refused: key {0} is both added and retired")]
    Contradiction(String),
    #[error("refused: the rotation would leave no trusted release key")]
    Empty,
    #[error("refused: {0}")]
    BadKey(String),
}

/// Checks a rotation against the keys in force and answers the keyring after it; the caller
/// stores it. The signature must be by a key in force before the rotation (a key it adds
/// cannot vouch for itself), the sequence above the last applied, and the result not empty.
pub fn rotate(
    configured: &[[u8; 32]],
    keyring: &Keyring,
    rotation: &KeyRotation,
    signature_base64: &str,
    now: DateTime<Utc>,
) -> Result<Keyring, RotationError> {
    if rotation.expires_unix <= now.timestamp() {
        let at = DateTime::<Utc>::from_timestamp(rotation.expires_unix, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| rotation.expires_unix.to_string());
        return Err(RotationError::Expired(at));
    }
    if rotation.sequence <= keyring.sequence {
        return Err(RotationError::Replayed {
            got: rotation.sequence,
            applied: keyring.sequence,
        });
    }
    let before = keys_in_force(configured, keyring);
    verify(&before, &rotation.bytes(), signature_base64)
        .map_err(|e| RotationError::BadSignature(e.to_string()))?;
    let parse = |k: &String| {
        parse_public_key(k)
            .map(|raw| encode_public_key(&raw))
            .map_err(|e| RotationError::BadKey(e.to_string()))
    };
    let add: Vec<String> = rotation.add.iter().map(parse).collect::<Result<_, _>>()?;
    let retire: Vec<String> = rotation
        .retire
        .iter()
        .map(parse)
        .collect::<Result<_, _>>()?;
    if let Some(both) = add.iter().find(|k| retire.contains(k)) {
        return Err(RotationError::Contradiction(both.clone()));
    }
    let mut next = keyring.clone();
    next.sequence = rotation.sequence;
    next.retired.retain(|k| !add.contains(k));
    for key in add {
        if !next.added.contains(&key) {
            next.added.push(key);
        }
    }
    next.added.retain(|k| !retire.contains(k));
    for key in retire {
        if !next.retired.contains(&key) {
            next.retired.push(key);
        }
    }
    if keys_in_force(configured, &next).is_empty() {
        return Err(RotationError::Empty);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::signing::{generate_key, sign_rotation};

    fn raw(public: &str) -> [u8; 32] {
        parse_public_key(public).unwrap()
    }

    fn rotation(add: &[&str], retire: &[&str], sequence: u64) -> KeyRotation {
        KeyRotation {
            add: add.iter().map(|k| k.to_string()).collect(),
            retire: retire.iter().map(|k| k.to_string()).collect(),
            sequence,
            expires_unix: Utc::now().timestamp() + 600,
        }
    }

    #[test]
    fn a_trusted_key_hands_over_to_a_new_one_and_is_retired() {
        let (old, new) = (generate_key().unwrap(), generate_key().unwrap());
        let configured = [raw(&old.public_base64)];
        let r = rotation(&[&new.public_base64], &[&old.public_base64], 1);
        let signature = sign_rotation(&old.private_base64, &r).unwrap();
        let next = rotate(&configured, &Keyring::default(), &r, &signature, Utc::now()).unwrap();
        assert_eq!(
            keys_in_force(&configured, &next),
            vec![raw(&new.public_base64)]
        );
        // The same message again is a replay, whatever its signature.
        assert!(matches!(
            rotate(&configured, &next, &r, &signature, Utc::now()),
            Err(RotationError::Replayed { .. })
        ));
        // The retired key can no longer rotate anything.
        let again = rotation(&[&old.public_base64], &[], 2);
        let by_old = sign_rotation(&old.private_base64, &again).unwrap();
        assert!(matches!(
            rotate(&configured, &next, &again, &by_old, Utc::now()),
            Err(RotationError::BadSignature(_))
        ));
    }

    #[test]
    fn strangers_expired_and_emptying_rotations_are_refused() {
        let (own, stranger) = (generate_key().unwrap(), generate_key().unwrap());
        let configured = [raw(&own.public_base64)];
        let r = rotation(&[&stranger.public_base64], &[], 1);
        let by_stranger = sign_rotation(&stranger.private_base64, &r).unwrap();
        assert!(matches!(
            rotate(
                &configured,
                &Keyring::default(),
                &r,
                &by_stranger,
                Utc::now()
            ),
            Err(RotationError::BadSignature(_))
        ));
        let mut expired = r.clone();
        expired.expires_unix = Utc::now().timestamp() - 1;
        let signature = sign_rotation(&own.private_base64, &expired).unwrap();
        assert!(matches!(
            rotate(
                &configured,
                &Keyring::default(),
                &expired,
                &signature,
                Utc::now()
            ),
            Err(RotationError::Expired(_))
        ));
        let emptying = rotation(&[], &[&own.public_base64], 1);
        let signature = sign_rotation(&own.private_base64, &emptying).unwrap();
        assert_eq!(
            rotate(
                &configured,
                &Keyring::default(),
                &emptying,
                &signature,
                Utc::now()
            ),
            Err(RotationError::Empty)
        );
    }
}
