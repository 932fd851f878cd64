//! Channel accounts: WhatsApp numbers, Instagram accounts, web chat sites.
//!
//! The processor caches the routing row of an account for 5 minutes and the web chat function a
//! site for 1 minute: an update here (agent, token secret, active flag, origins) is seen by
//! them within that time.

use serde_json::{json, Value as Json};
use shared::checked::MetaId;
use shared::db::webchat::{create_site, NewSite};
use shared::db::{channels, TenantId};
use shared::envelope::Channel;
use uuid::Uuid;

use super::{concurrent, path_tenant};
use shared::webchat::is_origin;

use crate::input::{checked, Input};
use crate::{ApiError, Ctx, Reply};

pub async fn list(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let rows = channels::list_json(ctx.app.db(), ctx.tenant()?).await?;
    Ok(Reply::ok(json!({"data": rows})))
}

async fn one(ctx: &Ctx<'_>, tenant: TenantId, id: Uuid) -> Result<Json, ApiError> {
    channels::get_json(ctx.app.db(), tenant, id)
        .await?
        .ok_or(ApiError::NotFound)
}

pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    Ok(Reply::ok(one(ctx, ctx.tenant()?, ctx.id(0)?).await?))
}

/// The token secret's name must be `<prefix><provider account id>` when the deployment
/// requires it (the processor refuses any other).
fn check_secret_name(ctx: &Ctx<'_>, i: &mut Input, secret: Option<&str>, account: &str) {
    if let (Some(s), Some(prefix)) = (secret, &ctx.app.settings().token_secret_prefix) {
        if s.strip_prefix(prefix.as_str()) != Some(account) {
            i.bad(
                "access_token_secret",
                format!("must be the secret named {prefix}{account}"),
            );
        }
    }
}

/// Whether `agent` is an active agent of the tenant.
async fn agent_usable(ctx: &Ctx<'_>, tenant: TenantId, agent: Uuid) -> Result<bool, ApiError> {
    Ok(channels::agent_usable(ctx.app.db(), tenant, agent).await?)
}

fn origins_ok(i: &mut Input, origins: &Option<Vec<String>>) {
    if let Some(o) = origins {
        if o.iter().any(|x| !is_origin(x)) {
            i.bad(
                "allowed_origins",
                "each must be an origin like https://shop.example.com (no path, no trailing slash)",
            );
        }
    }
}

/// `POST /v1/channels` (owner): a WhatsApp or Instagram account must name its own token
/// secret: the deployment's default Graph token is the operator's, and reaches accounts the
/// tenant may not own.
pub async fn create(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    create_for(ctx, ctx.tenant()?, false).await
}

/// `POST /v1/tenants/{id}/channels` (platform): the operator registers an account for a
/// tenant, which may use the default Graph token.
pub async fn create_for_tenant(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    create_for(ctx, path_tenant(ctx).await?, true).await
}

async fn create_for(ctx: &Ctx<'_>, tenant: TenantId, operator: bool) -> Result<Reply, ApiError> {
    let mut i = Input::parse(ctx.body)?;
    let channel = i.choice("channel", &["whatsapp", "instagram", "webchat"]);
    if channel.is_none() {
        i.bad("channel", "is required: whatsapp, instagram or webchat");
    }
    let display_name = i.str("display_name", 1, 200);
    let agent_id = i.nullable_uuid("agent_id").flatten();
    let (mut account, mut waba, mut secret) = (None, None, None);
    let (mut origins, mut identity_secret, mut require_identity) = (None, None, false);
    match channel.as_deref() {
        Some("whatsapp") | Some("instagram") => {
            account = i.required::<MetaId>("provider_account_id");
            if channel.as_deref() == Some("whatsapp") {
                waba = i.required::<MetaId>("waba_id");
            }
            secret = i.str("access_token_secret", 1, 512);
            if secret.is_none() && !operator {
                i.bad(
                    "access_token_secret",
                    "is required: name the secret holding this account's Graph token (the \
                     operator registers accounts that use the deployment's token)",
                );
            }
            if let Some(a) = &account {
                check_secret_name(ctx, &mut i, secret.as_deref(), a.as_str());
            }
        }
        Some(_) => {
            origins = i.strings("allowed_origins", 50, 300);
            if origins.as_ref().is_none_or(Vec::is_empty) {
                i.bad("allowed_origins", "at least one origin is required");
            }
            origins_ok(&mut i, &origins);
            identity_secret = i.str("identity_secret", 16, 200);
            require_identity = i.bool("require_identity").unwrap_or(false);
            if require_identity && identity_secret.is_none() {
                i.bad("require_identity", "needs an identity_secret");
            }
        }
        None => {}
    }
    if let Some(a) = agent_id {
        if !agent_usable(ctx, tenant, a).await? {
            i.bad("agent_id", "no active agent of this tenant has that id");
        }
    }
    i.finish()?;
    let db = ctx.app.db();
    let conflict = |e: ApiError| match e {
        ApiError::Conflict(..) => ApiError::Conflict(
            "already_registered",
            "that account is already registered (by this or another tenant)".into(),
        ),
        other => other,
    };
    let id = match channel.as_deref() {
        Some("webchat") => {
            let site_key = format!("site_{}", hex::encode(shared::random_bytes::<15>()));
            create_site(
                db,
                tenant,
                &NewSite {
                    site_key: &site_key,
                    agent_id,
                    allowed_origins: origins.as_deref().unwrap_or_default(),
                    identity_secret: identity_secret.as_deref(),
                    require_identity,
                },
            )
            .await
            .map_err(|e| conflict(e.into()))?
        }
        other => {
            let ch = checked(other.and_then(Channel::parse), "channel")?;
            channels::create_channel_account(
                db,
                tenant,
                ch,
                checked(account.as_ref(), "provider_account_id")?.as_str(),
                agent_id,
                secret.as_deref(),
            )
            .await
            .map_err(|e| conflict(e.into()))?
        }
    };
    let waba = waba.as_ref().map(MetaId::as_str);
    channels::set_names(db, tenant, id, display_name.as_deref(), waba).await?;
    tracing::info!(channel_account = %id, channel = channel.as_deref().unwrap_or(""), "channel account created");
    Ok(Reply::created(one(ctx, tenant, id).await?))
}

pub async fn update(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let tenant = ctx.tenant()?;
    let id = ctx.id(0)?;
    let cur = one(ctx, tenant, id).await?;
    let channel = cur["channel"].as_str().unwrap_or_default().to_owned();
    let account = cur["provider_account_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let text = |v: &Json| v.as_str().map(str::to_owned);
    let mut i = Input::parse(ctx.body)?;
    let display_name = i
        .nullable_str("display_name", 1, 200)
        .unwrap_or_else(|| text(&cur["display_name"]));
    let given_agent = i.nullable_uuid("agent_id");
    let agent_id = match given_agent {
        Some(v) => v,
        None => text(&cur["agent_id"]).and_then(|s| Uuid::parse_str(&s).ok()),
    };
    let reactivate = i.bool("is_active");
    let is_active = reactivate.unwrap_or(cur["is_active"].as_bool().unwrap_or(true));
    // The agent is checked when it is being set, or when the account comes back to life (a
    // PATCH of the name must not fail because the kept agent was deactivated meanwhile).
    let check_agent = given_agent.is_some() || reactivate == Some(true);
    let mut secret = text(&cur["access_token_secret"]);
    let mut waba = text(&cur["waba_id"]);
    let site = &cur["webchat"];
    let mut origins: Vec<String> = site["allowed_origins"]
        .as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default();
    let mut identity_secret: Option<Option<String>> = None;
    let mut require_identity = site["require_identity"].as_bool().unwrap_or(false);
    if channel == "webchat" {
        if let Some(o) = i.strings("allowed_origins", 50, 300) {
            origins_ok(&mut i, &Some(o.clone()));
            origins = o;
            if origins.is_empty() {
                i.bad("allowed_origins", "at least one origin is required");
            }
        }
        identity_secret = i.nullable_str("identity_secret", 16, 200);
        require_identity = i.bool("require_identity").unwrap_or(require_identity);
        let has_secret = match &identity_secret {
            Some(s) => s.is_some(),
            None => site["identity_verification"].as_bool().unwrap_or(false),
        };
        if require_identity && !has_secret {
            i.bad("require_identity", "needs an identity_secret");
        }
    } else {
        if let Some(s) = i.nullable_str("access_token_secret", 1, 512) {
            if s.is_none() {
                i.bad(
                    "access_token_secret",
                    "cannot be removed: the deployment's default Graph token is the operator's",
                );
            }
            check_secret_name(ctx, &mut i, s.as_deref(), &account);
            secret = s;
        }
        if channel == "whatsapp" {
            if let Some(w) = i.optional::<MetaId>("waba_id") {
                waba = Some(w.as_str().to_owned());
            }
        }
    }
    if let (Some(a), true) = (agent_id, check_agent) {
        if !agent_usable(ctx, tenant, a).await? {
            i.bad("agent_id", "no active agent of this tenant has that id");
        }
    }
    i.finish()?;
    let seen = text(&cur["updated_at"]).unwrap_or_default();
    let account = channels::AccountUpdate {
        display_name,
        agent_id,
        is_active,
        access_token_secret: secret,
        waba_id: waba,
    };
    let site = (channel == "webchat").then_some(channels::SiteUpdate {
        allowed_origins: origins,
        identity_secret,
        require_identity,
    });
    // Written only if nobody changed the row since it was read (else 409, read again).
    if !channels::update(ctx.app.db(), tenant, id, &seen, &account, site.as_ref()).await? {
        return Err(concurrent());
    }
    tracing::info!(channel_account = %id, "channel account updated");
    Ok(Reply::ok(one(ctx, tenant, id).await?))
}

/// Soft delete: the account stops being answered (messages to it are acknowledged and logged
/// as `unknown_channel_account`) once the processor's routing cache expires.
pub async fn deactivate(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let tenant = ctx.tenant()?;
    let id = ctx.id(0)?;
    if !channels::deactivate(ctx.app.db(), tenant, id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(channel_account = %id, "channel account deactivated");
    Ok(Reply::ok(one(ctx, tenant, id).await?))
}
