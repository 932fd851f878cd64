//! Lambda wiring only: configuration, secrets, SDK clients, and the HTTP handler of
//! `admin::App`.

use std::sync::Arc;

use admin::{App, Config};
use lambda_http::{run, service_fn, Error, Request};
use secrecy::ExposeSecret;
use shared::db::{Db, DbConfig};
use shared::graph::GraphTokens;
use shared::secrets::SecretCache;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config =
        Config::from_env().inspect_err(|e| tracing::error!(error = %e, "admin cannot start"))?;
    let sdk = shared::aws::sdk_config()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "admin cannot start"))?;
    let secrets = SecretCache::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        config.settings.secrets_ttl,
    );
    let (database_url, default_token) = config
        .resolve(&secrets)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "admin cannot read its secrets"))?;
    let db = Db::new(DbConfig::new(database_url.expose_secret().to_owned()));
    let tokens = GraphTokens {
        secrets,
        default: default_token,
        prefix: config.settings.token_secret_prefix.clone(),
    };
    let metrics = shared::metrics::Metrics::new(config.settings.metrics_namespace.clone(), "admin");
    let app = Arc::new(App::new(config.settings, db, &sdk, tokens, metrics));
    run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(app.handle(req).await) }
    }))
    .await
}
