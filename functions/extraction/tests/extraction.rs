//! The extraction function on real parts: Postgres (fresh database), DynamoDB and SQS on the
//! emulator, OpenAI as a wiremock stub.

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::SqsMessage;
use extraction::{Deps, Extractor};
use local_aws::testing::{drain, emulator_sdk, fresh_stack};
use serde_json::{json, Value};
use shared::db::leads;
use shared::db::testing::TestDb;
use shared::db::TenantId;
use shared::db::{agents, channels, conversations, credits, messages, tenants};
use shared::envelope::Channel;
use shared::idempotency::IdempotencyStore;
use shared::metrics::Metrics;
use shared::openai::{ClientSettings, ResponsesClient};
use shared::queue::{QueuePublisher, RetryPolicy};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Harness {
    t: TestDb,
    sdk: aws_config::SdkConfig,
    stack: local_aws::Stack,
    openai: MockServer,
    extractor: Extractor,
    tenant: TenantId,
    contact: uuid::Uuid,
    conversation: uuid::Uuid,
    seq: std::sync::atomic::AtomicUsize,
}

async fn harness() -> Harness {
    let t = TestDb::new().await;
    let sdk = emulator_sdk().await;
    let (_, stack) = fresh_stack(&sdk).await;
    let openai = MockServer::start().await;
    let db = &t.db;
    let tenant = tenants::create_tenant(db, "acme").await.unwrap();
    let agent = agents::create_agent(db, tenant, "sales", "gpt-test", "Sell flats.")
        .await
        .unwrap();
    agents::set_agent_pricing(db, tenant, agent, 2, 4, 0)
        .await
        .unwrap();
    db.client()
        .await
        .unwrap()
        .execute(
            "UPDATE agents SET extra_lead_fields = '{\"bedrooms\": {\"type\": \"integer\", \"description\": \"Bedrooms wanted\"}}'",
            &[],
        )
        .await
        .unwrap();
    let account =
        channels::create_channel_account(db, tenant, Channel::Whatsapp, "1065", Some(agent), None)
            .await
            .unwrap();
    let contact = conversations::upsert_contact(
        db,
        tenant,
        account,
        "MX.1",
        Some("5215512345678"),
        None,
        None,
    )
    .await
    .unwrap()
    .unwrap();
    let conversation = conversations::conversation_for(db, tenant, account, contact)
        .await
        .unwrap()
        .unwrap()
        .id;
    credits::top_up(db, tenant, 1000, "top_up", None)
        .await
        .unwrap();
    let mut settings =
        ClientSettings::new(format!("{}/v1", openai.uri()), "sk-test".to_owned().into());
    settings.max_retries = 0;
    settings.timeout = Duration::from_secs(5);
    let extractor = Extractor::new(Deps {
        db: shared::db::Db::new(shared::db::DbConfig::new(t.url.clone())),
        idempotency: IdempotencyStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            stack.tables["IdempotencyTable"].clone(),
        ),
        model: ResponsesClient::new(settings),
        model_override: None,
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&sdk), RetryPolicy::default()),
        dead_letter_queue_url: stack.queue("ExtractionDLQ").url.clone(),
        webhooks: extraction::tenant_webhook::WebhookSender::new(Duration::from_secs(2)),
        metrics: Metrics::silent("AiAgentTest", "extraction"),
    });
    Harness {
        t,
        sdk,
        stack,
        openai,
        extractor,
        tenant,
        contact,
        conversation,
        seq: 0.into(),
    }
}

/// A Responses API answer whose output text is `answer` (JSON), with usage 1000 in / 100 out.
fn answer(answer: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"id": "resp_x", "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": answer.to_string()}]}],
        "usage": {"input_tokens": 1000, "output_tokens": 100}}))
}

fn empty_lead() -> Value {
    json!({"name": null, "email": null, "phone": null, "company": null, "intent": null,
           "product_interest": null, "budget": null, "timeline": null, "language": null,
           "summary": null, "bedrooms": null})
}

fn lead_with(fields: Value) -> Value {
    let mut l = empty_lead();
    for (k, v) in fields.as_object().unwrap() {
        l[k] = v.clone();
    }
    l
}

impl Harness {
    async fn say(&self, direction: &str, text: &str) {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let content = json!({"type": "text", "body": text});
        if direction == "in" {
            messages::insert_inbound_message(
                &self.t.db,
                self.tenant,
                self.conversation,
                &format!("wamid.in{n}"),
                &content,
                None,
                std::time::SystemTime::now(),
            )
            .await
            .unwrap();
        } else {
            messages::insert_outbound_message(
                &self.t.db,
                self.tenant,
                self.conversation,
                Some(&format!("wamid.out{n}")),
                &content,
                None,
                None,
                None,
            )
            .await
            .unwrap();
        }
    }

    fn job(&self, id: &str) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.to_owned());
        m.body = Some(
            json!({"v": 1, "kind": "extract", "tenant_id": self.tenant.uuid(), "conversation_id": self.conversation})
                .to_string(),
        );
        m
    }

    async fn run(&self, records: Vec<SqsMessage>) -> Vec<String> {
        self.extractor
            .handle_batch(records, Instant::now() + Duration::from_secs(30))
            .await
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    }

    async fn requests(&self) -> Vec<Value> {
        self.openai
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    async fn lead(&self) -> Value {
        leads::lead_of_contact(&self.t.db, self.tenant, self.contact)
            .await
            .unwrap()
            .unwrap_or(Value::Null)
    }

    async fn one(&self, sql: &str) -> Value {
        let row = self
            .t
            .db
            .client()
            .await
            .unwrap()
            .query_one(&format!("SELECT to_jsonb(x) FROM ({sql}) x"), &[])
            .await
            .unwrap();
        row.get(0)
    }

    async fn answer_next(&self, body: Value) {
        self.openai.reset().await;
        Mock::given(method("POST"))
            .and(path("/v1/responses"))
            .respond_with(answer(body))
            .mount(&self.openai)
            .await;
    }
}

#[tokio::test]
async fn details_given_over_several_turns_build_one_lead_with_its_history() {
    let h = harness().await;
    // Turn 1: the name.
    h.say("in", "Hola, soy Ana Ruiz, busco un depa de 2 recámaras")
        .await;
    h.say("out", "¡Hola Ana! ¿Me compartes tu email?").await;
    h.answer_next(lead_with(
        json!({"name": "Ana Ruiz", "intent": "buy", "bedrooms": 2, "language": "es"}),
    ))
    .await;
    assert!(h.run(vec![h.job("j1")]).await.is_empty());
    // Turn 2: the email, in another message; the model gives no name this time.
    h.say("in", "Claro: Ana@Ejemplo.MX").await;
    h.answer_next(lead_with(json!({"email": "Ana@Ejemplo.MX"})))
        .await;
    assert!(h.run(vec![h.job("j2")]).await.is_empty());
    let input = h.requests().await[0]["input"].to_string();
    assert!(input.contains("Ana@Ejemplo.MX"), "{input}");
    assert!(
        !input.contains("busco un depa"),
        "only the messages after the last run are read"
    );
    let lead = h.lead().await;
    assert_eq!(lead["name"], "Ana Ruiz", "a null never erases");
    assert_eq!(lead["email"], "ana@ejemplo.mx", "normalised");
    assert_eq!(lead["intent"], "buy");
    assert_eq!(lead["extra"], json!({"bedrooms": 2}));
    // Turn 3: a correction replaces the email; the history keeps both.
    h.say("in", "perdón, en realidad mi email es ana.ruiz@ejemplo.mx")
        .await;
    h.answer_next(lead_with(json!({"email": "ana.ruiz@ejemplo.mx"})))
        .await;
    assert!(h.run(vec![h.job("j3")]).await.is_empty());
    assert_eq!(h.lead().await["email"], "ana.ruiz@ejemplo.mx");
    let history = leads::lead_history(&h.t.db, h.tenant, h.contact)
        .await
        .unwrap();
    let emails: Vec<(Option<String>, String)> = history
        .iter()
        .filter(|(f, ..)| f == "email")
        .map(|(_, old, new, _)| (old.clone(), new.clone()))
        .collect();
    assert_eq!(
        emails,
        [
            (None, "ana@ejemplo.mx".to_owned()),
            (
                Some("ana@ejemplo.mx".to_owned()),
                "ana.ruiz@ejemplo.mx".to_owned()
            )
        ]
    );
    assert!(history
        .iter()
        .any(|(f, _, new, _)| f == "extra.bedrooms" && new == "2"));
    // Each run charged 1000 in × 2/1k + 100 out × 4/1k = 3 credits, as its own ledger reason.
    assert_eq!(
        h.one("SELECT count(*) AS n, sum(-delta) AS total FROM credit_ledger WHERE reason = 'extraction'")
            .await,
        json!({"n": 3, "total": 9})
    );
    assert_eq!(h.extractor.metrics().total("LeadFieldsChanged"), 6.0);
    assert_eq!(
        h.one("SELECT count(*) AS n FROM webhook_deliveries").await,
        json!({"n": 0}),
        "no webhook configured, no events"
    );
}

#[tokio::test]
async fn the_request_is_a_strict_json_schema_the_api_accepts() {
    let h = harness().await;
    h.say("in", "hi").await;
    h.answer_next(empty_lead()).await;
    assert!(h.run(vec![h.job("j1")]).await.is_empty());
    let req = &h.requests().await[0];
    assert_eq!(req["model"], "gpt-test");
    assert_eq!(req["store"], false);
    assert!(req["instructions"].as_str().unwrap().contains("null"));
    let format = &req["text"]["format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["name"], "lead");
    assert_eq!(format["strict"], true);
    let schema = &format["schema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    let mut props: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    props.sort();
    required.sort();
    assert_eq!(props, required, "every property is required");
    assert!(
        required.contains(&"bedrooms"),
        "the agent's own field is asked for"
    );
    for (k, p) in schema["properties"].as_object().unwrap() {
        assert!(
            p["type"].as_array().unwrap().contains(&json!("null")),
            "{k} nullable"
        );
        assert!(
            p.get("default").is_none(),
            "{k}: strict mode rejects default"
        );
    }
    // An answer with every field null changes nothing but passes the window.
    assert!(h.lead().await.is_null());
    assert_eq!(
        h.one("SELECT status FROM extractions").await,
        json!({"status": "unchanged"})
    );
}

#[tokio::test]
async fn a_duplicate_job_calls_the_model_once() {
    let h = harness().await;
    h.say("in", "soy Ana").await;
    h.answer_next(lead_with(json!({"name": "Ana"}))).await;
    assert!(
        h.run(vec![h.job("a"), h.job("b")]).await.is_empty(),
        "twice in a batch"
    );
    assert!(h.run(vec![h.job("c")]).await.is_empty(), "and again later");
    assert_eq!(h.requests().await.len(), 1);
    assert_eq!(
        h.one("SELECT count(*) AS n FROM extractions").await,
        json!({"n": 1})
    );
    assert_eq!(h.extractor.metrics().total("NothingNew"), 1.0);
}

#[tokio::test]
async fn incomplete_and_refused_answers_are_recorded_and_passed_not_retried() {
    let h = harness().await;
    h.say("in", "a very long message").await;
    h.openai.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "resp_i", "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "{\"name\": \"An"}]}],
            "usage": {"input_tokens": 10, "output_tokens": 1000}})))
        .mount(&h.openai)
        .await;
    assert!(h.run(vec![h.job("j1")]).await.is_empty());
    h.say("in", "something the model will not touch").await;
    h.openai.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "resp_r", "status": "completed",
            "output": [{"type": "message", "content": [{"type": "refusal", "refusal": "I can't help with that."}]}],
            "usage": {"input_tokens": 10, "output_tokens": 5}})))
        .mount(&h.openai)
        .await;
    assert!(h.run(vec![h.job("j2")]).await.is_empty());
    assert_eq!(
        h.one("SELECT array_agg(status ORDER BY id) AS s FROM extractions")
            .await,
        json!({"s": ["incomplete", "refused"]})
    );
    assert!(h.lead().await.is_null(), "truncated JSON is never applied");
    // Both windows are passed: the next job has nothing to read.
    assert!(h.run(vec![h.job("j3")]).await.is_empty());
    assert_eq!(
        h.requests().await.len(),
        1,
        "only the refusal's call since the reset"
    );
}

#[tokio::test]
async fn a_bad_job_is_parked_and_a_model_outage_is_retried() {
    let h = harness().await;
    h.say("in", "soy Ana").await;
    h.openai.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&h.openai)
        .await;
    let mut bad = SqsMessage::default();
    bad.message_id = Some("bad".into());
    bad.body = Some("{\"kind\":\"extract\"}".into());
    let failed = h.run(vec![bad, h.job("j1")]).await;
    assert_eq!(failed, ["j1"], "the outage is retried through SQS");
    let parked = drain(&h.sdk, &h.stack.queue("ExtractionDLQ").url).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].body, "{\"kind\":\"extract\"}");
    // The claim was released: the redelivery runs as soon as the model is back.
    h.answer_next(lead_with(json!({"name": "Ana"}))).await;
    assert!(h.run(vec![h.job("j1")]).await.is_empty());
    assert_eq!(h.lead().await["name"], "Ana");
}

/// `events/sqs-extraction.json`: an extraction job as the processor queues it.
fn sqs_extraction_event() -> Value {
    let body = json!({"v": 1, "kind": "extract",
        "tenant_id": "0b9e6a52-6a8e-4c3e-9a55-1f7f2d1c0a01",
        "conversation_id": "6fcd90d6-1e8e-4b1a-9191-d23a1864fdc1"});
    json!({"Records": [{
        "messageId": "9a3c1f20-4b7e-4d11-8c2a-5e6f7a8b9c0d",
        "receiptHandle": "AQEB-local-sample-receipt-handle",
        "body": body.to_string(),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1767225602000",
                       "SenderId": "AROAEXAMPLE:processor", "ApproximateFirstReceiveTimestamp": "1767225617000"},
        "messageAttributes": {},
        "md5OfBody": "00000000000000000000000000000000",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:agent-local-extraction",
        "awsRegion": "us-east-1"
    }]})
}

#[test]
fn events_sqs_extraction_json_is_a_job_as_the_processor_queues_it() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/sqs-extraction.json"
    );
    let expected = sqs_extraction_event();
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
        "regenerate with UPDATE_EVENTS=1 cargo test -p extraction events_sqs"
    );
    let event: aws_lambda_events::sqs::SqsEvent = serde_json::from_value(on_disk).unwrap();
    let job =
        shared::wire::parse_extraction_job(event.records[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(job.kind, "extract");
}

#[tokio::test]
async fn the_template_environment_configures_the_extraction_function() {
    let sdk = emulator_sdk().await;
    let (template, stack) = fresh_stack(&sdk).await;
    let env = stack.function_env(&template, "ExtractionFunction").unwrap();
    let config =
        extraction::Config::from_reader(shared::config::EnvReader::new(|k| env.get(k).cloned()))
            .expect("the template's environment is a valid configuration");
    assert_eq!(
        config.dead_letter_queue_url,
        stack.queue("ExtractionDLQ").url
    );
    assert_eq!(
        config.model, None,
        "an empty ExtractionModel means the agent's model"
    );
}

#[tokio::test]
async fn a_lead_change_is_posted_signed_to_the_tenants_webhook_and_retried_until_delivered() {
    let h = harness().await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&receiver)
        .await;
    tenants::set_tenant_webhook(
        &h.t.db,
        h.tenant,
        Some(&format!("{}/hook", receiver.uri())),
        Some("whsec_test"),
    )
    .await
    .unwrap();
    h.say("in", "soy Ana, ana@ejemplo.mx").await;
    h.answer_next(lead_with(json!({"name": "Ana", "email": "ana@ejemplo.mx"})))
        .await;
    // The receiver is down: the lead is recorded, the job comes back for the delivery.
    assert_eq!(h.run(vec![h.job("j1")]).await, ["j1"]);
    assert_eq!(h.lead().await["email"], "ana@ejemplo.mx");
    // The redelivery posts it again (no second model call) and succeeds.
    assert!(h.run(vec![h.job("j1")]).await.is_empty());
    assert_eq!(h.requests().await.len(), 1);
    let posts = receiver.received_requests().await.unwrap();
    assert_eq!(posts.len(), 2);
    assert_eq!(
        posts[0].body, posts[1].body,
        "the same event on every attempt"
    );
    let sig = posts[1].headers["x-signature-256"].to_str().unwrap();
    assert!(shared::signature::SignatureKey::new(b"whsec_test")
        .verify(&posts[1].body, Some(sig))
        .is_ok());
    assert_eq!(posts[1].headers["x-agent-event"], "lead.updated");
    let event: Value = serde_json::from_slice(&posts[1].body).unwrap();
    assert_eq!(event["type"], "lead.updated");
    assert_eq!(event["lead"]["email"], "ana@ejemplo.mx");
    assert_eq!(event["contact_id"], json!(h.contact));
    let mut fields: Vec<&str> = event["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["email", "name"]);
    assert_eq!(
        h.one("SELECT status, attempts FROM webhook_deliveries")
            .await,
        json!({"status": "delivered", "attempts": 2})
    );
}

#[tokio::test]
async fn a_webhook_that_rejects_the_event_is_not_retried() {
    let h = harness().await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&receiver)
        .await;
    tenants::set_tenant_webhook(&h.t.db, h.tenant, Some(&receiver.uri()), None)
        .await
        .unwrap();
    h.say("in", "soy Ana").await;
    h.answer_next(lead_with(json!({"name": "Ana"}))).await;
    assert!(h.run(vec![h.job("j1")]).await.is_empty());
    assert_eq!(
        h.one("SELECT status, last_error FROM webhook_deliveries")
            .await,
        json!({"status": "failed", "last_error": "HTTP 410"})
    );
    assert!(
        receiver.received_requests().await.unwrap()[0]
            .headers
            .get("x-signature-256")
            .is_none(),
        "no secret, no signature"
    );
}
