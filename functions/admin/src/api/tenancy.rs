//! Who am I, tenants and top-ups (platform), API keys, credits and the outbound webhook.

use serde_json::{json, Value as Json};
use shared::db::apikeys::{self, Role};
use shared::db::{credits, tenants, TenantId};

use super::{keyset, path_tenant};
use crate::input::{checked, Input};
use crate::{page, ApiError, Ctx, Reply};
use shared::checked::{Credits, PublicHttpsUrl};

pub async fn me(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let tenant = match ctx.who.tenant {
        Some(t) => tenants::name_json(ctx.app.db(), t)
            .await?
            .ok_or(ApiError::NotFound)?,
        None => Json::Null,
    };
    Ok(Reply::ok(json!({
        "key_id": ctx.who.key_id,
        "role": ctx.who.role.as_str(),
        "tenant": tenant,
    })))
}

pub async fn list_tenants(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let limit = ctx.limit()?;
    let rows = tenants::list_json(ctx.app.db(), keyset(ctx)?, limit + 1).await?;
    Ok(Reply::ok(page(rows, limit)))
}

async fn tenant_json(ctx: &Ctx<'_>, id: uuid::Uuid) -> Result<Json, ApiError> {
    tenants::get_json(ctx.app.db(), id)
        .await?
        .ok_or(ApiError::NotFound)
}

fn key_json(k: &apikeys::IssuedKey, role: Role, name: &str) -> Json {
    json!({"id": k.id, "prefix": k.prefix, "role": role.as_str(), "name": name,
           "key": k.key, "note": "shown once: store it now"})
}

pub async fn create_tenant(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let mut i = Input::parse(ctx.body)?;
    let name = i.required_str("name", 1, 200);
    let key_name = i.str("owner_key_name", 1, 100);
    i.finish()?;
    let name = checked(name, "name")?;
    let tenant = tenants::create_tenant(ctx.app.db(), &name).await?;
    let key_name = key_name.unwrap_or_else(|| "owner".to_owned());
    let key = apikeys::issue(ctx.app.db(), Some(tenant), Role::Owner, &key_name).await?;
    tracing::info!(tenant = %tenant, "tenant created");
    Ok(Reply::created(json!({
        "tenant": tenant_json(ctx, tenant.uuid()).await?,
        "owner_key": key_json(&key, Role::Owner, &key_name),
    })))
}

pub async fn get_tenant(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    Ok(Reply::ok(tenant_json(ctx, ctx.id(0)?).await?))
}

/// Soft delete: its keys stop working at once; its channel accounts stop being answered
/// within the processor's routing cache TTL (5 min).
pub async fn deactivate_tenant(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    if !tenants::deactivate(ctx.app.db(), id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(tenant = %id, "tenant deactivated");
    Ok(Reply::ok(tenant_json(ctx, id).await?))
}

pub async fn top_up(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    let mut i = Input::parse(ctx.body)?;
    let amount = i.required::<Credits>("amount");
    let reference = i.str("reference", 1, 200);
    i.finish()?;
    let tenant = TenantId::from_trusted(id);
    match credits::top_up(
        ctx.app.db(),
        tenant,
        checked(amount, "amount")?.get(),
        "top_up",
        reference.as_deref(),
    )
    .await
    {
        Ok(Some(balance)) => {
            ctx.metrics().count("TopUps", 1);
            Ok(Reply::created(json!({"tenant_id": id, "balance": balance})))
        }
        Ok(None) => Err(ApiError::NotFound),
        Err(e) => match ApiError::from(e) {
            ApiError::Conflict(..) => Err(ApiError::Conflict(
                "duplicate_reference",
                "this tenant already has a top-up with that reference".into(),
            )),
            other => Err(other),
        },
    }
}

/// A key for a tenant, issued by the platform (the first owner key comes with the tenant).
pub async fn issue_tenant_key(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    new_key(ctx, path_tenant(ctx).await?).await
}

async fn new_key(ctx: &Ctx<'_>, tenant: TenantId) -> Result<Reply, ApiError> {
    let mut i = Input::parse(ctx.body)?;
    let name = i.required_str("name", 1, 100);
    if !i.has("role") {
        i.bad("role", "is required: owner, agent or viewer");
    }
    let role = i.choice("role", &["owner", "agent", "viewer"]);
    i.finish()?;
    let (name, role) = (
        checked(name, "name")?,
        checked(role.as_deref().and_then(Role::parse), "role")?,
    );
    let key = apikeys::issue(ctx.app.db(), Some(tenant), role, &name).await?;
    tracing::info!(tenant = %tenant, prefix = %key.prefix, role = role.as_str(), "API key issued");
    Ok(Reply::created(key_json(&key, role, &name)))
}

pub async fn list_keys(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let rows = apikeys::list_json(ctx.app.db(), ctx.tenant()?).await?;
    Ok(Reply::ok(json!({"data": rows})))
}

pub async fn create_key(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    new_key(ctx, ctx.tenant()?).await
}

/// Takes effect on the next request (keys are not cached).
pub async fn revoke_key(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    if !apikeys::revoke(ctx.app.db(), Some(ctx.tenant()?), id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(key_id = %id, "API key revoked");
    Ok(Reply::ok(json!({"id": id, "revoked": true})))
}

pub async fn credits(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let row = credits::account_json(ctx.app.db(), ctx.tenant()?)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Reply::ok(row))
}

/// Newest first.
pub async fn ledger(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let limit = ctx.limit()?;
    let (k1, _) = keyset(ctx)?;
    let rows = credits::ledger_json(ctx.app.db(), ctx.tenant()?, k1.as_deref(), limit + 1).await?;
    Ok(Reply::ok(page(rows, limit)))
}

pub async fn get_webhook(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let row = tenants::webhook_json(ctx.app.db(), ctx.tenant()?)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Reply::ok(row))
}

/// Sets the URL; a signing secret is generated the first time (or with `rotate_secret`) and
/// shown in this response only.
pub async fn set_webhook(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let mut i = Input::parse(ctx.body)?;
    let url = i.required::<PublicHttpsUrl>("url");
    let rotate = i.bool("rotate_secret").unwrap_or(false);
    i.finish()?;
    let url = checked(url, "url")?;
    let candidate = format!("whsec_{}", hex::encode(shared::random_bytes::<32>()));
    let shown = tenants::set_webhook_url(
        ctx.app.db(),
        ctx.tenant()?,
        url.as_str(),
        rotate,
        &candidate,
    )
    .await?
    .ok_or(ApiError::NotFound)?;
    let mut out = json!({"url": url.as_str()});
    if shown {
        out["secret"] = json!(candidate);
        out["note"] = json!("the signing secret is shown once: store it now");
    }
    Ok(Reply::ok(out))
}

pub async fn delete_webhook(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    tenants::set_tenant_webhook(ctx.app.db(), ctx.tenant()?, None, None).await?;
    Ok(Reply::ok(json!({"url": null})))
}
