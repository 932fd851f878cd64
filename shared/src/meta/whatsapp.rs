//! WhatsApp Cloud API webhooks (`object = whatsapp_business_account`).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{de_lenient_i64, synthetic_id, Parsed};
use crate::envelope::{
    Channel, ChannelError, Contact, ContactCard, Content, DeliveryState, DeliveryStatus,
    InboundEnvelope, InboundKind, MediaKind, OrderItem, ProviderError, Referral, ReplyKind,
    ReplyTo, StatusEvent, ENVELOPE_VERSION,
};

#[derive(Deserialize)]
pub(super) struct Change<'a> {
    #[serde(default)]
    field: Option<String>,
    #[serde(borrow, default)]
    value: Option<Value<'a>>,
}

#[derive(Deserialize)]
struct Value<'a> {
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<WaContact>,
    #[serde(default, borrow)]
    messages: Vec<&'a RawValue>,
    #[serde(default)]
    statuses: Vec<Status>,
    #[serde(default)]
    errors: Vec<WaError>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: Option<String>,
}

#[derive(Deserialize)]
struct WaContact {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize, Default)]
struct WaError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_data: Option<ErrorData>,
}

#[derive(Deserialize, Default)]
struct ErrorData {
    #[serde(default)]
    details: Option<String>,
}

impl From<WaError> for ProviderError {
    fn from(e: WaError) -> Self {
        ProviderError {
            code: e.code,
            title: e.title,
            message: e.message,
            details: e.error_data.and_then(|d| d.details),
        }
    }
}

#[derive(Deserialize)]
struct Status {
    id: String,
    status: String,
    #[serde(default, deserialize_with = "de_lenient_i64")]
    timestamp: Option<i64>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    recipient_user_id: Option<String>,
    #[serde(default)]
    errors: Vec<WaError>,
    #[serde(default)]
    pricing: Option<Pricing>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
}

#[derive(Deserialize)]
struct Pricing {
    #[serde(default)]
    category: Option<String>,
}

/// The fields every message has; parsed first so that a message whose type-specific part does
/// not match our types is still carried with its id, sender and time.
#[derive(Deserialize, Default)]
struct MessageHead {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    from_user_id: Option<String>,
    #[serde(default, deserialize_with = "de_lenient_i64")]
    timestamp: Option<i64>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// A whole message. Repeats the head fields so the common case is one parse.
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    from_user_id: Option<String>,
    #[serde(default, deserialize_with = "de_lenient_i64")]
    timestamp: Option<i64>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    context: Option<Context>,
    #[serde(default)]
    referral: Option<WaReferral>,
    #[serde(default)]
    text: Option<Text>,
    #[serde(default)]
    image: Option<Media>,
    #[serde(default)]
    video: Option<Media>,
    #[serde(default)]
    audio: Option<Media>,
    #[serde(default)]
    document: Option<Media>,
    #[serde(default)]
    sticker: Option<Media>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    contacts: Option<Vec<Card>>,
    #[serde(default)]
    interactive: Option<Interactive>,
    #[serde(default)]
    button: Option<Button>,
    #[serde(default)]
    reaction: Option<Reaction>,
    #[serde(default)]
    order: Option<Order>,
    #[serde(default)]
    system: Option<System>,
    #[serde(default)]
    errors: Vec<WaError>,
    #[serde(default)]
    unsupported: Option<UnsupportedInfo>,
}

#[derive(Deserialize)]
struct Context {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct WaReferral {
    #[serde(default)]
    source_url: Option<String>,
    #[serde(default)]
    source_id: Option<String>,
    #[serde(default)]
    source_type: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    headline: Option<String>,
    #[serde(default)]
    ctwa_clid: Option<String>,
}

#[derive(Deserialize)]
struct Text {
    body: String,
}

#[derive(Deserialize)]
struct Media {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    voice: Option<bool>,
}

#[derive(Deserialize)]
struct Location {
    latitude: f64,
    longitude: f64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize)]
struct Card {
    #[serde(default)]
    name: Option<CardName>,
    #[serde(default)]
    phones: Vec<CardPhone>,
    #[serde(default)]
    emails: Vec<CardEmail>,
    #[serde(default)]
    org: Option<CardOrg>,
}

#[derive(Deserialize)]
struct CardName {
    #[serde(default)]
    formatted_name: Option<String>,
}

#[derive(Deserialize)]
struct CardPhone {
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    wa_id: Option<String>,
}

#[derive(Deserialize)]
struct CardEmail {
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
struct CardOrg {
    #[serde(default)]
    company: Option<String>,
}

#[derive(Deserialize)]
struct Interactive {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    button_reply: Option<Choice>,
    #[serde(default)]
    list_reply: Option<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct Button {
    #[serde(default)]
    payload: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct Reaction {
    message_id: String,
    #[serde(default)]
    emoji: Option<String>,
}

#[derive(Deserialize)]
struct Order {
    #[serde(default)]
    catalog_id: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    product_items: Vec<WaOrderItem>,
}

#[derive(Deserialize)]
struct WaOrderItem {
    product_retailer_id: String,
    #[serde(default, deserialize_with = "de_lenient_i64")]
    quantity: Option<i64>,
    #[serde(default)]
    item_price: Option<f64>,
    #[serde(default)]
    currency: Option<String>,
}

#[derive(Deserialize)]
struct System {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    wa_id: Option<String>,
}

#[derive(Deserialize)]
struct UnsupportedInfo {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

pub(super) fn parse(changes: Vec<Change<'_>>, correlation_id: &str, now_ms: i64, out: &mut Parsed) {
    for change in changes {
        let (Some(value), true) = (change.value, change.field.as_deref() == Some("messages"))
        else {
            // Template, quality and account updates are not messages.
            out.ignored += 1;
            continue;
        };
        let Some(account) = value.metadata.and_then(|m| m.phone_number_id) else {
            // Without the phone_number_id nothing can be routed; Meta always sends it.
            tracing::warn!("whatsapp change without metadata.phone_number_id ignored");
            out.ignored += 1;
            continue;
        };
        for raw in value.messages {
            out.inbound.push(message(
                raw,
                &account,
                &value.contacts,
                correlation_id,
                now_ms,
            ));
        }
        for s in value.statuses {
            out.statuses
                .push(StatusEvent::DeliveryStatus(DeliveryStatus {
                    v: ENVELOPE_VERSION,
                    correlation_id: correlation_id.to_owned(),
                    channel: Channel::Whatsapp,
                    channel_account_id: account.clone(),
                    provider_message_id: s.id,
                    status: DeliveryState::parse(&s.status),
                    provider_timestamp_ms: s.timestamp.map_or(now_ms, |t| t * 1000),
                    recipient_id: s.recipient_id,
                    recipient_user_id: s.recipient_user_id,
                    errors: s.errors.into_iter().map(Into::into).collect(),
                    pricing_category: s.pricing.and_then(|p| p.category),
                    biz_opaque_callback_data: s.biz_opaque_callback_data,
                }));
        }
        for e in value.errors {
            out.statuses.push(StatusEvent::ChannelError(ChannelError {
                v: ENVELOPE_VERSION,
                correlation_id: correlation_id.to_owned(),
                channel: Channel::Whatsapp,
                channel_account_id: account.clone(),
                received_at_ms: now_ms,
                error: e.into(),
            }));
        }
    }
}

fn message(
    raw: &RawValue,
    account: &str,
    contacts: &[WaContact],
    correlation_id: &str,
    now_ms: i64,
) -> InboundEnvelope {
    let (head, content, reply_to, referral) = match serde_json::from_str::<Message>(raw.get()) {
        Ok(mut m) => {
            let head = MessageHead {
                id: m.id.take(),
                from: m.from.take(),
                from_user_id: m.from_user_id.take(),
                timestamp: m.timestamp,
                kind: m.kind.take(),
            };
            let reply_to = m.context.take().map(|c| ReplyTo {
                provider_message_id: c.id,
                from: c.from,
                ..ReplyTo::default()
            });
            let referral = m.referral.take().map(|r| Referral {
                source_type: r.source_type,
                source_id: r.source_id,
                source_url: r.source_url,
                headline: r.headline,
                body: r.body,
                ctwa_clid: r.ctwa_clid,
                ref_param: None,
            });
            let content = content(head.kind.as_deref().unwrap_or("unknown"), m);
            (head, content, reply_to, referral)
        }
        Err(_) => {
            // The type-specific part does not match our types (a changed or future shape):
            // keep what identifies the message and carry it as unsupported.
            let head = serde_json::from_str::<MessageHead>(raw.get()).unwrap_or_default();
            let content = unsupported(head.kind.as_deref().unwrap_or("unknown"), Vec::new());
            (head, content, None, None)
        }
    };

    let contact = contact_for(&head, contacts);
    InboundEnvelope {
        v: ENVELOPE_VERSION,
        kind: InboundKind::InboundMessage,
        correlation_id: correlation_id.to_owned(),
        channel: Channel::Whatsapp,
        channel_account_id: account.to_owned(),
        contact,
        provider_message_id: head.id.unwrap_or_else(|| synthetic_id("noid", raw)),
        provider_timestamp_ms: head.timestamp.map_or(now_ms, |t| t * 1000),
        reply_to,
        referral,
        content,
        raw: Some(raw.to_owned()),
        raw_omitted: false,
    }
}

/// The contact of a message: the `contacts[]` entry with the same BSUID or wa_id (a webhook
/// batches messages of several users), keyed by the BSUID when there is one.
fn contact_for(head: &MessageHead, contacts: &[WaContact]) -> Contact {
    let matched = contacts
        .iter()
        .find(|c| {
            (head.from_user_id.is_some() && c.user_id == head.from_user_id)
                || (head.from.is_some() && c.wa_id == head.from)
        })
        .or(if contacts.len() == 1 {
            contacts.first()
        } else {
            None
        });
    let user_id = head
        .from_user_id
        .clone()
        .or_else(|| matched.and_then(|c| c.user_id.clone()));
    let wa_id = head
        .from
        .clone()
        .or_else(|| matched.and_then(|c| c.wa_id.clone()));
    let profile = matched.and_then(|c| c.profile.as_ref());
    Contact {
        id: user_id
            .clone()
            .or_else(|| wa_id.clone())
            .unwrap_or_else(|| "unknown".to_owned()),
        wa_id,
        user_id,
        display_name: profile.and_then(|p| p.name.clone()),
        username: profile.and_then(|p| p.username.clone()),
    }
}

fn unsupported(kind: &str, errors: Vec<WaError>) -> Content {
    Content::Unsupported {
        original_type: kind.to_owned(),
        errors: errors.into_iter().map(Into::into).collect(),
    }
}

fn media(kind: MediaKind, m: Media) -> Content {
    Content::Media {
        media: kind,
        media_id: m.id,
        url: m.url,
        mime_type: m.mime_type,
        sha256: m.sha256,
        caption: m.caption,
        filename: m.filename,
        voice: m.voice,
    }
}

fn content(kind: &str, m: Message) -> Content {
    match kind {
        "text" => match m.text {
            Some(t) => Content::Text { body: t.body },
            None => unsupported(kind, m.errors),
        },
        "image" | "video" | "audio" | "document" | "sticker" => {
            let (mk, obj) = match kind {
                "image" => (MediaKind::Image, m.image),
                "video" => (MediaKind::Video, m.video),
                "audio" => (MediaKind::Audio, m.audio),
                "document" => (MediaKind::Document, m.document),
                _ => (MediaKind::Sticker, m.sticker),
            };
            match obj {
                Some(obj) => media(mk, obj),
                None => unsupported(kind, m.errors),
            }
        }
        "location" => match m.location {
            Some(l) => Content::Location {
                latitude: l.latitude,
                longitude: l.longitude,
                name: l.name,
                address: l.address,
                url: l.url,
            },
            None => unsupported(kind, m.errors),
        },
        "contacts" => match m.contacts {
            Some(cards) => Content::Contacts {
                cards: cards
                    .into_iter()
                    .map(|c| ContactCard {
                        formatted_name: c.name.and_then(|n| n.formatted_name),
                        phones: c
                            .phones
                            .into_iter()
                            .filter_map(|p| p.phone.or(p.wa_id))
                            .collect(),
                        emails: c.emails.into_iter().filter_map(|e| e.email).collect(),
                        company: c.org.and_then(|o| o.company),
                    })
                    .collect(),
            },
            None => unsupported(kind, m.errors),
        },
        "interactive" => match m.interactive {
            Some(Interactive {
                button_reply: Some(c),
                ..
            }) => Content::InteractiveReply {
                reply: ReplyKind::ButtonReply,
                id: c.id,
                title: c.title,
                description: c.description,
            },
            Some(Interactive {
                list_reply: Some(c),
                ..
            }) => Content::InteractiveReply {
                reply: ReplyKind::ListReply,
                id: c.id,
                title: c.title,
                description: c.description,
            },
            // Flows (`nfm_reply`) and future interactive kinds.
            Some(Interactive { kind: Some(k), .. }) => {
                unsupported(&format!("interactive.{k}"), m.errors)
            }
            _ => unsupported(kind, m.errors),
        },
        "button" => match m.button {
            Some(b) => Content::Button {
                payload: b.payload,
                text: b.text,
            },
            None => unsupported(kind, m.errors),
        },
        "reaction" => match m.reaction {
            Some(r) => Content::Reaction {
                target_provider_message_id: r.message_id,
                emoji: r.emoji.filter(|e| !e.is_empty()),
            },
            None => unsupported(kind, m.errors),
        },
        "order" => match m.order {
            Some(o) => Content::Order {
                catalog_id: o.catalog_id,
                text: o.text,
                items: o
                    .product_items
                    .into_iter()
                    .map(|i| OrderItem {
                        product_retailer_id: i.product_retailer_id,
                        quantity: i.quantity.unwrap_or(1),
                        item_price: i.item_price,
                        currency: i.currency,
                    })
                    .collect(),
            },
            None => unsupported(kind, m.errors),
        },
        "system" => match m.system {
            Some(s) => Content::System {
                system_type: s.kind.unwrap_or_else(|| "unknown".to_owned()),
                body: s.body,
                new_wa_id: s.wa_id,
            },
            None => unsupported(kind, m.errors),
        },
        "unsupported" => {
            let original = m
                .unsupported
                .and_then(|u| u.kind)
                .unwrap_or_else(|| "unsupported".to_owned());
            unsupported(&original, m.errors)
        }
        // A type added after this build: carried, not dropped.
        other => unsupported(other, m.errors),
    }
}
