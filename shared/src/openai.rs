//! OpenAI Responses API client (`POST {base}/responses`) on reqwest. Works with any
//! OpenAI-compatible server through the base URL.
//!
//! - Retries (jittered exponential backoff, or the server's `retry-after-ms` / `retry-after`,
//!   capped) on connection errors, timeouts, 408, 409, 429 rate limits and 5xx.
//! - Permanent, never retried: 429 `insufficient_quota` (billing), 400, 401, 403, 422.
//! - `previous_response_id` unknown or expired (404, or a 400 naming that parameter) is its own
//!   error so the caller can fall back to sending the stored history.
//! - A circuit breaker per client (one client per upstream) makes a dead upstream fail fast.
//! - The API key and message text are never logged.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::breaker::CircuitBreaker;

/// One input message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputMessage {
    pub role: String,
    pub content: String,
}

impl InputMessage {
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: text.into(),
        }
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: text.into(),
        }
    }
}

/// The request body (only the fields the product uses).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResponseRequest {
    pub model: String,
    /// Resent every turn: `previous_response_id` does not carry instructions over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    pub input: Vec<InputMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    pub store: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<Json>,
    /// Hashed end-user id (≤ 64 chars), never the raw phone number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
    /// The agent's endpoint (`agents.base_url`) in place of the client's, if the client's
    /// `allowed_base_urls` lists it; not part of the body.
    #[serde(skip)]
    pub base_url: Option<String>,
}

/// What came back.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReply {
    pub id: String,
    pub status: String,
    /// All `output_text` parts joined (what the SDKs call `output_text`).
    pub text: String,
    pub refusal: Option<String>,
    pub incomplete_reason: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("model call timed out")]
    Timeout,
    #[error("model upstream unavailable (HTTP {status})")]
    Unavailable { status: u16 },
    #[error("model upstream unreachable: {0}")]
    Connection(String),
    #[error("model rate limited")]
    RateLimited,
    #[error("model circuit breaker open; not calling")]
    CircuitOpen,
    #[error("OpenAI quota exhausted (insufficient_quota)")]
    QuotaExhausted,
    #[error("previous_response_id not found or expired")]
    PreviousResponseNotFound,
    #[error("model request rejected (HTTP {status}, {code})")]
    Rejected { status: u16, code: String },
    #[error("model response could not be read: {0}")]
    Decode(String),
}

impl ModelError {
    /// The one place that decides: retry later (the SQS record) or record and move on.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ModelError::Timeout
                | ModelError::Unavailable { .. }
                | ModelError::Connection(_)
                | ModelError::RateLimited
                | ModelError::CircuitOpen
        )
    }
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub base_url: String,
    pub api_key: SecretString,
    /// Per attempt.
    pub timeout: Duration,
    pub max_retries: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub breaker_threshold: u32,
    pub breaker_cool_down: Duration,
    /// Endpoints a request's `base_url` (an agent's override) may name; the API key is sent
    /// there, so any other is ignored (with a warning) and `base_url` above is used.
    pub allowed_base_urls: Vec<String>,
}

impl ClientSettings {
    pub fn new(base_url: impl Into<String>, api_key: SecretString) -> Self {
        Self {
            base_url: base_url.into(),
            api_key,
            timeout: Duration::from_secs(30),
            max_retries: 2,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(30),
            allowed_base_urls: Vec::new(),
        }
    }
}

/// The model endpoint as a function's environment names it (processor, extraction):
/// `OPENAI_BASE_URL` (default OpenAI's), `MODEL_BASE_URL_ALLOWLIST`, `MODEL_TIMEOUT_SECS`
/// (per attempt, default 30), and the key: `OPENAI_API_KEY`, else the `openai_api_key` field
/// of the secret `APP_SECRET_ID`.
#[derive(Debug)]
pub struct ModelEndpoint {
    pub base_url: String,
    /// Endpoints an agent's `base_url` may name; others are ignored.
    pub allowed_base_urls: Vec<String>,
    pub timeout: Duration,
    pub api_key: Option<SecretString>,
    pub app_secret_id: Option<String>,
}

impl ModelEndpoint {
    pub fn read(env: &mut crate::config::EnvReader<'_>) -> Self {
        let app_secret_id = env.optional("APP_SECRET_ID");
        let api_key = env.optional("OPENAI_API_KEY").map(SecretString::from);
        if api_key.is_none() && app_secret_id.is_none() {
            env.problem("set OPENAI_API_KEY or APP_SECRET_ID (a secret with `openai_api_key`)");
        }
        Self {
            base_url: env.base_url("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            allowed_base_urls: env.url_list("MODEL_BASE_URL_ALLOWLIST"),
            timeout: Duration::from_secs(env.number("MODEL_TIMEOUT_SECS", 30, 1, 300)),
            api_key,
            app_secret_id,
        }
    }

    /// The API key: `OPENAI_API_KEY`, else read from the app secret.
    pub async fn key(
        &self,
        secrets: &crate::secrets::SecretCache,
    ) -> Result<SecretString, crate::secrets::SecretsError> {
        use crate::secrets::{app_value, SecretsError, KEY_OPENAI_API_KEY};
        app_value(
            self.api_key.as_ref(),
            self.app_secret_id.as_deref(),
            KEY_OPENAI_API_KEY,
            secrets,
        )
        .await?
        .ok_or(SecretsError::NotSet(KEY_OPENAI_API_KEY))
    }

    /// The client, with its [`ModelEndpoint::key`].
    pub async fn client(
        &self,
        secrets: &crate::secrets::SecretCache,
    ) -> Result<ResponsesClient, crate::secrets::SecretsError> {
        let key = self.key(secrets).await?;
        let mut settings = ClientSettings::new(self.base_url.clone(), key);
        settings.allowed_base_urls = self.allowed_base_urls.clone();
        settings.timeout = self.timeout;
        Ok(ResponsesClient::new(settings))
    }
}

pub struct ResponsesClient {
    http: reqwest::Client,
    settings: ClientSettings,
    breaker: CircuitBreaker,
}

#[derive(Deserialize)]
struct ApiError {
    error: ApiErrorBody,
}

#[derive(Deserialize, Default)]
struct ApiErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    param: Option<String>,
}

#[derive(Deserialize)]
struct RawResponse {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    output: Vec<OutputItem>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    incomplete_details: Option<Incomplete>,
}

#[derive(Deserialize)]
struct OutputItem {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    content: Vec<ContentPart>,
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
struct Incomplete {
    #[serde(default)]
    reason: Option<String>,
}

enum Attempt {
    Done(ModelReply),
    /// Retryable, with the server's requested delay if it gave one.
    Again(ModelError, Option<Duration>),
    Fail(ModelError),
}

impl ResponsesClient {
    #[allow(
        clippy::expect_used,
        reason = "built once at start-up; fails only when the TLS backend cannot start"
    )]
    pub fn new(settings: ClientSettings) -> Self {
        let http = crate::netguard::http_client()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        let breaker = CircuitBreaker::new(settings.breaker_threshold, settings.breaker_cool_down);
        Self {
            http,
            settings,
            breaker,
        }
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Creates a response, retrying what is worth retrying.
    pub async fn create(&self, req: &ResponseRequest) -> Result<ModelReply, ModelError> {
        let mut attempt = 0;
        loop {
            let Some(permit) = self.breaker.allow() else {
                return Err(ModelError::CircuitOpen);
            };
            let outcome = self.attempt(req).await;
            let upstream_ok = !matches!(outcome, Attempt::Again(..));
            self.breaker.record(permit, upstream_ok);
            match outcome {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Fail(e) => return Err(e),
                Attempt::Again(e, server_delay) => {
                    if attempt >= self.settings.max_retries {
                        return Err(e);
                    }
                    let delay = server_delay
                        .unwrap_or_else(|| self.backoff(attempt))
                        .min(Duration::from_secs(60));
                    tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %e, "model call failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .settings
            .min_backoff
            .saturating_mul(1 << attempt.min(10));
        let capped = base.min(self.settings.max_backoff);
        // Full jitter between half and all of the delay.
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
        capped.mul_f64(0.5 + jitter / 2.0)
    }

    async fn attempt(&self, req: &ResponseRequest) -> Attempt {
        let base = match req.base_url.as_deref().map(|u| u.trim_end_matches('/')) {
            Some(u) if self.settings.allowed_base_urls.iter().any(|a| a == u) => u,
            Some(_) => {
                tracing::warn!(
                    "the agent's base_url is not in MODEL_BASE_URL_ALLOWLIST; using the default endpoint"
                );
                &self.settings.base_url
            }
            None => &self.settings.base_url,
        };
        let url = format!("{}/responses", base.trim_end_matches('/'));
        let sent = self
            .http
            .post(url)
            .bearer_auth(self.settings.api_key.expose_secret())
            .json(req)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Attempt::Again(ModelError::Timeout, None),
            Err(e) => {
                return Attempt::Again(ModelError::Connection(without_url(&e)), None);
            }
        };
        let status = resp.status().as_u16();
        let delay = retry_after(resp.headers());
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Attempt::Again(ModelError::Timeout, None),
            Err(e) => return Attempt::Again(ModelError::Connection(without_url(&e)), None),
        };
        if (200..300).contains(&status) {
            return match serde_json::from_slice::<RawResponse>(&body) {
                Ok(r) => Attempt::Done(reply_of(r)),
                Err(e) => Attempt::Fail(ModelError::Decode(e.to_string())),
            };
        }
        let err = serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or_default();
        let code = err.code.or(err.kind).unwrap_or_default();
        match status {
            429 if code == "insufficient_quota" => Attempt::Fail(ModelError::QuotaExhausted),
            429 => Attempt::Again(ModelError::RateLimited, delay),
            404 | 400
                if req.previous_response_id.is_some()
                    && (status == 404
                        || err.param.as_deref() == Some("previous_response_id")
                        || code == "previous_response_not_found") =>
            {
                Attempt::Fail(ModelError::PreviousResponseNotFound)
            }
            408 | 409 => Attempt::Again(ModelError::Unavailable { status }, delay),
            s if s >= 500 => Attempt::Again(ModelError::Unavailable { status }, delay),
            _ => Attempt::Fail(ModelError::Rejected {
                status,
                code: if code.is_empty() {
                    "unknown".into()
                } else {
                    code
                },
            }),
        }
    }
}

/// reqwest errors print the URL; keep logs to the kind of failure.
fn without_url(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection failed".into()
    } else if e.is_request() {
        "request failed".into()
    } else {
        "transport error".into()
    }
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

fn reply_of(r: RawResponse) -> ModelReply {
    let mut text = String::new();
    let mut refusal = None;
    for item in r.output.iter().filter(|i| i.kind == "message") {
        for part in &item.content {
            match part.kind.as_str() {
                "output_text" => text.push_str(part.text.as_deref().unwrap_or("")),
                "refusal" => refusal = part.refusal.clone(),
                _ => {}
            }
        }
    }
    let usage = r.usage.unwrap_or(Usage {
        input_tokens: 0,
        output_tokens: 0,
    });
    ModelReply {
        id: r.id,
        status: r.status.unwrap_or_else(|| "completed".into()),
        text,
        refusal,
        incomplete_reason: r.incomplete_details.and_then(|d| d.reason),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
    }
}
