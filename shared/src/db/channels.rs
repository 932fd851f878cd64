//! Channel accounts (`channel_accounts`): a tenant's WhatsApp numbers, Instagram accounts and
//! web chat sites, and the one lookup that is not tenant-scoped: a webhook's provider account
//! id to its tenant ([`resolve_channel_account`]).
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use serde_json::Value as Json;
use uuid::Uuid;

use super::{json_row, json_rows, Db, DbError, TenantId};
use crate::envelope::Channel;

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

#[cfg(any(test, feature = "testing"))]
fn as_channel(s: &str) -> &'static str {
    match s {
        "whatsapp" => "whatsapp",
        "instagram" => "instagram",
        _ => "webchat",
    }
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
/// (Tests only: feature `testing`.)
#[cfg(any(test, feature = "testing"))]
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

/// Channel of a stored channel account row (tests, admin).
/// (Tests only: feature `testing`.)
#[cfg(any(test, feature = "testing"))]
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

/// A channel account as the admin API shows it (with its web chat site's settings).
const VIEW: &str = "SELECT to_jsonb(x) FROM (
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

/// The tenant's channel accounts as the admin API lists them (oldest first).
pub async fn list_json(db: &Db, tenant: TenantId) -> Result<Vec<Json>, DbError> {
    json_rows(
        db,
        &format!("{VIEW} ORDER BY ca.created_at, ca.id) x"),
        &[&tenant.0],
    )
    .await
}

/// One channel account as the admin API shows it.
pub async fn get_json(db: &Db, tenant: TenantId, id: Uuid) -> Result<Option<Json>, DbError> {
    json_row(db, &format!("{VIEW} AND ca.id = $2) x"), &[&tenant.0, &id]).await
}

/// Whether `agent` is an active agent of the tenant.
pub async fn agent_usable(db: &Db, tenant: TenantId, agent: Uuid) -> Result<bool, DbError> {
    let c = db.client().await?;
    Ok(c.query_opt(
        "SELECT 1 FROM agents WHERE user_id = $1 AND id = $2 AND is_active",
        &[&tenant.0, &agent],
    )
    .await?
    .is_some())
}

/// Sets what an account is called and (WhatsApp) its business account id.
pub async fn set_names(
    db: &Db,
    tenant: TenantId,
    id: Uuid,
    display_name: Option<&str>,
    waba_id: Option<&str>,
) -> Result<(), DbError> {
    let c = db.client().await?;
    c.execute(
        "UPDATE channel_accounts SET display_name = $3, waba_id = $4 WHERE user_id = $1 AND id = $2",
        &[&tenant.0, &id, &display_name, &waba_id],
    )
    .await?;
    Ok(())
}

/// An account's editable settings, as the admin API writes them.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountUpdate {
    pub display_name: Option<String>,
    pub agent_id: Option<Uuid>,
    pub is_active: bool,
    pub access_token_secret: Option<String>,
    pub waba_id: Option<String>,
}

/// A web chat site's editable settings. `identity_secret`: `None` keeps the stored one,
/// `Some(None)` removes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteUpdate {
    pub allowed_origins: Vec<String>,
    pub identity_secret: Option<Option<String>>,
    pub require_identity: bool,
}

/// Writes an account's settings (and its site's, for web chat) only if its `updated_at` is
/// still `seen`. False when nothing was written (changed meanwhile, or no such account).
pub async fn update(
    db: &Db,
    tenant: TenantId,
    id: Uuid,
    seen: &str,
    a: &AccountUpdate,
    site: Option<&SiteUpdate>,
) -> Result<bool, DbError> {
    let c = db.client().await?;
    let n = c
        .execute(
            "UPDATE channel_accounts SET display_name = $3, agent_id = $4, is_active = $5,
                access_token_secret = $6, waba_id = $7
          WHERE user_id = $1 AND id = $2 AND updated_at = $8::text::timestamptz",
            &[
                &tenant.0,
                &id,
                &a.display_name,
                &a.agent_id,
                &a.is_active,
                &a.access_token_secret,
                &a.waba_id,
                &seen,
            ],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    if let Some(site) = site {
        c.execute(
            "UPDATE webchat_sites SET allowed_origins = $3, is_active = $4, require_identity = $6,
                    identity_secret = CASE WHEN $7 THEN $5 ELSE identity_secret END
              WHERE user_id = $1 AND channel_account_id = $2",
            &[
                &tenant.0,
                &id,
                &site.allowed_origins,
                &a.is_active,
                &site.identity_secret.clone().flatten(),
                &site.require_identity,
                &site.identity_secret.is_some(),
            ],
        )
        .await?;
    }
    Ok(true)
}

/// Soft delete of an account and its web chat site. False when there is no such account.
pub async fn deactivate(db: &Db, tenant: TenantId, id: Uuid) -> Result<bool, DbError> {
    let c = db.client().await?;
    let n = c
        .execute(
            "WITH s AS (UPDATE webchat_sites SET is_active = false
                         WHERE user_id = $1 AND channel_account_id = $2)
             UPDATE channel_accounts SET is_active = false WHERE user_id = $1 AND id = $2",
            &[&tenant.0, &id],
        )
        .await?;
    Ok(n > 0)
}
