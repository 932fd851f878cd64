//! Leads: list (newest change first), one with its field history, CSV export.

use serde_json::{json, Value as Json};

use shared::db::leads::{self, LEAD_FIELDS};

use super::keyset;
use crate::{cursor, page, ApiError, Ctx, Reply};

/// Columns of a lead as the API shows them, in CSV order: ids, channel, the extracted fields
/// (`LEAD_FIELDS`), then the rest.
fn columns() -> Vec<&'static str> {
    ["id", "contact_id", "conversation_id", "channel"]
        .into_iter()
        .chain(LEAD_FIELDS)
        .chain(["extra", "confidence", "created_at", "updated_at"])
        .collect()
}

/// Export pages are larger than API pages.
const MAX_EXPORT: i64 = 5000;
/// A page stops growing past this many bytes (Lambda's response limit is 6 MB).
const MAX_EXPORT_BYTES: usize = 4 * 1024 * 1024;

async fn rows(ctx: &Ctx<'_>, limit: i64) -> Result<Vec<Json>, ApiError> {
    let before = keyset(ctx)?;
    Ok(leads::list_json(ctx.app.db(), ctx.tenant()?, before, limit + 1).await?)
}

pub async fn list(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let limit = ctx.limit()?;
    Ok(Reply::ok(page(rows(ctx, limit).await?, limit)))
}

pub async fn get(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let id = ctx.id(0)?;
    let mut lead = leads::get_json(ctx.app.db(), ctx.tenant()?, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let history = leads::history_json(ctx.app.db(), ctx.tenant()?, id).await?;
    if let Some(o) = lead.as_object_mut() {
        o.remove("_k");
        o.insert("history".into(), json!(history));
    }
    Ok(Reply::ok(lead))
}

/// `text/csv`, up to `limit` (default and max 5000) leads; `X-Next-Cursor` names the next
/// page. Cells a spreadsheet would run as a formula are prefixed with `'`.
pub async fn export(ctx: &Ctx<'_>) -> Result<Reply, ApiError> {
    let limit = ctx.limit_within(MAX_EXPORT, MAX_EXPORT)?;
    let mut rows = rows(ctx, limit).await?;
    let mut more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut w = csv::Writer::from_writer(Vec::new());
    let write = |w: &mut csv::Writer<Vec<u8>>, rec: Vec<String>| {
        w.write_record(rec).map_err(|e| {
            tracing::error!(error = %e, "CSV write failed");
            ApiError::Internal
        })
    };
    let columns = columns();
    write(&mut w, columns.iter().map(|f| f.to_string()).collect())?;
    let (mut last, mut written) = (None, 0u64);
    for r in &rows {
        // Lambda answers at most 6 MB: stop early and let the cursor carry on.
        if w.get_ref().len() > MAX_EXPORT_BYTES {
            more = true;
            break;
        }
        write(&mut w, columns.iter().map(|f| cell(&r[*f])).collect())?;
        last = Some(r);
        written += 1;
    }
    let next = match (more, last) {
        (true, Some(r)) => Some(cursor(r["_k"].clone())),
        _ => None,
    };
    let bytes = w.into_inner().map_err(|_| ApiError::Internal)?;
    ctx.metrics().count("LeadsExported", written);
    Ok(Reply::Csv(
        String::from_utf8(bytes).map_err(|_| ApiError::Internal)?,
        next,
    ))
}

/// One CSV cell: strings as they are (formula-looking ones defused), null empty, the rest as
/// JSON.
fn cell(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => {
            if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{s}")
            } else {
                s.clone()
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_defuse_formulas_and_keep_the_rest() {
        assert_eq!(cell(&json!("=HYPERLINK(\"x\")")), "'=HYPERLINK(\"x\")");
        assert_eq!(cell(&json!("+52 55 1234")), "'+52 55 1234");
        assert_eq!(cell(&json!("Ana")), "Ana");
        assert_eq!(cell(&Json::Null), "");
        assert_eq!(cell(&json!({"bedrooms": 2})), "{\"bedrooms\":2}");
        assert_eq!(cell(&json!(0.5)), "0.5");
    }
}
