//! Web chat visitor sessions: the token we sign for a visitor of a site, the site's identity
//! verification, and the origin check.
//!
//! A visitor token is `<payload>.<mac>`: the payload is base64url (no padding) of a small JSON
//! object (`v`, site key, visitor id, expiry in unix seconds, and the verified identifier when
//! the site vouched for one), the mac is base64url of HMAC-SHA256 over the payload text with the
//! web chat signing key (from the app secret). Verification checks the mac in constant time
//! before it reads anything, then the version, the site and the expiry. Visitor ids are ours
//! (UUIDs), never chosen by the browser.
//!
//! Identity verification follows what known widgets do: the business's server computes
//! `identifier_hash = hex(HMAC-SHA256(key = the site's identity secret, msg = identifier))` and
//! the page passes both; a matching hash attaches the visitor to that known customer.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::envelope::{Channel, Contact, Content, InboundEnvelope, InboundKind, ENVELOPE_VERSION};

/// Version of the token payload this build writes and accepts.
pub const TOKEN_VERSION: u8 = 1;
/// Longest identifier a site may vouch for.
pub const MAX_IDENTIFIER_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token malformed")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token version not supported")]
    Version,
    #[error("token expired")]
    Expired,
    #[error("token belongs to another site")]
    WrongSite,
}

impl TokenError {
    /// Stable short reason for logs, metrics and the API's error body.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Version => "token_version",
            TokenError::Expired => "token_expired",
            TokenError::WrongSite => "token_wrong_site",
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorClaims {
    pub v: u8,
    /// Site key (the web chat channel account's provider id).
    pub site: String,
    /// Visitor id: the contact's external id on this site.
    pub vid: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Identifier the site vouched for (identity verification), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idn: Option<String>,
}

/// The web chat signing key, prepared once.
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// Signs `claims` into a token.
    #[allow(
        clippy::expect_used,
        reason = "plain data with string keys always serialises"
    )]
    pub fn issue(&self, claims: &VisitorClaims) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialise");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mac = URL_SAFE_NO_PAD.encode(hmac::sign(&self.0, payload.as_bytes()).as_ref());
        format!("{payload}.{mac}")
    }

    /// Checks `token` for `site` at `now` (unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, site: &str, now: i64) -> Result<VisitorClaims, TokenError> {
        if token.len() > 2048 {
            return Err(TokenError::Malformed);
        }
        let (payload, mac) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.0, payload.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: VisitorClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.v != TOKEN_VERSION {
            return Err(TokenError::Version);
        }
        if claims.site != site {
            return Err(TokenError::WrongSite);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Longest visitor message, in characters (WhatsApp's limit, so every channel takes the same).
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// Longest client message id (a UUID is 36).
pub const MAX_CLIENT_ID_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the message is empty")]
    Empty,
    #[error("the message is longer than {MAX_MESSAGE_CHARS} characters")]
    TooLong,
    #[error("client_message_id must be 1-{MAX_CLIENT_ID_LEN} characters of [A-Za-z0-9-_]")]
    BadClientId,
}

impl MessageError {
    pub fn reason(self) -> &'static str {
        match self {
            MessageError::Empty => "message_empty",
            MessageError::TooLong => "message_too_long",
            MessageError::BadClientId => "bad_client_message_id",
        }
    }
}

/// The queue envelope of a visitor's text. The provider message id is
/// `wc.<visitor id>.<client message id>`, so a retried POST with the same client id is the same
/// message everywhere (SQS deduplication, the idempotency claim, the unique provider id).
pub fn visitor_message(
    claims: &VisitorClaims,
    client_message_id: &str,
    text: &str,
    now_ms: i64,
    correlation_id: &str,
) -> Result<InboundEnvelope, MessageError> {
    if client_message_id.is_empty()
        || client_message_id.len() > MAX_CLIENT_ID_LEN
        || !client_message_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(MessageError::BadClientId);
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(MessageError::Empty);
    }
    if text.chars().count() > MAX_MESSAGE_CHARS {
        return Err(MessageError::TooLong);
    }
    let raw = serde_json::value::to_raw_value(
        &serde_json::json!({"client_message_id": client_message_id, "text": text}),
    )
    .ok();
    Ok(InboundEnvelope {
        v: ENVELOPE_VERSION,
        kind: InboundKind::InboundMessage,
        correlation_id: correlation_id.to_owned(),
        channel: Channel::Webchat,
        channel_account_id: claims.site.clone(),
        contact: Contact {
            id: claims.vid.clone(),
            user_id: claims.idn.clone(),
            ..Contact::default()
        },
        provider_message_id: format!("wc.{}.{client_message_id}", claims.vid),
        provider_timestamp_ms: now_ms,
        reply_to: None,
        referral: None,
        content: Content::Text {
            body: text.to_owned(),
        },
        raw,
        raw_omitted: false,
    })
}

/// `hex(HMAC-SHA256(secret, identifier))`: what the site's server computes for identity
/// verification.
pub fn identifier_hash(site_secret: &[u8], identifier: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, site_secret);
    hex::encode(hmac::sign(&key, identifier.as_bytes()).as_ref())
}

/// Whether `hash` (hex, any case) is the identity hash of `identifier`, compared in constant
/// time. Empty or oversized identifiers never verify.
pub fn identity_matches(site_secret: &[u8], identifier: &str, hash: &str) -> bool {
    if identifier.is_empty() || identifier.len() > MAX_IDENTIFIER_LEN {
        return false;
    }
    let expected = identifier_hash(site_secret, identifier);
    let given = hash.trim().to_ascii_lowercase();
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// Whether a browser `Origin` header is one of the site's allowed origins (scheme, host and
/// port compared exactly, case-insensitively, without a trailing slash). No `Origin`, `null`
/// and anything with a path never match.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return false;
    };
    if origin.is_empty() || origin == "null" {
        return false;
    }
    let normal = |o: &str| o.trim_end_matches('/').to_ascii_lowercase();
    let origin = normal(origin);
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    if rest.is_empty() || rest.contains('/') {
        return false;
    }
    allowed.iter().any(|a| normal(a) == origin)
}

/// Whether `s` can be an allowed origin of a site: `http(s)://host[:port]`, no path, no
/// trailing slash (what [`origin_allowed`] compares browsers' `Origin` headers with).
pub fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> VisitorClaims {
        VisitorClaims {
            v: TOKEN_VERSION,
            site: "site_demo".into(),
            vid: "3b8e8d1e-0000-4000-8000-000000000001".into(),
            exp,
            idn: None,
        }
    }

    #[test]
    fn a_token_round_trips_for_its_site_until_it_expires() {
        let key = TokenKey::new(b"webchat-signing-key");
        let t = key.issue(&claims(1_000));
        assert_eq!(key.verify(&t, "site_demo", 999).unwrap(), claims(1_000));
        assert_eq!(key.verify(&t, "site_demo", 1_000), Err(TokenError::Expired));
        assert_eq!(
            key.verify(&t, "site_other", 999),
            Err(TokenError::WrongSite)
        );
    }

    #[test]
    fn forged_or_mangled_tokens_are_refused() {
        let key = TokenKey::new(b"webchat-signing-key");
        let other = TokenKey::new(b"another-key");
        let t = key.issue(&claims(1_000));
        assert_eq!(
            other.verify(&t, "site_demo", 1),
            Err(TokenError::BadSignature)
        );
        // A payload changed by the browser (longer expiry, another visitor) no longer matches.
        let (_, mac) = t.split_once('.').unwrap();
        let mut forged = claims(9_999_999_999);
        forged.vid = "someone-else".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            key.verify(&format!("{payload}.{mac}"), "site_demo", 1),
            Err(TokenError::BadSignature)
        );
        for bad in ["", "abc", "a.b.c", "!!.??", &"x".repeat(3000)] {
            assert!(key.verify(bad, "site_demo", 1).is_err(), "{bad}");
        }
        // A well-signed payload of another version or shape is still refused.
        let mut v2 = claims(1_000);
        v2.v = 2;
        assert_eq!(
            key.verify(&key.issue(&v2), "site_demo", 1),
            Err(TokenError::Version)
        );
        let junk = URL_SAFE_NO_PAD.encode(b"{\"hello\":1}");
        let mac = URL_SAFE_NO_PAD.encode(hmac::sign(&key.0, junk.as_bytes()).as_ref());
        assert_eq!(
            key.verify(&format!("{junk}.{mac}"), "site_demo", 1),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn identity_verification_needs_the_sites_secret() {
        let hash = identifier_hash(b"site-secret", "customer-42");
        assert_eq!(hash.len(), 64);
        assert!(identity_matches(b"site-secret", "customer-42", &hash));
        assert!(identity_matches(
            b"site-secret",
            "customer-42",
            &hash.to_uppercase()
        ));
        assert!(!identity_matches(b"site-secret", "customer-43", &hash));
        assert!(!identity_matches(b"other-secret", "customer-42", &hash));
        assert!(!identity_matches(
            b"site-secret",
            "",
            &identifier_hash(b"site-secret", "")
        ));
        let long = "x".repeat(MAX_IDENTIFIER_LEN + 1);
        assert!(!identity_matches(
            b"site-secret",
            &long,
            &identifier_hash(b"site-secret", &long)
        ));
    }

    #[test]
    fn a_visitor_message_becomes_a_webchat_envelope_with_a_stable_id() {
        let mut c = claims(1_000);
        c.idn = Some("customer-42".into());
        let env = visitor_message(&c, "m-1", "  Hola  ", 1_767_225_600_000, "corr").unwrap();
        assert_eq!(env.channel, Channel::Webchat);
        assert_eq!(env.channel_account_id, "site_demo");
        assert_eq!(env.contact.id, c.vid);
        assert_eq!(env.contact.user_id.as_deref(), Some("customer-42"));
        assert_eq!(env.provider_message_id, format!("wc.{}.m-1", c.vid));
        assert_eq!(
            env.content,
            Content::Text {
                body: "Hola".into()
            }
        );
        let again = visitor_message(&c, "m-1", "Hola", 1_767_225_609_000, "corr2").unwrap();
        assert_eq!(
            again.provider_message_id, env.provider_message_id,
            "a retry is the same message"
        );
        // The queue contract round-trips.
        let json = serde_json::to_string(&env).unwrap();
        let back: InboundEnvelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back.provider_message_id, env.provider_message_id);

        assert_eq!(
            visitor_message(&c, "m-2", "   ", 0, "c").unwrap_err(),
            MessageError::Empty
        );
        let long = "é".repeat(MAX_MESSAGE_CHARS + 1);
        assert_eq!(
            visitor_message(&c, "m-3", &long, 0, "c").unwrap_err(),
            MessageError::TooLong
        );
        assert!(visitor_message(&c, "m-4", &"é".repeat(MAX_MESSAGE_CHARS), 0, "c").is_ok());
        for bad in ["", "a b", "a/b", "ñ", &"x".repeat(MAX_CLIENT_ID_LEN + 1)] {
            assert_eq!(
                visitor_message(&c, bad, "hi", 0, "c").unwrap_err(),
                MessageError::BadClientId,
                "{bad}"
            );
        }
    }

    #[test]
    fn allowed_origins_have_no_path() {
        assert!(is_origin("https://shop.example.com"));
        assert!(is_origin("http://127.0.0.1:9100"));
        for bad in [
            "https://shop.example.com/",
            "shop.example.com",
            "https://a/b",
            "https://",
            "https://x:port",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn only_listed_origins_are_allowed() {
        let allowed = vec![
            "https://shop.example.com".to_owned(),
            "http://localhost:9000/".to_owned(),
        ];
        assert!(origin_allowed(Some("https://shop.example.com"), &allowed));
        assert!(origin_allowed(Some("HTTPS://Shop.Example.com/"), &allowed));
        assert!(origin_allowed(Some("http://localhost:9000"), &allowed));
        for bad in [
            None,
            Some(""),
            Some("null"),
            Some("http://shop.example.com"),
            Some("https://shop.example.com:8443"),
            Some("https://evil.example.com"),
            Some("https://shop.example.com.evil.net"),
            Some("https://shop.example.com/path"),
            Some("file://"),
        ] {
            assert!(!origin_allowed(bad, &allowed), "{bad:?}");
        }
    }
}
