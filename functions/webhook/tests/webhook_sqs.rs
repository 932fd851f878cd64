//! The webhook handler against real SQS FIFO/standard queues and Secrets Manager on the local
//! emulator, with queues created from template.yaml. Run through `make test`.

use std::collections::BTreeMap;

use lambda_http::aws_lambda_events::query_map::QueryMap;
use lambda_http::http::{HeaderValue, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use local_aws::testing::{
    drain, emulator_sdk, fresh_stack, Received, DEV_APP_SECRET, DEV_VERIFY_TOKEN,
};
use local_aws::{Stack, Template};
use serde_json::{json, Value};
use shared::config::EnvReader;
use shared::envelope::{Channel, Content, InboundEnvelope, StatusEvent};
use shared::http::Routed;
use shared::ordering::dedup_id;
use shared::queue::RetryPolicy;
use shared::signature::SignatureKey;
use webhook::{App, Config};

struct Env {
    sdk: aws_config::SdkConfig,
    template: Template,
    stack: Stack,
}

impl Env {
    async fn new() -> Self {
        let sdk = emulator_sdk().await;
        let (template, stack) = fresh_stack(&sdk).await;
        Self {
            sdk,
            template,
            stack,
        }
    }

    /// The webhook's environment exactly as template.yaml defines it, resolved locally, plus
    /// `overrides` (a `None` value removes the variable).
    fn config(&self, overrides: &[(&str, Option<&str>)]) -> Config {
        let mut vars = self
            .stack
            .function_env(&self.template, "WebhookFunction")
            .expect("function env");
        for (k, v) in overrides {
            match v {
                Some(v) => vars.insert(k.to_string(), v.to_string()),
                None => vars.remove(*k),
            };
        }
        Config::from_reader(EnvReader::new(move |k| vars.get(k).cloned())).expect("valid config")
    }

    /// The app reading its secrets from Secrets Manager (the deployed path).
    fn app(&self) -> App {
        self.app_with(&[])
    }

    fn app_with(&self, overrides: &[(&str, Option<&str>)]) -> App {
        App::new(self.config(overrides), &self.sdk).expect("app")
    }

    fn inbound_url(&self) -> &str {
        &self.stack.queue("InboundQueue").url
    }

    fn status_url(&self) -> &str {
        &self.stack.queue("StatusQueue").url
    }

    async fn inbound(&self) -> Vec<Received> {
        drain(&self.sdk, self.inbound_url()).await
    }

    async fn statuses(&self) -> Vec<Received> {
        drain(&self.sdk, self.status_url()).await
    }

    /// Stores the app secret in Secrets Manager as set but empty, so reading it fails.
    async fn blank_app_secret(&self) {
        aws_sdk_secretsmanager::Client::new(&self.sdk)
            .put_secret_value()
            .secret_id(&self.stack.secrets["AppSecret"].name)
            .secret_string(r#"{"meta_app_secret":"","meta_verify_token":"t"}"#)
            .send()
            .await
            .unwrap();
    }

    async fn assert_nothing_queued(&self) {
        assert!(
            self.inbound().await.is_empty(),
            "inbound queue must stay empty"
        );
        assert!(
            self.statuses().await.is_empty(),
            "status queue must stay empty"
        );
    }
}

fn event(name: &str) -> Request {
    let path = format!("{}/../../events/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn post(body: Vec<u8>, signature: Option<String>) -> Request {
    let mut b = lambda_http::http::Request::builder()
        .method("POST")
        .uri("https://example.lambda-url.us-east-1.on.aws/")
        .header("content-type", "application/json");
    if let Some(sig) = signature {
        b = b.header("x-hub-signature-256", sig);
    }
    b.body(Body::Binary(body)).unwrap()
}

fn signed(body: Vec<u8>) -> Request {
    let sig = SignatureKey::new(DEV_APP_SECRET.as_bytes()).sign(&body);
    post(body, Some(sig))
}

/// A verification GET with `params` in its query string (URI and lambda_http's query
/// extension alike, as Lambda builds both from `rawQueryString`).
fn verify_request(params: &[(&str, &str)]) -> Request {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    get_with_query(&query)
}

/// A GET whose URI carries `query` verbatim, with the query extension lambda_http derives from
/// the same string (lambda_http-1.3.2 request.rs builds both from `rawQueryString`).
fn get_with_query(query: &str) -> Request {
    lambda_http::http::Request::builder()
        .method("GET")
        .uri(format!(
            "https://example.lambda-url.us-east-1.on.aws/?{query}"
        ))
        .body(Body::Empty)
        .unwrap()
        .with_query_string_parameters(query.parse::<QueryMap>().unwrap())
}

fn body_text(resp: &Response<Body>) -> String {
    String::from_utf8_lossy(resp.body().as_ref()).into_owned()
}

/// A response as (status, every header but `x-correlation-id` sorted by name, body text),
/// after checking that the correlation id header is there.
fn answer(resp: &Response<Body>) -> (StatusCode, Vec<(String, String)>, String) {
    assert!(
        resp.headers().contains_key(webhook::CORRELATION_HEADER),
        "every response carries x-correlation-id"
    );
    // The Function URL puts Content-Length on every answer itself, so whether the function
    // sets it is not something a caller can see; when it does, it must be the body's length.
    if let Some(len) = resp.headers().get("content-length") {
        assert_eq!(
            len.to_str().unwrap(),
            resp.body().as_ref().len().to_string(),
            "content-length is the body's length"
        );
    }
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(name, _)| *name != webhook::CORRELATION_HEADER && *name != "content-length")
        .map(|(name, v)| (name.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (resp.status(), headers, body_text(resp))
}

/// What [`answer`] gives for a refusal: `{"error":"<message>"}` as JSON that no cache keeps.
fn refusal(status: StatusCode, message: &str) -> (StatusCode, Vec<(String, String)>, String) {
    (
        status,
        vec![
            ("cache-control".into(), "no-store".into()),
            ("content-type".into(), "application/json".into()),
        ],
        format!(r#"{{"error":"{message}"}}"#),
    )
}

/// What [`answer`] gives for a verified subscription: the bare challenge as text/plain.
fn challenge(text: &str) -> (StatusCode, Vec<(String, String)>, String) {
    (
        StatusCode::OK,
        vec![("content-type".into(), "text/plain".into())],
        text.to_owned(),
    )
}

fn correlation_of(resp: &Response<Body>) -> String {
    resp.headers()[webhook::CORRELATION_HEADER]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Sends each sample event and expects 200 for every one.
async fn accept_all(app: &App, names: &[&str]) {
    for name in names {
        let resp = app.handle(event(name)).await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{name}: {}",
            body_text(&resp)
        );
    }
}

fn envelope(r: &Received) -> InboundEnvelope {
    serde_json::from_str(&r.body).expect("envelope JSON")
}

fn wa_webhook(groups: &[(&str, Vec<Value>)]) -> Vec<u8> {
    let changes: Vec<Value> = groups
        .iter()
        .map(|(pnid, messages)| {
            json!({"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "1555", "phone_number_id": pnid},
                "contacts": [{"profile": {"name": "C"}, "wa_id": "447700900001"}],
                "messages": messages
            }})
        })
        .collect();
    serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": changes}]}))
        .unwrap()
}

fn wa_text(id: &str, text: &str) -> Value {
    json!({"from": "447700900001", "id": id, "timestamp": "1767225600", "type": "text", "text": {"body": text}})
}

#[tokio::test]
async fn signed_wa_text_lands_once_on_the_fifo_queue() {
    let env = Env::new().await;
    let resp = env.app().handle(event("wa-text")).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", body_text(&resp));

    let got = env.inbound().await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    let e = envelope(m);
    assert_eq!(e.channel, Channel::Whatsapp);
    assert_eq!(e.channel_account_id, "106540352242922");
    assert_eq!(e.contact.id, "MX.8812736450012");
    assert!(matches!(e.content, Content::Text { ref body } if body.contains("cotización")));
    assert_eq!(m.group_id.as_deref(), Some("whatsapp:106540352242922"));
    assert_eq!(
        m.dedup_id.as_deref(),
        Some(dedup_id(Channel::Whatsapp, "106540352242922", &e.provider_message_id).as_str())
    );
    assert_eq!(
        m.attributes.get("channel").map(String::as_str),
        Some("whatsapp")
    );
    assert_eq!(
        m.attributes.get("kind").map(String::as_str),
        Some("inbound_message")
    );
    assert_eq!(
        m.attributes.get("envelope_version").map(String::as_str),
        Some("1")
    );
    assert_eq!(m.attributes.get("correlation_id"), Some(&e.correlation_id));
    assert_eq!(
        resp.headers()
            .get("x-correlation-id")
            .unwrap()
            .to_str()
            .unwrap(),
        e.correlation_id
    );
    assert!(env.statuses().await.is_empty(), "a message is not a status");
}

#[tokio::test]
async fn conversation_scope_groups_by_account_and_contact() {
    let env = Env::new().await;
    let app = env.app_with(&[("ORDERING_SCOPE", Some("conversation"))]);
    let resp = app.handle(event("wa-text")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got = env.inbound().await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].group_id.as_deref(),
        Some("whatsapp:106540352242922:MX.8812736450012")
    );
}

#[tokio::test]
async fn twenty_five_messages_across_three_numbers_keep_their_order_per_group() {
    let env = Env::new().await;
    // Interleave: 10 on A, 8 on B, 7 on C, in three changes.
    let mk = |p: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| wa_text(&format!("wamid.{p}.{i:02}"), &format!("{p} {i}")))
            .collect()
    };
    let body = wa_webhook(&[
        ("A111", mk("A111", 10)),
        ("B222", mk("B222", 8)),
        ("C333", mk("C333", 7)),
    ]);
    let resp = env.app().handle(signed(body)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", body_text(&resp));
    assert_eq!(body_text(&resp), r#"{"received":25,"statuses":0}"#);

    let got = env.inbound().await;
    assert_eq!(got.len(), 25);
    // FIFO delivery order within a group is the guarantee (moto's SequenceNumber is random,
    // so it is not asserted on).
    let mut by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &got {
        assert!(m.sequence_number.is_some());
        by_group
            .entry(m.group_id.clone().unwrap())
            .or_default()
            .push(envelope(m).provider_message_id);
    }
    assert_eq!(by_group.len(), 3);
    for (group, received) in by_group {
        let account = group.strip_prefix("whatsapp:").unwrap().to_owned();
        let mut expected = received.clone();
        expected.sort();
        assert_eq!(received, expected, "receive order in {group}");
        assert!(expected.iter().all(|id| id.contains(&account)));
    }
    let sizes: Vec<usize> = ["A111", "B222", "C333"]
        .iter()
        .map(|p| {
            got.iter()
                .filter(|m| m.group_id.as_deref() == Some(&format!("whatsapp:{p}")))
                .count()
        })
        .collect();
    assert_eq!(sizes, [10, 8, 7]);
}

#[tokio::test]
async fn meta_retry_of_the_same_webhook_is_deduplicated_by_sqs() {
    let env = Env::new().await;
    let app = env.app();
    for _ in 0..2 {
        assert_eq!(app.handle(event("wa-text")).await.status(), StatusCode::OK);
    }
    assert_eq!(env.inbound().await.len(), 1);
}

#[tokio::test]
async fn every_sample_event_type_parses_and_routes() {
    let env = Env::new().await;
    let app = env.app();
    accept_all(&app, &["wa-image", "wa-interactive", "ig-text"]).await;
    let got = env.inbound().await;
    let kinds: Vec<(String, &'static str)> = got
        .iter()
        .map(|m| (m.group_id.clone().unwrap(), envelope(m).content.type_name()))
        .collect();
    assert!(kinds.contains(&("whatsapp:106540352242922".into(), "media")));
    assert!(kinds.contains(&("whatsapp:106540352242922".into(), "interactive_reply")));
    assert!(kinds.contains(&("instagram:17841400000000000".into(), "text")));
    assert_eq!(got.len(), 3);
}

#[tokio::test]
async fn statuses_go_to_the_status_queue_and_echoes_nowhere() {
    let env = Env::new().await;
    let app = env.app();
    accept_all(
        &app,
        &["wa-status-delivered", "wa-status-failed", "ig-echo"],
    )
    .await;
    assert!(
        env.inbound().await.is_empty(),
        "statuses and echoes never reach the FIFO queue"
    );
    let statuses = env.statuses().await;
    assert_eq!(statuses.len(), 2);
    let mut states: Vec<String> = statuses
        .iter()
        .map(
            |m| match serde_json::from_str::<StatusEvent>(&m.body).unwrap() {
                StatusEvent::DeliveryStatus(s) => {
                    format!(
                        "{}:{}",
                        s.status.as_str(),
                        s.errors.first().map_or(0, |e| e.code)
                    )
                }
                other => panic!("{other:?}"),
            },
        )
        .collect();
    states.sort();
    assert_eq!(states, ["delivered:0", "failed:131047"]);
    assert!(statuses.iter().all(|m| m.group_id.is_none()));
    assert!(statuses
        .iter()
        .all(|m| m.attributes.get("kind").map(String::as_str) == Some("delivery_status")));
}

#[tokio::test]
async fn bad_requests_are_rejected_and_queue_nothing() {
    let env = Env::new().await;
    let app = env.app_with(&[("MAX_BODY_BYTES", Some("4096"))]);
    let good = wa_webhook(&[("P1", vec![wa_text("wamid.x", "hello")])]);
    let good_sig = SignatureKey::new(DEV_APP_SECRET.as_bytes()).sign(&good);
    let wrong_secret = SignatureKey::new(b"some-other-secret").sign(&good);
    let truncated = good[..good.len() - 5].to_vec();

    let cases: Vec<(&str, Request, StatusCode)> = vec![
        (
            "bad signature event",
            event("bad-signature"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "missing header",
            post(good.clone(), None),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "malformed header",
            post(good.clone(), Some("md5=abc".into())),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong secret",
            post(good.clone(), Some(wrong_secret)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "truncated body, original signature",
            post(truncated.clone(), Some(good_sig)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "truncated body, signed",
            signed(truncated),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not json",
            signed(b"hello there".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown object",
            signed(br#"{"object":"page","entry":[]}"#.to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "oversized",
            signed(vec![b' '; 5000]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "oversized and unsigned",
            post(vec![b'{'; 5000], None),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (name, req, expected) in cases {
        let resp = app.handle(req).await;
        assert_eq!(resp.status(), expected, "{name}: {}", body_text(&resp));
        assert!(
            !body_text(&resp).contains(DEV_APP_SECRET),
            "{name}: secret leaked"
        );
    }
    let put = lambda_http::http::Request::builder()
        .method("PUT")
        .body(Body::Empty)
        .unwrap();
    assert_eq!(
        app.handle(put).await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    env.assert_nothing_queued().await;
}

#[tokio::test]
async fn get_verification_answers_the_challenge_only_for_the_right_token() {
    let env = Env::new().await;
    let app = env.app();
    let ok = app.handle(event("verify")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(body_text(&ok), "1158201444");

    let cases: [&[(&str, &str)]; 4] = [
        &[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", "wrong"),
            ("hub.challenge", "1"),
        ],
        &[
            ("hub.mode", "unsubscribe"),
            ("hub.verify_token", DEV_VERIFY_TOKEN),
            ("hub.challenge", "1"),
        ],
        &[("hub.mode", "subscribe"), ("hub.challenge", "1")],
        &[],
    ];
    for params in cases {
        let resp = app.handle(verify_request(params)).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{params:?}");
        assert_ne!(body_text(&resp), "1");
    }
}

#[tokio::test]
async fn env_override_secrets_work_without_secrets_manager() {
    let env = Env::new().await;
    let app = env.app_with(&[
        ("APP_SECRET_ID", None),
        ("META_APP_SECRET", Some(DEV_APP_SECRET)),
        ("META_VERIFY_TOKEN", Some("local-token")),
    ]);
    assert_eq!(app.handle(event("wa-text")).await.status(), StatusCode::OK);
    let resp = app
        .handle(verify_request(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", "local-token"),
            ("hub.challenge", "42"),
        ]))
        .await;
    assert_eq!(body_text(&resp), "42");
    assert_eq!(env.inbound().await.len(), 1);
}

#[tokio::test]
async fn unset_app_secret_fails_loudly_instead_of_rejecting_every_signature() {
    let env = Env::new().await;
    env.blank_app_secret().await;
    let resp = env.app().handle(event("wa-text")).await;
    assert_eq!(
        answer(&resp),
        refusal(StatusCode::INTERNAL_SERVER_ERROR, "temporarily unavailable")
    );
    env.assert_nothing_queued().await;
}

#[tokio::test]
async fn sqs_unreachable_answers_500_so_meta_retries() {
    let env = Env::new().await;
    // Same queues, but the SDK points at a port where nothing listens.
    let dead = shared::aws::loader()
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "t", "t", None, None, "t",
        ))
        .endpoint_url("http://127.0.0.1:9")
        .load()
        .await;
    let config = env.config(&[
        ("APP_SECRET_ID", None),
        ("META_APP_SECRET", Some(DEV_APP_SECRET)),
        ("META_VERIFY_TOKEN", Some(DEV_VERIFY_TOKEN)),
    ]);
    // The production retry policy, so the test also shows how long Meta waits for the 500.
    let app = App::with_retry(config, &dead, RetryPolicy::default()).unwrap();
    for name in ["wa-text", "wa-status-failed"] {
        let started = std::time::Instant::now();
        let resp = app.handle(event(name)).await;
        eprintln!("{name}: 500 after {:?}", started.elapsed());
        assert_eq!(
            answer(&resp),
            refusal(StatusCode::INTERNAL_SERVER_ERROR, "temporarily unavailable"),
            "{name}: no internals in the body"
        );
    }
    // The same request succeeds once SQS is back (here: the real emulator).
    assert_eq!(
        env.app().handle(event("wa-text")).await.status(),
        StatusCode::OK
    );
    assert_eq!(env.inbound().await.len(), 1);
}

#[tokio::test]
async fn correlation_id_from_the_caller_travels_with_the_message() {
    let env = Env::new().await;
    let mut req = event("ig-text");
    req.headers_mut()
        .insert("x-correlation-id", "trace-abc-123".parse().unwrap());
    assert_eq!(env.app().handle(req).await.status(), StatusCode::OK);
    let got = env.inbound().await;
    assert_eq!(envelope(&got[0]).correlation_id, "trace-abc-123");
    assert_eq!(got[0].attributes["correlation_id"], "trace-abc-123");
}

#[tokio::test]
async fn webhook_error_responses_keep_their_exact_bodies_and_headers() {
    let env = Env::new().await;
    let app = env.app_with(&[("MAX_BODY_BYTES", Some("4096"))]);
    let good = wa_webhook(&[("P1", vec![wa_text("wamid.x", "hello")])]);
    let wrong_secret = SignatureKey::new(b"some-other-secret").sign(&good);
    let mut not_utf8 = post(good.clone(), None);
    not_utf8.headers_mut().insert(
        "x-hub-signature-256",
        HeaderValue::from_bytes(b"sha256=\xff").unwrap(),
    );
    let method = |m: &str| {
        lambda_http::http::Request::builder()
            .method(m)
            .uri("https://example.lambda-url.us-east-1.on.aws/")
            .body(Body::Empty)
            .unwrap()
    };
    let cases = vec![
        (
            "PUT",
            method("PUT"),
            refusal(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        ),
        (
            "DELETE",
            method("DELETE"),
            refusal(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        ),
        (
            "oversized, signed",
            signed(vec![b' '; 5000]),
            refusal(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        ),
        (
            "oversized, unsigned",
            post(vec![b'{'; 5000], None),
            refusal(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        ),
        (
            "missing signature",
            post(good.clone(), None),
            refusal(StatusCode::UNAUTHORIZED, "invalid signature"),
        ),
        (
            "malformed signature",
            post(good.clone(), Some("md5=abc".into())),
            refusal(StatusCode::UNAUTHORIZED, "invalid signature"),
        ),
        (
            "wrong secret",
            post(good.clone(), Some(wrong_secret)),
            refusal(StatusCode::UNAUTHORIZED, "invalid signature"),
        ),
        (
            "non-UTF-8 signature header",
            not_utf8,
            refusal(StatusCode::UNAUTHORIZED, "invalid signature"),
        ),
        (
            "bad signature event",
            event("bad-signature"),
            refusal(StatusCode::UNAUTHORIZED, "invalid signature"),
        ),
        (
            "not JSON",
            signed(b"hello there".to_vec()),
            refusal(StatusCode::BAD_REQUEST, "body is not a JSON webhook object"),
        ),
        (
            "unknown object",
            signed(br#"{"object":"page","entry":[]}"#.to_vec()),
            refusal(
                StatusCode::BAD_REQUEST,
                "webhook object `page` is not handled",
            ),
        ),
        (
            // The object comes from the request; the body escapes it as JSON.
            "unknown object with a quote",
            signed(br#"{"object":"pa\"ge","entry":[]}"#.to_vec()),
            refusal(
                StatusCode::BAD_REQUEST,
                r#"webhook object `pa\"ge` is not handled"#,
            ),
        ),
        (
            "verification with the wrong token",
            verify_request(&[
                ("hub.mode", "subscribe"),
                ("hub.verify_token", "wrong"),
                ("hub.challenge", "1"),
            ]),
            refusal(StatusCode::FORBIDDEN, "verification failed"),
        ),
        (
            "verification without parameters",
            verify_request(&[]),
            refusal(StatusCode::FORBIDDEN, "verification failed"),
        ),
    ];
    for (name, req, expected) in cases {
        assert_eq!(answer(&app.handle(req).await), expected, "{name}");
    }
    // HEAD is not answered as a GET (what a method router would do): 405, no Allow header,
    // and no body, as HTTP has it for HEAD.
    let head = app.handle(method("HEAD")).await;
    assert_eq!(head.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(!head.headers().contains_key("allow"));
    assert!(head.body().is_empty(), "a HEAD answer has no body");
    env.assert_nothing_queued().await;
}

#[tokio::test]
async fn unavailable_secrets_answer_500_to_get_before_its_parameters_are_read() {
    let env = Env::new().await;
    env.blank_app_secret().await;
    let app = env.app();
    // GET reads the secrets before it looks at the parameters, so even an empty GET gets 500.
    for (name, req) in [
        ("verification", event("verify")),
        ("GET without parameters", verify_request(&[])),
    ] {
        assert_eq!(
            answer(&app.handle(req).await),
            refusal(StatusCode::INTERNAL_SERVER_ERROR, "temporarily unavailable"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_verification_answer_is_the_bare_challenge_as_text_plain() {
    let env = Env::new().await;
    let app = env.app();
    assert_eq!(
        answer(&app.handle(event("verify")).await),
        challenge("1158201444")
    );
    let resp = app
        .handle(verify_request(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", DEV_VERIFY_TOKEN),
            ("hub.challenge", "42"),
        ]))
        .await;
    assert_eq!(answer(&resp), challenge("42"));
}

#[tokio::test]
async fn verification_reads_the_query_string_the_uri_carries() {
    let env = Env::new().await;
    let app = env.app();
    let token = DEV_VERIFY_TOKEN;
    let cases = [
        (
            format!("hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"),
            challenge("1158201444"),
        ),
        (
            format!("hub.challenge=77&hub.verify_token={token}&hub.mode=subscribe"),
            challenge("77"),
        ),
        // Values are percent-decoded, the token as much as the challenge.
        (
            "hub.mode=subscribe&hub.verify_token=dev%2Dverify%2Dtoken&hub.challenge=12%2034"
                .to_owned(),
            challenge("12 34"),
        ),
        // The first of repeated parameters wins.
        (
            format!("hub.mode=subscribe&hub.verify_token={token}&hub.challenge=first&hub.challenge=second"),
            challenge("first"),
        ),
        // An empty challenge is still a challenge, answered with an empty body.
        (
            format!("hub.mode=subscribe&hub.verify_token={token}&hub.challenge="),
            challenge(""),
        ),
        (
            "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1".to_owned(),
            refusal(StatusCode::FORBIDDEN, "verification failed"),
        ),
        (
            format!("hub.mode=unsubscribe&hub.verify_token={token}&hub.challenge=1"),
            refusal(StatusCode::FORBIDDEN, "verification failed"),
        ),
        (
            format!("hub.mode=subscribe&hub.verify_token={token}"),
            refusal(StatusCode::FORBIDDEN, "verification failed"),
        ),
    ];
    for (query, expected) in cases {
        let req = get_with_query(&query);
        assert_eq!(
            req.uri().query(),
            Some(query.as_str()),
            "the URI carries it"
        );
        assert_eq!(answer(&app.handle(req).await), expected, "{query}");
    }
}

#[tokio::test]
async fn the_caller_correlation_id_is_echoed_and_an_invalid_one_is_replaced() {
    let env = Env::new().await;
    let app = env.app();
    let good = wa_webhook(&[("P1", vec![wa_text("wamid.c", "hello")])]);
    let with_id = |mut req: Request, id: HeaderValue| {
        req.headers_mut().insert(webhook::CORRELATION_HEADER, id);
        req
    };
    let put = || {
        lambda_http::http::Request::builder()
            .method("PUT")
            .body(Body::Empty)
            .unwrap()
    };
    // A sane id comes back verbatim on every kind of answer (trimmed, up to 128 characters).
    let longest = "a".repeat(128);
    let kept = [
        ("trace-ABC_1.2:3", "trace-ABC_1.2:3"),
        (" trace-7\t", "trace-7"),
        (longest.as_str(), longest.as_str()),
    ];
    for (given, echoed) in kept {
        let reqs = [
            ("accepted POST", signed(good.clone())),
            ("refused POST", post(good.clone(), None)),
            ("verification", event("verify")),
            ("PUT", put()),
        ];
        for (name, req) in reqs {
            let resp = app
                .handle(with_id(req, HeaderValue::from_str(given).unwrap()))
                .await;
            assert_eq!(correlation_of(&resp), echoed, "{name} with {given:?}");
        }
    }
    // Anything else is replaced by a fresh UUIDv4, a new one each time.
    let too_long = "a".repeat(129);
    let replaced = [
        HeaderValue::from_static("has space"),
        HeaderValue::from_static("a/b"),
        HeaderValue::from_static(""),
        HeaderValue::from_str(&too_long).unwrap(),
        HeaderValue::from_bytes(b"trace-\xff").unwrap(),
    ];
    let mut seen = std::collections::HashSet::new();
    for given in replaced {
        for req in [post(good.clone(), None), put()] {
            let resp = app.handle(with_id(req, given.clone())).await;
            let id = correlation_of(&resp);
            let uuid = uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert_eq!(id, uuid.hyphenated().to_string(), "lowercase, hyphenated");
            assert!(seen.insert(id), "a fresh id for {given:?}");
        }
    }
    assert_eq!(
        env.inbound().await.len(),
        1,
        "the three accepted POSTs are one message"
    );
}

#[tokio::test]
async fn an_envelope_too_big_for_sqs_is_queued_without_its_raw_payload() {
    let env = Env::new().await;
    let mut msg = wa_text("wamid.big", "small text");
    msg["padding"] = json!("p".repeat(300 * 1024));
    let resp = env
        .app()
        .handle(signed(wa_webhook(&[("P9", vec![msg])])))
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", body_text(&resp));
    let got = env.inbound().await;
    assert_eq!(got.len(), 1);
    let e = envelope(&got[0]);
    assert!(e.raw_omitted && e.raw.is_none());
    assert_eq!(
        e.content,
        Content::Text {
            body: "small text".into()
        }
    );
}

#[test]
fn the_binary_refuses_to_start_and_names_every_missing_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webhook"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run webhook binary");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for var in ["INBOUND_QUEUE_URL", "STATUS_QUEUE_URL", "APP_SECRET_ID"] {
        assert!(all.contains(var), "{var} not named in: {all}");
    }
}

#[test]
fn sample_events_are_signed_with_the_dev_secret() {
    let key = SignatureKey::new(DEV_APP_SECRET.as_bytes());
    let dir = format!("{}/../../events", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        if stem.starts_with("sqs-") || stem == "conversation" {
            // The processor's SQS events (covered by its tests) and make dev's sample
            // conversation (the messages devstack signs and sends; covered by its tests).
            continue;
        }
        let req = event(stem);
        if req.method() != "POST" {
            continue;
        }
        let sig = req
            .headers()
            .get("x-hub-signature-256")
            .map(|v| v.to_str().unwrap());
        let verdict = key.verify(req.body().as_ref(), sig);
        assert_eq!(verdict.is_ok(), stem != "bad-signature", "{name}");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} POST events found");
}
