//! The extraction function: after each answered turn the processor queues a job
//! `{"v":1,"kind":"extract","tenant_id","conversation_id"}`; this reads the conversation's
//! messages after `extracted_through`, asks the model for the lead fields with a strict JSON
//! schema (`shared::lead`), and records the run, the lead merge, the field history, the new
//! `extracted_through` and the charge in one statement (`shared::db::leads::record_extraction`).
//!
//! Idempotent and coalescing: jobs of one conversation in a batch run once; a window (the
//! messages up to the newest id) is claimed in DynamoDB before the model call and recorded once
//! in Postgres, so a duplicate job or a job whose messages were already read makes no model call.
//! `incomplete` and `refusal` answers are recorded and the window is passed, never retried.

// No panics on data: request, queue or database values are matched, never unwrapped; the few
// start-up and plain-data cases carry an `allow` with their reason.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

mod config;
pub mod tenant_webhook;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use futures_util::future::join_all;
use serde_json::json;
use shared::cache::TtlCache;
use shared::credits::price;
use shared::db::agents::Agent;
use shared::db::leads::{self, ExtractionRecord};
use shared::db::outbox;
use shared::db::{agents, credits};
use shared::db::{Db, DbError, TenantId};
use shared::envelope::Content;
use shared::idempotency::{Claim, IdempotencyStore};
use shared::lead::{clean, lead_schema, text_format};
use shared::metrics::Metrics;
use shared::openai::{InputMessage, ResponseRequest, ResponsesClient};
use shared::queue::{ParkedRecord, QueuePublisher};
use tracing::{info, warn, Instrument};
use uuid::Uuid;

pub use config::Config;
use tenant_webhook::{WebhookSender, MAX_ATTEMPTS};

/// Most messages one run reads (a longer backlog is read over several runs).
pub const WINDOW: i64 = 60;
/// Time kept after the model answers to record the result.
pub const RECORD_MARGIN: Duration = Duration::from_secs(3);
/// What the model is told, every run.
pub const INSTRUCTIONS: &str = "You update a sales CRM from a conversation between a business's \
assistant and a customer. Fill in what the customer states about themselves in the messages \
below: use only facts from the messages, never guess, and use null for anything not stated in \
them. When the customer corrects something (\"actually my email is …\"), give the corrected value.";

pub struct Deps {
    pub db: Db,
    pub idempotency: IdempotencyStore,
    pub model: ResponsesClient,
    /// Model used for every extraction; `None`: the conversation agent's model.
    pub model_override: Option<String>,
    pub publisher: QueuePublisher,
    pub dead_letter_queue_url: String,
    pub webhooks: WebhookSender,
    pub metrics: Metrics,
}

pub struct Extractor {
    deps: Deps,
    agents: TtlCache<(TenantId, Uuid), Option<Agent>>,
}

enum Fail {
    Retry(String),
    Park(String),
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        if e.is_retryable() {
            Fail::Retry(e.to_string())
        } else {
            Fail::Park(e.to_string())
        }
    }
}

impl From<shared::idempotency::IdempotencyError> for Fail {
    fn from(e: shared::idempotency::IdempotencyError) -> Self {
        Fail::Retry(e.to_string())
    }
}

/// One line of the transcript the model reads.
fn transcript_line(direction: &str, content: &serde_json::Value) -> Option<String> {
    let text = serde_json::from_value::<Content>(content.clone())
        .ok()
        .and_then(|c| c.model_text())
        .or_else(|| {
            content
                .get("body")
                .and_then(|b| b.as_str())
                .map(str::to_owned)
        })?;
    let who = if direction == "in" {
        "customer"
    } else {
        "assistant"
    };
    Some(format!("{who}: {text}"))
}

impl Extractor {
    /// The function as its environment describes it (cold start).
    pub async fn from_env(
        start: shared::bootstrap::Start,
    ) -> Result<Self, shared::bootstrap::StartError> {
        let config = Config::from_env()?;
        let secrets = start.secrets(config.common.secrets_ttl);
        Ok(Self::new(Deps {
            db: config.database.connect(&secrets).await?,
            idempotency: IdempotencyStore::new(start.dynamodb(), config.idempotency_table),
            model: config.model_endpoint.client(&secrets).await?,
            model_override: config.model,
            publisher: start.publisher(),
            dead_letter_queue_url: config.dead_letter_queue_url,
            webhooks: WebhookSender::new(Duration::from_secs(10)),
            metrics: config.common.metrics(start.function),
        }))
    }

    /// One Lambda invocation: its batch, answered 2 s before the invocation's deadline.
    pub async fn invoke(
        &self,
        event: lambda_runtime::LambdaEvent<aws_lambda_events::sqs::SqsEvent>,
    ) -> aws_lambda_events::sqs::SqsBatchResponse {
        let deadline =
            shared::invocation_deadline(event.context.deadline(), Duration::from_secs(2));
        self.handle_batch(event.payload.records, deadline).await
    }

    pub fn new(deps: Deps) -> Self {
        Self {
            deps,
            agents: TtlCache::new(Duration::from_secs(300)),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.deps.metrics
    }

    /// Handles one batch; `deadline` is when the invocation must have answered.
    pub async fn handle_batch(
        &self,
        records: Vec<SqsMessage>,
        deadline: Instant,
    ) -> SqsBatchResponse {
        // Jobs of one conversation run once; unreadable bodies are parked.
        let mut jobs: BTreeMap<(Uuid, Uuid), Vec<String>> = BTreeMap::new();
        let mut parked = Vec::new();
        for m in &records {
            let id = m.message_id.clone().unwrap_or_default();
            match shared::wire::parse_extraction_job(m.body.as_deref().unwrap_or("")) {
                Ok(j) => jobs
                    .entry((j.tenant_id, j.conversation_id))
                    .or_default()
                    .push(id),
                Err(e) => parked.push(ParkedRecord {
                    message_id: id,
                    body: m.body.clone().unwrap_or_default(),
                    group_id: None,
                    reason: e.to_string(),
                }),
            }
        }
        let results = join_all(jobs.iter().map(|((tenant, conversation), _)| {
            let span =
                tracing::info_span!("extract", tenant = %tenant, conversation = %conversation);
            self.run(TenantId::from_trusted(*tenant), *conversation, deadline)
                .instrument(span)
        }))
        .await;
        let mut response = SqsBatchResponse::default();
        for ((key, ids), result) in jobs.iter().zip(results) {
            match result {
                Ok(()) => {}
                Err(Fail::Retry(reason)) => {
                    warn!(conversation = %key.1, reason = %reason, "extraction failed; SQS will redeliver the job");
                    for id in ids {
                        let mut f = BatchItemFailure::default();
                        f.item_identifier = id.clone();
                        response.batch_item_failures.push(f);
                    }
                }
                Err(Fail::Park(reason)) => {
                    let body = json!({"v": 1, "kind": "extract", "tenant_id": key.0, "conversation_id": key.1}).to_string();
                    for id in ids {
                        parked.push(ParkedRecord {
                            message_id: id.clone(),
                            body: body.clone(),
                            group_id: None,
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
        let n = self
            .deps
            .publisher
            .park(&self.deps.dead_letter_queue_url, parked, &mut response)
            .await;
        self.deps.metrics.count("RecordsParked", n as u64);
        self.deps
            .metrics
            .count("BatchFailures", response.batch_item_failures.len() as u64);
        self.deps.metrics.flush();
        response
    }

    /// Delivers what is pending for the conversation, extracts, delivers what that produced.
    /// The job is retried while a delivery can still succeed, so SQS drives the retries.
    async fn run(
        &self,
        tenant: TenantId,
        conversation: Uuid,
        deadline: Instant,
    ) -> Result<(), Fail> {
        let mut pending = self.deliver(tenant, conversation).await?;
        // Only a run that queued an event has something new to post.
        if self.extract_window(tenant, conversation, deadline).await? > 0 {
            pending = self.deliver(tenant, conversation).await?;
        }
        if pending {
            return Err(Fail::Retry("a webhook delivery will be retried".into()));
        }
        Ok(())
    }

    /// Posts the conversation's pending webhook events. Returns whether some are still
    /// pending (to retry later).
    async fn deliver(&self, tenant: TenantId, conversation: Uuid) -> Result<bool, Fail> {
        let db = &self.deps.db;
        let mut pending = false;
        for d in outbox::pending_deliveries(db, tenant, conversation).await? {
            let (status, error) = match self.deps.webhooks.send(&d).await {
                Ok(()) => {
                    self.deps.metrics.count("WebhooksDelivered", 1);
                    ("delivered", None)
                }
                Err(e) if e.retryable && d.attempts + 1 < MAX_ATTEMPTS => {
                    pending = true;
                    ("pending", Some(e.reason))
                }
                Err(e) => {
                    self.deps.metrics.count("WebhooksFailed", 1);
                    ("failed", Some(e.reason))
                }
            };
            if let Some(reason) = &error {
                warn!(delivery = d.id, status, reason = %reason, "webhook not delivered");
            }
            outbox::mark_delivery(db, tenant, d.id, status, error.as_deref()).await?;
        }
        Ok(pending)
    }

    async fn extract_window(
        &self,
        tenant: TenantId,
        conversation: Uuid,
        deadline: Instant,
    ) -> Result<u64, Fail> {
        let db = &self.deps.db;
        let metrics = &self.deps.metrics;
        let Some(target) = leads::extraction_target(db, tenant, conversation).await? else {
            warn!(
                outcome = "no_conversation",
                "job names no conversation of this tenant; dropped"
            );
            return Ok(0);
        };
        let messages =
            leads::messages_after(db, tenant, conversation, target.extracted_through, WINDOW)
                .await?;
        let Some(last) = messages.last() else {
            metrics.count("NothingNew", 1);
            info!(
                outcome = "nothing_new",
                "no messages since the last extraction"
            );
            return Ok(0);
        };
        let through = last.id;
        let Some(agent_id) = target.agent_id else {
            info!(
                outcome = "no_agent",
                "conversation has no agent; not extracted"
            );
            return Ok(0);
        };
        let agent = self
            .agents
            .get_or_load((tenant, agent_id), || agents::agent(db, tenant, agent_id))
            .await?;
        let Some(agent) = agent else {
            info!(outcome = "no_agent", "agent missing; not extracted");
            return Ok(0);
        };
        let lines: Vec<String> = messages
            .iter()
            .filter_map(|m| transcript_line(&m.direction, &m.content))
            .collect();
        // Claim the window: a concurrent or repeated job for it makes no second model call.
        let key = format!("extract:{conversation}:{through}");
        let hold = deadline.saturating_duration_since(Instant::now());
        match self.deps.idempotency.claim(&key, hold).await? {
            Claim::Acquired => {}
            Claim::Completed => {
                metrics.count("DuplicatesSkipped", 1);
                return Ok(0);
            }
            Claim::InProgress => {
                return Err(Fail::Retry("another invocation holds this window".into()))
            }
        }
        let result = self
            .extract(
                tenant,
                conversation,
                &agent,
                &lines,
                target.extracted_through,
                through,
                deadline,
            )
            .await;
        match &result {
            Ok(_) => {
                if let Err(e) = self.deps.idempotency.complete(&key).await {
                    // Postgres already holds the run once (unique window); a redelivery is a no-op.
                    warn!(error = %e, "extraction recorded but its claim not completed");
                }
            }
            Err(_) => {
                if let Err(e) = self.deps.idempotency.release(&key).await {
                    warn!(error = %e, "could not release the claim; it expires with the invocation");
                }
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn extract(
        &self,
        tenant: TenantId,
        conversation: Uuid,
        agent: &Agent,
        lines: &[String],
        from: i64,
        through: i64,
        deadline: Instant,
    ) -> Result<u64, Fail> {
        let db = &self.deps.db;
        let metrics = &self.deps.metrics;
        let mut rec = ExtractionRecord {
            from_message_id: from,
            through_message_id: through,
            ..Default::default()
        };
        if lines.is_empty() {
            // Only content a model cannot read (reactions, stickers): pass the window.
            rec.status = "unchanged";
            leads::record_extraction(db, tenant, conversation, &rec).await?;
            return Ok(0);
        }
        if credits::balance(db, tenant).await?.unwrap_or(0) < 1 {
            metrics.count("CreditsExhausted", 1);
            info!(
                outcome = "credits_exhausted",
                "no credits; extraction waits for a top-up"
            );
            return Ok(0);
        }
        let extra_defs = match lead_schema(&agent.extra_lead_fields) {
            Ok(_) => agent.extra_lead_fields.clone(),
            Err(e) => {
                warn!(error = %e, "the agent's extra lead fields are invalid; extracting the built-in fields only");
                json!({})
            }
        };
        let schema = lead_schema(&extra_defs).map_err(|e| Fail::Park(e.to_string()))?;
        let req = ResponseRequest {
            model: self
                .deps
                .model_override
                .clone()
                .unwrap_or_else(|| agent.model.clone()),
            instructions: Some(INSTRUCTIONS.to_owned()),
            input: vec![InputMessage::user(lines.join("\n"))],
            previous_response_id: None,
            store: false,
            max_output_tokens: Some(1000),
            temperature: None,
            reasoning: None,
            text: Some(text_format(schema)),
            safety_identifier: None,
            // The agent's own endpoint serves the agent's model, not the extraction model.
            base_url: agent
                .base_url
                .clone()
                .filter(|_| self.deps.model_override.is_none()),
        };
        let started = Instant::now();
        let until = deadline
            .checked_sub(RECORD_MARGIN)
            .unwrap_or_else(Instant::now);
        let reply = match tokio::time::timeout_at(until.into(), self.deps.model.create(&req)).await
        {
            Err(_) => {
                return Err(Fail::Retry(
                    "the invocation's deadline came before the model answered".into(),
                ))
            }
            Ok(Err(e)) if e.is_retryable() => {
                metrics.count("ModelFailures", 1);
                return Err(Fail::Retry(e.to_string()));
            }
            Ok(Err(e)) => {
                metrics.count("ModelFailures", 1);
                return Err(Fail::Park(format!("model_rejected: {e}")));
            }
            Ok(Ok(r)) => r,
        };
        metrics.millis("ModelLatency", started.elapsed().as_secs_f64() * 1000.0);
        metrics.count("InputTokens", reply.input_tokens);
        metrics.count("OutputTokens", reply.output_tokens);
        rec.response_id = Some(&reply.id);
        rec.input_tokens = reply.input_tokens as i32;
        rec.output_tokens = reply.output_tokens as i32;
        rec.cost = price(agent.price_input_per_1k, reply.input_tokens)
            + price(agent.price_output_per_1k, reply.output_tokens);
        rec.status = if reply.incomplete_reason.is_some() || reply.status == "incomplete" {
            "incomplete"
        } else if reply.refusal.is_some() {
            "refused"
        } else {
            match serde_json::from_str::<serde_json::Value>(&reply.text) {
                Ok(answer) if answer.is_object() => {
                    let (fields, extra) = clean(&answer, &extra_defs);
                    rec.fields = fields;
                    rec.extra = extra;
                    if rec.fields.is_empty() && rec.extra.is_empty() {
                        "unchanged"
                    } else {
                        "applied"
                    }
                }
                _ => "invalid",
            }
        };
        let outcome = leads::record_extraction(db, tenant, conversation, &rec).await?;
        metrics.count_by("Extractions", "Status", rec.status.to_owned(), 1);
        metrics.count("LeadFieldsChanged", outcome.changed.len() as u64);
        let charged = outcome.charge.as_ref().map_or(0, |c| c.charged);
        metrics.count("CreditsCharged", charged.max(0) as u64);
        if rec.status == "incomplete" || rec.status == "refused" || rec.status == "invalid" {
            warn!(
                outcome = rec.status,
                "extraction answer unusable; recorded and passed"
            );
        }
        info!(
            outcome = rec.status,
            recorded = outcome.recorded,
            changed = ?outcome.changed,
            messages = lines.len(),
            charged,
            "extraction processed"
        );
        Ok(outcome.events)
    }
}
