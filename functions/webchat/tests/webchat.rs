//! The web chat endpoints on real parts: Postgres (fresh database), the inbound FIFO queue and
//! the rate-limit table on the emulator (from template.yaml).

use std::time::Duration;

use lambda_http::aws_lambda_events::query_map::QueryMap;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use local_aws::testing::{drain, emulator_sdk, fresh_stack};
use serde_json::{json, Value};
use shared::db::testing::TestDb;
use shared::db::webchat::{create_site, NewSite};
use shared::db::{conversations, tenants, Db, DbConfig, TenantId};
use shared::envelope::{Channel, InboundEnvelope};
use shared::http::Routed;
use shared::webchat::{identifier_hash, TokenKey, VisitorClaims, TOKEN_VERSION};
use webchat::{App, Settings};

const ORIGIN: &str = "https://shop.example.com";
const SIGNING_KEY: &[u8] = b"webchat-test-signing-key";
const IDENTITY_SECRET: &str = "identity-secret-of-the-shop";

struct Harness {
    t: TestDb,
    sdk: aws_config::SdkConfig,
    queue: String,
    app: App,
    tenant: TenantId,
}

async fn harness(visitor_per_minute: u32) -> Harness {
    let t = TestDb::new().await;
    let sdk = emulator_sdk().await;
    let (_, stack) = fresh_stack(&sdk).await;
    let tenant = tenants::create_tenant(&t.db, "Shop").await.unwrap();
    let origins = vec![ORIGIN.to_owned()];
    for (key, secret, require) in [
        ("site_shop", Some(IDENTITY_SECRET), false),
        ("site_members", Some(IDENTITY_SECRET), true),
        ("site_plain", None, false),
    ] {
        create_site(
            &t.db,
            tenant,
            &NewSite {
                site_key: key,
                allowed_origins: &origins,
                identity_secret: secret,
                require_identity: require,
                ..NewSite::default()
            },
        )
        .await
        .unwrap();
    }
    let settings = Settings {
        inbound_queue_url: stack.queue("InboundQueue").url.clone(),
        limits_table: stack.tables["IdempotencyTable"].clone(),
        visitor_per_minute,
        max_wait: Duration::from_secs(5),
        ..Settings::default()
    };
    let app = App::new(
        settings,
        Db::new(DbConfig::new(t.url.clone())),
        TokenKey::new(SIGNING_KEY),
        &sdk,
        shared::metrics::Metrics::silent("AiAgentTest", "webchat"),
    );
    Harness {
        queue: stack.queue("InboundQueue").url.clone(),
        t,
        sdk,
        app,
        tenant,
    }
}

fn request(
    method: Method,
    path: &str,
    origin: Option<&str>,
    token: Option<&str>,
    body: &str,
) -> Request {
    let mut b = lambda_http::http::Request::builder()
        .method(method)
        .uri(format!("https://chat.example.net{path}"));
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn json_of(resp: &Response<Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null)
}

/// Status, every header (sorted by name) and the body text of a response.
fn answer(resp: &Response<Body>) -> (StatusCode, Vec<(String, String)>, String) {
    // The Function URL puts Content-Length on every answer itself, so whether the function
    // sets it is not something a caller can see; when it does, it must be the body's length.
    if let Some(len) = resp.headers().get("content-length") {
        assert_eq!(
            len.to_str().unwrap(),
            resp.body().as_ref().len().to_string(),
            "content-length is the body's length"
        );
    }
    answer_to_head(resp)
}

/// [`answer`] for a HEAD request, whose answer has no body (HTTP) while its Content-Length is
/// the length the body would have had.
fn answer_to_head(resp: &Response<Body>) -> (StatusCode, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| *k != "content-length")
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (
        resp.status(),
        headers,
        String::from_utf8(resp.body().to_vec()).unwrap(),
    )
}

/// Sorted `(name, value)` pairs, as [`answer`] lists them.
fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// The CORS headers of an answer: `Vary` always, the grant only once the origin was checked.
fn cors(origin: Option<&str>) -> Vec<(&str, &str)> {
    let mut v = vec![("vary", "Origin")];
    if let Some(o) = origin {
        v.extend([
            ("access-control-allow-origin", o),
            ("access-control-expose-headers", "retry-after"),
        ]);
    }
    v
}

/// What [`answer`] gives for a JSON body `raw` (the exact text).
fn json_answer(
    status: StatusCode,
    origin: Option<&str>,
    raw: String,
) -> (StatusCode, Vec<(String, String)>, String) {
    let mut pairs = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    pairs.extend(cors(origin));
    (status, headers(&pairs), raw)
}

/// What [`answer`] gives for a refusal `{"error":"<code>"}` without Retry-After.
fn refusal(
    status: StatusCode,
    code: &str,
    origin: Option<&str>,
) -> (StatusCode, Vec<(String, String)>, String) {
    json_answer(status, origin, format!(r#"{{"error":"{code}"}}"#))
}

/// GET messages with `query` in the URI and in the extension lambda_http derives from the same
/// string (lambda_http-1.3.2 request.rs builds both from `rawQueryString`).
fn poll_request(origin: &str, token: Option<&str>, query: &str) -> Request {
    request(
        Method::GET,
        &format!("/v1/sites/site_shop/messages?{query}"),
        Some(origin),
        token,
        "",
    )
    .with_query_string_parameters(query.parse::<QueryMap>().unwrap())
}

fn error_of(resp: &Response<Body>) -> String {
    json_of(resp)["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

impl Harness {
    async fn call(&self, req: Request) -> Response<Body> {
        self.app.handle(req).await
    }

    async fn session(&self, site: &str, body: Value) -> Response<Body> {
        self.call(request(
            Method::POST,
            &format!("/v1/sites/{site}/sessions"),
            Some(ORIGIN),
            None,
            &body.to_string(),
        ))
        .await
    }

    async fn token(&self, site: &str) -> (String, String) {
        let resp = self.session(site, json!({})).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v = json_of(&resp);
        (
            v["token"].as_str().unwrap().to_owned(),
            v["visitor_id"].as_str().unwrap().to_owned(),
        )
    }

    async fn send(&self, site: &str, token: Option<&str>, body: &str) -> Response<Body> {
        self.call(request(
            Method::POST,
            &format!("/v1/sites/{site}/messages"),
            Some(ORIGIN),
            token,
            body,
        ))
        .await
    }

    async fn poll(&self, token: &str, after: i64, wait: u64) -> Value {
        // In the URI, as lambda_http puts a Function URL's `rawQueryString`.
        let req = poll_request(ORIGIN, Some(token), &format!("after={after}&wait={wait}"));
        let resp = self.call(req).await;
        assert_eq!(resp.status(), StatusCode::OK, "{}", error_of(&resp));
        json_of(&resp)
    }
}

fn text(id: &str, text: &str) -> String {
    json!({"client_message_id": id, "text": text}).to_string()
}

#[tokio::test]
async fn a_visitor_message_is_queued_once_even_when_the_browser_retries() {
    let h = harness(20).await;
    let (token, visitor) = h.token("site_shop").await;
    let first = h
        .send(
            "site_shop",
            Some(&token),
            &text("m-1", "¿Tienen 2 recámaras?"),
        )
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(
        first.headers()["access-control-allow-origin"],
        ORIGIN,
        "CORS for the site's origin"
    );
    let retry = h
        .send(
            "site_shop",
            Some(&token),
            &text("m-1", "¿Tienen 2 recámaras?"),
        )
        .await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(json_of(&first)["id"], json_of(&retry)["id"]);

    let queued = drain(&h.sdk, &h.queue).await;
    assert_eq!(queued.len(), 1, "the replay is one message");
    let env: InboundEnvelope = serde_json::from_str(&queued[0].body).unwrap();
    assert_eq!(env.channel, Channel::Webchat);
    assert_eq!(env.channel_account_id, "site_shop");
    assert_eq!(env.contact.id, visitor);
    assert_eq!(env.provider_message_id, format!("wc.{visitor}.m-1"));
    assert!(queued[0].group_id.as_deref().unwrap().contains("webchat"));
}

#[tokio::test]
async fn bad_requests_get_a_clear_error_and_queue_nothing() {
    let h = harness(20).await;
    let (token, _) = h.token("site_shop").await;
    let (other_site_token, _) = h.token("site_plain").await;
    let forged = TokenKey::new(b"not-our-key").issue(&VisitorClaims {
        v: TOKEN_VERSION,
        site: "site_shop".into(),
        vid: "v".into(),
        exp: i64::MAX,
        idn: None,
    });
    let expired = TokenKey::new(SIGNING_KEY).issue(&VisitorClaims {
        v: TOKEN_VERSION,
        site: "site_shop".into(),
        vid: "v".into(),
        exp: 1,
        idn: None,
    });
    let cases: Vec<(Request, StatusCode, &str)> = vec![
        (
            request(
                Method::POST,
                "/v1/sites/nope/messages",
                Some(ORIGIN),
                Some(&token),
                &text("a", "hi"),
            ),
            StatusCode::NOT_FOUND,
            "unknown_site",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some("https://evil.example"),
                Some(&token),
                &text("a", "hi"),
            ),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                None,
                Some(&token),
                &text("a", "hi"),
            ),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                None,
                &text("a", "hi"),
            ),
            StatusCode::UNAUTHORIZED,
            "token_missing",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&forged),
                &text("a", "hi"),
            ),
            StatusCode::UNAUTHORIZED,
            "token_bad_signature",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&expired),
                &text("a", "hi"),
            ),
            StatusCode::UNAUTHORIZED,
            "token_expired",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&other_site_token),
                &text("a", "hi"),
            ),
            StatusCode::UNAUTHORIZED,
            "token_wrong_site",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&token),
                "{not json",
            ),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&token),
                &text("a b", "hi"),
            ),
            StatusCode::BAD_REQUEST,
            "bad_client_message_id",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&token),
                &text("a", "  "),
            ),
            StatusCode::BAD_REQUEST,
            "message_empty",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&token),
                &text("a", &"x".repeat(5000)),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_long",
        ),
        (
            request(
                Method::POST,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&token),
                &"x".repeat(20_000),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            request(
                Method::DELETE,
                "/v1/sites/site_shop/messages",
                Some(ORIGIN),
                Some(&token),
                "",
            ),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            request(Method::GET, "/v1/elsewhere", Some(ORIGIN), Some(&token), ""),
            StatusCode::NOT_FOUND,
            "no_such_route",
        ),
    ];
    for (req, status, reason) in cases {
        let resp = h.call(req).await;
        assert_eq!((resp.status(), error_of(&resp).as_str()), (status, reason));
        if status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND {
            assert!(
                !resp.headers().contains_key("access-control-allow-origin"),
                "no CORS grant for {reason}"
            );
        }
    }
    assert!(drain(&h.sdk, &h.queue).await.is_empty(), "nothing queued");
    let m = h.app.metrics();
    assert_eq!(m.total("Refusals.Reason=origin_not_allowed"), 2.0);
    assert_eq!(m.total("Refusals.Reason=token_expired"), 1.0);
    assert_eq!(m.total("MessagesAccepted"), 0.0);
    assert_eq!(m.total("Sessions"), 2.0);
}

#[tokio::test]
async fn a_visitor_over_the_limit_gets_429_with_retry_after() {
    let h = harness(3).await;
    let (token, _) = h.token("site_shop").await;
    // Three per minute; a minute boundary during the test can allow up to three more.
    let mut accepted = 0;
    let limited = loop {
        let r = h
            .send(
                "site_shop",
                Some(&token),
                &text(&format!("m{accepted}"), "hola"),
            )
            .await;
        if r.status() != StatusCode::ACCEPTED {
            break r;
        }
        accepted += 1;
        assert!(accepted <= 6, "never limited");
    };
    assert!(accepted >= 3);
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_of(&limited), "rate_limited");
    let after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after));
    let mut expected = refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some(ORIGIN));
    expected.1.push(("retry-after".into(), after.to_string()));
    expected.1.sort();
    assert_eq!(answer(&limited), expected);
    // Another visitor of the same site is not affected.
    let (other, _) = h.token("site_shop").await;
    let r = h.send("site_shop", Some(&other), &text("m1", "hola")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(drain(&h.sdk, &h.queue).await.len(), accepted + 1);
}

#[tokio::test]
async fn sessions_keep_the_visitor_and_verify_identity_with_the_sites_secret() {
    let h = harness(20).await;
    let (token, visitor) = h.token("site_shop").await;
    let again = json_of(&h.session("site_shop", json!({"token": token})).await);
    assert_eq!(
        again["visitor_id"],
        visitor.as_str(),
        "a reload keeps the conversation"
    );

    let hash = identifier_hash(IDENTITY_SECRET.as_bytes(), "customer-42");
    let verified = h
        .session(
            "site_shop",
            json!({"token": token, "identifier": "customer-42", "identifier_hash": hash}),
        )
        .await;
    assert_eq!(verified.status(), StatusCode::OK);
    let v = json_of(&verified);
    assert_eq!(
        v["visitor_id"],
        visitor.as_str(),
        "an anonymous visitor who logs in keeps the chat"
    );
    let claims = TokenKey::new(SIGNING_KEY)
        .verify(v["token"].as_str().unwrap(), "site_shop", 0)
        .unwrap();
    assert_eq!(claims.idn.as_deref(), Some("customer-42"));

    // The verified customer's token never carries over to an anonymous session (a logout,
    // or the next person at the same browser).
    let after_logout = json_of(
        &h.session("site_shop", json!({"token": v["token"].as_str().unwrap()}))
            .await,
    );
    assert_ne!(after_logout["visitor_id"], visitor.as_str());

    let wrong = h
        .session(
            "site_shop",
            json!({"identifier": "customer-43", "identifier_hash": hash}),
        )
        .await;
    assert_eq!(
        (wrong.status(), error_of(&wrong).as_str()),
        (StatusCode::UNAUTHORIZED, "identity_mismatch")
    );
    let half = h
        .session("site_shop", json!({"identifier": "customer-42"}))
        .await;
    assert_eq!(error_of(&half), "identity_incomplete");
    let required = h.session("site_members", json!({})).await;
    assert_eq!(
        (required.status(), error_of(&required).as_str()),
        (StatusCode::UNAUTHORIZED, "identity_required")
    );
    let not_offered = h
        .session(
            "site_plain",
            json!({"identifier": "customer-42", "identifier_hash": hash}),
        )
        .await;
    assert_eq!(error_of(&not_offered), "identity_not_enabled");
    let members = h
        .session(
            "site_members",
            json!({"identifier": "customer-42", "identifier_hash": hash}),
        )
        .await;
    assert_eq!(members.status(), StatusCode::OK);
    // A site that requires identity refuses anonymous tokens issued before it did.
    let anonymous = TokenKey::new(SIGNING_KEY).issue(&VisitorClaims {
        v: TOKEN_VERSION,
        site: "site_members".into(),
        vid: "earlier-visitor".into(),
        exp: i64::MAX,
        idn: None,
    });
    let refused = h
        .send("site_members", Some(&anonymous), &text("m1", "hola"))
        .await;
    assert_eq!(
        (refused.status(), error_of(&refused).as_str()),
        (StatusCode::UNAUTHORIZED, "identity_required")
    );
    let member_token = json_of(&members)["token"].as_str().unwrap().to_owned();
    let accepted = h
        .send("site_members", Some(&member_token), &text("m1", "hola"))
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_preflight_answers_only_the_sites_origins() {
    let h = harness(20).await;
    let ok = h
        .call(request(
            Method::OPTIONS,
            "/v1/sites/site_shop/messages",
            Some(ORIGIN),
            None,
            "",
        ))
        .await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(ok.headers()["access-control-allow-origin"], ORIGIN);
    assert!(ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let evil = h
        .call(request(
            Method::OPTIONS,
            "/v1/sites/site_shop/messages",
            Some("https://evil.example"),
            None,
            "",
        ))
        .await;
    assert_eq!(evil.status(), StatusCode::FORBIDDEN);
    assert!(!evil.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn the_visitor_reads_history_and_a_long_poll_returns_the_reply_when_it_is_stored() {
    let h = harness(20).await;
    let (token, visitor) = h.token("site_shop").await;
    let empty = h.poll(&token, 0, 0).await;
    assert_eq!(empty, json!({"messages": [], "pending": false}));

    // What the processor stores for this visitor: the question (not settled yet).
    let site = shared::db::webchat::site_by_key(&h.t.db, "site_shop")
        .await
        .unwrap()
        .unwrap();
    let contact = conversations::upsert_contact(
        &h.t.db,
        h.tenant,
        site.channel_account_id,
        &visitor,
        None,
        None,
        None,
    )
    .await
    .unwrap()
    .unwrap();
    let conv = conversations::conversation_for(&h.t.db, h.tenant, site.channel_account_id, contact)
        .await
        .unwrap()
        .unwrap();
    let insert = |dir: &'static str, body: &'static str| {
        let url = h.t.url.clone();
        let (tenant, account, conv) = (h.tenant.uuid(), site.channel_account_id, conv.id);
        async move {
            Db::new(DbConfig::new(url))
                .client()
                .await
                .unwrap()
                .execute(
                    "INSERT INTO messages (user_id, conversation_id, channel_account_id, direction, content, status)
                     VALUES ($1, $2, $3, $4, jsonb_build_object('type', 'text', 'body', $5::text), 'sent')",
                    &[&tenant, &conv, &account, &dir, &body],
                )
                .await
                .unwrap();
        }
    };
    insert("in", "¿Tienen 2 recámaras?").await;
    let history = h.poll(&token, 0, 0).await;
    assert_eq!(history["messages"][0]["text"], "¿Tienen 2 recámaras?");
    assert_eq!(history["pending"], true, "the agent is working on it");
    let cursor = history["messages"][0]["id"].as_i64().unwrap();

    // The reply is stored while the poll waits, and the poll returns it.
    let late = tokio::spawn({
        let insert = insert("out", "Sí, desde $900.");
        async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            insert.await;
        }
    });
    let polled = h.poll(&token, cursor, 5).await;
    late.await.unwrap();
    assert_eq!(polled["messages"].as_array().unwrap().len(), 1);
    assert_eq!(polled["messages"][0]["direction"], "out");
    assert_eq!(polled["messages"][0]["text"], "Sí, desde $900.");

    // Another visitor of the site sees none of it.
    let (stranger, _) = h.token("site_shop").await;
    assert_eq!(h.poll(&stranger, 0, 0).await["messages"], json!([]));
}

#[tokio::test]
async fn the_template_environment_configures_the_function_with_a_generated_signing_key() {
    use secrecy::ExposeSecret;
    let sdk = emulator_sdk().await;
    let (template, stack) = fresh_stack(&sdk).await;
    let env = stack.function_env(&template, "WebchatFunction").unwrap();
    let config =
        webchat::Config::from_reader(shared::config::EnvReader::new(|k| env.get(k).cloned()))
            .expect("the template's environment is a valid configuration");
    assert_eq!(
        config.settings.inbound_queue_url,
        stack.queue("InboundQueue").url
    );
    assert_eq!(
        config.settings.limits_table,
        stack.tables["IdempotencyTable"]
    );
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    sm.put_secret_value()
        .secret_id(&stack.secrets["DatabaseSecret"].arn)
        .secret_string(json!({"url": "postgres://u:p@db:5432/agent"}).to_string())
        .send()
        .await
        .unwrap();
    let secrets = shared::secrets::SecretCache::new(sm, Duration::from_secs(300));
    let (url, key) = config.resolve(&secrets).await.unwrap();
    assert!(url.expose_secret().starts_with("postgres://u:p@db"));
    assert!(
        key.expose_secret().len() >= 32,
        "generated at deploy, nothing to fill in"
    );
}

#[tokio::test]
async fn the_widget_is_served_small_and_names_the_endpoints_it_uses() {
    let h = harness(20).await;
    let resp = h
        .call(request(
            Method::GET,
            "/lambda-url/webchat/widget.js",
            None,
            None,
            "",
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/javascript"));
    let js = std::str::from_utf8(resp.body().as_ref()).unwrap();
    // Under 15 KB before compression, so well under the 15 KB gzipped budget.
    assert!(js.len() < 15 * 1024, "{} bytes", js.len());
    for needle in [
        "data-site-key",
        "v1/sites/",
        "sessions",
        "messages?after=",
        "client_message_id",
        "localStorage",
        "aria-live",
    ] {
        assert!(js.contains(needle), "{needle}");
    }
}

#[tokio::test]
async fn refusals_before_the_origin_check_keep_their_exact_bodies_and_grant_no_cors() {
    let h = harness(20).await;
    let long_site = format!("/v1/sites/{}/sessions", "a".repeat(129));
    let cases = [
        (
            Method::GET,
            "/v1/elsewhere",
            Some(ORIGIN),
            StatusCode::NOT_FOUND,
            "no_such_route",
        ),
        (
            Method::POST,
            "/v1/sites/site_shop/other",
            Some(ORIGIN),
            StatusCode::NOT_FOUND,
            "no_such_route",
        ),
        (
            Method::POST,
            "/v1/sites/nope/sessions",
            Some(ORIGIN),
            StatusCode::NOT_FOUND,
            "unknown_site",
        ),
        (
            Method::POST,
            long_site.as_str(),
            Some(ORIGIN),
            StatusCode::NOT_FOUND,
            "unknown_site",
        ),
        (
            Method::POST,
            "/v1/sites/site_shop/sessions",
            Some("https://evil.example"),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            Method::POST,
            "/v1/sites/site_shop/sessions",
            None,
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            Method::POST,
            "/v1/sites/site_shop/sessions",
            Some("null"),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            Method::POST,
            "/v1/sites/site_shop/sessions",
            Some("https://shop.example.com/a"),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            Method::OPTIONS,
            "/v1/sites/site_shop/messages",
            Some("https://evil.example"),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            Method::GET,
            "/v1/sites/site_shop/messages",
            Some("http://shop.example.com"),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
    ];
    for (method, path, origin, status, code) in cases {
        let resp = h
            .call(request(method.clone(), path, origin, None, "{}"))
            .await;
        assert_eq!(
            answer(&resp),
            refusal(status, code, None),
            "{method} {path} from {origin:?}"
        );
    }
}

#[tokio::test]
async fn answers_after_the_origin_check_echo_the_exact_origin_and_keep_their_exact_bodies() {
    let h = harness(20).await;
    // Allowed once normalised (case, trailing slash); the grant repeats it as the browser sent it.
    let origin = "https://SHOP.example.com/";
    let sessions = "/v1/sites/site_shop/sessions";
    let session = |body: String| request(Method::POST, sessions, Some(origin), None, &body);
    // A session's body, with its keys in this order, for each body that opens one; an empty or
    // all-whitespace body reads as `{}`, up to exactly 16 KiB. serde also reads a struct from
    // a JSON array, so `[]` opens one too.
    let mut token = String::new();
    let mut visitor = String::new();
    for body in [
        String::new(),
        " \n\t".to_owned(),
        " ".repeat(16 * 1024),
        "{}".to_owned(),
        "[]".to_owned(),
    ] {
        let resp = h.call(session(body)).await;
        let v = json_of(&resp);
        token = v["token"].as_str().unwrap_or_default().to_owned();
        visitor = v["visitor_id"].as_str().unwrap_or_default().to_owned();
        let raw = format!(
            r#"{{"expires_at":{},"token":"{token}","visitor_id":"{visitor}"}}"#,
            v["expires_at"]
        );
        assert_eq!(
            answer(&resp),
            json_answer(StatusCode::OK, Some(origin), raw)
        );
    }
    let sent = h
        .call(request(
            Method::POST,
            "/v1/sites/site_shop/messages",
            Some(origin),
            Some(&token),
            &text("m-1", "hola"),
        ))
        .await;
    let raw = format!(r#"{{"id":"wc.{visitor}.m-1"}}"#);
    assert_eq!(
        answer(&sent),
        json_answer(StatusCode::ACCEPTED, Some(origin), raw)
    );
    // The message is only queued (nothing stored yet), so the visitor's history is empty.
    let polled = h
        .call(poll_request(origin, Some(&token), "after=0&wait=0"))
        .await;
    let raw = r#"{"messages":[],"pending":false}"#.to_owned();
    assert_eq!(
        answer(&polled),
        json_answer(StatusCode::OK, Some(origin), raw)
    );

    let version = TokenKey::new(SIGNING_KEY).issue(&VisitorClaims {
        v: TOKEN_VERSION + 1,
        site: "site_shop".into(),
        vid: "v".into(),
        exp: i64::MAX,
        idn: None,
    });
    let post = |path: &str, token: Option<&str>, body: &str| {
        request(Method::POST, path, Some(origin), token, body)
    };
    let messages = "/v1/sites/site_shop/messages";
    let mut cases = vec![
        (
            session(" ".repeat(16 * 1024 + 1)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            session("{not json".into()),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (session("null".into()), StatusCode::BAD_REQUEST, "bad_json"),
        (
            post(messages, Some(&token), "null"),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            post(messages, Some(&token), "{}"),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            post(messages, Some("garbage"), &text("a", "hi")),
            StatusCode::UNAUTHORIZED,
            "token_malformed",
        ),
        (
            post(messages, Some(&version), &text("a", "hi")),
            StatusCode::UNAUTHORIZED,
            "token_version",
        ),
        (
            request(Method::DELETE, sessions, Some(origin), None, ""),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            poll_request(origin, None, "after=0"),
            StatusCode::UNAUTHORIZED,
            "token_missing",
        ),
        (
            poll_request(origin, Some("garbage"), "after=0"),
            StatusCode::UNAUTHORIZED,
            "token_malformed",
        ),
        (
            poll_request(origin, Some("x.y"), "after=0"),
            StatusCode::UNAUTHORIZED,
            "token_malformed",
        ),
        (
            poll_request(origin, Some(&version), "after=0"),
            StatusCode::UNAUTHORIZED,
            "token_version",
        ),
    ];
    for query in [
        "after=-1",
        "after=x",
        "after=1.5",
        "after=",
        "after=9223372036854775808",
        "wait=3601",
        "wait=-1",
        "wait=x",
        "after=0&wait=3601",
    ] {
        cases.push((
            poll_request(origin, Some(&token), query),
            StatusCode::BAD_REQUEST,
            "bad_query",
        ));
    }
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        assert_eq!(
            answer(&h.call(req).await),
            refusal(status, code, Some(origin)),
            "{what}"
        );
    }
    assert_eq!(drain(&h.sdk, &h.queue).await.len(), 1, "only m-1 is queued");
}

#[tokio::test]
async fn the_widget_keeps_its_content_type_and_cache_headers_and_grants_no_cors() {
    let h = harness(20).await;
    let widget = (
        StatusCode::OK,
        headers(&[
            ("content-type", "application/javascript; charset=utf-8"),
            ("cache-control", "public, max-age=300"),
        ]),
        webchat::WIDGET_JS.to_owned(),
    );
    for path in [
        "/widget.js",
        "/lambda-url/webchat/widget.js",
        "/v1/sites/site_shop/widget.js",
    ] {
        for origin in [None, Some(ORIGIN), Some("https://evil.example")] {
            let resp = h.call(request(Method::GET, path, origin, None, "")).await;
            assert_eq!(answer(&resp), widget, "{path} from {origin:?}");
        }
    }
    // Only GET serves it: HEAD and POST are not routes (HEAD's answer has no body, as HTTP
    // has it).
    for method in [Method::HEAD, Method::POST] {
        let resp = h
            .call(request(
                method.clone(),
                "/widget.js",
                Some(ORIGIN),
                None,
                "",
            ))
            .await;
        let (status, headers, body) = refusal(StatusCode::NOT_FOUND, "no_such_route", None);
        if method == Method::HEAD {
            assert_eq!(answer_to_head(&resp), (status, headers, String::new()));
        } else {
            assert_eq!(answer(&resp), (status, headers, body), "{method}");
        }
    }
}

#[tokio::test]
async fn the_preflight_keeps_its_exact_allow_lists_and_max_age() {
    let h = harness(20).await;
    for origin in [ORIGIN, "https://SHOP.example.com/"] {
        let mut pairs = vec![
            ("access-control-allow-methods", "GET, POST, OPTIONS"),
            (
                "access-control-allow-headers",
                "authorization, content-type, x-correlation-id",
            ),
            ("access-control-max-age", "600"),
        ];
        pairs.extend(cors(Some(origin)));
        let expected = (StatusCode::NO_CONTENT, headers(&pairs), String::new());
        for path in [
            "/v1/sites/site_shop/sessions",
            "/v1/sites/site_shop/messages",
        ] {
            let resp = h
                .call(request(Method::OPTIONS, path, Some(origin), None, ""))
                .await;
            assert_eq!(answer(&resp), expected, "{path} from {origin}");
        }
    }
}
