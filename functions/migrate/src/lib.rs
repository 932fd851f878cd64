//! Keeps the schema current on every deploy. template.yaml has a custom resource whose
//! `Version` is the migrate function's published version: the migrations are compiled into the
//! binary, so a deploy with new migrations publishes a new version, CloudFormation sends an
//! `Update`, and this applies them (under the runner's advisory lock, each migration in its own
//! transaction). `Delete` never touches the schema.
//!
//! Until the database secret holds a URL (the first deploy creates it empty) the migration is
//! skipped with SUCCESS and a log line, so the stack still deploys; invoke the function directly
//! (`{"action": "migrate"}`) once the URL is in, or deploy again.
//!
//! `{"action": "issue_platform_key", "name": "…"}` migrates, then issues a platform key for the
//! admin API and returns it: how the operator gets the first key (only its hash is stored).
//!
//! A failed migration answers FAILED: CloudFormation rolls the stack back to the previous
//! template, and the schema is as before the failing migration.

// No panics on data: request, queue or database values are matched, never unwrapped; the few
// start-up and plain-data cases carry an `allow` with their reason.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

use std::future::Future;

use aws_lambda_events::event::cloudformation::{
    CloudFormationCustomResourceRequest, CloudFormationCustomResourceResponse,
    CloudFormationCustomResourceResponseStatus,
};
use serde_json::{json, Value};
use shared::secrets::SecretsError;

/// The function's state: where the database URL is read from on every run (the operator may
/// just have put it in), and the client that answers CloudFormation.
pub struct Migrator {
    database: shared::secrets::DatabaseSource,
    secrets: shared::secrets::SecretCache,
    http: reqwest::Client,
}

impl Migrator {
    /// The function as its environment describes it (cold start).
    pub async fn from_env(
        start: shared::bootstrap::Start,
    ) -> Result<Self, shared::bootstrap::StartError> {
        let mut env = shared::config::EnvReader::from_process_env();
        let database = shared::secrets::DatabaseSource::from_env(&mut env);
        env.finish(())?;
        Ok(Self {
            database,
            // Read the secret on every run: the operator may just have put the URL in.
            secrets: start.secrets(std::time::Duration::ZERO),
            http: shared::netguard::http_client()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
        })
    }

    /// One invocation: `issue_platform_key`, or the migrations (see the module docs).
    pub async fn invoke(&self, event: Value) -> Result<Value, String> {
        if event["action"] == "issue_platform_key" {
            let db = self
                .database
                .connect(&self.secrets)
                .await
                .map_err(|e| e.to_string())?;
            return issue_platform_key(&db, &event).await;
        }
        handle(&self.http, event, || async {
            let db = match self.database.connect(&self.secrets).await {
                Ok(db) => db,
                Err(e) => return skipped_or_failed(e),
            };
            db.migrate()
                .await
                .map(Ran::Applied)
                .map_err(|e| e.to_string())
        })
        .await
    }
}

/// Issues a platform (operator) key for the admin API after applying the migrations. The key
/// is in the answer only; the log line names its prefix.
pub async fn issue_platform_key(db: &shared::db::Db, event: &Value) -> Result<Value, String> {
    let name = event["name"]
        .as_str()
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.chars().count() <= 100)
        .ok_or("give the key a \"name\" of 1 to 100 characters")?;
    db.migrate().await.map_err(|e| e.to_string())?;
    let key = shared::db::apikeys::issue(db, None, shared::db::apikeys::Role::Platform, name)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(prefix = %key.prefix, "platform key issued");
    Ok(json!({"id": key.id, "prefix": key.prefix, "key": key.key,
              "note": "shown once: store it in your password manager"}))
}

/// Physical id of the one migrations resource.
pub const PHYSICAL_ID: &str = "schema-migrations";

/// What running the migrations came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    Applied(usize),
    /// The database URL is not configured yet.
    Skipped(String),
}

/// Handles an invocation: a CloudFormation custom resource request (answered through its
/// pre-signed `ResponseURL`), or a direct `{"action": "migrate"}`.
pub async fn handle<F, Fut>(
    http: &reqwest::Client,
    event: Value,
    migrate: F,
) -> Result<Value, String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Ran, String>>,
{
    if event.get("RequestType").is_none() {
        if event["action"] != "migrate" {
            return Err("expected a CloudFormation request, {\"action\": \"migrate\"} or {\"action\": \"issue_platform_key\", \"name\": …}".into());
        }
        return match migrate().await? {
            Ran::Applied(n) => Ok(json!({"applied": n})),
            Ran::Skipped(why) => Err(format!("not migrated: {why}")),
        };
    }
    let request: CloudFormationCustomResourceRequest =
        serde_json::from_value(event).map_err(|e| format!("not a custom resource request: {e}"))?;
    let (url, stack_id, request_id, logical_id, run) = match &request {
        CloudFormationCustomResourceRequest::Create(r) => (
            &r.response_url,
            &r.stack_id,
            &r.request_id,
            &r.logical_resource_id,
            true,
        ),
        CloudFormationCustomResourceRequest::Update(r) => (
            &r.response_url,
            &r.stack_id,
            &r.request_id,
            &r.logical_resource_id,
            true,
        ),
        CloudFormationCustomResourceRequest::Delete(r) => (
            &r.response_url,
            &r.stack_id,
            &r.request_id,
            &r.logical_resource_id,
            false,
        ),
        _ => return Err("unknown custom resource request type".into()),
    };
    let (status, reason, data) = if !run {
        tracing::info!("stack resource deleted; the schema is left as it is");
        (
            CloudFormationCustomResourceResponseStatus::Success,
            None,
            json!({}),
        )
    } else {
        match migrate().await {
            Ok(Ran::Applied(n)) => {
                tracing::info!(applied = n, "migrations up to date");
                (
                    CloudFormationCustomResourceResponseStatus::Success,
                    None,
                    json!({"Applied": n.to_string()}),
                )
            }
            Ok(Ran::Skipped(why)) => {
                tracing::warn!(reason = %why, "migrations skipped; invoke the function once the database URL is set");
                (
                    CloudFormationCustomResourceResponseStatus::Success,
                    Some(format!("skipped: {why}")),
                    json!({"Applied": "0"}),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "migrations failed; the schema is unchanged");
                (
                    CloudFormationCustomResourceResponseStatus::Failed,
                    Some(format!("migration failed: {e}")),
                    json!({}),
                )
            }
        }
    };
    let mut response = CloudFormationCustomResourceResponse::default();
    response.status = status;
    response.reason = reason;
    response.physical_resource_id = PHYSICAL_ID.to_owned();
    response.stack_id = stack_id.clone();
    response.request_id = request_id.clone();
    response.logical_resource_id = logical_id.clone();
    response.no_echo = false;
    response.data = serde_json::from_value(data).unwrap_or_default();
    let body = serde_json::to_vec(&response).map_err(|e| e.to_string())?;
    // The pre-signed S3 URL is signed without a content type: send an empty one.
    let sent = http
        .put(url.as_str())
        .header("content-type", "")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("could not answer CloudFormation: {e}"))?;
    if !sent.status().is_success() {
        return Err(format!(
            "CloudFormation's response URL answered {}",
            sent.status()
        ));
    }
    Ok(json!({"status": format!("{:?}", response.status)}))
}

/// Turns "the URL is not there yet" into a skip and anything else into a failure.
pub fn skipped_or_failed(e: SecretsError) -> Result<Ran, String> {
    match e {
        SecretsError::NotSet(_) => Ok(Ran::Skipped(
            "the database secret has no url yet".to_owned(),
        )),
        other => Err(other.to_string()),
    }
}
