//! The demo tenant of the local stack: one WhatsApp number and one Instagram account (the ids
//! used by `events/`), an agent with prices, and credits. Idempotent: a second run finds the
//! tenant through its WhatsApp number and changes nothing.

use shared::db::apikeys::{self, Role};
use shared::db::{agents, channels, credits, tenants, webchat, Db, DbError, TenantId};
use shared::envelope::Channel;

/// `phone_number_id` of the sample WhatsApp events.
pub const DEMO_WHATSAPP_NUMBER: &str = "106540352242922";
/// Instagram professional account id of the sample Instagram events.
pub const DEMO_INSTAGRAM_ACCOUNT: &str = "17841400000000000";
/// Site key of the demo web chat site (the demo page's widget).
pub const DEMO_WEBCHAT_SITE: &str = "site_demo";
pub const DEMO_CREDITS: i64 = 100_000;
pub const DEMO_INSTRUCTIONS: &str = "You are the assistant of Demo Realty, a small agency \
renting flats in Mexico City. Answer in the customer's language, in at most three sentences. \
Ask for the customer's name and email when they want a visit or a quote.";

#[derive(Debug, Clone, PartialEq)]
pub struct Seeded {
    pub tenant: TenantId,
    pub created: bool,
}

/// Applies the migrations and makes sure the demo tenant exists, with its web chat site
/// allowing `webchat_origins` (the demo page's origin, which depends on the local ports).
pub async fn seed(db: &Db, model: &str, webchat_origins: &[String]) -> Result<Seeded, DbError> {
    db.migrate().await?;
    if let Some(route) =
        channels::resolve_channel_account(db, Channel::Whatsapp, DEMO_WHATSAPP_NUMBER).await?
    {
        ensure_site(db, route.tenant, route.agent_id, webchat_origins).await?;
        return Ok(Seeded {
            tenant: route.tenant,
            created: false,
        });
    }
    let tenant = tenants::create_tenant(db, "Demo Realty").await?;
    let agent =
        agents::create_agent(db, tenant, "Demo assistant", model, DEMO_INSTRUCTIONS).await?;
    agents::set_agent_pricing(db, tenant, agent, 1, 4, 10).await?;
    channels::create_channel_account(
        db,
        tenant,
        Channel::Whatsapp,
        DEMO_WHATSAPP_NUMBER,
        Some(agent),
        None,
    )
    .await?;
    channels::create_channel_account(
        db,
        tenant,
        Channel::Instagram,
        DEMO_INSTAGRAM_ACCOUNT,
        Some(agent),
        None,
    )
    .await?;
    ensure_site(db, tenant, Some(agent), webchat_origins).await?;
    credits::top_up(db, tenant, DEMO_CREDITS, "top_up", Some("demo seed")).await?;
    Ok(Seeded {
        tenant,
        created: true,
    })
}

/// The demo web chat site, created if missing (databases seeded before web chat existed get it
/// too), with its allowed origins set to `origins`.
async fn ensure_site(
    db: &Db,
    tenant: TenantId,
    agent: Option<uuid::Uuid>,
    origins: &[String],
) -> Result<(), DbError> {
    if !webchat::set_allowed_origins(db, tenant, DEMO_WEBCHAT_SITE, origins).await? {
        webchat::create_site(
            db,
            tenant,
            &webchat::NewSite {
                site_key: DEMO_WEBCHAT_SITE,
                agent_id: agent,
                allowed_origins: origins,
                ..webchat::NewSite::default()
            },
        )
        .await?;
    }
    Ok(())
}

/// Names of the keys `make dev` issues (so the next run can retire them).
pub const DEV_PLATFORM_KEY: &str = "make dev platform";
pub const DEV_OWNER_KEY: &str = "make dev owner";

/// Fresh admin API keys for the local stack: a platform key and an owner key of the demo
/// tenant. Keys are shown once, so each run revokes the previous run's and issues new ones.
pub async fn dev_keys(db: &Db, tenant: TenantId) -> Result<(String, String), DbError> {
    let c = db.client().await?;
    c.execute(
        "UPDATE api_keys SET revoked_at = now()
          WHERE revoked_at IS NULL AND ((user_id IS NULL AND name = $1) OR (user_id = $2 AND name = $3))",
        &[&DEV_PLATFORM_KEY, &tenant.uuid(), &DEV_OWNER_KEY],
    )
    .await?;
    let platform = apikeys::issue(db, None, Role::Platform, DEV_PLATFORM_KEY).await?;
    let owner = apikeys::issue(db, Some(tenant), Role::Owner, DEV_OWNER_KEY).await?;
    Ok((platform.key, owner.key))
}
