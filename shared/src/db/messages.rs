//! Messages (`messages`): inbound rows (one per provider message id), outbound rows, the
//! outcome of each inbound message, and the context the model is given.
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use std::time::SystemTime;

use serde_json::Value as Json;
use uuid::Uuid;

use super::credits::{charge_ctes, Charge, ChargeSql};
use super::{json_rows, Db, DbError, TenantId};

/// What inserting a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    pub id: i64,
    /// The provider message id was already stored: nothing was written.
    pub duplicate: bool,
}

/// Stores an inbound message once per (channel account, provider message id) and moves the
/// conversation's `last_inbound_at` forward. A second insert of the same provider id writes
/// nothing and says `duplicate`.
#[allow(clippy::too_many_arguments)]
pub async fn insert_inbound_message(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    provider_message_id: &str,
    content: &Json,
    raw: Option<&Json>,
    provider_timestamp: SystemTime,
) -> Result<Option<Inserted>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "WITH conv AS (
               SELECT id, channel_account_id FROM conversations WHERE user_id = $1 AND id = $2),
             ins AS (
               INSERT INTO messages (user_id, conversation_id, channel_account_id, direction,
                                     provider_message_id, content, status, raw, provider_timestamp)
               SELECT $1, conv.id, conv.channel_account_id, 'in', $3, $4, 'received', $5, $6 FROM conv
               ON CONFLICT (channel_account_id, provider_message_id) WHERE provider_message_id IS NOT NULL
               DO NOTHING
               RETURNING id),
             touch AS (
               UPDATE conversations SET last_inbound_at = GREATEST(COALESCE(last_inbound_at, $6), $6)
                WHERE id = (SELECT id FROM conv) AND EXISTS (SELECT 1 FROM ins))
             SELECT (SELECT id FROM ins) AS new_id,
                    (SELECT m.id FROM messages m, conv
                      WHERE m.channel_account_id = conv.channel_account_id
                        AND m.provider_message_id = $3 AND m.user_id = $1) AS old_id,
                    EXISTS (SELECT 1 FROM conv) AS found",
            &[&tenant.0, &conversation_id, &provider_message_id, content, &raw, &provider_timestamp],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    if !row.get::<_, bool>("found") {
        return Ok(None);
    }
    let new_id: Option<i64> = row.get("new_id");
    let old_id: Option<i64> = row.get("old_id");
    Ok(match (new_id, old_id) {
        (Some(id), _) => Some(Inserted {
            id,
            duplicate: false,
        }),
        (None, Some(id)) => Some(Inserted {
            id,
            duplicate: true,
        }),
        // The id is held by a row of another tenant's conversation: not visible here.
        (None, None) => None,
    })
}

/// Stores an outbound message (status `sent` when the provider accepted it, else `pending`).
#[allow(clippy::too_many_arguments)]
pub async fn insert_outbound_message(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    provider_message_id: Option<&str>,
    content: &Json,
    input_tokens: Option<i32>,
    output_tokens: Option<i32>,
    cost: Option<i64>,
) -> Result<Option<i64>, DbError> {
    let c = db.client().await?;
    let status = if provider_message_id.is_some() {
        "sent"
    } else {
        "pending"
    };
    let row = c
        .query_opt(
            "INSERT INTO messages (user_id, conversation_id, channel_account_id, direction,
                                   provider_message_id, content, status, input_tokens, output_tokens, cost)
             SELECT $1, id, channel_account_id, 'out', $3, $4, $5, $6, $7, $8
               FROM conversations WHERE user_id = $1 AND id = $2
             RETURNING id",
            &[&tenant.0, &conversation_id, &provider_message_id, content, &status, &input_tokens, &output_tokens, &cost],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Status and error code of a message (tests, admin).
/// (Tests only: feature `testing`.)
#[cfg(any(test, feature = "testing"))]
pub async fn message_status(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    provider_message_id: &str,
) -> Result<Option<(String, Option<i32>)>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT status, error_code FROM messages
              WHERE user_id = $1 AND channel_account_id = $2 AND provider_message_id = $3",
            &[&tenant.0, &channel_account_id, &provider_message_id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The last `limit` messages of a conversation, oldest first: (direction, content).
pub async fn recent_messages(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    limit: i64,
) -> Result<Vec<(String, Json)>, DbError> {
    let c = db.client().await?;
    let rows = c
        .query(
            "SELECT direction, content FROM (
               SELECT id, direction, content FROM messages
                WHERE user_id = $1 AND conversation_id = $2 ORDER BY id DESC LIMIT $3) m
             ORDER BY id",
            &[&tenant.0, &conversation_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Records what the processor did with these inbound messages (see V3 migration). Returns how
/// many rows were marked.
pub async fn set_outcome(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    provider_message_ids: &[&str],
    outcome: &str,
) -> Result<u64, DbError> {
    let c = db.client().await?;
    Ok(c.execute(
        "UPDATE messages SET outcome = $4
          WHERE user_id = $1 AND conversation_id = $2 AND direction = 'in'
            AND provider_message_id = ANY($3)",
        &[&tenant.0, &conversation_id, &provider_message_ids, &outcome],
    )
    .await?)
}

/// The `fallback` marker of the conversation's latest delivered (not failed) outbound message,
/// if it was a fallback text: a fallback is sent once, not to every message while the cause
/// lasts.
pub async fn last_outbound_fallback(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
) -> Result<Option<String>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT content->>'fallback' FROM messages
              WHERE user_id = $1 AND conversation_id = $2 AND direction = 'out' AND status <> 'failed'
              ORDER BY id DESC LIMIT 1",
            &[&tenant.0, &conversation_id],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Everything one AI reply changes, in one statement (so one transaction): the outbound
/// message rows (one per sent part, in order), the conversation's `previous_response_id`, and the
/// charge with its ledger row (taking at most the balance). Returns the charge, or `None` when
/// the conversation is not the tenant's (nothing is written then).
#[allow(clippy::too_many_arguments)]
pub async fn record_reply(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    parts: &[(Option<String>, Json)],
    response_id: Option<&str>,
    input_tokens: i32,
    output_tokens: i32,
    cost: i64,
) -> Result<Option<Charge>, DbError> {
    let ids: Vec<Option<String>> = parts.iter().map(|(id, _)| id.clone()).collect();
    let contents: Vec<Json> = parts.iter().map(|(_, c)| c.clone()).collect();
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH conv AS (
               UPDATE conversations SET previous_response_id = COALESCE($3, previous_response_id)
                WHERE user_id = $1 AND id = $2 RETURNING id, channel_account_id),
             parts AS (
               SELECT p.id, p.content, p.ord FROM unnest($4::text[], $5::jsonb[]) WITH ORDINALITY AS p(id, content, ord)),
             msgs AS (
               INSERT INTO messages (user_id, conversation_id, channel_account_id, direction,
                                     provider_message_id, content, status, input_tokens, output_tokens, cost)
               SELECT $1, conv.id, conv.channel_account_id, 'out', parts.id, parts.content,
                      CASE WHEN parts.id IS NULL THEN 'failed' ELSE 'sent' END,
                      CASE WHEN parts.ord = 1 THEN $6::int END, CASE WHEN parts.ord = 1 THEN $7::int END,
                      CASE WHEN parts.ord = 1 THEN $8::bigint END
                 FROM conv, parts ORDER BY parts.ord
               RETURNING id),
             {}
             SELECT (SELECT balance FROM acc), (SELECT take FROM acc), (SELECT count(*) FROM msgs),
                    EXISTS (SELECT 1 FROM conv)",
            charge_ctes(&ChargeSql {
                amount: "$8",
                when: "EXISTS (SELECT 1 FROM conv)",
                release_held: None,
                reason: "'reply'",
                reference: "$3",
            })
        )
    });
    let c = db.client().await?;
    let row = c
        .query_opt(
            SQL.as_str(),
            &[
                &tenant.0,
                &conversation_id,
                &response_id,
                &ids,
                &contents,
                &input_tokens,
                &output_tokens,
                &cost,
            ],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    if !row.get::<_, bool>(3) {
        return Ok(None);
    }
    Ok(Some(Charge {
        requested: cost,
        balance_after: row.get::<_, Option<i64>>(0).unwrap_or(0),
        charged: row.get::<_, Option<i64>>(1).unwrap_or(0),
    }))
}

/// A conversation's messages as the admin API shows them, oldest first, after message id
/// `after` (text; the keyset of the previous page), at most `limit`.
pub async fn page_json(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Json>, DbError> {
    json_rows(
        db,
        "SELECT to_jsonb(x) FROM (
           SELECT id, direction, content, status, error_code, outcome, provider_message_id,
                  input_tokens, output_tokens, cost, created_at, updated_at,
                  jsonb_build_array(id) AS _k
             FROM messages
            WHERE user_id = $1 AND conversation_id = $2 AND ($3::text IS NULL OR id > $3::bigint)
            ORDER BY id LIMIT $4) x",
        &[&tenant.0, &conversation_id, &after, &limit],
    )
    .await
}
