//! Instagram Messaging webhooks (`object = instagram`), both the Instagram Login and the
//! Facebook Login (Page) variants: they share the `messaging[]` shape.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{de_lenient_i64, synthetic_id, Parsed};
use crate::envelope::{
    Attachment, Channel, Contact, Content, DeliveryState, DeliveryStatus, InboundEnvelope,
    InboundKind, MediaKind, Referral, ReplyKind, ReplyTo, StatusEvent, ENVELOPE_VERSION,
};

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    sender: Option<Party>,
    #[serde(default)]
    recipient: Option<Party>,
    #[serde(default, deserialize_with = "de_lenient_i64")]
    timestamp: Option<i64>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    postback: Option<Postback>,
    #[serde(default)]
    reaction: Option<Reaction>,
    #[serde(default)]
    read: Option<Read>,
    #[serde(default)]
    referral: Option<IgReferral>,
    #[serde(default)]
    message_edit: Option<Edit>,
}

#[derive(Deserialize)]
struct Party {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    attachments: Vec<IgAttachment>,
    #[serde(default)]
    is_echo: bool,
    #[serde(default)]
    is_deleted: bool,
    #[serde(default)]
    is_unsupported: bool,
    #[serde(default)]
    quick_reply: Option<QuickReply>,
    #[serde(default)]
    reply_to: Option<IgReplyTo>,
    #[serde(default)]
    referral: Option<IgReferral>,
}

#[derive(Deserialize)]
struct IgAttachment {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    payload: Option<AttachmentPayload>,
}

#[derive(Deserialize)]
struct AttachmentPayload {
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize)]
struct QuickReply {
    #[serde(default)]
    payload: String,
}

#[derive(Deserialize)]
struct IgReplyTo {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    story: Option<Story>,
}

#[derive(Deserialize)]
struct Story {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize)]
struct IgReferral {
    #[serde(rename = "ref", default)]
    ref_param: Option<String>,
    #[serde(default)]
    ad_id: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    ads_context_data: Option<AdsContext>,
}

#[derive(Deserialize)]
struct AdsContext {
    #[serde(default)]
    ad_title: Option<String>,
}

#[derive(Deserialize)]
struct Postback {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    payload: String,
}

#[derive(Deserialize)]
struct Reaction {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    emoji: Option<String>,
    #[serde(default)]
    reaction: Option<String>,
}

#[derive(Deserialize)]
struct Read {
    #[serde(default)]
    mid: Option<String>,
}

#[derive(Deserialize)]
struct Edit {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default, deserialize_with = "de_lenient_i64")]
    num_edit: Option<i64>,
}

pub(super) fn event(
    raw: &RawValue,
    entry_id: Option<&str>,
    correlation_id: &str,
    now_ms: i64,
    out: &mut Parsed,
) {
    let Ok(ev) = serde_json::from_str::<Event>(raw.get()) else {
        tracing::warn!("instagram messaging event of unexpected shape ignored");
        out.ignored += 1;
        return;
    };
    let sender = ev.sender.and_then(|p| p.id);
    let recipient = ev.recipient.and_then(|p| p.id);
    let timestamp_ms = ev.timestamp.unwrap_or(now_ms);
    // Our professional account: the entry id, which is also the recipient of inbound events.
    let Some(account) = entry_id.map(str::to_owned).or_else(|| recipient.clone()) else {
        out.ignored += 1;
        return;
    };

    if let Some(read) = ev.read {
        if let Some(mid) = read.mid {
            out.statuses
                .push(StatusEvent::DeliveryStatus(DeliveryStatus {
                    v: ENVELOPE_VERSION,
                    correlation_id: correlation_id.to_owned(),
                    channel: Channel::Instagram,
                    channel_account_id: account,
                    provider_message_id: mid,
                    status: DeliveryState::Read,
                    provider_timestamp_ms: timestamp_ms,
                    recipient_id: sender,
                    recipient_user_id: None,
                    errors: Vec::new(),
                    pricing_category: None,
                    biz_opaque_callback_data: None,
                }));
        } else {
            out.ignored += 1;
        }
        return;
    }

    let Some(contact_id) = sender else {
        out.ignored += 1;
        return;
    };
    // Our own sends come back as echoes (ids reversed); they are not customer messages.
    let is_echo = ev.message.as_ref().is_some_and(|m| m.is_echo) || contact_id == account;
    if is_echo {
        out.ignored += 1;
        return;
    }

    let mut reply_to = None;
    let mut referral = ev.referral.map(referral_of);
    let (provider_id, content) = if let Some(m) = ev.message {
        let mid = m.mid.clone().unwrap_or_else(|| synthetic_id("noid", raw));
        if let Some(r) = m.reply_to {
            reply_to = Some(ReplyTo {
                provider_message_id: r.mid,
                from: None,
                story_id: r.story.as_ref().and_then(|s| s.id.clone()),
                story_url: r.story.and_then(|s| s.url),
            });
        }
        if let Some(r) = m.referral {
            referral = Some(referral_of(r));
        }
        if m.is_deleted {
            // A deletion notice refers to an earlier mid; give it its own id so it is not
            // mistaken for a duplicate of the message it deletes.
            (format!("{mid}#deleted"), unsupported("message_deleted"))
        } else if m.is_unsupported {
            (mid, unsupported("unsupported"))
        } else if let Some(q) = m.quick_reply {
            let title = m.text.unwrap_or_default();
            (
                mid,
                Content::InteractiveReply {
                    reply: ReplyKind::QuickReply,
                    id: q.payload,
                    title,
                    description: None,
                },
            )
        } else if !m.attachments.is_empty() {
            (mid, attachments(m.attachments))
        } else if let Some(text) = m.text {
            (mid, Content::Text { body: text })
        } else {
            (mid, unsupported("message"))
        }
    } else if let Some(p) = ev.postback {
        let id = p.mid.unwrap_or_else(|| synthetic_id("postback", raw));
        (
            id,
            Content::Button {
                payload: p.payload,
                text: p.title,
            },
        )
    } else if let Some(r) = ev.reaction {
        let target = r.mid.unwrap_or_default();
        let removed = r.action.as_deref() == Some("unreact");
        let action = r.action.as_deref().unwrap_or("react");
        // Reactions have no id of their own: one per (user, target, action, time).
        let id = format!("reaction:{contact_id}:{target}:{action}:{timestamp_ms}");
        (
            id,
            Content::Reaction {
                target_provider_message_id: target,
                emoji: if removed {
                    None
                } else {
                    r.emoji.or(r.reaction)
                },
            },
        )
    } else if let Some(e) = ev.message_edit {
        let mid = e.mid.unwrap_or_else(|| synthetic_id("edit", raw));
        (
            format!("{mid}#edit{}", e.num_edit.unwrap_or(0)),
            unsupported("message_edit"),
        )
    } else if referral.is_some() {
        // The user opened the thread from an ad or an ig.me link, without writing yet.
        (
            format!("referral:{contact_id}:{timestamp_ms}"),
            unsupported("referral"),
        )
    } else {
        (synthetic_id("event", raw), unsupported("unknown_event"))
    };

    out.inbound.push(InboundEnvelope {
        v: ENVELOPE_VERSION,
        kind: InboundKind::InboundMessage,
        correlation_id: correlation_id.to_owned(),
        channel: Channel::Instagram,
        channel_account_id: account,
        contact: Contact {
            id: contact_id,
            ..Contact::default()
        },
        provider_message_id: provider_id,
        provider_timestamp_ms: timestamp_ms,
        reply_to,
        referral,
        content,
        raw: Some(raw.to_owned()),
        raw_omitted: false,
    });
}

fn unsupported(kind: &str) -> Content {
    Content::Unsupported {
        original_type: kind.to_owned(),
        errors: Vec::new(),
    }
}

fn referral_of(r: IgReferral) -> Referral {
    Referral {
        source_type: r.source,
        source_id: r.ad_id,
        source_url: None,
        headline: r.ads_context_data.and_then(|a| a.ad_title),
        body: None,
        ctwa_clid: None,
        ref_param: r.ref_param,
    }
}

fn attachments(list: Vec<IgAttachment>) -> Content {
    let mut items: Vec<Attachment> = list
        .into_iter()
        .map(|a| Attachment {
            kind: a.kind.unwrap_or_else(|| "unknown".to_owned()),
            url: a.payload.and_then(|p| p.url),
        })
        .collect();
    if items.len() > 1 {
        return Content::Attachments { items };
    }
    let only = items.remove(0);
    let media = match only.kind.as_str() {
        "image" => MediaKind::Image,
        "video" => MediaKind::Video,
        "audio" => MediaKind::Audio,
        "file" => MediaKind::Document,
        _ => {
            return Content::Attachments { items: vec![only] };
        }
    };
    Content::Media {
        media,
        media_id: None,
        url: only.url,
        mime_type: None,
        sha256: None,
        caption: None,
        filename: None,
        voice: None,
    }
}
