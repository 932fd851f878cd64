//! Fixed-window rate limits on DynamoDB (web chat visitors and sites, admin API keys): one counter item per key and minute (in the
//! idempotency table, `pk` = `rl#…`, expiring with the table's TTL), incremented with a
//! conditional update so concurrent containers share the count.

use aws_sdk_dynamodb::types::AttributeValue;

/// Window length in seconds.
pub const WINDOW_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit: try again after this many seconds.
    Limited {
        retry_after: u64,
    },
}

pub struct RateLimiter {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl RateLimiter {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Counts one hit on `key` against `limit` per window: `Err(retry_after seconds)` when over
    /// it. A counter that cannot be reached lets the request through, with a warning: the limits
    /// protect against abuse and must not take the service down with DynamoDB.
    pub async fn check(&self, key: &str, limit: u32) -> Result<(), u64> {
        match self.hit(key, limit).await {
            Ok(Verdict::Allowed) => Ok(()),
            Ok(Verdict::Limited { retry_after }) => Err(retry_after),
            Err(e) => {
                tracing::warn!(error = %e, "rate limit counter unavailable; request let through");
                Ok(())
            }
        }
    }

    /// Counts one hit on `key` against `limit` per window; `Err` when the counter cannot be
    /// reached ([`check`](Self::check) applies the let-through policy).
    pub async fn hit(&self, key: &str, limit: u32) -> Result<Verdict, String> {
        let now = (crate::now_ms() / 1000).max(0) as u64;
        let window = now / WINDOW_SECS;
        let window_end = (window + 1) * WINDOW_SECS;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("rl#{key}#{window}")))
            .update_expression("SET expires_at = :exp ADD hits :one")
            .condition_expression("attribute_not_exists(hits) OR hits < :limit")
            .expression_attribute_values(":exp", AttributeValue::N((window_end + 60).to_string()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":limit", AttributeValue::N(limit.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Verdict::Allowed),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(Verdict::Limited {
                    retry_after: window_end.saturating_sub(now).max(1),
                })
            }
            Err(e) => Err(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()),
        }
    }
}
