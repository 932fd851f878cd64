//! The local stand-in for Lambda's SQS event source mappings.
//!
//! For each `AWS::Lambda::EventSourceMapping` of template.yaml it long-polls the queue, gathers
//! a batch the way Lambda does (up to `BatchSize`, at most 10 per receive, waiting up to
//! `MaximumBatchingWindowInSeconds` for a fuller batch), invokes the function under
//! `cargo lambda watch` with a real SQS event through the Lambda invoke API, deletes the records
//! that succeeded and leaves the rest on the queue. Those reappear after the queue's visibility
//! timeout and, after `maxReceiveCount` receives, the queue's redrive policy moves them to the
//! DLQ: the same life a record has in AWS.
//!
//! How a response is read follows Lambda's rules for `ReportBatchItemFailures`: an empty or null
//! response, or an empty `batchItemFailures`, is complete success; a response that is not JSON,
//! or an item identifier that is empty or not a message id of the batch, fails the whole batch.
//! A function error (non-2xx, `X-Amz-Function-Error`, an `errorType` body) or an unreachable
//! function fails the whole batch too. Without `ReportBatchItemFailures` only a function error
//! fails the batch.
//!
//! Each mapping has one receiver and up to its template `MaximumConcurrency` batches invoked
//! at once ([`Pump::concurrency_of`]), like
//! Lambda running batches of different message groups at once: SQS never hands out a FIFO
//! group's records while earlier ones of the group are in flight, so order holds (receives are
//! never concurrent: the emulator's group locking races under concurrent receives). An invocation that never answers holds up only its own
//! records, which the processor's heartbeat makes visible again within a turn lease.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::SqsEvent;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use serde_json::Value;

/// One mapping, resolved to the local queue and the function's invoke URL.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub function: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: u32,
    pub batching_window: Duration,
    pub report_batch_item_failures: bool,
    /// How long an invocation may take before the batch counts as failed: the function's
    /// timeout plus time for `cargo lambda watch` to start it (a function that fails during
    /// init never answers the invoke API).
    pub invoke_timeout: Duration,
    /// The function's template `Timeout`.
    pub timeout: Duration,
    /// Run the function here (one process per invocation, [`crate::runtime`]) instead of
    /// through `cargo lambda watch`'s invoke API.
    pub local: Option<crate::runtime::LocalFunction>,
    /// Batches invoked at once: the template's `ScalingConfig.MaximumConcurrency`, as Lambda
    /// would run them (`None`: the pump's own default, [`Pump::concurrency`]).
    pub max_concurrency: Option<usize>,
}

impl Mapping {
    /// The mappings of `template`, resolved against a provisioned `stack`.
    pub fn from_template(
        template: &local_aws::Template,
        stack: &local_aws::Stack,
    ) -> Result<Vec<Mapping>, local_aws::Error> {
        Ok(template
            .event_source_mappings()?
            .into_iter()
            .map(|m| {
                let q = stack.queue(&m.queue);
                Mapping {
                    function: m.binary,
                    queue_url: q.url.clone(),
                    queue_arn: q.arn.clone(),
                    // Lambda's limits: 10 for FIFO queues, 10,000 for standard ones.
                    batch_size: m.batch_size.clamp(
                        1,
                        if q.name.ends_with(".fifo") {
                            10
                        } else {
                            10_000
                        },
                    ),
                    batching_window: Duration::from_secs(m.batching_window_secs.into()),
                    report_batch_item_failures: m.report_batch_item_failures,
                    invoke_timeout: Duration::from_secs(u64::from(m.timeout_secs) + 60),
                    timeout: Duration::from_secs(u64::from(m.timeout_secs)),
                    local: None,
                    max_concurrency: m.max_concurrency.map(|c| c as usize),
                }
            })
            .collect())
    }

    fn queue_name(&self) -> &str {
        self.queue_url.rsplit('/').next().unwrap_or(&self.queue_url)
    }
}

/// What happened to one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchReport {
    pub function: String,
    pub received: usize,
    /// Records deleted from the queue (they succeeded).
    pub deleted: usize,
    /// Records left on the queue, to come back after the visibility timeout.
    pub returned: Vec<String>,
    /// Why the whole batch failed, if it did.
    pub batch_error: Option<String>,
    pub elapsed: Duration,
}

impl BatchReport {
    /// The groups (of `group_of`: message id → group) whose records went back to the queue.
    fn groups_back(&self, group_of: &[(String, String)]) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for (id, group) in group_of {
            let back = self.batch_error.is_some() || self.returned.contains(id);
            if back && !groups.contains(group) {
                groups.push(group.clone());
            }
        }
        groups
    }

    /// How the batch's records that were not deleted went back to the queue.
    fn lane_event(&self) -> LaneEvent {
        if self.batch_error.is_some() {
            LaneEvent::Failed
        } else {
            LaneEvent::Returned
        }
    }
}

impl std::fmt::Display for BatchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} <- {} record(s): {} done, {} left for redelivery ({} ms)",
            self.function,
            self.received,
            self.deleted,
            self.returned.len(),
            self.elapsed.as_millis()
        )?;
        if let Some(e) = &self.batch_error {
            write!(f, "; batch failed: {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("SQS {what} on {queue}: {message}")]
    Sqs {
        what: &'static str,
        queue: String,
        message: String,
    },
}

/// The lane journal: one JSON line per FIFO batch received and per batch that handed records
/// back (`--journal FILE`), with the time and the message groups concerned. The fault harness
/// reads it to measure how long a lane waits after a failure before it is tried again (its
/// retry delay, or a crashed invocation's lease), which nothing else can see from outside.
pub struct Journal(std::sync::Mutex<std::fs::File>);

/// What a journal line says happened to the groups it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneEvent {
    /// A batch with records of these groups was received (an attempt starts).
    Received,
    /// The function handed these groups' records back (`batchItemFailures`).
    Returned,
    /// The whole batch failed (a crash, a function error): its records come back when their
    /// visibility runs out.
    Failed,
}

/// One line of the journal.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JournalLine {
    pub t_ms: i64,
    pub queue: String,
    pub event: LaneEvent,
    pub groups: Vec<String>,
}

impl Journal {
    /// Appends to `path` (created if missing).
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self(std::sync::Mutex::new(file)))
    }

    fn write(&self, queue: &str, event: LaneEvent, groups: Vec<String>) {
        use std::io::Write;
        if groups.is_empty() {
            return;
        }
        let line = JournalLine {
            t_ms: shared::now_ms(),
            queue: queue.to_owned(),
            event,
            groups,
        };
        let mut text = serde_json::to_string(&line).expect("a journal line serialises");
        text.push('\n');
        // One write per line: concurrent batches never interleave within a line.
        if let Err(e) = self
            .0
            .lock()
            .expect("journal lock")
            .write_all(text.as_bytes())
        {
            eprintln!("pump: journal not written: {e}");
        }
    }
}

/// The distinct message groups of `records` (FIFO queues; none for a standard queue), in
/// first-seen order.
fn groups_of<'a>(records: impl IntoIterator<Item = &'a Message>) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for m in records {
        let group = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId));
        if let Some(g) = group {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
    }
    groups
}

/// Polls queues and invokes functions.
#[derive(Clone)]
pub struct Pump {
    sqs: aws_sdk_sqs::Client,
    http: reqwest::Client,
    /// `http://127.0.0.1:9000`: where `cargo lambda watch` serves the invoke API.
    invoke_base: String,
    region: String,
    /// Long-poll wait of an idle receive.
    pub idle_wait: Duration,
    /// Batches in flight at once for a mapping whose template sets no
    /// `MaximumConcurrency`.
    pub concurrency: usize,
    /// When set, every mapping's limit instead (`--concurrency`).
    pub concurrency_override: Option<usize>,
    /// Where each FIFO batch's lanes are journalled, if anywhere.
    pub journal: Option<std::sync::Arc<Journal>>,
}

impl Pump {
    pub fn new(sdk: &aws_config::SdkConfig, invoke_base: impl Into<String>) -> Self {
        Self {
            sqs: aws_sdk_sqs::Client::new(sdk),
            http: reqwest::Client::new(),
            invoke_base: invoke_base.into().trim_end_matches('/').to_owned(),
            region: sdk
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "us-east-1".to_owned()),
            idle_wait: Duration::from_secs(10),
            concurrency: 4,
            concurrency_override: None,
            journal: None,
        }
    }

    /// Receives one batch (waiting up to `idle_wait` for the first record), invokes the function
    /// and settles the batch. `None` when the queue stayed empty.
    pub async fn poll_once(&self, m: &Mapping) -> Result<Option<BatchReport>, PumpError> {
        match self.receive_batch(m).await? {
            Some(batch) => Ok(Some(self.deliver(m, batch).await?)),
            None => Ok(None),
        }
    }

    /// Receives one batch the way Lambda gathers it (see [`Pump::poll_once`]); `None` when the
    /// queue stayed empty.
    pub async fn receive_batch(&self, m: &Mapping) -> Result<Option<Vec<Message>>, PumpError> {
        let mut batch = self
            .receive_up_to(m, self.idle_wait, m.batch_size as usize)
            .await?;
        if batch.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        while batch.len() < m.batch_size as usize {
            let left = m.batching_window.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let wait = Duration::from_secs(left.as_secs_f64().ceil() as u64);
            let more = self
                .receive_up_to(m, wait, m.batch_size as usize - batch.len())
                .await?;
            for msg in more {
                // A record whose visibility ran out during the window comes again: keep one,
                // with the newer receipt handle.
                match batch.iter_mut().find(|b| b.message_id == msg.message_id) {
                    Some(old) => *old = msg,
                    None => batch.push(msg),
                }
            }
        }
        Ok(Some(batch))
    }

    async fn receive_up_to(
        &self,
        m: &Mapping,
        wait: Duration,
        want: usize,
    ) -> Result<Vec<Message>, PumpError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&m.queue_url)
            .max_number_of_messages(want.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| PumpError::Sqs {
                what: "ReceiveMessage",
                queue: m.queue_name().to_owned(),
                message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
            })?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Invokes the function with `batch` and deletes what succeeded.
    pub async fn deliver(
        &self,
        m: &Mapping,
        batch: Vec<Message>,
    ) -> Result<BatchReport, PumpError> {
        let started = Instant::now();
        let event = self.event(m, &batch);
        let ids: Vec<String> = batch
            .iter()
            .map(|msg| msg.message_id().unwrap_or_default().to_owned())
            .collect();
        let group_of: Vec<(String, String)> = batch
            .iter()
            .filter_map(|msg| Some((msg.message_id()?.to_owned(), groups_of([msg]).pop()?)))
            .collect();
        if let Some(j) = &self.journal {
            j.write(m.queue_name(), LaneEvent::Received, groups_of(&batch));
        }
        let (failed, batch_error) = match self.invoke(m, &event).await {
            Err(e) => {
                if e.contains("HTTP 408") || e.starts_with("no answer within") {
                    // `cargo lambda watch` loses an invocation now and then when another
                    // instance of the function crashes (it never starts it, or drops its
                    // answer). Lambda has no such failure: hand the records back at once
                    // instead of after the queue's visibility timeout (a local-only step).
                    self.return_now(m, &batch).await;
                }
                (ids.iter().cloned().collect(), Some(e))
            }
            Ok(body) if m.report_batch_item_failures => match failures_of(&body, &ids) {
                Ok(failed) => (failed, None),
                Err(e) => (ids.iter().cloned().collect(), Some(e)),
            },
            Ok(_) => (HashSet::new(), None),
        };
        let done: Vec<&Message> = batch
            .iter()
            .filter(|msg| !failed.contains(msg.message_id().unwrap_or_default()))
            .collect();
        self.delete(m, &done).await?;
        let report = BatchReport {
            function: m.function.clone(),
            received: batch.len(),
            deleted: done.len(),
            returned: ids.into_iter().filter(|id| failed.contains(id)).collect(),
            batch_error,
            elapsed: started.elapsed(),
        };
        if let Some(j) = &self.journal {
            j.write(
                m.queue_name(),
                report.lane_event(),
                report.groups_back(&group_of),
            );
        }
        Ok(report)
    }

    /// The SQS event Lambda would build for `batch`.
    pub fn event(&self, m: &Mapping, batch: &[Message]) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = batch
            .iter()
            .map(|msg| local_aws::lambda_record(msg, &m.queue_arn, &self.region))
            .collect();
        event
    }

    /// Calls the Lambda invoke API of `cargo lambda watch`; the body on success, the reason the
    /// whole batch failed otherwise.
    async fn invoke(&self, m: &Mapping, event: &SqsEvent) -> Result<String, String> {
        if let Some(f) = &m.local {
            let body = serde_json::to_string(event).map_err(|e| e.to_string())?;
            return match crate::runtime::invoke(f, body).await? {
                crate::runtime::Ended::Response(body) => Ok(body),
                crate::runtime::Ended::Error { kind, message } => {
                    Err(format!("function error ({kind}: {message})"))
                }
            };
        }
        let url = format!(
            "{}/2015-03-31/functions/{}/invocations",
            self.invoke_base, m.function
        );
        let resp = self
            .http
            .post(&url)
            .timeout(m.invoke_timeout)
            .json(event)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!(
                        "no answer within {} s (a function that fails at start-up never answers: see the watch log)",
                        m.invoke_timeout.as_secs()
                    )
                } else {
                    format!("function unreachable at {url}: {e}")
                }
            })?;
        let status = resp.status();
        let function_error = resp
            .headers()
            .get("x-amz-function-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .text()
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        let error_type = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
            v.get("errorType")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        if !status.is_success() || function_error.is_some() || error_type.is_some() {
            return Err(format!(
                "function error (HTTP {}, {})",
                status.as_u16(),
                error_type
                    .or(function_error)
                    .unwrap_or_else(|| "no error type".to_owned())
            ));
        }
        Ok(body)
    }

    /// Makes `batch` visible again now (best effort).
    async fn return_now(&self, m: &Mapping, batch: &[Message]) {
        let items: Vec<(String, i32)> = batch
            .iter()
            .filter_map(|msg| Some((msg.receipt_handle()?.to_owned(), 0)))
            .collect();
        let publisher = shared::queue::QueuePublisher::new(self.sqs.clone(), Default::default());
        let returned = publisher.set_visibility(&m.queue_url, &items).await;
        if returned < items.len() {
            eprintln!(
                "pump: handed {returned} of {} records of a lost batch back to {}",
                items.len(),
                m.queue_name()
            );
        }
    }

    async fn delete(&self, m: &Mapping, done: &[&Message]) -> Result<(), PumpError> {
        for chunk in done.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, msg)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(msg.receipt_handle().unwrap_or_default())
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect();
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(&m.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| PumpError::Sqs {
                    what: "DeleteMessageBatch",
                    queue: m.queue_name().to_owned(),
                    message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
                })?;
            if let Some(f) = out.failed().first() {
                return Err(PumpError::Sqs {
                    what: "DeleteMessageBatch",
                    queue: m.queue_name().to_owned(),
                    message: format!(
                        "{} of the batch not deleted: {}",
                        out.failed().len(),
                        f.code()
                    ),
                });
            }
        }
        Ok(())
    }

    /// How many batches of `m` may be invoked at once.
    pub fn concurrency_of(&self, m: &Mapping) -> usize {
        self.concurrency_override
            .or(m.max_concurrency)
            .unwrap_or(self.concurrency)
            .max(1)
    }

    /// Polls `m` until the task is dropped, with up to [`Pump::concurrency_of`] batches in
    /// flight, printing one line per batch.
    pub async fn run(self, m: Mapping) {
        let concurrency = self.concurrency_of(&m);
        println!(
            "pump: {} <- {} (batch {}, window {} s, up to {concurrency} at once)",
            m.function,
            m.queue_name(),
            m.batch_size,
            m.batching_window.as_secs(),
        );
        // One receiver (concurrent receives race in the emulator's FIFO group locking), and
        // up to `concurrency` batches invoked at once.
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
        // Dropping the set (the task is aborted) stops every invocation in flight.
        let mut inflight = tokio::task::JoinSet::new();
        loop {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            match self.receive_batch(&m).await {
                Ok(Some(batch)) => {
                    let (pump, m) = (self.clone(), m.clone());
                    inflight.spawn(async move {
                        match pump.deliver(&m, batch).await {
                            Ok(report) => println!("pump: {report}"),
                            Err(e) => eprintln!("pump: {e}"),
                        }
                        drop(permit);
                    });
                }
                Ok(None) => drop(permit),
                Err(e) => {
                    drop(permit);
                    eprintln!("pump: {e}; retrying in 2 s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            while inflight.try_join_next().is_some() {}
        }
    }
}

/// The message ids a `ReportBatchItemFailures` response returns, by Lambda's rules.
pub fn failures_of(body: &str, ids: &[String]) -> Result<HashSet<String>, String> {
    let body = body.trim();
    if body.is_empty() || body == "null" {
        return Ok(HashSet::new());
    }
    let not_batch = || "the response is not a batch response".to_owned();
    let resp: Value = serde_json::from_str(body).map_err(|_| not_batch())?;
    let entries = match &resp {
        Value::Null => return Ok(HashSet::new()),
        Value::Object(o) => match o.get("batchItemFailures") {
            None | Some(Value::Null) => return Ok(HashSet::new()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(not_batch()),
        },
        _ => return Err(not_batch()),
    };
    let mut failed = HashSet::new();
    for entry in entries {
        match entry.get("itemIdentifier").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && ids.iter().any(|i| i == id) => {
                failed.insert(id.to_owned());
            }
            _ => return Err("a batchItemFailures entry names no record of the batch".to_owned()),
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_batches_are_capped_at_ten_like_lambdas() {
        let template = local_aws::Template::parse(
            r#"
Resources:
  F: {Type: AWS::Serverless::Function, Metadata: {BuildProperties: {Binary: f}}, Properties: {Timeout: 7}}
  Q: {Type: AWS::SQS::Queue}
  S: {Type: AWS::SQS::Queue}
  MQ: {Type: AWS::Lambda::EventSourceMapping, Properties: {EventSourceArn: !GetAtt Q.Arn, FunctionName: !Ref F, BatchSize: 50}}
  MS: {Type: AWS::Lambda::EventSourceMapping, Properties: {EventSourceArn: !GetAtt S.Arn, FunctionName: !Ref F, BatchSize: 50}}
"#,
        )
        .unwrap();
        let mut stack = local_aws::Stack::default();
        for (id, name) in [("Q", "q.fifo"), ("S", "s")] {
            stack.queues.insert(
                id.into(),
                local_aws::Queue {
                    name: name.into(),
                    url: format!("http://127.0.0.1:1/1/{name}"),
                    arn: format!("arn:aws:sqs:us-east-1:1:{name}"),
                },
            );
        }
        let mut m = Mapping::from_template(&template, &stack).unwrap();
        m.sort_by(|a, b| a.queue_url.cmp(&b.queue_url));
        assert_eq!((m[0].batch_size, m[1].batch_size), (10, 50));
        assert_eq!(m[0].invoke_timeout, Duration::from_secs(67));
        assert_eq!(m[0].queue_name(), "q.fifo");
    }

    #[test]
    fn batch_responses_are_read_by_lambdas_rules() {
        let ids = vec!["a".to_owned(), "b".to_owned()];
        assert!(failures_of("", &ids).unwrap().is_empty());
        assert!(failures_of("null", &ids).unwrap().is_empty());
        assert!(failures_of("{}", &ids).unwrap().is_empty());
        assert!(failures_of(r#"{"batchItemFailures":[]}"#, &ids)
            .unwrap()
            .is_empty());
        assert_eq!(
            failures_of(r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#, &ids).unwrap(),
            HashSet::from(["b".to_owned()])
        );
        assert!(failures_of(r#"{"batchItemFailures":null}"#, &ids)
            .unwrap()
            .is_empty());
        assert!(failures_of("not json", &ids).is_err());
        assert!(failures_of(r#""ok""#, &ids).is_err());
        assert!(failures_of(r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#, &ids).is_err());
        assert!(failures_of(r#"{"batchItemFailures":[{"itemIdentifier":"zz"}]}"#, &ids).is_err());
    }
}
