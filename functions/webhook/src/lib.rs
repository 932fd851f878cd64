//! The webhook function: Meta's GET verification and signed POST deliveries.
//!
//! `POST`: size check → signature over the raw bytes → parse → SendMessageBatch (inbound FIFO and
//! status queue) → 200. It never touches Postgres or OpenAI. Every rejection enqueues nothing and
//! writes one log line with the reason; no body, secret or message text is ever logged.

// No panics on data: request, queue or database values are matched, never unwrapped; the few
// start-up and plain-data cases carry an `allow` with their reason.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

pub mod config;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use secrecy::ExposeSecret;
use shared::envelope::InboundEnvelope;
use shared::http::{first_query_value, Call};
use shared::meta::{parse_webhook, Parsed};
use shared::queue::{QueuePublisher, RetryPolicy};
use shared::secrets::{MetaSecretSource, MetaSecrets};
use shared::signature::{verify_token_matches, SIGNATURE_HEADER};
use shared::wire::{inbound_message, status_message};
use tracing::{info, warn};

pub use config::{Config, SecretsConfig};
pub use shared::http::CORRELATION_HEADER;

/// The function: its configuration, the Meta secrets and the queue publisher, shared by every
/// request its [`App::router`] serves.
#[derive(Clone)]
pub struct App(Arc<Inner>);

struct Inner {
    config: Config,
    secrets: MetaSecretSource,
    publisher: QueuePublisher,
}

impl App {
    /// The function as its environment describes it (cold start).
    pub async fn from_env(
        start: shared::bootstrap::Start,
    ) -> Result<Self, shared::bootstrap::StartError> {
        Ok(Self::new(Config::from_env()?, &start.sdk)?)
    }

    /// Builds the app from a validated config and an AWS SDK configuration.
    pub fn new(
        config: Config,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, shared::secrets::SecretsError> {
        Self::with_retry(config, sdk, RetryPolicy::default())
    }

    pub fn with_retry(
        config: Config,
        sdk: &aws_config::SdkConfig,
        retry: RetryPolicy,
    ) -> Result<Self, shared::secrets::SecretsError> {
        let secrets = match &config.secrets {
            SecretsConfig::Env {
                app_secret,
                verify_token,
            } => MetaSecretSource::Static(Arc::new(MetaSecrets::new(
                app_secret,
                verify_token.expose_secret().to_owned().into(),
            )?)),
            SecretsConfig::Manager { secret_id, ttl } => MetaSecretSource::manager(
                aws_sdk_secretsmanager::Client::new(sdk),
                secret_id.clone(),
                *ttl,
            ),
        };
        Ok(Self(Arc::new(Inner {
            publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(sdk), retry),
            secrets,
            config,
        })))
    }
}

impl shared::http::Routed for App {
    /// The routes: `GET` (Meta's verification) and `POST` (deliveries) on any path (the
    /// Function URL's root, or whatever path the operator gave Meta); any other method,
    /// `HEAD` included, gets 405 with no `Allow` header (what [`dispatch`] decides, rather than
    /// axum's method routing, which would answer `HEAD` as a `GET`).
    /// Bodies are limited by the handler itself (`MAX_BODY_BYTES`, Meta's 3 MiB by default),
    /// not by axum's default limit.
    fn router(&self) -> Router {
        Router::new()
            .route("/", any(dispatch))
            .route("/{*path}", any(dispatch))
            .layer(DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn(shared::http::correlate_and_echo))
            .with_state(self.clone())
    }
}

impl App {
    /// Meta's subscription handshake.
    async fn verify(&self, query: Option<&str>) -> Response {
        let mode = first_query_value(query, "hub.mode");
        let token = first_query_value(query, "hub.verify_token");
        let challenge = first_query_value(query, "hub.challenge");
        let (mode, token, challenge) = (mode.as_deref(), token.as_deref(), challenge.as_deref());
        let secrets = match self.0.secrets.get().await {
            Ok(s) => s,
            Err(e) => return secrets_failure(&e),
        };
        let token_ok =
            token.is_some_and(|t| verify_token_matches(t, secrets.verify_token.expose_secret()));
        match (mode, token_ok, challenge) {
            (Some("subscribe"), true, Some(challenge)) => {
                info!(outcome = "verified", "webhook subscription verified");
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/plain")],
                    challenge.to_owned(),
                )
                    .into_response()
            }
            (mode, token_ok, challenge) => {
                let reason = if mode != Some("subscribe") {
                    "bad_mode"
                } else if !token_ok {
                    "verify_token_mismatch"
                } else if challenge.is_none() {
                    "challenge_missing"
                } else {
                    "bad_request"
                };
                warn!(outcome = "rejected", reason, "webhook verification refused");
                text(StatusCode::FORBIDDEN, "verification failed")
            }
        }
    }

    async fn deliver(&self, headers: &HeaderMap, body: &[u8], correlation_id: &str) -> Response {
        let started = Instant::now();
        if body.len() > self.0.config.max_body_bytes {
            return rejected(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                body.len(),
                "body too large",
            );
        }
        let secrets = match self.0.secrets.get().await {
            Ok(s) => s,
            Err(e) => return secrets_failure(&e),
        };
        let signature = headers
            .get(SIGNATURE_HEADER)
            .map(|v| v.to_str().unwrap_or(""));
        if let Err(e) = secrets.signature_key.verify(body, signature) {
            return rejected(
                StatusCode::UNAUTHORIZED,
                e.reason(),
                body.len(),
                "invalid signature",
            );
        }
        let parsed = match parse_webhook(body, correlation_id, shared::now_ms()) {
            Ok(p) => p,
            Err(e) => {
                return rejected(
                    StatusCode::BAD_REQUEST,
                    e.reason(),
                    body.len(),
                    &e.to_string(),
                )
            }
        };
        match self.enqueue(parsed).await {
            Ok(counts) => {
                info!(
                    outcome = "accepted",
                    inbound = counts.inbound,
                    statuses = counts.statuses,
                    ignored = counts.ignored,
                    unsupported = counts.unsupported,
                    sqs_calls = counts.sqs_calls,
                    bytes = body.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "webhook accepted"
                );
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    format!(
                        r#"{{"received":{},"statuses":{}}}"#,
                        counts.inbound, counts.statuses
                    ),
                )
                    .into_response()
            }
            Err(e) => {
                // 500 makes Meta retry the delivery; entries already queued are deduplicated
                // by their MessageDeduplicationId (and later by the processor).
                tracing::error!(outcome = "failed", reason = "queue_unavailable", error = %e, "webhook not queued; answering 500 so Meta retries");
                text(StatusCode::INTERNAL_SERVER_ERROR, "temporarily unavailable")
            }
        }
    }

    async fn enqueue(&self, parsed: Parsed) -> Result<Counts, shared::queue::QueueError> {
        let Parsed {
            inbound,
            statuses,
            ignored,
        } = parsed;
        let unsupported = inbound.iter().filter(|e| is_unsupported(e)).count();
        for env in inbound.iter().filter(|e| is_unsupported(e)) {
            if let shared::envelope::Content::Unsupported { original_type, .. } = &env.content {
                info!(channel = %env.channel, original_type = %original_type, "carrying unsupported message type");
            }
        }
        let counts = Counts {
            inbound: inbound.len(),
            statuses: statuses.len(),
            ignored,
            unsupported,
            sqs_calls: 0,
        };
        let scope = self.0.config.ordering_scope;
        let inbound_msgs: Vec<_> = inbound
            .into_iter()
            .map(|e| inbound_message(e, scope))
            .collect();
        let status_msgs: Vec<_> = statuses.iter().map(status_message).collect();
        // The two queues are independent; send to both at once (an empty list costs no call).
        let (a, b) = tokio::join!(
            self.0
                .publisher
                .send_all(&self.0.config.inbound_queue_url, inbound_msgs),
            self.0
                .publisher
                .send_all(&self.0.config.status_queue_url, status_msgs)
        );
        Ok(Counts {
            sqs_calls: a? + b?,
            ..counts
        })
    }
}

struct Counts {
    inbound: usize,
    statuses: usize,
    ignored: usize,
    unsupported: usize,
    sqs_calls: usize,
}

fn is_unsupported(e: &InboundEnvelope) -> bool {
    matches!(e.content, shared::envelope::Content::Unsupported { .. })
}

/// `GET` is the verification (from the query string the URI carries), `POST` a delivery (over
/// its raw bytes: the signature covers exactly those); anything else 405.
async fn dispatch(State(app): State<App>, call: Call) -> Response {
    match call.method {
        Method::GET => app.verify(call.query()).await,
        Method::POST => {
            app.deliver(&call.headers, &call.body, &call.correlation_id)
                .await
        }
        method => {
            warn!(method = %method, outcome = "rejected", reason = "method_not_allowed", "webhook rejected");
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
    }
}

fn rejected(status: StatusCode, reason: &str, bytes: usize, message: &str) -> Response {
    warn!(
        outcome = "rejected",
        status = status.as_u16(),
        reason,
        bytes,
        "webhook rejected"
    );
    text(status, message)
}

fn secrets_failure(e: &shared::secrets::SecretsError) -> Response {
    tracing::error!(outcome = "failed", reason = "secrets_unavailable", error = %e, "app secret unavailable; answering 500");
    text(StatusCode::INTERNAL_SERVER_ERROR, "temporarily unavailable")
}

/// A refusal: the message as the problem's `error` (Meta shows it in the app dashboard's
/// delivery log).
fn text(status: StatusCode, message: &str) -> Response {
    shared::http::Problem::new(status, message.to_owned()).into_response()
}
