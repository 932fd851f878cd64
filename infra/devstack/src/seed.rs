//! The demo tenant of the local stack: one WhatsApp number and one Instagram account (the ids
//! used by `events/`), an agent with prices, and credits. Idempotent: a second run finds the
//! tenant through its WhatsApp number and changes nothing.

use shared::db::{store, Db, DbError, TenantId};
use shared::envelope::Channel;

/// `phone_number_id` of the sample WhatsApp events.
pub const DEMO_WHATSAPP_NUMBER: &str = "106540352242922";
/// Instagram professional account id of the sample Instagram events.
pub const DEMO_INSTAGRAM_ACCOUNT: &str = "17841400000000000";
pub const DEMO_CREDITS: i64 = 100_000;
pub const DEMO_INSTRUCTIONS: &str = "You are the assistant of Demo Realty, a small agency \
renting flats in Mexico City. Answer in the customer's language, in at most three sentences. \
Ask for the customer's name and email when they want a visit or a quote.";

#[derive(Debug, Clone, PartialEq)]
pub struct Seeded {
    pub tenant: TenantId,
    pub created: bool,
}

/// Applies the migrations and makes sure the demo tenant exists.
pub async fn seed(db: &Db, model: &str) -> Result<Seeded, DbError> {
    db.migrate().await?;
    if let Some(route) =
        store::resolve_channel_account(db, Channel::Whatsapp, DEMO_WHATSAPP_NUMBER).await?
    {
        return Ok(Seeded {
            tenant: route.tenant,
            created: false,
        });
    }
    let tenant = store::create_tenant(db, "Demo Realty").await?;
    let agent = store::create_agent(db, tenant, "Demo assistant", model, DEMO_INSTRUCTIONS).await?;
    store::set_agent_pricing(db, tenant, agent, 1, 4, 10).await?;
    store::create_channel_account(
        db,
        tenant,
        Channel::Whatsapp,
        DEMO_WHATSAPP_NUMBER,
        Some(agent),
        None,
    )
    .await?;
    store::create_channel_account(
        db,
        tenant,
        Channel::Instagram,
        DEMO_INSTAGRAM_ACCOUNT,
        Some(agent),
        None,
    )
    .await?;
    store::top_up(db, tenant, DEMO_CREDITS, "top_up", Some("demo seed")).await?;
    Ok(Seeded {
        tenant,
        created: true,
    })
}
