//! Lead extraction's queries: the window of new messages, the agent of a conversation, and the
//! one-statement write of an extraction (run row, lead merge, field history, window advance,
//! charge). Every query filters on the tenant.

use serde_json::Value as Json;
use uuid::Uuid;

use super::credits::{charge_ctes, Charge, ChargeSql};
use super::{json_row, json_rows, Db, DbError, TenantId};

/// Lead columns the extraction fills (the `leads` table's own columns).
pub const LEAD_FIELDS: [&str; 10] = [
    "name",
    "email",
    "phone",
    "company",
    "intent",
    "product_interest",
    "budget",
    "timeline",
    "language",
    "summary",
];

/// One stored message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: i64,
    pub direction: String,
    pub content: Json,
}

/// Up to `limit` messages after `after_id`, oldest first.
pub async fn messages_after(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    after_id: i64,
    limit: i64,
) -> Result<Vec<StoredMessage>, DbError> {
    let c = db.client().await?;
    let rows = c
        .query(
            "SELECT id, direction, content FROM messages
              WHERE user_id = $1 AND conversation_id = $2 AND id > $3
              ORDER BY id LIMIT $4",
            &[&tenant.0, &conversation_id, &after_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredMessage {
            id: r.get(0),
            direction: r.get(1),
            content: r.get(2),
        })
        .collect())
}

/// What extraction needs about a conversation: where it stands and whose agent answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractionTarget {
    pub extracted_through: i64,
    pub contact_id: Uuid,
    pub agent_id: Option<Uuid>,
}

pub async fn extraction_target(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
) -> Result<Option<ExtractionTarget>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT c.extracted_through, c.contact_id, a.agent_id
               FROM conversations c JOIN channel_accounts a
                 ON a.user_id = c.user_id AND a.id = c.channel_account_id
              WHERE c.user_id = $1 AND c.id = $2",
            &[&tenant.0, &conversation_id],
        )
        .await?;
    Ok(row.map(|r| ExtractionTarget {
        extracted_through: r.get(0),
        contact_id: r.get(1),
        agent_id: r.get(2),
    }))
}

/// An extraction run to record.
#[derive(Debug, Clone, Default)]
pub struct ExtractionRecord<'a> {
    pub from_message_id: i64,
    pub through_message_id: i64,
    /// `applied` (fields given), `unchanged`, `incomplete`, `refused` or `invalid`.
    pub status: &'a str,
    pub response_id: Option<&'a str>,
    pub input_tokens: i32,
    pub output_tokens: i32,
    pub cost: i64,
    /// New non-null values for lead columns (see [`LEAD_FIELDS`]); nulls are never passed, so
    /// they never erase.
    pub fields: Vec<(&'static str, String)>,
    /// New non-null values of tenant-defined fields, merged into `leads.extra`.
    pub extra: serde_json::Map<String, Json>,
}

/// What recording an extraction did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractionOutcome {
    /// `false` when this window was recorded before (a duplicate job): nothing was written.
    pub recorded: bool,
    /// Fields whose value changed, as history rows were written for them.
    pub changed: Vec<String>,
    pub charge: Option<Charge>,
    /// Lead events queued for the tenant's webhook (0 or 1).
    pub events: u64,
}

/// Records an extraction in one statement: the run row (once per window), the lead merge (a
/// non-null value replaces the old one, nothing else is touched), one history row per changed
/// field, the conversation's `extracted_through`, and the charge (ledger reason `extraction`).
pub async fn record_extraction(
    db: &Db,
    tenant: TenantId,
    conversation_id: Uuid,
    rec: &ExtractionRecord<'_>,
) -> Result<ExtractionOutcome, DbError> {
    let mut names: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    let mut cols: [Option<&str>; 10] = [None; 10];
    for (field, value) in &rec.fields {
        if let Some(i) = LEAD_FIELDS.iter().position(|f| f == field) {
            cols[i] = Some(value.as_str());
            names.push((*field).to_owned());
            values.push(value.clone());
        }
    }
    for (k, v) in &rec.extra {
        names.push(format!("extra.{k}"));
        values.push(match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let extra = Json::Object(rec.extra.clone());
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH ext AS (
               INSERT INTO extractions (user_id, conversation_id, from_message_id, through_message_id,
                                        status, response_id, input_tokens, output_tokens, cost)
               SELECT $1, id, $3, $4, $5, $6, $7, $8, $9 FROM conversations WHERE user_id = $1 AND id = $2
               ON CONFLICT (conversation_id, through_message_id) DO NOTHING
               RETURNING id),
             conv AS (
               UPDATE conversations SET extracted_through = GREATEST(extracted_through, $4)
                WHERE user_id = $1 AND id = $2 AND EXISTS (SELECT 1 FROM ext)
                RETURNING contact_id),
             old AS (
               SELECT l.* FROM leads l, conv WHERE l.user_id = $1 AND l.contact_id = conv.contact_id),
             changes AS (
               SELECT f.field, f.val,
                      CASE WHEN f.field LIKE 'extra.%' THEN (SELECT extra ->> substr(f.field, 7) FROM old)
                           ELSE (SELECT to_jsonb(old) ->> f.field FROM old) END AS before
                 FROM unnest($10::text[], $11::text[]) AS f(field, val)),
             real AS (
               SELECT * FROM changes WHERE before IS DISTINCT FROM val),
             up AS (
               INSERT INTO leads (user_id, contact_id, name, email, phone, company, intent,
                                  product_interest, budget, timeline, language, summary, extra)
               SELECT $1, conv.contact_id, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22 FROM conv
                WHERE EXISTS (SELECT 1 FROM real)
               ON CONFLICT (contact_id) DO UPDATE SET
                 name = COALESCE(EXCLUDED.name, leads.name),
                 email = COALESCE(EXCLUDED.email, leads.email),
                 phone = COALESCE(EXCLUDED.phone, leads.phone),
                 company = COALESCE(EXCLUDED.company, leads.company),
                 intent = COALESCE(EXCLUDED.intent, leads.intent),
                 product_interest = COALESCE(EXCLUDED.product_interest, leads.product_interest),
                 budget = COALESCE(EXCLUDED.budget, leads.budget),
                 timeline = COALESCE(EXCLUDED.timeline, leads.timeline),
                 language = COALESCE(EXCLUDED.language, leads.language),
                 summary = COALESCE(EXCLUDED.summary, leads.summary),
                 extra = leads.extra || EXCLUDED.extra
               WHERE leads.user_id = EXCLUDED.user_id
               RETURNING *),
             hist AS (
               INSERT INTO lead_history (user_id, lead_id, extraction_id, field, old_value, new_value)
               SELECT $1, up.id, ext.id, real.field, real.before, real.val FROM up, ext, real
               RETURNING field),
             outbox AS ({}),
             {}
             SELECT EXISTS (SELECT 1 FROM ext),
                    COALESCE((SELECT array_agg(field) FROM hist), '{{}}'),
                    (SELECT balance FROM acc), (SELECT take FROM acc),
                    (SELECT count(*) FROM outbox)",
            super::outbox::event_insert(
                "lead.updated",
                "$2",
                "jsonb_build_object(
                        'type', 'lead.updated',
                        'tenant_id', $1,
                        'conversation_id', $2,
                        'contact_id', up.contact_id,
                        'lead', to_jsonb(up) - 'user_id' - 'is_active' - 'created_at',
                        'changes', (SELECT jsonb_agg(jsonb_build_object('field', field, 'old', before, 'new', val))
                                      FROM real),
                        'occurred_at', now())",
                "up",
            ),
            charge_ctes(&ChargeSql {
                amount: "$9",
                when: "EXISTS (SELECT 1 FROM ext)",
                release_held: None,
                reason: "'extraction'",
                reference: "$6",
            })
        )
    });
    let c = db.client().await?;
    let row = c
        .query_one(
            SQL.as_str(),
            &[
                &tenant.0,
                &conversation_id,
                &rec.from_message_id,
                &rec.through_message_id,
                &rec.status,
                &rec.response_id,
                &rec.input_tokens,
                &rec.output_tokens,
                &rec.cost,
                &names,
                &values,
                &cols[0],
                &cols[1],
                &cols[2],
                &cols[3],
                &cols[4],
                &cols[5],
                &cols[6],
                &cols[7],
                &cols[8],
                &cols[9],
                &extra,
            ],
        )
        .await?;
    let recorded: bool = row.get(0);
    let mut changed: Vec<String> = row.get(1);
    changed.sort();
    let charge = row.get::<_, Option<i64>>(3).map(|charged| Charge {
        requested: rec.cost,
        charged,
        balance_after: row.get::<_, Option<i64>>(2).unwrap_or(0),
    });
    Ok(ExtractionOutcome {
        recorded,
        changed,
        charge,
        events: row.get::<_, i64>(4) as u64,
    })
}

/// A contact's lead as stored: the lead columns by name (null when unknown) plus `extra`.
/// (Tests only: feature `testing`.)
#[cfg(any(test, feature = "testing"))]
pub async fn lead_of_contact(
    db: &Db,
    tenant: TenantId,
    contact_id: Uuid,
) -> Result<Option<Json>, DbError> {
    let c = db.client().await?;
    let row = c
        .query_opt(
            "SELECT to_jsonb(l) - 'user_id' - 'is_active' - 'created_at' - 'updated_at'
               FROM leads l WHERE user_id = $1 AND contact_id = $2 AND is_active",
            &[&tenant.0, &contact_id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A lead's field history, oldest first: (field, old value, new value, extraction id).
pub async fn lead_history(
    db: &Db,
    tenant: TenantId,
    contact_id: Uuid,
) -> Result<Vec<(String, Option<String>, String, i64)>, DbError> {
    let c = db.client().await?;
    let rows = c
        .query(
            "SELECT h.field, h.old_value, h.new_value, h.extraction_id
               FROM lead_history h JOIN leads l ON l.id = h.lead_id AND l.user_id = h.user_id
              WHERE h.user_id = $1 AND l.contact_id = $2 ORDER BY h.id",
            &[&tenant.0, &contact_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// A lead as the admin API shows it, with its keyset `_k` ([updated_at, id]).
const VIEW: &str = "SELECT to_jsonb(x) FROM (
    SELECT l.id, l.contact_id,
           (SELECT c.id FROM conversations c WHERE c.contact_id = l.contact_id LIMIT 1) AS conversation_id,
           ca.channel, l.name, l.email, l.phone, l.company, l.intent, l.product_interest, l.budget,
           l.timeline, l.language, l.summary, l.extra, l.confidence, l.created_at, l.updated_at,
           jsonb_build_array(l.updated_at::text, l.id) AS _k
      FROM leads l
      JOIN contacts ct ON ct.id = l.contact_id
      JOIN channel_accounts ca ON ca.id = ct.channel_account_id
     WHERE l.user_id = $1 AND l.is_active";

/// The tenant's leads, newest change first, before the keyset `before` ((updated_at, id) as
/// text), at most `limit`.
pub async fn list_json(
    db: &Db,
    tenant: TenantId,
    before: (Option<String>, Option<String>),
    limit: i64,
) -> Result<Vec<Json>, DbError> {
    json_rows(
        db,
        &format!(
            "{VIEW} AND ($2::text IS NULL OR (l.updated_at, l.id) < ($2::timestamptz, $3::text::uuid))
             ORDER BY l.updated_at DESC, l.id DESC LIMIT $4) x"
        ),
        &[&tenant.0, &before.0, &before.1, &limit],
    )
    .await
}

/// One lead as the admin API shows it (with its keyset `_k`).
pub async fn get_json(db: &Db, tenant: TenantId, id: Uuid) -> Result<Option<Json>, DbError> {
    json_row(db, &format!("{VIEW} AND l.id = $2) x"), &[&tenant.0, &id]).await
}

/// A lead's field changes, oldest first.
pub async fn history_json(db: &Db, tenant: TenantId, lead: Uuid) -> Result<Vec<Json>, DbError> {
    json_rows(
        db,
        "SELECT to_jsonb(x) FROM (
           SELECT field, old_value, new_value, extraction_id, created_at
             FROM lead_history WHERE user_id = $1 AND lead_id = $2 ORDER BY id) x",
        &[&tenant.0, &lead],
    )
    .await
}
