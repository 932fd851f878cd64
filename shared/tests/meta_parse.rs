//! Every WhatsApp and Instagram payload shape of apis.md §2/§4 through `parse_webhook`.

use serde_json::{json, Value};
use shared::envelope::{
    Channel, Content, DeliveryState, InboundEnvelope, MediaKind, ReplyKind, StatusEvent,
};
use shared::meta::{parse_webhook, ParseError, Parsed};

const NOW: i64 = 1_767_300_000_000;

fn wa_body(value: Value) -> Vec<u8> {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] =
        json!({"display_phone_number": "15550783881", "phone_number_id": "106540352242922"});
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}]
    }))
    .unwrap()
}

fn parse(body: &[u8]) -> Parsed {
    parse_webhook(body, "corr-1", NOW).expect("parses")
}

/// One WhatsApp message from Ana (BSUID + wa_id) with the given type-specific fields.
fn wa_one(kind: &str, fields: Value) -> InboundEnvelope {
    let mut msg = json!({
        "from": "5215512345678", "from_user_id": "MX.8812736450012",
        "id": "wamid.ONE", "timestamp": "1767225600", "type": kind
    });
    for (k, v) in fields.as_object().unwrap() {
        msg[k] = v.clone();
    }
    let p = parse(&wa_body(json!({
        "contacts": [{"profile": {"name": "Ana Ruiz"}, "wa_id": "5215512345678", "user_id": "MX.8812736450012"}],
        "messages": [msg]
    })));
    assert!(p.statuses.is_empty());
    assert_eq!(p.inbound.len(), 1);
    p.inbound.into_iter().next().unwrap()
}

#[test]
fn wa_text_fills_the_whole_envelope() {
    let env = wa_one(
        "text",
        json!({"text": {"body": "Hola, quiero una cotizaci\u{f3}n"}}),
    );
    assert_eq!(env.v, 1);
    assert_eq!(env.correlation_id, "corr-1");
    assert_eq!(env.channel, Channel::Whatsapp);
    assert_eq!(env.channel_account_id, "106540352242922");
    assert_eq!(env.contact.id, "MX.8812736450012", "keyed by the BSUID");
    assert_eq!(env.contact.wa_id.as_deref(), Some("5215512345678"));
    assert_eq!(env.contact.display_name.as_deref(), Some("Ana Ruiz"));
    assert_eq!(env.provider_message_id, "wamid.ONE");
    assert_eq!(env.provider_timestamp_ms, 1_767_225_600_000);
    assert_eq!(
        env.content,
        Content::Text {
            body: "Hola, quiero una cotización".into()
        }
    );
    let raw: Value = serde_json::from_str(env.raw.as_ref().unwrap().get()).unwrap();
    assert_eq!(raw["id"], "wamid.ONE");
}

#[test]
fn wa_contact_falls_back_to_wa_id_without_a_bsuid() {
    let p = parse(&wa_body(json!({
        "contacts": [{"profile": {"name": "Bo"}, "wa_id": "447700900123"}],
        "messages": [{"from": "447700900123", "id": "wamid.B", "timestamp": "1767225601", "type": "text", "text": {"body": "hi"}}]
    })));
    let c = &p.inbound[0].contact;
    assert_eq!(c.id, "447700900123");
    assert_eq!(c.user_id, None);
}

#[test]
fn wa_contact_without_phone_is_keyed_by_bsuid() {
    let p = parse(&wa_body(json!({
        "contacts": [{"profile": {"name": "Cy", "username": "cy.shop"}, "user_id": "BR.77"}],
        "messages": [{"from_user_id": "BR.77", "id": "wamid.C", "timestamp": "1767225602", "type": "text", "text": {"body": "oi"}}]
    })));
    let c = &p.inbound[0].contact;
    assert_eq!(c.id, "BR.77");
    assert_eq!(c.wa_id, None, "phone may be absent");
    assert_eq!(c.username.as_deref(), Some("cy.shop"));
}

#[test]
fn wa_messages_of_several_users_get_their_own_contacts() {
    let p = parse(&wa_body(json!({
        "contacts": [{"profile": {"name": "A"}, "wa_id": "1"}, {"profile": {"name": "B"}, "wa_id": "2"}],
        "messages": [
            {"from": "2", "id": "wamid.2", "timestamp": "1", "type": "text", "text": {"body": "x"}},
            {"from": "1", "id": "wamid.1", "timestamp": "2", "type": "text", "text": {"body": "y"}}
        ]
    })));
    let names: Vec<_> = p
        .inbound
        .iter()
        .map(|e| e.contact.display_name.clone().unwrap())
        .collect();
    assert_eq!(names, ["B", "A"]);
}

#[test]
fn wa_image_with_caption() {
    let env = wa_one(
        "image",
        json!({"image": {"caption": "this one", "mime_type": "image/jpeg", "sha256": "abc=", "id": "1234"}}),
    );
    assert_eq!(
        env.content,
        Content::Media {
            media: MediaKind::Image,
            media_id: Some("1234".into()),
            url: None,
            mime_type: Some("image/jpeg".into()),
            sha256: Some("abc=".into()),
            caption: Some("this one".into()),
            filename: None,
            voice: None,
        }
    );
}

#[test]
fn wa_other_media_kinds() {
    for (kind, expected) in [
        ("video", MediaKind::Video),
        ("audio", MediaKind::Audio),
        ("document", MediaKind::Document),
        ("sticker", MediaKind::Sticker),
    ] {
        let env = wa_one(
            kind,
            json!({kind: {"id": "m1", "mime_type": "x/y", "filename": "q.pdf", "voice": true}}),
        );
        match env.content {
            Content::Media {
                media, media_id, ..
            } => {
                assert_eq!(media, expected);
                assert_eq!(media_id.as_deref(), Some("m1"));
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    let doc = wa_one(
        "document",
        json!({"document": {"id": "d", "filename": "quote.pdf", "caption": "c"}}),
    );
    assert!(
        matches!(doc.content, Content::Media { filename: Some(ref f), caption: Some(_), .. } if f == "quote.pdf")
    );
    let voice = wa_one("audio", json!({"audio": {"id": "a", "voice": true}}));
    assert!(matches!(
        voice.content,
        Content::Media {
            voice: Some(true),
            ..
        }
    ));
}

#[test]
fn wa_location() {
    let env = wa_one(
        "location",
        json!({"location": {"latitude": 19.43, "longitude": -99.13, "name": "Zócalo", "address": "CDMX"}}),
    );
    assert_eq!(
        env.content,
        Content::Location {
            latitude: 19.43,
            longitude: -99.13,
            name: Some("Zócalo".into()),
            address: Some("CDMX".into()),
            url: None
        }
    );
}

#[test]
fn wa_contacts_card() {
    let env = wa_one(
        "contacts",
        json!({"contacts": [{
            "name": {"formatted_name": "Luis P", "first_name": "Luis"},
            "phones": [{"phone": "+52 55 1111 2222", "wa_id": "5255111122", "type": "CELL"}],
            "emails": [{"email": "luis@example.com", "type": "WORK"}],
            "org": {"company": "ACME"}
        }]}),
    );
    match env.content {
        Content::Contacts { cards } => {
            assert_eq!(cards.len(), 1);
            assert_eq!(cards[0].formatted_name.as_deref(), Some("Luis P"));
            assert_eq!(cards[0].phones, ["+52 55 1111 2222"]);
            assert_eq!(cards[0].emails, ["luis@example.com"]);
            assert_eq!(cards[0].company.as_deref(), Some("ACME"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wa_interactive_button_and_list_replies_with_context() {
    let env = wa_one(
        "interactive",
        json!({
            "context": {"from": "15550783881", "id": "wamid.BUTTONS"},
            "interactive": {"type": "button_reply", "button_reply": {"id": "book", "title": "Book"}}
        }),
    );
    assert_eq!(
        env.content,
        Content::InteractiveReply {
            reply: ReplyKind::ButtonReply,
            id: "book".into(),
            title: "Book".into(),
            description: None
        }
    );
    let reply_to = env.reply_to.unwrap();
    assert_eq!(
        reply_to.provider_message_id.as_deref(),
        Some("wamid.BUTTONS")
    );
    assert_eq!(reply_to.from.as_deref(), Some("15550783881"));

    let list = wa_one(
        "interactive",
        json!({"interactive": {"type": "list_reply", "list_reply": {"id": "r2", "title": "2 rooms", "description": "from $90"}}}),
    );
    assert_eq!(
        list.content,
        Content::InteractiveReply {
            reply: ReplyKind::ListReply,
            id: "r2".into(),
            title: "2 rooms".into(),
            description: Some("from $90".into())
        }
    );
    let flow = wa_one(
        "interactive",
        json!({"interactive": {"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}}}),
    );
    assert!(
        matches!(flow.content, Content::Unsupported { ref original_type, .. } if original_type == "interactive.nfm_reply")
    );
}

#[test]
fn wa_template_button_reaction_and_removed_reaction() {
    let b = wa_one(
        "button",
        json!({"button": {"payload": "STOP", "text": "Stop promotions"}}),
    );
    assert_eq!(
        b.content,
        Content::Button {
            payload: "STOP".into(),
            text: "Stop promotions".into()
        }
    );
    let r = wa_one(
        "reaction",
        json!({"reaction": {"message_id": "wamid.OURS", "emoji": "👍"}}),
    );
    assert_eq!(
        r.content,
        Content::Reaction {
            target_provider_message_id: "wamid.OURS".into(),
            emoji: Some("👍".into())
        }
    );
    let removed = wa_one(
        "reaction",
        json!({"reaction": {"message_id": "wamid.OURS"}}),
    );
    assert!(matches!(
        removed.content,
        Content::Reaction { emoji: None, .. }
    ));
}

#[test]
fn wa_order() {
    let env = wa_one(
        "order",
        json!({"order": {"catalog_id": "cat1", "text": "asap", "product_items": [
            {"product_retailer_id": "sku-1", "quantity": 2, "item_price": 9.5, "currency": "USD"},
            {"product_retailer_id": "sku-2", "quantity": "1", "item_price": 3, "currency": "USD"}
        ]}}),
    );
    match env.content {
        Content::Order {
            catalog_id, items, ..
        } => {
            assert_eq!(catalog_id.as_deref(), Some("cat1"));
            assert_eq!(items.len(), 2);
            assert_eq!(items[0].quantity, 2);
            assert_eq!(items[1].quantity, 1);
            assert_eq!(items[0].item_price, Some(9.5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wa_system_message_without_contacts() {
    let p = parse(&wa_body(json!({
        "messages": [{"from": "5215512345678", "id": "wamid.S", "timestamp": "1767225600", "type": "system",
            "system": {"body": "User A changed from 521… to 521…", "wa_id": "5215599999999", "type": "user_changed_number"}}]
    })));
    let env = &p.inbound[0];
    assert_eq!(env.contact.id, "5215512345678");
    assert_eq!(
        env.content,
        Content::System {
            system_type: "user_changed_number".into(),
            body: Some("User A changed from 521… to 521…".into()),
            new_wa_id: Some("5215599999999".into())
        }
    );
}

#[test]
fn wa_unsupported_and_future_types_are_carried_not_dropped() {
    let env = wa_one(
        "unsupported",
        json!({"errors": [{"code": 131051, "title": "Message type unknown", "message": "Message type unknown",
            "error_data": {"details": "Message type is currently not supported."}}],
            "unsupported": {"type": "poll_update"}}),
    );
    match env.content {
        Content::Unsupported {
            original_type,
            errors,
        } => {
            assert_eq!(original_type, "poll_update");
            assert_eq!(errors[0].code, 131051);
            assert_eq!(
                errors[0].details.as_deref(),
                Some("Message type is currently not supported.")
            );
        }
        other => panic!("{other:?}"),
    }
    let future = wa_one("hologram", json!({"hologram": {"id": "h"}}));
    assert!(
        matches!(future.content, Content::Unsupported { ref original_type, .. } if original_type == "hologram")
    );
    assert!(future.raw.is_some(), "raw kept for later reprocessing");
    // A known type whose object has an unexpected shape is carried too, with its id.
    let odd = wa_one("location", json!({"location": {"latitude": "north"}}));
    assert_eq!(odd.provider_message_id, "wamid.ONE");
    assert!(
        matches!(odd.content, Content::Unsupported { ref original_type, .. } if original_type == "location")
    );
}

#[test]
fn wa_referral_from_an_ad_is_kept() {
    let env = wa_one(
        "text",
        json!({"text": {"body": "Info?"}, "referral": {
            "source_url": "https://fb.me/x", "source_id": "ad-9", "source_type": "ad",
            "body": "Spring sale", "headline": "2-bed flats", "media_type": "image", "ctwa_clid": "clid-1"}}),
    );
    let r = env.referral.unwrap();
    assert_eq!(r.source_type.as_deref(), Some("ad"));
    assert_eq!(r.source_id.as_deref(), Some("ad-9"));
    assert_eq!(r.headline.as_deref(), Some("2-bed flats"));
    assert_eq!(r.ctwa_clid.as_deref(), Some("clid-1"));
}

#[test]
fn wa_statuses_and_errors_are_not_inbound_messages() {
    let p = parse(&wa_body(json!({
        "statuses": [
            {"id": "wamid.OUT1", "status": "delivered", "timestamp": "1767312000", "recipient_id": "5215512345678",
             "pricing": {"pricing_model": "PMP", "category": "service"}},
            {"id": "wamid.OUT2", "status": "failed", "timestamp": "1767312001", "recipient_id": "5215512345678",
             "errors": [{"code": 131047, "title": "Re-engagement message", "error_data": {"details": "More than 24 hours"}}]}
        ],
        "errors": [{"code": 130429, "title": "Rate limit hit", "message": "(#130429) Rate limit hit"}]
    })));
    assert!(p.inbound.is_empty());
    assert_eq!(p.statuses.len(), 3);
    match &p.statuses[0] {
        StatusEvent::DeliveryStatus(s) => {
            assert_eq!(s.status, DeliveryState::Delivered);
            assert_eq!(s.provider_message_id, "wamid.OUT1");
            assert_eq!(s.provider_timestamp_ms, 1_767_312_000_000);
            assert_eq!(s.pricing_category.as_deref(), Some("service"));
        }
        other => panic!("{other:?}"),
    }
    match &p.statuses[1] {
        StatusEvent::DeliveryStatus(s) => {
            assert_eq!(s.status, DeliveryState::Failed);
            assert_eq!(s.errors[0].code, 131047);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&p.statuses[2], StatusEvent::ChannelError(e) if e.error.code == 130429));
}

#[test]
fn wa_non_message_fields_are_ignored() {
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "message_template_status_update", "value": {"event": "APPROVED"}}]}]
    }))
    .unwrap();
    let p = parse(&body);
    assert!(p.inbound.is_empty() && p.statuses.is_empty());
    assert_eq!(p.ignored, 1);
}

#[test]
fn wa_escaped_unicode_body_as_meta_signs_it() {
    // Meta sends non-ASCII as \u escapes; the parser must decode them.
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"P"},"messages":[{"from":"1","id":"wamid.U","timestamp":"1","type":"text","text":{"body":"cotizaci\u00f3n \ud83d\ude00"}}]}}]}]}"#;
    let p = parse(body);
    assert_eq!(
        p.inbound[0].content,
        Content::Text {
            body: "cotización 😀".into()
        }
    );
}

fn ig_body(messaging: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "instagram",
        "entry": [{"id": "17841400000000000", "time": 1767225600123_i64, "messaging": [messaging]}]
    }))
    .unwrap()
}

fn ig_event(extra: Value) -> Value {
    let mut ev = json!({
        "sender": {"id": "6543219876543210"}, "recipient": {"id": "17841400000000000"},
        "timestamp": 1767225599876_i64
    });
    for (k, v) in extra.as_object().unwrap() {
        ev[k] = v.clone();
    }
    ev
}

fn ig_one(extra: Value) -> InboundEnvelope {
    let p = parse(&ig_body(ig_event(extra)));
    assert_eq!(p.inbound.len(), 1, "{p:?}");
    p.inbound.into_iter().next().unwrap()
}

#[test]
fn ig_text() {
    let env = ig_one(json!({"message": {"mid": "aWdfMID1", "text": "Price for the 2-bedroom?"}}));
    assert_eq!(env.channel, Channel::Instagram);
    assert_eq!(env.channel_account_id, "17841400000000000");
    assert_eq!(env.contact.id, "6543219876543210");
    assert_eq!(env.provider_message_id, "aWdfMID1");
    assert_eq!(env.provider_timestamp_ms, 1_767_225_599_876);
    assert_eq!(
        env.content,
        Content::Text {
            body: "Price for the 2-bedroom?".into()
        }
    );
}

#[test]
fn ig_echo_is_dropped() {
    let echo = json!({
        "sender": {"id": "17841400000000000"}, "recipient": {"id": "6543219876543210"},
        "timestamp": 1767225599876_i64,
        "message": {"mid": "aWdfECHO", "text": "our reply", "is_echo": true}
    });
    let p = parse(&ig_body(echo));
    assert!(p.inbound.is_empty() && p.statuses.is_empty());
    assert_eq!(p.ignored, 1);
}

#[test]
fn ig_attachments_quick_reply_reply_to_and_referral() {
    let img = ig_one(
        json!({"message": {"mid": "m1", "attachments": [{"type": "image", "payload": {"url": "https://cdn/x.jpg"}}]}}),
    );
    assert!(
        matches!(img.content, Content::Media { media: MediaKind::Image, url: Some(ref u), .. } if u == "https://cdn/x.jpg")
    );
    let two = ig_one(json!({"message": {"mid": "m2", "attachments": [
        {"type": "image", "payload": {"url": "a"}}, {"type": "share", "payload": {"url": "b"}}]}}));
    assert!(
        matches!(two.content, Content::Attachments { ref items } if items.len() == 2 && items[1].kind == "share")
    );
    let qr = ig_one(
        json!({"message": {"mid": "m3", "text": "Yes", "quick_reply": {"payload": "CONFIRM"}}}),
    );
    assert_eq!(
        qr.content,
        Content::InteractiveReply {
            reply: ReplyKind::QuickReply,
            id: "CONFIRM".into(),
            title: "Yes".into(),
            description: None
        }
    );
    let reply =
        ig_one(json!({"message": {"mid": "m4", "text": "this", "reply_to": {"mid": "m0"}}}));
    assert_eq!(
        reply.reply_to.unwrap().provider_message_id.as_deref(),
        Some("m0")
    );
    let story = ig_one(
        json!({"message": {"mid": "m5", "text": "love it", "reply_to": {"story": {"url": "https://s", "id": "st1"}}}}),
    );
    assert_eq!(story.reply_to.unwrap().story_id.as_deref(), Some("st1"));
    let ad = ig_one(
        json!({"message": {"mid": "m6", "text": "hi", "referral": {"ref": "promo", "ad_id": "ad7", "source": "ADS", "type": "OPEN_THREAD", "ads_context_data": {"ad_title": "Flats"}}}}),
    );
    let r = ad.referral.unwrap();
    assert_eq!(
        (
            r.source_id.as_deref(),
            r.ref_param.as_deref(),
            r.headline.as_deref()
        ),
        (Some("ad7"), Some("promo"), Some("Flats"))
    );
}

#[test]
fn ig_postback_and_reactions() {
    let pb =
        ig_one(json!({"postback": {"mid": "pb1", "title": "Talk to sales", "payload": "SALES"}}));
    assert_eq!(pb.provider_message_id, "pb1");
    assert_eq!(
        pb.content,
        Content::Button {
            payload: "SALES".into(),
            text: "Talk to sales".into()
        }
    );
    let react = ig_one(
        json!({"reaction": {"mid": "ours1", "action": "react", "reaction": "love", "emoji": "❤"}}),
    );
    assert_eq!(
        react.content,
        Content::Reaction {
            target_provider_message_id: "ours1".into(),
            emoji: Some("❤".into())
        }
    );
    let unreact = ig_one(json!({"reaction": {"mid": "ours1", "action": "unreact"}}));
    assert_eq!(
        unreact.content,
        Content::Reaction {
            target_provider_message_id: "ours1".into(),
            emoji: None
        }
    );
    assert_ne!(
        react.provider_message_id, unreact.provider_message_id,
        "each reaction change is its own event"
    );
}

#[test]
fn ig_read_is_a_status_not_a_message() {
    let p = parse(&ig_body(ig_event(json!({"read": {"mid": "ours9"}}))));
    assert!(p.inbound.is_empty());
    match &p.statuses[..] {
        [StatusEvent::DeliveryStatus(s)] => {
            assert_eq!(s.status, DeliveryState::Read);
            assert_eq!(s.provider_message_id, "ours9");
            assert_eq!(s.channel, Channel::Instagram);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ig_deleted_edited_unsupported_and_unknown_events_are_carried() {
    let del = ig_one(json!({"message": {"mid": "m1", "is_deleted": true}}));
    assert_eq!(del.provider_message_id, "m1#deleted");
    assert!(
        matches!(del.content, Content::Unsupported { ref original_type, .. } if original_type == "message_deleted")
    );
    let edit = ig_one(json!({"message_edit": {"mid": "m1", "text": "new", "num_edit": 2}}));
    assert_eq!(edit.provider_message_id, "m1#edit2");
    let uns = ig_one(json!({"message": {"mid": "m7", "is_unsupported": true}}));
    assert!(
        matches!(uns.content, Content::Unsupported { ref original_type, .. } if original_type == "unsupported")
    );
    let unknown = ig_one(json!({"optin": {"ref": "x"}}));
    assert!(
        matches!(unknown.content, Content::Unsupported { ref original_type, .. } if original_type == "unknown_event")
    );
    // Same event twice -> same synthetic id (so the dedup layers catch Meta's retries).
    let again = ig_one(json!({"optin": {"ref": "x"}}));
    assert_eq!(unknown.provider_message_id, again.provider_message_id);
}

#[test]
fn rejects_non_json_and_unknown_objects() {
    assert_eq!(
        parse_webhook(b"not json", "c", NOW).unwrap_err(),
        ParseError::NotJson
    );
    assert_eq!(
        parse_webhook(b"[1,2]", "c", NOW).unwrap_err(),
        ParseError::NotJson
    );
    assert_eq!(
        parse_webhook(b"{\"entry\":[]}", "c", NOW).unwrap_err(),
        ParseError::NotJson
    );
    assert_eq!(
        parse_webhook(b"{\"object\":\"page\",\"entry\":[]}", "c", NOW).unwrap_err(),
        ParseError::UnknownObject("page".into())
    );
    // Truncated JSON is not JSON.
    let body = wa_body(json!({"messages": []}));
    assert_eq!(
        parse_webhook(&body[..body.len() - 3], "c", NOW).unwrap_err(),
        ParseError::NotJson
    );
}

#[test]
fn envelope_round_trips_through_json() {
    let env = wa_one(
        "text",
        json!({"text": {"body": "hi"}, "context": {"id": "wamid.Q"}}),
    );
    let text = serde_json::to_string(&env).unwrap();
    let back: InboundEnvelope = serde_json::from_str(&text).unwrap();
    assert_eq!(back.content, env.content);
    assert_eq!(back.contact, env.contact);
    assert_eq!(back.reply_to, env.reply_to);
    assert_eq!(back.raw.unwrap().get(), env.raw.unwrap().get());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["v"], 1);
    assert_eq!(v["kind"], "inbound_message");
    assert_eq!(v["content"]["type"], "text");
}
