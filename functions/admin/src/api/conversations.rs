//! Conversations, their messages, and human handoff: switching a conversation between `ai`
//! and `human`, and sending a human agent's reply through the conversation's channel.
//!
//! The processor reads the mode from Postgres on every turn (not cached), so a switch applies
//! to the next customer message. In `human` mode it stores inbound messages with outcome
//! `human_mode` and does not reply.

use serde_json::{json, Value as Json};
use shared::db::{conversations, messages, statuses};
use shared::envelope::Channel;
use shared::graph::Recipient;
use shared::split::split_for;
use tracing::{info, warn};
use uuid::Uuid;

use super::keyset;
use crate::input::{checked, Input};
use crate::{page, ApiError, Ctx, Reply};

/// WhatsApp's customer-service window and Instagram's standard window.
const DAY_SECS: f64 = 86_400.0;
/// Instagram's `HUMAN_AGENT` tag window.
const HUMAN_AGENT_SECS: f64 = 7.0 * DAY_SECS;

/// Newest activity first; filters `channel`, `mode`, `updated_since` (RFC 3339). A
/// conversation that gets a new message while a client pages may show again on page one;
/// new conversations never shift later pages.
pub async fn list(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let limit = ctx.limit()?;
    let (k1, k2) = keyset(ctx)?;
    let mut bad = std::collections::BTreeMap::new();
    let channel = ctx.query.get("channel").cloned();
    if channel
        .as_deref()
        .is_some_and(|c| !["whatsapp", "instagram", "webchat"].contains(&c))
    {
        bad.insert(
            "channel".into(),
            "must be whatsapp, instagram or webchat".into(),
        );
    }
    let mode = ctx.query.get("mode").cloned();
    if mode.as_deref().is_some_and(|m| m != "ai" && m != "human") {
        bad.insert("mode".into(), "must be ai or human".into());
    }
    let since = ctx.query.get("updated_since").cloned();
    if since.as_deref().is_some_and(|s| !looks_like_rfc3339(s)) {
        bad.insert(
            "updated_since".into(),
            "must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z".into(),
        );
    }
    if !bad.is_empty() {
        return Err(ApiError::Invalid(bad));
    }
    let filter = conversations::ListFilter {
        channel,
        mode,
        updated_since: since,
        before: (k1, k2),
    };
    let rows = conversations::list_json(ctx.app.db(), ctx.tenant()?, &filter, limit + 1).await?;
    Ok(Reply::ok(page(rows, limit)))
}

/// `YYYY-MM-DDTHH:MM:SS` followed by optional fraction and a zone (Postgres parses the rest).
fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    s.chars()
        .all(|c| c.is_ascii_digit() || "-:.+TtZz".contains(c))
        && b.len() >= 20
        && b.len() <= 40
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains(['+', '-']))
}

async fn one(ctx: &Ctx<'_>, id: Uuid) -> Result<Json, ApiError> {
    let mut v = conversations::get_json(ctx.app.db(), ctx.tenant()?, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("_k");
    }
    Ok(v)
}

pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    Ok(Reply::ok(one(ctx, ctx.id(0)?).await?))
}

/// Oldest first, with delivery status and, for inbound messages, what the processor did.
pub async fn messages(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    let limit = ctx.limit()?;
    let (k1, _) = keyset(ctx)?;
    one(ctx, id).await?;
    let rows =
        messages::page_json(ctx.app.db(), ctx.tenant()?, id, k1.as_deref(), limit + 1).await?;
    Ok(Reply::ok(page(rows, limit)))
}

/// `{"mode": "human" | "ai"}`. A real change is recorded (when, which key) and announced to
/// the tenant's webhook as `conversation.mode_changed`.
pub async fn set_mode(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    let mut i = Input::parse(ctx.body)?;
    let mode = i.choice("mode", &["ai", "human"]);
    if mode.is_none() {
        i.bad("mode", "is required: ai or human");
    }
    i.finish()?;
    let mode = checked(mode, "mode")?;
    let tenant = ctx.tenant()?;
    let Some(switch) =
        conversations::switch_mode(ctx.app.db(), tenant, id, &mode, ctx.who.key_id).await?
    else {
        // Unknown, or another tenant's: the same answer.
        return Err(ApiError::NotFound);
    };
    let (changed, events) = (switch.changed, switch.event);
    if changed {
        ctx.metrics().count_by("Handoffs", "Mode", mode.clone(), 1);
        info!(conversation = %id, mode = %mode, "conversation mode changed");
    }
    if events {
        // The extraction function delivers a conversation's pending webhook events first
        // thing in a job; queue one so the event goes out without waiting for a message.
        if let Err(e) = ctx
            .app
            .publisher()
            .send_all(
                &ctx.app.settings().extraction_queue_url,
                vec![shared::wire::ExtractionJob::new(tenant, id).message()],
            )
            .await
        {
            warn!(error = %e, "handoff event stored but no delivery job queued; the next turn delivers it");
        }
    }
    Ok(Reply::ok(one(ctx, id).await?))
}

/// `{"text": "…"}`: a human agent's reply, sent through the conversation's channel in
/// channel-sized parts and stored as outbound messages (`sent_by: "human"`, no credits).
/// WhatsApp: only within 24 h of the customer's last message (409 after). Instagram: within
/// 24 h as usual, up to 7 days with the `HUMAN_AGENT` tag, 409 after. Web chat: stored, and
/// the visitor's widget shows it on its next poll.
pub async fn send(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    let mut i = Input::parse(ctx.body)?;
    let text = i.required_str("text", 1, 4096);
    let tenant = ctx.tenant()?;
    let target = conversations::reply_target(ctx.app.db(), tenant, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    i.finish()?;
    let text = checked(text, "text")?;
    let channel = Channel::parse(&target.channel).ok_or(ApiError::Internal)?;
    let account = target.provider_account_id;
    let secret = target.access_token_secret;
    let active = target.account_active;
    let external_id = target.contact_external_id;
    let wa_id = target.contact_wa_id;
    let age = target.since_last_inbound_secs;
    let account_row = target.channel_account_id;
    if !active {
        return Err(ApiError::Conflict(
            "channel_inactive",
            "the conversation's channel account is deactivated".into(),
        ));
    }
    let age = age.unwrap_or(f64::INFINITY);
    let tag = match channel {
        Channel::Whatsapp if age > DAY_SECS => {
            return Err(ApiError::Conflict(
                "outside_window",
                "more than 24 h since the customer's last message: WhatsApp only allows an \
                 approved template now"
                    .into(),
            ))
        }
        Channel::Instagram if age > HUMAN_AGENT_SECS => {
            return Err(ApiError::Conflict(
                "outside_window",
                "more than 7 days since the customer's last message: Instagram allows no reply"
                    .into(),
            ))
        }
        Channel::Instagram if age > DAY_SECS => Some("HUMAN_AGENT"),
        _ => None,
    };
    let token = if channel == Channel::Webchat {
        secrecy::SecretString::from(String::new())
    } else {
        ctx.app
            .tokens()
            .for_account(secret.as_deref(), &account)
            .await
            .map_err(|e| {
                warn!(reason = %e.reason, "no Graph token for the account");
                if e.retryable {
                    ApiError::Unavailable
                } else {
                    ApiError::Conflict("no_token", e.reason)
                }
            })?
    };
    let mut sent = Vec::new();
    let mut failure = None;
    for piece in split_for(channel, &text) {
        let to = Recipient {
            contact_id: &external_id,
            wa_id: wa_id.as_deref(),
        };
        let result = ctx
            .app
            .graph()
            .send_part(
                channel,
                &token,
                &account,
                to,
                &piece,
                shared::graph::PartOpts {
                    human_agent: tag.is_some(),
                    tag: None,
                },
            )
            .await;
        let mut content = json!({"type": "text", "body": piece, "sent_by": "human",
                                 "api_key_id": ctx.who.key_id});
        if let Some(t) = tag {
            content["tag"] = json!(t);
        }
        match result {
            Ok(provider_id) => {
                let row = messages::insert_outbound_message(
                    ctx.app.db(),
                    tenant,
                    id,
                    Some(&provider_id),
                    &content,
                    None,
                    None,
                    None,
                )
                .await;
                match row {
                    Ok(row_id) => {
                        sent.push(json!({"id": row_id, "provider_message_id": provider_id}))
                    }
                    Err(e) => {
                        // Sent but not stored: say so rather than invite a resend.
                        tracing::error!(outcome = "reply_not_recorded", error = %e, "human reply sent but not stored");
                        sent.push(json!({"id": null, "provider_message_id": provider_id}));
                    }
                }
                let _ = statuses::apply_pending_statuses(
                    ctx.app.db(),
                    tenant,
                    account_row,
                    &[provider_id.as_str()],
                )
                .await;
            }
            Err(e) => {
                ctx.metrics()
                    .count_by("SendFailures", "ErrorCode", e.code.to_string(), 1);
                warn!(
                    outcome = "send_failed",
                    code = e.code,
                    "human reply not sent"
                );
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        let message = if sent.is_empty() {
            format!(
                "Meta refused the message (code {}, HTTP {})",
                e.code, e.status
            )
        } else {
            format!(
                "{} part(s) sent, then Meta refused the rest (code {}, HTTP {})",
                sent.len(),
                e.code,
                e.status
            )
        };
        // The parts already sent are stored and listed: a client must not send them again.
        return Err(ApiError::Upstream(message, Some(e.code), json!(sent)));
    }
    ctx.metrics().count("HumanRepliesSent", 1);
    info!(conversation = %id, parts = sent.len(), tagged = tag.is_some(), "human reply sent");
    Ok(Reply::created(json!({"messages": sent, "tag": tag})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shapes() {
        for ok in [
            "2026-11-01T00:00:00Z",
            "2026-11-01T00:00:00.123+02:00",
            "2026-11-01t10:00:00-05:00",
        ] {
            assert!(looks_like_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2026-11-01",
            "yesterday",
            "2026-11-01T00:00:00",
            "2026-11-01T00:00:00Z'--",
            "2026-11-01T00:00:0\u{e9}0",
        ] {
            assert!(!looks_like_rfc3339(bad), "{bad}");
        }
    }
}
