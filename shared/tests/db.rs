//! The data layer against a real Postgres (`DATABASE_URL`, a throwaway cluster under
//! `make test`), one fresh database per test with the migrations applied.

use std::time::{Duration, SystemTime};

use serde_json::json;
use shared::db::statuses::StatusApplied;
use shared::db::testing::TestDb;
use shared::db::{
    agents, channels, conversations, credits, messages, statuses, tenants, Db, DbConfig, TenantId,
};
use shared::envelope::{Channel, DeliveryState};
use uuid::Uuid;

/// A tenant with an agent, a WhatsApp number, a contact, a conversation and one inbound message.
struct Fixture {
    tenant: TenantId,
    agent: Uuid,
    account: Uuid,
    contact: Uuid,
    conversation: Uuid,
}

async fn fixture(db: &Db, name: &str, phone_number_id: &str) -> Fixture {
    let tenant = tenants::create_tenant(db, name).await.unwrap();
    let agent = agents::create_agent(db, tenant, "sales", "gpt-4.1-mini", "Be brief.")
        .await
        .unwrap();
    let account = channels::create_channel_account(
        db,
        tenant,
        Channel::Whatsapp,
        phone_number_id,
        Some(agent),
        None,
    )
    .await
    .unwrap();
    let contact = conversations::upsert_contact(
        db,
        tenant,
        account,
        "MX.1",
        Some("5215512345678"),
        Some("Ana"),
        None,
    )
    .await
    .unwrap()
    .unwrap();
    let conversation = conversations::conversation_for(db, tenant, account, contact)
        .await
        .unwrap()
        .unwrap()
        .id;
    let inserted = messages::insert_inbound_message(
        db,
        tenant,
        conversation,
        &format!("wamid.{name}"),
        &json!({"type": "text", "body": "hola"}),
        None,
        SystemTime::now(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!inserted.duplicate);
    Fixture {
        tenant,
        agent,
        account,
        contact,
        conversation,
    }
}

async fn count(db: &Db, table: &str) -> i64 {
    db.client()
        .await
        .unwrap()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn migrations_apply_from_zero_and_reapply_as_a_no_op() {
    let t = TestDb::new().await; // applied from an empty database
    for table in [
        "tenants",
        "agents",
        "channel_accounts",
        "contacts",
        "conversations",
        "messages",
        "credit_accounts",
        "credit_ledger",
        "leads",
    ] {
        assert_eq!(count(&t.db, table).await, 0, "{table} exists and is empty");
    }
    assert_eq!(
        t.db.migrate().await.unwrap(),
        0,
        "second run applies nothing"
    );
    assert_eq!(t.db.migrate().await.unwrap(), 0);
}

#[tokio::test]
async fn a_failing_migration_leaves_the_schema_unchanged() {
    let t = TestDb::new().await;
    let bad = refinery::Migration::unapplied(
        "V999__broken",
        "CREATE TABLE half_done (id int); INSERT INTO tenants (name) VALUES ('x'); SELECT 1/0;",
    )
    .unwrap();
    let err = t.db.run_migrations(refinery::Runner::new(&[bad])).await;
    assert!(err.is_err());
    let c = t.db.client().await.unwrap();
    let exists: bool = c
        .query_one("SELECT to_regclass('half_done') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "the table of the failed migration must not exist");
    assert_eq!(
        count(&t.db, "tenants").await,
        0,
        "its data change was rolled back"
    );
    let recorded: i64 = c
        .query_one(
            "SELECT count(*) FROM refinery_schema_history WHERE version = 999",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0);
}

#[tokio::test]
async fn another_tenants_ids_see_and_change_nothing() {
    let t = TestDb::new().await;
    let db = &t.db;
    let a = fixture(db, "alpha", "111").await;
    let b = fixture(db, "beta", "222").await;
    let messages_before = count(db, "messages").await;
    let contacts_before = count(db, "contacts").await;

    // Reads
    assert_eq!(
        conversations::get_conversation(db, b.tenant, a.conversation)
            .await
            .unwrap(),
        None
    );
    assert!(messages::recent_messages(db, b.tenant, a.conversation, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        messages::message_status(db, b.tenant, a.account, "wamid.alpha")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        channels::channel_account_channel(db, b.tenant, a.account)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        conversations::conversation_for(db, b.tenant, a.account, a.contact)
            .await
            .unwrap(),
        None
    );
    // Writes
    assert_eq!(
        conversations::upsert_contact(db, b.tenant, a.account, "MX.9", None, Some("Eve"), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        conversations::upsert_contact(db, b.tenant, a.account, "MX.1", None, Some("Renamed"), None)
            .await
            .unwrap(),
        None
    );
    assert!(
        !conversations::set_conversation_mode(db, b.tenant, a.conversation, "human")
            .await
            .unwrap()
    );
    assert_eq!(
        messages::insert_inbound_message(
            db,
            b.tenant,
            a.conversation,
            "wamid.x",
            &json!({}),
            None,
            SystemTime::now()
        )
        .await
        .unwrap(),
        None
    );
    assert_eq!(
        messages::insert_inbound_message(
            db,
            b.tenant,
            a.conversation,
            "wamid.alpha",
            &json!({}),
            None,
            SystemTime::now()
        )
        .await
        .unwrap(),
        None,
        "not even told it is a duplicate"
    );
    assert_eq!(
        messages::insert_outbound_message(
            db,
            b.tenant,
            a.conversation,
            Some("wamid.out"),
            &json!({}),
            None,
            None,
            None
        )
        .await
        .unwrap(),
        None
    );
    assert_eq!(
        statuses::apply_status(
            db,
            b.tenant,
            a.account,
            "wamid.alpha",
            DeliveryState::Read,
            None,
            true
        )
        .await
        .unwrap(),
        StatusApplied::NoAccount
    );
    assert!(
        !channels::set_channel_account_active(db, b.tenant, a.account, false)
            .await
            .unwrap()
    );
    credits::top_up(db, b.tenant, 100, "test", None)
        .await
        .unwrap();
    credits::charge(db, b.tenant, 40, "test", None)
        .await
        .unwrap();

    // A's rows are exactly as they were.
    let conv = conversations::get_conversation(db, a.tenant, a.conversation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.mode, "ai");
    assert_eq!(
        messages::message_status(db, a.tenant, a.account, "wamid.alpha")
            .await
            .unwrap(),
        Some(("received".to_owned(), None))
    );
    let route = channels::resolve_channel_account(db, Channel::Whatsapp, "111")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((route.tenant, route.is_active), (a.tenant, true));
    assert_eq!(
        credits::credit_state(db, a.tenant).await.unwrap(),
        Some((0, 0))
    );
    assert_eq!(
        credits::credit_state(db, b.tenant).await.unwrap(),
        Some((60, 60))
    );
    assert_eq!(count(db, "messages").await, messages_before);
    assert_eq!(count(db, "contacts").await, contacts_before);
    let name: Option<String> = db
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT display_name FROM contacts WHERE id = $1",
            &[&a.contact],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name.as_deref(), Some("Ana"));

    // The database itself refuses cross-tenant links and a second owner of a number.
    assert!(channels::create_channel_account(
        db,
        a.tenant,
        Channel::Instagram,
        "333",
        Some(b.agent),
        None
    )
    .await
    .is_err());
    assert!(
        channels::create_channel_account(db, b.tenant, Channel::Whatsapp, "111", None, None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_same_provider_message_id_is_stored_once() {
    let t = TestDb::new().await;
    let f = fixture(&t.db, "alpha", "111").await;
    let first = messages::insert_inbound_message(
        &t.db,
        f.tenant,
        f.conversation,
        "wamid.dup",
        &json!({"n": 1}),
        None,
        SystemTime::now(),
    )
    .await
    .unwrap()
    .unwrap();
    let second = messages::insert_inbound_message(
        &t.db,
        f.tenant,
        f.conversation,
        "wamid.dup",
        &json!({"n": 2}),
        None,
        SystemTime::now(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.id, second.id);
    let n: i64 =
        t.db.client()
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM messages WHERE provider_message_id = 'wamid.dup'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn fifty_concurrent_charges_never_overdraw_and_the_ledger_adds_up() {
    let t = TestDb::new().await;
    let f = fixture(&t.db, "alpha", "111").await;
    credits::top_up(&t.db, f.tenant, 1000, "top_up", Some("invoice-1"))
        .await
        .unwrap();
    // Ten connections, five charges each, all at once: 50 × 30 = 1500 asked of 1000.
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let url = t.url.clone();
            let tenant = f.tenant;
            tokio::spawn(async move {
                let db = Db::new(DbConfig::new(url));
                let mut charges = Vec::new();
                for i in 0..5 {
                    charges.push(
                        credits::charge(&db, tenant, 30, "reply", Some(&format!("m{i}")))
                            .await
                            .unwrap()
                            .unwrap(),
                    );
                }
                charges
            })
        })
        .collect();
    let mut charges = Vec::new();
    for h in handles {
        charges.extend(h.await.unwrap());
    }
    assert_eq!(charges.len(), 50);
    let taken: i64 = charges.iter().map(|c| c.charged).sum();
    assert_eq!(taken, 1000, "every credit is accounted for");
    assert!(charges
        .iter()
        .all(|c| c.requested == 30 && (0..=30).contains(&c.charged)));
    assert!(charges.iter().all(|c| c.balance_after >= 0));
    assert_eq!(
        charges
            .iter()
            .filter(|c| c.charged > 0 && c.charged < 30)
            .count(),
        1 - (1000 % 30 == 0) as usize
    );
    assert_eq!(
        credits::credit_state(&t.db, f.tenant).await.unwrap(),
        Some((0, 0))
    );
    let ledger_rows = count(&t.db, "credit_ledger").await;
    assert_eq!(
        ledger_rows,
        1 + charges.iter().filter(|c| c.charged > 0).count() as i64
    );
    // The CHECK constraint holds even against a direct write.
    let err =
        t.db.client()
            .await
            .unwrap()
            .execute(
                "UPDATE credit_accounts SET balance = -1 WHERE user_id = $1",
                &[&f.tenant.uuid()],
            )
            .await;
    assert!(err.is_err());
    // And the ledger cannot be rewritten.
    let err =
        t.db.client()
            .await
            .unwrap()
            .execute("DELETE FROM credit_ledger", &[])
            .await;
    assert!(err.is_err());
}

#[tokio::test]
async fn delivery_status_only_moves_forward() {
    let t = TestDb::new().await;
    let f = fixture(&t.db, "alpha", "111").await;
    let db = &t.db;
    for id in ["wamid.out1", "wamid.out2"] {
        messages::insert_outbound_message(
            db,
            f.tenant,
            f.conversation,
            Some(id),
            &json!({"body": "hi"}),
            None,
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    }
    let apply = |id: &'static str, s: DeliveryState, code: Option<i32>| async move {
        statuses::apply_status(db, f.tenant, f.account, id, s, code, false)
            .await
            .unwrap()
    };
    let status = |id: &'static str| async move {
        messages::message_status(db, f.tenant, f.account, id)
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(status("wamid.out1").await.0, "sent");
    // Out of order: read arrives before delivered, then a late sent; and a repeat.
    assert_eq!(
        apply("wamid.out1", DeliveryState::Read, None).await,
        StatusApplied::Updated
    );
    assert_eq!(
        apply("wamid.out1", DeliveryState::Delivered, None).await,
        StatusApplied::Stale
    );
    assert_eq!(
        apply("wamid.out1", DeliveryState::Sent, None).await,
        StatusApplied::Stale
    );
    assert_eq!(
        apply("wamid.out1", DeliveryState::Read, None).await,
        StatusApplied::Stale
    );
    assert_eq!(status("wamid.out1").await.0, "read");
    // failed is terminal, and a closed 24 h window (131047) is marked on the conversation.
    assert_eq!(
        apply("wamid.out2", DeliveryState::Failed, Some(131047)).await,
        StatusApplied::Updated
    );
    for late in [
        DeliveryState::Sent,
        DeliveryState::Delivered,
        DeliveryState::Read,
        DeliveryState::Unknown,
    ] {
        assert_eq!(apply("wamid.out2", late, None).await, StatusApplied::Stale);
    }
    assert_eq!(
        status("wamid.out2").await,
        ("failed".to_owned(), Some(131047))
    );
    let closed: Option<SystemTime> = db
        .client()
        .await
        .unwrap()
        .query_one("SELECT window_closed_at FROM conversations", &[])
        .await
        .unwrap()
        .get(0);
    assert!(closed.is_some());
}

#[tokio::test]
async fn a_status_before_its_message_is_kept_and_applied_when_the_message_appears() {
    let t = TestDb::new().await;
    let f = fixture(&t.db, "alpha", "111").await;
    let db = &t.db;
    for s in [
        DeliveryState::Delivered,
        DeliveryState::Sent,
        DeliveryState::Delivered,
    ] {
        assert_eq!(
            statuses::apply_status(db, f.tenant, f.account, "wamid.early", s, None, false)
                .await
                .unwrap(),
            StatusApplied::Pending
        );
    }
    assert_eq!(count(db, "pending_statuses").await, 2, "one row per status");
    messages::insert_outbound_message(
        db,
        f.tenant,
        f.conversation,
        Some("wamid.early"),
        &json!({"body": "hi"}),
        None,
        None,
        None,
    )
    .await
    .unwrap();
    let applied = statuses::apply_pending_statuses(db, f.tenant, f.account, &["wamid.early"])
        .await
        .unwrap();
    assert_eq!(
        applied, 1,
        "delivered moves it; the parked sent is older news"
    );
    assert_eq!(
        messages::message_status(db, f.tenant, f.account, "wamid.early")
            .await
            .unwrap()
            .unwrap()
            .0,
        "delivered"
    );
    assert_eq!(count(db, "pending_statuses").await, 0);
    // Parked statuses whose message never appears expire.
    statuses::apply_status(
        db,
        f.tenant,
        f.account,
        "wamid.never",
        DeliveryState::Read,
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(statuses::expire_pending_statuses(db, 7).await.unwrap(), 0);
    assert_eq!(statuses::expire_pending_statuses(db, 0).await.unwrap(), 1);
}

#[tokio::test]
async fn an_instagram_read_covers_every_earlier_message_of_the_conversation() {
    let t = TestDb::new().await;
    let f = fixture(&t.db, "alpha", "111").await;
    let db = &t.db;
    for id in ["mid.1", "mid.2", "mid.3"] {
        messages::insert_outbound_message(
            db,
            f.tenant,
            f.conversation,
            Some(id),
            &json!({"body": id}),
            None,
            None,
            None,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        statuses::apply_status(
            db,
            f.tenant,
            f.account,
            "mid.2",
            DeliveryState::Read,
            None,
            true
        )
        .await
        .unwrap(),
        StatusApplied::Updated
    );
    let mut seen = Vec::new();
    for id in ["mid.1", "mid.2", "mid.3"] {
        seen.push(
            messages::message_status(db, f.tenant, f.account, id)
                .await
                .unwrap()
                .unwrap()
                .0,
        );
    }
    assert_eq!(seen, ["read", "read", "sent"]);
}

#[tokio::test]
async fn a_dropped_connection_is_remade_on_the_next_call() {
    let t = TestDb::new().await;
    let f = fixture(&t.db, "alpha", "111").await;
    let client = t.db.client().await.unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let admin = Db::new(DbConfig::new(t.url.clone()));
    admin
        .client()
        .await
        .unwrap()
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // The server's goodbye reaches the connection task asynchronously (as for an idle
    // connection a proxy or Neon's suspend closes between invocations).
    for _ in 0..100 {
        if client.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.is_closed());
    let conv = conversations::get_conversation(&t.db, f.tenant, f.conversation)
        .await
        .unwrap();
    assert!(conv.is_some(), "the next call succeeds on a new connection");
    let new_pid: i32 =
        t.db.client()
            .await
            .unwrap()
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
    assert_ne!(pid, new_pid);
}

#[tokio::test]
async fn statement_timeout_applies_and_is_classified_retryable() {
    let t = TestDb::new().await;
    let mut cfg = DbConfig::new(t.url.clone());
    cfg.statement_timeout = Duration::from_millis(200);
    let db = Db::new(cfg);
    let err = db
        .client()
        .await
        .unwrap()
        .execute("SELECT pg_sleep(2)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    assert!(shared::db::DbError::from(err).is_retryable());
}

#[tokio::test]
async fn unreachable_server_fails_within_the_connect_timeout() {
    let mut cfg = DbConfig::new("postgres://postgres@127.0.0.1:9/none");
    cfg.connect_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let err = Db::new(cfg).client().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn sslmode_require_insists_on_tls() {
    // The test server has no TLS: with sslmode=require the connection must fail rather than
    // silently go plain; with the default (prefer) it falls back.
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let sep = if url.contains('?') { '&' } else { '?' };
    let err = Db::new(DbConfig::new(format!("{url}{sep}sslmode=require")))
        .client()
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("tls") || err.to_string().contains("SSL"),
        "{err}"
    );
    assert!(Db::new(DbConfig::new(format!("{url}{sep}sslmode=prefer")))
        .client()
        .await
        .is_ok());
}

#[tokio::test]
async fn a_reply_is_recorded_atomically_with_its_charge() {
    let t = TestDb::new().await;
    let f = fixture(&t.db, "alpha", "111").await;
    let other = fixture(&t.db, "beta", "222").await;
    credits::top_up(&t.db, f.tenant, 50, "top_up", None)
        .await
        .unwrap();
    let parts = vec![
        (
            Some("wamid.r1".to_owned()),
            json!({"type": "text", "body": "part one"}),
        ),
        (
            Some("wamid.r2".to_owned()),
            json!({"type": "text", "body": "part two"}),
        ),
    ];
    let charge = messages::record_reply(
        &t.db,
        f.tenant,
        f.conversation,
        &parts,
        Some("resp_9"),
        100,
        20,
        80,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (charge.requested, charge.charged, charge.balance_after),
        (80, 50, 0)
    );
    let conv = conversations::get_conversation(&t.db, f.tenant, f.conversation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.previous_response_id.as_deref(), Some("resp_9"));
    let history = messages::recent_messages(&t.db, f.tenant, f.conversation, 10)
        .await
        .unwrap();
    let bodies: Vec<_> = history
        .iter()
        .map(|(d, c)| format!("{d}:{}", c["body"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(bodies, ["in:hola", "out:part one", "out:part two"]);
    assert_eq!(
        credits::credit_state(&t.db, f.tenant).await.unwrap(),
        Some((0, 0))
    );
    assert_eq!(credits::balance(&t.db, f.tenant).await.unwrap(), Some(0));
    assert_eq!(
        credits::balance(&t.db, other.tenant).await.unwrap(),
        Some(0)
    );
    // Another tenant's conversation: nothing written, no charge.
    assert_eq!(
        messages::record_reply(
            &t.db,
            other.tenant,
            f.conversation,
            &parts,
            Some("resp_x"),
            1,
            1,
            1
        )
        .await
        .unwrap(),
        None
    );
    assert_eq!(
        messages::recent_messages(&t.db, f.tenant, f.conversation, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    let agent = agents::agent(&t.db, f.tenant, f.agent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(agent.model, "gpt-4.1-mini");
    assert_eq!(
        agents::agent(&t.db, other.tenant, f.agent).await.unwrap(),
        None
    );
}
