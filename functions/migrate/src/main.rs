//! Lambda wiring only: the database secret, and `migrate::handle`.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use migrate::{handle, skipped_or_failed, Ran};
use serde_json::Value;
use shared::config::EnvReader;
use shared::db::{Db, DbConfig};
use shared::secrets::{DatabaseSource, SecretCache};

struct State {
    database: DatabaseSource,
    secrets: SecretCache,
    http: reqwest::Client,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let mut env = EnvReader::from_process_env();
    let database = DatabaseSource::from_env(&mut env);
    env.finish(())
        .inspect_err(|e| tracing::error!(error = %e, "migrate cannot start"))?;
    let sdk = shared::aws::sdk_config()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "migrate cannot start"))?;
    let state = Arc::new(State {
        database,
        // Read the secret on every run: the operator may just have put the URL in.
        secrets: SecretCache::new(
            aws_sdk_secretsmanager::Client::new(&sdk),
            std::time::Duration::ZERO,
        ),
        http: shared::netguard::http_client()
            .timeout(std::time::Duration::from_secs(10))
            .build()?,
    });
    run(service_fn(move |event: LambdaEvent<Value>| {
        let state = state.clone();
        async move {
            let s = &state;
            if event.payload["action"] == "issue_platform_key" {
                let url = s
                    .database
                    .resolve(&s.secrets)
                    .await
                    .map_err(|e| Error::from(e.to_string()))?;
                let db = Db::new(DbConfig::new(secrecy::ExposeSecret::expose_secret(&url)));
                return migrate::issue_platform_key(&db, &event.payload)
                    .await
                    .map_err(Error::from);
            }
            let result = handle(&s.http, event.payload, || async move {
                let url = match s.database.resolve(&s.secrets).await {
                    Ok(u) => u,
                    Err(e) => return skipped_or_failed(e),
                };
                Db::new(DbConfig::new(secrecy::ExposeSecret::expose_secret(&url)))
                    .migrate()
                    .await
                    .map(Ran::Applied)
                    .map_err(|e| e.to_string())
            })
            .await;
            result.map_err(Error::from)
        }
    }))
    .await
}
