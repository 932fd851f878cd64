//! Web chat sites: a `webchat` channel account (provider id = the public site key) plus the
//! origins its widget may run on and the identity verification secret.

use uuid::Uuid;

use super::{Db, DbError, TenantId};

/// A site as the web chat endpoints need it.
#[derive(Debug, Clone, PartialEq)]
pub struct WebchatSite {
    pub tenant: TenantId,
    pub channel_account_id: Uuid,
    pub site_key: String,
    pub agent_id: Option<Uuid>,
    pub allowed_origins: Vec<String>,
    pub identity_secret: Option<String>,
    pub require_identity: bool,
}

/// Settings of a new site.
#[derive(Debug, Clone, Default)]
pub struct NewSite<'a> {
    pub site_key: &'a str,
    pub agent_id: Option<Uuid>,
    pub allowed_origins: &'a [String],
    pub identity_secret: Option<&'a str>,
    pub require_identity: bool,
}

/// Creates the channel account and its site settings in one transaction.
pub async fn create_site(db: &Db, tenant: TenantId, site: &NewSite<'_>) -> Result<Uuid, DbError> {
    let c = db.client().await?;
    let row = c
        .query_one(
            "WITH account AS (
               INSERT INTO channel_accounts (user_id, channel, provider_account_id, agent_id)
               VALUES ($1, 'webchat', $2, $3) RETURNING id, user_id)
             INSERT INTO webchat_sites (channel_account_id, user_id, allowed_origins, identity_secret, require_identity)
             SELECT id, user_id, $4, $5, $6 FROM account
             RETURNING channel_account_id",
            &[
                &tenant.uuid(),
                &site.site_key,
                &site.agent_id,
                &site.allowed_origins,
                &site.identity_secret,
                &site.require_identity,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// The active site behind a public site key (the lookup that learns the tenant, like the
/// channel account routing). `None` for an unknown or inactive site or tenant.
pub async fn site_by_key(db: &Db, site_key: &str) -> Result<Option<WebchatSite>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT ca.user_id, ca.id, ca.agent_id, s.allowed_origins, s.identity_secret, s.require_identity
               FROM channel_accounts ca
               JOIN webchat_sites s ON s.channel_account_id = ca.id AND s.user_id = ca.user_id
               JOIN tenants t ON t.id = ca.user_id
              WHERE ca.channel = 'webchat' AND ca.provider_account_id = $1
                AND ca.is_active AND s.is_active AND t.is_active",
            &[&site_key],
        )
        .await?;
    Ok(row.map(|r| WebchatSite {
        tenant: TenantId::from_trusted(r.get(0)),
        channel_account_id: r.get(1),
        site_key: site_key.to_owned(),
        agent_id: r.get(2),
        allowed_origins: r.get(3),
        identity_secret: r.get(4),
        require_identity: r.get(5),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::store;
    use crate::db::testing::TestDb;

    #[tokio::test]
    async fn a_site_is_found_by_its_key_only_while_active() {
        let t = TestDb::new().await;
        let tenant = store::create_tenant(&t.db, "Shop").await.unwrap();
        let agent = store::create_agent(&t.db, tenant, "a", "gpt-test", "")
            .await
            .unwrap();
        let origins = vec!["https://shop.example.com".to_owned()];
        let id = create_site(
            &t.db,
            tenant,
            &NewSite {
                site_key: "site_shop",
                agent_id: Some(agent),
                allowed_origins: &origins,
                identity_secret: Some("a-long-identity-secret"),
                require_identity: true,
            },
        )
        .await
        .unwrap();
        let site = site_by_key(&t.db, "site_shop").await.unwrap().unwrap();
        assert_eq!(site.tenant, tenant);
        assert_eq!(site.channel_account_id, id);
        assert_eq!(site.agent_id, Some(agent));
        assert_eq!(site.allowed_origins, origins);
        assert_eq!(
            site.identity_secret.as_deref(),
            Some("a-long-identity-secret")
        );
        assert!(site.require_identity);
        assert!(site_by_key(&t.db, "site_other").await.unwrap().is_none());

        // The same routing as other channels: the account is a channel account of the tenant.
        let route =
            store::resolve_channel_account(&t.db, crate::envelope::Channel::Webchat, "site_shop")
                .await
                .unwrap()
                .unwrap();
        assert_eq!(route.channel_account_id, id);

        let c = t.db.client().await.unwrap();
        c.execute("UPDATE webchat_sites SET is_active = false", &[])
            .await
            .unwrap();
        assert!(site_by_key(&t.db, "site_shop").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn requiring_identity_needs_a_secret_and_a_key_is_taken_once() {
        let t = TestDb::new().await;
        let tenant = store::create_tenant(&t.db, "Shop").await.unwrap();
        let none: Vec<String> = vec![];
        let refused = create_site(
            &t.db,
            tenant,
            &NewSite {
                site_key: "site_a",
                allowed_origins: &none,
                require_identity: true,
                ..NewSite::default()
            },
        )
        .await;
        assert!(refused.is_err(), "require_identity without a secret");
        let short = create_site(
            &t.db,
            tenant,
            &NewSite {
                site_key: "site_a",
                allowed_origins: &none,
                identity_secret: Some("short"),
                ..NewSite::default()
            },
        )
        .await;
        assert!(short.is_err(), "identity secret under 16 characters");
        let ok = NewSite {
            site_key: "site_a",
            allowed_origins: &none,
            ..NewSite::default()
        };
        create_site(&t.db, tenant, &ok).await.unwrap();
        let other = store::create_tenant(&t.db, "Other").await.unwrap();
        assert!(
            create_site(&t.db, other, &ok).await.is_err(),
            "a site key routes to one tenant"
        );
    }
}
