//! Lambda wiring only: configuration, secrets, SDK clients, and the HTTP handler of
//! `webchat::App`.

use std::sync::Arc;
use std::time::Duration;

use lambda_http::{run, service_fn, Error, Request};
use secrecy::ExposeSecret;
use shared::db::{Db, DbConfig};
use shared::secrets::SecretCache;
use shared::webchat::TokenKey;
use webchat::{App, Config};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config =
        Config::from_env().inspect_err(|e| tracing::error!(error = %e, "webchat cannot start"))?;
    let sdk = shared::aws::sdk_config()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "webchat cannot start"))?;
    let secrets = SecretCache::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        Duration::from_secs(300),
    );
    let (database_url, signing_key) = config
        .resolve(&secrets)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "webchat cannot read its secrets"))?;
    let db = Db::new(DbConfig::new(database_url.expose_secret().to_owned()));
    let key = TokenKey::new(signing_key.expose_secret().as_bytes());
    let metrics =
        shared::metrics::Metrics::new(config.settings.metrics_namespace.clone(), "webchat");
    let app = Arc::new(App::new(config.settings, db, key, &sdk, metrics));
    run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(app.handle(req).await) }
    }))
    .await
}
