//! The webhook function: Meta's GET verification and signed POST deliveries.
//!
//! `POST`: size check → signature over the raw bytes → parse → SendMessageBatch (inbound FIFO and
//! status queue) → 200. It never touches Postgres or OpenAI. Every rejection enqueues nothing and
//! writes one log line with the reason; no body, secret or message text is ever logged.

pub mod config;

use std::sync::Arc;
use std::time::Instant;

use lambda_http::http::{header, Method, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use secrecy::ExposeSecret;
use shared::envelope::InboundEnvelope;
use shared::meta::{parse_webhook, Parsed};
use shared::queue::{QueuePublisher, RetryPolicy};
use shared::secrets::{MetaSecretSource, MetaSecrets};
use shared::signature::{verify_token_matches, SIGNATURE_HEADER};
use shared::wire::{inbound_message, status_message};
use tracing::{info, warn, Instrument};

pub use config::{Config, SecretsConfig};

/// Header carrying a caller-supplied correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

pub struct App {
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
        Ok(Self {
            publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(sdk), retry),
            secrets,
            config,
        })
    }

    /// Handles one HTTP request. Never fails: every outcome is a response.
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let correlation_id = shared::telemetry::correlation_id(
            req.headers()
                .get(CORRELATION_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let span = tracing::info_span!("webhook", correlation_id = %correlation_id);
        let mut resp = async {
            match *req.method() {
                Method::GET => self.verify(&req).await,
                Method::POST => self.deliver(&req, &correlation_id).await,
                _ => {
                    warn!(method = %req.method(), outcome = "rejected", reason = "method_not_allowed", "webhook rejected");
                    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                }
            }
        }
        .instrument(span)
        .await;
        if let Ok(v) = correlation_id.parse() {
            resp.headers_mut().insert(CORRELATION_HEADER, v);
        }
        resp
    }

    /// Meta's subscription handshake.
    async fn verify(&self, req: &Request) -> Response<Body> {
        let params = req.query_string_parameters();
        let mode = params.first("hub.mode");
        let token = params.first("hub.verify_token");
        let challenge = params.first("hub.challenge");
        let secrets = match self.secrets.get().await {
            Ok(s) => s,
            Err(e) => return secrets_failure(&e),
        };
        let token_ok =
            token.is_some_and(|t| verify_token_matches(t, secrets.verify_token.expose_secret()));
        match (mode, token_ok, challenge) {
            (Some("subscribe"), true, Some(challenge)) => {
                info!(outcome = "verified", "webhook subscription verified");
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Body::Text(challenge.to_owned()))
                    .expect("valid response")
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

    async fn deliver(&self, req: &Request, correlation_id: &str) -> Response<Body> {
        let started = Instant::now();
        let body: &[u8] = req.body().as_ref();
        if body.len() > self.config.max_body_bytes {
            return rejected(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                body.len(),
                "body too large",
            );
        }
        let secrets = match self.secrets.get().await {
            Ok(s) => s,
            Err(e) => return secrets_failure(&e),
        };
        let signature = req
            .headers()
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
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::Text(format!(
                        r#"{{"received":{},"statuses":{}}}"#,
                        counts.inbound, counts.statuses
                    )))
                    .expect("valid response")
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
        let scope = self.config.ordering_scope;
        let inbound_msgs: Vec<_> = inbound
            .into_iter()
            .map(|e| inbound_message(e, scope))
            .collect();
        let status_msgs: Vec<_> = statuses.iter().map(status_message).collect();
        // The two queues are independent; send to both at once (an empty list costs no call).
        let (a, b) = tokio::join!(
            self.publisher
                .send_all(&self.config.inbound_queue_url, inbound_msgs),
            self.publisher
                .send_all(&self.config.status_queue_url, status_msgs)
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

fn rejected(status: StatusCode, reason: &str, bytes: usize, message: &str) -> Response<Body> {
    warn!(
        outcome = "rejected",
        status = status.as_u16(),
        reason,
        bytes,
        "webhook rejected"
    );
    text(status, message)
}

fn secrets_failure(e: &shared::secrets::SecretsError) -> Response<Body> {
    tracing::error!(outcome = "failed", reason = "secrets_unavailable", error = %e, "app secret unavailable; answering 500");
    text(StatusCode::INTERNAL_SERVER_ERROR, "temporarily unavailable")
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Text(
            serde_json::json!({ "error": message }).to_string(),
        ))
        .expect("valid response")
}
