//! Credits (`credit_accounts`, `credit_ledger`): balances and the append-only ledger. Every
//! charge is the same SQL, [`charge_ctes`], inside the statement that records what it pays
//! for: it takes at most the balance (never below zero) and writes its ledger row, so the
//! charge and its cause commit together and concurrent charges serialise on the account row.
//!
//! Each query takes the tenant and filters on `user_id`, so a call with another tenant's ids
//! finds nothing and changes nothing.

use super::{Db, DbError, TenantId};

/// What a charge takes and why, as SQL expressions of the statement it is part of (whose `$1`
/// is the tenant).
pub(crate) struct ChargeSql<'a> {
    /// Credits asked for.
    pub amount: &'a str,
    /// Charge only when this holds (e.g. the statement's subject exists).
    pub when: &'a str,
    /// Credits of the account's holds to release with the charge, if any.
    pub release_held: Option<&'a str>,
    pub reason: &'a str,
    pub reference: &'a str,
}

/// The common table expressions of a charge of the tenant `$1`, to follow other CTEs of one
/// statement: `cur` (the account, locked, and what can be taken), `acc` (the new `balance`
/// and the `take`), `led` (the ledger row, when anything was taken).
pub(crate) fn charge_ctes(c: &ChargeSql<'_>) -> String {
    let release = c
        .release_held
        .map(|h| format!(", held = GREATEST(a.held - ({h}), 0)"))
        .unwrap_or_default();
    format!(
        "cur AS (
           SELECT a.user_id, LEAST(a.balance, {amount}) AS take
             FROM credit_accounts a WHERE a.user_id = $1 AND ({when}) FOR UPDATE OF a),
         acc AS (
           UPDATE credit_accounts a SET balance = a.balance - cur.take{release}
             FROM cur WHERE a.user_id = cur.user_id RETURNING a.balance, cur.take),
         led AS (
           INSERT INTO credit_ledger (user_id, delta, balance_after, reason, reference)
           SELECT $1, -take, balance, {reason}, {reference} FROM acc WHERE take > 0)",
        amount = c.amount,
        when = c.when,
        reason = c.reason,
        reference = c.reference,
    )
}

/// The outcome of a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub requested: i64,
    /// What could be taken: `requested`, or the whole balance if it was smaller.
    pub charged: i64,
    pub balance_after: i64,
}

/// Adds credits. Returns the new balance, or `None` if the tenant has no credit account.
pub async fn top_up(
    db: &Db,
    tenant: TenantId,
    amount: i64,
    reason: &str,
    reference: Option<&str>,
) -> Result<Option<i64>, DbError> {
    if amount <= 0 {
        return Err(DbError::Invalid("a top-up must be positive".into()));
    }
    let c = db.client().await?;
    let row = c
        .query_opt(
            "WITH acc AS (
               UPDATE credit_accounts SET balance = balance + $2 WHERE user_id = $1 RETURNING balance),
             led AS (
               INSERT INTO credit_ledger (user_id, delta, balance_after, reason, reference)
               SELECT $1, $2, balance, $3, $4 FROM acc)
             SELECT balance FROM acc",
            &[&tenant.0, &amount, &reason, &reference],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Takes up to `amount` credits: all of it when the balance allows, else what is left, never
/// going below zero. The balance change and its ledger row are one statement, so one
/// transaction; concurrent charges serialise on the account row.
/// (Tests only: feature `testing`.)
#[cfg(any(test, feature = "testing"))]
pub async fn charge(
    db: &Db,
    tenant: TenantId,
    amount: i64,
    reason: &str,
    reference: Option<&str>,
) -> Result<Option<Charge>, DbError> {
    if amount < 0 {
        return Err(DbError::Invalid("a charge cannot be negative".into()));
    }
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH {} SELECT balance, take FROM acc",
            charge_ctes(&ChargeSql {
                amount: "$2",
                when: "TRUE",
                release_held: None,
                reason: "$3",
                reference: "$4",
            })
        )
    });
    let c = db.client().await?;
    let row = c
        .query_opt(SQL.as_str(), &[&tenant.0, &amount, &reason, &reference])
        .await?;
    Ok(row.map(|r| Charge {
        requested: amount,
        balance_after: r.get(0),
        charged: r.get(1),
    }))
}

/// Balance and ledger sum of a tenant (they are always equal).
/// (Tests only: feature `testing`.)
#[cfg(any(test, feature = "testing"))]
pub async fn credit_state(db: &Db, tenant: TenantId) -> Result<Option<(i64, i64)>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT a.balance, COALESCE((SELECT sum(delta) FROM credit_ledger l WHERE l.user_id = $1), 0)::bigint
               FROM credit_accounts a WHERE a.user_id = $1",
            &[&tenant.0],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Balance of a tenant's credit account. Read on every processed message, so it reads the one
/// row and never sums the ledger (that is `credit_state`, for audits and tests).
pub async fn balance(db: &Db, tenant: TenantId) -> Result<Option<i64>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT balance FROM credit_accounts WHERE user_id = $1",
            &[&tenant.0],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// The balance as the admin API shows it.
pub async fn account_json(db: &Db, tenant: TenantId) -> Result<Option<serde_json::Value>, DbError> {
    super::json_row(
        db,
        "SELECT jsonb_build_object('balance', balance, 'updated_at', updated_at)
           FROM credit_accounts WHERE user_id = $1",
        &[&tenant.0],
    )
    .await
}

/// Ledger rows, newest first, before ledger id `before` (text), at most `limit`, each with its
/// keyset `_k`.
pub async fn ledger_json(
    db: &Db,
    tenant: TenantId,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<serde_json::Value>, DbError> {
    super::json_rows(
        db,
        "SELECT to_jsonb(x) FROM (
           SELECT id, delta, balance_after, reason, reference, created_at, jsonb_build_array(id) AS _k
             FROM credit_ledger
            WHERE user_id = $1 AND ($2::text IS NULL OR id < $2::bigint)
            ORDER BY id DESC LIMIT $3) x",
        &[&tenant.0, &before, &limit],
    )
    .await
}
