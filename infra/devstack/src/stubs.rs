//! Stub upstreams on one HTTP server:
//!
//! - `POST /v1/responses`: a deterministic model that says it is a stub and echoes the last
//!   customer message, with token usage estimated at 4 characters per token;
//! - `POST /graph/{phone_number_id}/messages` (WhatsApp sends and mark-as-read) and
//!   `POST /ig/{account_id}/messages` (Instagram sends): a sink that records what would have
//!   been sent and answers with Meta's response shape;
//! - `GET /_sent`: everything recorded, oldest first (the end-to-end test reads it).
//!
//! Every recorded send is also appended as one JSON line to the sink file, if one is given.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the stub model says, so nobody mistakes it for a real one.
pub const STUB_MODEL_PREFIX: &str = "[stub model]";

#[derive(Default)]
pub struct Stubs {
    sent: Mutex<Vec<Value>>,
    counter: AtomicU64,
    /// Makes ids unique across restarts: the database keeps the ids of earlier runs, and a
    /// repeated provider message id would be taken for a duplicate and not stored.
    run: String,
    sink: Option<PathBuf>,
    /// The web chat demo page, when the local stack serves one.
    demo: Option<String>,
}

impl Stubs {
    pub fn new(sink: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            sink,
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            ..Self::default()
        })
    }

    /// A fresh id suffix: this run's tag and a counter.
    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{}{n}", self.run)
    }

    fn record(&self, entry: Value) {
        if let Some(path) = &self.sink {
            let line = format!("{entry}\n");
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not append to the sink file");
            }
        }
        self.sent.lock().expect("stub lock").push(entry);
    }

    /// Serves a demo page at `/demo` embedding the widget from `widget_url` for `site_key`.
    pub fn set_demo(&mut self, widget_url: &str, site_key: &str) {
        self.demo = Some(demo_page(widget_url, site_key));
    }

    pub fn sent(&self) -> Vec<Value> {
        self.sent.lock().expect("stub lock").clone()
    }
}

pub fn router(stubs: Arc<Stubs>) -> Router {
    Router::new()
        .route("/v1/responses", post(responses))
        .route("/graph/{account}/messages", post(whatsapp))
        .route("/ig/{account}/messages", post(instagram))
        .route("/_sent", get(sent))
        .route("/demo", get(demo))
        .with_state(stubs)
}

/// Rough token count (4 characters per token, at least 1).
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// The text of the last user message of a Responses API `input`.
fn last_user_text(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// A structured-output answer: every property of the schema null, except an email found in
/// the input (so the local stack shows a lead without a real model).
fn structured_answer(schema: &Value, input: &str) -> String {
    let mut out = serde_json::Map::new();
    if let Some(props) = schema["properties"].as_object() {
        for key in props.keys() {
            out.insert(key.clone(), Value::Null);
        }
    }
    let email = input
        .split(|c: char| c.is_whitespace() || "()<>,;\"".contains(c))
        .map(|w| w.trim_end_matches('.'))
        .find(|w| w.contains('@') && w.contains('.'));
    if let (Some(e), true) = (email, out.contains_key("email")) {
        out.insert("email".into(), json!(e));
    }
    Value::Object(out).to_string()
}

async fn responses(State(stubs): State<Arc<Stubs>>, Json(req): Json<Value>) -> Json<Value> {
    let n = stubs.next();
    let heard: String = last_user_text(&req["input"]).chars().take(200).collect();
    let text = if req["text"]["format"]["type"] == "json_schema" {
        structured_answer(
            &req["text"]["format"]["schema"],
            &last_user_text(&req["input"]),
        )
    } else {
        format!(
            "{STUB_MODEL_PREFIX} I got your message: \"{heard}\". Set OPENAI_API_KEY to hear from a real model."
        )
    };
    let input_tokens = tokens(&req["input"].to_string())
        + tokens(req["instructions"].as_str().unwrap_or_default());
    let output_tokens = tokens(&text);
    Json(json!({
        "id": format!("resp_stub_{n}"),
        "object": "response",
        "status": "completed",
        "model": req["model"],
        "previous_response_id": req["previous_response_id"],
        "output": [{"type": "message", "id": format!("msg_stub_{n}"), "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens}
    }))
}

async fn whatsapp(
    State(stubs): State<Arc<Stubs>>,
    Path(account): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if body["status"] == "read" {
        return Json(json!({"success": true}));
    }
    let id = format!("wamid.STUB{}", stubs.next());
    let to = body["to"]
        .as_str()
        .or(body["recipient"].as_str())
        .unwrap_or_default()
        .to_owned();
    stubs.record(
        json!({"channel": "whatsapp", "account": account, "to": to, "id": id,
                        "text": body["text"]["body"], "body": body}),
    );
    Json(
        json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": id}]}),
    )
}

async fn instagram(
    State(stubs): State<Arc<Stubs>>,
    Path(account): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let id = format!("mid.STUB{}", stubs.next());
    let to = body["recipient"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    stubs.record(
        json!({"channel": "instagram", "account": account, "to": to, "id": id,
                        "text": body["message"]["text"], "body": body}),
    );
    Json(json!({"recipient_id": to, "message_id": id}))
}

/// A page like a business's site with the widget pasted in, as the README tells them to.
fn demo_page(widget_url: &str, site_key: &str) -> String {
    let attr = |v: &str| {
        v.replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
    };
    format!(
        r#"<!doctype html>
<html lang="es">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Demo Realty (local web chat demo)</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}</style>
</head>
<body>
<h1>Demo Realty</h1>
<p>Departamentos en renta en la Ciudad de México. This page stands for a business's site: the
chat button in the corner is the web chat widget, talking to the local stack's web chat function
and the same agent as the WhatsApp demo number.</p>
<script src="{}" data-site-key="{}" data-title="Demo Realty" async></script>
</body>
</html>
"#,
        attr(widget_url),
        attr(site_key)
    )
}

async fn demo(
    State(stubs): State<Arc<Stubs>>,
) -> Result<axum::response::Html<String>, axum::http::StatusCode> {
    stubs
        .demo
        .clone()
        .map(axum::response::Html)
        .ok_or(axum::http::StatusCode::NOT_FOUND)
}

async fn sent(State(stubs): State<Arc<Stubs>>) -> Json<Value> {
    Json(Value::Array(stubs.sent()))
}

/// Serves the stubs on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, stubs: Arc<Stubs>) -> std::io::Result<()> {
    axum::serve(listener, router(stubs)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_user_message_is_found_in_either_input_shape() {
        let input = json!([{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                           {"role": "user", "content": [{"type": "input_text", "text": "second"}]}]);
        assert_eq!(last_user_text(&input), "second");
        assert_eq!(last_user_text(&json!("plain")), "plain");
        assert_eq!(tokens(""), 1);
        assert_eq!(tokens("12345"), 2);
    }

    #[test]
    fn structured_requests_get_a_schema_shaped_answer() {
        let schema = json!({"properties": {"name": {}, "email": {}, "bedrooms": {}}});
        let a: Value = serde_json::from_str(&structured_answer(
            &schema,
            "customer: Hola, soy Ana (ana@ejemplo.mx), quiero una cotización",
        ))
        .unwrap();
        assert_eq!(
            a,
            json!({"name": null, "email": "ana@ejemplo.mx", "bedrooms": null})
        );
    }
}
