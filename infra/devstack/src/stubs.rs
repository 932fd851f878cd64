//! Stub upstreams on one HTTP server:
//!
//! - `POST /v1/responses`: a deterministic model that says it is a stub and echoes the last
//!   customer message, with token usage estimated at 4 characters per token;
//! - `POST /graph/{phone_number_id}/messages` (WhatsApp sends and mark-as-read) and
//!   `POST /ig/{account_id}/messages` (Instagram sends): a sink that records what would have
//!   been sent and answers with Meta's response shape;
//! - `GET /_sent[?after=N]`: everything recorded (after the first N), oldest first, each with
//!   its `at_ms` (the end-to-end test and `devstack load` read it).
//!
//! Every recorded send is also appended as one JSON line to the sink file, if one is given.
//!
//! **Status echoes.** Given a webhook URL and the app secret ([`Stubs::echo_statuses`]), every
//! accepted WhatsApp send is followed, like Meta does, by a signed `sent` status webhook that
//! carries the send's `biz_opaque_callback_data`: the turn engine resolves ambiguous sends from
//! it. Instagram has no such echo.
//!
//! **Faults** ([`Faults`], `--faults` or `POST /_faults` with the same spec; `GET /_faults`
//! reads the spec and how many of each were injected): each request draws at most one fault.
//! - `openai_429` (with `retry-after-ms`), `openai_500`, `openai_slow` (answers after
//!   [`SLOW`], later than the client's timeout), `openai_reset` (headers, then the connection
//!   drops);
//! - `graph_5xx` (Meta's 500 with error code 131000: not sent), `graph_accept_5xx` (the message
//!   is taken and echoed, then a bare 502 as from a gateway: ambiguous), `graph_reset` (taken and
//!   echoed, then the connection drops before the answer: ambiguous).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use shared::signature::SignatureKey;

/// How late a slow model answer comes: past the processor's model timeout (30 s by default).
pub const SLOW: std::time::Duration = std::time::Duration::from_secs(32);

/// The fault kinds, in the spec's names.
pub const FAULT_KINDS: &[&str] = &[
    "openai_429",
    "openai_500",
    "openai_slow",
    "openai_reset",
    "graph_5xx",
    "graph_accept_5xx",
    "graph_reset",
];

/// Fault rates per kind (0 to 1), from `kind=rate,kind=rate`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults(Vec<(&'static str, f64)>);

impl Faults {
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut rates = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (kind, rate) = item
                .split_once('=')
                .ok_or_else(|| format!("fault `{item}` is not kind=rate"))?;
            let kind = FAULT_KINDS
                .iter()
                .find(|k| **k == kind.trim())
                .ok_or_else(|| {
                    format!("unknown fault `{kind}` (known: {})", FAULT_KINDS.join(", "))
                })?;
            let rate: f64 = rate
                .trim()
                .parse()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("fault `{item}`: the rate must be a number from 0 to 1"))?;
            rates.push((*kind, rate));
        }
        Ok(Faults(rates))
    }

    pub fn rate(&self, kind: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, r)| r)
            .sum()
    }

    /// The fault one request of `upstream` (`openai` or `graph`) gets, given a uniform `draw`
    /// in [0, 1): the kinds' rates are stacked in order.
    pub fn pick(&self, upstream: &str, draw: f64) -> Option<&'static str> {
        let mut edge = 0.0;
        for (kind, rate) in self.0.iter().filter(|(k, _)| k.starts_with(upstream)) {
            edge += rate;
            if draw < edge {
                return Some(kind);
            }
        }
        None
    }
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(k, r)| format!("{k}={r}")).collect();
        f.write_str(&items.join(","))
    }
}

/// A 200 whose connection drops after the headers: the client wrote its request and never
/// gets a readable answer.
fn reset() -> Response {
    let broken = futures_util::stream::iter([
        Ok(axum::body::Bytes::from_static(b"{\"mess")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "stub fault: connection reset",
        )),
    ]);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("content-length", "4096")
        .body(axum::body::Body::from_stream(broken))
        .expect("a valid response")
}

/// Where and how the stub echoes WhatsApp statuses.
struct Echo {
    webhook: String,
    key: SignatureKey,
    http: reqwest::Client,
}

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
    faults: Mutex<Faults>,
    injected: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    echo: Option<Echo>,
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

    fn record(&self, mut entry: Value) {
        entry["at_ms"] = json!(shared::now_ms());
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

    /// Echo every accepted WhatsApp send as a signed `sent` status webhook to `webhook_url`.
    pub fn echo_statuses(&mut self, webhook_url: &str, app_secret: &str) {
        self.echo = Some(Echo {
            webhook: webhook_url.to_owned(),
            key: SignatureKey::new(app_secret.as_bytes()),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("HTTP client"),
        });
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().expect("stub lock") = faults;
    }

    /// The fault this request gets, if any (counted).
    fn fault(&self, upstream: &str) -> Option<&'static str> {
        let kind = self
            .faults
            .lock()
            .expect("stub lock")
            .pick(upstream, shared::random_unit())?;
        *self
            .injected
            .lock()
            .expect("stub lock")
            .entry(kind)
            .or_default() += 1;
        Some(kind)
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.injected.lock().expect("stub lock").clone()
    }

    /// Sends Meta's `sent` status for `wamid` (with the send's tag) to the webhook, soon.
    fn echo(&self, account: &str, to: &str, wamid: &str, tag: Option<&str>) {
        let Some(echo) = &self.echo else { return };
        let mut status = json!({"id": wamid, "status": "sent", "recipient_id": to,
            "timestamp": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default().as_secs().to_string()});
        if let Some(tag) = tag {
            status["biz_opaque_callback_data"] = json!(tag);
        }
        let body = crate::demo::whatsapp_webhook(account, json!({"statuses": [status]}));
        let signature = echo.key.sign(body.as_bytes());
        let (http, url) = (echo.http.clone(), echo.webhook.clone());
        let tag = tag.unwrap_or("-").to_owned();
        // Meta retries a webhook delivery that fails; so does the stub (1 s, 2 s, 4 s, 8 s, 16 s).
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let mut last = String::new();
            for attempt in 0..6u32 {
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_secs(1 << (attempt - 1))).await;
                }
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", &signature)
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                    Err(e) => last = e.to_string(),
                }
            }
            // Unbuffered, into the stub's log: the fault harness's logs say which echo was lost.
            eprintln!("stub: the status echo for {tag} was not delivered after 6 tries: {last}");
        });
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
        .route("/_faults", get(faults_get).post(faults_set))
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

async fn responses(State(stubs): State<Arc<Stubs>>, Json(req): Json<Value>) -> Response {
    match stubs.fault("openai") {
        Some("openai_429") => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after-ms", "200")],
                Json(
                    json!({"error": {"message": "stub fault: rate limited", "type": "requests",
                                      "code": "rate_limit_exceeded"}}),
                ),
            )
                .into_response()
        }
        Some("openai_500") => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(
                    json!({"error": {"message": "stub fault", "type": "server_error",
                                      "code": "server_error"}}),
                ),
            )
                .into_response()
        }
        Some("openai_reset") => return reset(),
        Some(_) => tokio::time::sleep(SLOW).await,
        None => {}
    }
    answer(&stubs, &req).into_response()
}

fn answer(stubs: &Stubs, req: &Value) -> Json<Value> {
    let n = stubs.next();
    let heard: String = last_user_text(&req["input"]).chars().take(2000).collect();
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
) -> Response {
    if body["status"] == "read" {
        return Json(json!({"success": true})).into_response();
    }
    let fault = stubs.fault("graph");
    if fault == Some("graph_5xx") {
        return meta_temporary_error();
    }
    let id = format!("wamid.STUB{}", stubs.next());
    let to = body["to"]
        .as_str()
        .or(body["recipient"].as_str())
        .unwrap_or_default()
        .to_owned();
    let tag = body["biz_opaque_callback_data"].as_str().map(str::to_owned);
    stubs.record(
        json!({"channel": "whatsapp", "account": account, "to": to, "id": id,
                        "text": body["text"]["body"], "body": body}),
    );
    stubs.echo(&account, &to, &id, tag.as_deref());
    match fault {
        Some("graph_accept_5xx") => bad_gateway(),
        Some(_) => reset(),
        None => Json(
            json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                    "messages": [{"id": id}]}),
        )
        .into_response(),
    }
}

/// Meta's own temporary error: an answer with an error code, so nothing was sent.
fn meta_temporary_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(
            json!({"error": {"message": "stub fault: temporary error", "type": "OAuthException",
                              "code": 131000, "fbtrace_id": "STUB"}}),
        ),
    )
        .into_response()
}

/// A gateway's 502, without Meta's error body.
fn bad_gateway() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        "<html><body>502 Bad Gateway</body></html>",
    )
        .into_response()
}

async fn instagram(
    State(stubs): State<Arc<Stubs>>,
    Path(account): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let fault = stubs.fault("graph");
    if fault == Some("graph_5xx") {
        return meta_temporary_error();
    }
    let id = format!("mid.STUB{}", stubs.next());
    let to = body["recipient"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    stubs.record(
        json!({"channel": "instagram", "account": account, "to": to, "id": id,
                        "text": body["message"]["text"], "body": body}),
    );
    match fault {
        Some("graph_accept_5xx") => bad_gateway(),
        Some(_) => reset(),
        None => Json(json!({"recipient_id": to, "message_id": id})).into_response(),
    }
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

async fn faults_get(State(stubs): State<Arc<Stubs>>) -> Json<Value> {
    let spec = stubs.faults.lock().expect("stub lock").to_string();
    Json(json!({"faults": spec, "injected": stubs.injected()}))
}

async fn faults_set(State(stubs): State<Arc<Stubs>>, spec: String) -> Response {
    match Faults::parse(&spec) {
        Ok(f) => {
            tracing::info!(faults = %f, "stub faults set");
            stubs.set_faults(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct After {
    #[serde(default)]
    after: usize,
}

/// Everything recorded, or with `?after=N` what was recorded after the first N.
async fn sent(
    State(stubs): State<Arc<Stubs>>,
    axum::extract::Query(q): axum::extract::Query<After>,
) -> Json<Value> {
    let sent = stubs.sent.lock().expect("stub lock");
    Json(Value::Array(sent.iter().skip(q.after).cloned().collect()))
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
    fn fault_specs_parse_and_stack_their_rates_per_upstream() {
        let f = Faults::parse("openai_429=0.1, openai_500=0.2,graph_5xx=0.5").unwrap();
        assert_eq!(f.pick("openai", 0.05), Some("openai_429"));
        assert_eq!(f.pick("openai", 0.25), Some("openai_500"));
        assert_eq!(f.pick("openai", 0.35), None);
        assert_eq!(f.pick("graph", 0.49), Some("graph_5xx"));
        assert_eq!(f.pick("graph", 0.5), None);
        assert_eq!(f.to_string(), "openai_429=0.1,openai_500=0.2,graph_5xx=0.5");
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
        assert!(Faults::parse("openai_teapot=0.1")
            .unwrap_err()
            .contains("unknown fault"));
        assert!(Faults::parse("graph_5xx=2").is_err());
        assert!(Faults::parse("graph_5xx").is_err());
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
