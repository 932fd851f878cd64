//! Measures what the FIFO ordering scope costs: the real processor (Postgres, DynamoDB and SQS
//! on the emulator) answers bursts of customer messages to one WhatsApp number, with a stub
//! model that takes `MODEL_MS` (default 1000) per turn, while a small scheduler plays Lambda's
//! SQS FIFO poller: a batch holds at most 10 records, a message group is never in two batches
//! at once, and at most `concurrency` batches run at the same time.
//!
//! `make bench-ordering` (or, with DATABASE_URL and AWS_ENDPOINT_URL set,
//! `cargo run -p processor --example ordering_scope`). Prints one table row per scenario.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::SqsMessage;
use futures_util::stream::{FuturesUnordered, StreamExt};
use local_aws::testing::{emulator_sdk, fresh_stack};
use processor::{Deps, GraphTokens, Processor};
use serde_json::json;
use shared::db::testing::TestDb;
use shared::db::{agents, channels, credits, tenants};
use shared::envelope::Channel;
use shared::graph::GraphClient;
use shared::metrics::Metrics;
use shared::openai::{ClientSettings, ResponsesClient};
use shared::queue::{QueuePublisher, RetryPolicy};
use shared::secrets::SecretCache;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const NUMBER: &str = "106540352242922";

/// Answers every send with a fresh wamid, like Meta.
struct Wamids(std::sync::atomic::AtomicU64);

impl Respond for Wamids {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ResponseTemplate::new(200)
            .set_body_json(json!({"messages": [{"id": format!("wamid.O{n}")}]}))
    }
}

/// One inbound WhatsApp text as the webhook would queue it under `scope`.
fn record(run: &str, contact: usize, seq: usize, scope: &str) -> SqsMessage {
    let wa_id = format!("52155{contact:08}");
    let wamid = format!("wamid.{run}.{contact}.{seq}");
    let envelope = json!({
        "v": 1, "kind": "inbound_message", "correlation_id": format!("{run}-{contact}-{seq}"),
        "channel": "whatsapp", "channel_account_id": NUMBER,
        "contact": {"id": wa_id, "wa_id": wa_id},
        "provider_message_id": wamid, "provider_timestamp_ms": 1_767_225_600_000_i64 + seq as i64,
        "content": {"type": "text", "body": format!("message {seq}")}
    });
    let mut m = SqsMessage::default();
    m.message_id = Some(wamid);
    m.body = Some(envelope.to_string());
    let group = match scope {
        "conversation" => format!("whatsapp:{NUMBER}:{wa_id}"),
        _ => format!("whatsapp:{NUMBER}"),
    };
    m.attributes.insert("MessageGroupId".into(), group);
    m
}

fn group(m: &SqsMessage) -> String {
    m.attributes["MessageGroupId"].clone()
}

/// Plays the poller over `queue` (all messages present at t0); returns each message's time to
/// acknowledgement and the number of batches.
async fn drain(
    processor: Arc<Processor>,
    mut queue: Vec<SqsMessage>,
    concurrency: usize,
) -> (Vec<Duration>, usize) {
    let t0 = Instant::now();
    let mut busy: HashSet<String> = HashSet::new();
    let mut running = FuturesUnordered::new();
    let mut done = Vec::new();
    let mut batches = 0;
    loop {
        while running.len() < concurrency {
            // Up to 10 records, whole groups in queue order, none of a group already in flight.
            let mut taken_groups = HashSet::new();
            let mut batch = Vec::new();
            let mut rest = Vec::new();
            for m in queue.drain(..) {
                let g = group(&m);
                let room = batch.len() < 10;
                if room
                    && !busy.contains(&g)
                    && (taken_groups.contains(&g) || taken_groups.len() < 10)
                {
                    taken_groups.insert(g);
                    batch.push(m);
                } else {
                    rest.push(m);
                }
            }
            queue = rest;
            if batch.is_empty() {
                break;
            }
            batches += 1;
            busy.extend(taken_groups.iter().cloned());
            let p = processor.clone();
            running.push(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let failed = p.handle_batch(batch.clone(), deadline).await;
                assert!(failed.batch_item_failures.is_empty(), "a record failed");
                (taken_groups, batch.len())
            });
        }
        match running.next().await {
            Some((groups, n)) => {
                for g in groups {
                    busy.remove(&g);
                }
                done.extend(std::iter::repeat_n(t0.elapsed(), n));
            }
            None => break,
        }
    }
    (done, batches)
}

#[tokio::main]
async fn main() {
    let model_ms: u64 = std::env::var("MODEL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t = TestDb::new().await;
    let sdk = emulator_sdk().await;
    let (_, stack) = fresh_stack(&sdk).await;
    let openai = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "resp_b", "status": "completed",
                    "output": [{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}],
                    "usage": {"input_tokens": 100, "output_tokens": 20}}))
                .set_delay(Duration::from_millis(model_ms)),
        )
        .mount(&openai)
        .await;
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Wamids(0.into()))
        .mount(&graph)
        .await;
    let tenant = tenants::create_tenant(&t.db, "bench").await.unwrap();
    let agent = agents::create_agent(&t.db, tenant, "a", "gpt-bench", "Be brief.")
        .await
        .unwrap();
    channels::create_channel_account(&t.db, tenant, Channel::Whatsapp, NUMBER, Some(agent), None)
        .await
        .unwrap();
    credits::top_up(&t.db, tenant, 1_000_000, "top_up", None)
        .await
        .unwrap();
    let mut settings = ClientSettings::new(format!("{}/v1", openai.uri()), "sk".to_owned().into());
    settings.breaker_threshold = 1000;
    let processor = Arc::new(Processor::new(Deps {
        db: shared::db::Db::new(shared::db::DbConfig::new(t.url.clone())),
        model: ResponsesClient::new(settings),
        graph: GraphClient::new(graph.uri(), graph.uri()),
        tokens: GraphTokens {
            secrets: SecretCache::new(
                aws_sdk_secretsmanager::Client::new(&sdk),
                Duration::from_secs(300),
            ),
            default: Some("EAAG".to_owned().into()),
            prefix: None,
        },
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&sdk), RetryPolicy::default()),
        extraction_queue_url: stack.queue("ExtractionQueue").url.clone(),
        dead_letter_queue_url: stack.queue("InboundDLQ").url.clone(),
        inbound_queue_url: stack.queue("InboundQueue").url.clone(),
        max_retry_delay: std::time::Duration::from_secs(60),
        metrics: Metrics::silent("Bench", "processor"),
    }));

    println!("model turn {model_ms} ms; all messages queued at t0; times to acknowledgement");
    println!("| scenario | scope | concurrency | batches | model calls | p50 | max |");
    println!("|---|---|---|---|---|---|---|");
    let scenarios = [
        ("20 customers x 1 message", 20, 1),
        ("5 customers x 4 messages", 5, 4),
        ("60 customers x 1 message", 60, 1),
    ];
    let mut run = 0;
    for (name, customers, each) in scenarios {
        for (scope, concurrency) in [
            ("channel_account", 1),
            ("conversation", 5),
            ("conversation", 20),
        ] {
            run += 1;
            // Messages arrive interleaved across customers, as they would in real life.
            let mut queue = Vec::new();
            for seq in 0..each {
                for c in 0..customers {
                    queue.push(record(&format!("r{run}"), c + run * 1000, seq, scope));
                }
            }
            let calls_before = openai.received_requests().await.unwrap().len();
            let (mut times, batches) = drain(processor.clone(), queue, concurrency).await;
            times.sort();
            let calls = openai.received_requests().await.unwrap().len() - calls_before;
            let p50 = times[times.len() / 2];
            let max = *times.last().unwrap();
            println!(
                "| {name} | {scope} | {concurrency} | {batches} | {calls} | {:.1} s | {:.1} s |",
                p50.as_secs_f64(),
                max.as_secs_f64()
            );
        }
    }
}
