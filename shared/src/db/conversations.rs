//! Contacts and conversations (`contacts`, `conversations`).
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use std::time::SystemTime;

use uuid::Uuid;

use super::{Db, DbError, TenantId};

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
