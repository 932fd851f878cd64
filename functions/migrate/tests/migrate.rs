//! The migrate function against a real Postgres, with CloudFormation's response URL as a stub.

use migrate::{handle, Ran, PHYSICAL_ID};
use serde_json::{json, Value};
use shared::db::testing::TestDb;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn request(kind: &str, response_url: &str) -> Value {
    let mut r = json!({
        "RequestType": kind,
        "ServiceToken": "arn:aws:lambda:us-east-1:000000000000:function:agent-migrate",
        "ResponseURL": response_url,
        "StackId": "arn:aws:cloudformation:us-east-1:000000000000:stack/agent/1",
        "RequestId": "req-1",
        "ResourceType": "Custom::SchemaMigrations",
        "LogicalResourceId": "SchemaMigrations",
        "ResourceProperties": {"ServiceToken": "x", "Version": "3"}
    });
    if kind != "Create" {
        r["PhysicalResourceId"] = json!(PHYSICAL_ID);
    }
    if kind == "Update" {
        r["OldResourceProperties"] = json!({"ServiceToken": "x", "Version": "2"});
    }
    r
}

async fn cloudformation() -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/presigned"))
        .and(header("content-type", ""))
        .respond_with(ResponseTemplate::new(200))
        .mount(&s)
        .await;
    s
}

async fn answer(s: &MockServer) -> Value {
    let reqs = s.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1, "exactly one answer to CloudFormation");
    serde_json::from_slice(&reqs[0].body).unwrap()
}

#[tokio::test]
async fn create_and_update_apply_the_migrations_and_answer_success() {
    let t = TestDb::new().await;
    let cfn = cloudformation().await;
    let url = format!("{}/presigned", cfn.uri());
    let http = reqwest::Client::new();
    // TestDb already migrated: applying again is a no-op that still succeeds.
    let out = handle(&http, request("Update", &url), || async {
        t.db.migrate()
            .await
            .map(Ran::Applied)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert_eq!(out["status"], "Success");
    let a = answer(&cfn).await;
    assert_eq!(a["Status"], "SUCCESS");
    assert_eq!(a["PhysicalResourceId"], PHYSICAL_ID);
    assert_eq!(a["RequestId"], "req-1");
    assert_eq!(a["LogicalResourceId"], "SchemaMigrations");
    assert_eq!(a["Data"]["Applied"], "0");
}

#[tokio::test]
async fn a_failing_migration_answers_failed_with_the_reason() {
    let cfn = cloudformation().await;
    let url = format!("{}/presigned", cfn.uri());
    let out = handle(&reqwest::Client::new(), request("Create", &url), || async {
        Err::<Ran, _>("migration V9 failed: syntax error".to_owned())
    })
    .await
    .unwrap();
    assert_eq!(out["status"], "Failed");
    let a = answer(&cfn).await;
    assert_eq!(a["Status"], "FAILED");
    assert!(a["Reason"].as_str().unwrap().contains("V9"));
}

#[tokio::test]
async fn an_unset_database_url_skips_and_delete_never_touches_the_schema() {
    let cfn = cloudformation().await;
    let url = format!("{}/presigned", cfn.uri());
    let http = reqwest::Client::new();
    handle(&http, request("Create", &url), || async {
        migrate::skipped_or_failed(shared::secrets::SecretsError::NotSet("url"))
    })
    .await
    .unwrap();
    let a = answer(&cfn).await;
    assert_eq!(
        a["Status"], "SUCCESS",
        "the first deploy must not roll back"
    );
    assert!(a["Reason"].as_str().unwrap().starts_with("skipped"));
    cfn.reset().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&cfn)
        .await;
    let mut called = false;
    handle(&http, request("Delete", &url), || async {
        called = true;
        Ok(Ran::Applied(0))
    })
    .await
    .unwrap();
    assert!(!called, "Delete does not run migrations");
    assert_eq!(answer(&cfn).await["Status"], "SUCCESS");
}

#[tokio::test]
async fn a_direct_invocation_migrates_and_reports() {
    let t = TestDb::new().await;
    let http = reqwest::Client::new();
    let out = handle(&http, json!({"action": "migrate"}), || async {
        t.db.migrate()
            .await
            .map(Ran::Applied)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert_eq!(out, json!({"applied": 0}));
    let err = handle(&http, json!({"action": "drop"}), || async {
        Ok(Ran::Applied(0))
    })
    .await
    .unwrap_err();
    assert!(err.contains("expected"));
}

#[tokio::test]
async fn a_platform_key_is_issued_once_and_authenticates() {
    let t = TestDb::new().await;
    let out = migrate::issue_platform_key(
        &t.db,
        &json!({"action": "issue_platform_key", "name": "operator"}),
    )
    .await
    .unwrap();
    let key = out["key"].as_str().unwrap();
    assert!(key.starts_with(out["prefix"].as_str().unwrap()));
    let who = shared::db::apikeys::authenticate(&t.db, key)
        .await
        .unwrap()
        .expect("the key works");
    assert_eq!(
        (who.role, who.tenant),
        (shared::db::apikeys::Role::Platform, None)
    );
    for bad in [
        json!({"action": "issue_platform_key"}),
        json!({"name": "  "}),
    ] {
        assert!(migrate::issue_platform_key(&t.db, &bad).await.is_err());
    }
}
