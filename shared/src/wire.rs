//! Everything that crosses a queue, in one place: the messages each producer sends (the
//! inbound envelope, the status events, the extraction job, which also delivers the tenant's
//! webhook events) and the one parser every consumer reads them with. A body that is not JSON
//! of the expected shape, or carries a version this build does not know, is refused the same
//! way everywhere ([`WireError`]), so a consumer parks it instead of guessing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{InboundEnvelope, StatusEvent, ENVELOPE_VERSION};
use crate::ordering::{dedup_id, message_group_id, OrderingScope};
use crate::queue::{OutgoingMessage, MAX_BATCH_BYTES};

/// Message attribute names (also read by consumers and visible in the console).
pub const ATTR_CORRELATION_ID: &str = "correlation_id";
pub const ATTR_CHANNEL: &str = "channel";
pub const ATTR_KIND: &str = "kind";
pub const ATTR_VERSION: &str = "envelope_version";

/// Why a queue message cannot be read. Both are permanent: retrying reads the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("body is not {0}")]
    Unreadable(&'static str),
    #[error("{what} of version {got}, which this build does not read (it reads {known})")]
    UnknownVersion {
        what: &'static str,
        got: u8,
        known: u8,
    },
}

/// A message type of a queue, with the version this build writes and reads.
pub trait QueueMessage: DeserializeOwned {
    /// What it is called in errors ("an inbound envelope").
    const NAME: &'static str;
    const VERSION: u8;
    /// The version the message says it has.
    fn version(&self) -> u8;
}

/// Reads a queue message of type `T`, refusing what is not one or has another version.
pub fn parse<T: QueueMessage>(body: &str) -> Result<T, WireError> {
    let m: T = serde_json::from_str(body).map_err(|_| WireError::Unreadable(T::NAME))?;
    if m.version() != T::VERSION {
        return Err(WireError::UnknownVersion {
            what: T::NAME,
            got: m.version(),
            known: T::VERSION,
        });
    }
    Ok(m)
}

impl QueueMessage for InboundEnvelope {
    const NAME: &'static str = "an inbound envelope";
    const VERSION: u8 = ENVELOPE_VERSION;
    fn version(&self) -> u8 {
        self.v
    }
}

impl QueueMessage for StatusEvent {
    const NAME: &'static str = "a status event";
    const VERSION: u8 = ENVELOPE_VERSION;
    fn version(&self) -> u8 {
        match self {
            StatusEvent::DeliveryStatus(s) => s.v,
            StatusEvent::ChannelError(e) => e.v,
        }
    }
}

/// A job on the extraction queue: extract the conversation's lead from its new messages, and
/// first deliver its pending tenant-webhook events. The processor queues one per answered
/// turn, the admin API one to deliver a handoff event promptly.
///
/// Its fields are in the order they have always been written (alphabetical), so a job's body is
/// the same bytes as before this type existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractionJob {
    pub conversation_id: Uuid,
    /// Always `extract`.
    pub kind: String,
    pub tenant_id: Uuid,
    pub v: u8,
}

impl ExtractionJob {
    pub const KIND: &'static str = "extract";

    pub fn new(tenant: crate::db::TenantId, conversation: Uuid) -> Self {
        Self {
            v: Self::VERSION,
            kind: Self::KIND.to_owned(),
            tenant_id: tenant.uuid(),
            conversation_id: conversation,
        }
    }

    /// The SQS message (the extraction queue is a standard queue: no group, no dedup id).
    pub fn message(&self) -> OutgoingMessage {
        OutgoingMessage {
            body: to_json(self),
            group_id: None,
            dedup_id: None,
            attributes: vec![],
        }
    }
}

impl QueueMessage for ExtractionJob {
    const NAME: &'static str = "an extraction job";
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.v
    }
}

/// A message body as JSON. Every type that crosses a queue is plain data (string map keys, no
/// hand-written `Serialize`), for which serde_json cannot fail.
#[allow(
    clippy::expect_used,
    reason = "plain data with string keys always serialises"
)]
fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

/// Reads an extraction job (which must also say `"kind": "extract"`).
pub fn parse_extraction_job(body: &str) -> Result<ExtractionJob, WireError> {
    let job: ExtractionJob = parse(body)?;
    if job.kind != ExtractionJob::KIND {
        return Err(WireError::Unreadable(ExtractionJob::NAME));
    }
    Ok(job)
}

/// The SQS message for an inbound envelope. If the envelope with its raw JSON would not fit in
/// one SQS message, the raw part is dropped (`raw_omitted: true`) rather than losing the message.
pub fn inbound_message(mut env: InboundEnvelope, scope: OrderingScope) -> OutgoingMessage {
    let mut body = to_json(&env);
    if body.len() > MAX_BATCH_BYTES - 1024 {
        tracing::warn!(
            provider_message_id = %env.provider_message_id,
            bytes = body.len(),
            "envelope too large for SQS; raw payload omitted"
        );
        env.raw = None;
        env.raw_omitted = true;
        body = to_json(&env);
    }
    OutgoingMessage {
        group_id: Some(message_group_id(
            scope,
            env.channel,
            &env.channel_account_id,
            &env.contact.id,
        )),
        dedup_id: Some(dedup_id(
            env.channel,
            &env.channel_account_id,
            &env.provider_message_id,
        )),
        attributes: vec![
            (ATTR_CORRELATION_ID, env.correlation_id.clone()),
            (ATTR_CHANNEL, env.channel.as_str().to_owned()),
            (ATTR_KIND, "inbound_message".to_owned()),
            (ATTR_VERSION, env.v.to_string()),
        ],
        body,
    }
}

/// The SQS message for a status event (standard queue: no group, no dedup id).
pub fn status_message(ev: &StatusEvent) -> OutgoingMessage {
    let (kind, channel) = match ev {
        StatusEvent::DeliveryStatus(s) => ("delivery_status", s.channel),
        StatusEvent::ChannelError(e) => ("channel_error", e.channel),
    };
    OutgoingMessage {
        body: to_json(ev),
        group_id: None,
        dedup_id: None,
        attributes: vec![
            (ATTR_CORRELATION_ID, ev.correlation_id().to_owned()),
            (ATTR_CHANNEL, channel.as_str().to_owned()),
            (ATTR_KIND, kind.to_owned()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_and_anything_else_is_refused() {
        let tenant = crate::db::TenantId::from_trusted(Uuid::new_v4());
        let job = ExtractionJob::new(tenant, Uuid::new_v4());
        let body = job.message().body;
        assert_eq!(parse_extraction_job(&body), Ok(job.clone()));
        let other_kind = body.replace("\"extract\"", "\"other\"");
        assert_eq!(
            parse_extraction_job(&other_kind),
            Err(WireError::Unreadable("an extraction job"))
        );
        assert!(body.starts_with("{\"conversation_id\":") && body.ends_with(",\"v\":1}"));
        let v2 = body.replace("\"v\":1", "\"v\":2");
        assert_eq!(
            parse_extraction_job(&v2).unwrap_err().to_string(),
            "an extraction job of version 2, which this build does not read (it reads 1)"
        );
        assert!(matches!(
            parse_extraction_job("not json"),
            Err(WireError::Unreadable(_))
        ));
    }

    #[test]
    fn a_status_event_of_another_version_is_refused() {
        let body = r#"{"kind":"delivery_status","v":9,"correlation_id":"c","channel":"whatsapp",
            "channel_account_id":"1","provider_message_id":"wamid.X","status":"sent",
            "provider_timestamp_ms":1}"#;
        assert!(parse::<StatusEvent>(&body.replace("\"v\":9", "\"v\":1")).is_ok());
        match parse::<StatusEvent>(body) {
            Err(WireError::UnknownVersion { got: 9, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
