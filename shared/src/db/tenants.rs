//! Tenants (`tenants`): the businesses this deployment serves.
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use serde_json::Value as Json;
use uuid::Uuid;

use super::{json_row, json_rows, Db, DbError, TenantId};

/// Creates a tenant with an empty credit account (platform operation).
pub async fn create_tenant(db: &Db, name: &str) -> Result<TenantId, DbError> {
    let c = db.client().await?;
    let row = c
        .query_one(
            "WITH t AS (INSERT INTO tenants (name) VALUES ($1) RETURNING id),
                  a AS (INSERT INTO credit_accounts (user_id) SELECT id FROM t)
             SELECT id FROM t",
            &[&name],
        )
        .await?;
    Ok(TenantId(row.get(0)))
}

/// Sets (or clears, with `None`) the tenant's outbound webhook.
pub async fn set_tenant_webhook(
    db: &Db,
    tenant: TenantId,
    url: Option<&str>,
    secret: Option<&str>,
) -> Result<bool, DbError> {
    let c = db.client().await?;
    let n = c
        .execute(
            "UPDATE tenants SET webhook_url = $2, webhook_secret = $3 WHERE id = $1",
            &[&tenant.0, &url, &secret],
        )
        .await?;
    Ok(n == 1)
}

/// A tenant as the admin API shows it.
const COLUMNS: &str = "t.id, t.name, t.is_active, t.created_at, t.updated_at,
    ca.balance, t.webhook_url IS NOT NULL AS webhook_configured";

/// Every tenant, oldest first, after the keyset `after` ((created_at, id) as text), at most
/// `limit`, each with its keyset `_k` (platform).
pub async fn list_json(
    db: &Db,
    after: (Option<String>, Option<String>),
    limit: i64,
) -> Result<Vec<Json>, DbError> {
    json_rows(
        db,
        &format!(
            "SELECT to_jsonb(x) FROM (
               SELECT {COLUMNS}, jsonb_build_array(t.created_at::text, t.id) AS _k
                 FROM tenants t LEFT JOIN credit_accounts ca ON ca.user_id = t.id
                WHERE $1::text IS NULL OR (t.created_at, t.id) > ($1::timestamptz, $2::text::uuid)
                ORDER BY t.created_at, t.id LIMIT $3) x"
        ),
        &[&after.0, &after.1, &limit],
    )
    .await
}

/// One tenant as the admin API shows it (platform).
pub async fn get_json(db: &Db, id: Uuid) -> Result<Option<Json>, DbError> {
    json_row(
        db,
        &format!(
            "SELECT to_jsonb(x) FROM (SELECT {COLUMNS}
               FROM tenants t LEFT JOIN credit_accounts ca ON ca.user_id = t.id WHERE t.id = $1) x"
        ),
        &[&id],
    )
    .await
}

/// `{id, name}` of a tenant.
pub async fn name_json(db: &Db, tenant: TenantId) -> Result<Option<Json>, DbError> {
    json_row(
        db,
        "SELECT jsonb_build_object('id', id, 'name', name) FROM tenants WHERE id = $1",
        &[&tenant.0],
    )
    .await
}

/// The tenant `id`, if there is one (platform routes name tenants by id).
pub async fn existing(db: &Db, id: Uuid) -> Result<Option<TenantId>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt("SELECT id FROM tenants WHERE id = $1", &[&id])
        .await?;
    Ok(row.map(|r| TenantId(r.get(0))))
}

/// Soft delete. False when there is no such tenant.
pub async fn deactivate(db: &Db, id: Uuid) -> Result<bool, DbError> {
    let c = db.client().await?;
    let n = c
        .execute("UPDATE tenants SET is_active = false WHERE id = $1", &[&id])
        .await?;
    Ok(n > 0)
}

/// The tenant's webhook URL and how many events wait or failed.
pub async fn webhook_json(db: &Db, tenant: TenantId) -> Result<Option<Json>, DbError> {
    json_row(
        db,
        "SELECT jsonb_build_object(
                  'url', t.webhook_url,
                  'pending_deliveries', (SELECT count(*) FROM webhook_deliveries d
                                          WHERE d.user_id = t.id AND d.status = 'pending'),
                  'failed_deliveries', (SELECT count(*) FROM webhook_deliveries d
                                         WHERE d.user_id = t.id AND d.status = 'failed'))
           FROM tenants t WHERE t.id = $1",
        &[&tenant.0],
    )
    .await
}

/// Sets the tenant's webhook URL and, the first time or when `rotate`, its signing secret to
/// `candidate`, in one statement (two first calls at once cannot each be shown a secret only
/// one of them stored). `Some(true)` when `candidate` is now the secret; `None` without such
/// a tenant.
pub async fn set_webhook_url(
    db: &Db,
    tenant: TenantId,
    url: &str,
    rotate: bool,
    candidate: &str,
) -> Result<Option<bool>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "UPDATE tenants SET webhook_url = $2,
                    webhook_secret = CASE WHEN $3 OR webhook_secret IS NULL THEN $4 ELSE webhook_secret END
              WHERE id = $1
              RETURNING webhook_secret = $4",
            &[&tenant.0, &url, &rotate, &candidate],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
