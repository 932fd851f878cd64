//! Tenants (`tenants`): the businesses this deployment serves.
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use super::{Db, DbError, TenantId};

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
