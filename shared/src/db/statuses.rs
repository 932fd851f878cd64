//! Delivery statuses (`messages.status`, `pending_statuses`): forward only, and parked until
//! their message is recorded.
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use uuid::Uuid;

use super::{Db, DbError, TenantId};
use crate::envelope::DeliveryState;

/// What applying a delivery status did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusApplied {
    /// The message moved to the new status (for Instagram `read`: at least one message did).
    Updated,
    /// The message is at this status or past it already (a late or repeated status).
    Stale,
    /// No such message yet: kept in `pending_statuses` until it is recorded.
    Pending,
    /// The channel account is not the tenant's: nothing was written.
    NoAccount,
}

/// Applies a delivery status to our outbound message, forward only: sent → delivered → read;
/// failed is terminal and a late, lower status never overwrites a higher one. `up_to` (Instagram `read`) applies it to every outbound message
/// of the conversation up to and including that one. A `failed` with 131047 marks the
/// conversation's 24-hour window closed. A status for a message not recorded yet is parked.
pub async fn apply_status(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    provider_message_id: &str,
    status: DeliveryState,
    error_code: Option<i32>,
    up_to: bool,
) -> Result<StatusApplied, DbError> {
    apply_status_tagged(
        db,
        tenant,
        channel_account_id,
        provider_message_id,
        status,
        error_code,
        up_to,
        None,
    )
    .await
}

/// [`apply_status`] with the send tag the status echoed (`biz_opaque_callback_data`): kept
/// with a parked status, so the turn engine can resolve a send whose answer it never got.
#[allow(clippy::too_many_arguments)]
pub async fn apply_status_tagged(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    provider_message_id: &str,
    status: DeliveryState,
    error_code: Option<i32>,
    up_to: bool,
    callback_tag: Option<&str>,
) -> Result<StatusApplied, DbError> {
    if status == DeliveryState::Unknown {
        return Ok(StatusApplied::Stale);
    }
    let c = db.client().await?;
    let row = c
        .query_one(
            "WITH target AS (
               SELECT id, conversation_id FROM messages
                WHERE user_id = $1 AND channel_account_id = $2 AND provider_message_id = $3
                  AND direction = 'out'),
             upd AS (
               UPDATE messages m SET status = $4, error_code = COALESCE($5, m.error_code)
                 FROM target t
                WHERE m.user_id = $1 AND m.conversation_id = t.conversation_id AND m.direction = 'out'
                  AND (m.id = t.id OR ($6 AND m.id < t.id AND m.provider_message_id IS NOT NULL))
                  AND message_status_rank(m.status) < message_status_rank($4)
               RETURNING m.id),
             win AS (
               UPDATE conversations c SET window_closed_at = now()
                 FROM target t
                WHERE c.user_id = $1 AND c.id = t.conversation_id AND $4 = 'failed' AND $5 = 131047
                  AND EXISTS (SELECT 1 FROM upd)),
             park AS (
               INSERT INTO pending_statuses (user_id, channel_account_id, provider_message_id, status, error_code, callback_tag)
               SELECT $1, ca.id, $3, $4, $5, $7 FROM channel_accounts ca
                WHERE ca.user_id = $1 AND ca.id = $2 AND NOT EXISTS (SELECT 1 FROM target)
               ON CONFLICT (channel_account_id, provider_message_id, status) DO NOTHING)
             SELECT EXISTS (SELECT 1 FROM target), (SELECT count(*) FROM upd),
                    EXISTS (SELECT 1 FROM channel_accounts WHERE user_id = $1 AND id = $2)",
            &[
                &tenant.0,
                &channel_account_id,
                &provider_message_id,
                &status.as_str(),
                &error_code,
                &up_to,
                &callback_tag,
            ],
        )
        .await?;
    let found: bool = row.get(0);
    let updated: i64 = row.get(1);
    let account_is_ours: bool = row.get(2);
    Ok(match (found, updated) {
        (false, _) if !account_is_ours => StatusApplied::NoAccount,
        (false, _) => StatusApplied::Pending,
        (true, 0) => StatusApplied::Stale,
        (true, _) => StatusApplied::Updated,
    })
}

/// Applies and removes the parked statuses of messages just recorded. Returns how many were
/// applied.
pub async fn apply_pending_statuses(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    provider_message_ids: &[&str],
) -> Result<u64, DbError> {
    if provider_message_ids.is_empty() {
        return Ok(0);
    }
    let c = db.client().await?;
    let rows = c
        .query(
            "DELETE FROM pending_statuses
              WHERE user_id = $1 AND channel_account_id = $2 AND provider_message_id = ANY($3)
              RETURNING provider_message_id, status, error_code",
            &[&tenant.0, &channel_account_id, &provider_message_ids],
        )
        .await?;
    drop(c);
    let mut applied = 0;
    for r in rows {
        let id: String = r.get(0);
        let status = DeliveryState::parse(r.get::<_, &str>(1));
        if apply_status(db, tenant, channel_account_id, &id, status, r.get(2), false).await?
            == StatusApplied::Updated
        {
            applied += 1;
        }
    }
    Ok(applied)
}

/// Drops parked statuses older than `days` (their message never appeared). Returns how many.
pub async fn expire_pending_statuses(db: &Db, days: i32) -> Result<u64, DbError> {
    let c = db.client().await?;
    Ok(c.execute(
        "DELETE FROM pending_statuses WHERE received_at < now() - make_interval(days => $1)",
        &[&days],
    )
    .await?)
}
