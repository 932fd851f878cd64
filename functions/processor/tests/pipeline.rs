//! The reply pipeline end to end on real parts: Postgres (fresh database), SQS and Secrets
//! Manager on the emulator (from template.yaml), OpenAI and the Graph API as wiremock stubs.
//! The fault tests at the end arm the processor's crash points (`failpoints` feature) and
//! replay the delivery, as SQS would after a crash.

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::SqsMessage;
use local_aws::testing::{drain, emulator_sdk, fresh_stack, receive_records};
use processor::{Deps, GraphTokens, Processor, Tuning};
use serde_json::{json, Value};
use shared::db::testing::TestDb;
use shared::db::{agents, channels, conversations, credits, messages, statuses, tenants, TenantId};
use shared::envelope::Channel;
use shared::graph::GraphClient;
use shared::metrics::Metrics;
use shared::openai::{ClientSettings, ResponsesClient};
use shared::queue::{QueuePublisher, RetryPolicy};
use shared::secrets::SecretCache;
use wiremock::matchers::{body_string_contains, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const WA_A: &str = "106540352242922";
const WA_B: &str = "106540352240000";
const IG: &str = "17841400000000000";

struct Harness {
    t: TestDb,
    sdk: aws_config::SdkConfig,
    stack: local_aws::Stack,
    openai: MockServer,
    graph: MockServer,
    processor: Processor,
    tenant: TenantId,
}

/// Graph stub answering every send with a new wamid, as Meta does.
#[derive(Default)]
struct UniqueIds(std::sync::atomic::AtomicUsize);

impl wiremock::Respond for UniqueIds {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ResponseTemplate::new(200)
            .set_body_json(json!({"success": true, "messages": [{"id": format!("wamid.OUT{n}")}]}))
    }
}

fn ok_body(text: &str) -> Value {
    json!({"id": "resp_1", "status": "completed",
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
        "usage": {"input_tokens": 1000, "output_tokens": 500}})
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

/// A harness whose model client settings `tune` adjusts (breaker thresholds, timeouts).
async fn harness_with(tune: impl FnOnce(&mut ClientSettings)) -> Harness {
    let t = TestDb::new().await;
    let sdk = emulator_sdk().await;
    let (_, stack) = fresh_stack(&sdk).await;
    let openai = MockServer::start().await;
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex("^/fb/[0-9]+/messages$"))
        .respond_with(UniqueIds::default())
        .mount(&graph)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/ig/{IG}/messages")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"recipient_id": "1", "message_id": "mid.OUT"})),
        )
        .mount(&graph)
        .await;
    let db = &t.db;
    let tenant = tenants::create_tenant(db, "acme").await.unwrap();
    let agent = agents::create_agent(db, tenant, "sales", "gpt-test", "You sell flats. Be brief.")
        .await
        .unwrap();
    for (channel, id) in [
        (Channel::Whatsapp, WA_A),
        (Channel::Whatsapp, WA_B),
        (Channel::Instagram, IG),
    ] {
        channels::create_channel_account(db, tenant, channel, id, Some(agent), None)
            .await
            .unwrap();
    }
    // price: 2 credits per 1k input tokens, 4 per 1k output tokens
    t.db.client()
        .await
        .unwrap()
        .execute(
            "UPDATE agents SET price_input_per_1k = 2, price_output_per_1k = 4",
            &[],
        )
        .await
        .unwrap();
    credits::top_up(db, tenant, 1000, "top_up", None)
        .await
        .unwrap();

    let mut settings =
        ClientSettings::new(format!("{}/v1", openai.uri()), "sk-test".to_owned().into());
    settings.timeout = Duration::from_millis(500);
    settings.max_retries = 1;
    settings.min_backoff = Duration::from_millis(5);
    tune(&mut settings);
    let deps = Deps {
        db: shared::db::Db::new(shared::db::DbConfig::new(t.url.clone())),
        model: ResponsesClient::new(settings),
        // A send whose answer is slower than a second counts as unanswered (ambiguous).
        graph: GraphClient::with_http(
            shared::netguard::http_client(),
            format!("{}/fb", graph.uri()),
            format!("{}/ig", graph.uri()),
            Duration::from_secs(1),
        ),
        tokens: GraphTokens {
            secrets: SecretCache::new(
                aws_sdk_secretsmanager::Client::new(&sdk),
                Duration::from_secs(300),
            ),
            default: Some("EAAG-test".to_owned().into()),
            prefix: Some(format!("{}/channel/", stack.name)),
        },
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&sdk), RetryPolicy::default()),
        extraction_queue_url: stack.queue("ExtractionQueue").url.clone(),
        dead_letter_queue_url: stack.queue("InboundDLQ").url.clone(),
        inbound_queue_url: stack.queue("InboundQueue").url.clone(),
        max_retry_delay: std::time::Duration::from_secs(60),
        metrics: Metrics::silent("AiAgentTest", "processor"),
    };
    Harness {
        t,
        sdk,
        stack,
        openai,
        graph,
        // Short lease and echo window: a redelivery in these tests comes at once.
        processor: Processor::new(deps).with_tuning(Tuning {
            turn_lease: Duration::from_millis(300),
            echo_window: Duration::from_secs(2),
        }),
        tenant,
    }
}

/// An SQS record carrying the envelope of a WhatsApp text, as the webhook would have queued it.
fn wa_record(account: &str, contact: &str, wamid: &str, text: &str) -> SqsMessage {
    wa_record_at(account, contact, wamid, text, 1_767_225_600)
}

/// As [`wa_record`], sent at `ts` (Unix seconds, as WhatsApp gives it).
fn wa_record_at(account: &str, contact: &str, wamid: &str, text: &str, ts: i64) -> SqsMessage {
    let body = serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": account},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": contact}],
        "messages": [{"from": contact, "id": wamid, "timestamp": ts.to_string(), "type": "text", "text": {"body": text}}]}}]}]}))
    .unwrap();
    record_of(&body, "whatsapp", account)
}

fn ig_record(mid: &str, text: &str) -> SqsMessage {
    let body = serde_json::to_vec(
        &json!({"object": "instagram", "entry": [{"id": IG, "messaging": [{
        "sender": {"id": "6543"}, "recipient": {"id": IG}, "timestamp": 1767225599876_i64,
        "message": {"mid": mid, "text": text}}]}]}),
    )
    .unwrap();
    record_of(&body, "instagram", IG)
}

fn record_of(webhook: &[u8], channel: &str, account: &str) -> SqsMessage {
    let parsed = shared::meta::parse_webhook(webhook, "corr", 0).unwrap();
    let env = parsed.inbound.into_iter().next().unwrap();
    let mut m = SqsMessage::default();
    m.message_id = Some(format!("sqs-{}", env.provider_message_id));
    m.body = Some(serde_json::to_string(&env).unwrap());
    m.attributes
        .insert("MessageGroupId".into(), format!("{channel}:{account}"));
    m
}

impl Harness {
    /// A web chat site `site` on the tenant's agent, and the record of a visitor's `text` to
    /// it as the web chat function queues it.
    async fn webchat_record(&self, site: &str, text: &str) -> SqsMessage {
        let agent: uuid::Uuid = self
            .t
            .db
            .client()
            .await
            .unwrap()
            .query_one("SELECT id FROM agents", &[])
            .await
            .unwrap()
            .get(0);
        let none: Vec<String> = vec![];
        shared::db::webchat::create_site(
            &self.t.db,
            self.tenant,
            &shared::db::webchat::NewSite {
                site_key: site,
                agent_id: Some(agent),
                allowed_origins: &none,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let claims = shared::webchat::VisitorClaims {
            v: shared::webchat::TOKEN_VERSION,
            site: site.into(),
            vid: "visitor-1".into(),
            exp: i64::MAX,
            idn: None,
        };
        let env = shared::webchat::visitor_message(&claims, "c-1", text, 1_767_225_600_000, "corr")
            .unwrap();
        let out = shared::wire::inbound_message(env, shared::ordering::OrderingScope::Conversation);
        let mut record = SqsMessage::default();
        record.message_id = Some("sqs-wc-1".into());
        record.body = Some(out.body.clone());
        record
            .attributes
            .insert("MessageGroupId".into(), out.group_id.clone().unwrap());
        record
    }

    async fn run(&self, records: Vec<SqsMessage>) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        self.processor
            .handle_batch(records, deadline)
            .await
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    }

    async fn model_requests(&self) -> Vec<Value> {
        self.openai
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    /// Text bodies sent through the Graph API (mark-as-read calls excluded), in order.
    async fn sends(&self) -> Vec<String> {
        self.graph
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter_map(|r| {
                let v: Value = serde_json::from_slice(&r.body).ok()?;
                v["text"]["body"]
                    .as_str()
                    .or(v["message"]["text"].as_str())
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The recorded outcome of each inbound message, in arrival order.
    async fn outcomes(&self) -> Vec<Option<String>> {
        self.t
            .db
            .client()
            .await
            .unwrap()
            .query(
                "SELECT outcome FROM messages WHERE direction = 'in' ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    fn metric(&self, key: &str) -> f64 {
        self.processor.metrics().total(key)
    }

    async fn sql(&self, sql: &str) {
        self.t
            .db
            .client()
            .await
            .unwrap()
            .execute(sql, &[])
            .await
            .unwrap();
    }

    async fn count(&self, sql: &str) -> i64 {
        self.t
            .db
            .client()
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

async fn answer_with(server: &MockServer, text: &str) {
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body(text)))
        .mount(server)
        .await;
}

#[tokio::test]
async fn whatsapp_message_gets_one_reply_stored_and_charged() {
    let h = harness().await;
    answer_with(&h.openai, "The 2-bedroom starts at $900.").await;
    let failures = h
        .run(vec![wa_record(
            WA_A,
            "5215512345678",
            "wamid.1",
            "Price for the 2-bedroom?",
        )])
        .await;
    assert!(failures.is_empty());

    let reqs = h.model_requests().await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["instructions"], "You sell flats. Be brief.");
    assert_eq!(reqs[0]["model"], "gpt-test");
    assert!(reqs[0]["input"]
        .to_string()
        .contains("Price for the 2-bedroom?"));
    assert_eq!(
        reqs[0]["safety_identifier"].as_str().unwrap().len(),
        32,
        "hashed, not the phone"
    );
    assert!(!reqs[0].to_string().contains("5215512345678"));
    assert_eq!(h.sends().await, ["The 2-bedroom starts at $900."]);

    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'in'")
            .await,
        1
    );
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out' AND status = 'sent'")
            .await,
        1
    );
    // 1000 input tokens × 2/1k + 500 output × 4/1k = 4 credits.
    assert_eq!(
        credits::credit_state(&h.t.db, h.tenant).await.unwrap(),
        Some((996, 996))
    );
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
    assert_eq!(h.metric("MessagesProcessed"), 1.0);
    assert_eq!(h.metric("RepliesSent"), 1.0);
    assert_eq!(h.metric("InputTokens"), 1000.0);
    assert_eq!(h.metric("CreditsCharged"), 4.0);
    assert!(h.metric("ModelLatency") > 0.0);
    let jobs = drain(&h.sdk, &h.stack.queue("ExtractionQueue").url).await;
    assert_eq!(jobs.len(), 1, "one extraction job");
    // The contract the extraction function reads (functions/extraction `Job`).
    let job: Value = serde_json::from_str(&jobs[0].body).unwrap();
    let conversation: uuid::Uuid =
        h.t.db
            .client()
            .await
            .unwrap()
            .query_one("SELECT id FROM conversations", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(
        job,
        json!({"v": 1, "kind": "extract", "tenant_id": h.tenant.uuid().to_string(), "conversation_id": conversation.to_string()})
    );
}

#[tokio::test]
async fn instagram_message_gets_a_reply() {
    let h = harness().await;
    answer_with(&h.openai, "Desde $900.").await;
    assert!(h.run(vec![ig_record("mid.1", "Precio?")]).await.is_empty());
    assert_eq!(h.sends().await, ["Desde $900."]);
}

#[tokio::test]
async fn a_web_chat_message_is_answered_into_the_stored_conversation_without_graph() {
    let h = harness().await;
    answer_with(&h.openai, "¡Hola! Sí, tenemos.").await;
    let record = h.webchat_record("site_demo", "¿Tienen 2 recámaras?").await;
    assert!(h.run(vec![record]).await.is_empty());

    assert!(
        h.graph.received_requests().await.unwrap().is_empty(),
        "no Graph call, no token"
    );
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
    let row = h
        .t
        .db
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT provider_message_id, content->>'body', status, cost FROM messages WHERE direction = 'out'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, String>(0).starts_with("wc.out."));
    assert_eq!(row.get::<_, String>(1), "¡Hola! Sí, tenemos.");
    assert_eq!(row.get::<_, String>(2), "sent");
    assert!(
        row.get::<_, Option<i64>>(3).unwrap() > 0,
        "charged like any reply"
    );
}

#[tokio::test]
async fn a_duplicate_delivery_never_calls_the_model_or_sends_twice() {
    let h = harness().await;
    answer_with(&h.openai, "Hi!").await;
    let rec = wa_record(WA_A, "1", "wamid.dup", "hello");
    assert!(
        h.run(vec![rec.clone(), rec.clone()]).await.is_empty(),
        "same record twice in a batch"
    );
    assert!(
        h.run(vec![rec]).await.is_empty(),
        "and again after completion"
    );
    assert_eq!(h.model_requests().await.len(), 1);
    assert_eq!(h.sends().await.len(), 1);
}

#[tokio::test]
async fn a_burst_of_fragments_becomes_one_turn_and_one_reply() {
    let h = harness().await;
    answer_with(&h.openai, "Sure, from $900.").await;
    let batch = vec![
        wa_record(WA_A, "1", "wamid.b1", "hi"),
        wa_record(WA_A, "1", "wamid.b2", "I want the 2-bedroom"),
        wa_record(WA_A, "1", "wamid.b3", "how much?"),
    ];
    assert!(h.run(batch).await.is_empty());
    let reqs = h.model_requests().await;
    assert_eq!(reqs.len(), 1);
    let input = reqs[0]["input"].to_string();
    assert!(input.contains("hi") && input.contains("2-bedroom") && input.contains("how much?"));
    assert_eq!(h.sends().await.len(), 1);
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'in'")
            .await,
        3
    );
}

#[tokio::test]
async fn human_mode_and_exhausted_credits_store_without_calling_the_model() {
    let h = harness().await;
    answer_with(&h.openai, "unused").await;
    // Human mode on the conversation of contact "7".
    let route = channels::resolve_channel_account(&h.t.db, Channel::Whatsapp, WA_A)
        .await
        .unwrap()
        .unwrap();
    let contact = conversations::upsert_contact(
        &h.t.db,
        h.tenant,
        route.channel_account_id,
        "7",
        Some("7"),
        None,
        None,
    )
    .await
    .unwrap()
    .unwrap();
    let conv =
        conversations::conversation_for(&h.t.db, h.tenant, route.channel_account_id, contact)
            .await
            .unwrap()
            .unwrap();
    conversations::set_conversation_mode(&h.t.db, h.tenant, conv.id, "human")
        .await
        .unwrap();
    assert!(h
        .run(vec![wa_record(WA_A, "7", "wamid.h", "agent please")])
        .await
        .is_empty());
    assert!(h.model_requests().await.is_empty());
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'in'")
            .await,
        1
    );

    // No credits left: stored, no model call, acknowledged.
    credits::charge(&h.t.db, h.tenant, 1000, "test", None)
        .await
        .unwrap();
    assert!(h
        .run(vec![wa_record(WA_A, "8", "wamid.c", "hello?")])
        .await
        .is_empty());
    assert!(h.model_requests().await.is_empty());
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'in'")
            .await,
        2
    );
    assert!(h.sends().await.is_empty());
    assert_eq!(
        h.outcomes().await,
        [
            Some("human_mode".to_owned()),
            Some("credits_exhausted".to_owned())
        ]
    );
    assert_eq!(h.metric("CreditsExhausted"), 1.0);
}

#[tokio::test]
async fn a_model_timeout_returns_its_conversation_only_and_spares_the_rest() {
    let h = harness().await;
    Mock::given(method("POST"))
        .and(body_string_contains("slow question"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body("late"))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&h.openai)
        .await;
    answer_with(&h.openai, "fast answer").await;
    let batch = vec![
        wa_record(WA_A, "1", "wamid.a1", "slow question"),
        wa_record(WA_A, "2", "wamid.a2", "next in line"),
        wa_record(WA_B, "3", "wamid.b1", "other number"),
    ];
    let failures = h.run(batch).await;
    // Contact 2 shares group A but is another conversation: answered concurrently and
    // acknowledged (returning it would only spend one of its receives).
    assert_eq!(failures, ["sqs-wamid.a1"]);
    assert_eq!(h.sends().await, ["fast answer", "fast answer"]);
    // The failed record was released: its redelivery is processed normally. Were the
    // answered record delivered again (Meta or SQS repeating it), it is a duplicate.
    h.openai.reset().await;
    answer_with(&h.openai, "now on time").await;
    assert!(h
        .run(vec![
            wa_record(WA_A, "1", "wamid.a1", "slow question"),
            wa_record(WA_A, "2", "wamid.a2", "next in line"),
        ])
        .await
        .is_empty());
    assert_eq!(h.model_requests().await.len(), 1);
    assert_eq!(h.sends().await.len(), 3, "contact 2 was not answered twice");
    assert_eq!(h.processor.metrics().total("DuplicatesSkipped"), 1.0);
}

#[tokio::test]
async fn an_unparseable_record_is_parked_in_the_dlq_without_blocking_its_group() {
    let h = harness().await;
    answer_with(&h.openai, "ok").await;
    let mut bad = SqsMessage::default();
    bad.message_id = Some("sqs-bad".into());
    bad.body = Some("{not an envelope".into());
    bad.attributes
        .insert("MessageGroupId".into(), format!("whatsapp:{WA_A}"));
    let failures = h
        .run(vec![bad, wa_record(WA_A, "1", "wamid.after", "hello")])
        .await;
    assert!(failures.is_empty());
    assert_eq!(
        h.sends().await.len(),
        1,
        "the next record of the group was answered"
    );
    let parked = drain(&h.sdk, &h.stack.queue("InboundDLQ").url).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].body, "{not an envelope");
}

fn graph_error(code: i64) -> Value {
    json!({"error": {"message": format!("(#{code})"), "type": "OAuthException", "code": code}})
}

#[tokio::test]
async fn a_closed_window_131047_is_recorded_failed_and_does_not_block_the_group() {
    let h = harness().await;
    answer_with(&h.openai, "reply").await;
    Mock::given(method("POST"))
        .and(body_string_contains("\"type\":\"text\""))
        .and(body_string_contains("\"to\":\"1\""))
        .respond_with(ResponseTemplate::new(400).set_body_json(graph_error(131047)))
        .with_priority(1)
        .mount(&h.graph)
        .await;
    let failures = h
        .run(vec![
            wa_record(WA_A, "1", "wamid.w1", "late reply?"),
            wa_record(WA_A, "2", "wamid.w2", "hi"),
        ])
        .await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out' AND status = 'failed'")
            .await,
        1
    );
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out' AND status = 'sent'")
            .await,
        1
    );
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE (content->>'error_code')::int = 131047")
            .await,
        1
    );
    let mut outcomes = h.outcomes().await;
    outcomes.sort();
    assert_eq!(
        outcomes,
        [Some("replied".to_owned()), Some("send_failed".to_owned())]
    );
    assert_eq!(h.metric("SendFailures.ErrorCode=131047"), 1.0);
}

#[tokio::test]
async fn a_graph_5xx_is_retried_through_sqs() {
    let h = harness().await;
    answer_with(&h.openai, "reply").await;
    // Meta's own 5xx carries an error code: an answer, so nothing was sent.
    Mock::given(method("POST"))
        .and(body_string_contains("\"type\":\"text\""))
        .respond_with(ResponseTemplate::new(503).set_body_json(graph_error(131000)))
        .with_priority(1)
        .mount(&h.graph)
        .await;
    let failures = h.run(vec![wa_record(WA_A, "1", "wamid.g1", "hello")]).await;
    assert_eq!(failures, ["sqs-wamid.g1"]);
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out'")
            .await,
        0,
        "nothing recorded as sent"
    );
}

/// Meta's "not now" (a 5xx with its error code: nothing was sent) is tried again within the
/// invocation, so one refusal costs a pause, not a redelivery of the lane.
#[tokio::test]
async fn a_refused_send_is_tried_again_in_the_same_invocation() {
    let h = harness().await;
    answer_with(&h.openai, "reply").await;
    Mock::given(method("POST"))
        // The reply itself (the mark-as-read request carries a typing indicator of type text).
        .and(body_string_contains("\"body\":\"reply\""))
        .respond_with(ResponseTemplate::new(503).set_body_json(graph_error(131000)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.graph)
        .await;
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.g2", "hello")])
        .await
        .is_empty());
    assert_eq!(
        h.sends().await,
        ["reply", "reply"],
        "refused once, then taken"
    );
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out'")
            .await,
        1
    );
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
}

#[tokio::test]
async fn insufficient_quota_is_permanent_and_parked_not_retried() {
    let h = harness().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"error": {
            "message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}})))
        .mount(&h.openai)
        .await;
    let failures = h.run(vec![wa_record(WA_A, "1", "wamid.q1", "hello")]).await;
    assert!(failures.is_empty());
    assert_eq!(h.model_requests().await.len(), 1, "not retried");
    assert!(h.sends().await.is_empty());
    assert_eq!(
        drain(&h.sdk, &h.stack.queue("InboundDLQ").url).await.len(),
        1,
        "parked for a redrive"
    );
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'in'")
            .await,
        1,
        "the message is kept"
    );
    assert_eq!(h.outcomes().await, [Some("model_rejected".to_owned())]);
    assert_eq!(h.metric("RecordsParked"), 1.0);
}

#[tokio::test]
async fn an_expired_previous_response_id_falls_back_to_the_stored_history() {
    let h = harness().await;
    answer_with(&h.openai, "first answer").await;
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.p1", "first question")])
        .await
        .is_empty());
    // The chained id has expired on the OpenAI side.
    Mock::given(method("POST"))
        .and(body_string_contains("\"previous_response_id\":\"resp_1\""))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {
            "message": "not found", "type": "invalid_request_error", "param": "previous_response_id",
            "code": "previous_response_not_found"}})))
        .with_priority(1)
        .mount(&h.openai)
        .await;
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.p2", "second question")])
        .await
        .is_empty());
    let reqs = h.model_requests().await;
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[1]["previous_response_id"], "resp_1");
    assert!(reqs[2].get("previous_response_id").is_none());
    let history = reqs[2]["input"].to_string();
    assert!(
        history.contains("first question")
            && history.contains("first answer")
            && history.contains("second question")
    );
    assert_eq!(h.sends().await.len(), 2);
}

#[tokio::test]
async fn a_10000_character_reply_is_sent_in_order_in_channel_sized_parts() {
    let h = harness().await;
    let long: String = (0..10)
        .map(|i| format!("Section {i}. {}\n\n", "detail ".repeat(140)))
        .collect();
    assert!(long.chars().count() >= 9_900);
    answer_with(&h.openai, &long).await;
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.l1", "tell me everything")])
        .await
        .is_empty());
    let sent = h.sends().await;
    assert!(sent.len() >= 3);
    assert!(sent.iter().all(|p| p.chars().count() <= 4096));
    assert!(sent[0].starts_with("Section 0.") && sent.last().unwrap().contains("Section 9."));
    let joined: Vec<&str> = sent.iter().flat_map(|p| p.split_whitespace()).collect();
    assert_eq!(joined, long.split_whitespace().collect::<Vec<_>>());
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out'")
            .await,
        sent.len() as i64
    );
}

#[tokio::test]
async fn a_reply_that_cannot_be_recorded_is_never_sent_twice() {
    let h = harness().await;
    answer_with(&h.openai, "sent once").await;
    // The provider answers with an id that collides with a stored message, so the reply's
    // database write fails after the send went out.
    Mock::given(method("POST"))
        .and(body_string_contains("\"type\":\"text\""))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"messages": [{"id": "wamid.r1"}]})),
        )
        .with_priority(1)
        .mount(&h.graph)
        .await;
    let rec = wa_record(WA_A, "1", "wamid.r1", "hello");
    assert!(h.run(vec![rec.clone()]).await.is_empty());
    assert!(h.run(vec![rec]).await.is_empty());
    assert_eq!(h.sends().await, ["sent once"]);
    assert_eq!(h.model_requests().await.len(), 1);
}

#[tokio::test]
async fn two_conversations_of_one_number_run_concurrently_each_in_its_own_order() {
    let h = harness_with(|s| s.timeout = Duration::from_secs(10)).await;
    // Contact 1's model call is slow; contact 2's is not. If the two conversations ran one
    // after the other, contact 1's reply would be sent first (it comes first in the batch).
    Mock::given(method("POST"))
        .and(body_string_contains("c1 first"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body("for c1"))
                .set_delay(Duration::from_millis(1500)),
        )
        .with_priority(1)
        .mount(&h.openai)
        .await;
    answer_with(&h.openai, "for c2").await;
    // Contact 1's messages reached the queue out of order (two webhooks overtaking).
    let batch = vec![
        wa_record_at(WA_A, "1", "wamid.c1b", "c1 second", 1_767_225_602),
        wa_record_at(WA_A, "2", "wamid.c2a", "c2 only", 1_767_225_601),
        wa_record_at(WA_A, "1", "wamid.c1a", "c1 first", 1_767_225_601),
    ];
    assert!(h.run(batch).await.is_empty());
    assert_eq!(h.sends().await, ["for c2", "for c1"]);
    let reqs = h.model_requests().await;
    assert_eq!(reqs.len(), 2, "one turn per conversation");
    let c1 = reqs
        .iter()
        .map(|r| r["input"].to_string())
        .find(|i| i.contains("c1 first"))
        .unwrap();
    assert!(
        c1.find("c1 first").unwrap() < c1.find("c1 second").unwrap(),
        "provider timestamp order: {c1}"
    );
    assert!(!c1.contains("c2 only"), "conversations never mix");
}

#[tokio::test]
async fn the_circuit_breaker_fails_fast_while_open_and_recovers() {
    let h = harness_with(|s| {
        s.breaker_threshold = 2;
        s.breaker_cool_down = Duration::from_millis(300);
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&h.openai)
        .await;
    // Two failed attempts (first try + one retry) open the breaker.
    let failures = h.run(vec![wa_record(WA_A, "1", "wamid.k1", "hello")]).await;
    assert_eq!(failures, ["sqs-wamid.k1"]);
    assert_eq!(h.model_requests().await.len(), 2);
    // Open: the next message fails at once without reaching the upstream.
    let failures = h.run(vec![wa_record(WA_B, "2", "wamid.k2", "hi")]).await;
    assert_eq!(failures, ["sqs-wamid.k2"]);
    assert_eq!(h.model_requests().await.len(), 2, "no call while open");
    // The upstream is back; after the cool-down a trial call closes the breaker.
    h.openai.reset().await;
    answer_with(&h.openai, "back").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.k1", "hello")])
        .await
        .is_empty());
    assert!(h
        .run(vec![wa_record(WA_B, "2", "wamid.k2", "hi")])
        .await
        .is_empty());
    assert_eq!(h.sends().await, ["back", "back"]);
    assert_eq!(h.metric("ModelFailures"), 2.0);
}

#[tokio::test]
async fn the_no_credits_fallback_is_sent_once_per_episode() {
    let h = harness().await;
    h.sql("UPDATE agents SET fallback_no_credits = 'We will answer shortly.', min_balance = 10")
        .await;
    credits::charge(&h.t.db, h.tenant, 995, "test", None)
        .await
        .unwrap();
    answer_with(&h.openai, "unused").await;
    for (i, text) in ["hello?", "anyone?"].iter().enumerate() {
        assert!(h
            .run(vec![wa_record(WA_A, "1", &format!("wamid.n{i}"), text)])
            .await
            .is_empty());
    }
    assert!(h.model_requests().await.is_empty());
    assert_eq!(h.sends().await, ["We will answer shortly."]);
    assert_eq!(
        h.outcomes().await,
        [
            Some("credits_exhausted".to_owned()),
            Some("credits_exhausted".to_owned())
        ]
    );
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE content->>'fallback' = 'no_credits' AND status = 'sent'")
            .await,
        1
    );
    assert_eq!(
        credits::credit_state(&h.t.db, h.tenant).await.unwrap(),
        Some((5, 5)),
        "a fallback costs nothing"
    );
    assert_eq!(h.metric("CreditsExhausted"), 2.0);
    assert_eq!(h.metric("FallbacksSent"), 1.0);
}

#[tokio::test]
async fn each_account_uses_its_own_token_secret_and_never_another_accounts() {
    let h = harness().await;
    answer_with(&h.openai, "hi").await;
    let secret = format!("{}/channel/{WA_B}", h.stack.name);
    aws_sdk_secretsmanager::Client::new(&h.sdk)
        .create_secret()
        .name(&secret)
        .secret_string(r#"{"access_token":"EAAG-account-b"}"#)
        .send()
        .await
        .unwrap();
    h.sql(&format!(
        "UPDATE channel_accounts SET access_token_secret = '{secret}' WHERE provider_account_id IN ('{WA_B}', '{IG}')"
    ))
    .await;
    assert!(h
        .run(vec![
            wa_record(WA_A, "1", "wamid.t1", "hello"),
            wa_record(WA_B, "2", "wamid.t2", "hello"),
            ig_record("mid.t3", "hello"),
        ])
        .await
        .is_empty());
    let auth: Vec<(String, String)> = h
        .graph
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            v["text"]["body"].is_string() || v["message"]["text"].is_string()
        })
        .map(|r| {
            (
                r.url.path().to_owned(),
                r.headers["authorization"].to_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(auth.contains(&(format!("/fb/{WA_A}/messages"), "Bearer EAAG-test".into())));
    assert!(auth.contains(&(
        format!("/fb/{WA_B}/messages"),
        "Bearer EAAG-account-b".into()
    )));
    assert_eq!(auth.len(), 2, "the IG account may not borrow WA_B's token");
    let mut outcomes = h.outcomes().await;
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            Some("no_token".to_owned()),
            Some("replied".to_owned()),
            Some("replied".to_owned())
        ]
    );
    assert_eq!(
        drain(&h.sdk, &h.stack.queue("InboundDLQ").url).await.len(),
        1,
        "parked until the account's token is fixed"
    );
}

#[tokio::test]
async fn a_missing_token_secret_is_recorded_and_parked_not_retried() {
    let h = harness().await;
    answer_with(&h.openai, "hi").await;
    h.sql(&format!(
        "UPDATE channel_accounts SET access_token_secret = '{}/channel/{IG}' WHERE provider_account_id = '{IG}'",
        h.stack.name
    ))
    .await;
    assert!(h.run(vec![ig_record("mid.m1", "hello")]).await.is_empty());
    assert!(
        h.model_requests().await.is_empty(),
        "no model call without a way to answer"
    );
    assert_eq!(h.outcomes().await, [Some("no_token".to_owned())]);
    assert_eq!(
        drain(&h.sdk, &h.stack.queue("InboundDLQ").url).await.len(),
        1
    );
}

#[tokio::test]
async fn an_unreadable_record_is_parked_alone_and_its_conversation_still_answered() {
    let h = harness().await;
    answer_with(&h.openai, "answered").await;
    let mut bad = wa_record(WA_A, "1", "wamid.v1", "from the future");
    let mut body: Value = serde_json::from_str(bad.body.as_deref().unwrap()).unwrap();
    body["v"] = json!(9);
    bad.body = Some(body.to_string());
    let failures = h
        .run(vec![bad, wa_record(WA_A, "1", "wamid.v2", "hello")])
        .await;
    assert!(failures.is_empty());
    assert_eq!(h.sends().await, ["answered"]);
    let parked = drain(&h.sdk, &h.stack.queue("InboundDLQ").url).await;
    assert_eq!(parked.len(), 1);
    assert!(parked[0].body.contains("\"v\":9"));
}

#[tokio::test]
async fn a_fallback_that_could_not_be_delivered_is_tried_again() {
    let h = harness().await;
    h.sql("UPDATE agents SET fallback_no_credits = 'Back soon.'")
        .await;
    credits::charge(&h.t.db, h.tenant, 1000, "test", None)
        .await
        .unwrap();
    Mock::given(method("POST"))
        .and(body_string_contains("Back soon."))
        .respond_with(ResponseTemplate::new(400).set_body_json(graph_error(131047)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.graph)
        .await;
    for i in 0..2 {
        assert!(h
            .run(vec![wa_record(WA_A, "1", &format!("wamid.f{i}"), "hello?")])
            .await
            .is_empty());
    }
    assert_eq!(h.sends().await, ["Back soon.", "Back soon."]);
    assert_eq!(h.metric("FallbacksSent"), 1.0, "only the second went out");
}

#[tokio::test]
async fn the_template_environment_configures_the_processor_from_its_secrets() {
    let sdk = emulator_sdk().await;
    let (template, stack) = fresh_stack(&sdk).await;
    let env = stack.function_env(&template, "ProcessorFunction").unwrap();
    let config =
        processor::Config::from_reader(shared::config::EnvReader::new(|k| env.get(k).cloned()))
            .expect("the template's environment is a valid configuration");
    assert_eq!(
        config.extraction_queue_url,
        stack.queue("ExtractionQueue").url
    );
    assert_eq!(config.dead_letter_queue_url, stack.queue("InboundDLQ").url);
    let secrets = SecretCache::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        Duration::from_secs(300),
    );
    // As deployed: the secrets exist but hold no values yet.
    let err = config.model.key(&secrets).await.err().unwrap();
    assert!(err.to_string().contains("openai_api_key"), "{err}");
    // The operator fills them in.
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    for (id, value) in [
        (
            "AppSecret",
            json!({"meta_app_secret": "a", "meta_verify_token": "v", "openai_api_key": "sk-live", "graph_access_token": ""}),
        ),
        (
            "DatabaseSecret",
            json!({"url": "postgres://u:p@db:5432/agent?sslmode=require"}),
        ),
    ] {
        sm.put_secret_value()
            .secret_id(&stack.secrets[id].arn)
            .secret_string(value.to_string())
            .send()
            .await
            .unwrap();
    }
    let fresh = SecretCache::new(sm, Duration::from_secs(300));
    use secrecy::ExposeSecret;
    assert_eq!(
        config.model.key(&fresh).await.unwrap().expose_secret(),
        "sk-live"
    );
    assert!(config
        .database
        .resolve(&fresh)
        .await
        .unwrap()
        .expose_secret()
        .starts_with("postgres://u:p@db"));
    let tokens = config.graph.tokens(fresh).await.unwrap();
    assert!(tokens.default.is_none(), "empty means unset");
}

/// `events/sqs-inbound.json` as the code makes it: the SQS event Lambda would deliver for the
/// message the webhook queues from `events/wa-text.json`.
fn sqs_inbound_event() -> Value {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events");
    let http: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/wa-text.json")).unwrap())
            .unwrap();
    let parsed = shared::meta::parse_webhook(
        http["body"].as_str().unwrap().as_bytes(),
        "3f1c2a9e-5b7d-4e21-9c0a-7d4b8e6f1a20",
        1_767_225_600_500,
    )
    .unwrap();
    let env = parsed.inbound.into_iter().next().unwrap();
    let out = shared::wire::inbound_message(env, shared::ordering::OrderingScope::default());
    let attributes: serde_json::Map<String, Value> = out
        .attributes
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!({"stringValue": v, "dataType": "String", "stringListValues": [], "binaryListValues": []})))
        .collect();
    json!({"Records": [{
        "messageId": "0f5c8f7e-3c1a-4b5e-9a57-2f0e6d1c9b11",
        "receiptHandle": "AQEB-local-sample-receipt-handle",
        "body": out.body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1767225600600",
            "SequenceNumber": "18890000000000000001",
            "MessageGroupId": out.group_id,
            "SenderId": "AROAEXAMPLE:webhook",
            "MessageDeduplicationId": out.dedup_id,
            "ApproximateFirstReceiveTimestamp": "1767225600700"
        },
        "messageAttributes": attributes,
        "md5OfBody": shared::digest::sha256_hex(b"not checked by the processor")[..32],
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:agent-local-inbound.fifo",
        "awsRegion": "us-east-1"
    }]})
}

#[test]
fn events_sqs_inbound_json_is_what_the_webhook_queues_for_wa_text() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/sqs-inbound.json");
    let expected = sqs_inbound_event();
    if std::env::var_os("UPDATE_EVENTS").is_some() {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&expected).unwrap() + "\n",
        )
        .unwrap();
    }
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        on_disk, expected,
        "events/sqs-inbound.json is stale: regenerate with UPDATE_EVENTS=1 cargo test -p processor events_sqs"
    );
}

#[tokio::test]
async fn the_processor_answers_the_sample_sqs_event() {
    let h = harness().await;
    answer_with(&h.openai, "¡Hola Ana! Te envío la cotización.").await;
    let event: aws_lambda_events::sqs::SqsEvent =
        serde_json::from_value(sqs_inbound_event()).unwrap();
    assert!(h.run(event.records.clone()).await.is_empty());
    assert_eq!(h.sends().await, ["¡Hola Ana! Te envío la cotización."]);
    let to: Vec<String> = h
        .graph
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| {
            serde_json::from_slice::<Value>(&r.body).ok()?["to"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(to, ["5215512345678"]);
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
    // Invoking with the same event again is a duplicate delivery.
    assert!(h.run(event.records).await.is_empty());
    assert_eq!(h.sends().await.len(), 1);
}

#[tokio::test]
async fn an_openai_500_then_200_gives_exactly_one_reply() {
    let h = harness().await;
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.openai)
        .await;
    answer_with(&h.openai, "after a hiccup").await;
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.h1", "hello")])
        .await
        .is_empty());
    assert_eq!(
        h.model_requests().await.len(),
        2,
        "retried once inside the client"
    );
    assert_eq!(h.sends().await, ["after a hiccup"]);
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_status_that_overtook_the_reply_is_applied_when_the_reply_is_recorded() {
    let h = harness().await;
    answer_with(&h.openai, "hi").await;
    let route = channels::resolve_channel_account(&h.t.db, Channel::Whatsapp, WA_A)
        .await
        .unwrap()
        .unwrap();
    // The Graph stub numbers its answers from 0 (the mark-as-read call takes 0, the reply 1):
    // Meta's `delivered` for the reply arrives before the reply is recorded.
    assert_eq!(
        statuses::apply_status(
            &h.t.db,
            h.tenant,
            route.channel_account_id,
            "wamid.OUT1",
            shared::envelope::DeliveryState::Delivered,
            None,
            false
        )
        .await
        .unwrap(),
        statuses::StatusApplied::Pending
    );
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.s1", "hello")])
        .await
        .is_empty());
    assert_eq!(
        messages::message_status(&h.t.db, h.tenant, route.channel_account_id, "wamid.OUT1")
            .await
            .unwrap()
            .unwrap()
            .0,
        "delivered"
    );
    assert_eq!(h.count("SELECT count(*) FROM pending_statuses").await, 0);
}

// ---- The turn engine under faults: crashes, ambiguous sends, non-answers, order, handoff.

impl Harness {
    /// The conversation's open turn id (the one a crash left).
    async fn open_turn(&self) -> uuid::Uuid {
        self.t
            .db
            .client()
            .await
            .unwrap()
            .query_one("SELECT id FROM turns WHERE phase <> 'done'", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// What the status function stores for a status WhatsApp sent before its message was
    /// recorded, echoing the send's tag.
    async fn echo(&self, account: &str, wamid: &str, tag: &str) {
        let route = channels::resolve_channel_account(&self.t.db, Channel::Whatsapp, account)
            .await
            .unwrap()
            .unwrap();
        statuses::apply_status_tagged(
            &self.t.db,
            self.tenant,
            route.channel_account_id,
            wamid,
            shared::envelope::DeliveryState::Sent,
            None,
            false,
            Some(tag),
        )
        .await
        .unwrap();
    }

    async fn ledger_replies(&self) -> i64 {
        self.count("SELECT count(*) FROM credit_ledger WHERE reason = 'reply'")
            .await
    }

    /// Runs the batch until nothing is returned (a redelivery each time, after the short
    /// lease), at most `n` times; returns how many runs it took.
    async fn run_until_done(&self, records: Vec<SqsMessage>, n: usize) -> usize {
        for i in 1..=n {
            if self.run(records.clone()).await.is_empty() {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(350)).await;
        }
        panic!("still failing after {n} deliveries");
    }
}

#[tokio::test]
async fn an_echo_that_came_while_the_turn_waited_past_its_window_stops_the_resend() {
    // Found by the fault harness: the process died after the send, the status echo arrived at
    // once, but the redelivery came after the echo window and resent without looking.
    let h = harness().await;
    answer_with(&h.openai, "Solo una vez.").await;
    h.processor.crash_points().arm("after_send", 1);
    let rec = wa_record(WA_A, "1", "wamid.late", "hola");
    assert!(!h.run(vec![rec.clone()]).await.is_empty());
    let tag = format!("t:{}:0:1", h.open_turn().await);
    h.echo(WA_A, "wamid.OUT0", &tag).await;
    // The lease (300 ms) and the echo window (2 s) both pass before the redelivery.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    h.run_until_done(vec![rec], 5).await;
    assert_eq!(h.sends().await.len(), 1, "not sent a second time");
    assert_eq!(h.metric("SendResends"), 0.0);
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
}

#[tokio::test]
async fn a_crash_at_any_point_of_a_turn_never_replies_or_charges_twice() {
    for point in processor::crash::POINTS {
        let h = harness().await;
        answer_with(&h.openai, "Una sola vez.").await;
        h.processor.crash_points().arm(point, 1);
        let rec = wa_record(WA_A, "1", "wamid.crash", "hola");
        assert_eq!(
            h.run(vec![rec.clone()]).await,
            ["sqs-wamid.crash"],
            "{point}"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        if *point == "after_send" {
            // The send was written and its answer lost with the process: resolved from the
            // status echo, never sent blind.
            assert!(
                !h.run(vec![rec.clone()]).await.is_empty(),
                "waits for the echo"
            );
            let tag = format!("t:{}:0:1", h.open_turn().await);
            h.echo(WA_A, "wamid.OUT0", &tag).await;
        }
        // A crash before the request leaves the same doubt as one after it: the redelivery
        // waits out the echo window, then sends (the only request that reached Meta).
        h.run_until_done(vec![rec.clone()], 20).await;
        // And once more, as a late duplicate delivery.
        assert!(h.run(vec![rec]).await.is_empty());
        assert_eq!(h.sends().await, ["Una sola vez."], "{point}");
        assert_eq!(h.model_requests().await.len(), 1, "{point}: one model call");
        assert_eq!(h.ledger_replies().await, 1, "{point}: one charge");
        assert_eq!(h.outcomes().await, [Some("replied".to_owned())], "{point}");
        assert_eq!(
            h.count("SELECT count(*) FROM messages WHERE direction = 'out'")
                .await,
            1,
            "{point}"
        );
        assert_eq!(
            h.count("SELECT held FROM credit_accounts").await,
            0,
            "{point}: hold released"
        );
    }
}

#[tokio::test]
async fn an_ambiguous_whatsapp_send_is_resolved_by_its_echo_not_repeated() {
    let h = harness().await;
    answer_with(&h.openai, "¿Me escuchas?").await;
    // Meta takes the message but the answer never arrives in time.
    Mock::given(method("POST"))
        .and(body_string_contains("preview_url"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"messages": [{"id": "wamid.SLOW"}]}))
                .set_delay(Duration::from_secs(15)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.graph)
        .await;
    let rec = wa_record(WA_A, "1", "wamid.amb", "hola");
    assert!(!h.run(vec![rec.clone()]).await.is_empty());
    assert_eq!(h.metric("SendsAmbiguous"), 1.0);
    let tag = format!("t:{}:0:1", h.open_turn().await);
    h.echo(WA_A, "wamid.SLOW", &tag).await;
    h.run_until_done(vec![rec], 3).await;
    assert_eq!(h.sends().await.len(), 1, "not sent a second time");
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE provider_message_id = 'wamid.SLOW' AND status = 'sent'")
            .await,
        1,
        "recorded under the echoed id"
    );
    assert_eq!(h.metric("SendsResolvedByEcho"), 1.0);
}

#[tokio::test]
async fn a_bare_gateway_5xx_is_ambiguous_and_resolved_by_its_echo() {
    let h = harness().await;
    answer_with(&h.openai, "¿Me escuchas?").await;
    // A 502 without Meta's error body: something in between failed, perhaps after Meta
    // took the message. Retrying it as "not sent" would duplicate the reply.
    Mock::given(method("POST"))
        .and(body_string_contains("preview_url"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.graph)
        .await;
    let rec = wa_record(WA_A, "1", "wamid.gw", "hola");
    assert!(!h.run(vec![rec.clone()]).await.is_empty());
    assert_eq!(h.metric("SendsAmbiguous"), 1.0);
    let tag = format!("t:{}:0:1", h.open_turn().await);
    h.echo(WA_A, "wamid.GW", &tag).await;
    h.run_until_done(vec![rec], 3).await;
    assert_eq!(h.sends().await.len(), 1, "not sent a second time");
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
}

#[tokio::test]
async fn without_an_echo_a_whatsapp_part_is_sent_once_more_then_given_up() {
    let h = harness().await;
    answer_with(&h.openai, "¿Hola?").await;
    Mock::given(method("POST"))
        .and(body_string_contains("preview_url"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"messages": [{"id": "wamid.X"}]}))
                .set_delay(Duration::from_secs(15)),
        )
        .with_priority(1)
        .mount(&h.graph)
        .await;
    let rec = wa_record(WA_A, "1", "wamid.noecho", "hola");
    h.run_until_done(vec![rec], 40).await;
    let tags: Vec<String> = h
        .graph
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_slice(&r.body).ok()?;
            v["biz_opaque_callback_data"].as_str().map(str::to_owned)
        })
        .collect();
    assert_eq!(tags.len(), 2, "the first send and one resend: {tags:?}");
    assert!(tags[0].ends_with(":0:1") && tags[1].ends_with(":0:2"));
    assert_eq!(h.outcomes().await, [Some("send_unknown".to_owned())]);
    assert_eq!(h.metric("SendResends"), 1.0);
    assert_eq!(h.metric("SendsUnknown"), 1.0);
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out' AND status = 'pending' AND content->>'delivery' = 'unknown'")
            .await,
        1,
        "the doubt is on the message"
    );
}

#[tokio::test]
async fn an_ambiguous_instagram_send_is_marked_unknown_and_never_repeated() {
    let h = harness().await;
    answer_with(&h.openai, "Hola desde IG").await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"message_id": "mid.X"}))
                .set_delay(Duration::from_secs(15)),
        )
        .with_priority(1)
        .mount(&h.graph)
        .await;
    let rec = ig_record("mid.in.amb", "hola");
    h.run_until_done(vec![rec], 3).await;
    assert_eq!(h.sends().await.len(), 1);
    assert_eq!(h.outcomes().await, [Some("send_unknown".to_owned())]);
    assert_eq!(h.metric("SendsUnknown"), 1.0);
}

#[tokio::test]
async fn an_empty_answer_is_asked_once_more_then_falls_back_and_is_never_replied() {
    let h = harness().await;
    h.sql("UPDATE agents SET fallback_error = 'Un momento, por favor.', max_output_tokens = 300")
        .await;
    // A reasoning model that spent its budget thinking: no visible text, tokens billed.
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "resp_e", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
            "output": [{"type": "reasoning", "summary": []}],
            "usage": {"input_tokens": 1000, "output_tokens": 300}})))
        .mount(&h.openai)
        .await;
    let rec = wa_record(WA_A, "1", "wamid.empty", "hola");
    assert!(h.run(vec![rec]).await.is_empty());
    let reqs = h.model_requests().await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0]["max_output_tokens"], 300);
    assert_eq!(
        reqs[1]["max_output_tokens"], 600,
        "a larger budget the second time"
    );
    assert_eq!(h.sends().await, ["Un momento, por favor."]);
    assert_eq!(h.outcomes().await, [Some("no_answer".to_owned())]);
    assert_eq!(h.metric("RepliesSent"), 0.0);
    assert_eq!(
        h.count("SELECT count(*) FROM credit_ledger WHERE reason = 'reply' AND delta < 0")
            .await,
        1,
        "the billed tokens are charged"
    );
}

#[tokio::test]
async fn older_unanswered_messages_are_covered_in_order_by_the_next_turn() {
    let h = harness().await;
    // Messages 1–3 are stored, but their turn never got an answer (the model was down).
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&h.openai)
        .await;
    answer_with(&h.openai, "Respuesta a todo").await;
    let first: Vec<SqsMessage> = (1..=3)
        .map(|i| {
            wa_record_at(
                WA_A,
                "1",
                &format!("wamid.o{i}"),
                &format!("parte {i}"),
                1_767_225_600 + i,
            )
        })
        .collect();
    assert!(!h.run(first).await.is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    // The emulator hands the 4th back first: the turn covers 1–4, in order, once.
    assert!(h
        .run(vec![wa_record_at(
            WA_A,
            "1",
            "wamid.o4",
            "parte 4",
            1_767_225_700
        )])
        .await
        .is_empty());
    let reqs = h.model_requests().await;
    let last = reqs.last().unwrap()["input"].to_string();
    let at = |s: &str| last.find(s).unwrap_or_else(|| panic!("{s} not in {last}"));
    assert!(
        at("parte 1") < at("parte 2")
            && at("parte 2") < at("parte 3")
            && at("parte 3") < at("parte 4")
    );
    assert_eq!(h.sends().await, ["Respuesta a todo"]);
    assert_eq!(h.outcomes().await, vec![Some("replied".to_owned()); 4]);
    assert_eq!(
        h.count("SELECT count(DISTINCT turn_id) FROM messages WHERE direction = 'in'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_handoff_during_the_model_call_stops_the_reply() {
    let h = harness_with(|s| s.timeout = Duration::from_secs(10)).await;
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body("too late"))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&h.openai)
        .await;
    let db = shared::db::Db::new(shared::db::DbConfig::new(h.t.url.clone()));
    let tenant = h.tenant;
    let handoff = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let c = db.client().await.unwrap();
        c.execute("UPDATE conversations SET mode = 'human'", &[])
            .await
            .unwrap();
        let _ = tenant;
    });
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.ho", "hola")])
        .await
        .is_empty());
    handoff.await.unwrap();
    assert!(h.sends().await.is_empty(), "no reply after the handoff");
    assert_eq!(h.outcomes().await, [Some("human_mode".to_owned())]);
    assert_eq!(
        h.ledger_replies().await,
        1,
        "the model's tokens are still charged"
    );
}

#[tokio::test]
async fn an_answer_left_unsent_through_a_handoff_and_back_is_never_sent() {
    // The delivery died with the answer stored; before it came again an operator took the
    // conversation over and handed it back. The answer predates what the operator said: it
    // is dropped (its tokens charged), and the next customer message gets a turn of its own.
    let h = harness().await;
    answer_with(&h.openai, "Respuesta de antes.").await;
    h.processor.crash_points().arm("after_model", 1);
    let rec = wa_record(WA_A, "1", "wamid.before", "hola");
    assert!(!h.run(vec![rec.clone()]).await.is_empty());
    h.sql("UPDATE conversations SET mode = 'human', mode_changed_at = now()")
        .await;
    h.sql("UPDATE conversations SET mode = 'ai', mode_changed_at = now()")
        .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    h.run_until_done(vec![rec], 3).await;
    assert!(h.sends().await.is_empty(), "the old answer is not sent");
    assert_eq!(h.outcomes().await, [Some("human_mode".to_owned())]);
    assert_eq!(h.ledger_replies().await, 1, "its tokens are charged");

    h.openai.reset().await;
    answer_with(&h.openai, "Respuesta de ahora.").await;
    assert!(h
        .run(vec![wa_record(WA_A, "1", "wamid.after", "¿siguen ahí?")])
        .await
        .is_empty());
    assert_eq!(h.sends().await, ["Respuesta de ahora."]);
    assert_eq!(
        h.outcomes().await,
        [Some("human_mode".to_owned()), Some("replied".to_owned())]
    );
}

#[tokio::test]
async fn a_web_chat_reply_is_not_lost_when_its_record_fails() {
    let h = harness().await;
    answer_with(&h.openai, "Hola visitante").await;
    let rec = h.webchat_record("site_rec", "hola").await;
    h.processor.crash_points().arm("before_record", 1);
    assert!(!h.run(vec![rec.clone()]).await.is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    h.run_until_done(vec![rec], 3).await;
    assert_eq!(
        h.count("SELECT count(*) FROM messages WHERE direction = 'out' AND content->>'body' = 'Hola visitante'")
            .await,
        1
    );
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
}

#[tokio::test]
async fn a_retried_record_comes_back_after_the_engines_delay_not_the_visibility_timeout() {
    let h = harness().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&h.openai)
        .await;
    // A real record from the emulator's queue, with a real receipt handle.
    let queue = h.stack.queue("InboundQueue").url.clone();
    let sqs = aws_sdk_sqs::Client::new(&h.sdk);
    let rec = wa_record(WA_A, "1", "wamid.vis", "hola");
    sqs.send_message()
        .queue_url(&queue)
        .message_body(rec.body.clone().unwrap())
        .message_group_id(format!("whatsapp:{WA_A}"))
        .message_deduplication_id("wamid.vis")
        .send()
        .await
        .unwrap();
    let got = receive_records(&h.sdk, &queue).await;
    assert_eq!(got.len(), 1);
    let m = got[0].clone();
    assert_eq!(m.attributes["ApproximateReceiveCount"], "1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = h.processor.handle_batch(vec![m], deadline).await;
    assert_eq!(failed.batch_item_failures.len(), 1);
    assert_eq!(h.metric("RetryDelaysSet"), 1.0);
    // The queue's visibility timeout is minutes; the first retry delay is 1–2 s.
    let started = Instant::now();
    let mut back = Vec::new();
    while back.is_empty() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        back = receive_records(&h.sdk, &queue).await;
    }
    assert_eq!(back.len(), 1, "redelivered after the short delay");
}

/// One time budget per invocation: a send that could not finish before the deadline is not
/// started; the record goes back with the answer stored, and its redelivery sends that
/// answer without asking the model again.
#[tokio::test]
async fn a_send_that_cannot_finish_in_time_is_not_started_and_the_answer_is_kept() {
    let h = harness().await;
    answer_with(&h.openai, "a tiempo").await;
    let rec = wa_record(WA_A, "1", "wamid.late", "hola");
    // 9 s: enough to ask (3 s + the 5 s margin), not to send (10 s) and record (3 s).
    let deadline = Instant::now() + Duration::from_secs(9);
    let failed = h.processor.handle_batch(vec![rec.clone()], deadline).await;
    assert_eq!(failed.batch_item_failures.len(), 1, "returned, not sent");
    assert!(h.sends().await.is_empty());
    assert_eq!(h.model_requests().await.len(), 1);
    assert!(h.run(vec![rec]).await.is_empty());
    assert_eq!(h.sends().await, ["a tiempo"]);
    assert_eq!(
        h.model_requests().await.len(),
        1,
        "the stored answer is sent; the model is not asked again"
    );
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
}

#[tokio::test]
async fn a_just_registered_account_is_answered_at_once() {
    let h = harness().await;
    answer_with(&h.openai, "¡Bienvenido!").await;
    const NEW: &str = "106540352249999";
    assert!(h
        .run(vec![wa_record(NEW, "1", "wamid.before", "hola")])
        .await
        .is_empty());
    assert_eq!(h.metric("UnknownAccount"), 1.0);
    let agent: uuid::Uuid =
        h.t.db
            .client()
            .await
            .unwrap()
            .query_one("SELECT id FROM agents", &[])
            .await
            .unwrap()
            .get(0);
    channels::create_channel_account(&h.t.db, h.tenant, Channel::Whatsapp, NEW, Some(agent), None)
        .await
        .unwrap();
    assert!(h
        .run(vec![wa_record(NEW, "1", "wamid.after", "hola otra vez")])
        .await
        .is_empty());
    assert_eq!(h.sends().await, ["¡Bienvenido!"]);
    assert_eq!(h.outcomes().await, [Some("replied".to_owned())]);
}

/// The engine's timings and the template's agree: the heartbeat-renewed lease is short (a
/// crashed invocation holds its lanes no longer than a retry delay), a whole model-send-record
/// step fits in the function's time, and retry delays stay within the configured maximum.
#[test]
fn the_engines_timings_fit_the_template() {
    let template = local_aws::Template::load_workspace().unwrap();
    let mapping = template
        .event_source_mappings()
        .unwrap()
        .into_iter()
        .find(|m| m.binary == "processor")
        .expect("the processor's event source");
    let timeout = Duration::from_secs(u64::from(mapping.timeout_secs));
    // The lease is renewed every third of it while the invocation runs, so it need not
    // outlast the function; after a crash it (and the records' visibility, kept as long)
    // holds the lane no longer than a retry delay may.
    assert!(
        processor::TURN_LEASE <= Duration::from_secs(60) && processor::TURN_LEASE < timeout,
        "lease {:?} vs timeout {timeout:?}",
        processor::TURN_LEASE
    );
    assert!(
        processor::TURN_LEASE / 3 >= Duration::from_secs(5),
        "heartbeat period"
    );
    let one_step = Duration::from_secs(2)
        + processor::MODEL_MIN
        + processor::SEND_MARGIN
        + shared::graph::SEND_TIMEOUT
        + processor::RECORD_TIME;
    assert!(one_step < timeout, "{one_step:?} must fit in {timeout:?}");
    assert!(processor::SEND_MARGIN >= processor::RECORD_TIME);
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml"))
        .unwrap();
    assert!(
        text.contains("MAX_RETRY_DELAY_SECS: \"60\""),
        "the deployed maximum retry delay is 60 s"
    );
    // Transient trouble parks a record only after minutes of retries: at the shortest delays
    // the engine picks, the receives the queue allows span five minutes or more (a wait for
    // a status echo alone spends several; with 5 they spanned 15 s).
    let inbound = &text[text.find("  InboundQueue:").expect("InboundQueue")..];
    let receives: u32 = inbound
        .lines()
        .find_map(|l| l.trim().strip_prefix("maxReceiveCount:"))
        .expect("the inbound redrive policy")
        .trim()
        .parse()
        .unwrap();
    let shortest: u32 = (1..receives)
        .map(|n| shared::queue::retry_delay_secs(n, None, 60, 0.0))
        .sum();
    assert!(
        shortest >= 300,
        "{receives} receives span only {shortest} s of retries before the DLQ"
    );
}

/// A record parked for a permanent failure is answered once after the cause is fixed and it
/// is redriven; redriving records whose turn is done sends nothing; order is kept.
#[tokio::test]
async fn a_dlq_redrive_answers_what_was_parked_once_and_repeats_nothing() {
    let h = harness().await;
    // OpenAI's quota is exhausted: the message is recorded model_rejected and parked.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"error": {
            "message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}})))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.openai)
        .await;
    answer_with(&h.openai, "Ya estamos de vuelta").await;
    let parked = wa_record(WA_A, "1", "wamid.park", "¿hay alguien?");
    assert!(h.run(vec![parked]).await.is_empty());
    // An answered message of another customer, parked by hand as an operator might.
    let answered = wa_record(WA_A, "2", "wamid.done", "hola");
    assert!(h.run(vec![answered.clone()]).await.is_empty());
    assert_eq!(h.sends().await, ["Ya estamos de vuelta"]);
    let dlq = h.stack.queue("InboundDLQ").url.clone();
    let inbound = h.stack.queue("InboundQueue").url.clone();
    let publisher = QueuePublisher::new(aws_sdk_sqs::Client::new(&h.sdk), RetryPolicy::default());
    publisher
        .send_all(
            &dlq,
            vec![shared::queue::OutgoingMessage {
                body: answered.body.clone().unwrap(),
                group_id: Some(format!("whatsapp:{WA_A}")),
                dedup_id: Some("by-hand".into()),
                attributes: vec![],
            }],
        )
        .await
        .unwrap();
    // The cause is fixed; the operator redrives the DLQ.
    assert_eq!(publisher.redrive(&dlq, &inbound, 100).await.unwrap(), 2);
    assert!(drain(&h.sdk, &dlq).await.is_empty(), "nothing left parked");
    let moved = drain(&h.sdk, &inbound).await;
    assert_eq!(moved.len(), 2);
    assert!(moved[0].body.contains("wamid.park"), "in their order");
    assert!(moved
        .iter()
        .all(|m| m.group_id.as_deref() == Some(&format!("whatsapp:{WA_A}")[..])));
    let records: Vec<SqsMessage> = moved
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r = SqsMessage::default();
            r.message_id = Some(format!("redriven-{i}"));
            r.body = Some(m.body.clone());
            r.attributes
                .insert("MessageGroupId".into(), m.group_id.clone().unwrap());
            r
        })
        .collect();
    assert!(h.run(records.clone()).await.is_empty());
    assert_eq!(
        h.sends().await,
        ["Ya estamos de vuelta", "Ya estamos de vuelta"],
        "the parked message is answered once; the answered one is not answered again"
    );
    assert_eq!(
        h.outcomes().await,
        [Some("replied".to_owned()), Some("replied".to_owned())]
    );
    // Redriving the same again changes nothing.
    assert!(h.run(records).await.is_empty());
    assert_eq!(h.sends().await.len(), 2);
}
