//! Agents (`agents`): what the model is told, which model, and at what price.
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use serde_json::Value as Json;
use uuid::Uuid;

use super::{Db, DbError, TenantId};

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
