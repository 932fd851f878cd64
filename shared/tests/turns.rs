//! The turn engine's store (`shared::db::turns`) against a real Postgres: claims and leases,
//! the credit gate under concurrency, fenced saves, the one-statement record, echoes.

use std::time::{Duration, SystemTime};

use serde_json::json;
use shared::db::testing::TestDb;
use shared::db::turns::{self, Claim, ClaimTerms, OpenTurn, OutRow, Recorded, Saved};
use shared::db::{
    agents, channels, conversations, credits, messages, tenants, Db, DbConfig, TenantId,
};
use shared::envelope::Channel;
use shared::turn::{apply, Event, Phase, Policy, Turn, Usage, Via};
use uuid::Uuid;

struct Fx {
    tenant: TenantId,
    account: Uuid,
}

async fn tenant(db: &Db, credits: i64) -> Fx {
    let tenant = tenants::create_tenant(db, "t").await.unwrap();
    let agent = agents::create_agent(db, tenant, "a", "gpt-4.1-mini", "Be brief.")
        .await
        .unwrap();
    let account = channels::create_channel_account(
        db,
        tenant,
        Channel::Whatsapp,
        &format!("10{}", Uuid::new_v4().as_u128() % 1_000_000_000),
        Some(agent),
        None,
    )
    .await
    .unwrap();
    if credits > 0 {
        credits::top_up(db, tenant, credits, "test", None)
            .await
            .unwrap();
    }
    Fx { tenant, account }
}

async fn conversation(db: &Db, fx: &Fx, contact: &str) -> Uuid {
    let c = conversations::upsert_contact(db, fx.tenant, fx.account, contact, None, None, None)
        .await
        .unwrap()
        .unwrap();
    conversations::conversation_for(db, fx.tenant, fx.account, c)
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn inbound(db: &Db, fx: &Fx, conv: Uuid, wamid: &str) -> i64 {
    messages::insert_inbound_message(
        db,
        fx.tenant,
        conv,
        wamid,
        &json!({"type": "text", "body": "hola"}),
        None,
        SystemTime::now(),
    )
    .await
    .unwrap()
    .unwrap()
    .id
}

fn terms(turn: &Turn, hold: i64, lease: Duration) -> ClaimTerms<'_> {
    ClaimTerms {
        lease,
        new_turn: turn,
        hold,
        min_balance: 0,
        hold_ttl: Duration::from_secs(900),
    }
}

fn open(claim: Claim) -> OpenTurn {
    match claim {
        Claim::Open(o) => o,
        other => panic!("expected an open turn, got {other:?}"),
    }
}

async fn account(db: &Db, tenant: TenantId) -> (i64, i64) {
    let r = db
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT balance, held FROM credit_accounts WHERE user_id = $1",
            &[&tenant.uuid()],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

fn split(t: &str) -> Vec<String> {
    vec![t.to_owned()]
}

fn answered(turn: Turn, p: &Policy) -> Turn {
    apply(
        turn,
        Event::Answered {
            response_id: "resp_1".into(),
            parts: vec!["¡Hola!".into()],
            usage: Usage {
                input_tokens: 1000,
                output_tokens: 100,
                cached_tokens: 0,
            },
        },
        p,
        split,
    )
    .unwrap()
}

#[tokio::test]
async fn a_claim_covers_the_unanswered_messages_in_order_and_holds_its_lease() {
    let t = TestDb::new().await;
    let fx = tenant(&t.db, 100).await;
    let conv = conversation(&t.db, &fx, "c1").await;
    let a = inbound(&t.db, &fx, conv, "wamid.a").await;
    let b = inbound(&t.db, &fx, conv, "wamid.b").await;
    let p = Policy::default();
    let fresh = Turn::new(Via::Whatsapp, &p);
    let lease = Duration::from_secs(60);
    let first = open(
        turns::claim(&t.db, fx.tenant, conv, &terms(&fresh, 10, lease))
            .await
            .unwrap(),
    );
    assert!(first.created);
    assert_eq!(first.covered, vec![a, b]);
    assert_eq!(first.hold, 10);
    assert_eq!(account(&t.db, fx.tenant).await, (100, 10));
    // A second delivery while the lease is live: busy, nothing changes.
    match turns::claim(&t.db, fx.tenant, conv, &terms(&fresh, 10, lease))
        .await
        .unwrap()
    {
        Claim::Busy { lease_left } => assert!(lease_left <= lease && lease_left.as_secs() > 50),
        other => panic!("{other:?}"),
    }
    assert_eq!(account(&t.db, fx.tenant).await, (100, 10), "held once");
    // A message stored meanwhile joins the turn on resume while it still asks the model.
    turns::release(&t.db, fx.tenant, &first).await.unwrap();
    let c = inbound(&t.db, &fx, conv, "wamid.c").await;
    let resumed = open(
        turns::claim(&t.db, fx.tenant, conv, &terms(&fresh, 10, lease))
            .await
            .unwrap(),
    );
    assert_eq!(resumed.id, first.id);
    assert!(!resumed.created);
    assert_eq!(resumed.covered, vec![c]);
    assert_eq!(account(&t.db, fx.tenant).await, (100, 10));
    // The first holder lost its lease: its saves write nothing.
    let state = answered(first.turn.clone(), &p);
    assert_eq!(
        turns::save(&t.db, fx.tenant, &first, &state, false)
            .await
            .unwrap(),
        Saved::LeaseLost
    );
    // Once sending, later messages wait for the next turn.
    assert_eq!(
        turns::save(&t.db, fx.tenant, &resumed, &state, false)
            .await
            .unwrap(),
        Saved::Saved
    );
    turns::release(&t.db, fx.tenant, &resumed).await.unwrap();
    inbound(&t.db, &fx, conv, "wamid.d").await;
    let again = open(
        turns::claim(&t.db, fx.tenant, conv, &terms(&fresh, 10, lease))
            .await
            .unwrap(),
    );
    assert_eq!(again.id, first.id);
    assert!(again.covered.is_empty());
    assert_eq!(
        again.turn.phase,
        Phase::Sending,
        "the stored state comes back"
    );
    assert_eq!(again.turn, state);
}

#[tokio::test]
async fn recording_charges_once_releases_the_hold_and_marks_the_outcome() {
    let t = TestDb::new().await;
    let fx = tenant(&t.db, 100).await;
    let conv = conversation(&t.db, &fx, "c1").await;
    let a = inbound(&t.db, &fx, conv, "wamid.a").await;
    let p = Policy::default();
    let fresh = Turn::new(Via::Whatsapp, &p);
    let o = open(
        turns::claim(
            &t.db,
            fx.tenant,
            conv,
            &terms(&fresh, 30, Duration::from_secs(60)),
        )
        .await
        .unwrap(),
    );
    let mut state = answered(o.turn.clone(), &p);
    state = apply(state, Event::SendStarted { part: 0, now_ms: 1 }, &p, split).unwrap();
    state = apply(
        state,
        Event::SendAccepted {
            part: 0,
            provider_id: "wamid.OUT".into(),
        },
        &p,
        split,
    )
    .unwrap();
    let rows = [OutRow {
        provider_message_id: Some("wamid.OUT".into()),
        content: json!({"type": "text", "body": "¡Hola!"}),
        status: "sent",
    }];
    let rec = turns::record(&t.db, fx.tenant, &o, &state, &rows, 7, "replied")
        .await
        .unwrap();
    assert_eq!(
        rec,
        Recorded::Recorded {
            charged: 7,
            balance_after: 93,
            uncovered: 0
        }
    );
    assert_eq!(account(&t.db, fx.tenant).await, (93, 0));
    // Recorded once: the same call again changes nothing.
    let again = turns::record(&t.db, fx.tenant, &o, &state, &rows, 7, "replied")
        .await
        .unwrap();
    assert_eq!(again, Recorded::LeaseLost);
    assert_eq!(account(&t.db, fx.tenant).await, (93, 0));
    let c = t.db.client().await.unwrap();
    let out: i64 = c
        .query_one(
            "SELECT count(*) FROM messages WHERE conversation_id = $1 AND direction = 'out'",
            &[&conv],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(out, 1);
    let (outcome, turn_id): (Option<String>, Option<Uuid>) = {
        let r = c
            .query_one("SELECT outcome, turn_id FROM messages WHERE id = $1", &[&a])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(outcome.as_deref(), Some("replied"));
    assert_eq!(turn_id, Some(o.id));
    let ledger: i64 = c
        .query_one(
            "SELECT count(*) FROM credit_ledger WHERE user_id = $1 AND reason = 'reply'",
            &[&fx.tenant.uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger, 1);
    let prev: Option<String> = c
        .query_one(
            "SELECT previous_response_id FROM conversations WHERE id = $1",
            &[&conv],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prev.as_deref(), Some("resp_1"));
    // Finished: nothing left to answer until a new message arrives.
    let recorded = apply(state, Event::Recorded, &p, split).unwrap();
    let done = apply(recorded, Event::FollowUpsDone, &p, split).unwrap();
    assert_eq!(
        turns::finish(&t.db, fx.tenant, &o, &done).await.unwrap(),
        Saved::Saved
    );
    assert!(matches!(
        turns::claim(
            &t.db,
            fx.tenant,
            conv,
            &terms(&fresh, 30, Duration::from_secs(60))
        )
        .await
        .unwrap(),
        Claim::NothingToAnswer
    ));
    let b = inbound(&t.db, &fx, conv, "wamid.b").await;
    let next = open(
        turns::claim(
            &t.db,
            fx.tenant,
            conv,
            &terms(&fresh, 30, Duration::from_secs(60)),
        )
        .await
        .unwrap(),
    );
    assert_ne!(next.id, o.id);
    assert_eq!(next.covered, vec![b]);
}

#[tokio::test]
async fn a_charge_above_the_balance_takes_the_balance_and_says_what_it_could_not() {
    let t = TestDb::new().await;
    let fx = tenant(&t.db, 5).await;
    let conv = conversation(&t.db, &fx, "c1").await;
    inbound(&t.db, &fx, conv, "wamid.a").await;
    let p = Policy::default();
    let fresh = Turn::new(Via::Whatsapp, &p);
    let o = open(
        turns::claim(
            &t.db,
            fx.tenant,
            conv,
            &terms(&fresh, 5, Duration::from_secs(60)),
        )
        .await
        .unwrap(),
    );
    let rec = turns::record(&t.db, fx.tenant, &o, &o.turn, &[], 9, "no_answer")
        .await
        .unwrap();
    assert_eq!(
        rec,
        Recorded::Recorded {
            charged: 5,
            balance_after: 0,
            uncovered: 4
        }
    );
    assert_eq!(account(&t.db, fx.tenant).await, (0, 0));
}

#[tokio::test]
async fn concurrent_turns_near_zero_cannot_all_pass_the_credit_gate() {
    let t = TestDb::new().await;
    let fx = tenant(&t.db, 50).await;
    let mut convs = Vec::new();
    for i in 0..12 {
        let conv = conversation(&t.db, &fx, &format!("c{i}")).await;
        inbound(&t.db, &fx, conv, &format!("wamid.{i}")).await;
        convs.push(conv);
    }
    let p = Policy::default();
    // Each claim on its own connection, all at once.
    let tasks: Vec<_> = convs
        .into_iter()
        .map(|conv| {
            let url = t.url.clone();
            let tenant = fx.tenant;
            let fresh = Turn::new(Via::Whatsapp, &p);
            tokio::spawn(async move {
                let db = Db::new(DbConfig::new(url));
                turns::claim(
                    &db,
                    tenant,
                    conv,
                    &terms(&fresh, 12, Duration::from_secs(60)),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Claim::Open(_) => admitted += 1,
            Claim::NoCredits { .. } => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 4, "50 credits hold four turns of 12");
    assert_eq!(refused, 8);
    assert_eq!(account(&t.db, fx.tenant).await, (50, 48));
}

#[tokio::test]
async fn an_expired_hold_is_given_back_when_credits_run_short() {
    let t = TestDb::new().await;
    let fx = tenant(&t.db, 10).await;
    let (c1, c2) = (
        conversation(&t.db, &fx, "c1").await,
        conversation(&t.db, &fx, "c2").await,
    );
    inbound(&t.db, &fx, c1, "wamid.1").await;
    inbound(&t.db, &fx, c2, "wamid.2").await;
    let p = Policy::default();
    let fresh = Turn::new(Via::Whatsapp, &p);
    let short = ClaimTerms {
        hold_ttl: Duration::ZERO,
        ..terms(&fresh, 10, Duration::from_secs(60))
    };
    open(turns::claim(&t.db, fx.tenant, c1, &short).await.unwrap());
    assert_eq!(account(&t.db, fx.tenant).await, (10, 10));
    // The first turn's invocation died; its hold expired; the second turn gets the credits.
    let second = open(
        turns::claim(
            &t.db,
            fx.tenant,
            c2,
            &terms(&fresh, 10, Duration::from_secs(60)),
        )
        .await
        .unwrap(),
    );
    assert_eq!(second.hold, 10);
    assert_eq!(account(&t.db, fx.tenant).await, (10, 10));
}

#[tokio::test]
async fn no_credits_opens_nothing_and_the_minimum_balance_counts() {
    let t = TestDb::new().await;
    let fx = tenant(&t.db, 20).await;
    let conv = conversation(&t.db, &fx, "c1").await;
    let a = inbound(&t.db, &fx, conv, "wamid.a").await;
    let p = Policy::default();
    let fresh = Turn::new(Via::Whatsapp, &p);
    let strict = ClaimTerms {
        min_balance: 15,
        ..terms(&fresh, 10, Duration::from_secs(60))
    };
    match turns::claim(&t.db, fx.tenant, conv, &strict).await.unwrap() {
        Claim::NoCredits { balance, held } => assert_eq!((balance, held), (20, 0)),
        other => panic!("{other:?}"),
    }
    let turn_id: Option<Uuid> =
        t.db.client()
            .await
            .unwrap()
            .query_one("SELECT turn_id FROM messages WHERE id = $1", &[&a])
            .await
            .unwrap()
            .get(0);
    assert_eq!(turn_id, None, "the message is not covered by a turn");
    let other = tenant(&t.db, 0).await;
    assert!(matches!(
        turns::claim(&t.db, other.tenant, conv, &strict)
            .await
            .unwrap(),
        Claim::NoConversation
    ));
}

/// A tenant with 100 credits and one conversation with one inbound message (`wamid.a`).
async fn one_message(db: &Db) -> (Fx, Uuid) {
    let fx = tenant(db, 100).await;
    let conv = conversation(db, &fx, "c1").await;
    inbound(db, &fx, conv, "wamid.a").await;
    (fx, conv)
}

/// The conversation's turn, claimed as the processor claims it (a fresh WhatsApp turn, 10
/// credits held, a 60 s lease).
async fn claim_turn(db: &Db, fx: &Fx, conv: Uuid) -> OpenTurn {
    let fresh = Turn::new(Via::Whatsapp, &Policy::default());
    let claim_terms = terms(&fresh, 10, Duration::from_secs(60));
    open(
        turns::claim(db, fx.tenant, conv, &claim_terms)
            .await
            .unwrap(),
    )
}

/// Switches the conversation through `modes`, in order.
async fn switch_modes(db: &Db, fx: &Fx, conv: Uuid, modes: &[&str]) {
    for mode in modes {
        conversations::set_conversation_mode(db, fx.tenant, conv, mode)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_send_does_not_start_once_a_human_took_over() {
    let t = TestDb::new().await;
    let (fx, conv) = one_message(&t.db).await;
    let p = Policy::default();
    let o = claim_turn(&t.db, &fx, conv).await;
    let state = answered(o.turn.clone(), &p);
    assert!(
        conversations::set_conversation_mode(&t.db, fx.tenant, conv, "human")
            .await
            .unwrap()
    );
    assert_eq!(
        turns::save(&t.db, fx.tenant, &o, &state, true)
            .await
            .unwrap(),
        Saved::HumanMode
    );
    let (stored, _) = turns::get(&t.db, fx.tenant, o.id).await.unwrap().unwrap();
    assert_eq!(stored.phase, Phase::Asking, "nothing written");
    // Without the check (the record of what already happened) the save goes through.
    assert_eq!(
        turns::save(&t.db, fx.tenant, &o, &state, false)
            .await
            .unwrap(),
        Saved::Saved
    );
}

#[tokio::test]
async fn a_send_does_not_start_after_a_handoff_and_back_either() {
    let t = TestDb::new().await;
    let (fx, conv) = one_message(&t.db).await;
    let o = claim_turn(&t.db, &fx, conv).await;
    let state = answered(o.turn.clone(), &Policy::default());
    // A switch to the mode it already has is no change.
    switch_modes(&t.db, &fx, conv, &["ai"]).await;
    assert_eq!(
        turns::save(&t.db, fx.tenant, &o, &state, true)
            .await
            .unwrap(),
        Saved::Saved
    );
    switch_modes(&t.db, &fx, conv, &["human", "ai"]).await;
    assert_eq!(
        turns::save(&t.db, fx.tenant, &o, &state, true)
            .await
            .unwrap(),
        Saved::HumanMode,
        "the turn opened before the handoff"
    );
}

#[tokio::test]
async fn a_turn_taken_over_before_its_answer_asks_afresh_after_a_hand_back() {
    // Released while still asking (a model error the processor retries), then a handoff and
    // a hand-back: the turn that resumes asks the model now, so its answer may go out.
    let t = TestDb::new().await;
    let (fx, conv) = one_message(&t.db).await;
    let first = claim_turn(&t.db, &fx, conv).await;
    turns::release(&t.db, fx.tenant, &first).await.unwrap();
    switch_modes(&t.db, &fx, conv, &["human", "ai"]).await;
    inbound(&t.db, &fx, conv, "wamid.b").await;
    let again = claim_turn(&t.db, &fx, conv).await;
    assert_eq!(again.id, first.id, "the same turn, resumed");
    assert_eq!(
        again.covered.len(),
        1,
        "it takes in the message after the hand-back"
    );
    let state = answered(again.turn.clone(), &Policy::default());
    assert_eq!(
        turns::save(&t.db, fx.tenant, &again, &state, true)
            .await
            .unwrap(),
        Saved::Saved
    );
}

#[tokio::test]
async fn an_echoed_tag_names_the_message_that_reached_meta() {
    let t = TestDb::new().await;
    let fx = tenant(&t.db, 0).await;
    let c = t.db.client().await.unwrap();
    c.execute(
        "INSERT INTO pending_statuses (user_id, channel_account_id, provider_message_id, status, callback_tag)
         VALUES ($1, $2, 'wamid.ECHO', 'sent', 't:abc:0:1')",
        &[&fx.tenant.uuid(), &fx.account],
    )
    .await
    .unwrap();
    assert_eq!(
        turns::echoed(&t.db, fx.tenant, fx.account, "t:abc:0:1")
            .await
            .unwrap()
            .as_deref(),
        Some("wamid.ECHO")
    );
    assert_eq!(
        turns::echoed(&t.db, fx.tenant, fx.account, "t:abc:0:2")
            .await
            .unwrap(),
        None
    );
    let other = tenant(&t.db, 0).await;
    assert_eq!(
        turns::echoed(&t.db, other.tenant, fx.account, "t:abc:0:1")
            .await
            .unwrap(),
        None,
        "another tenant sees nothing"
    );
}

/// The two real charge paths, a turn's record and an extraction's, run at once on their own
/// connections against one balance: every credit taken is in the ledger, the balance never
/// goes below zero, and every hold is released.
#[tokio::test]
async fn turn_records_and_extractions_charging_at_once_keep_the_books_straight() {
    let t = TestDb::new().await;
    let fx = tenant(&t.db, 100).await;
    let p = Policy::default();
    let fresh = Turn::new(Via::Whatsapp, &p);
    let mut turns_open = Vec::new();
    let mut windows = Vec::new();
    for i in 0..6 {
        let conv = conversation(&t.db, &fx, &format!("t{i}")).await;
        inbound(&t.db, &fx, conv, &format!("wamid.t{i}")).await;
        let o = open(
            turns::claim(
                &t.db,
                fx.tenant,
                conv,
                &terms(&fresh, 10, Duration::from_secs(60)),
            )
            .await
            .unwrap(),
        );
        turns_open.push(o);
        let econv = conversation(&t.db, &fx, &format!("e{i}")).await;
        let id = inbound(&t.db, &fx, econv, &format!("wamid.e{i}")).await;
        windows.push((econv, id));
    }
    assert_eq!(account(&t.db, fx.tenant).await, (100, 60));
    let mut tasks = Vec::new();
    for o in turns_open {
        let url = t.url.clone();
        let tenant = fx.tenant;
        tasks.push(tokio::spawn(async move {
            let db = Db::new(DbConfig::new(url));
            match turns::record(&db, tenant, &o, &o.turn, &[], 12, "no_answer")
                .await
                .unwrap()
            {
                Recorded::Recorded { charged, .. } => charged,
                Recorded::LeaseLost => panic!("lease lost"),
            }
        }));
    }
    for (conv, id) in windows {
        let url = t.url.clone();
        let tenant = fx.tenant;
        tasks.push(tokio::spawn(async move {
            let db = Db::new(DbConfig::new(url));
            let rec = shared::db::leads::ExtractionRecord {
                from_message_id: 0,
                through_message_id: id,
                status: "unchanged",
                response_id: None,
                input_tokens: 100,
                output_tokens: 10,
                cost: 8,
                fields: vec![],
                extra: Default::default(),
            };
            let out = shared::db::leads::record_extraction(&db, tenant, conv, &rec)
                .await
                .unwrap();
            assert!(out.recorded);
            0
        }));
    }
    let mut turn_charges = 0;
    for task in tasks {
        turn_charges += task.await.unwrap();
    }
    let (balance, held) = account(&t.db, fx.tenant).await;
    assert_eq!(held, 0, "every hold released");
    assert!(balance >= 0);
    let c = t.db.client().await.unwrap();
    let debits: i64 = c
        .query_one(
            "SELECT COALESCE(-sum(delta), 0)::bigint FROM credit_ledger WHERE user_id = $1 AND delta < 0",
            &[&fx.tenant.uuid()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(debits, 100 - balance, "every credit taken is in the ledger");
    assert!(turn_charges <= 72 && debits <= 100);
    // 120 credits were asked of 100: the balance is used up, and no more.
    assert_eq!(balance, 0);
}
