//! Delivery of lead events to the tenant's outbound webhook (the first step of CRM export).
//!
//! Events are written to `webhook_deliveries` in the same statement as the lead change, then
//! posted here: JSON body (the event plus its delivery `id`, identical on every attempt),
//! `X-Agent-Event`, `X-Agent-Delivery` and `X-Signature-256: sha256=<hex HMAC-SHA256 of the body
//! with the tenant's webhook secret>` (the scheme Meta uses, so receivers know it). 2xx →
//! delivered; 408, 429, 5xx or no answer → retried (the job goes back to SQS); any other status →
//! failed for good; after `MAX_ATTEMPTS` → failed.

use std::time::Duration;

use shared::db::outbox::Delivery;
use shared::signature::SignatureKey;

/// Attempts before an event is given up.
pub const MAX_ATTEMPTS: i32 = 10;

pub struct WebhookSender {
    http: reqwest::Client,
}

/// Why an attempt did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotDelivered {
    pub retryable: bool,
    pub reason: String,
}

impl WebhookSender {
    #[allow(
        clippy::expect_used,
        reason = "built once at start-up; fails only when the TLS backend cannot start"
    )]
    pub fn new(timeout: Duration) -> Self {
        Self {
            http: shared::netguard::http_client()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(3))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client"),
        }
    }

    pub async fn send(&self, d: &Delivery) -> Result<(), NotDelivered> {
        let mut event = d.payload.clone();
        event["id"] = serde_json::json!(d.id);
        let body = event.to_string();
        let mut req = self
            .http
            .post(&d.url)
            .header("content-type", "application/json")
            .header("x-agent-event", event["type"].as_str().unwrap_or("event"))
            .header("x-agent-delivery", d.id.to_string());
        if let Some(secret) = d.secret.as_deref().filter(|s| !s.is_empty()) {
            req = req.header(
                "x-signature-256",
                SignatureKey::new(secret.as_bytes()).sign(body.as_bytes()),
            );
        }
        match req.body(body).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let code = r.status().as_u16();
                Err(NotDelivered {
                    retryable: code == 408 || code == 429 || code >= 500,
                    reason: format!("HTTP {code}"),
                })
            }
            Err(e) => Err(NotDelivered {
                retryable: true,
                reason: if e.is_timeout() {
                    "timeout".into()
                } else {
                    "connection failed".into()
                },
            }),
        }
    }
}
