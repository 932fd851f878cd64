//! Graph API sends against a stub HTTP server (wiremock).

use secrecy::SecretString;
use serde_json::json;
use shared::graph::{GraphClient, SendError, WaRecipient};
use shared::split::{split_text, Measure, WHATSAPP_MAX_CHARS};
use wiremock::matchers::{body_json, body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn token() -> SecretString {
    "EAAG-test".to_owned().into()
}

fn client(server: &MockServer) -> GraphClient {
    GraphClient::new(
        format!("{}/fb", server.uri()),
        format!("{}/ig", server.uri()),
    )
}

fn graph_error(code: i64) -> serde_json::Value {
    json!({"error": {"message": format!("(#{code}) …"), "type": "OAuthException", "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": "…"}, "fbtrace_id": "Az8"}})
}

#[tokio::test]
async fn whatsapp_text_goes_out_with_context_and_returns_the_wamid() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fb/106540352242922/messages"))
        .and(header("authorization", "Bearer EAAG-test"))
        .and(body_json(json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "to": "5215512345678", "type": "text", "text": {"preview_url": false, "body": "¡Hola!"},
            "context": {"message_id": "wamid.IN"}})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"messaging_product": "whatsapp",
            "contacts": [{"input": "5215512345678", "wa_id": "5215512345678"}], "messages": [{"id": "wamid.OUT"}]})))
        .expect(1)
        .mount(&server)
        .await;
    let id = client(&server)
        .send_whatsapp_text(
            &token(),
            "106540352242922",
            &WaRecipient::WaId("5215512345678".into()),
            "¡Hola!",
            Some("wamid.IN"),
        )
        .await
        .unwrap();
    assert_eq!(id, "wamid.OUT");
}

#[tokio::test]
async fn a_contact_without_phone_is_addressed_by_bsuid() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_json(
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "recipient": "MX.77", "type": "text", "text": {"preview_url": false, "body": "hi"}}),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"messages": [{"id": "wamid.B"}]})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let id = client(&server)
        .send_whatsapp_text(
            &token(),
            "1",
            &WaRecipient::Bsuid("MX.77".into()),
            "hi",
            None,
        )
        .await
        .unwrap();
    assert_eq!(id, "wamid.B");
}

#[tokio::test]
async fn error_codes_decide_retry_not_http_status() {
    for (status, code, retryable) in [
        (400, 131047, false), // 24 h window closed
        (400, 131026, false), // undeliverable
        (401, 190, false),    // token expired
        (400, 100, false),    // bad parameter
        (400, 130429, true),  // throughput
        (400, 131056, true),  // pair rate limit
        (403, 4, true),       // app call rate
        (500, 131000, true),  // unknown, temporary
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_json(graph_error(code)))
            .mount(&server)
            .await;
        let err = client(&server)
            .send_whatsapp_text(&token(), "1", &WaRecipient::WaId("2".into()), "x", None)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            SendError {
                code,
                status,
                retryable,
                ambiguous: false
            },
            "code {code}"
        );
    }
    // A 5xx without Meta's error body came from something in between, perhaps after Meta
    // took the message: retryable, but ambiguous (the engine resolves it, never just resends).
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"))
        .mount(&server)
        .await;
    let err = client(&server)
        .send_whatsapp_text(&token(), "1", &WaRecipient::WaId("2".into()), "x", None)
        .await
        .unwrap_err();
    assert!(err.retryable && err.ambiguous, "{err:?}");
    // A 4xx without one is an answer: not sent.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let err = client(&server)
        .send_whatsapp_text(&token(), "1", &WaRecipient::WaId("2".into()), "x", None)
        .await
        .unwrap_err();
    assert!(!err.retryable && !err.ambiguous, "{err:?}");
}

#[tokio::test]
async fn mark_read_sends_the_typing_indicator() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fb/1/messages"))
        .and(body_json(
            json!({"messaging_product": "whatsapp", "status": "read",
            "message_id": "wamid.IN", "typing_indicator": {"type": "text"}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
        .expect(1)
        .mount(&server)
        .await;
    client(&server)
        .mark_read_and_typing(&token(), "1", "wamid.IN")
        .await
        .unwrap();
}

#[tokio::test]
async fn instagram_text_and_a_long_whatsapp_reply_in_order() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ig/17841400000000000/messages"))
        .and(body_json(
            json!({"recipient": {"id": "6543"}, "message": {"text": "Desde $900"}}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"recipient_id": "6543", "message_id": "mid.OUT"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(
        c.send_instagram_text(&token(), "17841400000000000", "6543", "Desde $900")
            .await
            .unwrap(),
        "mid.OUT"
    );

    Mock::given(method("POST"))
        .and(path("/fb/9/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"messages": [{"id": "wamid.P"}]})),
        )
        .mount(&server)
        .await;
    let long: String = (0..10)
        .map(|i| format!("Part {i}. {}\n\n", "word ".repeat(190)))
        .collect();
    assert!(long.chars().count() >= 9_500);
    let parts = split_text(&long, WHATSAPP_MAX_CHARS, Measure::Chars);
    for p in &parts {
        c.send_whatsapp_text(&token(), "9", &WaRecipient::WaId("2".into()), p, None)
            .await
            .unwrap();
    }
    let sent: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/fb/9/messages")
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["text"]["body"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(sent, parts, "sent in order, each within the limit");
    assert!(sent.iter().all(|b| b.chars().count() <= WHATSAPP_MAX_CHARS));
    assert!(sent[0].starts_with("Part 0.") && sent.last().unwrap().contains("Part 9."));
}

/// Under `NETWORK_GUARD=loopback` (every make target) a real Graph URL never leaves the
/// machine: the request goes to the guard's dead end, here a listener of the test's own.
#[tokio::test]
async fn under_the_network_guard_a_real_graph_url_stays_on_loopback() {
    use shared::netguard::{http_client_with, Guard};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_end = format!("http://{}", listener.local_addr().unwrap());
    let seen = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    });
    let client = GraphClient::with_http(
        http_client_with(Guard::Loopback, &dead_end),
        "https://graph.facebook.com/v25.0",
        "https://graph.instagram.com/v25.0",
        shared::graph::SEND_TIMEOUT,
    );
    let sent = client
        .send_whatsapp_text(
            &token(),
            "106540352242922",
            &WaRecipient::WaId("5215512345678".into()),
            "hi",
            None,
        )
        .await;
    assert!(sent.is_err(), "nothing may answer a guarded send");
    let first_line = tokio::time::timeout(std::time::Duration::from_secs(10), seen)
        .await
        .expect("the guarded request reached the dead end")
        .unwrap();
    assert_eq!(first_line, "CONNECT graph.facebook.com:443 HTTP/1.1");

    // Loopback upstreams (the stubs) are not diverted.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"messaging_product": "whatsapp", "messages": [{"id": "wamid.LOCAL"}]}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let local = GraphClient::with_http(
        http_client_with(Guard::Loopback, "http://127.0.0.1:9"),
        format!("{}/fb", server.uri()),
        format!("{}/ig", server.uri()),
        shared::graph::SEND_TIMEOUT,
    );
    let id = local
        .send_whatsapp_text(&token(), "1", &WaRecipient::WaId("52".into()), "hi", None)
        .await
        .unwrap();
    assert_eq!(id, "wamid.LOCAL");
}

/// What the turn engine needs to know of a failed send: was anything written that Meta may
/// have accepted?
#[tokio::test]
async fn only_a_written_request_without_an_answer_is_ambiguous() {
    use shared::graph::{PartOpts, Recipient};
    use shared::netguard::{http_client_with, Guard};
    let to = Recipient {
        contact_id: "MX.1",
        wa_id: Some("52"),
    };
    let quick = |base: String| {
        GraphClient::with_http(
            http_client_with(Guard::Off, "http://127.0.0.1:9"),
            format!("{base}/fb"),
            format!("{base}/ig"),
            std::time::Duration::from_millis(300),
        )
    };
    let send = |c: GraphClient| async move {
        c.send_part(
            shared::envelope::Channel::Whatsapp,
            &token(),
            "1",
            to,
            "hi",
            PartOpts::default(),
        )
        .await
    };
    // Nothing listens: never written.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    };
    let e = send(quick(closed)).await.unwrap_err();
    assert!(!e.ambiguous && e.retryable, "{e:?}");
    // Written, and the answer came too late.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"messages": [{"id": "wamid.LATE"}]}))
                .set_delay(std::time::Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let e = send(quick(server.uri())).await.unwrap_err();
    assert!(e.ambiguous, "{e:?}");
    // Accepted without an id we can name.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    let e = send(quick(server.uri())).await.unwrap_err();
    assert!(e.ambiguous && !e.retryable, "{e:?}");
    // An error response: nothing was sent, whatever its class.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_json(graph_error(131000)))
        .mount(&server)
        .await;
    let e = send(quick(server.uri())).await.unwrap_err();
    assert!(!e.ambiguous && e.retryable, "{e:?}");
}

#[tokio::test]
async fn a_tagged_part_carries_its_tag_for_the_status_echo() {
    use shared::graph::{PartOpts, Recipient};
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fb/1/messages"))
        .and(body_partial_json(
            json!({"biz_opaque_callback_data": "t:T:0:1"}),
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"messages": [{"id": "wamid.T"}]})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let id = client(&server)
        .send_part(
            shared::envelope::Channel::Whatsapp,
            &token(),
            "1",
            Recipient {
                contact_id: "MX.1",
                wa_id: Some("52"),
            },
            "hi",
            PartOpts {
                human_agent: false,
                tag: Some("t:T:0:1"),
            },
        )
        .await
        .unwrap();
    assert_eq!(id, "wamid.T");
}
