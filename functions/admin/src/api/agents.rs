//! Agents: what the model is told and how it is called and priced.
//!
//! The processor caches an agent for 5 minutes (extraction reads it per run): an update is
//! used for replies within that time.

use serde_json::{json, Value as Json};
use uuid::Uuid;

use shared::db::agents::{self, AgentFields};

use crate::input::Input;
use crate::{ApiError, Ctx, Reply};

const EFFORTS: &[&str] = &["none", "minimal", "low", "medium", "high", "xhigh"];

/// The editable fields (defaults of a new agent).
struct Fields {
    name: String,
    instructions: String,
    model: String,
    base_url: Option<String>,
    max_output_tokens: i64,
    temperature: Option<f64>,
    reasoning_effort: Option<String>,
    store: bool,
    history_messages: i64,
    price_input_per_1k: i64,
    price_output_per_1k: i64,
    min_balance: i64,
    fallback_no_credits: Option<String>,
    fallback_error: Option<String>,
    extra_lead_fields: Json,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            name: String::new(),
            instructions: String::new(),
            model: String::new(),
            base_url: None,
            max_output_tokens: 800,
            temperature: None,
            reasoning_effort: None,
            store: true,
            history_messages: 20,
            price_input_per_1k: 0,
            price_output_per_1k: 0,
            min_balance: 0,
            fallback_no_credits: None,
            fallback_error: None,
            extra_lead_fields: json!({}),
        }
    }
}

impl Fields {
    fn from_row(r: &Json) -> Self {
        let s = |k: &str| r[k].as_str().map(str::to_owned);
        let n = |k: &str| r[k].as_i64().unwrap_or_default();
        Self {
            name: s("name").unwrap_or_default(),
            instructions: s("instructions").unwrap_or_default(),
            model: s("model").unwrap_or_default(),
            base_url: s("base_url"),
            max_output_tokens: n("max_output_tokens"),
            temperature: r["temperature"].as_f64(),
            reasoning_effort: s("reasoning_effort"),
            store: r["store"].as_bool().unwrap_or(true),
            history_messages: n("history_messages"),
            price_input_per_1k: n("price_input_per_1k"),
            price_output_per_1k: n("price_output_per_1k"),
            min_balance: n("min_balance"),
            fallback_no_credits: s("fallback_no_credits"),
            fallback_error: s("fallback_error"),
            extra_lead_fields: r["extra_lead_fields"].clone(),
        }
    }

    /// Overlays the body's fields (all optional here; `create` checks the required ones) and
    /// checks the result as a whole.
    fn apply(&mut self, ctx: &Ctx<'_>, i: &mut Input) {
        if let Some(v) = i.str("name", 1, 100) {
            self.name = v;
        }
        if let Some(v) = i.nullable_str("instructions", 0, 20_000) {
            self.instructions = v.unwrap_or_default();
        }
        if let Some(v) = i.str("model", 1, 100) {
            self.model = v;
        }
        if let Some(v) = i.nullable_str("base_url", 1, 500) {
            let allowed = &ctx.app.settings().model_base_urls;
            match v.as_deref().map(|u| u.trim_end_matches('/')) {
                Some(u) if !allowed.iter().any(|a| a == u) => i.bad(
                    "base_url",
                    if allowed.is_empty() {
                        "this deployment allows no model endpoint override".to_owned()
                    } else {
                        format!("must be one of: {}", allowed.join(", "))
                    },
                ),
                u => self.base_url = u.map(str::to_owned),
            }
        }
        if let Some(v) = i.int("max_output_tokens", 16, 128_000) {
            self.max_output_tokens = v;
        }
        if let Some(v) = i.nullable_number("temperature", 0.0, 2.0) {
            self.temperature = v;
        }
        if let Some(v) = i.nullable_choice("reasoning_effort", EFFORTS) {
            self.reasoning_effort = v;
        }
        if let Some(v) = i.bool("store") {
            self.store = v;
        }
        if let Some(v) = i.int("history_messages", 0, 200) {
            self.history_messages = v;
        }
        for (field, slot) in [
            ("price_input_per_1k", &mut self.price_input_per_1k),
            ("price_output_per_1k", &mut self.price_output_per_1k),
            ("min_balance", &mut self.min_balance),
        ] {
            if let Some(v) = i.int(field, 0, 1_000_000_000) {
                *slot = v;
            }
        }
        if let Some(v) = i.nullable_str("fallback_no_credits", 1, 1000) {
            self.fallback_no_credits = v;
        }
        if let Some(v) = i.nullable_str("fallback_error", 1, 1000) {
            self.fallback_error = v;
        }
        if let Some(v) = i.object("extra_lead_fields") {
            // The extraction function builds its strict schema from these: refuse now what it
            // could not use later.
            match shared::lead::lead_schema(&v) {
                Ok(_) => self.extra_lead_fields = v,
                Err(e) => i.bad("extra_lead_fields", e.to_string()),
            }
        }
        if self.temperature.is_some() && self.reasoning_effort.is_some() {
            i.bad(
                "temperature",
                "set temperature (non-reasoning models) or reasoning_effort, not both",
            );
        }
    }
}

impl Fields {
    fn stored(&self) -> AgentFields {
        AgentFields {
            name: self.name.clone(),
            instructions: self.instructions.clone(),
            model: self.model.clone(),
            base_url: self.base_url.clone(),
            max_output_tokens: self.max_output_tokens as i32,
            temperature: self.temperature.map(|t| t as f32),
            reasoning_effort: self.reasoning_effort.clone(),
            store: self.store,
            history_messages: self.history_messages as i32,
            price_input_per_1k: self.price_input_per_1k,
            price_output_per_1k: self.price_output_per_1k,
            min_balance: self.min_balance,
            fallback_no_credits: self.fallback_no_credits.clone(),
            fallback_error: self.fallback_error.clone(),
            extra_lead_fields: self.extra_lead_fields.clone(),
        }
    }
}

pub async fn list(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let rows = agents::list_json(ctx.app.db(), ctx.tenant()?).await?;
    Ok(Reply::ok(json!({"data": rows})))
}

async fn one(ctx: &Ctx<'_>, id: Uuid) -> Result<Json, ApiError> {
    agents::get_json(ctx.app.db(), ctx.tenant()?, id)
        .await?
        .ok_or(ApiError::NotFound)
}

pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    Ok(Reply::ok(one(ctx, ctx.id(0)?).await?))
}

/// Writes every field of `f` to agent `id`: inserts it when `seen` is `None`, else updates it
/// only if its `updated_at` is still `seen` (409 otherwise: another change came in between).
async fn save(ctx: &Ctx<'_>, id: Uuid, f: &Fields, seen: Option<&str>) -> Result<(), ApiError> {
    if !agents::save(ctx.app.db(), ctx.tenant()?, id, &f.stored(), seen).await? {
        return Err(super::concurrent());
    }
    Ok(())
}

pub async fn create(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let mut i = Input::parse(ctx.body)?;
    for required in ["name", "model"] {
        if !i.has(required) {
            i.bad(required, "is required");
        }
    }
    let mut f = Fields::default();
    f.apply(ctx, &mut i);
    i.finish()?;
    let id = Uuid::new_v4();
    save(ctx, id, &f, None).await?;
    tracing::info!(agent = %id, "agent created");
    Ok(Reply::created(one(ctx, id).await?))
}

pub async fn update(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    let cur = one(ctx, id).await?;
    let mut i = Input::parse(ctx.body)?;
    let mut f = Fields::from_row(&cur);
    f.apply(ctx, &mut i);
    let reactivate = match i.bool("is_active") {
        Some(false) => {
            i.bad(
                "is_active",
                "deactivate with DELETE (it checks no active channel uses the agent)",
            );
            false
        }
        other => other == Some(true),
    };
    i.finish()?;
    let seen = cur["updated_at"].as_str().unwrap_or_default();
    save(ctx, id, &f, Some(seen)).await?;
    if reactivate {
        agents::set_active(ctx.app.db(), ctx.tenant()?, id, true).await?;
    }
    tracing::info!(agent = %id, "agent updated");
    Ok(Reply::ok(one(ctx, id).await?))
}

/// Soft delete, refused while an active channel account still answers with this agent (its
/// customers would silently stop getting replies).
pub async fn deactivate(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    one(ctx, id).await?;
    let users = agents::active_channels_using(ctx.app.db(), ctx.tenant()?, id).await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(
            "agent_in_use",
            format!(
                "active channel accounts use this agent: {}; move or deactivate them first",
                users
                    .iter()
                    .map(Uuid::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    agents::set_active(ctx.app.db(), ctx.tenant()?, id, false).await?;
    tracing::info!(agent = %id, "agent deactivated");
    Ok(Reply::ok(one(ctx, id).await?))
}
