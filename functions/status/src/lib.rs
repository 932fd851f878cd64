//! The status function: delivery statuses of our outbound messages (WhatsApp `statuses[]`,
//! Instagram `read`) move the stored message forward, monotonically; account-level channel
//! errors are logged and counted. Standard queue: records are independent and run
//! concurrently; applying a status twice changes nothing, so no idempotency record is needed.
//!
//! Per record: parse → route the channel account (cached) → `statuses::apply_status`:
//! updated, stale (already at or past it), or parked in `pending_statuses` when the message is
//! not recorded yet (the processor applies it when it records the message). A body that does not
//! parse is sent to the status DLQ and acknowledged; a database outage fails the record, which
//! comes back after a short, growing delay (not the queue's whole visibility timeout): the
//! processor waits a bounded time for the echo of an unanswered send, so a status held back
//! for minutes by a brief outage would make it send the reply a second time.

// No panics on data: request, queue or database values are matched, never unwrapped; the few
// start-up and plain-data cases carry an `allow` with their reason.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

mod config;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use futures_util::future::join_all;
use shared::cache::TtlCache;
use shared::db::channels::ChannelAccountRoute;
use shared::db::statuses::StatusApplied;
use shared::db::Db;
use shared::db::{channels, statuses};
use shared::envelope::{Channel, DeliveryState, StatusEvent};
use shared::fifo::Outcome;
use shared::metrics::Metrics;
use shared::queue::{ParkedRecord, QueuePublisher, ReturnedRecord};
use tracing::{info, warn, Instrument};

pub use config::Config;

/// Routing lookups are cached this long.
pub const ROUTE_TTL: Duration = Duration::from_secs(300);
/// Parked statuses whose message never appeared are dropped after this many days.
pub const PENDING_DAYS: i32 = 7;
/// How often a container sweeps expired parked statuses.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

pub struct Deps {
    pub db: Db,
    pub publisher: QueuePublisher,
    /// The status queue (failed records get their retry delay on it).
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    /// The longest a failed record waits before it is redelivered.
    pub max_retry_delay: Duration,
    pub metrics: Metrics,
}

pub struct StatusProcessor {
    deps: Deps,
    routes: TtlCache<(Channel, String), Option<ChannelAccountRoute>>,
    last_sweep: Mutex<Option<Instant>>,
}

impl StatusProcessor {
    /// The function as its environment describes it (cold start).
    pub async fn from_env(
        start: shared::bootstrap::Start,
    ) -> Result<Self, shared::bootstrap::StartError> {
        let config = Config::from_env()?;
        let secrets = start.secrets(config.common.secrets_ttl);
        Ok(Self::new(Deps {
            db: config.database.connect(&secrets).await?,
            publisher: start.publisher(),
            queue_url: config.queue_url,
            dead_letter_queue_url: config.dead_letter_queue_url,
            max_retry_delay: config.max_retry_delay,
            metrics: config.common.metrics(start.function),
        }))
    }

    /// One Lambda invocation.
    pub async fn invoke(
        &self,
        event: lambda_runtime::LambdaEvent<aws_lambda_events::sqs::SqsEvent>,
    ) -> SqsBatchResponse {
        self.handle_batch(event.payload.records).await
    }

    pub fn new(deps: Deps) -> Self {
        Self {
            deps,
            routes: TtlCache::new(ROUTE_TTL),
            last_sweep: Mutex::new(None),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.deps.metrics
    }

    pub async fn handle_batch(&self, records: Vec<SqsMessage>) -> SqsBatchResponse {
        let outcomes = join_all(records.iter().map(|m| self.record(m))).await;
        let mut response = SqsBatchResponse::default();
        let mut parked = Vec::new();
        let mut returned = Vec::new();
        for (m, outcome) in records.iter().zip(outcomes) {
            let id = m.message_id.clone().unwrap_or_default();
            match outcome {
                Outcome::Done => {}
                Outcome::Retry(reason) => {
                    warn!(message_id = %id, reason = %reason, "status failed; it comes back after its retry delay");
                    if let Some(receipt) = &m.receipt_handle {
                        returned.push(ReturnedRecord {
                            receipt,
                            receive_count: shared::fifo::receive_count(m),
                            group: None,
                        });
                    }
                    let mut f = BatchItemFailure::default();
                    f.item_identifier = id;
                    response.batch_item_failures.push(f);
                }
                Outcome::Permanent(reason) => parked.push(ParkedRecord {
                    message_id: id,
                    body: m.body.clone().unwrap_or_default(),
                    group_id: None,
                    reason,
                }),
            }
        }
        let n = self
            .deps
            .publisher
            .park(&self.deps.dead_letter_queue_url, parked, &mut response)
            .await;
        self.deps.metrics.count("RecordsParked", n as u64);
        let set = self
            .deps
            .publisher
            .delay_returned(&self.deps.queue_url, &returned, self.deps.max_retry_delay)
            .await;
        self.deps.metrics.count("RetryDelaysSet", set as u64);
        self.deps
            .metrics
            .count("BatchFailures", response.batch_item_failures.len() as u64);
        self.sweep().await;
        self.deps.metrics.flush();
        response
    }

    async fn record(&self, m: &SqsMessage) -> Outcome {
        let event = match shared::wire::parse::<StatusEvent>(m.body.as_deref().unwrap_or("")) {
            Ok(event) => event,
            Err(e) => return Outcome::Permanent(e.to_string()),
        };
        let span = tracing::info_span!("status", correlation_id = %event.correlation_id());
        async {
            match event {
                StatusEvent::DeliveryStatus(s) => self.delivery(s).await,
                StatusEvent::ChannelError(e) => {
                    self.deps.metrics.count_by(
                        "ChannelErrors",
                        "ErrorCode",
                        e.error.code.to_string(),
                        1,
                    );
                    warn!(
                        outcome = "channel_error",
                        channel = %e.channel,
                        account = %e.channel_account_id,
                        code = e.error.code,
                        title = e.error.title.as_deref().unwrap_or(""),
                        "Meta reported an account-level error"
                    );
                    Outcome::Done
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn delivery(&self, s: shared::envelope::DeliveryStatus) -> Outcome {
        let db = &self.deps.db;
        let metrics = &self.deps.metrics;
        let route = match self
            .routes
            .get_or_load((s.channel, s.channel_account_id.clone()), || {
                channels::resolve_channel_account(db, s.channel, &s.channel_account_id)
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        let Some(route) = route else {
            metrics.count("UnknownAccount", 1);
            warn!(outcome = "unknown_channel_account", account = %s.channel_account_id, "status for an unknown channel account; acknowledged");
            return Outcome::Done;
        };
        let code = s.errors.first().and_then(|e| i32::try_from(e.code).ok());
        // Instagram reports `read` once, for the newest message read: the earlier ones count too.
        let up_to = s.channel == Channel::Instagram && s.status == DeliveryState::Read;
        let applied = match statuses::apply_status_tagged(
            db,
            route.tenant,
            route.channel_account_id,
            &s.provider_message_id,
            s.status,
            code,
            up_to,
            s.biz_opaque_callback_data.as_deref(),
        )
        .await
        {
            Ok(a) => a,
            Err(e) => return e.into(),
        };
        let name = match s.status {
            DeliveryState::Sent => "Sent",
            DeliveryState::Delivered => "Delivered",
            DeliveryState::Read => "Read",
            DeliveryState::Played => "Played",
            DeliveryState::Failed => "Failed",
            DeliveryState::Unknown => "UnknownStatus",
        };
        metrics.count_by(name, "Channel", s.channel.as_str().to_owned(), 1);
        if let Some(code) = code {
            metrics.count_by("FailedByCode", "ErrorCode", code.to_string(), 1);
        }
        let outcome = match applied {
            StatusApplied::Updated => "updated",
            StatusApplied::Stale => "stale",
            StatusApplied::Pending => {
                metrics.count("StatusesParked", 1);
                "parked_until_message_recorded"
            }
            StatusApplied::NoAccount => "unknown_channel_account",
        };
        info!(outcome, status = s.status.as_str(), code, "status applied");
        Outcome::Done
    }

    /// Drops expired parked statuses, at most once per `SWEEP_EVERY` per container.
    async fn sweep(&self) {
        {
            let mut last = shared::lock(&self.last_sweep);
            if last.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match statuses::expire_pending_statuses(&self.deps.db, PENDING_DAYS).await {
            Ok(0) => {}
            Ok(n) => info!(
                expired = n,
                "parked statuses whose message never appeared dropped"
            ),
            Err(e) => warn!(error = %e, "could not sweep parked statuses"),
        }
    }
}
