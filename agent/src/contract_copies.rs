//! The agent's own copies of rules the server shares through the `protocol` crate.
//!
//! Each item here is one small function or constant, so that switching the agent to the
//! `protocol` crate's version is a one-line change per item; nothing else in the agent spells
//! these rules out.

/// First line of the signed manifest (server/src/firmware.rs documents the layout).
const MANIFEST_HEADER: &str = "factory-firmware-manifest-v1";
/// The `project` the agent's own releases are uploaded under; the signed manifest names it.
pub const FIRMWARE_PROJECT: &str = "edge";

/// The bytes a release signature covers, as the server builds them.
pub fn manifest_bytes(version: &str, sha256_hex: &str, size: u64, expires_unix: i64) -> Vec<u8> {
    format!(
        "{MANIFEST_HEADER}\nproject={FIRMWARE_PROJECT}\nversion={version}\nsha256={sha256_hex}\nsize={size}\nexpires={expires_unix}\n"
    )
    .into_bytes()
}

/// Lowercase hex, as SHA-256 digests are written on the wire.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Longest device id the server accepts.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// The device-id rule: at most `MAX_DEVICE_ID_LEN` bytes of A-Z a-z 0-9 . _ -; the error is
/// the reason, worded to follow the setting's name.
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(format!("is longer than {MAX_DEVICE_ID_LEN} characters"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{id}` contains {bad:?}; only A-Z a-z 0-9 . _ - are allowed"
        ));
    }
    Ok(())
}

/// The WebSocket close code of an orderly close (RFC 6455 "normal closure"), which the agent
/// sends at shutdown, when the server closed first, and when it reconnects to enroll again.
pub const CLOSE_NORMAL: u16 = 1000;
