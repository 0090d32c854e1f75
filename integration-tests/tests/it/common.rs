//! Helpers that several areas' tests share: test artifacts, base64, scan frames.

use base64::Engine;
use integration_tests::now_rfc3339;
use serde_json::{json, Value};

/// A deterministic firmware artifact of `n` bytes; different seeds give different bytes.
pub fn artifact(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32) as u8)
        .collect()
}

/// Standard base64 (public keys, signatures).
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// URL-safe base64 without padding (JWT parts).
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A device's `scan` event frame for `code`, stamped now.
pub fn scan(code: &str) -> Value {
    json!({"type": "scan", "code": code, "valid": true, "ts": now_rfc3339()})
}
