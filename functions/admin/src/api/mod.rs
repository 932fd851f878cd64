//! The handlers, one module per resource. Queries build their JSON in Postgres (`to_jsonb`),
//! so a response is exactly the selected columns; every tenant query filters on the caller's
//! tenant, so another tenant's id finds nothing (404).

mod agents;
mod channels;
mod conversations;
mod leads;
mod tenancy;

use serde_json::Value as Json;

use crate::routes::Op;
use crate::{ApiError, Ctx, Reply};

pub async fn dispatch(op: Op, ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    match op {
        Op::OpenApi => Ok(Reply::Yaml(crate::OPENAPI_YAML)),
        Op::Me => tenancy::me(ctx).await,
        Op::ListTenants => tenancy::list_tenants(ctx).await,
        Op::CreateTenant => tenancy::create_tenant(ctx).await,
        Op::GetTenant => tenancy::get_tenant(ctx).await,
        Op::DeactivateTenant => tenancy::deactivate_tenant(ctx).await,
        Op::TopUp => tenancy::top_up(ctx).await,
        Op::IssueTenantKey => tenancy::issue_tenant_key(ctx).await,
        Op::ListKeys => tenancy::list_keys(ctx).await,
        Op::CreateKey => tenancy::create_key(ctx).await,
        Op::RevokeKey => tenancy::revoke_key(ctx).await,
        Op::Credits => tenancy::credits(ctx).await,
        Op::Ledger => tenancy::ledger(ctx).await,
        Op::GetWebhook => tenancy::get_webhook(ctx).await,
        Op::SetWebhook => tenancy::set_webhook(ctx).await,
        Op::DeleteWebhook => tenancy::delete_webhook(ctx).await,
        Op::ListChannels => channels::list(ctx).await,
        Op::CreateChannel => channels::create(ctx).await,
        Op::CreateTenantChannel => channels::create_for_tenant(ctx).await,
        Op::GetChannel => channels::get(ctx).await,
        Op::UpdateChannel => channels::update(ctx).await,
        Op::DeactivateChannel => channels::deactivate(ctx).await,
        Op::ListAgents => agents::list(ctx).await,
        Op::CreateAgent => agents::create(ctx).await,
        Op::GetAgent => agents::get(ctx).await,
        Op::UpdateAgent => agents::update(ctx).await,
        Op::DeactivateAgent => agents::deactivate(ctx).await,
        Op::ListConversations => conversations::list(ctx).await,
        Op::GetConversation => conversations::get(ctx).await,
        Op::ListMessages => conversations::messages(ctx).await,
        Op::SetMode => conversations::set_mode(ctx).await,
        Op::SendMessage => conversations::send(ctx).await,
        Op::ListLeads => leads::list(ctx).await,
        Op::ExportLeads => leads::export(ctx).await,
        Op::GetLead => leads::get(ctx).await,
    }
}

/// The parts of a keyset cursor as text (Postgres casts them back), `None`s without one.
fn keyset(ctx: &Ctx<'_>) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some(Json::Array(parts)) = ctx.cursor()? else {
        return Ok((None, None));
    };
    let text = |v: Option<&Json>| {
        v.map(|v| match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    Ok((text(parts.first()), text(parts.get(1))))
}

/// The tenant named by path parameter 0 (platform routes), or 404.
async fn path_tenant(ctx: &Ctx<'_>) -> Result<shared::db::TenantId, ApiError> {
    let id = ctx.id(0)?;
    shared::db::tenants::existing(ctx.app.db(), id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// A PATCH that lost a race with another change of the same row.
fn concurrent() -> ApiError {
    ApiError::Conflict(
        "modified_concurrently",
        "the resource changed while this request was applied; read it again and retry".into(),
    )
}
