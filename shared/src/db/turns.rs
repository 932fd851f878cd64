//! Where the turn engine's state lives (`turns`, V10): the claim that opens or resumes a
//! conversation's turn under a lease, with the credit hold; the lease-fenced saves before each
//! side effect; the one statement that records and charges a turn.
//!
//! Every write names the lease it holds: an invocation whose lease was taken over (it ran past
//! the lease, another delivery resumed the turn) changes nothing and stops.

use std::time::Duration;

use serde_json::Value as Json;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::credits::{charge_ctes, ChargeSql};
use super::{Db, DbError, TenantId};
use crate::turn::{Phase, Turn};

/// Outcomes that leave a message to be answered by the next turn of its conversation (the
/// model refused the request for good, e.g. exhausted OpenAI quota: once fixed, a redrive or
/// the customer's next message answers it).
pub const ANSWER_AGAIN: &[&str] = &["model_rejected"];

/// A turn this invocation holds.
#[derive(Debug, Clone)]
pub struct OpenTurn {
    pub id: Uuid,
    pub lease: Uuid,
    pub turn: Turn,
    /// Whether this claim opened it (else it resumed one a previous delivery left).
    pub created: bool,
    /// Inbound message ids (`messages.id`, in order) this claim added to the turn.
    pub covered: Vec<i64>,
    /// Credits held for it.
    pub hold: i64,
}

#[derive(Debug, Clone)]
pub enum Claim {
    Open(OpenTurn),
    /// Another invocation holds the conversation's open turn until `lease_left`.
    Busy {
        lease_left: Duration,
    },
    /// No open turn and no unanswered message: everything is answered already.
    NothingToAnswer,
    /// The balance less the open holds does not cover this turn's hold (or the agent's
    /// minimum balance): no turn was opened.
    NoCredits {
        balance: i64,
        held: i64,
    },
    /// The conversation is not the tenant's.
    NoConversation,
}

/// The terms of a new turn.
#[derive(Debug, Clone)]
pub struct ClaimTerms<'a> {
    pub lease: Duration,
    /// The state a new turn starts in.
    pub new_turn: &'a Turn,
    pub hold: i64,
    pub min_balance: i64,
    /// How long a hold counts if the turn is never settled.
    pub hold_ttl: Duration,
}

fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Asking => "asking",
        Phase::Sending => "sending",
        Phase::Settling => "settling",
        Phase::Recorded => "recorded",
        Phase::Done => "done",
    }
}

#[allow(
    clippy::expect_used,
    reason = "plain data with string keys always serialises"
)]
fn state_json(turn: &Turn) -> Json {
    serde_json::to_value(turn).expect("a turn serialises")
}

fn state_of(v: Json) -> Result<Turn, DbError> {
    serde_json::from_value(v).map_err(|e| DbError::Invalid(format!("stored turn state: {e}")))
}

/// Opens the conversation's turn, or resumes the open one when no live lease holds it. A new
/// turn covers every unanswered inbound message of the conversation (in id order) and holds
/// `terms.hold` credits; a resumed turn still asking the model takes in messages stored since.
pub async fn claim(
    db: &Db,
    tenant: TenantId,
    conversation: Uuid,
    terms: &ClaimTerms<'_>,
) -> Result<Claim, DbError> {
    let first = claim_once(db, tenant, conversation, terms).await?;
    if matches!(first, Claim::NoCredits { .. }) && release_expired_holds(db, tenant).await? > 0 {
        return claim_once(db, tenant, conversation, terms).await;
    }
    Ok(first)
}

async fn claim_once(
    db: &Db,
    tenant: TenantId,
    conversation: Uuid,
    terms: &ClaimTerms<'_>,
) -> Result<Claim, DbError> {
    let lease = Uuid::new_v4();
    let lease_secs = terms.lease.as_secs_f64();
    let hold_secs = terms.hold_ttl.as_secs_f64();
    let state = state_json(terms.new_turn);
    let phase = phase_str(terms.new_turn.phase);
    let c = db.client().await?;
    let row = c
        .query_one(
            "WITH conv AS (
               SELECT id FROM conversations WHERE user_id = $1 AND id = $2),
             open AS (
               SELECT t.id, t.phase, t.lease_until FROM turns t
                WHERE t.user_id = $1 AND t.conversation_id = $2 AND t.phase <> 'done'
                FOR UPDATE),
             taken AS (
               UPDATE turns t SET lease_token = $3,
                      lease_until = now() + $4::float8 * interval '1 second',
                      asking_since = CASE WHEN t.phase = 'asking' THEN now()
                                          ELSE t.asking_since END
                 FROM open
                WHERE t.id = open.id AND (open.lease_until IS NULL OR open.lease_until <= now())
               RETURNING t.id, t.state, t.phase, t.hold),
             uncovered AS (
               SELECT m.id FROM messages m
                WHERE m.user_id = $1 AND m.conversation_id = $2 AND m.direction = 'in'
                  AND ((m.turn_id IS NULL AND m.outcome IS NULL) OR m.outcome = ANY($10::text[]))),
             acc AS (
               UPDATE credit_accounts a SET held = a.held + $6::bigint
                WHERE a.user_id = $1
                  AND EXISTS (SELECT 1 FROM conv) AND NOT EXISTS (SELECT 1 FROM open)
                  AND EXISTS (SELECT 1 FROM uncovered)
                  AND a.balance - a.held >= GREATEST($6::bigint, 1)
                  AND a.balance - a.held - $6::bigint >= $7::bigint
               RETURNING a.user_id),
             created AS (
               INSERT INTO turns (user_id, conversation_id, phase, state, hold, hold_expires_at,
                                  lease_token, lease_until)
               SELECT $1, $2, $9::text, $5::jsonb, $6::bigint, now() + $8::float8 * interval '1 second',
                      $3, now() + $4::float8 * interval '1 second' FROM acc
               RETURNING id, state, phase, hold),
             mine AS (
               SELECT id, state, phase, hold FROM created
               UNION ALL SELECT id, state, phase, hold FROM taken),
             cover AS (
               UPDATE messages m SET turn_id = mine.id FROM mine
                WHERE m.id IN (SELECT id FROM uncovered) AND mine.phase = 'asking'
               RETURNING m.id)
             SELECT (SELECT id FROM mine), (SELECT state FROM mine), (SELECT hold FROM mine),
                    EXISTS (SELECT 1 FROM created),
                    COALESCE((SELECT array_agg(id ORDER BY id) FROM cover), '{}'::bigint[]),
                    EXISTS (SELECT 1 FROM conv), EXISTS (SELECT 1 FROM open),
                    (SELECT GREATEST(extract(epoch FROM lease_until - now()), 0)::float8 FROM open),
                    EXISTS (SELECT 1 FROM uncovered),
                    (SELECT balance FROM credit_accounts WHERE user_id = $1),
                    (SELECT held FROM credit_accounts WHERE user_id = $1)",
            &[
                &tenant.0,
                &conversation,
                &lease,
                &lease_secs,
                &state,
                &terms.hold.max(0),
                &terms.min_balance.max(0),
                &hold_secs,
                &phase,
                &ANSWER_AGAIN,
            ],
        )
        .await;
    let row = match row {
        Ok(r) => r,
        // Another invocation opened the conversation's turn between our read and our insert.
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return Ok(Claim::Busy {
                lease_left: terms.lease,
            })
        }
        Err(e) => return Err(e.into()),
    };
    if !row.get::<_, bool>(5) {
        return Ok(Claim::NoConversation);
    }
    if let Some(id) = row.get::<_, Option<Uuid>>(0) {
        return Ok(Claim::Open(OpenTurn {
            id,
            lease,
            turn: state_of(row.get(1))?,
            created: row.get(3),
            covered: row.get(4),
            hold: row.get(2),
        }));
    }
    if row.get::<_, bool>(6) {
        let left = row.get::<_, Option<f64>>(7).unwrap_or(0.0);
        return Ok(Claim::Busy {
            lease_left: Duration::from_secs_f64(left.max(0.0)),
        });
    }
    if !row.get::<_, bool>(8) {
        return Ok(Claim::NothingToAnswer);
    }
    Ok(Claim::NoCredits {
        balance: row.get::<_, Option<i64>>(9).unwrap_or(0),
        held: row.get::<_, Option<i64>>(10).unwrap_or(0),
    })
}

/// Gives back the holds of the tenant's turns whose hold expired (an invocation died and the
/// turn was never resumed). Returns how many credits were released.
pub async fn release_expired_holds(db: &Db, tenant: TenantId) -> Result<i64, DbError> {
    let c = db.client().await?;
    let row = c
        .query_one(
            "WITH expired AS (
               SELECT id, hold FROM turns
                WHERE user_id = $1 AND phase <> 'done' AND hold > 0 AND hold_expires_at <= now()
                FOR UPDATE),
             swept AS (
               UPDATE turns t SET hold = 0 FROM expired WHERE t.id = expired.id
               RETURNING expired.hold AS was),
             acc AS (
               UPDATE credit_accounts a
                  SET held = GREATEST(a.held - (SELECT COALESCE(sum(s.was), 0) FROM swept s), 0)
                WHERE a.user_id = $1 AND EXISTS (SELECT 1 FROM swept)
               RETURNING a.held)
             SELECT (SELECT COALESCE(sum(was), 0)::bigint FROM swept)",
            &[&tenant.0],
        )
        .await?;
    Ok(row.get(0))
}

/// What a fenced save came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Saved,
    /// Another invocation holds the turn now: stop without side effects.
    LeaseLost,
    /// `require_ai` was asked and the conversation is in human mode, or was since the turn
    /// opened: nothing written.
    HumanMode,
}

/// Stores the turn's state under the lease. With `require_ai`, only while the conversation is
/// in AI mode and has not changed mode since the turn last started asking the model (the check
/// and the write are one statement, so a handoff either happened before it, and the send does
/// not start, or after it). An answer that waited through a handoff and a hand-back is
/// stopped too: it was written before the operator's part of the conversation. (A turn taken
/// over before it had an answer starts asking afresh, so it answers what came after.)
pub async fn save(
    db: &Db,
    tenant: TenantId,
    open: &OpenTurn,
    turn: &Turn,
    require_ai: bool,
) -> Result<Saved, DbError> {
    let c = db.client().await?;
    let row = c
        .query_one(
            "WITH t AS (
               SELECT t.id, t.lease_token = $3 AS ours,
                      (SELECT c.mode = 'ai'
                              AND (c.mode_changed_at IS NULL
                                   OR c.mode_changed_at <= COALESCE(t.asking_since, t.created_at))
                         FROM conversations c
                        WHERE c.user_id = t.user_id AND c.id = t.conversation_id) AS ai_throughout
                 FROM turns t WHERE t.user_id = $1 AND t.id = $2 FOR UPDATE),
             upd AS (
               UPDATE turns SET state = $4::jsonb, phase = $5::text
                WHERE id = (SELECT id FROM t) AND (SELECT ours FROM t)
                  AND (NOT $6::bool OR (SELECT ai_throughout FROM t))
               RETURNING id)
             SELECT EXISTS (SELECT 1 FROM upd), COALESCE((SELECT ours FROM t), false)",
            &[
                &tenant.0,
                &open.id,
                &open.lease,
                &state_json(turn),
                &phase_str(turn.phase),
                &require_ai,
            ],
        )
        .await?;
    Ok(match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
        (true, _) => Saved::Saved,
        (false, false) => Saved::LeaseLost,
        (false, true) => Saved::HumanMode,
    })
}

/// An outbound row the record step writes.
#[derive(Debug, Clone)]
pub struct OutRow {
    pub provider_message_id: Option<String>,
    pub content: Json,
    /// `sent`, `failed` or `pending` (an unknown part: it may have gone out).
    pub status: &'static str,
}

/// What recording a turn did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Recorded {
        charged: i64,
        balance_after: i64,
        /// Cost the balance could not cover.
        uncovered: i64,
    },
    LeaseLost,
}

/// Records a settled turn in one statement: its outbound rows (in order; the first carries the
/// tokens and the charge), the conversation's `previous_response_id`, the charge for `cost`
/// (at most the balance) with its ledger row, the hold released, the outcome on every inbound
/// message the turn covers, and the turn's state (phase `recorded`).
#[allow(clippy::too_many_arguments)]
pub async fn record(
    db: &Db,
    tenant: TenantId,
    open: &OpenTurn,
    turn: &Turn,
    rows: &[OutRow],
    cost: i64,
    outcome: &str,
) -> Result<Recorded, DbError> {
    let ids: Vec<Option<String>> = rows.iter().map(|r| r.provider_message_id.clone()).collect();
    let contents: Vec<Json> = rows.iter().map(|r| r.content.clone()).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status).collect();
    let input = turn.usage.input_tokens.min(i32::MAX as u64) as i32;
    let output = turn.usage.output_tokens.min(i32::MAX as u64) as i32;
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH t AS (
               SELECT id, conversation_id, hold FROM turns
                WHERE user_id = $1 AND id = $2 AND lease_token = $3 AND phase <> 'done'
                  AND phase <> 'recorded'
                FOR UPDATE),
             conv AS (
               UPDATE conversations c SET previous_response_id = COALESCE($4::text, c.previous_response_id)
                 FROM t WHERE c.user_id = $1 AND c.id = t.conversation_id
               RETURNING c.id, c.channel_account_id),
             parts AS (
               SELECT p.id, p.content, p.status, p.ord
                 FROM unnest($5::text[], $6::jsonb[], $7::text[]) WITH ORDINALITY AS p(id, content, status, ord)),
             msgs AS (
               INSERT INTO messages (user_id, conversation_id, channel_account_id, direction,
                                     provider_message_id, content, status, input_tokens,
                                     output_tokens, cost, turn_id)
               SELECT $1, conv.id, conv.channel_account_id, 'out', parts.id, parts.content,
                      parts.status,
                      CASE WHEN parts.ord = 1 THEN $8::int END, CASE WHEN parts.ord = 1 THEN $9::int END,
                      CASE WHEN parts.ord = 1 THEN $10::bigint END, $2
                 FROM conv, parts ORDER BY parts.ord
               -- A provider id already stored (a stub's fixed id, a replayed answer): the
               -- send happened; one row for it is enough, and the turn still settles.
               ON CONFLICT (channel_account_id, provider_message_id)
                  WHERE provider_message_id IS NOT NULL DO NOTHING
               RETURNING id),
             {},
             inbound AS (
               UPDATE messages m SET outcome = $11::text
                WHERE m.user_id = $1 AND m.turn_id = (SELECT id FROM t) AND m.direction = 'in'
               RETURNING m.id),
             done AS (
               UPDATE turns SET state = $12::jsonb, phase = 'recorded', hold = 0, outcome = $11::text
                WHERE id = (SELECT id FROM t)
               RETURNING id)
             SELECT EXISTS (SELECT 1 FROM done), (SELECT take FROM acc), (SELECT balance FROM acc),
                    (SELECT count(*) FROM msgs), (SELECT count(*) FROM inbound)",
            charge_ctes(&ChargeSql {
                amount: "GREATEST($10::bigint, 0)",
                when: "EXISTS (SELECT 1 FROM t)",
                release_held: Some("SELECT hold FROM t"),
                reason: "'reply'",
                reference: "$4",
            })
        )
    });
    let c = db.client().await?;
    let row = c
        .query_one(
            SQL.as_str(),
            &[
                &tenant.0,
                &open.id,
                &open.lease,
                &turn.response_id,
                &ids,
                &contents,
                &statuses,
                &input,
                &output,
                &cost,
                &outcome,
                &state_json(turn),
            ],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(Recorded::LeaseLost);
    }
    let charged = row.get::<_, Option<i64>>(1).unwrap_or(0);
    Ok(Recorded::Recorded {
        charged,
        balance_after: row.get::<_, Option<i64>>(2).unwrap_or(0),
        uncovered: cost.max(0) - charged,
    })
}

/// Closes a recorded turn (its follow-ups done) and gives up the lease.
pub async fn finish(
    db: &Db,
    tenant: TenantId,
    open: &OpenTurn,
    turn: &Turn,
) -> Result<Saved, DbError> {
    let c = db.client().await?;
    let n = c
        .execute(
            "UPDATE turns SET state = $4, phase = 'done', lease_token = NULL, lease_until = NULL
              WHERE user_id = $1 AND id = $2 AND lease_token = $3",
            &[&tenant.0, &open.id, &open.lease, &state_json(turn)],
        )
        .await?;
    Ok(if n == 1 {
        Saved::Saved
    } else {
        Saved::LeaseLost
    })
}

/// Gives up the lease of a turn that stays open (it resumes on the next delivery at once
/// instead of after the lease).
pub async fn release(db: &Db, tenant: TenantId, open: &OpenTurn) -> Result<(), DbError> {
    let c = db.client().await?;
    c.execute(
        "UPDATE turns SET lease_until = now() WHERE user_id = $1 AND id = $2 AND lease_token = $3",
        &[&tenant.0, &open.id, &open.lease],
    )
    .await?;
    Ok(())
}

/// Extends the live leases named by `tokens` to `lease` from now (the processor's heartbeat,
/// while its invocation runs). A lease already given up, taken over or finished is left
/// alone. Returns how many were extended.
pub async fn renew(db: &Db, tokens: &[Uuid], lease: Duration) -> Result<u64, DbError> {
    if tokens.is_empty() {
        return Ok(0);
    }
    let c = db.client().await?;
    Ok(c.execute(
        "UPDATE turns SET lease_until = now() + $2::float8 * interval '1 second'
          WHERE lease_token = ANY($1) AND phase <> 'done' AND lease_until > now()",
        &[&tokens, &lease.as_secs_f64()],
    )
    .await?)
}

/// The provider message id a WhatsApp status echoed for `tag` (the request reached Meta), if
/// any status with it has arrived.
pub async fn echoed(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    tag: &str,
) -> Result<Option<String>, DbError> {
    echoed_any(db, tenant, channel_account_id, &[tag.to_owned()]).await
}

/// The same for any of `tags` (every attempt of one part: an earlier attempt's echo may come
/// after a later attempt was written).
pub async fn echoed_any(
    db: &Db,
    tenant: TenantId,
    channel_account_id: Uuid,
    tags: &[String],
) -> Result<Option<String>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT provider_message_id FROM pending_statuses
              WHERE user_id = $1 AND channel_account_id = $2 AND callback_tag = ANY($3)
              ORDER BY id LIMIT 1",
            &[&tenant.0, &channel_account_id, &tags],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A turn's stored state and phase (tests, admin).
pub async fn get(db: &Db, tenant: TenantId, id: Uuid) -> Result<Option<(Turn, i64)>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT state, hold FROM turns WHERE user_id = $1 AND id = $2",
            &[&tenant.0, &id],
        )
        .await?;
    row.map(|r| Ok((state_of(r.get(0))?, r.get(1)))).transpose()
}

/// The contents of the inbound messages a turn covers, in order (the new part of the model's
/// input when the conversation continues a stored response).
pub async fn covered_contents(db: &Db, tenant: TenantId, turn: Uuid) -> Result<Vec<Json>, DbError> {
    let c = db.client().await?;
    let rows = c
        .query(
            "SELECT content FROM messages
              WHERE user_id = $1 AND turn_id = $2 AND direction = 'in' ORDER BY id",
            &[&tenant.0, &turn],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How many of these inbound messages have no outcome yet (a redelivered message whose turn
/// already ended has one: there is nothing left to do for it).
pub async fn unsettled(db: &Db, tenant: TenantId, ids: &[i64]) -> Result<usize, DbError> {
    let c = db.client().await?;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM messages
              WHERE user_id = $1 AND id = ANY($2) AND direction = 'in'
                AND (outcome IS NULL OR outcome = ANY($3))",
            &[&tenant.0, &ids, &ANSWER_AGAIN],
        )
        .await?
        .get(0);
    Ok(n as usize)
}
