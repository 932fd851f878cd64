//! The queue contract: one JSON object per SQS message, the same Rust types on the producing
//! (webhook) and consuming (processor, status) side.
//!
//! Every envelope carries `"v": 1`. A consumer that meets a version it does not know must treat
//! the record as a permanent failure (it cannot be understood by retrying), never guess.
//! Adding an optional field is compatible; renaming or removing one needs `v: 2`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Version written into every envelope produced by this build.
pub const ENVELOPE_VERSION: u8 = 1;

/// Messaging channel a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Whatsapp,
    Instagram,
    Webchat,
}

impl Channel {
    /// The channel named as in the database and the APIs (`whatsapp`, `instagram`, `webchat`).
    pub fn parse(s: &str) -> Option<Channel> {
        [Channel::Whatsapp, Channel::Instagram, Channel::Webchat]
            .into_iter()
            .find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Whatsapp => "whatsapp",
            Channel::Instagram => "instagram",
            Channel::Webchat => "webchat",
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A customer message, normalised, as it travels on the inbound FIFO queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboundEnvelope {
    pub v: u8,
    pub kind: InboundKind,
    pub correlation_id: String,
    pub channel: Channel,
    /// phone_number_id (WhatsApp), Instagram professional account id, or web chat site id.
    pub channel_account_id: String,
    pub contact: Contact,
    /// wamid (WhatsApp), mid (Instagram) or a client-generated uuid (web chat). For events that
    /// have no id of their own (an Instagram reaction) a stable id is derived from the event.
    pub provider_message_id: String,
    /// Provider timestamp in Unix milliseconds (WhatsApp sends seconds; they are scaled).
    pub provider_timestamp_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<Referral>,
    pub content: Content,
    /// The provider's JSON of this one message, verbatim, for audit. `None` only when it was
    /// dropped because the envelope would not fit in an SQS message (`raw_omitted` is then true).
    #[serde(default)]
    pub raw: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw_omitted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundKind {
    InboundMessage,
}

/// Who wrote. `id` is the key the product uses for the contact: the WhatsApp business-scoped
/// user id (BSUID) when Meta sends one, else the `wa_id`; the IGSID on Instagram; the visitor id
/// on web chat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: String,
    /// Phone number as digits without `+`. Absent when the user is known only by username/BSUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// The message this one answers or quotes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    /// WhatsApp `context.from`: who sent the referenced message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Instagram story reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story_url: Option<String>,
}

/// Ad attribution (Click-to-WhatsApp / Instagram ads), kept for lead attribution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctwa_clid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_param: Option<String>,
}

/// Normalised message content. Unknown or unparseable kinds become `Unsupported`, never dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Text {
        body: String,
    },
    Media {
        media: MediaKind,
        /// WhatsApp media id (fetch through Graph within 7 days).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_id: Option<String>,
        /// Direct URL (Instagram attachments; WhatsApp only sometimes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        voice: Option<bool>,
    },
    /// Several attachments in one Instagram message.
    Attachments {
        items: Vec<Attachment>,
    },
    Location {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// Contact cards the customer shared (lead data).
    Contacts {
        cards: Vec<ContactCard>,
    },
    /// Tap on an interactive button or list row (WhatsApp) or a quick reply (Instagram).
    InteractiveReply {
        reply: ReplyKind,
        id: String,
        title: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// Tap on a template quick-reply button (WhatsApp `button`) or an Instagram postback.
    Button {
        payload: String,
        text: String,
    },
    /// `emoji: None` means the reaction was removed.
    Reaction {
        target_provider_message_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        emoji: Option<String>,
    },
    Order {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        catalog_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        items: Vec<OrderItem>,
    },
    /// A system notice such as `user_changed_number`.
    System {
        system_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_wa_id: Option<String>,
    },
    /// Anything the product does not understand (yet): Meta's `unsupported`, a type added after
    /// this build, an edit or delete notice. Carried so it is stored and visible, never lost.
    Unsupported {
        original_type: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        errors: Vec<ProviderError>,
    },
}

impl Content {
    /// The text a model sees for this content; `None` for content it cannot use (reactions,
    /// system notices, unsupported types).
    pub fn model_text(&self) -> Option<String> {
        Some(match self {
            Content::Text { body } => body.clone(),
            Content::Media { media, caption, .. } => format!(
                "[{} sent]{}",
                format!("{media:?}").to_lowercase(),
                caption
                    .as_ref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default()
            ),
            Content::Attachments { items } => format!(
                "[attachments: {}]",
                items
                    .iter()
                    .map(|a| a.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Content::Location {
                latitude,
                longitude,
                name,
                address,
                ..
            } => format!(
                "[location] {} {} ({latitude}, {longitude})",
                name.as_deref().unwrap_or(""),
                address.as_deref().unwrap_or("")
            ),
            Content::Contacts { cards } => format!(
                "[shared contact] {}",
                cards
                    .iter()
                    .map(|c| format!(
                        "{} {} {}",
                        c.formatted_name.as_deref().unwrap_or(""),
                        c.phones.join(" "),
                        c.emails.join(" ")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Content::InteractiveReply { title, .. } => title.clone(),
            Content::Button { text, .. } => text.clone(),
            Content::Order { items, text, .. } => format!(
                "[order] {} item(s){}",
                items.len(),
                text.as_ref().map(|t| format!(": {t}")).unwrap_or_default()
            ),
            Content::Reaction { .. } | Content::System { .. } | Content::Unsupported { .. } => {
                return None
            }
        })
    }

    /// Short name for logs and metrics (never the content itself).
    pub fn type_name(&self) -> &'static str {
        match self {
            Content::Text { .. } => "text",
            Content::Media { .. } => "media",
            Content::Attachments { .. } => "attachments",
            Content::Location { .. } => "location",
            Content::Contacts { .. } => "contacts",
            Content::InteractiveReply { .. } => "interactive_reply",
            Content::Button { .. } => "button",
            Content::Reaction { .. } => "reaction",
            Content::Order { .. } => "order",
            Content::System { .. } => "system",
            Content::Unsupported { .. } => "unsupported",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
    Sticker,
    /// Instagram attachment types without a better match (share, story_mention, reel, ig_reel…).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    ButtonReply,
    ListReply,
    QuickReply,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The provider's attachment type, e.g. `image`, `video`, `audio`, `file`, `share`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCard {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatted_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_retailer_id: String,
    pub quantity: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// An error object as Meta reports it in webhooks (`errors[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderError {
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// What travels on the status queue (standard, not FIFO): delivery statuses of our outbound
/// messages and account-level errors Meta reports in webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatusEvent {
    DeliveryStatus(DeliveryStatus),
    ChannelError(ChannelError),
}

impl StatusEvent {
    /// Key used for the queue's deduplication-free at-least-once delivery; consumers dedupe on it.
    pub fn dedup_key(&self) -> String {
        match self {
            StatusEvent::DeliveryStatus(s) => format!(
                "{}:{}:{}:{}",
                s.channel,
                s.channel_account_id,
                s.provider_message_id,
                s.status.as_str()
            ),
            StatusEvent::ChannelError(e) => format!(
                "{}:{}:error:{}:{}",
                e.channel, e.channel_account_id, e.error.code, e.received_at_ms
            ),
        }
    }

    pub fn correlation_id(&self) -> &str {
        match self {
            StatusEvent::DeliveryStatus(s) => &s.correlation_id,
            StatusEvent::ChannelError(e) => &e.correlation_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStatus {
    pub v: u8,
    pub correlation_id: String,
    pub channel: Channel,
    pub channel_account_id: String,
    /// The id of our outbound message (wamid / mid). For Instagram `read`, the newest message
    /// read: every earlier outbound message of the conversation counts as read too.
    pub provider_message_id: String,
    pub status: DeliveryState,
    pub provider_timestamp_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProviderError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_opaque_callback_data: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Sent,
    Delivered,
    Read,
    Played,
    Failed,
    /// A status word added by Meta after this build.
    #[serde(other)]
    Unknown,
}

impl DeliveryState {
    pub fn parse(s: &str) -> Self {
        match s {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" => Self::Read,
            "played" => Self::Played,
            "failed" => Self::Failed,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

/// `value.errors[]` of a WhatsApp webhook: a problem with the account or app, not a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelError {
    pub v: u8,
    pub correlation_id: String,
    pub channel: Channel,
    pub channel_account_id: String,
    pub received_at_ms: i64,
    pub error: ProviderError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_text_keeps_captions_as_written_and_skips_unusable_content() {
        let img = Content::Media {
            media: MediaKind::Image,
            media_id: Some("1".into()),
            url: None,
            mime_type: None,
            sha256: None,
            caption: Some("Este modelo en AZUL".into()),
            filename: None,
            voice: None,
        };
        assert_eq!(
            img.model_text().unwrap(),
            "[image sent] Este modelo en AZUL"
        );
        let reaction = Content::Reaction {
            target_provider_message_id: "w".into(),
            emoji: Some("👍".into()),
        };
        assert_eq!(reaction.model_text(), None);
    }
}
