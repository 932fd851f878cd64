//! Normalisation of Meta webhook bodies (WhatsApp Cloud API and Instagram Messaging) into the
//! queue envelopes of [`crate::envelope`].
//!
//! The parsers never fail on a message they do not understand: such a message becomes
//! `Content::Unsupported` with its raw JSON. They fail only when the body as a whole is not JSON or
//! is not a webhook object we handle; the HTTP layer answers 400 for those.

mod instagram;
mod whatsapp;

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::envelope::{InboundEnvelope, StatusEvent};

/// Everything one webhook body yields.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Customer messages, in the order they appear in the body.
    pub inbound: Vec<InboundEnvelope>,
    /// Delivery statuses and channel errors (to the status queue).
    pub statuses: Vec<StatusEvent>,
    /// Events deliberately not forwarded (Instagram echoes of our own sends, change fields we do
    /// not subscribe to). Counted for the log line.
    pub ignored: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not a JSON webhook object")]
    NotJson,
    #[error("webhook object `{0}` is not handled")]
    UnknownObject(String),
}

impl ParseError {
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::NotJson => "not_json",
            ParseError::UnknownObject(_) => "unknown_object",
        }
    }
}

/// The whole body in one pass, for both objects: WhatsApp entries carry `changes[]`,
/// Instagram entries `messaging[]` (and `changes[]` for comments, which are ignored). Each
/// message stays a borrowed raw slice, parsed once more on its own so it can be kept verbatim.
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    object: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    entry: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    changes: Vec<whatsapp::Change<'a>>,
    #[serde(default, borrow)]
    messaging: Vec<&'a RawValue>,
}

/// Parses a webhook body (already signature-checked) into envelopes stamped with
/// `correlation_id`. `now_ms` stamps events that carry no time of their own.
pub fn parse_webhook(body: &[u8], correlation_id: &str, now_ms: i64) -> Result<Parsed, ParseError> {
    let top: Top<'_> = serde_json::from_slice(body).map_err(|_| ParseError::NotJson)?;
    let object = top.object.ok_or(ParseError::NotJson)?;
    let mut out = Parsed::default();
    match object.as_ref() {
        "whatsapp_business_account" => {
            for entry in top.entry {
                out.ignored += entry.messaging.len();
                whatsapp::parse(entry.changes, correlation_id, now_ms, &mut out);
            }
        }
        "instagram" => {
            for entry in top.entry {
                out.ignored += entry.changes.len();
                for raw in entry.messaging {
                    instagram::event(raw, entry.id.as_deref(), correlation_id, now_ms, &mut out);
                }
            }
        }
        other => return Err(ParseError::UnknownObject(truncate(other, 64).to_owned())),
    }
    Ok(out)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Meta sends WhatsApp timestamps as strings and Instagram ones as numbers; accept both.
fn de_lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num<'a> {
        Int(i64),
        Float(f64),
        Str(Cow<'a, str>),
    }
    Ok(match Option::<Num<'_>>::deserialize(d)? {
        None => None,
        Some(Num::Int(i)) => Some(i),
        Some(Num::Float(f)) => Some(f as i64),
        Some(Num::Str(s)) => s.trim().parse::<i64>().ok(),
    })
}

/// A stable id for an event that has none of its own: hash of its raw JSON.
fn synthetic_id(prefix: &str, raw: &RawValue) -> String {
    format!(
        "{prefix}:{}",
        &crate::digest::sha256_hex(raw.get().as_bytes())[..32]
    )
}
