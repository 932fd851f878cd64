//! The admin API on real parts (Postgres, the emulator's DynamoDB and SQS): every route's
//! happy path, validation, wrong role and other tenant; key revocation; pagination under
//! inserts; rate limits; the OpenAPI document against the route table.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use admin::routes::{Access, ROUTES};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{app_on, app_with, id_of, request, resp_of, settings_for, Harness, Resp};
use lambda_http::http::HeaderValue;
use lambda_http::Request;
use serde_json::{json, Value};
use shared::db::apikeys::Role;
use shared::db::{agents, channels, conversations, credits, messages, Db, DbConfig};
use shared::http::Routed;
use uuid::Uuid;

/// A response as (status, every header sorted by name, exact body text). Comparing the text
/// also pins the JSON key order (serde_json sorts keys here).
type Answer = (u16, Vec<(String, String)>, String);

fn answer(r: &Resp) -> Answer {
    // The Function URL puts Content-Length on every answer itself, so whether the function
    // sets it is not something a caller can see; when it does, it must be the body's length.
    if let Some(len) = r.headers.get("content-length") {
        assert_eq!(
            len.to_str().unwrap(),
            r.text.len().to_string(),
            "content-length is the body's length"
        );
    }
    answer_to_head(r)
}

/// [`answer`] for a HEAD request, whose answer has no body (HTTP) while its Content-Length is
/// the length the body would have had.
fn answer_to_head(r: &Resp) -> Answer {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| *k != "content-length")
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (r.status, headers, r.text.clone())
}

/// What [`answer`] gives for `headers` and the body `raw`.
fn answer_of(status: u16, headers: &[(&str, &str)], raw: impl Into<String>) -> Answer {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    headers.sort();
    (status, headers, raw.into())
}

/// What [`answer`] gives for the JSON body `raw`: `application/json`, `no-store`, `extra`.
fn json_answer(status: u16, raw: impl Into<String>, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    headers.extend_from_slice(extra);
    answer_of(status, &headers, raw)
}

/// An error `{"error":code,"message":message}` (the message is written into the JSON as is).
fn refusal(status: u16, code: &str, message: &str) -> Answer {
    json_answer(
        status,
        format!(r#"{{"error":"{code}","message":"{message}"}}"#),
        &[],
    )
}

fn unauthorized() -> Answer {
    refusal(
        401,
        "unauthorized",
        "send a valid API key as `Authorization: Bearer aak_…`",
    )
}

fn not_found() -> Answer {
    refusal(404, "not_found", "no such resource")
}

fn method_not_allowed() -> Answer {
    refusal(
        405,
        "method_not_allowed",
        "this path does not take that method",
    )
}

/// A 422 naming `fields` (their JSON text, keys sorted).
fn invalid(fields: &str) -> Answer {
    json_answer(
        422,
        format!(r#"{{"error":"invalid","fields":{fields},"message":"some fields are invalid"}}"#),
        &[],
    )
}

/// `r` is a 429 with `Retry-After` in 1..=60 s and the same number in the message (which says
/// "key" for the address limit too).
fn assert_limited(r: &Resp) {
    let s = r.headers["retry-after"].to_str().unwrap();
    let secs: u64 = s.parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let expected = json_answer(
        429,
        format!(
            r#"{{"error":"rate_limited","message":"too many requests for this key; retry in {s} s"}}"#
        ),
        &[("retry-after", s)],
    );
    assert_eq!(answer(r), expected);
}

/// `req` with header `name` set to `value` (`None`: removed).
fn with_header(mut req: Request, name: &'static str, value: Option<&str>) -> Request {
    match value {
        Some(v) => {
            req.headers_mut()
                .insert(name, HeaderValue::from_str(v).unwrap());
        }
        None => {
            req.headers_mut().remove(name);
        }
    }
    req
}

/// `path` with tenant A's ids in its parameters.
fn fill(h: &Harness, path: &str) -> String {
    path.replace("{tenant_id}", &h.a.id.to_string())
        .replace("{key_id}", &h.fx.viewer_key_id.to_string())
        .replace("{channel_id}", &h.fx.whatsapp.to_string())
        .replace("{agent_id}", &h.fx.agent.to_string())
        .replace("{conversation_id}", &h.fx.wa_conversation.to_string())
        .replace("{lead_id}", &h.fx.lead.to_string())
}

/// A valid body for the route (so only the key decides the outcome).
fn body_for(method: &str, path: &str) -> Value {
    match (method, path) {
        ("POST", "/v1/tenants") => json!({"name": "Other shop"}),
        ("POST", "/v1/tenants/{tenant_id}/credits") => json!({"amount": 5}),
        ("POST", "/v1/tenants/{tenant_id}/keys") | ("POST", "/v1/keys") => {
            json!({"name": "k", "role": "viewer"})
        }
        ("POST", "/v1/channels") | ("POST", "/v1/tenants/{tenant_id}/channels") => {
            json!({"channel": "webchat", "allowed_origins": ["https://b.example.com"]})
        }
        ("PATCH", "/v1/channels/{channel_id}") => json!({"display_name": "Renamed"}),
        ("POST", "/v1/agents") => json!({"name": "n", "model": "m"}),
        ("PATCH", "/v1/agents/{agent_id}") => json!({"name": "Renamed"}),
        ("PUT", "/v1/conversations/{conversation_id}/mode") => json!({"mode": "human"}),
        ("POST", "/v1/conversations/{conversation_id}/messages") => json!({"text": "hi"}),
        ("PUT", "/v1/webhook") => json!({"url": "https://crm.example.com/hook"}),
        _ => Value::Null,
    }
}

/// Tenant A's state the forbidden / foreign calls must not touch.
async fn snapshot(h: &Harness) -> Value {
    let row: Value = h
        .scalar(
            "SELECT jsonb_build_object(
               'agents', (SELECT jsonb_agg(jsonb_build_array(name, is_active) ORDER BY id) FROM agents WHERE user_id = $1),
               'channels', (SELECT jsonb_agg(jsonb_build_array(display_name, is_active, agent_id) ORDER BY id) FROM channel_accounts WHERE user_id = $1),
               'modes', (SELECT jsonb_agg(mode ORDER BY id) FROM conversations WHERE user_id = $1),
               'messages', (SELECT count(*) FROM messages WHERE user_id = $1),
               'keys', (SELECT jsonb_agg(jsonb_build_array(id, revoked_at IS NULL) ORDER BY id) FROM api_keys WHERE user_id = $1),
               'balance', (SELECT balance FROM credit_accounts WHERE user_id = $1),
               'tenant_active', (SELECT is_active FROM tenants WHERE id = $1),
               'webhook', (SELECT webhook_url FROM tenants WHERE id = $1),
               'tenants', (SELECT count(*) FROM tenants))",
            &[&h.a.id.uuid()],
        )
        .await;
    row
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_with_their_roles() {
    let doc: Value = serde_norway::from_str(admin::OPENAPI_YAML).expect("openapi.yaml parses");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let role = op["x-required-role"]
                .as_str()
                .unwrap_or("missing")
                .to_owned();
            let responses = op["responses"].as_object().unwrap();
            if role != "public" {
                for code in ["401", "429"] {
                    assert!(responses.contains_key(code), "{method} {path} lacks {code}");
                }
            }
            if role != "public" && role != "any" {
                assert!(responses.contains_key("403"), "{method} {path} lacks 403");
            }
            if path.contains('{') {
                assert!(responses.contains_key("404"), "{method} {path} lacks 404");
            }
            documented.insert((method.to_uppercase(), path.clone(), role));
        }
    }
    let routed: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_owned(),
                r.path.to_owned(),
                r.access.name().to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, routed);
    // Served as is, without a key.
    let h = Harness::new().await;
    let r = h.send("GET", "/v1/openapi.yaml", None, None).await;
    assert_eq!(answer(&r), openapi());
}

/// The OpenAPI document as served: YAML, and (unlike every JSON answer) no cache-control.
fn openapi() -> Answer {
    answer_of(
        200,
        &[("content-type", "application/yaml")],
        admin::OPENAPI_YAML,
    )
}

#[tokio::test]
async fn every_route_refuses_missing_keys_bad_keys_and_roles_below_it() {
    let h = Harness::new().await;
    let before = snapshot(&h).await;
    let ranked = [
        (Role::Viewer, h.a.viewer.as_str()),
        (Role::Agent, h.a.agent.as_str()),
        (Role::Owner, h.a.owner.as_str()),
    ];
    for route in ROUTES.iter().filter(|r| r.access != Access::Public) {
        let path = fill(&h, route.path);
        let body = body_for(route.method, route.path);
        let body_text = (!body.is_null()).then(|| body.to_string());
        for key in [None, Some("aak_abcdefgh_nope"), Some("not-a-key")] {
            let r = h.send(route.method, &path, key, body_text.as_deref()).await;
            assert_eq!(
                r.status, 401,
                "{} {} with {key:?}",
                route.method, route.path
            );
            assert_eq!(r.body["error"], "unauthorized");
        }
        let mut refused: Vec<&str> = Vec::new();
        match route.access {
            Access::Platform => refused.extend(ranked.iter().map(|(_, k)| *k)),
            Access::Tenant(required) => {
                refused.push(&h.platform);
                refused.extend(
                    ranked
                        .iter()
                        .filter(|(r, _)| *r < required)
                        .map(|(_, k)| *k),
                );
            }
            _ => {}
        }
        for key in refused {
            let r = h.call(route.method, &path, key, body.clone()).await;
            assert_eq!(r.status, 403, "{} {}: {}", route.method, route.path, r.text);
            assert_eq!(r.body["error"], "forbidden");
        }
    }
    assert_eq!(snapshot(&h).await, before, "refused calls changed nothing");
    assert!(h.graph_sends().await.is_empty());
}

#[tokio::test]
async fn another_tenants_ids_are_not_found_and_nothing_changes() {
    let h = Harness::new().await;
    let before = snapshot(&h).await;
    for route in ROUTES
        .iter()
        .filter(|r| matches!(r.access, Access::Tenant(_)))
    {
        if !route.path.contains('{') {
            // B's own resources (a new site, agent, key, its webhook): allowed, and A's state
            // (checked below) must not move.
            let r = h
                .call(
                    route.method,
                    route.path,
                    &h.b.owner,
                    body_for(route.method, route.path),
                )
                .await;
            assert!(
                r.status < 300,
                "{} {}: {}",
                route.method,
                route.path,
                r.text
            );
            continue;
        }
        let r = h
            .call(
                route.method,
                &fill(&h, route.path),
                &h.b.owner,
                body_for(route.method, route.path),
            )
            .await;
        assert_eq!(r.status, 404, "{} {}: {}", route.method, route.path, r.text);
        assert_eq!(r.body["error"], "not_found");
    }
    assert_eq!(snapshot(&h).await, before);
    assert!(h.graph_sends().await.is_empty());
    // B's lists hold none of A's rows.
    let a_ids = [
        h.fx.agent,
        h.fx.whatsapp,
        h.fx.wa_conversation,
        h.fx.lead,
        h.fx.viewer_key_id,
    ];
    for list in [
        "/v1/agents",
        "/v1/channels",
        "/v1/conversations",
        "/v1/leads",
        "/v1/keys",
        "/v1/credits/ledger",
    ] {
        let r = h
            .call("GET", list, &h.b.viewer_or_owner(list), Value::Null)
            .await;
        assert_eq!(r.status, 200, "{list}: {}", r.text);
        for id in a_ids {
            assert!(!r.text.contains(&id.to_string()), "{list} shows A's {id}");
        }
    }
    let csv = h
        .call("GET", "/v1/leads.csv", &h.b.viewer, Value::Null)
        .await;
    assert_eq!(csv.status, 200);
    assert!(!csv.text.contains("ana@example.com"));
    // An agent of B's own cannot be attached to A's channel either way round.
    let r = h
        .call(
            "PATCH",
            &format!("/v1/channels/{}", h.fx.whatsapp),
            &h.a.owner,
            json!({"agent_id": Uuid::new_v4()}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body["fields"]["agent_id"].is_string());
}

trait KeyFor {
    fn viewer_or_owner(&self, list: &str) -> String;
}

impl KeyFor for common::Tenant {
    fn viewer_or_owner(&self, list: &str) -> String {
        if list == "/v1/keys" {
            self.owner.clone()
        } else {
            self.viewer.clone()
        }
    }
}

#[tokio::test]
async fn tenants_top_ups_and_keys() {
    let h = Harness::new().await;
    // who am I
    let me = h.call("GET", "/v1/me", &h.a.agent, Value::Null).await;
    assert_eq!((me.status, me.body["role"].clone()), (200, json!("agent")));
    assert_eq!(me.body["tenant"]["name"], "Shop A");
    let me = h.call("GET", "/v1/me", &h.platform, Value::Null).await;
    assert_eq!(
        (me.body["role"].clone(), me.body["tenant"].clone()),
        (json!("platform"), Value::Null)
    );

    // validation
    let r = h
        .call(
            "POST",
            "/v1/tenants",
            &h.platform,
            json!({"name": "", "plan": "gold"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.body["fields"]["name"].is_string() && r.body["fields"]["plan"] == "unknown field");
    let r = h
        .send("POST", "/v1/tenants", Some(&h.platform), Some("{not json"))
        .await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (400, json!("malformed_json"))
    );
    let big = json!({"name": "x".repeat(300 * 1024)}).to_string();
    let r = h
        .send("POST", "/v1/tenants", Some(&h.platform), Some(&big))
        .await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (400, json!("body_too_large"))
    );

    // list, paged
    let page1 = h
        .call("GET", "/v1/tenants?limit=1", &h.platform, Value::Null)
        .await;
    assert_eq!(page1.body["data"][0]["name"], "Shop A");
    let next = page1.body["next_cursor"].as_str().unwrap();
    let page2 = h
        .call(
            "GET",
            &format!("/v1/tenants?limit=1&cursor={next}"),
            &h.platform,
            Value::Null,
        )
        .await;
    assert_eq!(page2.body["data"][0]["name"], "Shop B");
    assert!(page2.body["next_cursor"].is_null());
    let r = h
        .call("GET", "/v1/tenants?limit=0", &h.platform, Value::Null)
        .await;
    assert_eq!(r.status, 422);
    let r = h
        .call(
            "GET",
            "/v1/tenants?cursor=garbage",
            &h.platform,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 422);
    let one = h
        .call(
            "GET",
            &format!("/v1/tenants/{}", h.a.id),
            &h.platform,
            Value::Null,
        )
        .await;
    assert_eq!((one.status, one.body["balance"].clone()), (200, json!(0)));
    let r = h
        .call(
            "GET",
            &format!("/v1/tenants/{}", Uuid::new_v4()),
            &h.platform,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 404);

    // top-ups: validation, success, a reference only once
    let path = format!("/v1/tenants/{}/credits", h.a.id);
    for bad in [
        json!({}),
        json!({"amount": 0}),
        json!({"amount": "5"}),
        json!({"amount": 5, "reference": ""}),
    ] {
        let r = h.call("POST", &path, &h.platform, bad.clone()).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
    }
    let r = h
        .call(
            "POST",
            &path,
            &h.platform,
            json!({"amount": 500, "reference": "inv-1"}),
        )
        .await;
    assert_eq!((r.status, r.body["balance"].clone()), (201, json!(500)));
    let r = h
        .call(
            "POST",
            &path,
            &h.platform,
            json!({"amount": 500, "reference": "inv-1"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (409, json!("duplicate_reference"))
    );
    let credits = h.call("GET", "/v1/credits", &h.a.viewer, Value::Null).await;
    assert_eq!(credits.body["balance"], 500);
    let ledger = h
        .call("GET", "/v1/credits/ledger", &h.a.viewer, Value::Null)
        .await;
    assert_eq!(ledger.body["data"][0]["delta"], 500);
    assert_eq!(ledger.body["data"][0]["reference"], "inv-1");
    let r = h
        .call(
            "POST",
            &format!("/v1/tenants/{}/credits", Uuid::new_v4()),
            &h.platform,
            json!({"amount": 1}),
        )
        .await;
    assert_eq!(r.status, 404);

    // keys: shown once, listed by prefix, roles checked, revocation immediate
    let r = h
        .call(
            "POST",
            "/v1/keys",
            &h.a.owner,
            json!({"name": "ops", "role": "platform"}),
        )
        .await;
    assert_eq!(r.status, 422, "a tenant cannot mint a platform key");
    let made = h
        .call(
            "POST",
            "/v1/keys",
            &h.a.owner,
            json!({"name": "ops", "role": "viewer"}),
        )
        .await;
    assert_eq!(made.status, 201);
    let key = made.body["key"].as_str().unwrap().to_owned();
    let listed = h.call("GET", "/v1/keys", &h.a.owner, Value::Null).await;
    assert!(
        !listed.text.contains(&key),
        "the key itself is never listed"
    );
    assert!(listed.text.contains(made.body["prefix"].as_str().unwrap()));
    assert_eq!(
        h.call("GET", "/v1/credits", &key, Value::Null).await.status,
        200
    );
    let r = h
        .call(
            "DELETE",
            &format!("/v1/keys/{}", id_of(&made.body)),
            &h.a.owner,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.call("GET", "/v1/credits", &key, Value::Null).await.status,
        401,
        "revoked at once"
    );
    let r = h
        .call(
            "DELETE",
            &format!("/v1/keys/{}", id_of(&made.body)),
            &h.a.owner,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 404, "already revoked");
    let issued = h
        .call(
            "POST",
            &format!("/v1/tenants/{}/keys", h.b.id),
            &h.platform,
            json!({"name": "recovery", "role": "owner"}),
        )
        .await;
    assert_eq!(issued.status, 201);
    let r = h
        .call(
            "POST",
            &format!("/v1/tenants/{}/keys", h.b.id),
            &h.platform,
            json!({"name": "x", "role": "root"}),
        )
        .await;
    assert_eq!(r.status, 422);

    // deactivating a tenant stops its keys at once
    let r = h
        .call(
            "DELETE",
            &format!("/v1/tenants/{}", h.b.id),
            &h.platform,
            Value::Null,
        )
        .await;
    assert_eq!((r.status, r.body["is_active"].clone()), (200, json!(false)));
    assert_eq!(
        h.call("GET", "/v1/me", &h.b.owner, Value::Null)
            .await
            .status,
        401
    );
    assert_eq!(
        h.call("GET", "/v1/me", &h.a.owner, Value::Null)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn channel_accounts() {
    let h = Harness::new().await;
    let list = h
        .call("GET", "/v1/channels", &h.a.viewer, Value::Null)
        .await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);
    let wa = h
        .call(
            "GET",
            &format!("/v1/channels/{}", h.fx.whatsapp),
            &h.a.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(wa.body["waba_id"], "102290129340398");

    // validation
    let cases = [
        (json!({}), "channel"),
        (json!({"channel": "sms"}), "channel"),
        (
            json!({"channel": "whatsapp", "provider_account_id": "1234"}),
            "waba_id",
        ),
        (
            json!({"channel": "whatsapp", "provider_account_id": "12ab", "waba_id": "1"}),
            "provider_account_id",
        ),
        (
            json!({"channel": "instagram", "provider_account_id": "99", "agent_id": Uuid::new_v4()}),
            "agent_id",
        ),
        (
            json!({"channel": "webchat", "allowed_origins": ["https://shop.example.com/"]}),
            "allowed_origins",
        ),
        (
            json!({"channel": "webchat", "allowed_origins": []}),
            "allowed_origins",
        ),
        (
            json!({"channel": "webchat", "allowed_origins": ["https://a.example"], "require_identity": true}),
            "require_identity",
        ),
        (
            json!({"channel": "webchat", "allowed_origins": ["https://a.example"], "identity_secret": "short"}),
            "identity_secret",
        ),
    ];
    for (body, field) in cases {
        let r = h
            .call("POST", "/v1/channels", &h.a.owner, body.clone())
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert!(r.body["fields"][field].is_string(), "{body}: {}", r.text);
    }
    // A tenant names its account's own token secret; the deployment's token is the operator's.
    let r = h
        .call(
            "POST",
            "/v1/channels",
            &h.a.owner,
            json!({"channel": "whatsapp", "provider_account_id": "1065400000", "waba_id": "1"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(
        r.body["fields"]["access_token_secret"].is_string(),
        "{}",
        r.text
    );
    let own = h
        .call(
            "POST",
            "/v1/channels",
            &h.a.owner,
            json!({"channel": "whatsapp", "provider_account_id": "1065400000", "waba_id": "1",
                   "access_token_secret": "agent/channel/1065400000"}),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.text);
    let r = h
        .call(
            "PATCH",
            &format!("/v1/channels/{}", id_of(&own.body)),
            &h.a.owner,
            json!({"access_token_secret": null}),
        )
        .await;
    assert_eq!(
        r.status, 422,
        "a tenant cannot fall back to the operator's token"
    );
    // The operator's route: another tenant's id is 404, the tenant must exist.
    let r = h
        .call(
            "POST",
            &format!("/v1/tenants/{}/channels", Uuid::new_v4()),
            &h.platform,
            json!({"channel": "instagram", "provider_account_id": "1"}),
        )
        .await;
    assert_eq!(r.status, 404);
    // The same number again, for this or another tenant: 409 without saying whose.
    let dup = json!({"channel": "whatsapp", "provider_account_id": common::WA_NUMBER,
                     "waba_id": "1", "access_token_secret": "agent/channel/x"});
    for key in [&h.a.owner, &h.b.owner] {
        let r = h.call("POST", "/v1/channels", key, dup.clone()).await;
        assert_eq!(
            (r.status, r.body["error"].clone()),
            (409, json!("already_registered"))
        );
    }

    // a web chat site
    let site = h
        .call(
            "POST",
            "/v1/channels",
            &h.a.owner,
            json!({"channel": "webchat", "display_name": "Shop site", "agent_id": h.fx.agent,
                   "allowed_origins": ["https://shop.example.com"],
                   "identity_secret": "0123456789abcdef0123", "require_identity": true}),
        )
        .await;
    assert_eq!(site.status, 201, "{}", site.text);
    let key = site.body["webchat"]["site_key"].as_str().unwrap();
    assert!(key.starts_with("site_") && site.body["provider_account_id"] == key);
    assert_eq!(site.body["webchat"]["identity_verification"], true);
    assert!(
        !site.text.contains("0123456789abcdef0123"),
        "the identity secret is not echoed"
    );
    let found = shared::db::webchat::site_by_key(&h.t.db, key)
        .await
        .unwrap()
        .unwrap();
    assert!(found.require_identity && found.tenant == h.a.id);
    let site_path = format!("/v1/channels/{}", id_of(&site.body));
    let r = h
        .call(
            "PATCH",
            &site_path,
            &h.a.owner,
            json!({"allowed_origins": ["https://new.example.com"], "identity_secret": null}),
        )
        .await;
    assert_eq!(
        r.status, 422,
        "require_identity still needs the secret: {}",
        r.text
    );
    let r = h
        .call("PATCH", &site_path, &h.a.owner, json!({"allowed_origins": ["https://new.example.com"], "require_identity": false, "identity_secret": null}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["webchat"]["allowed_origins"],
        json!(["https://new.example.com"])
    );
    assert_eq!(r.body["webchat"]["identity_verification"], false);

    // update and soft delete
    let wa_path = format!("/v1/channels/{}", h.fx.whatsapp);
    for (body, field) in [
        (json!({"waba_id": "x1"}), "waba_id"),
        (json!({"is_active": "no"}), "is_active"),
        (json!({"agent_id": "nope"}), "agent_id"),
        (
            json!({"allowed_origins": ["https://x.example"]}),
            "allowed_origins",
        ),
    ] {
        let r = h.call("PATCH", &wa_path, &h.a.owner, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert!(r.body["fields"][field].is_string(), "{body}: {}", r.text);
    }
    let r = h
        .call("PATCH", &wa_path, &h.a.owner, json!({"display_name": "Front desk", "access_token_secret": "agent/channel/106540352242922"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["display_name"], "Front desk");
    let route = channels::resolve_channel_account(
        &h.t.db,
        shared::envelope::Channel::Whatsapp,
        common::WA_NUMBER,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        route.access_token_secret.as_deref(),
        Some("agent/channel/106540352242922")
    );
    let r = h.call("DELETE", &wa_path, &h.a.owner, Value::Null).await;
    assert_eq!((r.status, r.body["is_active"].clone()), (200, json!(false)));
    let route = channels::resolve_channel_account(
        &h.t.db,
        shared::envelope::Channel::Whatsapp,
        common::WA_NUMBER,
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!route.is_active, "soft-deleted: the row stays, inactive");
    let r = h
        .call("PATCH", &wa_path, &h.a.owner, json!({"is_active": true}))
        .await;
    assert_eq!(r.body["is_active"], true);
}

#[tokio::test]
async fn agents_are_validated_as_a_whole() {
    let h = Harness::new().await;
    for (body, field) in [
        (json!({"model": "m"}), "name"),
        (json!({"name": "n"}), "model"),
        (
            json!({"name": "n", "model": "m", "temperature": 3}),
            "temperature",
        ),
        (
            json!({"name": "n", "model": "m", "temperature": 0.5, "reasoning_effort": "low"}),
            "temperature",
        ),
        (
            json!({"name": "n", "model": "m", "reasoning_effort": "extreme"}),
            "reasoning_effort",
        ),
        (
            json!({"name": "n", "model": "m", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"name": "n", "model": "m", "price_input_per_1k": -1}),
            "price_input_per_1k",
        ),
        (
            json!({"name": "n", "model": "m", "base_url": "https://attacker.example/v1"}),
            "base_url",
        ),
        (
            json!({"name": "n", "model": "m", "extra_lead_fields": {"bedrooms": {"type": "date"}}}),
            "extra_lead_fields",
        ),
        (
            json!({"name": "n", "model": "m", "extra_lead_fields": {"name": {"type": "string"}}}),
            "extra_lead_fields",
        ),
        (
            json!({"name": "n", "model": "m", "extra_lead_fields": []}),
            "extra_lead_fields",
        ),
        (
            json!({"name": "n", "model": "m", "temprature": 1}),
            "temprature",
        ),
    ] {
        let r = h.call("POST", "/v1/agents", &h.a.owner, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert!(r.body["fields"][field].is_string(), "{body}: {}", r.text);
    }
    let made = h
        .call(
            "POST",
            "/v1/agents",
            &h.a.owner,
            json!({"name": "support", "model": "gpt-5-mini", "reasoning_effort": "minimal",
                   "base_url": "https://llm.example.net/v1/", "store": false,
                   "price_input_per_1k": 2, "price_output_per_1k": 8, "min_balance": 10,
                   "fallback_no_credits": "We'll be right back.",
                   "extra_lead_fields": {"bedrooms": {"type": "integer", "description": "Bedrooms wanted"}}}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let id = id_of(&made.body);
    let stored = agents::agent(&h.t.db, h.a.id, id).await.unwrap().unwrap();
    assert_eq!(stored.reasoning_effort.as_deref(), Some("minimal"));
    assert_eq!(
        stored.base_url.as_deref(),
        Some("https://llm.example.net/v1")
    );
    assert!(!stored.store && stored.min_balance == 10);
    assert_eq!(stored.extra_lead_fields["bedrooms"]["type"], "integer");
    // PATCH changes only what it names, and the whole is checked again.
    let path = format!("/v1/agents/{id}");
    let r = h
        .call("PATCH", &path, &h.a.owner, json!({"temperature": 0.2}))
        .await;
    assert_eq!(r.status, 422, "still has a reasoning effort: {}", r.text);
    let r = h
        .call(
            "PATCH",
            &path,
            &h.a.owner,
            json!({"temperature": 0.2, "reasoning_effort": null, "instructions": "Be brief."}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["model"], "gpt-5-mini");
    assert_eq!(r.body["instructions"], "Be brief.");
    assert!((r.body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    let got = h.call("GET", &path, &h.a.viewer, Value::Null).await;
    assert_eq!(got.body["price_output_per_1k"], 8);
    assert_eq!(
        h.call("GET", "/v1/agents", &h.a.viewer, Value::Null)
            .await
            .body["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let r = h
        .call("PATCH", &path, &h.a.owner, json!({"is_active": false}))
        .await;
    assert_eq!(
        r.status, 422,
        "deactivation goes through DELETE and its checks"
    );
    // Deactivation is refused while a channel answers with the agent.
    let used = format!("/v1/agents/{}", h.fx.agent);
    let r = h.call("DELETE", &used, &h.a.owner, Value::Null).await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (409, json!("agent_in_use"))
    );
    for ch in [h.fx.whatsapp, h.fx.instagram] {
        let r = h
            .call(
                "PATCH",
                &format!("/v1/channels/{ch}"),
                &h.a.owner,
                json!({"agent_id": id}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let r = h.call("DELETE", &used, &h.a.owner, Value::Null).await;
    assert_eq!((r.status, r.body["is_active"].clone()), (200, json!(false)));
    let r = h
        .call(
            "PATCH",
            &format!("/v1/channels/{}", h.fx.whatsapp),
            &h.a.owner,
            json!({"agent_id": h.fx.agent}),
        )
        .await;
    assert_eq!(r.status, 422, "an inactive agent cannot be attached");
    let r = h
        .call("PATCH", &used, &h.a.owner, json!({"is_active": true}))
        .await;
    assert_eq!(r.body["is_active"], true);
}

#[tokio::test]
async fn conversations_messages_and_leads() {
    let h = Harness::new().await;
    let list = h
        .call("GET", "/v1/conversations", &h.a.viewer, Value::Null)
        .await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);
    let wa = h
        .call(
            "GET",
            "/v1/conversations?channel=whatsapp&mode=ai",
            &h.a.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(wa.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(wa.body["data"][0]["contact"]["display_name"], "Ana");
    let none = h
        .call(
            "GET",
            "/v1/conversations?updated_since=2999-01-01T00:00:00Z",
            &h.a.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(none.body["data"], json!([]));
    for bad in [
        "mode=robot",
        "channel=sms",
        "updated_since=yesterday",
        "limit=201",
        "cursor=%5B1%5D",
    ] {
        let r = h
            .call(
                "GET",
                &format!("/v1/conversations?{bad}"),
                &h.a.viewer,
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
    }
    let one = h
        .call(
            "GET",
            &format!("/v1/conversations/{}", h.fx.wa_conversation),
            &h.a.viewer,
            Value::Null,
        )
        .await;
    assert_eq!((one.status, one.body["mode"].clone()), (200, json!("ai")));
    assert!(one.body.get("_k").is_none());
    let msgs = h
        .call(
            "GET",
            &format!("/v1/conversations/{}/messages", h.fx.wa_conversation),
            &h.a.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(msgs.body["data"][0]["content"]["body"], "Hola");
    assert_eq!(msgs.body["data"][0]["status"], "received");

    // leads
    let leads = h.call("GET", "/v1/leads", &h.a.viewer, Value::Null).await;
    assert_eq!(leads.body["data"][0]["email"], "ana@example.com");
    assert_eq!(leads.body["data"][0]["channel"], "whatsapp");
    assert_eq!(
        leads.body["data"][0]["conversation_id"],
        json!(h.fx.wa_conversation)
    );
    let lead = h
        .call(
            "GET",
            &format!("/v1/leads/{}", h.fx.lead),
            &h.a.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(
        (lead.status, lead.body["history"].clone()),
        (200, json!([]))
    );
    let csv = h
        .call("GET", "/v1/leads.csv", &h.a.viewer, Value::Null)
        .await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let mut lines = csv.text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("id,contact_id,conversation_id,channel,name,email,phone"));
    let row = lines.next().unwrap();
    assert!(
        row.contains("ana@example.com") && row.contains("'=cmd|calc"),
        "{row}"
    );
    assert!(csv.headers.get("x-next-cursor").is_none());
    let r = h
        .call("GET", "/v1/leads.csv?limit=0", &h.a.viewer, Value::Null)
        .await;
    assert_eq!(r.status, 422);
    let r = h
        .call(
            "GET",
            &format!("/v1/leads/{}", Uuid::new_v4()),
            &h.a.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 404);
}

/// Walks a list with `limit` 2, calling `between` after each page; returns every id seen.
async fn walk(
    h: &Harness,
    base: &str,
    key: &str,
    mut between: impl AsyncFnMut(usize),
) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for n in 0.. {
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{base}{sep}limit=2&cursor={c}"),
            None => format!("{base}{sep}limit=2"),
        };
        let r = h.call("GET", &url, key, Value::Null).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text);
        seen.extend(
            r.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].clone()),
        );
        between(n).await;
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    seen
}

#[tokio::test]
async fn pages_stay_stable_while_rows_are_inserted() {
    let h = Harness::new().await;
    let db = &h.t.db;
    let tenant = h.a.id;
    let conv = h.fx.wa_conversation;
    for i in 0..5 {
        messages::insert_outbound_message(
            db,
            tenant,
            conv,
            Some(&format!("wamid.P{i}")),
            &json!({"type": "text", "body": i}),
            None,
            None,
            None,
        )
        .await
        .unwrap();
    }
    // messages: oldest first; new ones appended while paging are reached, none twice
    let mut added = 0;
    let seen = walk(
        &h,
        &format!("/v1/conversations/{conv}/messages"),
        &h.a.viewer,
        async |n| {
            if n < 2 {
                messages::insert_outbound_message(
                    db,
                    tenant,
                    conv,
                    Some(&format!("wamid.N{n}")),
                    &json!({"type": "text", "body": "new"}),
                    None,
                    None,
                    None,
                )
                .await
                .unwrap();
                added += 1;
            }
        },
    )
    .await;
    let unique: BTreeSet<String> = seen.iter().map(Value::to_string).collect();
    assert_eq!(unique.len(), seen.len(), "no message twice");
    assert_eq!(seen.len(), 1 + 5 + added, "every message once");
    let ids: Vec<i64> = seen.iter().map(|v| v.as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // ledger: newest first; top-ups during paging do not shift what follows
    for i in 1..=5 {
        credits::top_up(db, tenant, i, "top_up", None)
            .await
            .unwrap();
    }
    let seen = walk(&h, "/v1/credits/ledger", &h.a.viewer, async |_| {
        credits::top_up(db, tenant, 100, "top_up", None)
            .await
            .unwrap();
    })
    .await;
    let unique: BTreeSet<String> = seen.iter().map(Value::to_string).collect();
    assert_eq!(
        (seen.len(), unique.len()),
        (5, 5),
        "the 5 entries before paging, once each"
    );

    // conversations: newest activity first; new conversations land on page one only
    let wa = h.fx.whatsapp;
    let mut originals = vec![h.fx.wa_conversation, h.fx.ig_conversation];
    for i in 0..4 {
        let contact = conversations::upsert_contact(
            db,
            tenant,
            wa,
            &format!("52155000000{i}"),
            None,
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
        originals.push(
            conversations::conversation_for(db, tenant, wa, contact)
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    let mut fresh = 0;
    let seen = walk(&h, "/v1/conversations", &h.a.viewer, async |_| {
        let contact = conversations::upsert_contact(
            db,
            tenant,
            wa,
            &format!("52199000000{fresh}"),
            None,
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
        conversations::conversation_for(db, tenant, wa, contact)
            .await
            .unwrap()
            .unwrap();
        fresh += 1;
    })
    .await;
    let seen: Vec<Uuid> = seen
        .iter()
        .map(|v| Uuid::parse_str(v.as_str().unwrap()).unwrap())
        .collect();
    let unique: BTreeSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len());
    assert_eq!(unique, originals.into_iter().collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn the_outbound_webhook_secret_is_shown_once() {
    let h = Harness::new().await;
    let r = h
        .call(
            "PUT",
            "/v1/webhook",
            &h.a.owner,
            json!({"url": "http://crm.example.com/hook"}),
        )
        .await;
    assert_eq!(r.status, 422, "plain http is refused");
    let r = h.call("PUT", "/v1/webhook", &h.a.owner, json!({})).await;
    assert!(r.body["fields"]["url"].is_string());
    let first = h
        .call(
            "PUT",
            "/v1/webhook",
            &h.a.owner,
            json!({"url": "https://crm.example.com/hook"}),
        )
        .await;
    assert_eq!(first.status, 200);
    let secret = first.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() > 40);
    let got = h.call("GET", "/v1/webhook", &h.a.owner, Value::Null).await;
    assert_eq!(got.body["url"], "https://crm.example.com/hook");
    assert!(!got.text.contains(&secret));
    let again = h
        .call(
            "PUT",
            "/v1/webhook",
            &h.a.owner,
            json!({"url": "https://crm.example.com/v2"}),
        )
        .await;
    assert!(again.body.get("secret").is_none(), "kept, not shown again");
    let stored: Option<String> = h
        .scalar(
            "SELECT webhook_secret FROM tenants WHERE id = $1",
            &[&h.a.id.uuid()],
        )
        .await;
    assert_eq!(stored.as_deref(), Some(secret.as_str()));
    let rotated = h
        .call(
            "PUT",
            "/v1/webhook",
            &h.a.owner,
            json!({"url": "https://crm.example.com/v2", "rotate_secret": true}),
        )
        .await;
    assert_ne!(rotated.body["secret"].as_str().unwrap(), secret);
    let r = h
        .call("DELETE", "/v1/webhook", &h.a.owner, Value::Null)
        .await;
    assert_eq!(r.body["url"], Value::Null);
    let url: Option<String> = h
        .scalar(
            "SELECT webhook_url FROM tenants WHERE id = $1",
            &[&h.a.id.uuid()],
        )
        .await;
    assert_eq!(url, None);
}

#[tokio::test]
async fn each_key_has_its_own_rate_limit() {
    let h = Harness::new().await;
    let mut settings = settings_for(&h.stack, &h.graph).await;
    settings.per_key_per_minute = 3;
    let app = app_with(&h.t, &h.sdk, settings);
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..10 {
        let r = app
            .handle(request("GET", "/v1/credits", Some(&h.a.viewer), None))
            .await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refused = resp_of(refused.expect("the limit was reached"));
    assert!(ok >= 3);
    assert_limited(&refused);
    let fresh = shared::db::apikeys::issue(&h.t.db, Some(h.a.id), Role::Viewer, "fresh")
        .await
        .unwrap();
    let other = app
        .handle(request("GET", "/v1/credits", Some(&fresh.key), None))
        .await;
    assert_eq!(other.status().as_u16(), 200, "another key is not limited");
}

#[tokio::test]
async fn malformed_ids_are_not_found_and_paging_parameters_are_checked() {
    let h = Harness::new().await;
    let before = snapshot(&h).await;
    for route in ROUTES.iter().filter(|r| r.path.contains('{')) {
        let key = match route.access {
            Access::Platform => h.platform.clone(),
            _ => h.a.owner.clone(),
        };
        let path = route
            .path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "not-a-uuid"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let r = h
            .call(
                route.method,
                &path,
                &key,
                body_for(route.method, route.path),
            )
            .await;
        assert_eq!(r.status, 404, "{} {path}: {}", route.method, r.text);
    }
    assert_eq!(snapshot(&h).await, before);
    let conv = h.fx.wa_conversation;
    for (path, key) in [
        ("/v1/tenants".to_owned(), &h.platform),
        ("/v1/credits/ledger".to_owned(), &h.a.viewer),
        ("/v1/conversations".to_owned(), &h.a.viewer),
        (format!("/v1/conversations/{conv}/messages"), &h.a.viewer),
        ("/v1/leads".to_owned(), &h.a.viewer),
        ("/v1/leads.csv".to_owned(), &h.a.viewer),
    ] {
        for bad in ["limit=0", "limit=x", "cursor=nope", "cursor=WyJ4Il0"] {
            let r = h
                .call("GET", &format!("{path}?{bad}"), key, Value::Null)
                .await;
            assert_eq!(r.status, 422, "{path}?{bad}: {}", r.text);
            assert_eq!(r.body["error"], "invalid");
        }
    }
}

#[tokio::test]
async fn the_templates_environment_configures_the_function() {
    use secrecy::ExposeSecret;
    let sdk = local_aws::testing::emulator_sdk().await;
    let (template, stack) = local_aws::testing::fresh_stack(&sdk).await;
    let env = stack.function_env(&template, "AdminFunction").unwrap();
    let config =
        admin::Config::from_reader(shared::config::EnvReader::new(|k| env.get(k).cloned()))
            .expect("the template's environment is a valid configuration");
    let s = &config.settings;
    assert_eq!(s.limits_table, stack.tables["IdempotencyTable"]);
    assert_eq!(s.extraction_queue_url, stack.queue("ExtractionQueue").url);
    assert_eq!(
        s.token_secret_prefix.as_deref(),
        Some(format!("{}/channel/", stack.name).as_str())
    );
    assert!(
        s.model_base_urls.is_empty(),
        "no endpoint override unless the operator lists one"
    );
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    sm.put_secret_value()
        .secret_id(&stack.secrets["DatabaseSecret"].arn)
        .secret_string(json!({"url": "postgres://u:p@db:5432/agent"}).to_string())
        .send()
        .await
        .unwrap();
    let secrets = shared::secrets::SecretCache::new(sm, std::time::Duration::from_secs(300));
    let url = config.database.resolve(&secrets).await.unwrap();
    let tokens = config.graph.tokens(secrets).await.unwrap();
    assert!(url.expose_secret().starts_with("postgres://u:p@db"));
    assert!(
        tokens.default.is_none(),
        "no default Graph token until the operator sets one"
    );
}

#[tokio::test]
async fn each_source_address_is_limited_before_any_key_is_looked_up() {
    use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    let h = Harness::new().await;
    let mut settings = settings_for(&h.stack, &h.graph).await;
    settings.per_ip_per_minute = 3;
    let app = app_with(&h.t, &h.sdk, settings);
    let from = |ip: &str, key: &str| {
        let mut ctx = ApiGatewayV2httpRequestContext::default();
        ctx.http.source_ip = Some(ip.to_owned());
        request("GET", "/v1/credits", Some(key), None)
            .with_request_context(RequestContext::ApiGatewayV2(ctx))
    };
    let mut refused = None;
    for n in 0..10 {
        // Bad keys and a good one alike count against the address.
        let key = if n % 2 == 0 {
            "aak_abcdefgh_guess"
        } else {
            h.a.viewer.as_str()
        };
        let r = resp_of(app.handle(from("203.0.113.7", key)).await);
        assert!(matches!(r.status, 200 | 401 | 429), "{}", r.status);
        if r.status == 429 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the address was limited");
    assert_limited(&refused);
    let other = app.handle(from("198.51.100.9", &h.a.viewer)).await;
    assert_eq!(other.status().as_u16(), 200, "another address is not");
}

#[tokio::test]
async fn unknown_paths_and_other_methods_are_refused_before_the_key_is_read() {
    let h = Harness::new().await;
    // No key is sent: these answers come before authentication.
    let cases = [
        ("GET", "/v1/nope", not_found()),
        ("GET", "/", not_found()),
        ("GET", "/v1", not_found()),
        ("GET", "/v1/", not_found()),
        ("GET", "/me", not_found()),
        ("GET", "/lambda-url/admin/me", not_found()),
        ("GET", "/v2/me", not_found()),
        ("GET", "/V1/me", not_found()),
        ("GET", "/v1/me/extra", not_found()),
        ("GET", "/v1/agents/a/b", not_found()),
        ("GET", "/v1/openapi.yml", not_found()),
        // Matching starts at the first `v1` segment, so a second one is part of the path.
        ("GET", "/v1/v1/me", not_found()),
        ("GET", "/lambda-url/v1/admin/v1/me", not_found()),
        ("POST", "/v1/nope", not_found()),
        ("POST", "/v1/me", method_not_allowed()),
        ("HEAD", "/v1/me", method_not_allowed()),
        ("HEAD", "/v1/openapi.yaml", method_not_allowed()),
        ("OPTIONS", "/v1/agents", method_not_allowed()),
        ("PUT", "/v1/agents", method_not_allowed()),
        ("PATCH", "/v1/openapi.yaml", method_not_allowed()),
        ("POST", "/v1/leads.csv", method_not_allowed()),
        ("GET", "/v1/tenants/x/credits", method_not_allowed()),
        ("POST", "/lambda-url/admin/v1/me", method_not_allowed()),
        ("DELETE", "/lambda-url/admin//v1//me/", method_not_allowed()),
        (
            "PUT",
            "//v1/conversations//x/messages/",
            method_not_allowed(),
        ),
    ];
    for (method, path, expected) in cases {
        let r = h.send(method, path, None, None).await;
        if method == "HEAD" {
            // The same answer without its body, as HTTP has it for HEAD.
            let (status, headers, _) = expected;
            assert_eq!(
                answer_to_head(&r),
                (status, headers, String::new()),
                "{method} {path}"
            );
        } else {
            assert_eq!(answer(&r), expected, "{method} {path}");
        }
    }
    // A bad key changes nothing: the route is looked up first.
    let r = h
        .send("GET", "/v1/nope", Some("aak_abcdefgh_nope"), None)
        .await;
    assert_eq!(answer(&r), not_found());
}

#[tokio::test]
async fn routes_are_found_behind_a_prefix_and_across_empty_segments() {
    let h = Harness::new().await;
    // Without a key: the document, or (found, so the key is asked for) 401 rather than 404.
    for (path, expected) in [
        ("/lambda-url/admin/v1/openapi.yaml", openapi()),
        ("//v1//openapi.yaml/", openapi()),
        ("/anything/at/all/v1/openapi.yaml", openapi()),
        ("/lambda-url/admin/v1/me", unauthorized()),
        ("/v1//me//", unauthorized()),
        ("/lambda-url/admin/v1/agents/x/", unauthorized()),
    ] {
        let r = h.send("GET", path, None, None).await;
        assert_eq!(answer(&r), expected, "{path}");
    }
    let me = answer_of_me(&h);
    for path in ["/v1/me", "/lambda-url/admin/v1/me", "//v1/me/"] {
        let r = h.send("GET", path, Some(&h.a.viewer), None).await;
        assert_eq!(answer(&r), me, "{path}");
    }
    let agent = format!("/v1/agents/{}", h.fx.agent);
    let plain = answer(&h.send("GET", &agent, Some(&h.a.viewer), None).await);
    assert_eq!(plain.0, 200, "{}", plain.2);
    for path in [
        format!("/lambda-url/admin{agent}"),
        format!("{agent}/"),
        format!("/lambda-url/admin//v1//agents//{}//", h.fx.agent),
    ] {
        let r = h.send("GET", &path, Some(&h.a.viewer), None).await;
        assert_eq!(answer(&r), plain, "{path}");
    }
    // Path parameters are the raw segment: a percent-encoded id is not decoded into one.
    let id = h.fx.agent.to_string();
    let encoded = format!("/v1/agents/%{:02X}{}", id.as_bytes()[0], &id[1..]);
    for path in [encoded.as_str(), "/v1/agents/%FF", "/v1/agents/%zz"] {
        let r = h.send("GET", path, Some(&h.a.viewer), None).await;
        assert_eq!(answer(&r), not_found(), "{path}");
    }
}

/// `GET /v1/me` of tenant A's viewer key, exactly.
fn answer_of_me(h: &Harness) -> Answer {
    json_answer(
        200,
        format!(
            r#"{{"key_id":"{}","role":"viewer","tenant":{{"id":"{}","name":"Shop A"}}}}"#,
            h.fx.viewer_key_id, h.a.id
        ),
        &[],
    )
}

#[tokio::test]
async fn key_and_role_refusals_keep_their_exact_bodies() {
    let h = Harness::new().await;
    let me = || request("GET", "/v1/me", None, None);
    let auth = |v: &str| with_header(me(), "authorization", Some(v));
    let revoked = shared::db::apikeys::issue(&h.t.db, Some(h.a.id), Role::Viewer, "gone")
        .await
        .unwrap();
    shared::db::apikeys::revoke(&h.t.db, Some(h.a.id), revoked.id)
        .await
        .unwrap();
    let long = format!("aak_abcdefgh_{}", "x".repeat(200));
    let cases = [
        ("no header", me()),
        ("no scheme", auth(&h.a.viewer)),
        ("upper-case scheme", auth(&format!("BEARER {}", h.a.viewer))),
        ("no space", auth(&format!("Bearer{}", h.a.viewer))),
        ("basic", auth("Basic dXNlcjpwYXNz")),
        ("empty key", auth("Bearer ")),
        ("not a key", auth("Bearer not-a-key")),
        ("unknown key", auth("Bearer aak_abcdefgh_nope")),
        ("over-long key", auth(&format!("Bearer {long}"))),
        ("revoked key", auth(&format!("Bearer {}", revoked.key))),
    ];
    for (name, req) in cases {
        assert_eq!(answer(&h.handle(req).await), unauthorized(), "{name}");
    }
    let mut not_utf8 = me();
    not_utf8.headers_mut().insert(
        "authorization",
        HeaderValue::from_bytes(b"Bearer aak_\xff").unwrap(),
    );
    assert_eq!(answer(&h.handle(not_utf8).await), unauthorized());
    // Both spellings of the scheme are accepted; the correlation id is not echoed.
    for scheme in ["Bearer", "bearer"] {
        let req = with_header(
            auth(&format!("{scheme} {}", h.a.viewer)),
            "x-correlation-id",
            Some("trace-abc-123"),
        );
        assert_eq!(answer(&h.handle(req).await), answer_of_me(&h), "{scheme}");
    }

    let conv = h.fx.wa_conversation;
    let cases = [
        (
            "GET",
            "/v1/tenants".to_owned(),
            &h.a.owner,
            "this route needs the platform key",
        ),
        (
            "GET",
            "/v1/channels".to_owned(),
            &h.platform,
            "this route needs a tenant key; the platform key manages tenants",
        ),
        (
            "POST",
            "/v1/agents".to_owned(),
            &h.a.agent,
            "this route needs the owner role",
        ),
        (
            "PUT",
            format!("/v1/conversations/{conv}/mode"),
            &h.a.viewer,
            "this route needs the agent role",
        ),
    ];
    for (method, path, key, message) in cases {
        let r = h.send(method, &path, Some(key), Some("{}")).await;
        assert_eq!(
            answer(&r),
            refusal(403, "forbidden", message),
            "{method} {path}"
        );
    }
    // The role is checked before the body's size.
    let big = " ".repeat(300 * 1024);
    let r = h
        .send("POST", "/v1/agents", Some(&h.a.viewer), Some(&big))
        .await;
    assert_eq!(
        answer(&r),
        refusal(403, "forbidden", "this route needs the owner role")
    );
}

#[tokio::test]
async fn body_refusals_keep_their_exact_bodies() {
    let h = Harness::new().await;
    let platform = Some(h.platform.as_str());
    let too_large = refusal(400, "body_too_large", "bodies are limited to 262144 bytes");
    let pad = |body: &str, len: usize| format!("{body}{}", " ".repeat(len - body.len()));
    let at_limit = pad(r#"{"plan":1}"#, 262_144);
    let over = pad(r#"{"plan":1}"#, 262_145);
    let r = h
        .send("POST", "/v1/tenants", platform, Some(&at_limit))
        .await;
    assert_eq!(
        answer(&r),
        invalid(r#"{"name":"is required","plan":"unknown field"}"#),
        "262144 bytes are read"
    );
    let r = h.send("POST", "/v1/tenants", platform, Some(&over)).await;
    assert_eq!(answer(&r), too_large);
    // Every route counts the body, GETs too, before the query is read.
    let r = h
        .send("GET", "/v1/tenants?limit=0", platform, Some(&over))
        .await;
    assert_eq!(answer(&r), too_large);

    let not_json = refusal(400, "malformed_json", "the body is not valid JSON");
    let not_object = refusal(400, "malformed_json", "the body must be a JSON object");
    for (body, expected) in [
        ("{not json", &not_json),
        ("{}x", &not_json),
        ("[1]", &not_object),
        ("null", &not_object),
        ("\"name\"", &not_object),
        ("5", &not_object),
    ] {
        let r = h.send("POST", "/v1/tenants", platform, Some(body)).await;
        assert_eq!(&answer(&r), expected, "{body}");
    }
    // An empty or blank body reads as `{}`.
    for body in ["", " \n\t"] {
        let r = h.send("POST", "/v1/tenants", platform, Some(body)).await;
        assert_eq!(answer(&r), invalid(r#"{"name":"is required"}"#), "{body:?}");
    }
    let name_and_plan = invalid(r#"{"name":"must be 1 to 200 characters","plan":"unknown field"}"#);
    // The content type is not looked at.
    let body = Some(r#"{"name":"","plan":"gold"}"#);
    for content_type in [Some("application/json"), Some("text/plain"), None] {
        let req = with_header(
            request("POST", "/v1/tenants", platform, body),
            "content-type",
            content_type,
        );
        assert_eq!(
            answer(&h.handle(req).await),
            name_and_plan,
            "{content_type:?}"
        );
    }
    // Query filters, several at once; `limit` is checked on its own before them.
    let list = async |query: &str| {
        let path = format!("/v1/conversations?{query}");
        answer(&h.call("GET", &path, &h.a.viewer, Value::Null).await)
    };
    assert_eq!(
        list("mode=robot&channel=sms&updated_since=yesterday").await,
        invalid(
            r#"{"channel":"must be whatsapp, instagram or webchat","mode":"must be ai or human","updated_since":"must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z"}"#
        )
    );
    assert_eq!(
        list("mode=robot&limit=0").await,
        invalid(r#"{"limit":"an integer from 1 to 200"}"#)
    );
}

#[tokio::test]
async fn database_failures_answer_503_or_500_without_detail() {
    let h = Harness::new().await;
    let settings = settings_for(&h.stack, &h.graph).await;
    // Nothing listens on port 9: the connection is refused, worth retrying.
    let closed = app_on(
        Db::new(DbConfig::new("postgres://u:p@127.0.0.1:9/agent")),
        &h.sdk,
        settings.clone(),
    );
    // The server is there but the database is not: a retry will not help.
    let missing = app_on(
        Db::new(DbConfig::new(shared::db::url_with_database(
            &h.t.url,
            "no_such_database_here",
        ))),
        &h.sdk,
        settings,
    );
    let unavailable = refusal(
        503,
        "unavailable",
        "a dependency is unavailable; retry shortly",
    );
    let internal = refusal(500, "internal", "internal error");
    for (app, expected) in [(&closed, unavailable), (&missing, internal)] {
        let r = resp_of(
            app.handle(request("GET", "/v1/me", Some(&h.a.viewer), None))
                .await,
        );
        assert_eq!(answer(&r), expected);
        // Refusals that need no database still come first.
        let r = resp_of(app.handle(request("GET", "/v1/me", None, None)).await);
        assert_eq!(answer(&r), unauthorized());
        let r = resp_of(
            app.handle(request("GET", "/v1/me", Some("not-a-key"), None))
                .await,
        );
        assert_eq!(answer(&r), unauthorized());
        let r = resp_of(app.handle(request("GET", "/v1/nope", None, None)).await);
        assert_eq!(answer(&r), not_found());
        let r = resp_of(
            app.handle(request("GET", "/v1/openapi.yaml", None, None))
                .await,
        );
        assert_eq!(answer(&r), openapi());
    }
}

/// Sends `patch` while another transaction holds a change of row `id` of `table`, and commits
/// that change once the PATCH waits for the row: the PATCH read the row before the change, so
/// its conditional write (`updated_at` as read) then finds nothing to update.
async fn lose_race(h: &Harness, table: &str, id: Uuid, patch: Request) -> Resp {
    let other = Db::new(DbConfig::new(h.t.url.clone()));
    let c = other.client().await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(
        &format!("UPDATE {table} SET is_active = is_active WHERE id = $1"),
        &[&id],
    )
    .await
    .unwrap();
    let commit = async {
        let started = Instant::now();
        loop {
            let waiting: i64 = h
                .scalar(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await;
            if waiting > 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the PATCH never waited for the row"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.batch_execute("COMMIT").await.unwrap();
    };
    let (resp, ()) = tokio::join!(h.handle(patch), commit);
    resp
}

#[tokio::test]
async fn a_patch_that_loses_a_race_gets_409_and_changes_nothing() {
    let h = Harness::new().await;
    let conflict = refusal(
        409,
        "modified_concurrently",
        "the resource changed while this request was applied; read it again and retry",
    );
    let body = Some(r#"{"display_name":"Renamed"}"#);
    let channel = format!("/v1/channels/{}", h.fx.whatsapp);
    let patch = request("PATCH", &channel, Some(&h.a.owner), body);
    let r = lose_race(&h, "channel_accounts", h.fx.whatsapp, patch).await;
    assert_eq!(answer(&r), conflict);
    let got = h.call("GET", &channel, &h.a.viewer, Value::Null).await;
    assert_eq!(got.body["display_name"], Value::Null, "{}", got.text);

    let agent = format!("/v1/agents/{}", h.fx.agent);
    let patch = request(
        "PATCH",
        &agent,
        Some(&h.a.owner),
        Some(r#"{"name":"Renamed"}"#),
    );
    let r = lose_race(&h, "agents", h.fx.agent, patch).await;
    assert_eq!(answer(&r), conflict);
    let got = h.call("GET", &agent, &h.a.viewer, Value::Null).await;
    assert_eq!(got.body["name"], "sales");
    // Read again and retried, the same PATCH goes through.
    let r = h
        .call("PATCH", &agent, &h.a.owner, json!({"name": "Renamed"}))
        .await;
    assert_eq!((r.status, r.body["name"].clone()), (200, json!("Renamed")));
}

#[tokio::test]
async fn human_reply_refusals_keep_their_exact_bodies() {
    let h = Harness::new().await;
    let (wa, ig) = (h.fx.wa_conversation, h.fx.ig_conversation);
    let send = async |conv: Uuid, body: &str| {
        let path = format!("/v1/conversations/{conv}/messages");
        answer(&h.send("POST", &path, Some(&h.a.agent), Some(body)).await)
    };
    let hi = r#"{"text":"hi"}"#;
    // The conversation is looked up before the body is checked.
    assert_eq!(send(Uuid::new_v4(), "{}").await, not_found());
    assert_eq!(send(wa, "{}").await, invalid(r#"{"text":"is required"}"#));
    assert_eq!(
        send(wa, r#"{"text":"","to":"x"}"#).await,
        invalid(r#"{"text":"must be 1 to 4096 characters","to":"unknown field"}"#)
    );
    let since = async |conv: Uuid, interval: &str| {
        let c = h.t.db.client().await.unwrap();
        c.execute(
            &format!(
                "UPDATE conversations SET last_inbound_at = now() - interval '{interval}' WHERE id = $1"
            ),
            &[&conv],
        )
        .await
        .unwrap();
    };
    for (conv, ago, message) in [
        (
            wa,
            "25 hours",
            "more than 24 h since the customer's last message: WhatsApp only allows an approved template now",
        ),
        (
            ig,
            "8 days",
            "more than 7 days since the customer's last message: Instagram allows no reply",
        ),
    ] {
        since(conv, ago).await;
        assert_eq!(
            send(conv, hi).await,
            refusal(409, "outside_window", message),
            "{ago}"
        );
    }
    since(wa, "1 minute").await;
    // The account is changed through the API, then the reply is refused.
    let channel = format!("/v1/channels/{}", h.fx.whatsapp);
    for (method, body, code, message) in [
        // It names a token secret that does not exist.
        (
            "PATCH",
            Some(r#"{"access_token_secret":"agent/channel/missing"}"#),
            "no_token",
            "secret `agent/channel/missing` does not exist",
        ),
        (
            "DELETE",
            None,
            "channel_inactive",
            "the conversation's channel account is deactivated",
        ),
    ] {
        let r = h.send(method, &channel, Some(&h.a.owner), body).await;
        assert_eq!(r.status, 200, "{method}: {}", r.text);
        assert_eq!(send(wa, hi).await, refusal(409, code, message), "{code}");
    }
    assert!(h.graph_sends().await.is_empty(), "nothing was sent");
}

#[tokio::test]
async fn the_leads_export_names_the_next_page_in_x_next_cursor() {
    let h = Harness::new().await;
    let newer: Uuid = h
        .scalar(
            "INSERT INTO leads (user_id, contact_id, name, updated_at)
             SELECT user_id, contact_id, 'Bea', now() + interval '1 second'
               FROM conversations WHERE id = $1 RETURNING id",
            &[&h.fx.ig_conversation],
        )
        .await;
    let keyset: Value = h
        .scalar(
            "SELECT jsonb_build_array(updated_at::text, id) FROM leads WHERE id = $1",
            &[&newer],
        )
        .await;
    let next = URL_SAFE_NO_PAD.encode(keyset.to_string());
    let header_line = "id,contact_id,conversation_id,channel,name,email,phone,company,intent,\
                       product_interest,budget,timeline,language,summary,extra,confidence,\
                       created_at,updated_at\n";
    // One page of one lead: the lead's row and the headers, `x-next-cursor` with `next`.
    let export = async |query: &str, lead: Uuid, next: Option<&str>| {
        let path = format!("/v1/leads.csv?{query}");
        let (status, headers, text) = answer(&h.call("GET", &path, &h.a.viewer, Value::Null).await);
        let mut expected = vec![
            ("content-type", "text/csv; charset=utf-8"),
            ("content-disposition", "attachment; filename=\"leads.csv\""),
            ("cache-control", "no-store"),
        ];
        expected.extend(next.map(|n| ("x-next-cursor", n)));
        assert_eq!(
            (status, headers),
            (200, answer_of(200, &expected, "").1),
            "{query}"
        );
        let rows = text.strip_prefix(header_line).expect(&text);
        assert_eq!(rows.lines().count(), 1, "{text}");
        assert!(rows.starts_with(&format!("{lead},")), "{rows}");
        rows.to_owned()
    };
    let row = export("limit=1", newer, Some(&next)).await;
    assert!(row.contains(",instagram,Bea,"), "{row}");
    let row = export(&format!("limit=1&cursor={next}"), h.fx.lead, None).await;
    assert!(row.contains(",whatsapp,Ana,ana@example.com,"), "{row}");

    let r = h
        .call("GET", "/v1/leads.csv?limit=5001", &h.a.viewer, Value::Null)
        .await;
    assert_eq!(
        answer(&r),
        invalid(r#"{"limit":"an integer from 1 to 5000"}"#)
    );
}

#[tokio::test]
async fn the_last_of_repeated_query_parameters_wins() {
    let h = Harness::new().await;
    let tenants = async |query: &str| {
        let path = format!("/v1/tenants?{query}");
        h.call("GET", &path, &h.platform, Value::Null).await
    };
    let names = async |query: &str| {
        let r = tenants(query).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text);
        let names: Vec<Value> = r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].clone())
            .collect();
        (names, r.body["next_cursor"].is_string())
    };
    let both = (vec![json!("Shop A"), json!("Shop B")], false);
    let one = (vec![json!("Shop A")], true);
    assert_eq!(names("limit=1&limit=2").await, both);
    assert_eq!(names("limit=2&limit=1").await, one);
    assert_eq!(names("limit=0&limit=1").await, one);
    // Percent-decoded.
    assert_eq!(names("limit=%31").await, one);
    assert_eq!(names("%6Cimit=1").await, one);
    let bad_limit = invalid(r#"{"limit":"an integer from 1 to 200"}"#);
    for query in [
        "limit=1&limit=0",
        "limit=1&limit",
        "limit=%zz",
        "limit=1&limit=%31%",
    ] {
        assert_eq!(answer(&tenants(query).await), bad_limit, "{query}");
    }
    // An empty value is still given.
    assert_eq!(
        answer(&tenants("cursor=x&cursor=").await),
        invalid(r#"{"cursor":"not a cursor this API returned"}"#)
    );
    let r = h
        .call(
            "GET",
            "/v1/conversations?mode=robot&mode=ai",
            &h.a.viewer,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
}
