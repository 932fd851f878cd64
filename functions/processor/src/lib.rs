//! The reply pipeline (DESIGN §5) behind the processor Lambda. `main.rs` only wires it.
//!
//! Per unit (consecutive records of one conversation in a FIFO group, see `shared::fifo`):
//! parse → idempotency claim → route (cached) → store inbound → human mode? → credits →
//! mark read → model → send → record reply + charge (one statement) → extraction job → complete.

mod config;

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use secrecy::SecretString;
use serde_json::json;
use shared::cache::TtlCache;
use shared::db::store::{self, Agent, ChannelAccountRoute};
use shared::db::{Db, DbError, TenantId};
use shared::envelope::{Channel, Content, InboundEnvelope, ENVELOPE_VERSION};
use shared::fifo::{run_batch_coalesced, Outcome};
pub use shared::graph::GraphTokens;
use shared::graph::{GraphClient, Recipient};
use shared::idempotency::{Claim, IdempotencyStore};
use shared::metrics::Metrics;
use shared::openai::{price, InputMessage, ModelError, ResponseRequest, ResponsesClient};
use shared::ordering::{dedup_id, sha256_hex};
use shared::queue::{ParkedRecord, QueuePublisher};
use shared::split::split_for;
use tracing::{info, warn, Instrument};

pub use config::{Config, Resolved};

/// Routing lookups are cached this long (an admin change is visible within it).
pub const ROUTE_TTL: Duration = Duration::from_secs(300);

/// Time kept after the model answers, to send and record the reply before the deadline.
pub const SEND_MARGIN: Duration = Duration::from_secs(5);

/// Everything the pipeline talks to.
pub struct Deps {
    pub db: Db,
    pub idempotency: IdempotencyStore,
    pub model: ResponsesClient,
    pub graph: GraphClient,
    pub tokens: GraphTokens,
    pub publisher: QueuePublisher,
    pub extraction_queue_url: String,
    pub dead_letter_queue_url: String,
    pub metrics: Metrics,
}

pub struct Processor {
    deps: Deps,
    routes: TtlCache<(Channel, String), Option<ChannelAccountRoute>>,
    agents: TtlCache<(TenantId, uuid::Uuid), Option<Agent>>,
}

/// Failure of one unit, classified once. A permanent failure carries the outcome recorded on
/// the stored inbound messages.
enum Fail {
    Retry(String),
    Permanent {
        outcome: &'static str,
        reason: String,
    },
}

impl Fail {
    fn permanent(outcome: &'static str, reason: impl Into<String>) -> Self {
        Fail::Permanent {
            outcome,
            reason: reason.into(),
        }
    }
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        if e.is_retryable() {
            Fail::Retry(e.to_string())
        } else {
            Fail::permanent("db_rejected", e.to_string())
        }
    }
}

impl From<shared::idempotency::IdempotencyError> for Fail {
    fn from(e: shared::idempotency::IdempotencyError) -> Self {
        Fail::Retry(e.to_string())
    }
}

/// A record's envelope, or why it can never be processed.
fn parse_envelope(m: &SqsMessage) -> Result<InboundEnvelope, Fail> {
    let env: InboundEnvelope = serde_json::from_str(m.body.as_deref().unwrap_or(""))
        .map_err(|_| Fail::permanent("unreadable", "body is not an inbound envelope"))?;
    if env.v != ENVELOPE_VERSION {
        return Err(Fail::permanent(
            "unreadable",
            format!("unknown envelope version {}", env.v),
        ));
    }
    Ok(env)
}

/// Key of the conversation an envelope belongs to (its lane).
fn conversation_key(env: &InboundEnvelope) -> String {
    format!(
        "{}:{}:{}",
        env.channel, env.channel_account_id, env.contact.id
    )
}

/// The batch's envelopes, parsed once: the lane keys are read from them and each unit takes
/// its own. A record that does not parse has no entry, hence no key and a lane of its own (it is
/// parked alone instead of taking its conversation's good messages with it).
struct Parsed(std::sync::Mutex<std::collections::HashMap<String, InboundEnvelope>>);

impl Parsed {
    fn new(records: &[SqsMessage]) -> Self {
        let map = records
            .iter()
            .filter_map(|m| Some((m.message_id.clone()?, parse_envelope(m).ok()?)))
            .collect();
        Self(std::sync::Mutex::new(map))
    }

    fn key(&self, m: &SqsMessage) -> Option<String> {
        let map = self.0.lock().expect("parsed lock");
        map.get(m.message_id.as_deref()?).map(conversation_key)
    }

    /// The record's envelope (parsed again only for a repeated message id, or to get the
    /// reason it does not parse).
    fn take(&self, m: &SqsMessage) -> Result<InboundEnvelope, Fail> {
        let taken = m
            .message_id
            .as_deref()
            .and_then(|id| self.0.lock().expect("parsed lock").remove(id));
        match taken {
            Some(env) => Ok(env),
            None => parse_envelope(m),
        }
    }
}

/// What one turn needs to reach the customer and to record what was sent.
struct Reach<'a> {
    tenant: TenantId,
    conversation: uuid::Uuid,
    channel: Channel,
    /// The channel account's row id (statuses parked for sent messages are keyed by it).
    channel_account_id: uuid::Uuid,
    token: &'a SecretString,
    account: &'a str,
    contact: &'a shared::envelope::Contact,
}

impl Processor {
    pub fn new(deps: Deps) -> Self {
        Self {
            deps,
            routes: TtlCache::new(ROUTE_TTL),
            agents: TtlCache::new(ROUTE_TTL),
        }
    }

    /// Counters and timings (EMF); flushed to stdout after every batch.
    pub fn metrics(&self) -> &Metrics {
        &self.deps.metrics
    }

    /// Handles one SQS batch. `deadline` is when the invocation must have answered.
    pub async fn handle_batch(
        &self,
        records: Vec<SqsMessage>,
        deadline: Instant,
    ) -> SqsBatchResponse {
        let parsed = Parsed::new(&records);
        let report = run_batch_coalesced(
            records,
            |m| parsed.key(m),
            |unit| self.unit(unit, &parsed, deadline),
        )
        .await;
        // Records that can never succeed go to the DLQ explicitly (kept, alarmed, not blocking).
        let mut response = report.response;
        let metrics = &self.deps.metrics;
        let parked: Vec<ParkedRecord> = report
            .permanent
            .into_iter()
            .map(|p| ParkedRecord {
                group_id: Some(shared::fifo::group_of(&p.message).to_owned()),
                message_id: p.message.message_id.unwrap_or_default(),
                body: p.message.body.unwrap_or_default(),
                reason: p.reason,
            })
            .collect();
        let n = self
            .deps
            .publisher
            .park(&self.deps.dead_letter_queue_url, parked, &mut response)
            .await;
        metrics.count("RecordsParked", n as u64);
        metrics.count("BatchFailures", response.batch_item_failures.len() as u64);
        info!(
            done = report.done,
            retried = report.retried,
            skipped = report.skipped,
            "batch processed"
        );
        metrics.flush();
        response
    }

    async fn unit(&self, unit: Vec<SqsMessage>, parsed: &Parsed, deadline: Instant) -> Outcome {
        match self.unit_inner(unit, parsed, deadline).await {
            Ok(()) => Outcome::Done,
            Err(Fail::Retry(r)) => Outcome::Retry(r),
            Err(Fail::Permanent { outcome, reason }) => {
                Outcome::Permanent(format!("{outcome}: {reason}"))
            }
        }
    }

    async fn unit_inner(
        &self,
        unit: Vec<SqsMessage>,
        parsed: &Parsed,
        deadline: Instant,
    ) -> Result<(), Fail> {
        // 1. Parse.
        let mut envs = Vec::with_capacity(unit.len());
        for m in &unit {
            envs.push(parsed.take(m)?);
        }
        // Meta posts each message in its own webhook and those can overtake each other, so queue
        // order is not always the order the customer typed in: the provider timestamp decides
        // (stable, so equal timestamps keep queue order).
        envs.sort_by_key(|e| e.provider_timestamp_ms);
        let span = tracing::info_span!(
            "unit",
            correlation_id = %envs[0].correlation_id,
            channel = %envs[0].channel,
            tenant = tracing::field::Empty,
            conversation = tracing::field::Empty,
        );
        self.claim_and_process(envs, deadline)
            .instrument(span)
            .await
    }

    async fn claim_and_process(
        &self,
        envs: Vec<InboundEnvelope>,
        deadline: Instant,
    ) -> Result<(), Fail> {
        // 2. Idempotency: drop what is already done; back off from what another run holds.
        let hold = deadline.saturating_duration_since(Instant::now());
        let mut fresh = Vec::new();
        for env in envs {
            let key = dedup_id(
                env.channel,
                &env.channel_account_id,
                &env.provider_message_id,
            );
            if fresh
                .iter()
                .any(|(k, _): &(String, InboundEnvelope)| *k == key)
            {
                // The same provider message twice in one unit (a late Meta retry): once is enough.
                self.deps.metrics.count("DuplicatesSkipped", 1);
                continue;
            }
            match self.deps.idempotency.claim(&key, hold).await? {
                Claim::Acquired => fresh.push((key, env)),
                Claim::Completed => {
                    self.deps.metrics.count("DuplicatesSkipped", 1);
                    info!(outcome = "duplicate", "already processed; skipped");
                }
                Claim::InProgress => {
                    self.release(&fresh).await;
                    return Err(Fail::Retry("another invocation holds this message".into()));
                }
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let result = self.process(&fresh, deadline).await;
        match &result {
            Ok(()) => {
                self.deps
                    .metrics
                    .count("MessagesProcessed", fresh.len() as u64);
                for (key, _) in &fresh {
                    // The work is done (maybe a reply sent): failing the record now would
                    // answer twice once the claim expires. An unmarked claim expires with
                    // the invocation, and the Postgres unique key still stores the message once.
                    if let Err(e) = self.deps.idempotency.complete(key).await {
                        self.deps.metrics.count("ClaimNotCompleted", 1);
                        warn!(error = %e, "processed but not marked completed");
                    }
                }
            }
            // Retry: the redelivery must be able to claim. Permanent: the record is parked in
            // the DLQ, and a redrive after the cause is fixed (e.g. OpenAI billing) must run.
            Err(_) => self.release(&fresh).await,
        }
        result
    }

    async fn release(&self, claimed: &[(String, InboundEnvelope)]) {
        for (key, _) in claimed {
            if let Err(e) = self.deps.idempotency.release(key).await {
                warn!(error = %e, "could not release claim; it expires with the invocation");
            }
        }
    }

    /// Routes and stores the unit's messages, then answers; the outcome (or the permanent
    /// failure's class) is recorded on the stored inbound rows.
    async fn process(
        &self,
        msgs: &[(String, InboundEnvelope)],
        deadline: Instant,
    ) -> Result<(), Fail> {
        let first = &msgs[0].1;
        let last = &msgs[msgs.len() - 1].1;
        // 3. Route (cache-aside).
        let route_key = (first.channel, first.channel_account_id.clone());
        let db = &self.deps.db;
        let route = self
            .routes
            .get_or_load(route_key, || {
                store::resolve_channel_account(db, first.channel, &first.channel_account_id)
            })
            .await?;
        let Some(route) = route.filter(|r| r.is_active && r.tenant_active) else {
            // No tenant to store it under: the log line and the metric are the record.
            self.deps.metrics.count("UnknownAccount", msgs.len() as u64);
            warn!(outcome = "unknown_channel_account", account = %first.channel_account_id, "no active channel account; acknowledged");
            return Ok(());
        };
        let tenant: TenantId = route.tenant;
        tracing::Span::current().record("tenant", tracing::field::display(tenant.uuid()));
        // 4. Store the inbound messages.
        let contact = store::upsert_contact(
            db,
            tenant,
            route.channel_account_id,
            &last.contact.id,
            last.contact.wa_id.as_deref(),
            last.contact.display_name.as_deref(),
            last.contact.username.as_deref(),
        )
        .await?
        .ok_or_else(|| Fail::permanent("db_rejected", "contact not writable"))?;
        let conv = store::conversation_for(db, tenant, route.channel_account_id, contact)
            .await?
            .ok_or_else(|| Fail::permanent("db_rejected", "conversation not writable"))?;
        tracing::Span::current().record("conversation", tracing::field::display(conv.id));
        for (_, env) in msgs {
            let content = serde_json::to_value(&env.content).unwrap_or(json!(null));
            let raw: Option<serde_json::Value> = env
                .raw
                .as_ref()
                .and_then(|r| serde_json::from_str(r.get()).ok());
            let at = std::time::UNIX_EPOCH
                + Duration::from_millis(env.provider_timestamp_ms.max(0) as u64);
            store::insert_inbound_message(
                db,
                tenant,
                conv.id,
                &env.provider_message_id,
                &content,
                raw.as_ref(),
                at,
            )
            .await?;
        }
        let result = self.respond(msgs, &route, &conv, deadline).await;
        let outcome = match &result {
            Ok(o) => Some(*o),
            Err(Fail::Permanent { outcome, .. }) => Some(*outcome),
            Err(Fail::Retry(_)) => None,
        };
        if let Some(outcome) = outcome {
            let ids: Vec<&str> = msgs
                .iter()
                .map(|(_, e)| e.provider_message_id.as_str())
                .collect();
            if let Err(e) = store::set_outcome(db, tenant, conv.id, &ids, outcome).await {
                warn!(error = %e, outcome, "outcome not recorded on the inbound messages");
            }
        }
        result.map(|_| ())
    }

    /// Steps 5–11 for stored messages; returns the outcome to record.
    async fn respond(
        &self,
        msgs: &[(String, InboundEnvelope)],
        route: &ChannelAccountRoute,
        conv: &store::Conversation,
        deadline: Instant,
    ) -> Result<&'static str, Fail> {
        let first = &msgs[0].1;
        let last = &msgs[msgs.len() - 1].1;
        let db = &self.deps.db;
        let metrics = &self.deps.metrics;
        let tenant = route.tenant;
        // 5. Human mode: stored, nothing else.
        if conv.mode == "human" {
            metrics.count("HumanMode", 1);
            info!(
                outcome = "human_mode",
                "conversation in human mode; no AI reply"
            );
            return Ok("human_mode");
        }
        let texts: Vec<String> = msgs
            .iter()
            .filter_map(|(_, e)| e.content.model_text())
            .collect();
        if texts.is_empty() {
            info!(
                outcome = "nothing_to_answer",
                "no content the model can use; stored only"
            );
            return Ok("nothing_to_answer");
        }
        let Some(agent_id) = route.agent_id else {
            warn!(
                outcome = "no_agent",
                "channel account has no agent; stored only"
            );
            return Ok("no_agent");
        };
        let agent = self
            .agents
            .get_or_load((tenant, agent_id), || store::agent(db, tenant, agent_id))
            .await?
            .filter(|a| a.is_active);
        let Some(agent) = agent else {
            warn!(
                outcome = "no_agent",
                "agent missing or inactive; stored only"
            );
            return Ok("no_agent");
        };
        let token = if first.channel == Channel::Webchat {
            // Web chat replies are not sent anywhere: the widget reads them from the stored
            // conversation, so there is no Graph token to look up.
            SecretString::from(String::new())
        } else {
            self.deps
                .tokens
                .for_account(
                    route.access_token_secret.as_deref(),
                    &last.channel_account_id,
                )
                .await
                .map_err(|e| {
                    if e.retryable {
                        Fail::Retry(e.reason)
                    } else {
                        Fail::permanent("no_token", e.reason)
                    }
                })?
        };
        let reach = Reach {
            tenant,
            conversation: conv.id,
            channel: first.channel,
            channel_account_id: route.channel_account_id,
            token: &token,
            account: &last.channel_account_id,
            contact: &last.contact,
        };
        // 6. Credits.
        let balance = store::balance(db, tenant).await?.unwrap_or(0);
        if balance < agent.min_balance.max(1) {
            metrics.count("CreditsExhausted", 1);
            warn!(
                outcome = "credits_exhausted",
                balance, "credits exhausted; no model call"
            );
            self.fallback(&reach, "no_credits", &agent.fallback_no_credits)
                .await;
            return Ok("credits_exhausted");
        }
        // 7. Mark read + typing (best effort, WhatsApp).
        if first.channel == Channel::Whatsapp {
            if let Err(e) = self
                .deps
                .graph
                .mark_read_and_typing(&token, &last.channel_account_id, &last.provider_message_id)
                .await
            {
                warn!(code = e.code, "mark-as-read failed (ignored)");
            }
        }
        // 8. Model.
        // The model must answer with time left to send and record; past that the unit is
        // retried rather than killed mid-way by the function timeout (which would redeliver
        // the whole batch).
        let model_deadline = deadline
            .checked_sub(SEND_MARGIN)
            .unwrap_or_else(Instant::now);
        let asked = tokio::time::timeout_at(
            model_deadline.into(),
            self.ask_model(
                &agent,
                tenant,
                conv.id,
                conv.previous_response_id.clone(),
                &texts,
                &last.contact.id,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Fail::Retry(
                "the invocation's deadline came before the model answered".into(),
            ))
        });
        let reply = match asked {
            Ok(r) => r,
            Err(f) => {
                metrics.count("ModelFailures", 1);
                if let Fail::Permanent { .. } = f {
                    self.fallback(&reach, "error", &agent.fallback_error).await;
                }
                return Err(f);
            }
        };
        metrics.count("InputTokens", reply.input_tokens);
        metrics.count("OutputTokens", reply.output_tokens);
        // 9. Send.
        let (parts, send_error) = self.send_text(&reach, &reply.text, None).await?;
        // 10. Record reply + charge in one statement. The reply is already out: a failure here
        // must not lead to a redelivery that sends it again, so it is retried briefly and then
        // logged as unrecorded rather than failing the record.
        let cost = price(agent.price_input_per_1k, reply.input_tokens)
            + price(agent.price_output_per_1k, reply.output_tokens);
        let charge = self
            .record(
                &reach,
                &parts,
                Some(&reply.id),
                (reply.input_tokens, reply.output_tokens),
                cost,
            )
            .await;
        let charged = charge.map_or(0, |c| c.charged);
        metrics.count("CreditsCharged", charged.max(0) as u64);
        // 11. Extraction job for this conversation.
        if let Err(e) = self
            .deps
            .publisher
            .send_all(
                &self.deps.extraction_queue_url,
                vec![shared::queue::extraction_job(tenant, conv.id)],
            )
            .await
        {
            warn!(error = %e, "extraction job not queued; the next turn queues it again");
        }
        let outcome = if send_error.is_some() {
            "send_failed"
        } else {
            metrics.count("RepliesSent", 1);
            "replied"
        };
        info!(
            outcome,
            parts = parts.len(),
            input_tokens = reply.input_tokens,
            output_tokens = reply.output_tokens,
            charged,
            "reply processed"
        );
        Ok(outcome)
    }

    /// Sends `text` in channel-sized parts, in order. A retryable error before anything went
    /// out fails the unit (retried through SQS); any other error is recorded on the part and
    /// ends the send (the rest would fail alike). `marker` tags fallback texts.
    async fn send_text(
        &self,
        to: &Reach<'_>,
        text: &str,
        marker: Option<&str>,
    ) -> Result<(Vec<(Option<String>, serde_json::Value)>, Option<i64>), Fail> {
        let mut parts = Vec::new();
        for piece in split_for(to.channel, text) {
            let recipient = Recipient {
                contact_id: &to.contact.id,
                wa_id: to.contact.wa_id.as_deref(),
            };
            let sent = self
                .deps
                .graph
                .send_part(to.channel, to.token, to.account, recipient, &piece, false)
                .await;
            let mut content = json!({"type": "text", "body": piece});
            if let Some(m) = marker {
                content["fallback"] = json!(m);
            }
            match sent {
                Ok(id) => parts.push((Some(id), content)),
                Err(e) if e.retryable && parts.is_empty() => {
                    self.deps
                        .metrics
                        .count_by("SendFailures", "ErrorCode", e.code.to_string(), 1);
                    return Err(Fail::Retry(format!("send failed with code {}", e.code)));
                }
                Err(e) => {
                    self.deps
                        .metrics
                        .count_by("SendFailures", "ErrorCode", e.code.to_string(), 1);
                    warn!(
                        outcome = "send_failed",
                        code = e.code,
                        "send failed; recorded"
                    );
                    content["error_code"] = json!(e.code);
                    parts.push((None, content));
                    return Ok((parts, Some(e.code)));
                }
            }
        }
        Ok((parts, None))
    }

    /// Writes sent parts with their charge; see step 10 for why a failure is only logged.
    async fn record(
        &self,
        to: &Reach<'_>,
        parts: &[(Option<String>, serde_json::Value)],
        response_id: Option<&str>,
        (input_tokens, output_tokens): (u64, u64),
        cost: i64,
    ) -> Option<store::Charge> {
        for attempt in 0..3u64 {
            match store::record_reply(
                &self.deps.db,
                to.tenant,
                to.conversation,
                parts,
                response_id,
                input_tokens as i32,
                output_tokens as i32,
                cost,
            )
            .await
            {
                Ok(c) => {
                    // Statuses Meta reported before this write committed were parked.
                    let ids: Vec<&str> = parts.iter().filter_map(|(id, _)| id.as_deref()).collect();
                    if let Err(e) = store::apply_pending_statuses(
                        &self.deps.db,
                        to.tenant,
                        to.channel_account_id,
                        &ids,
                    )
                    .await
                    {
                        warn!(error = %e, "parked statuses not applied; they expire in 7 days");
                    }
                    return c;
                }
                Err(e) if attempt < 2 && e.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
                Err(e) => {
                    self.deps.metrics.count("ReplyNotRecorded", 1);
                    tracing::error!(outcome = "reply_not_recorded", error = %e, cost, "reply sent but not recorded; not retrying the record to avoid a second send");
                    return None;
                }
            }
        }
        None
    }

    /// Sends the agent's fallback text for `marker` (best effort), unless the conversation's
    /// latest outbound message already is that fallback: one notice per episode, not one per
    /// customer message.
    async fn fallback(&self, to: &Reach<'_>, marker: &str, text: &Option<String>) {
        let Some(text) = text.as_deref().filter(|t| !t.trim().is_empty()) else {
            return;
        };
        match store::last_outbound_fallback(&self.deps.db, to.tenant, to.conversation).await {
            Ok(Some(m)) if m == marker => return,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "fallback skipped: conversation state unreadable");
                return;
            }
        }
        match self.send_text(to, text, Some(marker)).await {
            Ok((parts, None)) => {
                self.record(to, &parts, None, (0, 0), 0).await;
                self.deps.metrics.count("FallbacksSent", 1);
                info!(fallback = marker, "fallback text sent");
            }
            Ok((parts, Some(code))) => {
                // Recorded as failed; a failed notice does not count as given, so the next
                // message tries again.
                self.record(to, &parts, None, (0, 0), 0).await;
                warn!(fallback = marker, code, "fallback text not delivered");
            }
            Err(_) => warn!(fallback = marker, "fallback text not sent"),
        }
    }

    async fn ask_model(
        &self,
        agent: &Agent,
        tenant: TenantId,
        conversation: uuid::Uuid,
        previous: Option<String>,
        texts: &[String],
        contact_id: &str,
    ) -> Result<shared::openai::ModelReply, Fail> {
        let mut req = ResponseRequest {
            model: agent.model.clone(),
            instructions: Some(agent.instructions.clone()),
            input: vec![InputMessage::user(texts.join("\n"))],
            previous_response_id: previous.filter(|_| agent.store),
            store: agent.store,
            max_output_tokens: Some(agent.max_output_tokens.max(16) as u32),
            temperature: agent.temperature,
            reasoning: agent
                .reasoning_effort
                .as_ref()
                .map(|e| json!({"effort": e})),
            text: None,
            safety_identifier: Some(sha256_hex(contact_id.as_bytes())[..32].to_owned()),
            base_url: agent.base_url.clone(),
        };
        if req.previous_response_id.is_none() {
            req.input = self.history(agent, tenant, conversation, texts).await?;
        }
        let started = Instant::now();
        let result = match self.deps.model.create(&req).await {
            Ok(r) => Ok(r),
            Err(ModelError::PreviousResponseNotFound) => {
                info!("previous response unknown; falling back to stored history");
                req.previous_response_id = None;
                req.input = self.history(agent, tenant, conversation, texts).await?;
                self.deps.model.create(&req).await.map_err(model_fail)
            }
            Err(e) => Err(model_fail(e)),
        };
        if result.is_ok() {
            self.deps
                .metrics
                .millis("ModelLatency", started.elapsed().as_secs_f64() * 1000.0);
        }
        result
    }

    /// The last N stored messages (the new inbound ones included) as model input.
    async fn history(
        &self,
        agent: &Agent,
        tenant: TenantId,
        conversation: uuid::Uuid,
        texts: &[String],
    ) -> Result<Vec<InputMessage>, Fail> {
        let rows = store::recent_messages(
            &self.deps.db,
            tenant,
            conversation,
            agent.history_messages.max(texts.len() as i32) as i64,
        )
        .await?;
        let mut input: Vec<InputMessage> = rows
            .iter()
            .filter_map(|(dir, content)| {
                let c: Content = serde_json::from_value(content.clone()).ok()?;
                let text = c.model_text()?;
                Some(if dir == "in" {
                    InputMessage::user(text)
                } else {
                    InputMessage::assistant(text)
                })
            })
            .collect();
        if input.is_empty() {
            input.push(InputMessage::user(texts.join("\n")));
        }
        Ok(input)
    }
}

fn model_fail(e: ModelError) -> Fail {
    if e.is_retryable() {
        Fail::Retry(e.to_string())
    } else {
        warn!(outcome = "model_rejected", error = %e, "model call failed permanently; recorded");
        Fail::permanent("model_rejected", e.to_string())
    }
}
