//! Harness of the admin API tests: a fresh Postgres database, the rate-limit table and the
//! extraction queue on the emulator (from template.yaml), the Graph API as a wiremock stub,
//! and two tenants made through the API itself.

#![allow(dead_code)]

use std::time::Duration;

use admin::{App, Settings};
use lambda_http::http::Method;
use lambda_http::{Body, Request};
use local_aws::testing::{emulator_sdk, fresh_stack};
use serde_json::{json, Value};
use shared::db::apikeys::{self, Role};
use shared::db::testing::TestDb;
use shared::db::{conversations, messages, Db, DbConfig, TenantId};
use shared::graph::GraphTokens;
use shared::http::Routed;
use shared::secrets::SecretCache;
use uuid::Uuid;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const WA_NUMBER: &str = "106540352242922";
pub const IG_ACCOUNT: &str = "17841400000000000";

/// A tenant's keys by role.
pub struct Tenant {
    pub id: TenantId,
    pub owner: String,
    pub agent: String,
    pub viewer: String,
}

/// Rows of tenant A the tests act on.
pub struct Fixture {
    pub agent: Uuid,
    pub whatsapp: Uuid,
    pub instagram: Uuid,
    pub wa_conversation: Uuid,
    pub ig_conversation: Uuid,
    pub lead: Uuid,
    pub viewer_key_id: Uuid,
}

pub struct Harness {
    pub t: TestDb,
    pub sdk: aws_config::SdkConfig,
    pub stack: local_aws::Stack,
    pub graph: MockServer,
    pub app: App,
    pub platform: String,
    pub a: Tenant,
    pub b: Tenant,
    pub fx: Fixture,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: lambda_http::http::HeaderMap,
}

pub fn resp_of(resp: lambda_http::Response<Body>) -> Resp {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = String::from_utf8_lossy(resp.body().as_ref()).into_owned();
    Resp {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        headers,
    }
}

pub fn request(m: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Request {
    let mut b = lambda_http::http::Request::builder()
        .method(Method::from_bytes(m.as_bytes()).unwrap())
        .uri(format!("https://admin.example.net{path}"));
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.header("content-type", "application/json")
        .body(Body::from(body.unwrap_or("").to_owned()))
        .unwrap()
}

pub async fn settings_for(stack: &local_aws::Stack, graph: &MockServer) -> Settings {
    Settings {
        limits_table: stack.tables["IdempotencyTable"].clone(),
        extraction_queue_url: stack.queue("ExtractionQueue").url.clone(),
        graph_base_url: format!("{}/fb", graph.uri()),
        instagram_graph_base_url: format!("{}/ig", graph.uri()),
        model_base_urls: vec!["https://llm.example.net/v1".into()],
        ..Settings::default()
    }
}

pub fn app_with(t: &TestDb, sdk: &aws_config::SdkConfig, settings: Settings) -> App {
    app_on(Db::new(DbConfig::new(t.url.clone())), sdk, settings)
}

/// The app on another database (e.g. one that cannot be reached).
pub fn app_on(db: Db, sdk: &aws_config::SdkConfig, settings: Settings) -> App {
    App::new(
        settings,
        db,
        sdk,
        GraphTokens {
            secrets: SecretCache::new(
                aws_sdk_secretsmanager::Client::new(sdk),
                Duration::from_secs(300),
            ),
            default: Some("EAAG-test".to_owned().into()),
            prefix: None,
        },
        shared::metrics::Metrics::silent("AiAgentTest", "admin"),
    )
}

impl Harness {
    pub async fn new() -> Self {
        let t = TestDb::new().await;
        let sdk = emulator_sdk().await;
        let (_, stack) = fresh_stack(&sdk).await;
        let graph = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path_regex("^/fb/[0-9]+/messages$"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"messages": [{"id": "wamid.HUMAN1"}]})),
            )
            .mount(&graph)
            .await;
        Mock::given(method("POST"))
            .and(path_regex("^/ig/[0-9]+/messages$"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"recipient_id": "6543", "message_id": "mid.HUMAN1"})),
            )
            .mount(&graph)
            .await;
        let app = app_with(&t, &sdk, settings_for(&stack, &graph).await);
        let platform = apikeys::issue(&t.db, None, Role::Platform, "operator")
            .await
            .unwrap()
            .key;
        let mut h = Self {
            t,
            sdk,
            stack,
            graph,
            app,
            platform,
            a: placeholder(),
            b: placeholder(),
            fx: Fixture {
                agent: Uuid::nil(),
                whatsapp: Uuid::nil(),
                instagram: Uuid::nil(),
                wa_conversation: Uuid::nil(),
                ig_conversation: Uuid::nil(),
                lead: Uuid::nil(),
                viewer_key_id: Uuid::nil(),
            },
        };
        h.a = h.tenant("Shop A").await;
        h.b = h.tenant("Shop B").await;
        h.fx = h.fixture().await;
        h
    }

    /// A tenant made through the API, with a key per role.
    async fn tenant(&self, name: &str) -> Tenant {
        let r = self
            .call("POST", "/v1/tenants", &self.platform, json!({"name": name}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let owner = r.body["owner_key"]["key"].as_str().unwrap().to_owned();
        let id = Uuid::parse_str(r.body["tenant"]["id"].as_str().unwrap()).unwrap();
        let mut keys = Vec::new();
        for role in ["agent", "viewer"] {
            let k = self
                .call(
                    "POST",
                    "/v1/keys",
                    &owner,
                    json!({"name": format!("{role} desk"), "role": role}),
                )
                .await;
            assert_eq!(k.status, 201, "{}", k.text);
            keys.push(k.body["key"].as_str().unwrap().to_owned());
        }
        Tenant {
            id: TenantId::from_trusted(id),
            owner,
            agent: keys.remove(0),
            viewer: keys.remove(0),
        }
    }

    /// Tenant A's agent, and its WhatsApp and Instagram accounts registered by the operator
    /// (they use the deployment's default Graph token), a conversation on each, a lead.
    async fn fixture(&self) -> Fixture {
        let db = &self.t.db;
        let agent = self
            .call(
                "POST",
                "/v1/agents",
                &self.a.owner,
                json!({"name": "sales", "model": "gpt-test", "instructions": "Sell flats."}),
            )
            .await;
        assert_eq!(agent.status, 201, "{}", agent.text);
        let agent = id_of(&agent.body);
        let wa = self
            .call(
                "POST",
                &format!("/v1/tenants/{}/channels", self.a.id),
                &self.platform,
                json!({"channel": "whatsapp", "provider_account_id": WA_NUMBER,
                       "waba_id": "102290129340398", "agent_id": agent}),
            )
            .await;
        assert_eq!(wa.status, 201, "{}", wa.text);
        let ig = self
            .call(
                "POST",
                &format!("/v1/tenants/{}/channels", self.a.id),
                &self.platform,
                json!({"channel": "instagram", "provider_account_id": IG_ACCOUNT, "agent_id": agent}),
            )
            .await;
        assert_eq!(ig.status, 201, "{}", ig.text);
        let (whatsapp, instagram) = (id_of(&wa.body), id_of(&ig.body));
        let tenant = self.a.id;
        let wa_contact = conversations::upsert_contact(
            db,
            tenant,
            whatsapp,
            "5215512345678",
            Some("5215512345678"),
            Some("Ana"),
            None,
        )
        .await
        .unwrap()
        .unwrap();
        let wa_conversation = conversations::conversation_for(db, tenant, whatsapp, wa_contact)
            .await
            .unwrap()
            .unwrap()
            .id;
        let ig_contact = conversations::upsert_contact(
            db,
            tenant,
            instagram,
            "6543",
            None,
            None,
            Some("ana.ig"),
        )
        .await
        .unwrap()
        .unwrap();
        let ig_conversation = conversations::conversation_for(db, tenant, instagram, ig_contact)
            .await
            .unwrap()
            .unwrap()
            .id;
        for (conv, pid) in [(wa_conversation, "wamid.IN1"), (ig_conversation, "mid.IN1")] {
            messages::insert_inbound_message(
                db,
                tenant,
                conv,
                pid,
                &json!({"type": "text", "body": "Hola"}),
                None,
                std::time::SystemTime::now(),
            )
            .await
            .unwrap();
        }
        let c = db.client().await.unwrap();
        let lead: Uuid = c
            .query_one(
                "INSERT INTO leads (user_id, contact_id, name, email, phone)
                 VALUES ($1, $2, 'Ana', 'ana@example.com', '=cmd|calc') RETURNING id",
                &[&tenant.uuid(), &wa_contact],
            )
            .await
            .unwrap()
            .get(0);
        let keys = self
            .call("GET", "/v1/keys", &self.a.owner, Value::Null)
            .await;
        let viewer_key_id = keys.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["role"] == "viewer")
            .map(id_of)
            .unwrap();
        Fixture {
            agent,
            whatsapp,
            instagram,
            wa_conversation,
            ig_conversation,
            lead,
            viewer_key_id,
        }
    }

    pub async fn send(&self, m: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Resp {
        self.handle(request(m, path, key, body)).await
    }

    /// Any request, as the harness's app answers it.
    pub async fn handle(&self, req: Request) -> Resp {
        resp_of(self.app.handle(req).await)
    }

    /// A JSON call (`Value::Null`: no body).
    pub async fn call(&self, m: &str, path: &str, key: &str, body: Value) -> Resp {
        let body = (!body.is_null()).then(|| body.to_string());
        self.send(m, path, Some(key), body.as_deref()).await
    }

    pub async fn scalar<T: for<'a> tokio_postgres::types::FromSql<'a>>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> T {
        self.t
            .db
            .client()
            .await
            .unwrap()
            .query_one(sql, params)
            .await
            .unwrap()
            .get(0)
    }

    /// Requests the Graph stub received, as (path, JSON body).
    pub async fn graph_sends(&self) -> Vec<(String, Value)> {
        self.graph
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| {
                (
                    r.url.path().to_owned(),
                    serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                )
            })
            .collect()
    }
}

fn placeholder() -> Tenant {
    Tenant {
        id: TenantId::from_trusted(Uuid::nil()),
        owner: String::new(),
        agent: String::new(),
        viewer: String::new(),
    }
}

pub fn id_of(v: &Value) -> Uuid {
    Uuid::parse_str(v["id"].as_str().expect("an id")).unwrap()
}
