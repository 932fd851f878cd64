//! Admin API keys: issued once, stored as a SHA-256 with a visible prefix, revocable, with the
//! time of last use.
//!
//! A key reads `aak_<8 chars>_<43 chars>`: the part up to the second `_` is the prefix (stored
//! and shown as is), the rest is 256 random bits in base64url. Authentication finds the row by
//! prefix and compares the hash in constant time, so a wrong key costs one indexed lookup and
//! tells nothing about which keys exist.

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{Db, DbError, TenantId};

/// Start of every key (so leaked keys are easy to scan for).
pub const KEY_PREFIX: &str = "aak_";
/// `last_used_at` is written at most this often per key.
pub const LAST_USED_GRANULARITY_SECS: i64 = 60;

/// What a key may do. Tenant roles are ordered: viewer < agent < owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Agent,
    Owner,
    /// The operator's key: tenants and credit top-ups, no tenant of its own.
    Platform,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Agent => "agent",
            Role::Owner => "owner",
            Role::Platform => "platform",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "agent" => Role::Agent,
            "owner" => Role::Owner,
            "platform" => Role::Platform,
            _ => return None,
        })
    }
}

/// Who is calling, once a key checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    /// `None` for the platform key.
    pub tenant: Option<TenantId>,
    pub role: Role,
}

impl Principal {
    /// Whether this caller may act with `required` inside `tenant` (the platform key acts in
    /// no tenant; a tenant key only in its own, and only at or above the required role).
    pub fn may(&self, tenant: TenantId, required: Role) -> bool {
        self.role != Role::Platform && self.tenant == Some(tenant) && self.role >= required
    }
}

/// A newly issued key: the plaintext exists only here.
#[derive(Debug)]
pub struct IssuedKey {
    pub id: Uuid,
    pub prefix: String,
    pub key: String,
}

fn sha256(s: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, s.as_bytes())
        .as_ref()
        .to_vec()
}

/// Issues a key. `tenant` is `None` exactly for [`Role::Platform`].
pub async fn issue(
    db: &Db,
    tenant: Option<TenantId>,
    role: Role,
    name: &str,
) -> Result<IssuedKey, DbError> {
    if (role == Role::Platform) != tenant.is_none() {
        return Err(DbError::Invalid(
            "a platform key has no tenant and a tenant key has one".into(),
        ));
    }
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let prefix: String = KEY_PREFIX
        .chars()
        .chain(
            crate::random_bytes::<8>()
                .iter()
                .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char),
        )
        .collect();
    let key = format!(
        "{prefix}_{}",
        URL_SAFE_NO_PAD.encode(crate::random_bytes::<32>())
    );
    let c = db.client().await?;
    let row = c
        .query_one(
            "INSERT INTO api_keys (user_id, role, name, prefix, secret_sha256)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &tenant.map(|t| t.uuid()),
                &role.as_str(),
                &name,
                &prefix,
                &sha256(&key),
            ],
        )
        .await?;
    Ok(IssuedKey {
        id: row.get(0),
        prefix,
        key,
    })
}

/// The caller behind `presented`, or `None` for a malformed, unknown, revoked or mismatching
/// key, or one whose tenant is inactive. Records the use (at most once a minute per key).
pub async fn authenticate(db: &Db, presented: &str) -> Result<Option<Principal>, DbError> {
    let presented = presented.trim();
    let Some(prefix) = presented
        .strip_prefix(KEY_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(p, _)| &presented[..KEY_PREFIX.len() + p.len()])
    else {
        return Ok(None);
    };
    if presented.len() > 200 {
        return Ok(None);
    }
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT k.id, k.user_id, k.role, k.secret_sha256,
                    k.last_used_at IS NULL OR k.last_used_at < now() - make_interval(secs => $2)
               FROM api_keys k LEFT JOIN tenants t ON t.id = k.user_id
              WHERE k.prefix = $1 AND k.revoked_at IS NULL
                AND (k.user_id IS NULL OR t.is_active)",
            &[&prefix, &(LAST_USED_GRANULARITY_SECS as f64)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.get(3);
    if !bool::from(stored.as_slice().ct_eq(sha256(presented).as_slice())) {
        return Ok(None);
    }
    let id: Uuid = row.get(0);
    if row.get::<_, bool>(4) {
        c.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    }
    let Some(role) = Role::parse(row.get(2)) else {
        return Ok(None);
    };
    Ok(Some(Principal {
        key_id: id,
        tenant: row.get::<_, Option<Uuid>>(1).map(TenantId::from_trusted),
        role,
    }))
}

/// Revokes a key of `tenant` (`None`: a platform key). False when there is no such live key in
/// that scope; another tenant's key id behaves as unknown.
pub async fn revoke(db: &Db, tenant: Option<TenantId>, key_id: Uuid) -> Result<bool, DbError> {
    let c = db.client().await?;
    let n = c
        .execute(
            "UPDATE api_keys SET revoked_at = now()
              WHERE id = $1 AND user_id IS NOT DISTINCT FROM $2 AND revoked_at IS NULL",
            &[&key_id, &tenant.map(|t| t.uuid())],
        )
        .await?;
    Ok(n == 1)
}

/// The tenant's keys as the admin API lists them (newest first; never a hash).
pub async fn list_json(db: &Db, tenant: TenantId) -> Result<Vec<serde_json::Value>, DbError> {
    super::json_rows(
        db,
        "SELECT to_jsonb(x) FROM (
           SELECT id, name, role, prefix, created_at, last_used_at, revoked_at
             FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id) x",
        &[&tenant.0],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tenants;
    use crate::db::testing::TestDb;

    #[test]
    fn roles_are_ordered_inside_a_tenant_and_the_platform_acts_in_none() {
        let t = TenantId::from_trusted(Uuid::new_v4());
        let other = TenantId::from_trusted(Uuid::new_v4());
        let p = |tenant: Option<TenantId>, role| Principal {
            key_id: Uuid::nil(),
            tenant,
            role,
        };
        assert!(p(Some(t), Role::Owner).may(t, Role::Agent));
        assert!(p(Some(t), Role::Agent).may(t, Role::Agent));
        assert!(!p(Some(t), Role::Viewer).may(t, Role::Agent));
        assert!(!p(Some(t), Role::Owner).may(other, Role::Viewer));
        assert!(!p(None, Role::Platform).may(t, Role::Viewer));
        for r in [Role::Viewer, Role::Agent, Role::Owner, Role::Platform] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[tokio::test]
    async fn a_key_authenticates_until_revoked_and_only_as_itself() {
        let t = TestDb::new().await;
        let tenant = tenants::create_tenant(&t.db, "Shop").await.unwrap();
        let k = issue(&t.db, Some(tenant), Role::Agent, "support desk")
            .await
            .unwrap();
        assert!(k.key.starts_with(&k.prefix) && k.prefix.starts_with(KEY_PREFIX));
        assert_eq!(k.prefix.len(), KEY_PREFIX.len() + 8);
        let who = authenticate(&t.db, &k.key).await.unwrap().unwrap();
        assert_eq!(
            who,
            Principal {
                key_id: k.id,
                tenant: Some(tenant),
                role: Role::Agent
            }
        );
        let c = t.db.client().await.unwrap();
        let (hash, used): (Vec<u8>, bool) = {
            let r = c
                .query_one(
                    "SELECT secret_sha256, last_used_at IS NOT NULL FROM api_keys WHERE id = $1",
                    &[&k.id],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_ne!(hash, k.key.as_bytes(), "only the hash is stored");
        assert!(used, "last use recorded");

        // The right prefix with a wrong secret, garbage, and another key's secret fail.
        let wrong = format!("{}_{}", k.prefix, "A".repeat(43));
        let other = issue(&t.db, Some(tenant), Role::Viewer, "other")
            .await
            .unwrap();
        let swapped = format!("{}_{}", k.prefix, other.key.rsplit('_').next().unwrap());
        for bad in [
            wrong.as_str(),
            "",
            "aak_",
            "Bearer x",
            swapped.as_str(),
            &"aak_x_".repeat(50),
        ] {
            assert_eq!(authenticate(&t.db, bad).await.unwrap(), None, "{bad}");
        }

        // Revocation is immediate, and scoped: another tenant cannot revoke it.
        let stranger = tenants::create_tenant(&t.db, "Other").await.unwrap();
        assert!(!revoke(&t.db, Some(stranger), k.id).await.unwrap());
        assert!(authenticate(&t.db, &k.key).await.unwrap().is_some());
        assert!(revoke(&t.db, Some(tenant), k.id).await.unwrap());
        assert_eq!(authenticate(&t.db, &k.key).await.unwrap(), None);
        assert!(
            !revoke(&t.db, Some(tenant), k.id).await.unwrap(),
            "already revoked"
        );

        // A deactivated tenant's keys stop working.
        c.execute(
            "UPDATE tenants SET is_active = false WHERE id = $1",
            &[&tenant.uuid()],
        )
        .await
        .unwrap();
        assert_eq!(authenticate(&t.db, &other.key).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_platform_key_has_no_tenant_and_tenant_keys_need_one() {
        let t = TestDb::new().await;
        let p = issue(&t.db, None, Role::Platform, "operator")
            .await
            .unwrap();
        let who = authenticate(&t.db, &p.key).await.unwrap().unwrap();
        assert_eq!((who.tenant, who.role), (None, Role::Platform));
        assert!(issue(&t.db, None, Role::Owner, "x").await.is_err());
        let tenant = tenants::create_tenant(&t.db, "Shop").await.unwrap();
        assert!(issue(&t.db, Some(tenant), Role::Platform, "x")
            .await
            .is_err());
        assert!(
            !revoke(&t.db, Some(tenant), p.id).await.unwrap(),
            "not a tenant's key"
        );
        assert!(revoke(&t.db, None, p.id).await.unwrap());
    }
}
