//! The stubs answer our real clients the way OpenAI and Meta do, and the seed is idempotent.

use devstack::seed::{seed, DEMO_CREDITS, DEMO_INSTAGRAM_ACCOUNT, DEMO_WHATSAPP_NUMBER};
use devstack::stubs::{serve, Stubs, STUB_MODEL_PREFIX};
use secrecy::SecretString;
use shared::db::testing::TestDb;
use shared::db::{agents, channels, credits};
use shared::envelope::Channel;
use shared::graph::{GraphClient, WaRecipient};
use shared::openai::{ClientSettings, InputMessage, ResponseRequest, ResponsesClient};

async fn start(sink: Option<std::path::PathBuf>) -> (String, std::sync::Arc<Stubs>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stubs = Stubs::new(sink);
    tokio::spawn(serve(listener, stubs.clone()));
    (base, stubs)
}

#[tokio::test]
async fn the_stub_model_answers_our_client_and_says_it_is_a_stub() {
    let (base, _) = start(None).await;
    let client = ResponsesClient::new(ClientSettings::new(
        format!("{base}/v1"),
        SecretString::from("stub".to_owned()),
    ));
    let req = ResponseRequest {
        model: "gpt-5-mini".into(),
        instructions: Some("Be brief.".into()),
        input: vec![
            InputMessage::user("hola"),
            InputMessage::assistant("¡Hola!"),
            InputMessage::user("¿precio del depa?"),
        ],
        ..Default::default()
    };
    let a = client.create(&req).await.unwrap();
    let b = client.create(&req).await.unwrap();
    assert!(a.text.starts_with(STUB_MODEL_PREFIX), "{}", a.text);
    assert!(a.text.contains("¿precio del depa?"));
    assert_eq!(a.text, b.text, "deterministic");
    assert_ne!(a.id, b.id);
    assert!(a.input_tokens > 0 && a.output_tokens > 0);
}

#[tokio::test]
async fn the_graph_sink_records_sends_in_order_and_answers_like_meta() {
    let dir = std::env::temp_dir().join(format!("sink-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let (base, stubs) = start(Some(dir.clone())).await;
    let graph = GraphClient::new(format!("{base}/graph"), format!("{base}/ig"));
    let token = SecretString::from("EAAG-stub".to_owned());
    graph
        .mark_read_and_typing(&token, DEMO_WHATSAPP_NUMBER, "wamid.IN1")
        .await
        .unwrap();
    let to = WaRecipient::WaId("5215512345678".into());
    let first = graph
        .send_whatsapp_text(&token, DEMO_WHATSAPP_NUMBER, &to, "one", None)
        .await
        .unwrap();
    let second = graph
        .send_instagram_text(&token, DEMO_INSTAGRAM_ACCOUNT, "6543", "two")
        .await
        .unwrap();
    assert!(first.starts_with("wamid.STUB") && second.starts_with("mid.STUB"));
    let sent = stubs.sent();
    assert_eq!(sent.len(), 2, "mark-as-read is not a send");
    assert_eq!(sent[0]["text"], "one");
    assert_eq!(sent[0]["to"], "5215512345678");
    assert_eq!(sent[1]["channel"], "instagram");
    assert_eq!(sent[1]["text"], "two");
    let lines = std::fs::read_to_string(&dir).unwrap();
    assert_eq!(lines.lines().count(), 2);
    let over_http: serde_json::Value = reqwest::get(format!("{base}/_sent"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http.as_array().unwrap().len(), 2);
    let _ = std::fs::remove_file(&dir);

    // A restarted stub must not hand out ids an earlier run stored (they would be taken for
    // duplicates of the earlier sends).
    let (restarted, _) = start(None).await;
    let graph = GraphClient::new(format!("{restarted}/graph"), format!("{restarted}/ig"));
    let after_restart = graph
        .send_whatsapp_text(&token, DEMO_WHATSAPP_NUMBER, &to, "one", None)
        .await
        .unwrap();
    assert_ne!(after_restart, first);
}

#[tokio::test]
async fn seeding_twice_creates_the_demo_tenant_once() {
    let t = TestDb::new().await;
    let first = seed(&t.db, "gpt-test", &["http://127.0.0.1:9100".to_owned()])
        .await
        .unwrap();
    // A later run on other ports moves the demo page's origin.
    let again = seed(&t.db, "gpt-test", &["http://127.0.0.1:9200".to_owned()])
        .await
        .unwrap();
    assert!(first.created && !again.created);
    let site = shared::db::webchat::site_by_key(&t.db, devstack::seed::DEMO_WEBCHAT_SITE)
        .await
        .unwrap()
        .expect("the demo web chat site");
    assert_eq!(site.tenant, first.tenant);
    assert!(site.agent_id.is_some());
    assert_eq!(site.allowed_origins, ["http://127.0.0.1:9200"]);
    assert_eq!(first.tenant, again.tenant);
    assert_eq!(
        credits::credit_state(&t.db, first.tenant).await.unwrap(),
        Some((DEMO_CREDITS, DEMO_CREDITS))
    );
    for (channel, id) in [
        (Channel::Whatsapp, DEMO_WHATSAPP_NUMBER),
        (Channel::Instagram, DEMO_INSTAGRAM_ACCOUNT),
    ] {
        let route = channels::resolve_channel_account(&t.db, channel, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(route.tenant, first.tenant);
        let agent = agents::agent(&t.db, route.tenant, route.agent_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (agent.price_input_per_1k, agent.price_output_per_1k),
            (1, 4)
        );
    }
}

/// Each stub fault reaches our real clients as the failure it stands for, and every WhatsApp
/// send the stub takes is echoed as a signed status webhook carrying the send's tag.
#[tokio::test]
async fn stub_faults_look_to_our_clients_like_the_failures_they_stand_for() {
    use devstack::stubs::Faults;
    use shared::graph::{PartOpts, Recipient};
    use wiremock::matchers::{header_exists, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let webhook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header_exists("x-hub-signature-256"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&webhook)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut stubs = Stubs::new(None);
    std::sync::Arc::get_mut(&mut stubs)
        .unwrap()
        .echo_statuses(&webhook.uri(), "app-secret");
    tokio::spawn(serve(listener, stubs.clone()));
    let graph = GraphClient::new(format!("{base}/graph"), format!("{base}/ig"));
    let token = SecretString::from("EAAG-stub".to_owned());
    let send = |tag: &'static str| {
        let graph = graph.clone();
        let token = token.clone();
        async move {
            graph
                .send_part(
                    Channel::Whatsapp,
                    &token,
                    DEMO_WHATSAPP_NUMBER,
                    Recipient {
                        contact_id: "52155",
                        wa_id: Some("52155"),
                    },
                    "hola",
                    PartOpts {
                        tag: Some(tag),
                        ..Default::default()
                    },
                )
                .await
        }
    };
    // Meta's 500 with a code: an answer, not sent, not recorded.
    stubs.set_faults(Faults::parse("graph_5xx=1").unwrap());
    let e = send("t:a:0:1").await.unwrap_err();
    assert!(e.retryable && !e.ambiguous && e.code == 131000, "{e:?}");
    assert!(stubs.sent().is_empty());
    // Taken, then a gateway's 502 or a reset: ambiguous, and the message did go out.
    for (fault, tag) in [
        ("graph_accept_5xx=1", "t:a:0:2"),
        ("graph_reset=1", "t:a:0:3"),
    ] {
        stubs.set_faults(Faults::parse(fault).unwrap());
        let e = send(tag).await.unwrap_err();
        assert!(e.ambiguous, "{fault}: {e:?}");
    }
    stubs.set_faults(Faults::default());
    assert!(send("t:a:0:4").await.is_ok());
    assert_eq!(stubs.sent().len(), 3);
    assert_eq!(
        stubs.injected().values().sum::<u64>(),
        3,
        "{:?}",
        stubs.injected()
    );
    // One signed `sent` status per message taken, each with its send's tag.
    let mut echoed = Vec::new();
    for _ in 0..50 {
        echoed = webhook.received_requests().await.unwrap();
        if echoed.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let key = shared::signature::SignatureKey::new(b"app-secret");
    let mut tags: Vec<String> = echoed
        .iter()
        .map(|r| {
            let sig = r
                .headers
                .get("x-hub-signature-256")
                .unwrap()
                .to_str()
                .unwrap();
            key.verify(&r.body, Some(sig)).expect("signed like Meta");
            let parsed =
                shared::meta::parse_webhook(&r.body, "test", 0).expect("a webhook we parse");
            let shared::envelope::StatusEvent::DeliveryStatus(s) = &parsed.statuses[0] else {
                panic!("a delivery status: {:?}", parsed.statuses);
            };
            assert_eq!(s.status.as_str(), "sent");
            s.biz_opaque_callback_data.clone().unwrap()
        })
        .collect();
    tags.sort();
    assert_eq!(tags, ["t:a:0:2", "t:a:0:3", "t:a:0:4"]);

    // The model's faults: a 429 (retried by our client after its retry-after), then a reset.
    let client = ResponsesClient::new(ClientSettings::new(
        format!("{base}/v1"),
        SecretString::from("stub".to_owned()),
    ));
    let req = ResponseRequest {
        model: "gpt-5-mini".into(),
        input: vec![InputMessage::user("hola")],
        ..Default::default()
    };
    stubs.set_faults(Faults::parse("openai_500=1").unwrap());
    assert!(client.create(&req).await.is_err());
    stubs.set_faults(Faults::default());
    assert!(client.create(&req).await.is_ok());
}
