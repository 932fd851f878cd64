//! Turning envelopes into SQS messages: the body, the FIFO keys and the message attributes.
//! Used by every producer of the inbound queue (Meta webhooks now, web chat later).

use crate::envelope::{InboundEnvelope, StatusEvent};
use crate::ordering::{dedup_id, message_group_id, OrderingScope};
use crate::queue::{OutgoingMessage, MAX_BATCH_BYTES};

/// Message attribute names (also read by consumers and visible in the console).
pub const ATTR_CORRELATION_ID: &str = "correlation_id";
pub const ATTR_CHANNEL: &str = "channel";
pub const ATTR_KIND: &str = "kind";
pub const ATTR_VERSION: &str = "envelope_version";

/// The SQS message for an inbound envelope. If the envelope with its raw JSON would not fit in
/// one SQS message, the raw part is dropped (`raw_omitted: true`) rather than losing the message.
pub fn inbound_message(mut env: InboundEnvelope, scope: OrderingScope) -> OutgoingMessage {
    let mut body = serde_json::to_string(&env).expect("envelope serialises");
    if body.len() > MAX_BATCH_BYTES - 1024 {
        tracing::warn!(
            provider_message_id = %env.provider_message_id,
            bytes = body.len(),
            "envelope too large for SQS; raw payload omitted"
        );
        env.raw = None;
        env.raw_omitted = true;
        body = serde_json::to_string(&env).expect("envelope serialises");
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
        body: serde_json::to_string(ev).expect("status serialises"),
        group_id: None,
        dedup_id: None,
        attributes: vec![
            (ATTR_CORRELATION_ID, ev.correlation_id().to_owned()),
            (ATTR_CHANNEL, channel.as_str().to_owned()),
            (ATTR_KIND, kind.to_owned()),
        ],
    }
}
