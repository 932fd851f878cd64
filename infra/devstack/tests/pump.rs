//! The pump against real SQS (the emulator): what succeeded is deleted, what failed comes back
//! after the visibility timeout and reaches the DLQ after maxReceiveCount, a function error
//! returns the whole batch, and the template's mappings resolve to the provisioned queues.
//! The function side is a stub HTTP server playing `cargo lambda watch`'s invoke API.

use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use aws_sdk_sqs::types::QueueAttributeName;
use devstack::pump::{Journal, LaneEvent, Mapping, Pump};
use local_aws::testing::{drain, emulator_sdk, fresh_stack};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// A FIFO queue with the given visibility timeout and a DLQ after 2 receives.
async fn fifo_with_dlq(sdk: &aws_config::SdkConfig, visibility: u32) -> (Mapping, String) {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let name = format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = format!("arn:aws:sqs:us-east-1:123456789012:{name}-dlq.fifo");
    let url = sqs
        .create_queue()
        .queue_name(format!("{name}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility.to_string(),
        )
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let mapping = Mapping {
        function: "worker".into(),
        queue_url: url,
        queue_arn: format!("arn:aws:sqs:us-east-1:123456789012:{name}.fifo"),
        batch_size: 10,
        batching_window: Duration::ZERO,
        report_batch_item_failures: true,
        invoke_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(3),
        local: None,
        max_concurrency: None,
    };
    (mapping, dlq)
}

async fn send(sdk: &aws_config::SdkConfig, m: &Mapping, group: &str, body: &str) {
    aws_sdk_sqs::Client::new(sdk)
        .send_message()
        .queue_url(&m.queue_url)
        .message_group_id(group)
        .message_deduplication_id(uuid::Uuid::new_v4().to_string())
        .message_body(body)
        .message_attributes(
            "kind",
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value("message")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// A function that fails every record whose body contains "fail".
async fn function() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/2015-03-31/functions/worker/invocations"))
        .respond_with(|req: &Request| {
            let event: SqsEvent = serde_json::from_slice(&req.body).expect("an SQS event");
            let failures: Vec<_> = event
                .records
                .iter()
                .filter(|r| r.body.as_deref().unwrap_or_default().contains("fail"))
                .map(|r| json!({"itemIdentifier": r.message_id}))
                .collect();
            ResponseTemplate::new(200).set_body_json(json!({"batchItemFailures": failures}))
        })
        .mount(&server)
        .await;
    server
}

/// A lane journal in a file of its own.
fn journal() -> (std::sync::Arc<Journal>, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("journal-{}.jsonl", uuid::Uuid::new_v4()));
    (std::sync::Arc::new(Journal::open(&path).unwrap()), path)
}

fn events(requests: &[Request]) -> Vec<SqsEvent> {
    requests
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[tokio::test]
async fn successes_are_deleted_and_failures_return_until_the_dlq_takes_them() {
    let sdk = emulator_sdk().await;
    let (m, dlq) = fifo_with_dlq(&sdk, 1).await;
    let server = function().await;
    let mut pump = Pump::new(&sdk, server.uri());
    pump.idle_wait = Duration::from_secs(1);
    let (journal, journal_path) = journal();
    pump.journal = Some(journal);
    send(&sdk, &m, "g1", "ok one").await;
    send(&sdk, &m, "g2", "please fail").await;
    send(&sdk, &m, "g1", "ok two").await;

    let first = pump.poll_once(&m).await.unwrap().expect("a batch");
    assert_eq!((first.received, first.deleted), (3, 2), "{first}");
    assert_eq!(first.returned.len(), 1);
    assert!(first.batch_error.is_none());
    // The journal says which lanes were tried, and which one was handed back.
    let lines = devstack::load::read_journal(&journal_path, 0);
    let seen: Vec<(LaneEvent, Vec<String>)> = lines
        .iter()
        .map(|l| {
            let mut g = l.groups.clone();
            g.sort();
            (l.event, g)
        })
        .collect();
    assert_eq!(
        seen,
        [
            (LaneEvent::Received, vec!["g1".to_owned(), "g2".to_owned()]),
            (LaneEvent::Returned, vec!["g2".to_owned()]),
        ]
    );
    assert!(lines[0].t_ms <= lines[1].t_ms && lines[0].queue.ends_with(".fifo"));

    // The event is shaped as Lambda's: source, ARN, region, system and message attributes.
    let sent = events(&server.received_requests().await.unwrap());
    let record = &sent[0].records[0];
    assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
    assert_eq!(
        record.event_source_arn.as_deref(),
        Some(m.queue_arn.as_str())
    );
    assert_eq!(record.aws_region.as_deref(), Some("us-east-1"));
    assert_eq!(record.attributes["MessageGroupId"], "g1");
    assert_eq!(record.attributes["ApproximateReceiveCount"], "1");
    assert!(record.attributes.contains_key("SequenceNumber"));
    assert_eq!(
        record.message_attributes["kind"].string_value.as_deref(),
        Some("message")
    );
    assert!(record.receipt_handle.is_some() && record.md5_of_body.is_some());
    let bodies: Vec<_> = sent[0]
        .records
        .iter()
        .map(|r| r.body.clone().unwrap())
        .collect();
    let mut all = bodies.clone();
    all.sort();
    assert_eq!(all, ["ok one", "ok two", "please fail"]);
    let g1: Vec<_> = bodies.iter().filter(|b| b.starts_with("ok")).collect();
    assert_eq!(g1, ["ok one", "ok two"], "group order kept");

    // The failed record comes back after the 1 s visibility timeout, once more...
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = pump
        .poll_once(&m)
        .await
        .unwrap()
        .expect("the failed record again");
    assert_eq!((second.received, second.deleted), (1, 0));
    let again = events(&server.received_requests().await.unwrap());
    assert_eq!(again[1].records[0].body.as_deref(), Some("please fail"));
    assert_eq!(
        again[1].records[0].attributes["ApproximateReceiveCount"],
        "2"
    );

    // ...and then the redrive policy moves it to the DLQ instead of a third delivery.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(pump.poll_once(&m).await.unwrap().is_none());
    let parked = drain(&sdk, &dlq).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].body, "please fail");
    assert!(
        drain(&sdk, &m.queue_url).await.is_empty(),
        "nothing else left"
    );
}

#[tokio::test]
async fn a_function_error_or_a_bad_response_returns_the_whole_batch() {
    let sdk = emulator_sdk().await;
    let (m, _) = fifo_with_dlq(&sdk, 1).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"errorType": "&alloc::boxed::Box<dyn Error>", "errorMessage": "boom"}),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}),
            ),
        )
        .mount(&server)
        .await;
    let mut pump = Pump::new(&sdk, server.uri());
    pump.idle_wait = Duration::from_secs(1);
    let (journal, journal_path) = journal();
    pump.journal = Some(journal);
    send(&sdk, &m, "g1", "a").await;
    send(&sdk, &m, "g2", "b").await;

    let crashed = pump.poll_once(&m).await.unwrap().unwrap();
    let last = devstack::load::read_journal(&journal_path, 0)
        .pop()
        .unwrap();
    assert_eq!(
        last.event,
        LaneEvent::Failed,
        "every lane of the batch failed"
    );
    assert_eq!(last.groups.len(), 2);
    assert_eq!((crashed.received, crashed.deleted), (2, 0));
    assert!(
        crashed
            .batch_error
            .as_deref()
            .unwrap()
            .contains("function error"),
        "{crashed}"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let unknown = pump.poll_once(&m).await.unwrap().unwrap();
    assert_eq!((unknown.received, unknown.deleted), (2, 0));
    assert!(unknown
        .batch_error
        .as_deref()
        .unwrap()
        .contains("names no record"));
}

#[tokio::test]
async fn an_unreachable_function_leaves_the_batch_on_the_queue() {
    let sdk = emulator_sdk().await;
    let (m, _) = fifo_with_dlq(&sdk, 1).await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut pump = Pump::new(&sdk, format!("http://{addr}"));
    pump.idle_wait = Duration::from_secs(1);
    send(&sdk, &m, "g1", "kept").await;
    let r = pump.poll_once(&m).await.unwrap().unwrap();
    assert_eq!((r.received, r.deleted), (1, 0));
    assert!(r.batch_error.unwrap().contains("unreachable"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let back = drain(&sdk, &m.queue_url).await;
    assert_eq!(back.len(), 1, "the record is still there");
}

#[tokio::test]
async fn the_batching_window_gathers_records_into_one_invocation() {
    let sdk = emulator_sdk().await;
    let (mut m, _) = fifo_with_dlq(&sdk, 30).await;
    m.batching_window = Duration::from_secs(2);
    let server = function().await;
    let mut pump = Pump::new(&sdk, server.uri());
    pump.idle_wait = Duration::from_secs(1);
    send(&sdk, &m, "g1", "first").await;
    let late = {
        let sdk = sdk.clone();
        let m = m.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            send(&sdk, &m, "g2", "second").await;
        })
    };
    let r = pump.poll_once(&m).await.unwrap().unwrap();
    late.await.unwrap();
    assert_eq!((r.received, r.deleted), (2, 2), "{r}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_template_mappings_resolve_to_the_provisioned_queues() {
    let sdk = emulator_sdk().await;
    let (template, stack) = fresh_stack(&sdk).await;
    let located = local_aws::locate_queues(&template, &stack.name, &sdk, &stack.parameters)
        .await
        .unwrap();
    for (id, q) in &stack.queues {
        assert_eq!(located.queue(id).url, q.url);
        assert_eq!(located.queue(id).arn, q.arn);
    }
    let mut mappings = Mapping::from_template(&template, &located).unwrap();
    mappings.sort_by(|a, b| a.function.cmp(&b.function));
    let processor = &mappings[1];
    assert_eq!(processor.function, "processor");
    assert_eq!(processor.queue_url, stack.queue("InboundQueue").url);
    assert_eq!(processor.queue_arn, stack.queue("InboundQueue").arn);
    assert!(processor.report_batch_item_failures);
    assert_eq!(processor.invoke_timeout, Duration::from_secs(90 + 60));
    assert_eq!(mappings[0].batching_window, Duration::from_secs(5));
    // As many batches at once as Lambda would run: the template's MaximumConcurrency
    // (ProcessorMaxConcurrency's default for the processor), unless --concurrency says else.
    let mut pump = Pump::new(&sdk, "http://127.0.0.1:9");
    assert_eq!(pump.concurrency_of(processor), 20);
    assert_eq!(pump.concurrency_of(&mappings[0]), 5);
    pump.concurrency_override = Some(2);
    assert_eq!(pump.concurrency_of(processor), 2);
    assert!(
        local_aws::locate_queues(&template, "never-provisioned", &sdk, &Default::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_function_that_never_answers_fails_the_batch_at_its_timeout() {
    let sdk = emulator_sdk().await;
    let (mut m, _) = fifo_with_dlq(&sdk, 1).await;
    m.invoke_timeout = Duration::from_millis(500);
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&server)
        .await;
    let mut pump = Pump::new(&sdk, server.uri());
    pump.idle_wait = Duration::from_secs(1);
    send(&sdk, &m, "g1", "stuck").await;
    let r = pump.poll_once(&m).await.unwrap().unwrap();
    assert_eq!((r.received, r.deleted), (1, 0));
    assert!(r.batch_error.unwrap().contains("no answer within"));
}

/// A function run by the pump's own runtime: a shell script speaking the Runtime API, which
/// polls for its event first and then runs `body`.
fn script_function(name: &str, body: &str, timeout: Duration) -> devstack::runtime::LocalFunction {
    let script = format!(
        "headers=$(mktemp)\n\
         event=$(curl -s -D \"$headers\" \"$api/invocation/next\")\n\
         id=$(grep -i '^lambda-runtime-aws-request-id:' \"$headers\" | cut -d' ' -f2 | tr -d '\\r')\n\
         rm -f \"$headers\"\n\
         {body}"
    );
    script_at(&format!("fn-{name}"), name, &script, timeout)
}

/// A script standing in for a function binary: `script` is its whole run, with `$api` the
/// Runtime API's base URL.
fn script_at(
    file: &str,
    name: &str,
    script: &str,
    timeout: Duration,
) -> devstack::runtime::LocalFunction {
    let path = std::env::temp_dir().join(format!("{file}-{}", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "#!/usr/bin/env bash\napi=\"http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime\"\n{script}\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    devstack::runtime::LocalFunction {
        binary: path,
        name: name.into(),
        env: Default::default(),
        timeout,
    }
}

#[tokio::test]
async fn the_pumps_own_runtime_runs_a_function_and_reports_exits_and_timeouts_at_once() {
    let sdk = emulator_sdk().await;
    let (mut m, _dlq) = fifo_with_dlq(&sdk, 3).await;
    let mut pump = Pump::new(&sdk, "http://127.0.0.1:9");
    pump.idle_wait = Duration::from_secs(1);

    // Answers: every record succeeds and is deleted; the event reached the function.
    m.local = Some(script_function(
        "ok",
        r#"case "$event" in *'"eventSource":"aws:sqs"'*) ;; *) exit 9 ;; esac
curl -s -X POST -d '{"batchItemFailures":[]}' "$api/invocation/$id/response" >/dev/null"#,
        Duration::from_secs(10),
    ));
    send(&sdk, &m, "g1", "one").await;
    let r = pump.poll_once(&m).await.unwrap().expect("a batch");
    assert_eq!((r.deleted, r.batch_error.clone()), (1, None), "{r}");

    // Dies before answering (a crash): failed at once, not after a timeout.
    m.local = Some(script_function(
        "dies",
        "kill -ABRT $$",
        Duration::from_secs(10),
    ));
    send(&sdk, &m, "g1", "two").await;
    let r = pump.poll_once(&m).await.unwrap().expect("a batch");
    assert_eq!(r.deleted, 0);
    assert!(
        r.batch_error
            .as_deref()
            .unwrap()
            .contains("Runtime.ExitError"),
        "{r}"
    );
    assert!(r.elapsed < Duration::from_secs(3), "{r}");

    // Runs past its timeout: killed, and the batch fails at the deadline.
    m.local = Some(script_function("slow", "sleep 30", Duration::from_secs(1)));
    // "two" comes back after the queue's 3 s visibility timeout.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let r = pump.poll_once(&m).await.unwrap().expect("a batch");
    assert!(
        r.batch_error.as_deref().unwrap().contains("timed out"),
        "{r}"
    );
    assert!(r.elapsed < Duration::from_secs(3), "{r}");
}

/// A script standing in for a function binary: `script` runs as its whole init.
fn init_script(name: &str, script: &str) -> devstack::runtime::LocalFunction {
    script_at(
        &format!("cold-{name}"),
        name,
        script,
        Duration::from_secs(10),
    )
}

#[tokio::test]
async fn a_cold_start_lasts_until_the_first_poll_and_an_init_failure_is_not_timed() {
    // Ready after ~300 ms of init: the time covers the init, and the process is stopped at
    // its poll (the curl would otherwise wait for an event forever).
    let took = devstack::runtime::cold_start(&init_script(
        "ready",
        "sleep 0.3; curl -s \"$api/invocation/next\" >/dev/null",
    ))
    .await
    .expect("a cold start");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let err = devstack::runtime::cold_start(&init_script(
        "init-error",
        r#"curl -s -X POST -d '{"errorType":"Config","errorMessage":"DATABASE_URL is missing"}' "$api/init/error" >/dev/null; sleep 5"#,
    ))
    .await
    .unwrap_err();
    assert!(err.contains("DATABASE_URL is missing"), "{err}");

    let err = devstack::runtime::cold_start(&init_script("exits", "exit 3"))
        .await
        .unwrap_err();
    assert!(err.contains("exited before its first poll"), "{err}");
}
