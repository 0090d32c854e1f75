//! Lowercase hexadecimal, the form digests take on the wire and in the signed manifest.

/// `bytes` as lowercase hex, two digits a byte.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_lowercase_digits_a_byte() {
        assert_eq!(super::encode(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
