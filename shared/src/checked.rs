//! Values that arrive from outside, parsed once into types that can only hold a valid one, so
//! the code behind the edge never re-checks (or `expect`s) them. Each reads from one JSON field
//! ([`FromField`]) and, when it cannot, says what is wrong in words a 422 can carry.

use serde_json::Value as Json;

/// A value read from one JSON field: the value, or the message for that field.
pub trait FromField: Sized {
    fn from_field(v: Json) -> Result<Self, String>;
}

/// A trimmed string of `min..=max` characters without NUL (Postgres refuses NUL in text).
pub fn text(v: Json, min: usize, max: usize) -> Result<String, String> {
    let Json::String(s) = v else {
        return Err("must be a string".to_owned());
    };
    let s = s.trim().to_owned();
    let n = s.chars().count();
    if s.contains('\0') {
        Err("must not contain NUL characters".to_owned())
    } else if n < min || n > max {
        Err(format!("must be {min} to {max} characters"))
    } else {
        Ok(s)
    }
}

/// An id as Meta shows it: 1 to 40 digits (a WhatsApp phone number id, a WhatsApp Business
/// account id, an Instagram account id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaId(String);

impl MetaId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromField for MetaId {
    fn from_field(v: Json) -> Result<Self, String> {
        let s = text(v, 1, 40)?;
        if s.chars().all(|c| c.is_ascii_digit()) {
            Ok(Self(s))
        } else {
            Err("must be the numeric id Meta shows".to_owned())
        }
    }
}

/// Where a tenant's webhook may point: `https://` with a DNS host name (no IP literal, no
/// `localhost`, no user info), at most 2,000 characters, so deliveries cannot be aimed at the
/// functions' own network by address. (A name that resolves to a private address is not
/// caught here.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicHttpsUrl(String);

impl PublicHttpsUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s` is such a URL.
    pub fn is_valid(s: &str) -> bool {
        let Ok(u) = url::Url::parse(s) else {
            return false;
        };
        let host_ok = match u.host() {
            Some(url::Host::Domain(d)) => {
                let d = d.to_ascii_lowercase();
                d.contains('.') && d != "localhost" && !d.ends_with(".localhost")
            }
            _ => false,
        };
        u.scheme() == "https"
            && host_ok
            && u.username().is_empty()
            && u.password().is_none()
            && s.len() <= 2000
    }
}

impl FromField for PublicHttpsUrl {
    fn from_field(v: Json) -> Result<Self, String> {
        let s = text(v, 1, 2000)?;
        if Self::is_valid(&s) {
            Ok(Self(s))
        } else {
            Err("must be an https:// URL with a public host name".to_owned())
        }
    }
}

/// A number of credits to add: a whole number from 1 to 10^12.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits(i64);

impl Credits {
    pub const MAX: i64 = 1_000_000_000_000;

    pub fn get(self) -> i64 {
        self.0
    }
}

impl FromField for Credits {
    fn from_field(v: Json) -> Result<Self, String> {
        v.as_i64()
            .filter(|n| (1..=Self::MAX).contains(n))
            .map(Self)
            .ok_or_else(|| format!("must be an integer from 1 to {}", Self::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meta_ids_are_digits() {
        assert_eq!(
            MetaId::from_field(json!(" 1065400000 ")).map(|m| m.0),
            Ok("1065400000".to_owned())
        );
        for (bad, why) in [
            (json!("12ab"), "must be the numeric id Meta shows"),
            (json!(""), "must be 1 to 40 characters"),
            (json!("1".repeat(41)), "must be 1 to 40 characters"),
            (json!(12), "must be a string"),
            (json!("1\u{0}"), "must not contain NUL characters"),
        ] {
            assert_eq!(MetaId::from_field(bad).err().as_deref(), Some(why));
        }
    }

    #[test]
    fn credits_are_whole_and_in_range() {
        assert_eq!(Credits::from_field(json!(5)).map(Credits::get), Ok(5));
        assert_eq!(
            Credits::from_field(json!(Credits::MAX)).map(Credits::get),
            Ok(Credits::MAX)
        );
        for bad in [
            json!(0),
            json!(-1),
            json!(Credits::MAX + 1),
            json!("5"),
            json!(1.5),
        ] {
            assert_eq!(
                Credits::from_field(bad).err().as_deref(),
                Some("must be an integer from 1 to 1000000000000")
            );
        }
    }

    #[test]
    fn webhook_urls() {
        assert!(PublicHttpsUrl::is_valid("https://crm.example.com/hook?x=1"));
        assert_eq!(
            PublicHttpsUrl::from_field(json!(" https://crm.example.com/h ")).map(|u| u.0),
            Ok("https://crm.example.com/h".to_owned())
        );
        for bad in [
            "http://crm.example.com/hook",
            "https://127.0.0.1/x",
            "https://0x7f.1/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest",
            "https://localhost/x",
            "https://api.localhost/x",
            "https://user:pw@crm.example.com/x",
            "https://intranet/x",
            "ftp://x.example",
            "not a url",
        ] {
            assert!(!PublicHttpsUrl::is_valid(bad), "{bad}");
            assert_eq!(
                PublicHttpsUrl::from_field(json!(bad)).err().as_deref(),
                Some("must be an https:// URL with a public host name")
            );
        }
    }
}
