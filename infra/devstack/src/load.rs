//! `devstack load`: the fault harness. It drives a running local stack (`make dev`'s script,
//! started by `make load` or the fault test with faults and crash points armed) the way Meta
//! would: C conversations × M messages as signed webhooks over HTTP, some delivered twice. The
//! stub upstreams fail some requests on purpose, the processor aborts at its crash points,
//! Postgres is restarted once mid-run. When every message is answered (or the time is up) it
//! checks, per conversation, from the Graph sink and Postgres:
//!
//! - every inbound message stored exactly once (**lost**, **stored twice**);
//! - at most one reply per turn (**duplicate replies**: two sends answering the same message);
//! - replies in conversation order (**order violations**);
//! - each recorded turn charged once, and only turns that reached the customer (**charges**);
//! - every message answered (**unanswered**);
//!
//! and reports msgs/s, webhook-to-reply p50/p99, the longest stall per lane (a lane is what
//! the queue orders by: the business account, or the conversation), `unknown` sends, the DLQ
//! and the AWS requests per inbound message. It prints a table, writes `load-report.json` and a
//! self-contained `load-report.html`, and the command exits non-zero on any violation.
//!
//! How replies are matched to messages: each message's text is `c<conv> m<n> <run>`; the stub
//! model quotes the turn's last message, so a reply names the newest message its turn covered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use shared::db::Db;
use shared::signature::SignatureKey;

use crate::pump::{JournalLine, LaneEvent};
use crate::seed::{DEMO_INSTAGRAM_ACCOUNT, DEMO_WHATSAPP_NUMBER};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub conversations: usize,
    pub messages: usize,
    /// Share of messages Meta delivers twice.
    pub duplicates: f64,
    /// Share of conversations on Instagram (the rest are WhatsApp).
    pub instagram: f64,
    /// Mean pause between a customer's messages.
    pub gap: Duration,
    /// Webhook deliveries in flight at once (Meta's delivery is not unbounded either; the
    /// local webhook under `cargo lambda watch` serves a few at a time).
    pub webhook_concurrency: usize,
    pub webhook: String,
    pub app_secret: String,
    /// The stub upstreams' base URL (`http://127.0.0.1:9100`).
    pub stubs: String,
    /// Stub faults for the run (`infra/devstack/src/stubs.rs`); cleared afterwards.
    pub faults: String,
    /// A shell command that restarts Postgres, run once half the messages are sent.
    pub restart_postgres: Option<String>,
    /// moto's request log: its lines are the AWS requests of the run.
    pub moto_log: Option<PathBuf>,
    /// fauxqs's log, when SQS runs there: its `incoming request` lines are SQS requests.
    pub sqs_log: Option<PathBuf>,
    /// The queue-driven functions' log (the pump's): the crash points that fired are counted
    /// from it.
    pub functions_log: Option<PathBuf>,
    /// The pump's lane journal (`devstack pump --journal`): when each FIFO group was tried and
    /// when it was handed back, from which the stalls are measured.
    pub journal: Option<PathBuf>,
    pub dlq_url: Option<String>,
    /// `channel_account` or `conversation` (the stack's ORDERING_SCOPE).
    pub ordering_scope: String,
    /// Longest a run may take after the last message is sent.
    pub drain_timeout: Duration,
    /// A lane waiting longer than this for its next attempt after a failure is a violation
    /// (the processor's maximum retry delay plus the time to pick the lane up again).
    pub max_stall: Duration,
    pub report_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Setup(String),
    #[error("database: {0}")]
    Db(#[from] shared::db::DbError),
    #[error("stub server at {url}: {message}")]
    Stubs { url: String, message: String },
}

/// One customer message as sent.
#[derive(Debug, Clone)]
struct Sent {
    conv: usize,
    n: usize,
    id: String,
    at_ms: i64,
}

/// One reply the customer got (a send the Graph sink recorded).
#[derive(Debug, Clone)]
struct Reply {
    conv: usize,
    /// The newest message of the conversation the reply answers.
    n: usize,
    at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Violations {
    pub lost: usize,
    pub stored_twice: usize,
    pub duplicate_replies: usize,
    pub order_violations: usize,
    pub charged_twice: usize,
    pub charged_not_delivered: usize,
    pub delivered_not_charged: usize,
    pub unanswered: usize,
    pub stalls_over_limit: usize,
    /// Records in the inbound DLQ: every fault the harness injects is transient, so any
    /// parked record is a defect (an operator would have to redrive it).
    pub parked: usize,
}

impl Violations {
    pub fn total(&self) -> usize {
        self.lost
            + self.stored_twice
            + self.duplicate_replies
            + self.order_violations
            + self.charged_twice
            + self.charged_not_delivered
            + self.delivered_not_charged
            + self.unanswered
            + self.stalls_over_limit
            + self.parked
    }
}

/// One time bucket of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub t_s: f64,
    pub answered_per_s: f64,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LaneStall {
    pub lane: String,
    /// The longest the lane waited, after a failure (records handed back, or an invocation
    /// that died), for its next attempt: its stall. Measured from the pump's journal.
    pub longest_stall_ms: i64,
    /// How often the lane was handed back (retryable failures and crashed invocations).
    pub failures: usize,
    /// The longest time the lane had messages waiting and settled none: failed attempts,
    /// their retry delays and queueing together (what a customer of the lane felt).
    pub longest_unsettled_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub ordering_scope: String,
    pub conversations: usize,
    pub messages_per_conversation: usize,
    pub messages: usize,
    pub duplicate_deliveries: usize,
    pub webhook_retries: u64,
    pub faults: String,
    pub faults_injected: Value,
    pub crashes: Option<usize>,
    pub postgres_restarted_at_s: Option<f64>,
    pub seconds: f64,
    pub msgs_per_s: f64,
    pub latency_p50_ms: Option<i64>,
    pub latency_p99_ms: Option<i64>,
    pub replies: usize,
    pub turns: usize,
    pub outcomes: BTreeMap<String, usize>,
    pub unknown_sends: usize,
    pub dlq_messages: Option<i64>,
    pub aws_requests: Option<u64>,
    pub aws_requests_per_message: Option<f64>,
    pub longest_stall_ms: i64,
    pub max_stall_ms: i64,
    /// The longest any lane settled nothing while it had messages waiting.
    pub longest_unsettled_ms: i64,
    pub lanes: Vec<LaneStall>,
    pub timeline: Vec<Bucket>,
    pub violations: Violations,
    pub violation_examples: Vec<String>,
}

/// Counts the lines of a growing log that contain `needle` (every line when `None`), reading
/// only what was appended since the last call.
struct LogLines {
    path: Option<PathBuf>,
    needle: Option<&'static str>,
    read: u64,
    partial: Vec<u8>,
    lines: usize,
}

impl LogLines {
    fn new(path: &Option<PathBuf>, needle: Option<&'static str>) -> Self {
        Self {
            path: path.clone(),
            needle,
            read: 0,
            partial: Vec::new(),
            lines: 0,
        }
    }

    /// The complete lines counted so far (`None` without a readable log).
    fn count(&mut self) -> Option<usize> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(self.path.as_ref()?).ok()?;
        if file.metadata().ok()?.len() < self.read {
            // Truncated or replaced: start over.
            self.read = 0;
            self.partial.clear();
            self.lines = 0;
        }
        file.seek(SeekFrom::Start(self.read)).ok()?;
        let appended = file.read_to_end(&mut self.partial).ok()?;
        self.read += appended as u64;
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            let needle = self.needle;
            self.lines += self.partial[..end]
                .split(|&b| b == b'\n')
                .filter(|line| needle.is_none_or(|n| String::from_utf8_lossy(line).contains(n)))
                .count();
            self.partial.drain(..=end);
        }
        Some(self.lines)
    }
}

/// The customers' side: signed webhooks for WhatsApp and Instagram.
struct Meta {
    http: reqwest::Client,
    webhook: String,
    key: SignatureKey,
    run: String,
    instagram_every: usize,
    retries: AtomicU64,
    in_flight: tokio::sync::Semaphore,
}

impl Meta {
    fn is_instagram(&self, conv: usize) -> bool {
        self.instagram_every > 0 && conv % self.instagram_every == self.instagram_every - 1
    }

    /// The contact id the conversation's customer has (wa_id or IGSID).
    fn contact(&self, conv: usize) -> String {
        if self.is_instagram(conv) {
            format!("77{}{conv:08}", self.run)
        } else {
            format!("52{}{conv:08}", self.run)
        }
    }

    fn body(&self, conv: usize, id: &str, text: &str) -> String {
        let now = shared::now_ms();
        let from = self.contact(conv);
        if self.is_instagram(conv) {
            json!({"object": "instagram", "entry": [{"id": DEMO_INSTAGRAM_ACCOUNT, "time": now,
                "messaging": [{"sender": {"id": from}, "recipient": {"id": DEMO_INSTAGRAM_ACCOUNT},
                               "timestamp": now, "message": {"mid": id, "text": text}}]}]})
            .to_string()
        } else {
            crate::demo::whatsapp_text(
                &format!("Load {conv}"),
                &from,
                id,
                text,
                (now / 1000) as u64,
            )
        }
    }

    /// Delivers `body` until the webhook takes it (as Meta retries a webhook that fails).
    async fn deliver(&self, body: &str) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..20 {
            if attempt > 0 {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500 * attempt.min(6))).await;
            }
            let _permit = self.in_flight.acquire().await.expect("never closed");
            let sent = self
                .http
                .post(&self.webhook)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", self.key.sign(body.as_bytes()))
                .body(body.to_owned())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!(
            "the webhook did not take a message after 20 tries: {last}"
        ))
    }
}

/// Runs the load and checks it. The report says what happened; `Err` only when the run could
/// not be made at all.
pub async fn run(cfg: &LoadConfig, db: &Db) -> Result<Report, LoadError> {
    if cfg.journal.is_none() {
        return Err(LoadError::Setup(
            "no lane journal: run the pump with --journal F and pass the same --journal F \
             (the stalls are measured from it)"
                .into(),
        ));
    }
    let stubs = cfg.stubs.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| LoadError::Setup(e.to_string()))?;
    let stub_err = |e: reqwest::Error| LoadError::Stubs {
        url: stubs.clone(),
        message: e.to_string(),
    };
    let set_faults = |spec: String| {
        let http = http.clone();
        let url = format!("{stubs}/_faults");
        async move {
            let r = http.post(url).body(spec).send().await?;
            r.error_for_status().map(|_| ())
        }
    };
    // The demo tenant pays for the whole run.
    let route = shared::db::channels::resolve_channel_account(
        db,
        shared::envelope::Channel::Whatsapp,
        DEMO_WHATSAPP_NUMBER,
    )
    .await?
    .ok_or_else(|| LoadError::Setup("no demo tenant: run devstack seed first".into()))?;
    let need = (cfg.conversations * cfg.messages) as i64 * 1_000;
    shared::db::credits::top_up(
        db,
        route.tenant,
        need.max(1),
        "top_up",
        Some("devstack load"),
    )
    .await?;
    let ledger_mark: i64 = db
        .client()
        .await?
        .query_one("SELECT COALESCE(max(id), 0) FROM credit_ledger", &[])
        .await
        .map_err(shared::db::DbError::from)?
        .get(0);
    let sink_mark = http
        .get(format!("{stubs}/_sent"))
        .send()
        .await
        .map_err(stub_err)?
        .json::<Vec<Value>>()
        .await
        .map_err(stub_err)?
        .len();
    set_faults(cfg.faults.clone()).await.map_err(stub_err)?;
    let mut moto_lines = LogLines::new(&cfg.moto_log, None);
    let mut sqs_lines = LogLines::new(&cfg.sqs_log, Some("incoming request"));
    let mut aws_count = || {
        let moto = moto_lines.count()?;
        Some(moto + sqs_lines.count().unwrap_or(0))
    };
    let moto_mark = aws_count();
    let mut crash_lines = LogLines::new(&cfg.functions_log, Some("aborting (FAIL_POINTS)"));
    let crash_mark = crash_lines.count();
    let journal_mark = cfg
        .journal
        .as_ref()
        .and_then(|j| std::fs::metadata(j).ok())
        .map_or(0, |m| m.len());

    let run_tag = format!(
        "{:04}",
        u16::from_le_bytes(shared::random_bytes::<2>()) % 10_000
    );
    let meta = Arc::new(Meta {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| LoadError::Setup(e.to_string()))?,
        webhook: cfg.webhook.clone(),
        key: SignatureKey::new(cfg.app_secret.as_bytes()),
        run: run_tag.clone(),
        instagram_every: if cfg.instagram > 0.0 {
            (1.0 / cfg.instagram).round().max(1.0) as usize
        } else {
            0
        },
        retries: AtomicU64::new(0),
        in_flight: tokio::sync::Semaphore::new(cfg.webhook_concurrency.max(1)),
    });
    let total = cfg.conversations * cfg.messages;
    let started = Instant::now();
    let start_ms = shared::now_ms();
    let sent_count = Arc::new(AtomicU64::new(0));
    let dup_count = Arc::new(AtomicU64::new(0));
    println!(
        "load: {} conversations x {} messages ({} on Instagram), {:.0}% duplicates, faults `{}`, ordering {}",
        cfg.conversations,
        cfg.messages,
        (0..cfg.conversations).filter(|c| meta.is_instagram(*c)).count(),
        cfg.duplicates * 100.0,
        cfg.faults,
        cfg.ordering_scope
    );

    let mut customers = tokio::task::JoinSet::new();
    for conv in 0..cfg.conversations {
        let meta = meta.clone();
        let (sent_count, dup_count) = (sent_count.clone(), dup_count.clone());
        let (messages, gap, dup_rate) = (cfg.messages, cfg.gap, cfg.duplicates);
        let run_tag = run_tag.clone();
        customers.spawn(async move {
            let mut sent = Vec::with_capacity(messages);
            let mut dups = Vec::new();
            // Customers do not all start at once.
            tokio::time::sleep(gap.mul_f64(shared::random_unit())).await;
            for n in 1..=messages {
                let id = if meta.is_instagram(conv) {
                    format!(
                        "mid.LOAD{run_tag}c{conv}m{n}{}",
                        uuid::Uuid::new_v4().simple()
                    )
                } else {
                    format!(
                        "wamid.LOAD{run_tag}c{conv}m{n}{}",
                        uuid::Uuid::new_v4().simple()
                    )
                };
                let body = meta.body(conv, &id, &format!("c{conv} m{n} r{run_tag}"));
                let at_ms = shared::now_ms();
                meta.deliver(&body).await?;
                sent_count.fetch_add(1, Ordering::Relaxed);
                sent.push(Sent { conv, n, id, at_ms });
                if shared::random_unit() < dup_rate {
                    let meta = meta.clone();
                    let dup_count = dup_count.clone();
                    dups.push(tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(
                            (shared::random_unit() * 3000.0) as u64,
                        ))
                        .await;
                        if meta.deliver(&body).await.is_ok() {
                            dup_count.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                tokio::time::sleep(gap.mul_f64(2.0 * shared::random_unit())).await;
            }
            for d in dups {
                let _ = d.await;
            }
            Ok::<Vec<Sent>, String>(sent)
        });
    }

    // Progress, the Postgres restart, and the sink, while the customers talk.
    let mut sink: Vec<Value> = Vec::new();
    let mut restarted_at = None;
    let mut all_sent: Vec<Sent> = Vec::with_capacity(total);
    let mut send_errors = Vec::new();
    let mut last_progress = Instant::now();
    let mut drained_since: Option<Instant> = None;
    loop {
        while let Some(done) = customers.try_join_next() {
            match done {
                Ok(Ok(sent)) => all_sent.extend(sent),
                Ok(Err(e)) => send_errors.push(e),
                Err(e) => send_errors.push(e.to_string()),
            }
        }
        let sent_now = sent_count.load(Ordering::Relaxed) as usize;
        if restarted_at.is_none() && sent_now * 2 >= total {
            if let Some(cmd) = &cfg.restart_postgres {
                println!("load: restarting Postgres ({cmd})");
                let out = tokio::process::Command::new("bash")
                    .arg("-c")
                    .arg(cmd)
                    .status()
                    .await
                    .map_err(|e| LoadError::Setup(format!("restarting Postgres: {e}")))?;
                if !out.success() {
                    return Err(LoadError::Setup(format!(
                        "restarting Postgres failed ({out}): {cmd}"
                    )));
                }
            }
            restarted_at = Some(started.elapsed().as_secs_f64());
        }
        if let Ok(r) = http
            .get(format!("{stubs}/_sent?after={}", sink_mark + sink.len()))
            .send()
            .await
        {
            if let Ok(more) = r.json::<Vec<Value>>().await {
                sink.extend(more);
            }
        }
        let senders_done = customers.is_empty();
        let answered = if last_progress.elapsed() >= Duration::from_secs(3) {
            count_answered(db, &all_sent, &meta).await.ok()
        } else {
            None
        };
        if last_progress.elapsed() >= Duration::from_secs(3) {
            let faults = http
                .get(format!("{stubs}/_faults"))
                .send()
                .await
                .ok()
                .map(|r| async { r.json::<Value>().await.ok() });
            let injected = match faults {
                Some(f) => f.await.map(|v| v["injected"].clone()),
                None => None,
            };
            let injected_n: u64 = injected
                .as_ref()
                .and_then(Value::as_object)
                .map(|o| o.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            let crashes = crash_lines
                .count()
                .zip(crash_mark)
                .map(|(a, b)| a.saturating_sub(b));
            let (stored, done) = answered.unwrap_or((0, 0));
            println!(
                "load: {:>5.0} s  sent {sent_now}/{total} (+{} dup, {} webhook retries)  answered {done}  in flight {}  replies {}  faults {injected_n}{}",
                started.elapsed().as_secs_f64(),
                dup_count.load(Ordering::Relaxed),
                meta.retries.load(Ordering::Relaxed),
                sent_now.saturating_sub(done),
                sink.len(),
                crashes.map(|c| format!("  crashes {c}")).unwrap_or_default()
            );
            let _ = stored;
            last_progress = Instant::now();
            if senders_done {
                if done >= all_sent.len() {
                    break;
                }
                let since = *drained_since.get_or_insert_with(Instant::now);
                if since.elapsed() > cfg.drain_timeout {
                    println!(
                        "load: {} message(s) still unanswered after {} s; checking what there is",
                        all_sent.len() - done,
                        cfg.drain_timeout.as_secs()
                    );
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Late sends (a resend after a missing echo) would show up within the echo window; the
    // run ends when every message is answered, so take what arrived.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Ok(r) = http
        .get(format!("{stubs}/_sent?after={}", sink_mark + sink.len()))
        .send()
        .await
    {
        if let Ok(more) = r.json::<Vec<Value>>().await {
            sink.extend(more);
        }
    }
    let faults_injected = http
        .get(format!("{stubs}/_faults"))
        .send()
        .await
        .map_err(stub_err)?
        .json::<Value>()
        .await
        .map_err(stub_err)?["injected"]
        .clone();
    set_faults(String::new()).await.map_err(stub_err)?;
    let aws_requests = aws_count()
        .zip(moto_mark)
        .map(|(a, b)| a.saturating_sub(b) as u64);
    let crashes = crash_lines
        .count()
        .zip(crash_mark)
        .map(|(a, b)| a.saturating_sub(b));
    let dlq = match &cfg.dlq_url {
        Some(url) => dlq_contents(url).await,
        None => None,
    };

    let journal = match &cfg.journal {
        Some(path) => read_journal(path, journal_mark),
        None => Vec::new(),
    };
    if journal.is_empty() && !all_sent.is_empty() {
        return Err(LoadError::Setup(
            "the pump's lane journal has no line from this run: is the pump writing the \
             --journal the harness reads?"
                .into(),
        ));
    }
    let mut report = check(
        cfg,
        db,
        &meta,
        &all_sent,
        &sink,
        &journal,
        ledger_mark,
        start_ms,
        seconds,
    )
    .await?;
    for e in send_errors.iter().take(5) {
        report
            .violation_examples
            .push(format!("a customer stopped sending: {e}"));
    }
    report.violations.lost += total - all_sent.len();
    report.duplicate_deliveries = dup_count.load(Ordering::Relaxed) as usize;
    report.webhook_retries = meta.retries.load(Ordering::Relaxed);
    report.faults_injected = faults_injected;
    report.crashes = crashes;
    report.postgres_restarted_at_s = restarted_at.filter(|_| cfg.restart_postgres.is_some());
    report.dlq_messages = dlq.as_ref().map(|d| d.len() as i64);
    if let Some(dlq) = dlq {
        report.violations.parked = dlq.len();
        report.violation_examples.extend(dlq.into_iter().take(10));
    }
    report.aws_requests = aws_requests;
    report.aws_requests_per_message = aws_requests.map(|a| a as f64 / all_sent.len().max(1) as f64);
    write_reports(&report, &cfg.report_dir)?;
    Ok(report)
}

/// (stored, answered) of the messages sent so far.
async fn count_answered(
    db: &Db,
    sent: &[Sent],
    _meta: &Meta,
) -> Result<(usize, usize), shared::db::DbError> {
    let ids: Vec<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    let c = db.client().await?;
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE outcome IS NOT NULL) FROM messages
              WHERE direction = 'in' AND provider_message_id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok((row.get::<_, i64>(0) as usize, row.get::<_, i64>(1) as usize))
}

/// What the DLQ holds, one line per record: the message it carries (`c<conv> m<n>`) and why
/// it is there (the processor's `parked_reason`, or the queue's redrive after its receives).
/// Records are looked at, not taken: they become visible again after 30 s.
async fn dlq_contents(url: &str) -> Option<Vec<String>> {
    let sdk = shared::aws::sdk_config().await.ok()?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let mut lines = Vec::new();
    loop {
        let records = local_aws::receive_records(&sqs, url, Some(30)).await.ok()?;
        if records.is_empty() || lines.len() >= 1000 {
            return Some(lines);
        }
        for m in records {
            let body = m.body.as_deref().unwrap_or_default();
            let which = quoted_message(body).unwrap_or_else(|| "a record".to_owned());
            let why = m
                .message_attributes
                .get("parked_reason")
                .and_then(|v| v.string_value.as_deref())
                .map(|r| format!("parked by the function: {r}"))
                .unwrap_or_else(|| "moved by the queue's redrive policy (out of receives)".into());
            lines.push(format!("DLQ: {which}, {why}"));
        }
    }
}

/// The first `c<conv> m<n>` a text quotes.
fn quoted_message(text: &str) -> Option<String> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    text.match_indices('c').find_map(|(i, _)| {
        let rest = &text[i + 1..];
        let c = digits(rest);
        let n = rest[c..].strip_prefix(" m").map(digits)?;
        (c > 0 && n > 0).then(|| text[i..i + 1 + c + 2 + n].to_owned())
    })
}

/// The `(conv, n)` a sink entry answers: the newest `c<conv> m<n>` its text quotes.
fn answered_by(text: &str, run: &str) -> Option<(usize, usize)> {
    let suffix = format!(" r{run}");
    let mut best: Option<(usize, usize)> = None;
    for (i, _) in text.match_indices(&suffix) {
        let head = &text[..i];
        let Some(c_at) = head.rfind('c') else {
            continue;
        };
        let mut it = head[c_at + 1..].split(" m");
        let (Some(c), Some(n)) = (it.next(), it.next()) else {
            continue;
        };
        if let (Ok(c), Ok(n)) = (c.parse::<usize>(), n.parse::<usize>()) {
            if best.is_none_or(|(bc, bn)| bc == c && n > bn) {
                best = Some((c, n));
            }
        }
    }
    best
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// The longest time a lane had messages waiting and settled none of them: `events` are
/// (time, +1 for a message sent / -k for k messages settled), in any order. Every settle
/// restarts the clock. This adds up failed attempts, their retry delays and any queueing, so
/// it is reported, not judged: the stall is [`longest_retry_wait`].
pub fn longest_unsettled(mut events: Vec<(i64, i64)>, end_ms: i64) -> i64 {
    events.sort_by_key(|(t, d)| (*t, -*d));
    let (mut pending, mut since, mut longest) = (0i64, 0i64, 0i64);
    for (t, delta) in events {
        if delta > 0 {
            if pending == 0 {
                since = t;
            }
            pending += delta;
        } else {
            if pending > 0 {
                longest = longest.max(t - since);
            }
            pending = (pending + delta).max(0);
            since = t;
        }
    }
    if pending > 0 {
        longest = longest.max(end_ms - since);
    }
    longest
}

/// A lane's stall: the longest it waited, after a failure, for its next attempt, and how
/// many failures it had. `events` are one lane's journal entries (time, what happened), in any
/// order; a failure the lane was never tried after waits until `end_ms`. An attempt that fails
/// is not a stall (it is work); the wait after it is: the retry delay the function chose, or a
/// crashed invocation's lease, plus the time to be picked up again.
pub fn longest_retry_wait(mut events: Vec<(i64, LaneEvent)>, end_ms: i64) -> (i64, usize) {
    // At equal times a hand-back comes before the next attempt it allows.
    events.sort_by_key(|(t, e)| (*t, *e == LaneEvent::Received));
    let (mut failed_at, mut longest, mut failures) = (None::<i64>, 0i64, 0usize);
    for (t, event) in events {
        match event {
            LaneEvent::Received => {
                if let Some(f) = failed_at.take() {
                    longest = longest.max(t - f);
                }
            }
            LaneEvent::Returned | LaneEvent::Failed => {
                failures += 1;
                failed_at.get_or_insert(t);
            }
        }
    }
    if let Some(f) = failed_at {
        longest = longest.max(end_ms - f);
    }
    (longest, failures)
}

/// The journal's lines appended after byte `from` (a line cut off at the end is left out).
pub fn read_journal(path: &std::path::Path, from: u64) -> Vec<JournalLine> {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_end(&mut text);
        }
    }
    text.split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

/// When a message sent at `sent_ms` stopped waiting on its lane: its first covering reply,
/// else the time its outcome was written (a turn that ended without a delivery), else never.
fn settled_at(sent_ms: i64, first_reply_ms: Option<i64>, outcome_ms: Option<i64>) -> Option<i64> {
    first_reply_ms.or(outcome_ms.map(|t| t.max(sent_ms)))
}

#[allow(clippy::too_many_arguments)]
async fn check(
    cfg: &LoadConfig,
    db: &Db,
    meta: &Meta,
    sent: &[Sent],
    sink: &[Value],
    journal: &[JournalLine],
    ledger_mark: i64,
    start_ms: i64,
    seconds: f64,
) -> Result<Report, LoadError> {
    let mut v = Violations::default();
    let mut examples = Vec::new();
    let mut example = |s: String| {
        if examples.len() < 20 {
            examples.push(s);
        }
    };
    let c = db.client().await?;
    // One snapshot for every query below: a run cut off by its drain time still has turns
    // recording, and a turn recorded between two queries looked charged and not delivered.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(shared::db::DbError::from)?;
    // Inbound, stored once each.
    let ids: Vec<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    let rows = c
        .query(
            "SELECT provider_message_id, count(*) FROM messages
              WHERE direction = 'in' AND provider_message_id = ANY($1) GROUP BY 1",
            &[&ids],
        )
        .await
        .map_err(shared::db::DbError::from)?;
    let stored: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for s in sent {
        match stored.get(&s.id) {
            None => {
                v.lost += 1;
                example(format!("c{} m{}: never stored", s.conv, s.n));
            }
            Some(n) if *n > 1 => {
                v.stored_twice += 1;
                example(format!("c{} m{}: stored {n} times", s.conv, s.n));
            }
            _ => {}
        }
    }
    // Replies as the customers got them.
    let contact_conv: HashMap<String, usize> = (0..cfg.conversations)
        .map(|conv| (meta.contact(conv), conv))
        .collect();
    let mut replies: Vec<Reply> = Vec::new();
    for entry in sink {
        let Some(&conv) = entry["to"].as_str().and_then(|t| contact_conv.get(t)) else {
            continue;
        };
        let text = entry["text"].as_str().unwrap_or_default();
        match answered_by(text, &meta.run) {
            Some((c_of, n)) if c_of == conv => replies.push(Reply {
                conv,
                n,
                at_ms: entry["at_ms"].as_i64().unwrap_or_default(),
            }),
            _ => example(format!("c{conv}: a reply that names none of its messages")),
        }
    }
    let mut by_conv: BTreeMap<usize, Vec<&Reply>> = BTreeMap::new();
    for r in &replies {
        by_conv.entry(r.conv).or_default().push(r);
    }
    for (conv, rs) in &by_conv {
        let mut seen = HashSet::new();
        let mut last = 0;
        for r in rs {
            if !seen.insert(r.n) {
                v.duplicate_replies += 1;
                example(format!("c{conv}: two replies answering m{}", r.n));
            } else if r.n < last {
                v.order_violations += 1;
                example(format!(
                    "c{conv}: the reply to m{} came after the one to m{last}",
                    r.n
                ));
            }
            last = last.max(r.n);
        }
    }
    // Every message answered: its outcome set and a reply at or after it (or an outcome that
    // explains why not).
    let outcomes_rows = c
        .query(
            "SELECT provider_message_id, outcome,
                    (extract(epoch FROM updated_at) * 1000)::bigint
               FROM messages
              WHERE direction = 'in' AND provider_message_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(shared::db::DbError::from)?;
    // Outcome, and when it was written (the row's last update: an inbound row changes only
    // when a turn takes it and when its outcome is recorded).
    let outcome_of: HashMap<String, (Option<String>, i64)> = outcomes_rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut latencies = Vec::new();
    let mut answered_at: Vec<(i64, i64)> = Vec::new();
    // Lanes: what the queue orders by. A message is pending on its lane from its send until
    // it is settled: by the first reply that covers it, or, for an outcome without a reply
    // (an Instagram send left `unknown`, no answer, a handoff), when that outcome was written.
    let end_ms = start_ms + (seconds * 1000.0) as i64;
    let lane_of = |conv: usize| -> String {
        if cfg.ordering_scope == "conversation" {
            format!("c{conv}")
        } else if meta.is_instagram(conv) {
            "instagram account".to_owned()
        } else {
            "whatsapp number".to_owned()
        }
    };
    let mut lane_events: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for s in sent {
        let first_reply = by_conv
            .get(&s.conv)
            .and_then(|rs| rs.iter().filter(|r| r.n >= s.n).map(|r| r.at_ms).min());
        let (outcome, written_ms) = outcome_of.get(&s.id).cloned().unwrap_or((None, 0));
        let events = lane_events.entry(lane_of(s.conv)).or_default();
        events.push((s.at_ms, 1));
        let written = outcome.is_some().then_some(written_ms);
        if let Some(at) = settled_at(s.at_ms, first_reply, written) {
            events.push((at, -1));
        }
        match (first_reply, outcome) {
            (Some(at), Some(_)) => {
                latencies.push(at - s.at_ms);
                answered_at.push((at, at - s.at_ms));
            }
            (None, Some(o)) if o != "replied" => {}
            (_, o) => {
                v.unanswered += 1;
                example(format!(
                    "c{} m{}: unanswered (outcome {})",
                    s.conv,
                    s.n,
                    o.unwrap_or_else(|| "none".into())
                ));
            }
        }
    }
    // Turns and charges.
    let contacts: Vec<String> = contact_conv.keys().cloned().collect();
    let turns = c
        .query(
            "SELECT t.id::text, t.outcome, t.phase, t.state->>'response_id',
                    EXISTS (SELECT 1 FROM messages o WHERE o.turn_id = t.id AND o.direction = 'out'
                              AND o.provider_message_id IS NOT NULL)
               FROM turns t
               JOIN conversations cv ON cv.id = t.conversation_id
               JOIN contacts k ON k.id = cv.contact_id
              WHERE k.external_id = ANY($1)",
            &[&contacts],
        )
        .await
        .map_err(shared::db::DbError::from)?;
    let ledger = c
        .query(
            "SELECT reference, count(*) FROM credit_ledger
              WHERE id > $1 AND reason = 'reply' AND reference IS NOT NULL GROUP BY 1",
            &[&ledger_mark],
        )
        .await
        .map_err(shared::db::DbError::from)?;
    let charges: HashMap<String, i64> = ledger.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for t in &turns {
        let id: String = t.get(0);
        let outcome: Option<String> = t.get(1);
        let response: Option<String> = t.get(3);
        let delivered: bool = t.get(4);
        *outcomes
            .entry(
                outcome
                    .clone()
                    .unwrap_or_else(|| format!("open ({})", t.get::<_, String>(2))),
            )
            .or_default() += 1;
        let charged = response
            .as_ref()
            .and_then(|r| charges.get(r))
            .copied()
            .unwrap_or(0);
        if charged > 1 {
            v.charged_twice += 1;
            example(format!("turn {id}: charged {charged} times"));
        }
        let reached = delivered || outcome.as_deref() == Some("send_unknown");
        if charged > 0 && !reached {
            v.charged_not_delivered += 1;
            example(format!(
                "turn {id}: charged, nothing delivered (outcome {outcome:?})"
            ));
        }
        if charged == 0 && delivered {
            v.delivered_not_charged += 1;
            example(format!("turn {id}: delivered, not charged"));
        }
    }
    let unknown_sends = outcomes.get("send_unknown").copied().unwrap_or(0);
    // Stalls, from the pump's journal: each of the run's FIFO groups under its lane's name.
    let scope =
        shared::ordering::OrderingScope::parse(&cfg.ordering_scope).map_err(LoadError::Setup)?;
    let lane_of_group: HashMap<String, String> = (0..cfg.conversations)
        .map(|conv| {
            let (channel, account) = if meta.is_instagram(conv) {
                (shared::envelope::Channel::Instagram, DEMO_INSTAGRAM_ACCOUNT)
            } else {
                (shared::envelope::Channel::Whatsapp, DEMO_WHATSAPP_NUMBER)
            };
            let group =
                shared::ordering::message_group_id(scope, channel, account, &meta.contact(conv));
            (group, lane_of(conv))
        })
        .collect();
    let mut journal_events: HashMap<&str, Vec<(i64, LaneEvent)>> = HashMap::new();
    for line in journal {
        for group in &line.groups {
            if let Some(lane) = lane_of_group.get(group) {
                journal_events
                    .entry(lane.as_str())
                    .or_default()
                    .push((line.t_ms, line.event));
            }
        }
    }
    let mut lanes: Vec<LaneStall> = lane_events
        .into_iter()
        .map(|(lane, events)| {
            let (stall, failures) = longest_retry_wait(
                journal_events.remove(lane.as_str()).unwrap_or_default(),
                end_ms,
            );
            LaneStall {
                longest_unsettled_ms: longest_unsettled(events, end_ms),
                lane,
                longest_stall_ms: stall,
                failures,
            }
        })
        .collect();
    lanes.sort_by_key(|l| -l.longest_stall_ms);
    let max_stall_ms = cfg.max_stall.as_millis() as i64;
    for l in &lanes {
        if l.longest_stall_ms > max_stall_ms {
            v.stalls_over_limit += 1;
            example(format!(
                "lane {}: waited {:.1} s after a failure before it was tried again",
                l.lane,
                l.longest_stall_ms as f64 / 1000.0
            ));
        }
    }
    // Over time.
    latencies.sort_unstable();
    let bucket_ms = ((seconds * 1000.0 / 40.0) as i64).clamp(2_000, 60_000);
    let mut buckets: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (at, lat) in &answered_at {
        buckets
            .entry((at - start_ms).max(0) / bucket_ms)
            .or_default()
            .push(*lat);
    }
    let last_bucket = buckets.keys().next_back().copied().unwrap_or(0);
    let timeline = (0..=last_bucket)
        .map(|b| {
            let mut lats = buckets.get(&b).cloned().unwrap_or_default();
            lats.sort_unstable();
            Bucket {
                t_s: (b * bucket_ms) as f64 / 1000.0,
                answered_per_s: lats.len() as f64 * 1000.0 / bucket_ms as f64,
                p50_ms: percentile(&lats, 0.5),
                p99_ms: percentile(&lats, 0.99),
            }
        })
        .collect();
    let date: String = c
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"')",
            &[],
        )
        .await
        .map_err(shared::db::DbError::from)?
        .get(0);
    c.batch_execute("COMMIT")
        .await
        .map_err(shared::db::DbError::from)?;
    Ok(Report {
        date,
        ordering_scope: cfg.ordering_scope.clone(),
        conversations: cfg.conversations,
        messages_per_conversation: cfg.messages,
        messages: sent.len(),
        duplicate_deliveries: 0,
        webhook_retries: 0,
        faults: cfg.faults.clone(),
        faults_injected: Value::Null,
        crashes: None,
        postgres_restarted_at_s: None,
        seconds,
        msgs_per_s: sent.len() as f64 / seconds.max(0.001),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
        replies: replies.len(),
        turns: turns.len(),
        outcomes,
        unknown_sends,
        dlq_messages: None,
        aws_requests: None,
        aws_requests_per_message: None,
        longest_stall_ms: lanes.first().map(|l| l.longest_stall_ms).unwrap_or(0),
        max_stall_ms,
        longest_unsettled_ms: lanes
            .iter()
            .map(|l| l.longest_unsettled_ms)
            .max()
            .unwrap_or(0),
        lanes,
        timeline,
        violations: v,
        violation_examples: examples,
    })
}

/// The table printed at the end.
pub fn table(r: &Report) -> String {
    let ms = |v: Option<i64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
    let v = &r.violations;
    let rows: Vec<(&str, String)> = vec![
        ("ordering scope", r.ordering_scope.clone()),
        (
            "messages",
            format!(
                "{} ({} conversations x {}), +{} duplicate deliveries, {} webhook retries",
                r.messages,
                r.conversations,
                r.messages_per_conversation,
                r.duplicate_deliveries,
                r.webhook_retries
            ),
        ),
        (
            "faults",
            format!("{} -> injected {}", r.faults, r.faults_injected),
        ),
        (
            "crashes",
            r.crashes
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "postgres restart",
            r.postgres_restarted_at_s
                .map(|t| format!("at {t:.0} s"))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "throughput",
            format!("{:.1} msg/s over {:.0} s", r.msgs_per_s, r.seconds),
        ),
        (
            "webhook -> reply",
            format!("p50 {}, p99 {}", ms(r.latency_p50_ms), ms(r.latency_p99_ms)),
        ),
        (
            "longest stall",
            format!(
                "{:.1} s after a failure (limit {:.0} s; {} lanes, {} failures)",
                r.longest_stall_ms as f64 / 1000.0,
                r.max_stall_ms as f64 / 1000.0,
                r.lanes.len(),
                r.lanes.iter().map(|l| l.failures).sum::<usize>()
            ),
        ),
        (
            "longest unsettled",
            format!(
                "{:.1} s (a lane with work waiting and nothing answered: attempts, delays, queueing)",
                r.longest_unsettled_ms as f64 / 1000.0
            ),
        ),
        ("turns", format!("{} {:?}", r.turns, r.outcomes)),
        ("replies", r.replies.to_string()),
        ("unknown sends", r.unknown_sends.to_string()),
        (
            "DLQ",
            r.dlq_messages
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "AWS requests",
            match (r.aws_requests, r.aws_requests_per_message) {
                (Some(a), Some(p)) => format!("{a} ({p:.1} per inbound message)"),
                _ => "-".into(),
            },
        ),
        ("lost", v.lost.to_string()),
        ("stored twice", v.stored_twice.to_string()),
        ("duplicate replies", v.duplicate_replies.to_string()),
        ("order violations", v.order_violations.to_string()),
        ("charged twice", v.charged_twice.to_string()),
        (
            "charged, not delivered",
            v.charged_not_delivered.to_string(),
        ),
        (
            "delivered, not charged",
            v.delivered_not_charged.to_string(),
        ),
        ("unanswered", v.unanswered.to_string()),
        ("stalls over the limit", v.stalls_over_limit.to_string()),
        ("parked in the DLQ", v.parked.to_string()),
    ];
    let mut out = String::new();
    for (k, val) in rows {
        out.push_str(&format!("  {k:<24} {val}\n"));
    }
    for e in &r.violation_examples {
        out.push_str(&format!("  ! {e}\n"));
    }
    out.push_str(&format!(
        "  {:<24} {}\n",
        "result",
        if v.total() == 0 {
            "PASS (0 violations)".to_owned()
        } else {
            format!("FAIL ({} violations)", v.total())
        }
    ));
    out
}

fn write_reports(r: &Report, dir: &std::path::Path) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LoadError::Setup(format!("creating {}: {e}", dir.display())))?;
    let json = serde_json::to_string_pretty(r).expect("a report serialises");
    let write = |name: &str, body: &str| {
        std::fs::write(dir.join(name), body)
            .map_err(|e| LoadError::Setup(format!("writing {}: {e}", dir.join(name).display())))
    };
    write("load-report.json", &json)?;
    write("load-report.html", &html(r))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One line of a chart: its name, colour and (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart of `series` as inline SVG.
fn line_chart(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let (w, h, pad) = (760.0, 220.0, 40.0);
    let max_x = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let max_y = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1e-9f64, f64::max)
        * 1.1;
    let x = |v: f64| pad + v / max_x * (w - 2.0 * pad);
    let y = |v: f64| h - pad + -(v / max_y) * (h - 2.0 * pad);
    let mut svg = format!(
        r##"<h2>{}</h2><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"><rect width="{w}" height="{h}" fill="#fff"/>"##,
        escape(title)
    );
    for i in 0..=4 {
        let v = max_y * f64::from(i) / 4.0;
        svg.push_str(&format!(
            r##"<line x1="{pad}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="2" y="{:.1}" font-size="10">{v:.1} {unit}</text>"##,
            w - pad,
            y(v) + 3.0,
            y0 = y(v),
        ));
    }
    svg.push_str(&format!(
        r#"<text x="{}" y="{}" font-size="10">{max_x:.0} s</text><text x="{pad}" y="{}" font-size="10">0 s</text>"#,
        w - pad - 20.0,
        h - 10.0,
        h - 10.0
    ));
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        svg.push_str(&format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{}" y="14" font-size="11" fill="{colour}">{}</text>"#,
            path.join(" "),
            pad + 120.0 * i as f64,
            escape(name)
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn html(r: &Report) -> String {
    let tl = &r.timeline;
    let rate: Vec<(f64, f64)> = tl.iter().map(|b| (b.t_s, b.answered_per_s)).collect();
    let p50: Vec<(f64, f64)> = tl
        .iter()
        .filter_map(|b| b.p50_ms.map(|v| (b.t_s, v as f64 / 1000.0)))
        .collect();
    let p99: Vec<(f64, f64)> = tl
        .iter()
        .filter_map(|b| b.p99_ms.map(|v| (b.t_s, v as f64 / 1000.0)))
        .collect();
    let mut bars = String::new();
    let shown: Vec<&LaneStall> = r.lanes.iter().take(40).collect();
    let longest = shown
        .first()
        .map(|l| l.longest_stall_ms)
        .unwrap_or(1)
        .max(r.max_stall_ms)
        .max(1) as f64;
    let (bw, row) = (560.0, 16.0);
    let bh = row * shown.len() as f64 + 30.0;
    bars.push_str(&format!(
        r#"<h2>Longest stall per lane: the wait after a failure for the next attempt (top {} of {})</h2><svg viewBox="0 0 760 {bh}" width="760" height="{bh}">"#,
        shown.len(),
        r.lanes.len()
    ));
    let limit_x = 180.0 + r.max_stall_ms as f64 / longest * bw;
    for (i, l) in shown.iter().enumerate() {
        let len = l.longest_stall_ms as f64 / longest * bw;
        let colour = if l.longest_stall_ms > r.max_stall_ms {
            "#c0392b"
        } else {
            "#2e86c1"
        };
        bars.push_str(&format!(
            r#"<text x="0" y="{:.1}" font-size="11">{}</text><rect x="180" y="{:.1}" width="{len:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="10">{:.1} s</text>"#,
            row * i as f64 + 12.0,
            escape(&l.lane),
            row * i as f64 + 2.0,
            row - 4.0,
            184.0 + len,
            row * i as f64 + 12.0,
            l.longest_stall_ms as f64 / 1000.0
        ));
    }
    bars.push_str(&format!(
        r##"<line x1="{limit_x:.1}" x2="{limit_x:.1}" y1="0" y2="{}" stroke="#c0392b" stroke-dasharray="4"/><text x="{:.1}" y="{}" font-size="10" fill="#c0392b">limit {:.0} s</text></svg>"##,
        bh - 14.0,
        limit_x + 3.0,
        bh - 4.0,
        r.max_stall_ms as f64 / 1000.0
    ));
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>devstack load report</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;max-width:800px;margin:2rem auto;color:#222}}pre{{background:#f6f6f6;padding:1rem;overflow-x:auto}}</style></head>
<body><h1>Fault run, {} ({})</h1><pre>{}</pre>{}{}{}</body></html>
"#,
        escape(&r.date),
        escape(&r.ordering_scope),
        escape(&table(r)),
        line_chart(
            "Messages answered per second",
            "msg/s",
            &[("answered/s", "#27ae60", rate)]
        ),
        line_chart(
            "Webhook to reply, by the time of the reply",
            "s",
            &[("p50", "#2e86c1", p50), ("p99", "#c0392b", p99)]
        ),
        bars
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_record_is_named_by_the_message_it_quotes() {
        let body = r#"{"v":1,"text":"c14 m2 r0042","from":"52c"}"#;
        assert_eq!(quoted_message(body).as_deref(), Some("c14 m2"));
        assert_eq!(quoted_message("no such thing: c m1, c1 m"), None);
    }

    #[test]
    fn a_log_is_counted_by_what_was_appended_a_line_once_complete() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("loglines-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.log");
        let mut counter = LogLines::new(&Some(path.clone()), Some("abort"));
        assert_eq!(counter.count(), None, "no log yet");
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "abort one\nfine\nabo").unwrap();
        assert_eq!(counter.count(), Some(1), "the cut line is not counted yet");
        write!(f, "rt two\nabort three\n").unwrap();
        assert_eq!(counter.count(), Some(3));
        assert_eq!(counter.count(), Some(3), "nothing new, nothing counted");
        let mut all = LogLines::new(&Some(path.clone()), None);
        assert_eq!(all.count(), Some(4));
        std::fs::write(&path, "abort again\n").unwrap();
        assert_eq!(counter.count(), Some(1), "a replaced log is counted afresh");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reply_names_the_newest_message_it_quotes() {
        let t = "[stub model] I got your message: \"c12 m3 r0042\nc12 m4 r0042\". Set …";
        assert_eq!(answered_by(t, "0042"), Some((12, 4)));
        assert_eq!(answered_by("c1 m2 r9999", "0042"), None);
        assert_eq!(answered_by("no quote at all", "0042"), None);
    }

    #[test]
    fn a_lane_with_nothing_answered_counts_until_something_settles() {
        // Sent at 0 and 1 s, both answered at 5 s, one more sent at 10 s, answered at 11 s.
        let events = vec![(0, 1), (1_000, 1), (5_000, -2), (10_000, 1), (11_000, -1)];
        assert_eq!(longest_unsettled(events, 20_000), 5_000);
        // A reply that answers part of the work restarts the clock.
        let events = vec![(0, 1), (0, 1), (2_000, -1), (9_000, -1)];
        assert_eq!(longest_unsettled(events, 10_000), 7_000);
        // Still waiting at the end.
        assert_eq!(longest_unsettled(vec![(1_000, 1)], 31_000), 30_000);
        assert_eq!(longest_unsettled(vec![], 5_000), 0);
    }

    #[test]
    fn a_message_whose_turn_ended_without_a_reply_stops_waiting_when_its_outcome_is_written() {
        // The old miscount: an Instagram reply left `unknown` never reached the sink, so its
        // message stayed pending and the lane counted as waiting until the end of the run.
        assert_eq!(settled_at(1_000, Some(4_000), Some(4_500)), Some(4_000));
        assert_eq!(settled_at(1_000, None, Some(6_000)), Some(6_000));
        assert_eq!(settled_at(1_000, None, Some(900)), Some(1_000));
        assert_eq!(settled_at(1_000, None, None), None);
        let events = vec![
            (0, 1),
            (settled_at(0, None, Some(3_000)).unwrap(), -1),
            (10_000, 1),
            (12_000, -1),
        ];
        assert_eq!(longest_unsettled(events, 3_600_000), 3_000);
    }

    #[test]
    fn a_stall_is_the_wait_after_a_failure_not_the_failing_attempt() {
        use LaneEvent::*;
        // Tried at 0, a 25 s model time-out handed it back at 25 s with a 4 s delay, tried
        // again at 29.5 s, crashed at 31 s, its lease ran out and it was tried at 60 s.
        let events = vec![
            (60_000, Received),
            (0, Received),
            (25_000, Returned),
            (29_500, Received),
            (31_000, Failed),
        ];
        assert_eq!(longest_retry_wait(events, 90_000), (29_000, 2));
        // Never tried again: it waits until the end of the run.
        assert_eq!(
            longest_retry_wait(vec![(0, Received), (5_000, Returned)], 100_000),
            (95_000, 1)
        );
        // A lane that never failed never stalled.
        assert_eq!(longest_retry_wait(vec![(0, Received)], 100_000), (0, 0));
        // A hand-back and the next attempt in the same millisecond: a wait of 0, not a stall
        // that lasts to the end.
        assert_eq!(
            longest_retry_wait(vec![(7, Received), (7, Returned)], 1_000),
            (0, 1)
        );
    }

    #[test]
    fn the_journal_is_read_from_the_runs_mark_and_a_cut_line_is_left_out() {
        let dir = std::env::temp_dir().join(format!("journal-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.jsonl");
        let before = r#"{"t_ms":1,"queue":"q.fifo","event":"received","groups":["old"]}"#;
        std::fs::write(
            &path,
            format!(
                "{before}\n{}\n{}\n{}",
                r#"{"t_ms":2,"queue":"q.fifo","event":"returned","groups":["a","b"]}"#,
                r#"{"t_ms":3,"queue":"q.fifo","event":"failed","groups":["a"]}"#,
                r#"{"t_ms":4,"queue":"q.fi"#
            ),
        )
        .unwrap();
        let lines = read_journal(&path, before.len() as u64 + 1);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].event, LaneEvent::Returned);
        assert_eq!(lines[0].groups, ["a", "b"]);
        assert_eq!(lines[1].event, LaneEvent::Failed);
        assert!(read_journal(&dir.join("missing"), 0).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn percentiles_of_sorted_latencies() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
