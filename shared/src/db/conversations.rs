//! Contacts and conversations (`contacts`, `conversations`).
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use std::time::SystemTime;

use serde_json::Value as Json;
use uuid::Uuid;

use super::{json_row, json_rows, Db, DbError, TenantId};

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

/// (Tests only: feature `testing`.)
#[cfg(any(test, feature = "testing"))]
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

/// Switches a conversation between `ai` and `human` (a change stamps `mode_changed_at`, as
/// [`switch_mode`] does, by no key). Returns whether a row matched. (Tests only: feature
/// `testing`.)
#[cfg(any(test, feature = "testing"))]
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
            "UPDATE conversations SET mode = $3,
                    mode_changed_at = CASE WHEN mode <> $3 THEN now() ELSE mode_changed_at END
              WHERE user_id = $1 AND id = $2",
            &[&tenant.0, &conversation_id, &mode],
        )
        .await?;
    Ok(n == 1)
}

/// A conversation as the admin API shows it, with its keyset `_k` ([updated_at, id]).
const VIEW: &str = "SELECT to_jsonb(x) FROM (
    SELECT c.id, ca.channel, c.channel_account_id, c.mode, c.mode_changed_at, c.last_inbound_at,
           c.created_at, c.updated_at,
           jsonb_build_object('id', ct.id, 'external_id', ct.external_id, 'wa_id', ct.wa_id,
                              'display_name', ct.display_name, 'username', ct.username) AS contact,
           jsonb_build_array(c.updated_at::text, c.id) AS _k
      FROM conversations c
      JOIN channel_accounts ca ON ca.id = c.channel_account_id
      JOIN contacts ct ON ct.id = c.contact_id
     WHERE c.user_id = $1";

/// Which conversations a list shows (each `None` filters nothing).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub channel: Option<String>,
    pub mode: Option<String>,
    /// RFC 3339.
    pub updated_since: Option<String>,
    /// The keyset of the last row of the previous page: (updated_at, id) as text.
    pub before: (Option<String>, Option<String>),
}

/// Newest activity first, at most `limit` rows.
pub async fn list_json(
    db: &Db,
    tenant: TenantId,
    f: &ListFilter,
    limit: i64,
) -> Result<Vec<Json>, DbError> {
    json_rows(
        db,
        &format!(
            "{VIEW}
               AND ($2::text IS NULL OR ca.channel = $2)
               AND ($3::text IS NULL OR c.mode = $3)
               AND ($4::text IS NULL OR c.updated_at >= $4::timestamptz)
               AND ($5::text IS NULL OR (c.updated_at, c.id) < ($5::timestamptz, $6::text::uuid))
             ORDER BY c.updated_at DESC, c.id DESC LIMIT $7) x"
        ),
        &[
            &tenant.0,
            &f.channel,
            &f.mode,
            &f.updated_since,
            &f.before.0,
            &f.before.1,
            &limit,
        ],
    )
    .await
}

/// One conversation as the admin API shows it (with its keyset `_k`).
pub async fn get_json(db: &Db, tenant: TenantId, id: Uuid) -> Result<Option<Json>, DbError> {
    json_row(db, &format!("{VIEW} AND c.id = $2) x"), &[&tenant.0, &id]).await
}

/// What switching a conversation's mode did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSwitch {
    /// The mode was another one before.
    pub changed: bool,
    /// A `conversation.mode_changed` event was stored for the tenant's webhook.
    pub event: bool,
}

/// Sets a conversation's mode (`ai` | `human`) for the API key `by`; a real change is recorded
/// (when, by which key) and, in the same statement, stored as a `conversation.mode_changed`
/// event for the tenant's webhook. `None` when there is no such conversation.
pub async fn switch_mode(
    db: &Db,
    tenant: TenantId,
    id: Uuid,
    mode: &str,
    by: Uuid,
) -> Result<Option<ModeSwitch>, DbError> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH old AS (
               SELECT id, mode FROM conversations WHERE user_id = $1 AND id = $2 FOR UPDATE),
             upd AS (
               UPDATE conversations c SET mode = $3, mode_changed_at = now(), mode_changed_by = $4
                 FROM old WHERE c.id = old.id AND old.mode <> $3 RETURNING c.id),
             ev AS ({})
             SELECT (SELECT count(*) FROM old), (SELECT count(*) FROM upd), (SELECT count(*) FROM ev)",
            super::outbox::event_insert(
                "conversation.mode_changed",
                "upd.id",
                "jsonb_build_object(
                        'type', 'conversation.mode_changed', 'tenant_id', $1,
                        'conversation_id', upd.id, 'mode', $3::text, 'previous_mode', old.mode,
                        'changed_at', now())",
                "upd, old",
            )
        )
    });
    let c = db.client().await?;
    let row = c
        .query_one(SQL.as_str(), &[&tenant.0, &id, &mode, &by])
        .await?;
    let (found, changed, events): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    Ok((found > 0).then_some(ModeSwitch {
        changed: changed > 0,
        event: events > 0,
    }))
}

/// Where a human reply to a conversation goes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTarget {
    pub channel: String,
    pub provider_account_id: String,
    pub access_token_secret: Option<String>,
    pub account_active: bool,
    pub contact_external_id: String,
    pub contact_wa_id: Option<String>,
    /// Seconds since the customer's last message (`None`: never wrote).
    pub since_last_inbound_secs: Option<f64>,
    pub channel_account_id: Uuid,
}

pub async fn reply_target(
    db: &Db,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<ReplyTarget>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT ca.channel, ca.provider_account_id, ca.access_token_secret, ca.is_active,
                    ct.external_id, ct.wa_id,
                    EXTRACT(EPOCH FROM now() - c.last_inbound_at)::float8, ca.id
               FROM conversations c
               JOIN channel_accounts ca ON ca.id = c.channel_account_id
               JOIN contacts ct ON ct.id = c.contact_id
              WHERE c.user_id = $1 AND c.id = $2",
            &[&tenant.0, &id],
        )
        .await?;
    Ok(row.map(|r| ReplyTarget {
        channel: r.get(0),
        provider_account_id: r.get(1),
        access_token_secret: r.get(2),
        account_active: r.get(3),
        contact_external_id: r.get(4),
        contact_wa_id: r.get(5),
        since_last_inbound_secs: r.get(6),
        channel_account_id: r.get(7),
    }))
}
