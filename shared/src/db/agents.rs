//! Agents (`agents`): what the model is told, which model, and at what price.
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use serde_json::Value as Json;
use uuid::Uuid;

use super::{json_row, json_rows, Db, DbError, TenantId};

/// The columns the admin API shows of an agent.
const COLUMNS: &str = "id, name, instructions, model, base_url, max_output_tokens, temperature,
    reasoning_effort, store, history_messages, price_input_per_1k, price_output_per_1k,
    min_balance, fallback_no_credits, fallback_error, extra_lead_fields, is_active,
    created_at, updated_at";

/// Every editable field of an agent, as written by the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFields {
    pub name: String,
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
    pub extra_lead_fields: Json,
}

/// The tenant's agents as the admin API lists them (oldest first).
pub async fn list_json(db: &Db, tenant: TenantId) -> Result<Vec<Json>, DbError> {
    json_rows(
        db,
        &format!(
            "SELECT to_jsonb(x) FROM (SELECT {COLUMNS} FROM agents
              WHERE user_id = $1 ORDER BY created_at, id) x"
        ),
        &[&tenant.0],
    )
    .await
}

/// One agent as the admin API shows it.
pub async fn get_json(db: &Db, tenant: TenantId, id: Uuid) -> Result<Option<Json>, DbError> {
    json_row(
        db,
        &format!(
            "SELECT to_jsonb(x) FROM (SELECT {COLUMNS} FROM agents WHERE user_id = $1 AND id = $2) x"
        ),
        &[&tenant.0, &id],
    )
    .await
}

/// Writes every field of agent `id`: inserts it when `seen` is `None`, else updates it only if
/// its `updated_at` is still `seen` (its text as [`get_json`] showed it). False when nothing
/// was written (another change came in between, or no such agent).
pub async fn save(
    db: &Db,
    tenant: TenantId,
    id: Uuid,
    f: &AgentFields,
    seen: Option<&str>,
) -> Result<bool, DbError> {
    let sql = if seen.is_none() {
        "INSERT INTO agents (user_id, id, name, instructions, model, base_url, max_output_tokens,
                temperature, reasoning_effort, store, history_messages, price_input_per_1k,
                price_output_per_1k, min_balance, fallback_no_credits, fallback_error, extra_lead_fields)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    } else {
        "UPDATE agents SET name = $3, instructions = $4, model = $5, base_url = $6,
                max_output_tokens = $7, temperature = $8, reasoning_effort = $9, store = $10,
                history_messages = $11, price_input_per_1k = $12, price_output_per_1k = $13,
                min_balance = $14, fallback_no_credits = $15, fallback_error = $16,
                extra_lead_fields = $17
          WHERE user_id = $1 AND id = $2 AND updated_at = $18::text::timestamptz"
    };
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &tenant.0,
        &id,
        &f.name,
        &f.instructions,
        &f.model,
        &f.base_url,
        &f.max_output_tokens,
        &f.temperature,
        &f.reasoning_effort,
        &f.store,
        &f.history_messages,
        &f.price_input_per_1k,
        &f.price_output_per_1k,
        &f.min_balance,
        &f.fallback_no_credits,
        &f.fallback_error,
        &f.extra_lead_fields,
    ];
    if let Some(seen) = &seen {
        params.push(seen);
    }
    let c = db.client().await?;
    Ok(c.execute(sql, &params).await? > 0)
}

/// Activates or deactivates (soft delete) an agent.
pub async fn set_active(db: &Db, tenant: TenantId, id: Uuid, active: bool) -> Result<(), DbError> {
    let c = db.client().await?;
    c.execute(
        "UPDATE agents SET is_active = $3 WHERE user_id = $1 AND id = $2",
        &[&tenant.0, &id, &active],
    )
    .await?;
    Ok(())
}

/// The active channel accounts that answer with agent `id`.
pub async fn active_channels_using(
    db: &Db,
    tenant: TenantId,
    id: Uuid,
) -> Result<Vec<Uuid>, DbError> {
    let c = db.client().await?;
    let rows = c
        .query(
            "SELECT id FROM channel_accounts WHERE user_id = $1 AND agent_id = $2 AND is_active",
            &[&tenant.0, &id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
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
