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

/// Replaces a site's allowed origins; false when the tenant has no such site.
pub async fn set_allowed_origins(
    db: &Db,
    tenant: TenantId,
    site_key: &str,
    origins: &[String],
) -> Result<bool, DbError> {
    let c = db.client().await?;
    let n = c
        .execute(
            "UPDATE webchat_sites s SET allowed_origins = $3
               FROM channel_accounts ca
              WHERE ca.id = s.channel_account_id AND ca.user_id = $1 AND s.user_id = $1
                AND ca.channel = 'webchat' AND ca.provider_account_id = $2",
            &[&tenant.uuid(), &site_key, &origins],
        )
        .await?;
    Ok(n == 1)
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

/// A message of a visitor's conversation as the widget shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VisitorMessage {
    pub id: i64,
    /// `in` (the visitor) or `out` (the agent).
    pub direction: String,
    pub text: String,
    /// Unix milliseconds.
    pub at: i64,
    /// For the visitor's own messages, the id their browser sent it with (so the widget can
    /// match the copy it already shows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

/// The visitor's conversation on `site`: text messages after `after` (oldest first, at most
/// `limit`; with `after` = 0 the latest `limit`), and whether the visitor's latest message still
/// waits for its outcome (the agent is working on it: the typing indicator; a message without
/// an outcome after 10 minutes went to the DLQ and no longer counts).
pub async fn visitor_messages(
    db: &Db,
    site: &WebchatSite,
    visitor_id: &str,
    after: i64,
    limit: i64,
) -> Result<(Vec<VisitorMessage>, bool), DbError> {
    let c = db.client().await?;
    let rows = c
        .query(
            "WITH conv AS (
               SELECT cv.id FROM contacts ct
                 JOIN conversations cv ON cv.contact_id = ct.id AND cv.user_id = ct.user_id
                WHERE ct.user_id = $1 AND ct.channel_account_id = $2 AND ct.external_id = $3),
             picked AS (
               SELECT m.id, m.direction, m.content->>'body' AS body, m.created_at, m.provider_message_id
                 FROM messages m
                WHERE m.user_id = $1 AND m.conversation_id = (SELECT id FROM conv)
                  AND m.id > $4 AND m.content->>'type' = 'text'
                  AND (m.direction = 'in' OR m.status <> 'failed')
                -- a reload gets the latest page; a cursor gets the next page, none skipped
                ORDER BY CASE WHEN $4 = 0 THEN -m.id ELSE m.id END LIMIT $5),
             last_in AS (
               SELECT outcome, created_at FROM messages
                WHERE user_id = $1 AND conversation_id = (SELECT id FROM conv) AND direction = 'in'
                ORDER BY id DESC LIMIT 1)
             SELECT id, direction, body, (extract(epoch FROM created_at) * 1000)::bigint,
                    provider_message_id,
                    EXISTS (SELECT 1 FROM last_in
                             WHERE outcome IS NULL AND created_at > now() - interval '10 minutes')
               FROM picked
             UNION ALL
             SELECT NULL, NULL, NULL, NULL, NULL,
                    EXISTS (SELECT 1 FROM last_in
                             WHERE outcome IS NULL AND created_at > now() - interval '10 minutes')
             ORDER BY 1 NULLS LAST",
            &[
                &site.tenant.uuid(),
                &site.channel_account_id,
                &visitor_id,
                &after,
                &limit,
            ],
        )
        .await?;
    let pending = rows.last().map(|r| r.get::<_, bool>(5)).unwrap_or(false);
    let own_prefix = format!("wc.{visitor_id}.");
    let messages = rows
        .iter()
        .filter_map(|r| {
            let direction: String = r.get::<_, Option<String>>(1)?;
            let client_message_id = r
                .get::<_, Option<String>>(4)
                .filter(|_| direction == "in")
                .and_then(|p| p.strip_prefix(&own_prefix).map(str::to_owned));
            Some(VisitorMessage {
                id: r.get::<_, Option<i64>>(0)?,
                direction,
                text: r.get(2),
                at: r.get(3),
                client_message_id,
            })
        })
        .collect();
    Ok((messages, pending))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::TestDb;
    use crate::db::{agents, channels, conversations, tenants};

    #[tokio::test]
    async fn a_site_is_found_by_its_key_only_while_active() {
        let t = TestDb::new().await;
        let tenant = tenants::create_tenant(&t.db, "Shop").await.unwrap();
        let agent = agents::create_agent(&t.db, tenant, "a", "gpt-test", "")
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
        let route = channels::resolve_channel_account(
            &t.db,
            crate::envelope::Channel::Webchat,
            "site_shop",
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(route.channel_account_id, id);

        let more = vec![
            "https://shop.example.com".to_owned(),
            "http://127.0.0.1:9100".to_owned(),
        ];
        assert!(set_allowed_origins(&t.db, tenant, "site_shop", &more)
            .await
            .unwrap());
        let other = tenants::create_tenant(&t.db, "Other").await.unwrap();
        assert!(
            !set_allowed_origins(&t.db, other, "site_shop", &[])
                .await
                .unwrap(),
            "another tenant cannot touch the site"
        );
        assert_eq!(
            site_by_key(&t.db, "site_shop")
                .await
                .unwrap()
                .unwrap()
                .allowed_origins,
            more
        );

        let c = t.db.client().await.unwrap();
        c.execute("UPDATE webchat_sites SET is_active = false", &[])
            .await
            .unwrap();
        assert!(site_by_key(&t.db, "site_shop").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_visitor_sees_only_their_own_conversation_with_the_pending_flag() {
        let t = TestDb::new().await;
        let tenant = tenants::create_tenant(&t.db, "Shop").await.unwrap();
        let none: Vec<String> = vec![];
        create_site(
            &t.db,
            tenant,
            &NewSite {
                site_key: "site_shop",
                allowed_origins: &none,
                ..NewSite::default()
            },
        )
        .await
        .unwrap();
        let site = site_by_key(&t.db, "site_shop").await.unwrap().unwrap();
        let (empty, pending) = visitor_messages(&t.db, &site, "v1", 0, 50).await.unwrap();
        assert!(empty.is_empty() && !pending, "no conversation yet");

        let c = t.db.client().await.unwrap();
        let mut conv = std::collections::HashMap::new();
        for vid in ["v1", "v2"] {
            let contact_id = conversations::upsert_contact(
                &t.db,
                tenant,
                site.channel_account_id,
                vid,
                None,
                None,
                None,
            )
            .await
            .unwrap()
            .unwrap();
            let cv =
                conversations::conversation_for(&t.db, tenant, site.channel_account_id, contact_id)
                    .await
                    .unwrap()
                    .unwrap();
            conv.insert(vid, cv.id);
        }
        for (vid, dir, body, outcome, provider_id) in [
            ("v1", "in", "hola", Some("replied"), Some("wc.v1.c-1")),
            ("v1", "out", "¡hola!", None, Some("wc.out.1")),
            ("v2", "in", "otro visitante", None, None),
            ("v1", "in", "¿precio?", None, None),
        ] {
            c.execute(
                "INSERT INTO messages (user_id, conversation_id, channel_account_id, direction, content, status, outcome, provider_message_id)
                 VALUES ($1, $2, $3, $4, jsonb_build_object('type', 'text', 'body', $5::text), 'sent', $6, $7)",
                &[&tenant.uuid(), &conv[vid], &site.channel_account_id, &dir, &body, &outcome, &provider_id],
            )
            .await
            .unwrap();
        }
        let (all, pending) = visitor_messages(&t.db, &site, "v1", 0, 50).await.unwrap();
        let texts: Vec<_> = all
            .iter()
            .map(|m| (m.direction.as_str(), m.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [("in", "hola"), ("out", "¡hola!"), ("in", "¿precio?")]
        );
        assert!(pending, "the last question has no outcome yet");
        assert_eq!(all[0].client_message_id.as_deref(), Some("c-1"));
        assert_eq!(
            all[1].client_message_id, None,
            "only the visitor's own messages"
        );
        let (later, _) = visitor_messages(&t.db, &site, "v1", all[1].id, 50)
            .await
            .unwrap();
        assert_eq!(later.len(), 1);
        let (latest, _) = visitor_messages(&t.db, &site, "v1", 0, 2).await.unwrap();
        assert_eq!(latest.len(), 2, "the latest two, oldest first");
        assert_eq!(latest[1].text, "¿precio?");
        assert!(latest[0].at > 0);
        // A cursor pages forward: the next message, not the newest.
        let (next, _) = visitor_messages(&t.db, &site, "v1", all[0].id, 1)
            .await
            .unwrap();
        assert_eq!(next[0].id, all[1].id);
        // Only the latest visitor message decides `pending`: an older one left without an
        // outcome (it went to the DLQ) does not keep the typing indicator on.
        c.execute(
            "UPDATE messages SET outcome = CASE WHEN content->>'body' = 'hola' THEN NULL ELSE 'replied' END
              WHERE direction = 'in' AND conversation_id = $1",
            &[&conv["v1"]],
        )
        .await
        .unwrap();
        let (_, pending) = visitor_messages(&t.db, &site, "v1", 0, 50).await.unwrap();
        assert!(!pending);
    }

    #[tokio::test]
    async fn requiring_identity_needs_a_secret_and_a_key_is_taken_once() {
        let t = TestDb::new().await;
        let tenant = tenants::create_tenant(&t.db, "Shop").await.unwrap();
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
        let other = tenants::create_tenant(&t.db, "Other").await.unwrap();
        assert!(
            create_site(&t.db, other, &ok).await.is_err(),
            "a site key routes to one tenant"
        );
    }
}
