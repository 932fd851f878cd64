//! Dedup layer 2: one DynamoDB record per inbound message, keyed like the SQS dedup id
//! (`shared::ordering::dedup_id`), so a redelivered record never calls the model or sends twice.
//!
//! States: absent → `IN_PROGRESS` (expires with the invocation's remaining time, so a crashed
//! invocation does not block the message for long) → `COMPLETED` (expires after 8 days, longer
//! than Meta's 7 days of retries). An expired record counts as absent whatever DynamoDB's lazy TTL
//! deletion has done.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

/// How long a completed record is kept: longer than Meta retries a webhook (7 days).
pub const COMPLETED_TTL: Duration = Duration::from_secs(8 * 24 * 3600);

const IN_PROGRESS: &str = "IN_PROGRESS";
const COMPLETED: &str = "COMPLETED";

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This invocation owns the message now.
    Acquired,
    /// Another invocation is working on it (retry later; do not process).
    InProgress,
    /// Already done: acknowledge without doing anything.
    Completed,
}

#[derive(Debug, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct IdempotencyError(String);

#[derive(Clone)]
pub struct IdempotencyStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn epoch_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn err<E: std::fmt::Display>(e: E) -> IdempotencyError {
    IdempotencyError(e.to_string())
}

impl IdempotencyStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Claims `key` for `hold` (the invocation's remaining time).
    pub async fn claim(&self, key: &str, hold: Duration) -> Result<Claim, IdempotencyError> {
        let now = SystemTime::now();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(key.to_owned()))
            .item("status", AttributeValue::S(IN_PROGRESS.to_owned()))
            .item(
                "expires_at",
                AttributeValue::N(epoch_secs(now + hold).to_string()),
            )
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", AttributeValue::N(epoch_secs(now).to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Claim::Acquired),
            Err(e) => {
                let Some(service) = e.as_service_error() else {
                    return Err(err(aws_sdk_dynamodb::error::DisplayErrorContext(e)));
                };
                if !service.is_conditional_check_failed_exception() {
                    return Err(err(aws_sdk_dynamodb::error::DisplayErrorContext(e)));
                }
                let old: Option<&HashMap<String, AttributeValue>> = match service {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item(),
                    _ => None,
                };
                let status = old
                    .and_then(|i| i.get("status"))
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str);
                Ok(if status == Some(COMPLETED) {
                    Claim::Completed
                } else {
                    Claim::InProgress
                })
            }
        }
    }

    /// Marks `key` done for [`COMPLETED_TTL`].
    pub async fn complete(&self, key: &str) -> Result<(), IdempotencyError> {
        let expires = epoch_secs(SystemTime::now() + COMPLETED_TTL);
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(key.to_owned()))
            .item("status", AttributeValue::S(COMPLETED.to_owned()))
            .item("expires_at", AttributeValue::N(expires.to_string()))
            .send()
            .await
            .map_err(|e| err(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    /// Gives up a claim after a retryable failure, so the redelivery can claim it at once.
    /// Only an `IN_PROGRESS` record is removed; a completed one stays.
    pub async fn release(&self, key: &str) -> Result<(), IdempotencyError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.to_owned()))
            .condition_expression("#s = :p")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":p", AttributeValue::S(IN_PROGRESS.to_owned()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(err(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }
}
