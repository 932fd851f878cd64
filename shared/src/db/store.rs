//! The queries. Each takes the tenant and filters on `user_id`, so a call with another tenant's
//! ids finds nothing and changes nothing.

use std::time::SystemTime;

use serde_json::Value as Json;
use uuid::Uuid;

use super::{Db, DbError, TenantId};
use crate::envelope::{Channel, DeliveryState};

/// A channel account as the processor needs it to route a message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelAccountRoute {
    pub tenant: TenantId,
    pub channel_account_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub access_token_secret: Option<String>,
    pub is_active: bool,
    pub tenant_active: bool,
}

/// Conversation state the processor reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: Uuid,
    pub contact_id: Uuid,
    pub mode: String,
    pub previous_response_id: Option<String>,
    pub last_inbound_at: Option<SystemTime>,
    pub extracted_through: i64,
}

/// What inserting a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    pub id: i64,
    /// The provider message id was already stored: nothing was written.
    pub duplicate: bool,
}

/// The outcome of a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub requested: i64,
    /// What could be taken: `requested`, or the whole balance if it was smaller.
    pub charged: i64,
    pub balance_after: i64,
}

fn as_channel(s: &str) -> &'static str {
    match s {
        "whatsapp" => "whatsapp",
        "instagram" => "instagram",
        _ => "webchat",
    }
}

/// Creates a tenant with an empty credit account (platform operation).
pub async fn create_tenant(db: &Db, name: &str) -> Result<TenantId, DbError> {
    let c = db.client().await?;
    let row = c
        .query_one(
            "WITH t AS (INSERT INTO tenants (name) VALUES ($1) RETURNING id),
                  a AS (INSERT INTO credit_accounts (user_id) SELECT id FROM t)
             SELECT id FROM t",
            &[&name],
        )
        .await?;
    Ok(TenantId(row.get(0)))
}

/// New agent of a tenant with the given model and instructions; the rest keeps its defaults.
pub async fn create_agent(
    db: &Db,
    tenant: TenantId,
    name: &str,
    model: &str,
    instructions: &str,
) -> Result<Uuid, DbError> {
    let c = db.client().await?;
    let row = c
        .query_one(
            "INSERT INTO agents (user_id, name, model, instructions) VALUES ($1, $2, $3, $4) RETURNING id",
            &[&tenant.0, &name, &model, &instructions],
        )
        .await?;
    Ok(row.get(0))
}

/// Sets an agent's prices (credits per 1,000 input / output tokens) and the balance below which
/// it does not call the model. Returns false when the agent is not the tenant's.
pub async fn set_agent_pricing(
    db: &Db,
    tenant: TenantId,
    agent_id: Uuid,
    price_input_per_1k: i64,
    price_output_per_1k: i64,
    min_balance: i64,
) -> Result<bool, DbError> {
    let c = db.client().await?;
    let n = c
        .execute(
            "UPDATE agents SET price_input_per_1k = $3, price_output_per_1k = $4, min_balance = $5
              WHERE user_id = $1 AND id = $2",
            &[
                &tenant.0,
                &agent_id,
                &price_input_per_1k,
                &price_output_per_1k,
                &min_balance,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Registers a provider account (a WhatsApp number, an IG account, a web chat site) for a
/// tenant. Fails if another tenant holds it.
pub async fn create_channel_account(
    db: &Db,
    tenant: TenantId,
    channel: Channel,
    provider_account_id: &str,
    agent_id: Option<Uuid>,
    access_token_secret: Option<&str>,
) -> Result<Uuid, DbError> {
    let c = db.client().await?;
    let row = c
        .query_one(
            "INSERT INTO channel_accounts (user_id, channel, provider_account_id, agent_id, access_token_secret)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&tenant.0, &channel.as_str(), &provider_account_id, &agent_id, &access_token_secret],
        )
        .await?;
    Ok(row.get(0))
}

/// The routing lookup: which tenant owns this provider account. The only query without a
/// tenant, because this is where the tenant is learnt.
pub async fn resolve_channel_account(
    db: &Db,
    channel: Channel,
    provider_account_id: &str,
) -> Result<Option<ChannelAccountRoute>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT ca.user_id, ca.id, ca.agent_id, ca.access_token_secret, ca.is_active, t.is_active
               FROM channel_accounts ca JOIN tenants t ON t.id = ca.user_id
              WHERE ca.channel = $1 AND ca.provider_account_id = $2",
            &[&channel.as_str(), &provider_account_id],
        )
        .await?;
    Ok(row.map(|r| ChannelAccountRoute {
        tenant: TenantId(r.get(0)),
        channel_account_id: r.get(1),
        agent_id: r.get(2),
        access_token_secret: r.get(3),
        is_active: r.get(4),
        tenant_active: r.get(5),
    }))
}

/// Soft-deletes (or re-activates) a channel account of the tenant. Returns whether a row changed.
pub async fn set_channel_account_active(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    active: bool,
) -> Result<bool, DbError> {
    let c = db.client().await?;
    let n = c
        .execute(
            "UPDATE channel_accounts SET is_active = $3 WHERE user_id = $1 AND id = $2",
            &[&tenant.0, &channel_account_id, &active],
        )
        .await?;
    Ok(n == 1)
}

/// Finds or creates the contact, refreshing its name/phone/username with what Meta sent.
/// Returns `None` when the channel account is not the tenant's.
pub async fn upsert_contact(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    external_id: &str,
    wa_id: Option<&str>,
    display_name: Option<&str>,
    username: Option<&str>,
) -> Result<Option<Uuid>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "INSERT INTO contacts (user_id, channel_account_id, external_id, wa_id, display_name, username)
             SELECT $1, ca.id, $3, $4, $5, $6 FROM channel_accounts ca WHERE ca.user_id = $1 AND ca.id = $2
             ON CONFLICT (channel_account_id, external_id) DO UPDATE SET
               wa_id = COALESCE(EXCLUDED.wa_id, contacts.wa_id),
               display_name = COALESCE(EXCLUDED.display_name, contacts.display_name),
               username = COALESCE(EXCLUDED.username, contacts.username)
             WHERE contacts.user_id = $1
             RETURNING id",
            &[&tenant.0, &channel_account_id, &external_id, &wa_id, &display_name, &username],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

fn conversation_from(r: &tokio_postgres::Row) -> Conversation {
    Conversation {
        id: r.get("id"),
        contact_id: r.get("contact_id"),
        mode: r.get("mode"),
        previous_response_id: r.get("previous_response_id"),
        last_inbound_at: r.get("last_inbound_at"),
        extracted_through: r.get("extracted_through"),
    }
}

const CONVERSATION_COLUMNS: &str =
    "id, contact_id, mode, previous_response_id, last_inbound_at, extracted_through";

/// The conversation of (channel account, contact), created on first contact. `None` when the
/// contact is not the tenant's.
pub async fn conversation_for(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    contact_id: Uuid,
) -> Result<Option<Conversation>, DbError> {
    let c = db.client().await?;
    let sql = format!(
        "WITH ins AS (
           INSERT INTO conversations (user_id, channel_account_id, contact_id)
           SELECT $1, $2, ct.id FROM contacts ct
            WHERE ct.user_id = $1 AND ct.id = $3 AND ct.channel_account_id = $2
           ON CONFLICT (channel_account_id, contact_id) DO NOTHING
           RETURNING {CONVERSATION_COLUMNS})
         SELECT {CONVERSATION_COLUMNS} FROM ins
         UNION ALL
         SELECT {CONVERSATION_COLUMNS} FROM conversations
          WHERE user_id = $1 AND channel_account_id = $2 AND contact_id = $3
         LIMIT 1"
    );
    let row = c
        .query_opt(&sql, &[&tenant.0, &channel_account_id, &contact_id])
        .await?;
    Ok(row.as_ref().map(conversation_from))
}

pub async fn get_conversation(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
) -> Result<Option<Conversation>, DbError> {
    let c = db.client().await?;
    let sql =
        format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE user_id = $1 AND id = $2");
    let row = c.query_opt(&sql, &[&tenant.0, &conversation_id]).await?;
    Ok(row.as_ref().map(conversation_from))
}

/// Switches a conversation between `ai` and `human`. Returns whether a row changed.
pub async fn set_conversation_mode(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    mode: &str,
) -> Result<bool, DbError> {
    if mode != "ai" && mode != "human" {
        return Err(DbError::Invalid(format!(
            "mode must be ai or human, got {mode}"
        )));
    }
    let c = db.client().await?;
    let n = c
        .execute(
            "UPDATE conversations SET mode = $3 WHERE user_id = $1 AND id = $2",
            &[&tenant.0, &conversation_id, &mode],
        )
        .await?;
    Ok(n == 1)
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

/// Status and error code of a message (tests, admin).
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

/// Adds credits. Returns the new balance, or `None` if the tenant has no credit account.
pub async fn top_up(
    db: &Db,
    tenant: TenantId,
    amount: i64,
    reason: &str,
    reference: Option<&str>,
) -> Result<Option<i64>, DbError> {
    if amount <= 0 {
        return Err(DbError::Invalid("a top-up must be positive".into()));
    }
    let c = db.client().await?;
    let row = c
        .query_opt(
            "WITH acc AS (
               UPDATE credit_accounts SET balance = balance + $2 WHERE user_id = $1 RETURNING balance),
             led AS (
               INSERT INTO credit_ledger (user_id, delta, balance_after, reason, reference)
               SELECT $1, $2, balance, $3, $4 FROM acc)
             SELECT balance FROM acc",
            &[&tenant.0, &amount, &reason, &reference],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Takes up to `amount` credits: all of it when the balance allows, else what is left, never
/// going below zero. The balance change and its ledger row are one statement, so one
/// transaction; concurrent charges serialise on the account row.
pub async fn charge(
    db: &Db,
    tenant: TenantId,
    amount: i64,
    reason: &str,
    reference: Option<&str>,
) -> Result<Option<Charge>, DbError> {
    if amount < 0 {
        return Err(DbError::Invalid("a charge cannot be negative".into()));
    }
    let c = db.client().await?;
    let row = c
        .query_opt(
            "WITH cur AS (
               SELECT user_id, balance, LEAST(balance, $2) AS take
                 FROM credit_accounts WHERE user_id = $1 FOR UPDATE),
             acc AS (
               UPDATE credit_accounts a SET balance = a.balance - cur.take
                 FROM cur WHERE a.user_id = cur.user_id
               RETURNING a.balance, cur.take),
             led AS (
               INSERT INTO credit_ledger (user_id, delta, balance_after, reason, reference)
               SELECT $1, -take, balance, $3, $4 FROM acc WHERE take > 0)
             SELECT balance, take FROM acc",
            &[&tenant.0, &amount, &reason, &reference],
        )
        .await?;
    Ok(row.map(|r| Charge {
        requested: amount,
        balance_after: r.get(0),
        charged: r.get(1),
    }))
}

/// Balance and ledger sum of a tenant (they are always equal).
pub async fn credit_state(db: &Db, tenant: TenantId) -> Result<Option<(i64, i64)>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT a.balance, COALESCE((SELECT sum(delta) FROM credit_ledger l WHERE l.user_id = $1), 0)::bigint
               FROM credit_accounts a WHERE a.user_id = $1",
            &[&tenant.0],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Channel of a stored channel account row (tests, admin).
pub async fn channel_account_channel(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
) -> Result<Option<&'static str>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT channel FROM channel_accounts WHERE user_id = $1 AND id = $2",
            &[&tenant.0, &channel_account_id],
        )
        .await?;
    Ok(row.map(|r| as_channel(r.get(0))))
}

/// An agent's configuration as the processor uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: Uuid,
    pub instructions: String,
    pub model: String,
    pub base_url: Option<String>,
    pub max_output_tokens: i32,
    pub temperature: Option<f32>,
    pub reasoning_effort: Option<String>,
    pub store: bool,
    pub history_messages: i32,
    pub price_input_per_1k: i64,
    pub price_output_per_1k: i64,
    pub min_balance: i64,
    pub fallback_no_credits: Option<String>,
    pub fallback_error: Option<String>,
    /// Tenant-defined lead fields (see `shared::lead::lead_schema`).
    pub extra_lead_fields: Json,
    pub is_active: bool,
}

pub async fn agent(db: &Db, tenant: TenantId, agent_id: Uuid) -> Result<Option<Agent>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT id, instructions, model, base_url, max_output_tokens, temperature, reasoning_effort,
                    store, history_messages, price_input_per_1k, price_output_per_1k, min_balance,
                    fallback_no_credits, is_active, fallback_error, extra_lead_fields
               FROM agents WHERE user_id = $1 AND id = $2",
            &[&tenant.0, &agent_id],
        )
        .await?;
    Ok(row.map(|r| Agent {
        id: r.get(0),
        instructions: r.get(1),
        model: r.get(2),
        base_url: r.get(3),
        max_output_tokens: r.get(4),
        temperature: r.get(5),
        reasoning_effort: r.get(6),
        store: r.get(7),
        history_messages: r.get(8),
        price_input_per_1k: r.get(9),
        price_output_per_1k: r.get(10),
        min_balance: r.get(11),
        fallback_no_credits: r.get(12),
        is_active: r.get(13),
        fallback_error: r.get(14),
        extra_lead_fields: r.get(15),
    }))
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

/// Balance of a tenant's credit account. Read on every processed message, so it reads the one
/// row and never sums the ledger (that is `credit_state`, for audits and tests).
pub async fn balance(db: &Db, tenant: TenantId) -> Result<Option<i64>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT balance FROM credit_accounts WHERE user_id = $1",
            &[&tenant.0],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
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
    let c = db.client().await?;
    let row = c
        .query_opt(
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
             cur AS (
               SELECT a.user_id, LEAST(a.balance, $8) AS take
                 FROM credit_accounts a, conv WHERE a.user_id = $1 FOR UPDATE OF a),
             acc AS (
               UPDATE credit_accounts a SET balance = a.balance - cur.take
                 FROM cur WHERE a.user_id = cur.user_id RETURNING a.balance, cur.take),
             led AS (
               INSERT INTO credit_ledger (user_id, delta, balance_after, reason, reference)
               SELECT $1, -take, balance, 'reply', $3 FROM acc WHERE take > 0)
             SELECT (SELECT balance FROM acc), (SELECT take FROM acc), (SELECT count(*) FROM msgs),
                    EXISTS (SELECT 1 FROM conv)",
            &[&tenant.0, &conversation_id, &response_id, &ids, &contents, &input_tokens, &output_tokens, &cost],
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
