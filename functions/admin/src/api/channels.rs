//! Channel accounts: WhatsApp numbers, Instagram accounts, web chat sites.
//!
//! The processor caches the routing row of an account for 5 minutes and the web chat function a
//! site for 1 minute: an update here (agent, token secret, active flag, origins) is seen by
//! them within that time.

use serde_json::{json, Value as Json};
use shared::db::webchat::{create_site, NewSite};
use shared::db::{channels, TenantId};
use shared::envelope::Channel;
use uuid::Uuid;

use super::{concurrent, json_one, json_rows, path_tenant};
use shared::webchat::is_origin;

use crate::input::Input;
use crate::{ApiError, Ctx, Reply};

const SELECT: &str = "SELECT to_jsonb(x) FROM (
    SELECT ca.id, ca.channel, ca.provider_account_id, ca.waba_id, ca.display_name,
           ca.access_token_secret, ca.agent_id, ca.is_active, ca.created_at, ca.updated_at,
           CASE WHEN ws.channel_account_id IS NULL THEN NULL ELSE jsonb_build_object(
             'site_key', ca.provider_account_id,
             'allowed_origins', ws.allowed_origins,
             'identity_verification', ws.identity_secret IS NOT NULL,
             'require_identity', ws.require_identity) END AS webchat
      FROM channel_accounts ca
      LEFT JOIN webchat_sites ws ON ws.channel_account_id = ca.id
     WHERE ca.user_id = $1";

pub async fn list(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let rows = json_rows(
        ctx,
        &format!("{SELECT} ORDER BY ca.created_at, ca.id) x"),
        &[&ctx.tenant().uuid()],
    )
    .await?;
    Ok(Reply::ok(json!({"data": rows})))
}

async fn one(ctx: &Ctx<'_>, tenant: TenantId, id: Uuid) -> Result<Json, ApiError> {
    json_one(
        ctx,
        &format!("{SELECT} AND ca.id = $2) x"),
        &[&tenant.uuid(), &id],
    )
    .await
}

pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    Ok(Reply::ok(one(ctx, ctx.tenant(), ctx.id(0)?).await?))
}

fn numeric_id(i: &mut Input, field: &str, v: &Option<String>) {
    if let Some(v) = v {
        if !v.chars().all(|c| c.is_ascii_digit()) {
            i.bad(field, "must be the numeric id Meta shows");
        }
    }
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
    Ok(!json_rows(
        ctx,
        "SELECT to_jsonb(id) FROM agents WHERE user_id = $1 AND id = $2 AND is_active",
        &[&tenant.uuid(), &agent],
    )
    .await?
    .is_empty())
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
    create_for(ctx, ctx.tenant(), false).await
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
            account = i.required_str("provider_account_id", 1, 40);
            numeric_id(&mut i, "provider_account_id", &account);
            if channel.as_deref() == Some("whatsapp") {
                waba = i.required_str("waba_id", 1, 40);
                numeric_id(&mut i, "waba_id", &waba);
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
                check_secret_name(ctx, &mut i, secret.as_deref(), a);
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
            let ch = other.and_then(Channel::parse).expect("validated channel");
            channels::create_channel_account(
                db,
                tenant,
                ch,
                account.as_deref().expect("validated"),
                agent_id,
                secret.as_deref(),
            )
            .await
            .map_err(|e| conflict(e.into()))?
        }
    };
    let c = db.client().await?;
    c.execute(
        "UPDATE channel_accounts SET display_name = $3, waba_id = $4 WHERE user_id = $1 AND id = $2",
        &[&tenant.uuid(), &id, &display_name, &waba],
    )
    .await
    .map_err(shared::db::DbError::from)?;
    tracing::info!(channel_account = %id, channel = channel.as_deref().unwrap_or(""), "channel account created");
    Ok(Reply::created(one(ctx, tenant, id).await?))
}

pub async fn update(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let tenant = ctx.tenant();
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
            if let Some(w) = i.str("waba_id", 1, 40) {
                let w = Some(w);
                numeric_id(&mut i, "waba_id", &w);
                waba = w;
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
    let c = ctx.app.db().client().await?;
    // Written only if nobody changed the row since it was read (else 409, read again).
    let n = c
        .execute(
            "UPDATE channel_accounts SET display_name = $3, agent_id = $4, is_active = $5,
                access_token_secret = $6, waba_id = $7
          WHERE user_id = $1 AND id = $2 AND updated_at = $8::text::timestamptz",
            &[
                &tenant.uuid(),
                &id,
                &display_name,
                &agent_id,
                &is_active,
                &secret,
                &waba,
                &seen,
            ],
        )
        .await
        .map_err(shared::db::DbError::from)?;
    if n == 0 {
        return Err(concurrent());
    }
    if channel == "webchat" {
        c.execute(
            "UPDATE webchat_sites SET allowed_origins = $3, is_active = $4, require_identity = $6,
                    identity_secret = CASE WHEN $7 THEN $5 ELSE identity_secret END
              WHERE user_id = $1 AND channel_account_id = $2",
            &[
                &tenant.uuid(),
                &id,
                &origins,
                &is_active,
                &identity_secret.clone().flatten(),
                &require_identity,
                &identity_secret.is_some(),
            ],
        )
        .await
        .map_err(shared::db::DbError::from)?;
    }
    tracing::info!(channel_account = %id, "channel account updated");
    Ok(Reply::ok(one(ctx, tenant, id).await?))
}

/// Soft delete: the account stops being answered (messages to it are acknowledged and logged
/// as `unknown_channel_account`) once the processor's routing cache expires.
pub async fn deactivate(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let tenant = ctx.tenant();
    let id = ctx.id(0)?;
    let c = ctx.app.db().client().await?;
    let n = c
        .execute(
            "WITH s AS (UPDATE webchat_sites SET is_active = false
                         WHERE user_id = $1 AND channel_account_id = $2)
             UPDATE channel_accounts SET is_active = false WHERE user_id = $1 AND id = $2",
            &[&tenant.uuid(), &id],
        )
        .await
        .map_err(shared::db::DbError::from)?;
    if n == 0 {
        return Err(ApiError::NotFound);
    }
    tracing::info!(channel_account = %id, "channel account deactivated");
    Ok(Reply::ok(one(ctx, tenant, id).await?))
}
