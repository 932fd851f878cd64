//! Human handoff across the admin API and the real processor: in `human` mode the processor
//! stores and does not reply, a human reply goes out through the Graph stub (Instagram's
//! HUMAN_AGENT tag after 24 h, WhatsApp refused after 24 h), back in `ai` mode replies resume;
//! a mode change is announced to the tenant's webhook.

mod common;

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::SqsMessage;
use common::{Harness, IG_ACCOUNT, WA_NUMBER};
use local_aws::testing::drain;
use processor::{Deps, GraphTokens, Processor};
use serde_json::{json, Value};
use shared::graph::GraphClient;
use shared::metrics::Metrics;
use shared::openai::{ClientSettings, ResponsesClient};
use shared::queue::{QueuePublisher, RetryPolicy};
use shared::secrets::SecretCache;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CUSTOMER: &str = "5215512345678";

async fn processor_for(h: &Harness, openai: &MockServer) -> Processor {
    let sdk = &h.sdk;
    Processor::new(Deps {
        db: shared::db::Db::new(shared::db::DbConfig::new(h.t.url.clone())),
        model: ResponsesClient::new(ClientSettings::new(
            format!("{}/v1", openai.uri()),
            "sk-test".to_owned().into(),
        )),
        graph: GraphClient::new(
            format!("{}/fb", h.graph.uri()),
            format!("{}/ig", h.graph.uri()),
        ),
        tokens: GraphTokens {
            secrets: SecretCache::new(
                aws_sdk_secretsmanager::Client::new(sdk),
                Duration::from_secs(300),
            ),
            default: Some("EAAG-test".to_owned().into()),
            prefix: None,
        },
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(sdk), RetryPolicy::default()),
        extraction_queue_url: h.stack.queue("ExtractionQueue").url.clone(),
        dead_letter_queue_url: h.stack.queue("InboundDLQ").url.clone(),
        inbound_queue_url: h.stack.queue("InboundQueue").url.clone(),
        max_retry_delay: std::time::Duration::from_secs(60),
        metrics: Metrics::silent("AiAgentTest", "processor"),
    })
}

/// The SQS record the webhook would queue for a WhatsApp text from the fixture's customer.
fn wa_record(wamid: &str, text: &str) -> SqsMessage {
    let ts = shared::now_ms() / 1000;
    let body = serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": WA_NUMBER},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}],
        "messages": [{"from": CUSTOMER, "id": wamid, "timestamp": ts.to_string(), "type": "text", "text": {"body": text}}]}}]}]}))
    .unwrap();
    let env = shared::meta::parse_webhook(&body, "corr", 0)
        .unwrap()
        .inbound
        .into_iter()
        .next()
        .unwrap();
    let mut m = SqsMessage::default();
    m.message_id = Some(format!("sqs-{wamid}"));
    m.body = Some(serde_json::to_string(&env).unwrap());
    m.attributes
        .insert("MessageGroupId".into(), format!("whatsapp:{WA_NUMBER}"));
    m
}

async fn outcome_of(h: &Harness, wamid: &str) -> Option<String> {
    h.scalar(
        "SELECT outcome FROM messages WHERE provider_message_id = $1",
        &[&wamid],
    )
    .await
}

#[tokio::test]
async fn human_mode_pauses_the_ai_and_a_human_reply_goes_out_through_the_channel() {
    let h = Harness::new().await;
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "resp_1", "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hola, ¿en qué te ayudo?"}]}],
            "usage": {"input_tokens": 10, "output_tokens": 5}})))
        .mount(&openai)
        .await;
    let processor = processor_for(&h, &openai).await;
    let deadline = || Instant::now() + Duration::from_secs(30);
    let top_up = h
        .call(
            "POST",
            &format!("/v1/tenants/{}/credits", h.a.id),
            &h.platform,
            json!({"amount": 1000}),
        )
        .await;
    assert_eq!(top_up.status, 201);
    let hook = h
        .call(
            "PUT",
            "/v1/webhook",
            &h.a.owner,
            json!({"url": "https://crm.example.com/hook"}),
        )
        .await;
    assert_eq!(hook.status, 200);
    let conv = h.fx.wa_conversation;
    let mode_path = format!("/v1/conversations/{conv}/mode");

    // Hand over to a human.
    let r = h
        .call("PUT", &mode_path, &h.a.agent, json!({"mode": "robot"}))
        .await;
    assert_eq!(r.status, 422);
    let r = h
        .call("PUT", &mode_path, &h.a.agent, json!({"mode": "human"}))
        .await;
    assert_eq!(
        (r.status, r.body["mode"].clone()),
        (200, json!("human")),
        "{}",
        r.text
    );
    assert!(r.body["mode_changed_at"].is_string());
    let events: Vec<Value> = h
        .t
        .db
        .client()
        .await
        .unwrap()
        .query(
            "SELECT payload FROM webhook_deliveries WHERE user_id = $1 AND event_type = 'conversation.mode_changed'",
            &[&h.a.id.uuid()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0]["mode"].clone(),
            events[0]["previous_mode"].clone()
        ),
        (json!("human"), json!("ai"))
    );
    let jobs = drain(&h.sdk, &h.stack.queue("ExtractionQueue").url).await;
    assert_eq!(jobs.len(), 1, "a delivery job was queued");
    assert!(jobs[0].body.contains(&conv.to_string()));
    // Setting the same mode again changes nothing and announces nothing.
    let r = h
        .call("PUT", &mode_path, &h.a.agent, json!({"mode": "human"}))
        .await;
    assert_eq!(r.status, 200);
    let n: i64 = h
        .scalar("SELECT count(*) FROM webhook_deliveries", &[])
        .await;
    assert_eq!(n, 1);

    // The customer writes: stored, no model call, no reply.
    assert!(processor
        .handle_batch(vec![wa_record("wamid.H1", "¿Hay alguien?")], deadline())
        .await
        .batch_item_failures
        .is_empty());
    assert_eq!(
        outcome_of(&h, "wamid.H1").await.as_deref(),
        Some("human_mode")
    );
    assert!(openai.received_requests().await.unwrap().is_empty());
    assert!(h.graph_sends().await.is_empty());

    // The human answers through the API.
    let send_path = format!("/v1/conversations/{conv}/messages");
    let r = h
        .call("POST", &send_path, &h.a.agent, json!({"text": ""}))
        .await;
    assert_eq!(r.status, 422);
    let r = h
        .call("POST", &send_path, &h.a.viewer, json!({"text": "Hola"}))
        .await;
    assert_eq!(r.status, 403, "viewers read only");
    let r = h
        .call(
            "POST",
            &send_path,
            &h.a.agent,
            json!({"text": "Soy Luis, te ayudo yo."}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["messages"][0]["provider_message_id"], "wamid.HUMAN1");
    let sends = h.graph_sends().await;
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].0, format!("/fb/{WA_NUMBER}/messages"));
    assert_eq!(sends[0].1["to"], CUSTOMER);
    assert_eq!(sends[0].1["text"]["body"], "Soy Luis, te ayudo yo.");
    let stored: Value = h
        .scalar(
            "SELECT content FROM messages WHERE provider_message_id = 'wamid.HUMAN1'",
            &[],
        )
        .await;
    assert_eq!(stored["sent_by"], "human");
    let msgs = h.call("GET", &send_path, &h.a.viewer, Value::Null).await;
    let last = msgs.body["data"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["direction"].clone(), last["status"].clone()),
        (json!("out"), json!("sent"))
    );

    // Back to the AI: the next message is answered.
    let r = h
        .call("PUT", &mode_path, &h.a.agent, json!({"mode": "ai"}))
        .await;
    assert_eq!(r.body["mode"], "ai");
    assert!(processor
        .handle_batch(vec![wa_record("wamid.H2", "Gracias")], deadline())
        .await
        .batch_item_failures
        .is_empty());
    assert_eq!(outcome_of(&h, "wamid.H2").await.as_deref(), Some("replied"));
    assert_eq!(openai.received_requests().await.unwrap().len(), 1);
    let texts: Vec<Value> = h
        .graph_sends()
        .await
        .into_iter()
        .filter(|(_, b)| b["type"] == "text")
        .map(|(_, b)| b["text"]["body"].clone())
        .collect();
    assert_eq!(
        texts,
        [
            json!("Soy Luis, te ayudo yo."),
            json!("Hola, ¿en qué te ayudo?")
        ]
    );
}

#[tokio::test]
async fn replies_outside_the_window_follow_each_channels_rule() {
    let h = Harness::new().await;
    let c = h.t.db.client().await.unwrap();
    let age = |conv: uuid::Uuid, hours: i32| {
        let c = c.clone();
        async move {
            c.execute(
                "UPDATE conversations SET last_inbound_at = now() - make_interval(hours => $2) WHERE id = $1",
                &[&conv, &hours],
            )
            .await
            .unwrap();
        }
    };
    let wa = format!("/v1/conversations/{}/messages", h.fx.wa_conversation);
    let ig = format!("/v1/conversations/{}/messages", h.fx.ig_conversation);

    // WhatsApp after 24 h: refused before anything is sent.
    age(h.fx.wa_conversation, 25).await;
    let r = h
        .call("POST", &wa, &h.a.agent, json!({"text": "¿Sigues ahí?"}))
        .await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (409, json!("outside_window")),
        "{}",
        r.text
    );
    assert!(r.body["message"].as_str().unwrap().contains("template"));
    assert!(h.graph_sends().await.is_empty());

    // Instagram inside 24 h: a plain message; after 24 h (within 7 days): HUMAN_AGENT tag.
    let r = h
        .call("POST", &ig, &h.a.agent, json!({"text": "Hola"}))
        .await;
    assert_eq!(
        (r.status, r.body["tag"].clone()),
        (201, Value::Null),
        "{}",
        r.text
    );
    age(h.fx.ig_conversation, 72).await;
    let r = h
        .call(
            "POST",
            &ig,
            &h.a.agent,
            json!({"text": "Te escribo por la visita"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["tag"].clone()),
        (201, json!("HUMAN_AGENT")),
        "{}",
        r.text
    );
    let sends = h.graph_sends().await;
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].0, format!("/ig/{IG_ACCOUNT}/messages"));
    assert!(sends[0].1.get("tag").is_none());
    assert_eq!(sends[1].1["messaging_type"], "MESSAGE_TAG");
    assert_eq!(sends[1].1["tag"], "HUMAN_AGENT");
    assert_eq!(sends[1].1["recipient"]["id"], "6543");
    // After 7 days: refused.
    age(h.fx.ig_conversation, 24 * 8).await;
    let r = h
        .call("POST", &ig, &h.a.agent, json!({"text": "¿Hola?"}))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(h.graph_sends().await.len(), 2);

    // Meta refusing the send: 502 with Meta's code, nothing stored as sent.
    age(h.fx.wa_conversation, 1).await;
    Mock::given(method("POST"))
        .and(path(format!("/fb/{WA_NUMBER}/messages")))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": {"code": 131026, "message": "undeliverable"}})),
        )
        .with_priority(1)
        .mount(&h.graph)
        .await;
    let before: i64 = h
        .scalar("SELECT count(*) FROM messages WHERE direction = 'out'", &[])
        .await;
    let r = h
        .call("POST", &wa, &h.a.agent, json!({"text": "Hola"}))
        .await;
    assert_eq!(
        (
            r.status,
            r.body["error"].clone(),
            r.body["provider_code"].clone()
        ),
        (502, json!("send_failed"), json!(131026))
    );
    assert_eq!(
        r.body["sent"],
        json!([]),
        "nothing went out before the refusal"
    );
    let after: i64 = h
        .scalar("SELECT count(*) FROM messages WHERE direction = 'out'", &[])
        .await;
    assert_eq!(before, after);

    // A deactivated channel account sends nothing.
    let r = h
        .call(
            "DELETE",
            &format!("/v1/channels/{}", h.fx.instagram),
            &h.a.owner,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 200);
    age(h.fx.ig_conversation, 1).await;
    let r = h
        .call("POST", &ig, &h.a.agent, json!({"text": "Hola"}))
        .await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (409, json!("channel_inactive"))
    );
}
