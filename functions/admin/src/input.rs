//! Reading a JSON request body field by field, collecting one message per bad field so a 422
//! names all of them at once. Unknown fields are refused (a typo must not be silently ignored).
//!
//! For PATCH, `Some(None)` from the `nullable_*` readers means "set to null" and `None` means
//! "not given, keep".

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use shared::checked::FromField;

use crate::ApiError;

pub struct Input {
    obj: Map<String, Json>,
    errors: BTreeMap<String, String>,
}

impl Input {
    /// The body as a JSON object (an empty body reads as `{}`).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let obj = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Json>(body) {
                Ok(Json::Object(m)) => m,
                Ok(_) => {
                    return Err(ApiError::BadRequest(
                        "malformed_json",
                        "the body must be a JSON object".into(),
                    ))
                }
                Err(_) => {
                    return Err(ApiError::BadRequest(
                        "malformed_json",
                        "the body is not valid JSON".into(),
                    ))
                }
            }
        };
        Ok(Self {
            obj,
            errors: BTreeMap::new(),
        })
    }

    pub fn bad(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .entry(field.to_owned())
            .or_insert_with(|| message.into());
    }

    pub fn has(&self, field: &str) -> bool {
        self.obj.contains_key(field)
    }

    fn take(&mut self, field: &str) -> Option<Json> {
        self.obj.remove(field)
    }

    /// A string of `min..=max` characters (trimmed).
    fn check_str(&mut self, field: &str, v: Json, min: usize, max: usize) -> Option<String> {
        self.read(field, shared::checked::text(v, min, max))
    }

    fn read<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        match parsed {
            Ok(v) => Some(v),
            Err(message) => {
                self.bad(field, message);
                None
            }
        }
    }

    /// A value of a parsing type; absent or null is "is required".
    pub fn required<T: FromField>(&mut self, field: &str) -> Option<T> {
        match self.take(field) {
            None | Some(Json::Null) => {
                self.bad(field, "is required");
                None
            }
            Some(v) => self.read(field, T::from_field(v)),
        }
    }

    /// A value of a parsing type if given; null is refused.
    pub fn optional<T: FromField>(&mut self, field: &str) -> Option<T> {
        match self.take(field) {
            None => None,
            Some(Json::Null) => {
                self.bad(field, "must not be null");
                None
            }
            Some(v) => self.read(field, T::from_field(v)),
        }
    }

    pub fn required_str(&mut self, field: &str, min: usize, max: usize) -> Option<String> {
        match self.take(field) {
            None | Some(Json::Null) => {
                self.bad(field, "is required");
                None
            }
            Some(v) => self.check_str(field, v, min, max),
        }
    }

    pub fn str(&mut self, field: &str, min: usize, max: usize) -> Option<String> {
        match self.take(field) {
            None => None,
            Some(Json::Null) => {
                self.bad(field, "must not be null");
                None
            }
            Some(v) => self.check_str(field, v, min, max),
        }
    }

    pub fn nullable_str(&mut self, field: &str, min: usize, max: usize) -> Option<Option<String>> {
        match self.take(field) {
            None => None,
            Some(Json::Null) => Some(None),
            Some(v) => self.check_str(field, v, min, max).map(Some),
        }
    }

    pub fn int(&mut self, field: &str, min: i64, max: i64) -> Option<i64> {
        match self.take(field) {
            None => None,
            Some(v) => match v.as_i64().filter(|n| (min..=max).contains(n)) {
                Some(n) => Some(n),
                None => {
                    self.bad(field, format!("must be an integer from {min} to {max}"));
                    None
                }
            },
        }
    }

    pub fn nullable_number(&mut self, field: &str, min: f64, max: f64) -> Option<Option<f64>> {
        match self.take(field) {
            None => None,
            Some(Json::Null) => Some(None),
            Some(v) => match v.as_f64().filter(|n| (min..=max).contains(n)) {
                Some(n) => Some(Some(n)),
                None => {
                    self.bad(field, format!("must be a number from {min} to {max}"));
                    None
                }
            },
        }
    }

    pub fn bool(&mut self, field: &str) -> Option<bool> {
        match self.take(field) {
            None => None,
            Some(Json::Bool(b)) => Some(b),
            Some(_) => {
                self.bad(field, "must be true or false");
                None
            }
        }
    }

    /// One of `allowed`.
    pub fn choice(&mut self, field: &str, allowed: &[&str]) -> Option<String> {
        let v = self.take(field)?;
        match v.as_str().filter(|s| allowed.contains(s)) {
            Some(s) => Some(s.to_owned()),
            None => {
                self.bad(field, format!("must be one of: {}", allowed.join(", ")));
                None
            }
        }
    }

    pub fn nullable_choice(&mut self, field: &str, allowed: &[&str]) -> Option<Option<String>> {
        match self.take(field) {
            None => None,
            Some(Json::Null) => Some(None),
            Some(v) => match v.as_str().filter(|s| allowed.contains(s)) {
                Some(s) => Some(Some(s.to_owned())),
                None => {
                    self.bad(
                        field,
                        format!("must be one of: {}, or null", allowed.join(", ")),
                    );
                    None
                }
            },
        }
    }

    /// A UUID string, or null.
    pub fn nullable_uuid(&mut self, field: &str) -> Option<Option<uuid::Uuid>> {
        match self.take(field) {
            None => None,
            Some(Json::Null) => Some(None),
            Some(v) => match v.as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()) {
                Some(id) => Some(Some(id)),
                None => {
                    self.bad(field, "must be an id (UUID) or null");
                    None
                }
            },
        }
    }

    /// An array of strings, each `1..=max` characters, at most `max_items`.
    pub fn strings(&mut self, field: &str, max_items: usize, max: usize) -> Option<Vec<String>> {
        let v = self.take(field)?;
        let Some(items) = v.as_array().filter(|a| a.len() <= max_items) else {
            self.bad(
                field,
                format!("must be an array of at most {max_items} strings"),
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            match item
                .as_str()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= max && !s.contains('\0'))
            {
                Some(s) => out.push(s.to_owned()),
                None => {
                    self.bad(
                        field,
                        format!("every item must be a string of 1 to {max} characters"),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A JSON object, as given.
    pub fn object(&mut self, field: &str) -> Option<Json> {
        let v = self.take(field)?;
        // Postgres refuses NUL in jsonb strings (and keys).
        if v.is_object() && !v.to_string().contains("\\u0000") {
            Some(v)
        } else {
            self.bad(field, "must be an object (without NUL characters)");
            None
        }
    }

    /// Refuses what is left (unknown fields) and returns every collected error as a 422.
    pub fn finish(mut self) -> Result<(), ApiError> {
        let unknown: Vec<String> = self.obj.keys().cloned().collect();
        for k in unknown {
            self.bad(&k, "unknown field");
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.errors))
        }
    }
}

/// A value the reads above accepted, after [`Input::finish`]. `None` here would mean a read
/// forgot to report its field; that is still a 422 naming the field, never a panic.
pub fn checked<T>(value: Option<T>, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::field(field, "is required"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_value_no_read_reported_is_a_422_naming_its_field() {
        assert_eq!(checked(Some(5), "amount").ok(), Some(5));
        let Err(ApiError::Invalid(f)) = checked::<i64>(None, "amount") else {
            panic!("422 expected")
        };
        assert_eq!(f.get("amount").map(String::as_str), Some("is required"));
    }

    #[test]
    fn parsing_types_read_required_and_optional_fields() {
        use shared::checked::{Credits, MetaId};
        let body = json!({"a": 5, "b": null, "c": "12ab", "d": "7", "e": null});
        let mut i = Input::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(i.required::<Credits>("a").map(Credits::get), Some(5));
        assert_eq!(i.required::<Credits>("b"), None);
        assert_eq!(i.required::<MetaId>("c"), None);
        assert_eq!(i.required::<MetaId>("absent"), None);
        assert_eq!(
            i.optional::<MetaId>("d").map(|m| m.as_str().to_owned()),
            Some("7".into())
        );
        assert_eq!(i.optional::<MetaId>("e"), None);
        assert_eq!(i.optional::<MetaId>("also_absent"), None);
        let Err(ApiError::Invalid(f)) = i.finish() else {
            panic!("422 expected")
        };
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            f,
            [
                ("absent", "is required"),
                ("b", "is required"),
                ("c", "must be the numeric id Meta shows"),
                ("e", "must not be null"),
            ]
        );
    }

    #[test]
    fn refuses_nul_characters() {
        let body = json!({"a": "x\u{0}y", "b": ["ok", "n\u{0}"], "c": {"k": "\u{0}"}});
        let mut i = Input::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(i.str("a", 1, 10), None);
        assert_eq!(i.strings("b", 5, 10), None);
        assert_eq!(i.object("c"), None);
        let Err(ApiError::Invalid(f)) = i.finish() else {
            panic!("422 expected")
        };
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn collects_every_bad_field_and_refuses_unknown_ones() {
        let body = json!({"name": "", "n": 5, "flag": "yes", "typo": 1, "keep": null});
        let mut i = Input::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(i.required_str("name", 1, 10), None);
        assert_eq!(i.int("n", 0, 3), None);
        assert_eq!(i.bool("flag"), None);
        assert_eq!(i.nullable_str("keep", 1, 5), Some(None));
        assert_eq!(i.str("absent", 1, 5), None);
        let Err(ApiError::Invalid(f)) = i.finish() else {
            panic!("422 expected")
        };
        assert_eq!(
            f.keys().map(String::as_str).collect::<Vec<_>>(),
            ["flag", "n", "name", "typo"]
        );
        assert!(matches!(
            Input::parse(b"[1]"),
            Err(ApiError::BadRequest("malformed_json", _))
        ));
        assert!(matches!(
            Input::parse(b"{nope"),
            Err(ApiError::BadRequest("malformed_json", _))
        ));
        assert!(Input::parse(b"").unwrap().finish().is_ok());
    }
}
