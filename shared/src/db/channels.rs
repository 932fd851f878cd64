//! Channel accounts (`channel_accounts`): a tenant's WhatsApp numbers, Instagram accounts and
//! web chat sites, and the one lookup that is not tenant-scoped: a webhook's provider account
//! id to its tenant ([`resolve_channel_account`]).
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use uuid::Uuid;

use super::{Db, DbError, TenantId};
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
