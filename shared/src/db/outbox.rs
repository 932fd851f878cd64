//! The tenant's webhook outbox (`webhook_deliveries`): events (a lead changed, a conversation
//! changed hands) are stored in the same statement as the change they announce, through
//! [`event_insert`], and delivered by the extraction function (`tenant_webhook`), which reads
//! them here and records each attempt.

use serde_json::Value as Json;
use uuid::Uuid;

use super::{Db, DbError, TenantId};

/// The body of a CTE that stores event `event_type` of the tenant `$1` for delivery, inside
/// the statement that makes the change: one row per row of `from` (SQL, joined with the
/// tenant), with the conversation and payload given as SQL expressions over it. Nothing is
/// stored when the tenant has no webhook.
pub(crate) fn event_insert(
    event_type: &str,
    conversation: &str,
    payload: &str,
    from: &str,
) -> String {
    format!(
        "INSERT INTO webhook_deliveries (user_id, conversation_id, event_type, payload)
               SELECT $1, {conversation}, '{event_type}', {payload}
                 FROM {from}, tenants t WHERE t.id = $1 AND t.webhook_url IS NOT NULL
               RETURNING id"
    )
}

/// A queued webhook event with where it goes.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub url: String,
    pub secret: Option<String>,
    pub payload: Json,
    pub attempts: i32,
}

/// The conversation's pending webhook events, oldest first (the tenant's current URL).
pub async fn pending_deliveries(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
) -> Result<Vec<Delivery>, DbError> {
    let c = db.client().await?;
    let rows = c
        .query(
            "SELECT d.id, t.webhook_url, t.webhook_secret, d.payload, d.attempts
               FROM webhook_deliveries d JOIN tenants t ON t.id = d.user_id
              WHERE d.user_id = $1 AND d.conversation_id = $2 AND d.status = 'pending'
                AND t.webhook_url IS NOT NULL
              ORDER BY d.id LIMIT 20",
            &[&tenant.0, &conversation_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            id: r.get(0),
            url: r.get(1),
            secret: r.get(2),
            payload: r.get(3),
            attempts: r.get(4),
        })
        .collect())
}

/// Records a delivery attempt: `delivered`, still `pending` (will be retried) or `failed`.
pub async fn mark_delivery(
    db: &Db,
    tenant: TenantId,
    id: i64,
    status: &str,
    error: Option<&str>,
) -> Result<(), DbError> {
    let c = db.client().await?;
    c.execute(
        "UPDATE webhook_deliveries
            SET status = $3, attempts = attempts + 1, last_error = $4,
                delivered_at = CASE WHEN $3 = 'delivered' THEN now() END
          WHERE user_id = $1 AND id = $2",
        &[&tenant.0, &id, &status, &error],
    )
    .await?;
    Ok(())
}
