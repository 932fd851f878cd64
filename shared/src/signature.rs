//! Meta's webhook signature (`X-Hub-Signature-256`) and the verify-token check.
//!
//! HMAC-SHA256 runs on aws-lc (already linked by the AWS SDK): its assembly SHA-256 is about twice
//! as fast as the portable Rust one on CPUs without SHA extensions, and the webhook's CPU budget
//! per message is a few microseconds (see the `ingest` benchmark). Both comparisons are
//! constant-time.

use aws_lc_rs::hmac;
use subtle::ConstantTimeEq;

/// Name of the header Meta signs webhooks with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed (expected `sha256=<64 hex>`)")]
    Malformed,
    #[error("signature does not match the body")]
    Mismatch,
}

impl SignatureError {
    /// Stable short reason for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// A prepared HMAC key for the app secret (preparing it once saves two compression rounds).
#[derive(Clone)]
pub struct SignatureKey(hmac::Key);

impl std::fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignatureKey(<redacted>)")
    }
}

impl SignatureKey {
    pub fn new(app_secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, app_secret))
    }

    /// Checks `header` (`sha256=<hex>`) against the HMAC of the exact received bytes.
    pub fn verify(&self, body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let hex_part = header
            .trim()
            .strip_prefix("sha256=")
            .ok_or(SignatureError::Malformed)?;
        let mut expected = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut expected).map_err(|_| SignatureError::Malformed)?;
        hmac::verify(&self.0, body, &expected).map_err(|_| SignatureError::Mismatch)
    }

    /// `sha256=<hex>` for `body`: what Meta would send. Used by tests, the local stack and the
    /// sample events.
    pub fn sign(&self, body: &[u8]) -> String {
        format!("sha256={}", hex::encode(hmac::sign(&self.0, body).as_ref()))
    }
}

/// Constant-time comparison of the `hub.verify_token` Meta sends with ours.
pub fn verify_token_matches(given: &str, expected: &str) -> bool {
    // ct_eq on slices of different lengths returns false without looking at the contents; the
    // length of our token is not a secret worth hiding.
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::hmac::{Hmac, Mac};

    fn reference_signature(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signs_like_the_reference_hmac_implementation() {
        let key = SignatureKey::new(b"app-secret");
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        assert_eq!(key.sign(body), reference_signature(b"app-secret", body));
    }

    #[test]
    fn accepts_the_right_signature_and_uppercase_hex() {
        let key = SignatureKey::new(b"s3cret");
        let body = b"{\"a\":\"\\u00f3\"}";
        let sig = key.sign(body);
        assert_eq!(key.verify(body, Some(&sig)), Ok(()));
        let upper = format!("sha256={}", sig["sha256=".len()..].to_uppercase());
        assert_eq!(key.verify(body, Some(&upper)), Ok(()));
    }

    #[test]
    fn rejects_missing_malformed_and_wrong_signatures() {
        let key = SignatureKey::new(b"s3cret");
        let body = b"{}";
        assert_eq!(key.verify(body, None), Err(SignatureError::Missing));
        assert_eq!(key.verify(body, Some("")), Err(SignatureError::Malformed));
        assert_eq!(
            key.verify(body, Some("sha1=abcd")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            key.verify(body, Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            key.verify(body, Some("sha256=abcd")),
            Err(SignatureError::Malformed)
        );
        let other = SignatureKey::new(b"other").sign(body);
        assert_eq!(
            key.verify(body, Some(&other)),
            Err(SignatureError::Mismatch)
        );
        // A body changed by one byte (or truncated) no longer matches.
        let sig = key.sign(b"{\"x\":1}");
        assert_eq!(
            key.verify(b"{\"x\":1", Some(&sig)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn verify_token_compare() {
        assert!(verify_token_matches("tok", "tok"));
        assert!(!verify_token_matches("tok", "toK"));
        assert!(!verify_token_matches("to", "tok"));
        assert!(!verify_token_matches("", "tok"));
    }
}
