//! Hex SHA-256, the one digest the project names things with (dedup ids, long group ids,
//! the model's safety identifier, ids derived from a raw event).

use aws_lc_rs::digest;

/// Hex SHA-256 (aws-lc's assembly implementation: this runs for every message).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
