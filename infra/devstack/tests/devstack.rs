//! The stubs answer our real clients the way OpenAI and Meta do, and the seed is idempotent.

use devstack::seed::{seed, DEMO_CREDITS, DEMO_INSTAGRAM_ACCOUNT, DEMO_WHATSAPP_NUMBER};
use devstack::stubs::{serve, Stubs, STUB_MODEL_PREFIX};
use secrecy::SecretString;
use shared::db::store;
use shared::db::testing::TestDb;
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
        store::credit_state(&t.db, first.tenant).await.unwrap(),
        Some((DEMO_CREDITS, DEMO_CREDITS))
    );
    for (channel, id) in [
        (Channel::Whatsapp, DEMO_WHATSAPP_NUMBER),
        (Channel::Instagram, DEMO_INSTAGRAM_ACCOUNT),
    ] {
        let route = store::resolve_channel_account(&t.db, channel, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(route.tenant, first.tenant);
        let agent = store::agent(&t.db, route.tenant, route.agent_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (agent.price_input_per_1k, agent.price_output_per_1k),
            (1, 4)
        );
    }
}
