//! The reply pipeline (DESIGN §5) behind the processor Lambda. `main.rs` only wires it.
//!
//! Per unit (consecutive records of one conversation in a FIFO group, see `shared::fifo`):
//! parse → route (cached) → store inbound → human mode? → claim the turn (credits held) →
//! the turn engine (`shared::turn`): model → send part by part → record + charge (one
//! statement) → extraction job. Every step's state is stored before the side effect after it.

// No panics on data: request, queue or database values are matched, never unwrapped; the few
// start-up and plain-data cases carry an `allow` with their reason.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

mod config;
pub mod crash;

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use secrecy::SecretString;
use serde_json::json;
use shared::cache::TtlCache;
use shared::credits::{self, Prices};
use shared::db::agents::Agent;
use shared::db::channels::ChannelAccountRoute;
use shared::db::turns::{self as turn_store, Claim, ClaimTerms, OpenTurn, OutRow, Recorded, Saved};
use shared::db::{agents, channels, conversations, messages, statuses};
use shared::db::{Db, DbError, TenantId};
use shared::digest::sha256_hex;
use shared::envelope::{Channel, Content, InboundEnvelope};
use shared::fifo::{run_batch_coalesced, Outcome};
pub use shared::graph::GraphTokens;
use shared::graph::{GraphClient, Recipient};
use shared::graph::{PartOpts, SEND_TIMEOUT};
use shared::metrics::Metrics;
use shared::openai::{InputMessage, ModelError, ResponseRequest, ResponsesClient};
use shared::ordering::dedup_id;
use shared::queue::{ParkedRecord, QueuePublisher, ReturnedRecord};
use shared::split::split_for;
use shared::turn::{
    self, Action, Event, NoAnswer, PartState, Policy, Shortfall, Turn, TurnOutcome, Usage, Via,
};
use tracing::{info, warn, Instrument};

pub use config::Config;

/// Routing lookups are cached this long (an admin change is visible within it).
pub const ROUTE_TTL: Duration = Duration::from_secs(300);

/// Time kept after the model answers, to send and record the reply before the deadline.
pub const SEND_MARGIN: Duration = Duration::from_secs(5);

/// Time kept for the record step (one statement) and the follow-ups.
pub const RECORD_TIME: Duration = Duration::from_secs(3);

/// The least time a model call is started with.
pub const MODEL_MIN: Duration = Duration::from_secs(3);

/// How long a claimed turn is this invocation's without a heartbeat. While the invocation
/// runs, its heartbeat renews the lease every third of it (and keeps the batch's records
/// invisible as long), so a crashed or killed invocation holds its lanes for at most this
/// long instead of the queue's whole visibility timeout.
pub const TURN_LEASE: Duration = Duration::from_secs(30);

/// How long a turn's credit hold counts when the turn is never settled (its messages parked).
pub const HOLD_TTL: Duration = Duration::from_secs(1800);

/// "Try again" answers from Meta taken within one invocation before the record goes back to
/// the queue (with its retry delay).
const SENDS_REFUSED_PER_INVOCATION: u32 = 3;

/// Output budget cap of the larger retry after an empty answer.
pub const MAX_OUTPUT_CAP: u32 = 4096;

/// Characters a history message is assumed to have when sizing the credit hold.
const HISTORY_CHARS_PER_MESSAGE: usize = 400;

/// Everything the pipeline talks to.
pub struct Deps {
    pub db: Db,
    pub model: ResponsesClient,
    pub graph: GraphClient,
    pub tokens: GraphTokens,
    pub publisher: QueuePublisher,
    pub extraction_queue_url: String,
    pub dead_letter_queue_url: String,
    /// The queue the records come from (their retry delays are set on it).
    pub inbound_queue_url: String,
    /// The longest a retried record waits before its redelivery.
    pub max_retry_delay: Duration,
    pub metrics: Metrics,
}

pub struct Processor {
    deps: Deps,
    routes: TtlCache<(Channel, String), Option<ChannelAccountRoute>>,
    agents: TtlCache<(TenantId, uuid::Uuid), Option<Agent>>,
    crash: crash::CrashPoints,
    tuning: Tuning,
    /// The turn leases the running batch holds (its heartbeat renews them).
    leases: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
}

/// The engine's timings, fixed in production; the fault tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long a claimed turn is this invocation's.
    pub turn_lease: Duration,
    /// How long an unanswered WhatsApp send waits for its status echo.
    pub echo_window: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            turn_lease: TURN_LEASE,
            echo_window: Duration::from_millis(Policy::default().echo_window_ms as u64),
        }
    }
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

/// A record's envelope, or why it can never be processed.
fn parse_envelope(m: &SqsMessage) -> Result<InboundEnvelope, Fail> {
    shared::wire::parse(m.body.as_deref().unwrap_or(""))
        .map_err(|e| Fail::permanent("unreadable", e.to_string()))
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
        let map = shared::lock(&self.0);
        map.get(m.message_id.as_deref()?).map(conversation_key)
    }

    /// The record's envelope (parsed again only for a repeated message id, or to get the
    /// reason it does not parse).
    fn take(&self, m: &SqsMessage) -> Result<InboundEnvelope, Fail> {
        let taken = m
            .message_id
            .as_deref()
            .and_then(|id| shared::lock(&self.0).remove(id));
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
    /// The processor as its environment describes it (cold start): configuration, secrets,
    /// clients.
    pub async fn from_env(
        start: shared::bootstrap::Start,
    ) -> Result<Self, shared::bootstrap::StartError> {
        let config = Config::from_env()?;
        let secrets = start.secrets(config.common.secrets_ttl);
        let db = config.database.connect(&secrets).await?;
        let model = config.model.client(&secrets).await?;
        Ok(Self::new(Deps {
            db,
            model,
            graph: config.graph.client(),
            tokens: config.graph.tokens(secrets).await?,
            publisher: start.publisher(),
            extraction_queue_url: config.extraction_queue_url,
            dead_letter_queue_url: config.dead_letter_queue_url,
            inbound_queue_url: config.inbound_queue_url,
            max_retry_delay: config.max_retry_delay,
            metrics: config.common.metrics(start.function),
        }))
    }

    /// One Lambda invocation: its batch, answered 2 s before the invocation's deadline.
    pub async fn invoke(
        &self,
        event: lambda_runtime::LambdaEvent<aws_lambda_events::sqs::SqsEvent>,
    ) -> SqsBatchResponse {
        crash::set_invocation(&event.context.request_id);
        let deadline =
            shared::invocation_deadline(event.context.deadline(), Duration::from_secs(2));
        self.handle_batch(event.payload.records, deadline).await
    }

    pub fn new(deps: Deps) -> Self {
        Self {
            deps,
            routes: TtlCache::new(ROUTE_TTL),
            agents: TtlCache::new(ROUTE_TTL),
            crash: crash::CrashPoints::from_env(),
            tuning: Tuning::default(),
            leases: Default::default(),
        }
    }

    /// Keeps the batch's records invisible for one more turn lease.
    async fn keep_invisible(&self, receipts: &[(String, i32)]) {
        let set = self
            .deps
            .publisher
            .set_visibility(&self.deps.inbound_queue_url, receipts)
            .await;
        self.deps.metrics.count("HeartbeatVisibility", set as u64);
    }

    /// While a batch runs: every third of the turn lease, keep the batch's records invisible
    /// for one more lease and renew the leases of the turns this invocation holds. Never
    /// returns (the batch's future is raced against it).
    async fn heartbeat(&self, receipts: Vec<(String, i32)>) {
        let period = self.tuning.turn_lease / 3;
        loop {
            tokio::time::sleep(period).await;
            self.keep_invisible(&receipts).await;
            let tokens: Vec<uuid::Uuid> = shared::lock(&self.leases).iter().copied().collect();
            if let Err(e) = turn_store::renew(&self.deps.db, &tokens, self.tuning.turn_lease).await
            {
                warn!(error = %e, "turn leases not renewed; another delivery may resume them");
            }
        }
    }

    /// The same with other engine timings (tests).
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// The crash points (armed by the fault tests; inert without the `failpoints` feature).
    pub fn crash_points(&self) -> &crash::CrashPoints {
        &self.crash
    }

    /// Stops the unit at `point` when a crash point is armed there, as if the process died:
    /// nothing after it runs and the turn's lease is kept.
    fn crashed(&self, point: &'static str) -> Result<(), Fail> {
        if self.crash.hit(point) {
            return Err(Fail::Retry(format!("crash point {point}")));
        }
        Ok(())
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
        info!(
            records = records.len(),
            budget_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
            "batch received"
        );
        let parsed = Parsed::new(&records);
        let receipts: std::collections::HashMap<String, (String, u32, String)> = records
            .iter()
            .filter_map(|m| {
                let count = shared::fifo::receive_count(m);
                Some((
                    m.message_id.clone()?,
                    (
                        m.receipt_handle.clone()?,
                        count,
                        shared::fifo::group_of(m).to_owned(),
                    ),
                ))
            })
            .collect();
        let in_flight: Vec<(String, i32)> = receipts
            .values()
            .map(|(receipt, _, _)| {
                (
                    receipt.clone(),
                    self.tuning.turn_lease.as_secs().max(1) as i32,
                )
            })
            .collect();
        // Before any side effect: a crash from here on holds the records for one lease, not
        // the queue's visibility timeout (found by the fault harness: a unit that crashed
        // within milliseconds beat the first heartbeat).
        self.keep_invisible(&in_flight).await;
        let work = run_batch_coalesced(
            records,
            |m| parsed.key(m),
            |unit| self.unit(unit, &parsed, deadline),
        );
        let report = tokio::select! {
            report = work => report,
            () = self.heartbeat(in_flight) => unreachable!("the heartbeat never ends"),
        };
        shared::lock(&self.leases).clear();
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
        // A returned record (and the later ones of its group, returned with it) comes back
        // after the engine's delay, not the queue's visibility timeout: FIFO holds the whole
        // group while any of them is invisible.
        let returned: Vec<ReturnedRecord> = response
            .batch_item_failures
            .iter()
            .filter_map(|f| receipts.get(&f.item_identifier))
            .map(|(receipt, count, group)| ReturnedRecord {
                receipt,
                receive_count: *count,
                group: Some(group),
            })
            .collect();
        let set = self
            .deps
            .publisher
            .delay_returned(
                &self.deps.inbound_queue_url,
                &returned,
                self.deps.max_retry_delay,
            )
            .await;
        metrics.count("RetryDelaysSet", set as u64);
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
        // 2. The same provider message twice in one unit (a late Meta retry): once is enough.
        // Across deliveries the stored message and its turn decide (`process`).
        let mut fresh: Vec<(String, InboundEnvelope)> = Vec::new();
        for env in envs {
            let key = dedup_id(
                env.channel,
                &env.channel_account_id,
                &env.provider_message_id,
            );
            if fresh.iter().any(|(k, _)| *k == key) {
                self.deps.metrics.count("DuplicatesSkipped", 1);
                continue;
            }
            fresh.push((key, env));
        }
        let result = self.process(&fresh, deadline).await;
        if result.is_ok() {
            self.deps
                .metrics
                .count("MessagesProcessed", fresh.len() as u64);
        }
        result
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
        // An account nobody has registered is not remembered: the first message after its
        // registration is stored and answered, not dropped for the cache's lifetime.
        let route = match self.routes.get(&route_key) {
            Some(cached) => cached,
            None => {
                let loaded =
                    channels::resolve_channel_account(db, first.channel, &first.channel_account_id)
                        .await?;
                if loaded.is_some() {
                    self.routes.put(route_key, loaded.clone());
                }
                loaded
            }
        };
        let Some(route) = route.filter(|r| r.is_active && r.tenant_active) else {
            // No tenant to store it under: the log line and the metric are the record.
            self.deps.metrics.count("UnknownAccount", msgs.len() as u64);
            warn!(outcome = "unknown_channel_account", account = %first.channel_account_id, "no active channel account; acknowledged");
            return Ok(());
        };
        let tenant: TenantId = route.tenant;
        tracing::Span::current().record("tenant", tracing::field::display(tenant.uuid()));
        // 4. Store the inbound messages.
        let contact = conversations::upsert_contact(
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
        let conv = conversations::conversation_for(db, tenant, route.channel_account_id, contact)
            .await?
            .ok_or_else(|| Fail::permanent("db_rejected", "conversation not writable"))?;
        tracing::Span::current().record("conversation", tracing::field::display(conv.id));
        let mut stored = Vec::with_capacity(msgs.len());
        let mut duplicates = 0;
        for (_, env) in msgs {
            let content = serde_json::to_value(&env.content).unwrap_or(json!(null));
            let raw: Option<serde_json::Value> = env
                .raw
                .as_ref()
                .and_then(|r| serde_json::from_str(r.get()).ok());
            let at = std::time::UNIX_EPOCH
                + Duration::from_millis(env.provider_timestamp_ms.max(0) as u64);
            if let Some(ins) = messages::insert_inbound_message(
                db,
                tenant,
                conv.id,
                &env.provider_message_id,
                &content,
                raw.as_ref(),
                at,
            )
            .await?
            {
                duplicates += usize::from(ins.duplicate);
                stored.push(ins.id);
            }
        }
        // A redelivery of messages whose turn already ended (the invocation that answered them
        // died before acknowledging): their outcome is stored, there is nothing left to do.
        if duplicates == stored.len()
            && !stored.is_empty()
            && turn_store::unsettled(db, tenant, &stored).await? == 0
        {
            self.deps
                .metrics
                .count("DuplicatesSkipped", stored.len() as u64);
            info!(outcome = "duplicate", "already answered; acknowledged");
            return Ok(());
        }
        let result = self.respond(msgs, &route, &conv, deadline).await;
        let outcome = match &result {
            Ok(o) => *o,
            Err(Fail::Permanent { outcome, .. }) => Some(*outcome),
            Err(Fail::Retry(_)) => None,
        };
        if let Some(outcome) = outcome {
            let ids: Vec<&str> = msgs
                .iter()
                .map(|(_, e)| e.provider_message_id.as_str())
                .collect();
            if let Err(e) = messages::set_outcome(db, tenant, conv.id, &ids, outcome).await {
                warn!(error = %e, outcome, "outcome not recorded on the inbound messages");
            }
        }
        result.map(|_| ())
    }

    /// Steps 5–11 for stored messages. Returns the outcome to record on the unit's messages,
    /// or `None` when a turn recorded it on every message it covers.
    async fn respond(
        &self,
        msgs: &[(String, InboundEnvelope)],
        route: &ChannelAccountRoute,
        conv: &conversations::Conversation,
        deadline: Instant,
    ) -> Result<Option<&'static str>, Fail> {
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
            return Ok(Some("human_mode"));
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
            return Ok(Some("nothing_to_answer"));
        }
        let Some(agent_id) = route.agent_id else {
            warn!(
                outcome = "no_agent",
                "channel account has no agent; stored only"
            );
            return Ok(Some("no_agent"));
        };
        let agent = self
            .agents
            .get_or_load((tenant, agent_id), || agents::agent(db, tenant, agent_id))
            .await?
            .filter(|a| a.is_active);
        let Some(agent) = agent else {
            warn!(
                outcome = "no_agent",
                "agent missing or inactive; stored only"
            );
            return Ok(Some("no_agent"));
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
        // 6. Credits: the turn's hold is taken with the claim, or the claim is refused.
        let policy = Policy {
            echo_window_ms: self.tuning.echo_window.as_millis() as i64,
            ..policy_for(&agent)
        };
        let fresh = Turn::new(via_of(first.channel), &policy);
        let prices = Prices {
            input_per_1k: agent.price_input_per_1k,
            output_per_1k: agent.price_output_per_1k,
        };
        let input_chars = agent.instructions.len()
            + texts.iter().map(String::len).sum::<usize>()
            + HISTORY_CHARS_PER_MESSAGE * agent.history_messages.max(0) as usize;
        let hold = credits::hold_for(
            prices,
            credits::estimate_tokens(input_chars),
            policy.max_output_tokens,
            policy.max_output_cap,
            2,
        );
        let terms = ClaimTerms {
            lease: self.tuning.turn_lease,
            new_turn: &fresh,
            hold,
            min_balance: agent.min_balance,
            hold_ttl: HOLD_TTL,
        };
        // A resumed turn (left open by a delivery that died) is finished first; the messages
        // that arrived after it had its answer get the next turn.
        let mut previous = conv.previous_response_id.clone();
        for round in 0..3 {
            let open = match turn_store::claim(db, tenant, conv.id, &terms).await? {
                Claim::Open(open) => {
                    shared::lock(&self.leases).insert(open.lease);
                    open
                }
                Claim::Busy { lease_left } => {
                    return Err(Fail::Retry(format!(
                        "another invocation holds this conversation's turn for {}s more",
                        lease_left.as_secs()
                    )))
                }
                Claim::NothingToAnswer => {
                    if round == 0 {
                        info!(
                            outcome = "duplicate",
                            "every message is answered; acknowledged"
                        );
                    }
                    return Ok(None);
                }
                Claim::NoCredits { balance, held } => {
                    metrics.count("CreditsExhausted", 1);
                    warn!(
                        outcome = "credits_exhausted",
                        balance, held, hold, "credits exhausted; no model call"
                    );
                    self.fallback(&reach, "no_credits", &agent.fallback_no_credits)
                        .await;
                    return Ok(Some("credits_exhausted"));
                }
                Claim::NoConversation => {
                    return Err(Fail::permanent("db_rejected", "conversation not writable"))
                }
            };
            self.crashed("after_claim")?;
            let resumed = !open.created;
            if resumed {
                metrics.count("TurnsResumed", 1);
                info!(turn = %open.id, "resuming a turn a previous delivery left open");
            }
            let ctx = TurnCtx {
                reach: &reach,
                agent: &agent,
                policy: policy.clone(),
                prices,
                previous_response_id: previous.clone(),
                inbound_wamid: &last.provider_message_id,
                budget: Budget { deadline },
            };
            let id = open.id;
            let done = self
                .run_turn(open, &ctx)
                .instrument(tracing::info_span!("turn", turn = %id))
                .await?;
            if done.shortfall == Some(Shortfall::ModelRejected) {
                // Recorded (and the fallback sent, if any); parked too, so a redrive after the
                // cause is fixed answers it.
                return Err(Fail::permanent(
                    "model_rejected",
                    "the model refused the request for good",
                ));
            }
            if !resumed {
                return Ok(None);
            }
            previous = done.response_id.or(previous);
        }
        Ok(None)
    }

    /// The engine's loop: decide from the stored state, perform, fold the result in, store it
    /// (before the side effect that follows). Returns when the turn is done; a retryable
    /// failure leaves the state for the redelivery and gives up the lease.
    async fn run_turn(&self, mut open: OpenTurn, ctx: &TurnCtx<'_>) -> Result<Turn, Fail> {
        let db = &self.deps.db;
        let metrics = &self.deps.metrics;
        let tenant = ctx.reach.tenant;
        let turn_id = open.id.to_string();
        let mut refused_here = 0u32;
        let parts_of = |t: &str| split_for(ctx.reach.channel, t);
        let fold = |t: &Turn, e: Event| {
            turn::apply(t.clone(), e, &ctx.policy, parts_of)
                .map_err(|m| Fail::Retry(format!("turn state: {m}")))
        };
        loop {
            let action = turn::decide(&open.turn, &turn_id, shared::now_ms(), &ctx.policy);
            match action {
                Action::AskModel { max_output_tokens } => {
                    if !ctx.budget.allows(MODEL_MIN + SEND_MARGIN) {
                        return self
                            .later(tenant, &open, "too little time left to ask the model")
                            .await;
                    }
                    if open.turn.model_calls == 0 && ctx.reach.channel == Channel::Whatsapp {
                        // 7. Mark read + typing (best effort).
                        if let Err(e) = self
                            .deps
                            .graph
                            .mark_read_and_typing(
                                ctx.reach.token,
                                ctx.reach.account,
                                ctx.inbound_wamid,
                            )
                            .await
                        {
                            warn!(code = e.code, "mark-as-read failed (ignored)");
                        }
                    }
                    // 8. Model, within the time left less what the send and record need.
                    let model_deadline = ctx.budget.deadline.checked_sub(SEND_MARGIN);
                    let asked = match model_deadline {
                        Some(d) => tokio::time::timeout_at(
                            d.into(),
                            self.ask_model(ctx, &open, max_output_tokens),
                        )
                        .await
                        .unwrap_or_else(|_| {
                            Err(Fail::Retry(
                                "the invocation's deadline came before the model answered".into(),
                            ))
                        }),
                        None => Err(Fail::Retry("no time left for the model".into())),
                    };
                    let event = match asked {
                        Ok(reply) => {
                            metrics.count("InputTokens", reply.input_tokens);
                            metrics.count("OutputTokens", reply.output_tokens);
                            model_event(&reply, &open.turn, ctx.reach.channel)
                        }
                        Err(Fail::Permanent { reason, .. }) => {
                            metrics.count("ModelFailures", 1);
                            warn!(outcome = "model_rejected", error = %reason, "model call failed for good");
                            Event::ModelRejected
                        }
                        Err(f) => {
                            metrics.count("ModelFailures", 1);
                            let _ = turn_store::release(db, tenant, &open).await;
                            return Err(f);
                        }
                    };
                    if let Event::NoAnswer { kind, .. } = &event {
                        metrics.count_by("ModelNoAnswer", "Kind", format!("{kind:?}"), 1);
                        warn!(kind = ?kind, calls = open.turn.model_calls + 1, "the model gave no answer to send");
                    }
                    let next = fold(&open.turn, event)?;
                    self.store_state(tenant, &mut open, next, false).await?;
                    self.crashed("after_model")?;
                }
                Action::Send { part, tag, attempt } => {
                    // A WhatsApp part found in `Sending` is resent only when no attempt of it
                    // was echoed: the echo may have come while this turn waited in the queue.
                    if let Some(provider_id) = self.echo_of(&open, &turn_id, part, ctx).await? {
                        metrics.count("SendsResolvedByEcho", 1);
                        info!(
                            part,
                            "the status echo shows the send reached Meta; not resent"
                        );
                        let next = fold(&open.turn, Event::EchoSeen { part, provider_id })?;
                        self.store_state(tenant, &mut open, next, false).await?;
                        continue;
                    }
                    if !ctx.budget.allows(SEND_TIMEOUT + RECORD_TIME) {
                        return self
                            .later(tenant, &open, "too little time left to send")
                            .await;
                    }
                    if attempt > 1 && ctx.reach.channel != Channel::Webchat {
                        metrics.count("SendResends", 1);
                        warn!(
                            part,
                            attempt, "no status echo for an unanswered send; sending it once more"
                        );
                    }
                    let started = fold(
                        &open.turn,
                        Event::SendStarted {
                            part,
                            now_ms: shared::now_ms(),
                        },
                    )?;
                    if ctx.reach.channel == Channel::Webchat {
                        // The stored row is the delivery: the part is sent once its state is
                        // recorded (the record step writes the row).
                        let id = format!("wc.out.{}", uuid::Uuid::new_v4().simple());
                        let sent = fold(
                            &started,
                            Event::SendAccepted {
                                part,
                                provider_id: id,
                            },
                        )?;
                        if !self.store_state(tenant, &mut open, sent, true).await? {
                            let next = fold(&open.turn, Event::HumanTookOver)?;
                            self.store_state(tenant, &mut open, next, false).await?;
                        }
                        continue;
                    }
                    // `Sending` is stored before the request is written, and only while the
                    // conversation is still the AI's.
                    if !self.store_state(tenant, &mut open, started, true).await? {
                        info!("a human took the conversation over; the rest is not sent");
                        let next = fold(&open.turn, Event::HumanTookOver)?;
                        self.store_state(tenant, &mut open, next, false).await?;
                        continue;
                    }
                    self.crashed("before_send")?;
                    let text = open.turn.parts[part].text.clone();
                    let recipient = Recipient {
                        contact_id: &ctx.reach.contact.id,
                        wa_id: ctx.reach.contact.wa_id.as_deref(),
                    };
                    let opts = PartOpts {
                        human_agent: false,
                        tag: (ctx.reach.channel == Channel::Whatsapp).then_some(tag.as_str()),
                    };
                    let sent = self
                        .deps
                        .graph
                        .send_part(
                            ctx.reach.channel,
                            ctx.reach.token,
                            ctx.reach.account,
                            recipient,
                            &text,
                            opts,
                        )
                        .await;
                    self.crashed("after_send")?;
                    let event = match sent {
                        Ok(provider_id) => Event::SendAccepted { part, provider_id },
                        Err(e) if e.ambiguous => {
                            metrics.count("SendsAmbiguous", 1);
                            warn!(
                                part,
                                status = e.status,
                                "no answer to a send that was written; resolving it"
                            );
                            Event::SendAmbiguous { part }
                        }
                        Err(e) => {
                            metrics.count_by("SendFailures", "ErrorCode", e.code.to_string(), 1);
                            warn!(
                                part,
                                code = e.code,
                                retryable = e.retryable,
                                "send refused by Meta"
                            );
                            Event::SendRejected {
                                part,
                                code: e.code,
                                retryable: e.retryable,
                            }
                        }
                    };
                    let again = matches!(
                        event,
                        Event::SendRejected {
                            retryable: true,
                            ..
                        }
                    );
                    let next = fold(&open.turn, event)?;
                    if next.parts[part].state == PartState::Unknown {
                        // No echo to resolve it with (Instagram): surfaced, never repeated.
                        metrics.count("SendsUnknown", 1);
                        tracing::error!(
                            outcome = "send_unknown",
                            part,
                            "a send may or may not have reached the customer; it is not repeated"
                        );
                    }
                    let rejections = next.parts[part].rejections;
                    self.store_state(tenant, &mut open, next, false).await?;
                    if again && open.turn.parts[part].state == PartState::Pending {
                        // Meta said "not now": try again in this invocation a few times while
                        // time allows, then through the queue's retry delay.
                        refused_here += 1;
                        let pause = Duration::from_millis(250 << rejections.min(4));
                        if refused_here >= SENDS_REFUSED_PER_INVOCATION
                            || !ctx.budget.allows(pause + SEND_TIMEOUT + RECORD_TIME)
                        {
                            return self
                                .later(tenant, &open, "Meta asked to retry the send later")
                                .await;
                        }
                        tokio::time::sleep(pause).await;
                    }
                }
                Action::AwaitEcho { part, retry_in_ms } => {
                    match self.echo_of(&open, &turn_id, part, ctx).await? {
                        Some(provider_id) => {
                            metrics.count("SendsResolvedByEcho", 1);
                            info!(part, "the status echo shows the send reached Meta");
                            let next = fold(&open.turn, Event::EchoSeen { part, provider_id })?;
                            self.store_state(tenant, &mut open, next, false).await?;
                        }
                        None => {
                            let why = format!(
                                "waiting up to {}s for the status echo of an unanswered send",
                                (retry_in_ms.max(0) as u64).div_ceil(1000)
                            );
                            return self.later(tenant, &open, &why).await;
                        }
                    }
                }
                Action::GiveUp { part } => {
                    if let Some(provider_id) = self.echo_of(&open, &turn_id, part, ctx).await? {
                        metrics.count("SendsResolvedByEcho", 1);
                        info!(part, "the status echo shows the send reached Meta");
                        let next = fold(&open.turn, Event::EchoSeen { part, provider_id })?;
                        self.store_state(tenant, &mut open, next, false).await?;
                        continue;
                    }
                    metrics.count("SendsUnknown", 1);
                    tracing::error!(
                        outcome = "send_unknown",
                        part,
                        "a send may or may not have reached the customer; it is not repeated"
                    );
                    let next = fold(&open.turn, Event::GaveUp { part })?;
                    self.store_state(tenant, &mut open, next, false).await?;
                }
                Action::Record => {
                    if !ctx.budget.allows(RECORD_TIME) {
                        return self
                            .later(tenant, &open, "too little time left to record")
                            .await;
                    }
                    self.crashed("before_record")?;
                    self.record_turn(&mut open, ctx).await?;
                    self.crashed("after_record")?;
                }
                Action::FollowUps => {
                    // 11. Extraction job for this conversation.
                    if let Err(e) = self
                        .deps
                        .publisher
                        .send_all(
                            &self.deps.extraction_queue_url,
                            vec![
                                shared::wire::ExtractionJob::new(tenant, ctx.reach.conversation)
                                    .message(),
                            ],
                        )
                        .await
                    {
                        warn!(error = %e, "extraction job not queued; the next turn queues it again");
                    }
                    let next = fold(&open.turn, Event::FollowUpsDone)?;
                    if turn_store::finish(db, tenant, &open, &next).await? == Saved::LeaseLost {
                        return Err(Fail::Retry("the turn's lease was taken over".into()));
                    }
                    open.turn = next;
                }
                Action::Finish => return Ok(open.turn),
            }
        }
    }

    /// Stores `next` under the turn's lease (`require_ai`: only while the conversation is the
    /// AI's). Returns false when a human took over (nothing stored).
    async fn store_state(
        &self,
        tenant: TenantId,
        open: &mut OpenTurn,
        next: Turn,
        require_ai: bool,
    ) -> Result<bool, Fail> {
        match turn_store::save(&self.deps.db, tenant, open, &next, require_ai).await? {
            Saved::Saved => {
                open.turn = next;
                Ok(true)
            }
            Saved::HumanMode => Ok(false),
            Saved::LeaseLost => Err(Fail::Retry("the turn's lease was taken over".into())),
        }
    }

    /// Applies the delivery statuses Meta reported before these sent messages were recorded
    /// (parked by the status function). Best effort: parked rows expire on their own.
    async fn apply_parked(&self, to: &Reach<'_>, ids: &[&str]) {
        if let Err(e) =
            statuses::apply_pending_statuses(&self.deps.db, to.tenant, to.channel_account_id, ids)
                .await
        {
            warn!(error = %e, "parked statuses not applied; they expire in 7 days");
        }
    }

    /// Leaves the turn as stored for the redelivery.
    /// The provider id a status echo gave any attempt of a WhatsApp part still in `Sending`
    /// (`None` for other parts and channels: only WhatsApp echoes).
    async fn echo_of(
        &self,
        open: &OpenTurn,
        turn_id: &str,
        part: usize,
        ctx: &TurnCtx<'_>,
    ) -> Result<Option<String>, Fail> {
        let p = &open.turn.parts[part];
        if open.turn.via != turn::Via::Whatsapp || !matches!(p.state, PartState::Sending { .. }) {
            return Ok(None);
        }
        let tags: Vec<String> = (1..=p.attempts.max(1))
            .map(|a| turn::send_tag(turn_id, part, a))
            .collect();
        Ok(turn_store::echoed_any(
            &self.deps.db,
            ctx.reach.tenant,
            ctx.reach.channel_account_id,
            &tags,
        )
        .await?)
    }

    async fn later<T>(&self, tenant: TenantId, open: &OpenTurn, why: &str) -> Result<T, Fail> {
        self.deps.metrics.count("TurnsDeferred", 1);
        if let Err(e) = turn_store::release(&self.deps.db, tenant, open).await {
            warn!(error = %e, "turn lease not released; it expires on its own");
        }
        Err(Fail::Retry(why.to_owned()))
    }

    /// 10. Records the settled turn (rows, charge, hold, outcome) in one statement.
    async fn record_turn(&self, open: &mut OpenTurn, ctx: &TurnCtx<'_>) -> Result<(), Fail> {
        let turn = &open.turn;
        let marker = match turn.shortfall {
            Some(Shortfall::ModelRejected) => Some("error"),
            Some(Shortfall::NoAnswer(_)) => Some("no_answer"),
            None => None,
        };
        let rows: Vec<OutRow> = turn
            .parts
            .iter()
            .filter_map(|p| {
                let mut content = json!({"type": "text", "body": p.text});
                if let (true, Some(m)) = (turn.fallback, marker) {
                    content["fallback"] = json!(m);
                }
                let (id, status) = match &p.state {
                    PartState::Sent { provider_id } => (Some(provider_id.clone()), "sent"),
                    PartState::Failed { code } => {
                        content["error_code"] = json!(code);
                        (None, "failed")
                    }
                    PartState::Unknown => {
                        content["delivery"] = json!("unknown");
                        (None, "pending")
                    }
                    _ => return None,
                };
                Some(OutRow {
                    provider_message_id: id,
                    content,
                    status,
                })
            })
            .collect();
        let cost = credits::cost(ctx.prices, turn.usage);
        let outcome = turn.outcome();
        let next = turn::apply(turn.clone(), Event::Recorded, &ctx.policy, |t| {
            split_for(ctx.reach.channel, t)
        })
        .map_err(|m| Fail::Retry(format!("turn state: {m}")))?;
        let tenant = ctx.reach.tenant;
        match turn_store::record(
            &self.deps.db,
            tenant,
            open,
            &next,
            &rows,
            cost,
            outcome.as_str(),
        )
        .await?
        {
            Recorded::LeaseLost => Err(Fail::Retry("the turn's lease was taken over".into())),
            Recorded::Recorded {
                charged, uncovered, ..
            } => {
                self.apply_parked(ctx.reach, &open.turn.sent_ids()).await;
                let metrics = &self.deps.metrics;
                metrics.count("CreditsCharged", charged.max(0) as u64);
                if uncovered > 0 {
                    metrics.count("CreditsUncovered", uncovered as u64);
                    warn!(uncovered, "the balance did not cover the turn's cost");
                }
                if outcome == TurnOutcome::Replied {
                    metrics.count("RepliesSent", 1);
                }
                info!(
                    outcome = outcome.as_str(),
                    parts = rows.len(),
                    input_tokens = open.turn.usage.input_tokens,
                    output_tokens = open.turn.usage.output_tokens,
                    charged,
                    "reply processed"
                );
                open.turn = next;
                Ok(())
            }
        }
    }

    /// Sends `text` in channel-sized parts, in order (the no-credits notice, which has no
    /// turn). A retryable error before anything went out fails; any other error is recorded on
    /// the part and ends the send. `marker` tags fallback texts.
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
                .send_part(
                    to.channel,
                    to.token,
                    to.account,
                    recipient,
                    &piece,
                    PartOpts::default(),
                )
                .await;
            let mut content = json!({"type": "text", "body": piece});
            if let Some(m) = marker {
                content["fallback"] = json!(m);
            }
            match sent {
                Ok(id) => parts.push((Some(id), content)),
                Err(e) if e.retryable && !e.ambiguous && parts.is_empty() => {
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

    /// Writes the parts of a notice sent without a turn (no charge). A failure is only logged:
    /// the notice is out and must not be sent again.
    async fn record(&self, to: &Reach<'_>, parts: &[(Option<String>, serde_json::Value)]) {
        for attempt in 0..3u64 {
            match messages::record_reply(
                &self.deps.db,
                to.tenant,
                to.conversation,
                parts,
                None,
                0,
                0,
                0,
            )
            .await
            {
                Ok(_) => {
                    let ids: Vec<&str> = parts.iter().filter_map(|(id, _)| id.as_deref()).collect();
                    self.apply_parked(to, &ids).await;
                    return;
                }
                Err(e) if attempt < 2 && e.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
                Err(e) => {
                    self.deps.metrics.count("ReplyNotRecorded", 1);
                    tracing::error!(outcome = "reply_not_recorded", error = %e, "notice sent but not recorded");
                    return;
                }
            }
        }
    }

    /// Sends the agent's fallback text for `marker` (best effort), unless the conversation's
    /// latest outbound message already is that fallback: one notice per episode, not one per
    /// customer message.
    async fn fallback(&self, to: &Reach<'_>, marker: &str, text: &Option<String>) {
        let Some(text) = text.as_deref().filter(|t| !t.trim().is_empty()) else {
            return;
        };
        match messages::last_outbound_fallback(&self.deps.db, to.tenant, to.conversation).await {
            Ok(Some(m)) if m == marker => return,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "fallback skipped: conversation state unreadable");
                return;
            }
        }
        match self.send_text(to, text, Some(marker)).await {
            Ok((parts, None)) => {
                self.record(to, &parts).await;
                self.deps.metrics.count("FallbacksSent", 1);
                info!(fallback = marker, "fallback text sent");
            }
            Ok((parts, Some(code))) => {
                // Recorded as failed; a failed notice does not count as given, so the next
                // message tries again.
                self.record(to, &parts).await;
                warn!(fallback = marker, code, "fallback text not delivered");
            }
            Err(_) => warn!(fallback = marker, "fallback text not sent"),
        }
    }

    /// One model call for the turn: the messages it covers on top of the stored response, or
    /// the recent history when there is none (or it expired).
    async fn ask_model(
        &self,
        ctx: &TurnCtx<'_>,
        open: &OpenTurn,
        max_output_tokens: u32,
    ) -> Result<shared::openai::ModelReply, Fail> {
        let agent = ctx.agent;
        let tenant = ctx.reach.tenant;
        let conversation = ctx.reach.conversation;
        let texts: Vec<String> = turn_store::covered_contents(&self.deps.db, tenant, open.id)
            .await?
            .into_iter()
            .filter_map(|c| serde_json::from_value::<Content>(c).ok()?.model_text())
            .collect();
        let mut req = ResponseRequest {
            model: agent.model.clone(),
            instructions: Some(agent.instructions.clone()),
            input: vec![InputMessage::user(texts.join("\n"))],
            previous_response_id: ctx.previous_response_id.clone().filter(|_| agent.store),
            store: agent.store,
            max_output_tokens: Some(max_output_tokens.max(16)),
            temperature: agent.temperature,
            reasoning: agent
                .reasoning_effort
                .as_ref()
                .map(|e| json!({"effort": e})),
            text: None,
            safety_identifier: Some(sha256_hex(ctx.reach.contact.id.as_bytes())[..32].to_owned()),
            base_url: agent.base_url.clone(),
        };
        if req.previous_response_id.is_none() || texts.is_empty() {
            req.previous_response_id = None;
            req.input = self.history(agent, tenant, conversation, &texts).await?;
        }
        let started = Instant::now();
        let result = match self.deps.model.create(&req).await {
            Ok(r) => Ok(r),
            Err(ModelError::PreviousResponseNotFound) => {
                info!("previous response unknown; falling back to stored history");
                req.previous_response_id = None;
                req.input = self.history(agent, tenant, conversation, &texts).await?;
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
        let rows = messages::recent_messages(
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

/// What the engine needs through one turn.
struct TurnCtx<'a> {
    reach: &'a Reach<'a>,
    agent: &'a Agent,
    policy: Policy,
    prices: Prices,
    previous_response_id: Option<String>,
    /// The newest inbound message (mark-as-read).
    inbound_wamid: &'a str,
    budget: Budget,
}

/// The invocation's time: no step starts that could not finish before `deadline`.
struct Budget {
    deadline: Instant,
}

impl Budget {
    fn allows(&self, need: Duration) -> bool {
        self.deadline.saturating_duration_since(Instant::now()) >= need
    }
}

fn via_of(channel: Channel) -> Via {
    match channel {
        Channel::Whatsapp => Via::Whatsapp,
        Channel::Instagram => Via::Instagram,
        Channel::Webchat => Via::Webchat,
    }
}

/// The engine's knobs for an agent.
fn policy_for(agent: &Agent) -> Policy {
    let max_output_tokens = agent.max_output_tokens.clamp(16, MAX_OUTPUT_CAP as i32) as u32;
    Policy {
        max_output_tokens,
        max_output_cap: MAX_OUTPUT_CAP.max(max_output_tokens),
        fallback_text: agent
            .fallback_error
            .clone()
            .filter(|t| !t.trim().is_empty()),
        ..Policy::default()
    }
}

/// Reads a model reply as the engine's event: text to send, or which kind of no answer.
fn model_event(reply: &shared::openai::ModelReply, turn: &Turn, channel: Channel) -> Event {
    let usage = Usage {
        input_tokens: reply.input_tokens,
        output_tokens: reply.output_tokens,
        cached_tokens: 0,
    };
    let has_text = !reply.text.trim().is_empty();
    let kind = if reply.refusal.is_some() && !has_text {
        Some(NoAnswer::Refusal)
    } else if reply.incomplete_reason.is_some() && (turn.model_calls == 0 || !has_text) {
        // Cut short: asked once more with a larger budget; the second time its text is used.
        Some(NoAnswer::Incomplete)
    } else if !has_text {
        Some(NoAnswer::Empty)
    } else {
        None
    };
    match kind {
        Some(kind) => Event::NoAnswer {
            kind,
            response_id: Some(reply.id.clone()).filter(|id| !id.is_empty()),
            usage,
        },
        None => Event::Answered {
            response_id: reply.id.clone(),
            parts: split_for(channel, &reply.text),
            usage,
        },
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
