//! The admin API on real parts (Postgres, the emulator's DynamoDB and SQS): every route's
//! happy path, validation, wrong role and other tenant; key revocation; pagination under
//! inserts; rate limits; the OpenAPI document against the route table.

mod common;

use std::collections::BTreeSet;

use admin::routes::{Access, ROUTES};
use common::{app_with, id_of, request, settings_for, Harness};
use serde_json::{json, Value};
use shared::db::apikeys::Role;
use shared::db::store;
use uuid::Uuid;

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
    assert_eq!(r.status, 200);
    assert_eq!(r.text, admin::OPENAPI_YAML);
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
    let route = store::resolve_channel_account(
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
    let route = store::resolve_channel_account(
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
    let stored = store::agent(&h.t.db, h.a.id, id).await.unwrap().unwrap();
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
        store::insert_outbound_message(
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
                store::insert_outbound_message(
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
        store::top_up(db, tenant, i, "top_up", None).await.unwrap();
    }
    let seen = walk(&h, "/v1/credits/ledger", &h.a.viewer, async |_| {
        store::top_up(db, tenant, 100, "top_up", None)
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
        let contact =
            store::upsert_contact(db, tenant, wa, &format!("52155000000{i}"), None, None, None)
                .await
                .unwrap()
                .unwrap();
        originals.push(
            store::conversation_for(db, tenant, wa, contact)
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    let mut fresh = 0;
    let seen = walk(&h, "/v1/conversations", &h.a.viewer, async |_| {
        let contact = store::upsert_contact(
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
        store::conversation_for(db, tenant, wa, contact)
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
    let mut limited = None;
    for _ in 0..10 {
        let r = app
            .handle(request("GET", "/v1/credits", Some(&h.a.viewer), None))
            .await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let limited = limited.expect("the limit was reached");
    assert!(ok >= 3);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = serde_json::from_slice(limited.body().as_ref()).unwrap();
    assert_eq!(body["error"], "rate_limited");
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
    let (url, token) = config.resolve(&secrets).await.unwrap();
    assert!(url.expose_secret().starts_with("postgres://u:p@db"));
    assert!(
        token.is_none(),
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
    let mut limited = false;
    for n in 0..10 {
        // Bad keys and a good one alike count against the address.
        let key = if n % 2 == 0 {
            "aak_abcdefgh_guess"
        } else {
            h.a.viewer.as_str()
        };
        let status = app.handle(from("203.0.113.7", key)).await.status().as_u16();
        assert!(matches!(status, 200 | 401 | 429), "{status}");
        if status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the address was limited");
    let other = app.handle(from("198.51.100.9", &h.a.viewer)).await;
    assert_eq!(other.status().as_u16(), 200, "another address is not");
}
