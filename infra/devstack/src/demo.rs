//! The customer's side of the local stack: signed WhatsApp webhooks sent over HTTP to the
//! webhook function (as Meta would send them), and what came of them, read from Postgres (so it
//! works with the stub upstreams and with real ones alike).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};
use shared::db::{Db, DbError};
use shared::signature::SignatureKey;

use crate::seed::DEMO_WHATSAPP_NUMBER;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the webhook at {url} did not answer: {message} (is `make dev` running?)")]
    Unreachable { url: String, message: String },
    #[error("the webhook answered HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Input(String),
}

/// The webhook body Meta sends the demo business account for one change of `phone_number_id`:
/// `value` holds its `contacts` and `messages`, or its `statuses`.
pub fn whatsapp_webhook(phone_number_id: &str, mut value: Value) -> String {
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] =
        json!({"display_phone_number": "15550783881", "phone_number_id": phone_number_id});
    json!({"object": "whatsapp_business_account",
           "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}]})
    .to_string()
}

/// The webhook body for one text message from `wa_id` (profile `name`) to the demo number.
pub fn whatsapp_text(name: &str, wa_id: &str, wamid: &str, text: &str, timestamp: u64) -> String {
    whatsapp_webhook(
        DEMO_WHATSAPP_NUMBER,
        json!({
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": wamid, "timestamp": timestamp.to_string(),
                          "type": "text", "text": {"body": text}}]
        }),
    )
}

/// Sends customer messages as signed WhatsApp webhooks.
pub struct Customer {
    http: reqwest::Client,
    webhook_url: String,
    key: SignatureKey,
    pub wa_id: String,
    pub name: String,
}

impl Customer {
    pub fn new(webhook_url: &str, app_secret: &str, wa_id: &str, name: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                // The first request may compile the webhook under `cargo lambda watch`.
                .timeout(Duration::from_secs(900))
                .build()
                .expect("HTTP client"),
            webhook_url: webhook_url.to_owned(),
            key: SignatureKey::new(app_secret.as_bytes()),
            wa_id: wa_id.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The webhook body Meta sends for one text message to the demo number.
    pub fn text_body(&self, wamid: &str, text: &str, timestamp: u64) -> String {
        whatsapp_text(&self.name, &self.wa_id, wamid, text, timestamp)
    }

    /// Sends `text` signed with the app secret; returns the message's wamid.
    pub async fn say(&self, text: &str) -> Result<String, DemoError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let wamid = format!("wamid.LOCAL{}", uuid::Uuid::new_v4().simple());
        let body = self.text_body(&wamid, text, now.as_secs());
        let resp = self
            .http
            .post(&self.webhook_url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", self.key.sign(body.as_bytes()))
            .body(body)
            .send()
            .await
            .map_err(|e| DemoError::Unreachable {
                url: self.webhook_url.clone(),
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body: String = resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(DemoError::Rejected { status, body });
        }
        Ok(wamid)
    }
}

/// A sample conversation (events/conversation.json).
#[derive(Debug, Clone, Deserialize)]
pub struct Conversation {
    pub wa_id: String,
    pub name: String,
    pub messages: Vec<String>,
}

impl Conversation {
    pub fn load(path: &std::path::Path) -> Result<Self, DemoError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DemoError::Input(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| DemoError::Input(format!("{} is not a conversation: {e}", path.display())))
    }
}

/// What the processor did with one inbound message.
#[derive(Debug, Clone)]
pub struct Handled {
    pub inbound_id: i64,
    pub outcome: String,
    pub replies: Vec<String>,
}

/// The printable text of a stored message's content.
pub fn content_text(content: &Value) -> String {
    match content["type"].as_str() {
        Some("text") => content["body"].as_str().unwrap_or_default().to_owned(),
        Some(kind) => format!("[{kind}]"),
        None => "[?]".to_owned(),
    }
}

/// Reads what the functions stored.
pub struct Observer {
    db: Db,
    pub poll: Duration,
}

impl Observer {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            poll: Duration::from_millis(250),
        }
    }

    /// Waits until the processor has settled the inbound message `wamid` (its outcome is set)
    /// and returns the replies stored after it.
    pub async fn handled(&self, wamid: &str, timeout: Duration) -> Result<Handled, DemoError> {
        let deadline = Instant::now() + timeout;
        loop {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT id, conversation_id, outcome FROM messages
                     WHERE provider_message_id = $1 AND direction = 'in'",
                    &[&wamid],
                )
                .await
                .map_err(DbError::from)?;
            if let Some(row) = row {
                if let Some(outcome) = row.get::<_, Option<String>>(2) {
                    let id: i64 = row.get(0);
                    let conversation: uuid::Uuid = row.get(1);
                    let replies = client
                        .query(
                            "SELECT content FROM messages
                             WHERE conversation_id = $1 AND direction = 'out' AND id > $2
                             ORDER BY id",
                            &[&conversation, &id],
                        )
                        .await
                        .map_err(DbError::from)?
                        .iter()
                        .map(|r| content_text(&r.get::<_, Value>(0)))
                        .collect();
                    return Ok(Handled {
                        inbound_id: id,
                        outcome,
                        replies,
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(DemoError::Timeout(format!(
                    "no outcome for {wamid} after {} s: see .local/watch.log and .local/pump.log",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// The newest credit ledger id (charges after it are this run's).
    pub async fn ledger_mark(&self) -> Result<i64, DemoError> {
        let client = self.db.client().await?;
        let row = client
            .query_one("SELECT coalesce(max(id), 0) FROM credit_ledger", &[])
            .await
            .map_err(DbError::from)?;
        Ok(row.get(0))
    }

    /// Credits charged to the demo tenant after `mark`, by reason, and its balance now.
    pub async fn charged_since(&self, mark: i64) -> Result<(Vec<(String, i64)>, i64), DemoError> {
        let client = self.db.client().await?;
        let tenant = "SELECT user_id FROM channel_accounts WHERE channel = 'whatsapp' AND provider_account_id = $1";
        let rows = client
            .query(
                &format!(
                    "SELECT reason, sum(-delta)::bigint FROM credit_ledger
                     WHERE id > $2 AND delta < 0 AND user_id = ({tenant})
                     GROUP BY reason ORDER BY reason"
                ),
                &[&DEMO_WHATSAPP_NUMBER, &mark],
            )
            .await
            .map_err(DbError::from)?;
        let balance = client
            .query_one(
                &format!("SELECT balance FROM credit_accounts WHERE user_id = ({tenant})"),
                &[&DEMO_WHATSAPP_NUMBER],
            )
            .await
            .map_err(DbError::from)?;
        Ok((
            rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
            balance.get(0),
        ))
    }

    /// Waits until extraction has read the conversation through message `through`, then returns
    /// the contact's lead fields that are set (`None`: extraction ran but found no lead row).
    pub async fn lead_after(
        &self,
        wa_id: &str,
        through: i64,
        timeout: Duration,
    ) -> Result<Option<Vec<(String, String)>>, DemoError> {
        let deadline = Instant::now() + timeout;
        loop {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT cv.extracted_through, to_jsonb(l) - ARRAY['id','user_id','contact_id','is_active','created_at','updated_at']
                     FROM contacts c
                     JOIN channel_accounts ca ON ca.id = c.channel_account_id
                     JOIN conversations cv ON cv.contact_id = c.id
                     LEFT JOIN leads l ON l.contact_id = c.id
                     WHERE ca.provider_account_id = $1 AND c.external_id = $2",
                    &[&DEMO_WHATSAPP_NUMBER, &wa_id],
                )
                .await
                .map_err(DbError::from)?;
            if let Some(row) = row {
                if row.get::<_, i64>(0) >= through {
                    return Ok(row.get::<_, Option<Value>>(1).map(|lead| {
                        lead.as_object()
                            .into_iter()
                            .flatten()
                            .filter_map(|(k, v)| match v {
                                Value::Null => None,
                                Value::String(s) => Some((k.clone(), s.clone())),
                                Value::Object(o) if o.is_empty() => None,
                                other => Some((k.clone(), other.to_string())),
                            })
                            .collect()
                    }));
                }
            }
            if Instant::now() >= deadline {
                return Err(DemoError::Timeout(format!(
                    "extraction did not read the conversation within {} s: see .local/pump.log",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// The newest message id.
    pub async fn message_mark(&self) -> Result<i64, DemoError> {
        let client = self.db.client().await?;
        let row = client
            .query_one("SELECT coalesce(max(id), 0) FROM messages", &[])
            .await
            .map_err(DbError::from)?;
        Ok(row.get(0))
    }

    /// One line for each settled message stored after `after`, oldest first, and the newest
    /// id printed.
    pub async fn lines_after(&self, after: i64) -> Result<(Vec<String>, i64), DemoError> {
        let client = self.db.client().await?;
        let rows = client
            .query(
                "SELECT m.id, to_char(m.created_at, 'HH24:MI:SS'), ca.channel, m.direction,
                        coalesce(c.display_name, c.external_id), m.content, m.outcome, m.status, m.cost,
                        m.created_at > now() - interval '60 seconds'
                 FROM messages m
                 JOIN conversations cv ON cv.id = m.conversation_id
                 JOIN contacts c ON c.id = cv.contact_id
                 JOIN channel_accounts ca ON ca.id = m.channel_account_id
                 WHERE m.id > $1 ORDER BY m.id LIMIT 200",
                &[&after],
            )
            .await
            .map_err(DbError::from)?;
        let mut last = after;
        // An inbound message is printed once the processor has settled it (its outcome is
        // set), so the line says what happened; stop there and come back for it.
        let settled = rows.iter().take_while(|r| {
            r.get::<_, String>(3) == "out"
                || r.get::<_, Option<String>>(6).is_some()
                || !r.get::<_, bool>(9)
        });
        let lines = settled
            .map(|r| {
                last = r.get(0);
                let text: String = content_text(&r.get::<_, Value>(5))
                    .chars()
                    .take(100)
                    .collect();
                let who: String = r.get(4);
                let detail = if r.get::<_, String>(3) == "in" {
                    r.get::<_, Option<String>>(6)
                        .unwrap_or_else(|| "no outcome after 60 s".to_owned())
                } else {
                    let cost = r.get::<_, Option<i64>>(8).unwrap_or(0);
                    format!("{}, {cost} credits", r.get::<_, String>(7))
                };
                let arrow = if r.get::<_, String>(3) == "in" {
                    format!("{who} ->")
                } else {
                    format!("-> {who}")
                };
                format!(
                    "{}  {:<9} {arrow}: {text}  [{detail}]",
                    r.get::<_, String>(1),
                    r.get::<_, String>(2)
                )
            })
            .collect();
        Ok((lines, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_body_is_what_the_webhook_parses_and_its_signature_verifies() {
        let c = Customer::new("http://127.0.0.1:1/", "s3cret", "5215598765432", "Ana");
        let body = c.text_body("wamid.X1", "hola", 1_767_225_600);
        let parsed = shared::meta::parse_webhook(body.as_bytes(), "c", 0).unwrap();
        assert_eq!(parsed.inbound.len(), 1);
        let m = &parsed.inbound[0];
        assert_eq!(m.channel_account_id, DEMO_WHATSAPP_NUMBER);
        assert_eq!(m.provider_message_id, "wamid.X1");
        assert_eq!(m.provider_timestamp_ms, 1_767_225_600_000);
        assert_eq!(
            m.content,
            shared::envelope::Content::Text {
                body: "hola".into()
            }
        );
        let key = SignatureKey::new(b"s3cret");
        assert!(key
            .verify(body.as_bytes(), Some(&key.sign(body.as_bytes())))
            .is_ok());
    }

    #[test]
    fn the_sample_conversation_loads_and_gives_the_stub_model_an_email() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/conversation.json");
        let c = Conversation::load(&path).unwrap();
        assert!(c.messages.len() >= 2);
        assert!(
            c.messages.iter().any(|m| m.contains('@')),
            "the stub extracts emails only"
        );
        assert!(Conversation::load(std::path::Path::new("/nonexistent.json")).is_err());
    }

    #[test]
    fn stored_content_prints_as_text() {
        assert_eq!(
            content_text(&json!({"type": "text", "body": "hola"})),
            "hola"
        );
        assert_eq!(
            content_text(&json!({"type": "media", "media": "image"})),
            "[media]"
        );
    }
}
