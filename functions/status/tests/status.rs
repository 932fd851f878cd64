//! The status function on real parts: Postgres (fresh database) and SQS on the emulator.

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use local_aws::testing::{drain, emulator_sdk, fresh_stack, receive_records};
use serde_json::{json, Value};
use shared::db::testing::TestDb;
use shared::db::TenantId;
use shared::db::{channels, conversations, messages, statuses, tenants};
use shared::envelope::Channel;
use shared::metrics::Metrics;
use shared::queue::{QueuePublisher, RetryPolicy};
use status::{Deps, StatusProcessor};

const WA: &str = "106540352242922";
const IG: &str = "17841400000000000";
const DELIVERED: &str = "wamid.HBgNNTIxNTUxMjM0NTY3OBUCABEYEjQ5OEQ4RkM2";
const FAILED: &str = "wamid.HBgNNTIxNTUxMjM0NTY3OBUCABEYEjQ5OEQ4RkM3";

struct Harness {
    t: TestDb,
    sdk: aws_config::SdkConfig,
    stack: local_aws::Stack,
    tenant: TenantId,
    wa: uuid::Uuid,
    ig: uuid::Uuid,
    conversation: uuid::Uuid,
    processor: StatusProcessor,
}

async fn harness() -> Harness {
    let t = TestDb::new().await;
    let sdk = emulator_sdk().await;
    let (_, stack) = fresh_stack(&sdk).await;
    let db = &t.db;
    let tenant = tenants::create_tenant(db, "acme").await.unwrap();
    let wa = channels::create_channel_account(db, tenant, Channel::Whatsapp, WA, None, None)
        .await
        .unwrap();
    let ig = channels::create_channel_account(db, tenant, Channel::Instagram, IG, None, None)
        .await
        .unwrap();
    let contact = conversations::upsert_contact(
        db,
        tenant,
        wa,
        "5215512345678",
        Some("5215512345678"),
        None,
        None,
    )
    .await
    .unwrap()
    .unwrap();
    let conversation = conversations::conversation_for(db, tenant, wa, contact)
        .await
        .unwrap()
        .unwrap()
        .id;
    let processor = StatusProcessor::new(Deps {
        db: shared::db::Db::new(shared::db::DbConfig::new(t.url.clone())),
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&sdk), RetryPolicy::default()),
        queue_url: stack.queue("StatusQueue").url.clone(),
        dead_letter_queue_url: stack.queue("StatusDLQ").url.clone(),
        max_retry_delay: std::time::Duration::from_secs(180),
        metrics: Metrics::silent("AiAgentTest", "status"),
    });
    Harness {
        t,
        sdk,
        stack,
        tenant,
        wa,
        ig,
        conversation,
        processor,
    }
}

impl Harness {
    async fn outbound(&self, id: &str) {
        messages::insert_outbound_message(
            &self.t.db,
            self.tenant,
            self.conversation,
            Some(id),
            &json!({"type": "text", "body": "reply"}),
            None,
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    }

    async fn status_of(&self, account: uuid::Uuid, id: &str) -> Option<(String, Option<i32>)> {
        messages::message_status(&self.t.db, self.tenant, account, id)
            .await
            .unwrap()
    }

    async fn run(&self, records: Vec<SqsMessage>) -> Vec<String> {
        self.processor
            .handle_batch(records)
            .await
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect()
    }
}

/// The status events the webhook queues for a Meta webhook body, as SQS records.
fn records_of(webhook: &Value) -> Vec<SqsMessage> {
    let parsed = shared::meta::parse_webhook(webhook.to_string().as_bytes(), "corr", 0).unwrap();
    parsed
        .statuses
        .iter()
        .enumerate()
        .map(|(i, ev)| {
            let out = shared::wire::status_message(ev);
            let mut m = SqsMessage::default();
            m.message_id = Some(format!("sqs-{i}-{}", ev.dedup_key()));
            m.body = Some(out.body);
            m
        })
        .collect()
}

fn wa_status(id: &str, status: &str, ts: i64, errors: Option<Value>) -> Value {
    let mut s = json!({"id": id, "status": status, "timestamp": ts.to_string(), "recipient_id": "5215512345678"});
    if let Some(e) = errors {
        s["errors"] = e;
    }
    json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"phone_number_id": WA}, "statuses": [s]}}]}]})
}

fn events_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../events").to_owned()
}

/// `events/sqs-status.json`: the SQS event Lambda delivers for the two status samples.
fn sqs_status_event() -> Value {
    let mut records = Vec::new();
    for name in ["wa-status-delivered", "wa-status-failed"] {
        let http: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}/{name}.json", events_dir())).unwrap(),
        )
        .unwrap();
        let body: Value = serde_json::from_str(http["body"].as_str().unwrap()).unwrap();
        let parsed = shared::meta::parse_webhook(
            body.to_string().as_bytes(),
            "7c0d7d4e-2f55-4b8e-8f0e-1b2c3d4e5f60",
            1_767_312_000_500,
        )
        .unwrap();
        for ev in &parsed.statuses {
            let out = shared::wire::status_message(ev);
            let attributes: serde_json::Map<String, Value> = out
                .attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!({"stringValue": v, "dataType": "String", "stringListValues": [], "binaryListValues": []})))
                .collect();
            records.push(json!({
                "messageId": format!("5b1e0c3a-0d2f-4c8e-9a41-7e2d1f0c9b{:02}", records.len()),
                "receiptHandle": "AQEB-local-sample-receipt-handle",
                "body": out.body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1767312000600",
                               "SenderId": "AROAEXAMPLE:webhook", "ApproximateFirstReceiveTimestamp": "1767312000700"},
                "messageAttributes": attributes,
                "md5OfBody": "00000000000000000000000000000000",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:agent-local-status",
                "awsRegion": "us-east-1"
            }));
        }
    }
    json!({"Records": records})
}

#[test]
fn events_sqs_status_json_is_what_the_webhook_queues_for_the_status_samples() {
    let path = format!("{}/sqs-status.json", events_dir());
    let expected = sqs_status_event();
    if std::env::var_os("UPDATE_EVENTS").is_some() {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&expected).unwrap() + "\n",
        )
        .unwrap();
    }
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        on_disk, expected,
        "events/sqs-status.json is stale: regenerate with UPDATE_EVENTS=1 cargo test -p status events_sqs"
    );
}

#[tokio::test]
async fn the_sample_event_marks_one_message_delivered_and_one_failed_closing_the_window() {
    let h = harness().await;
    h.outbound(DELIVERED).await;
    h.outbound(FAILED).await;
    let event: SqsEvent = serde_json::from_value(sqs_status_event()).unwrap();
    assert!(h.run(event.records).await.is_empty());
    assert_eq!(
        h.status_of(h.wa, DELIVERED).await,
        Some(("delivered".into(), None))
    );
    assert_eq!(
        h.status_of(h.wa, FAILED).await,
        Some(("failed".into(), Some(131047)))
    );
    let conv = conversations::get_conversation(&h.t.db, h.tenant, h.conversation)
        .await
        .unwrap()
        .unwrap();
    let closed: Option<std::time::SystemTime> =
        h.t.db
            .client()
            .await
            .unwrap()
            .query_one(
                "SELECT window_closed_at FROM conversations WHERE id = $1",
                &[&conv.id],
            )
            .await
            .unwrap()
            .get(0);
    assert!(closed.is_some(), "131047 closes the 24 h window");
    let m = h.processor.metrics();
    assert_eq!(m.total("Delivered.Channel=whatsapp"), 1.0);
    assert_eq!(m.total("Failed.Channel=whatsapp"), 1.0);
    assert_eq!(m.total("FailedByCode.ErrorCode=131047"), 1.0);
}

#[tokio::test]
async fn out_of_order_statuses_end_in_the_right_final_state() {
    let h = harness().await;
    h.outbound("wamid.o1").await;
    // read, then the late delivered and sent of the same message, all in one batch and again.
    let mut batch = Vec::new();
    for (status, ts) in [("read", 3), ("delivered", 2), ("sent", 1)] {
        batch.extend(records_of(&wa_status(
            "wamid.o1",
            status,
            1_767_312_000 + ts,
            None,
        )));
    }
    assert!(h.run(batch.clone()).await.is_empty());
    assert!(h.run(batch).await.is_empty());
    assert_eq!(
        h.status_of(h.wa, "wamid.o1").await,
        Some(("read".into(), None))
    );
}

#[tokio::test]
async fn a_status_before_its_message_is_parked_and_applied_when_the_message_is_recorded() {
    let h = harness().await;
    assert!(h
        .run(records_of(&wa_status(
            "wamid.late",
            "delivered",
            1_767_312_000,
            None
        )))
        .await
        .is_empty());
    assert_eq!(h.status_of(h.wa, "wamid.late").await, None);
    assert_eq!(h.processor.metrics().total("StatusesParked"), 1.0);
    // The processor records the reply and applies what was parked for it.
    h.outbound("wamid.late").await;
    assert_eq!(
        statuses::apply_pending_statuses(&h.t.db, h.tenant, h.wa, &["wamid.late"])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        h.status_of(h.wa, "wamid.late").await,
        Some(("delivered".into(), None))
    );
}

#[tokio::test]
async fn an_instagram_read_marks_the_earlier_replies_read() {
    let h = harness().await;
    let contact =
        conversations::upsert_contact(&h.t.db, h.tenant, h.ig, "6543", None, None, Some("ana"))
            .await
            .unwrap()
            .unwrap();
    let conv = conversations::conversation_for(&h.t.db, h.tenant, h.ig, contact)
        .await
        .unwrap()
        .unwrap();
    for id in ["mid.a", "mid.b"] {
        messages::insert_outbound_message(
            &h.t.db,
            h.tenant,
            conv.id,
            Some(id),
            &json!({}),
            None,
            None,
            None,
        )
        .await
        .unwrap();
    }
    let webhook = json!({"object": "instagram", "entry": [{"id": IG, "messaging": [{
        "sender": {"id": "6543"}, "recipient": {"id": IG}, "timestamp": 1_767_312_000_000_i64,
        "read": {"mid": "mid.b"}}]}]});
    assert!(h.run(records_of(&webhook)).await.is_empty());
    for id in ["mid.a", "mid.b"] {
        assert_eq!(h.status_of(h.ig, id).await.unwrap().0, "read", "{id}");
    }
}

#[tokio::test]
async fn bad_bodies_are_parked_and_unknown_accounts_and_channel_errors_acknowledged() {
    let h = harness().await;
    let mut bad = SqsMessage::default();
    bad.message_id = Some("sqs-bad".into());
    bad.body = Some("{\"kind\":\"nonsense\"}".into());
    let mut unknown = wa_status("wamid.x", "delivered", 1_767_312_000, None);
    unknown["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = json!("999");
    let channel_error = json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"phone_number_id": WA},
                  "errors": [{"code": 131056, "title": "Pair rate limit hit"}]}}]}]});
    let mut batch = vec![bad];
    batch.extend(records_of(&unknown));
    batch.extend(records_of(&channel_error));
    assert_eq!(batch.len(), 3);
    assert!(h.run(batch).await.is_empty());
    let parked = drain(&h.sdk, &h.stack.queue("StatusDLQ").url).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].body, "{\"kind\":\"nonsense\"}");
    let m = h.processor.metrics();
    assert_eq!(m.total("UnknownAccount"), 1.0);
    assert_eq!(m.total("ChannelErrors.ErrorCode=131056"), 1.0);
    assert_eq!(m.total("RecordsParked"), 1.0);
}

#[tokio::test]
async fn a_status_event_of_a_version_this_build_does_not_read_is_parked() {
    let h = harness().await;
    let mut batch = records_of(&wa_status("wamid.v9", "delivered", 1_767_312_000, None));
    assert_eq!(batch.len(), 1);
    let body = batch[0].body.clone().unwrap();
    assert!(body.contains("\"v\":1"), "{body}");
    batch[0].body = Some(body.replace("\"v\":1", "\"v\":9"));
    assert!(
        h.run(batch).await.is_empty(),
        "acknowledged: retrying reads the same bytes"
    );
    let parked = drain(&h.sdk, &h.stack.queue("StatusDLQ").url).await;
    assert_eq!(
        parked.len(),
        1,
        "kept for an operator, not applied or dropped"
    );
    assert!(parked[0].body.contains("\"v\":9"));
    assert_eq!(h.processor.metrics().total("RecordsParked"), 1.0);
    assert_eq!(h.processor.metrics().total("UnknownAccount"), 0.0);
}

#[tokio::test]
async fn a_database_outage_returns_the_records_after_a_short_delay() {
    let h = harness().await;
    // A processor whose database is unreachable.
    let processor = StatusProcessor::new(Deps {
        db: shared::db::Db::new(shared::db::DbConfig::new(
            "postgres://postgres@127.0.0.1:1/none?sslmode=disable",
        )),
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&h.sdk), RetryPolicy::default()),
        queue_url: h.stack.queue("StatusQueue").url.clone(),
        dead_letter_queue_url: h.stack.queue("StatusDLQ").url.clone(),
        max_retry_delay: std::time::Duration::from_secs(180),
        metrics: Metrics::silent("AiAgentTest", "status"),
    });
    // A real record from the emulator's status queue, with a real receipt handle.
    let queue = h.stack.queue("StatusQueue").url.clone();
    let sqs = aws_sdk_sqs::Client::new(&h.sdk);
    let status = records_of(&wa_status("wamid.d", "delivered", 1_767_312_000, None))
        .pop()
        .unwrap();
    sqs.send_message()
        .queue_url(&queue)
        .message_body(status.body.clone().unwrap())
        .send()
        .await
        .unwrap();
    let got = receive_records(&h.sdk, &queue).await;
    assert_eq!(got.len(), 1);
    let record = got[0].clone();
    let failed: Vec<String> = processor
        .handle_batch(vec![record.clone()])
        .await
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    assert_eq!(failed, [record.message_id.clone().unwrap()]);
    assert!(drain(&h.sdk, &h.stack.queue("StatusDLQ").url)
        .await
        .is_empty());
    // The queue's visibility timeout is three minutes; the first retry delay is 1-2 s. A
    // status held back for minutes outlasts the processor's echo window, and the processor
    // would then send an unanswered reply a second time.
    let started = std::time::Instant::now();
    let mut back = Vec::new();
    while back.is_empty() && started.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        back = receive_records(&h.sdk, &queue).await;
    }
    assert_eq!(back.len(), 1, "redelivered after the short delay");
    assert_eq!(back[0].body, status.body);
    assert_eq!(back[0].attributes["ApproximateReceiveCount"], "2");
}

#[tokio::test]
async fn the_template_environment_configures_the_status_function() {
    let sdk = emulator_sdk().await;
    let (template, stack) = fresh_stack(&sdk).await;
    let env = stack.function_env(&template, "StatusFunction").unwrap();
    let config =
        status::Config::from_reader(shared::config::EnvReader::new(|k| env.get(k).cloned()))
            .expect("the template's environment is a valid configuration");
    assert_eq!(config.dead_letter_queue_url, stack.queue("StatusDLQ").url);
    assert_eq!(config.queue_url, stack.queue("StatusQueue").url);
    assert_eq!(
        config.database.secret_id.as_deref(),
        Some(stack.secrets["DatabaseSecret"].arn.as_str())
    );
}

/// A status for a send the processor never got an answer for (parked: no message row yet)
/// keeps the tag WhatsApp echoed, so the turn engine can tell the send reached Meta.
#[tokio::test]
async fn a_parked_status_keeps_the_send_tag_it_echoes() {
    let h = harness().await;
    let mut body = wa_status("wamid.AMBIGUOUS", "sent", 1_767_312_000, None);
    body["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] =
        json!("t:8f1c:0:1");
    assert!(h.run(records_of(&body)).await.is_empty());
    assert_eq!(
        shared::db::turns::echoed(&h.t.db, h.tenant, h.wa, "t:8f1c:0:1")
            .await
            .unwrap()
            .as_deref(),
        Some("wamid.AMBIGUOUS")
    );
    assert_eq!(
        shared::db::turns::echoed(&h.t.db, h.tenant, h.wa, "t:8f1c:0:2")
            .await
            .unwrap(),
        None
    );
}
