//! The Responses client against a stub HTTP server (wiremock): wire format, retry classes,
//! the previous_response_id fallback signal and the circuit breaker.

use std::time::Duration;

use serde_json::json;
use shared::openai::{ClientSettings, InputMessage, ModelError, ResponseRequest, ResponsesClient};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client(server: &MockServer) -> ResponsesClient {
    let mut s = ClientSettings::new(format!("{}/v1", server.uri()), "sk-test".to_owned().into());
    s.timeout = Duration::from_millis(300);
    s.min_backoff = Duration::from_millis(5);
    s.max_backoff = Duration::from_millis(20);
    s.breaker_threshold = 3;
    s.breaker_cool_down = Duration::from_millis(200);
    ResponsesClient::new(s)
}

fn request() -> ResponseRequest {
    ResponseRequest {
        model: "gpt-4.1-mini".into(),
        instructions: Some("Be brief.".into()),
        input: vec![InputMessage::user("Hola")],
        store: true,
        max_output_tokens: Some(200),
        safety_identifier: Some("c0ffee".into()),
        ..ResponseRequest::default()
    }
}

fn ok_body(text: &str) -> serde_json::Value {
    json!({"id": "resp_1", "object": "response", "status": "completed",
        "output": [{"type": "reasoning", "summary": []},
                   {"type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 42, "output_tokens": 7, "total_tokens": 49}})
}

fn error_body(code: &str, kind: &str) -> serde_json::Value {
    json!({"error": {"message": "…", "type": kind, "param": null, "code": code}})
}

#[tokio::test]
async fn sends_the_documented_body_and_reads_text_and_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .and(header("authorization", "Bearer sk-test"))
        .and(body_partial_json(
            json!({"model": "gpt-4.1-mini", "instructions": "Be brief.",
            "input": [{"role": "user", "content": "Hola"}], "store": true, "max_output_tokens": 200,
            "safety_identifier": "c0ffee"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("¡Hola!")))
        .expect(1)
        .mount(&server)
        .await;
    let reply = client(&server).create(&request()).await.unwrap();
    assert_eq!(reply.id, "resp_1");
    assert_eq!(reply.text, "¡Hola!");
    assert_eq!((reply.input_tokens, reply.output_tokens), (42, 7));
}

#[tokio::test]
async fn an_agents_base_url_is_used_only_when_allow_listed_and_stays_out_of_the_body() {
    let default = MockServer::start().await;
    let agents = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/gateway/v1/responses"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("via gateway")))
        .expect(1)
        .mount(&agents)
        .await;
    let req = ResponseRequest {
        base_url: Some(format!("{}/gateway/v1/", agents.uri())),
        ..request()
    };
    // Not on the allowlist: the key stays with the default endpoint.
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("default")))
        .mount(&default)
        .await;
    let reply = client(&default).create(&req).await.unwrap();
    assert_eq!(reply.text, "default");
    assert!(agents.received_requests().await.unwrap().is_empty());
    // Listed: the agent's endpoint answers.
    let mut settings =
        ClientSettings::new(format!("{}/v1", default.uri()), "sk-test".to_owned().into());
    settings.allowed_base_urls = vec![format!("{}/gateway/v1", agents.uri())];
    let reply = ResponsesClient::new(settings).create(&req).await.unwrap();
    assert_eq!(reply.text, "via gateway");
    assert_eq!(default.received_requests().await.unwrap().len(), 1);
    let sent: serde_json::Value =
        serde_json::from_slice(&agents.received_requests().await.unwrap()[0].body).unwrap();
    assert!(sent.get("base_url").is_none());
}

#[tokio::test]
async fn a_500_then_a_200_gives_one_reply() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(error_body("server_error", "server_error")),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("ok")))
        .mount(&server)
        .await;
    assert_eq!(client(&server).create(&request()).await.unwrap().text, "ok");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn insufficient_quota_is_permanent_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_json(error_body("insufficient_quota", "insufficient_quota")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server).create(&request()).await.unwrap_err();
    assert_eq!(err, ModelError::QuotaExhausted);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_rate_limit_honours_retry_after_ms() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after-ms", "30")
                .set_body_json(error_body("rate_limit_exceeded", "requests")),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("after wait")))
        .mount(&server)
        .await;
    assert_eq!(
        client(&server).create(&request()).await.unwrap().text,
        "after wait"
    );
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 2);
}

#[tokio::test]
async fn bad_requests_and_bad_keys_are_permanent() {
    for (status, code) in [
        (400, "unsupported_value"),
        (401, "invalid_api_key"),
        (403, "unsupported_country_region_territory"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_json(error_body(code, "invalid_request_error")),
            )
            .expect(1)
            .mount(&server)
            .await;
        let err = client(&server).create(&request()).await.unwrap_err();
        assert_eq!(
            err,
            ModelError::Rejected {
                status,
                code: code.into()
            }
        );
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn an_unknown_previous_response_id_asks_for_the_history_fallback() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {
            "message": "Previous response with id 'resp_old' not found.", "type": "invalid_request_error",
            "param": "previous_response_id", "code": "previous_response_not_found"}})))
        .mount(&server)
        .await;
    let mut req = request();
    req.previous_response_id = Some("resp_old".into());
    assert_eq!(
        client(&server).create(&req).await.unwrap_err(),
        ModelError::PreviousResponseNotFound
    );
    // Without a previous id, a 404 is a plain rejection (e.g. a wrong base URL).
    let err = client(&server).create(&request()).await.unwrap_err();
    assert!(
        matches!(err, ModelError::Rejected { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_timeout_is_retried_then_reported_retryable() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(ok_body("late"))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let err = client(&server).create(&request()).await.unwrap_err();
    assert_eq!(err, ModelError::Timeout);
    assert!(err.is_retryable());
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        3,
        "1 try + 2 retries"
    );
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_recovers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("back")))
        .mount(&server)
        .await;
    let c = client(&server);
    // 1 try + 2 retries = 3 upstream failures: the breaker opens.
    assert_eq!(
        c.create(&request()).await.unwrap_err(),
        ModelError::Unavailable { status: 503 }
    );
    assert!(c.breaker_open());
    assert_eq!(
        c.create(&request()).await.unwrap_err(),
        ModelError::CircuitOpen
    );
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        3,
        "no call while open"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(c.create(&request()).await.unwrap().text, "back");
    assert!(!c.breaker_open());
}
