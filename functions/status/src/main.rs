//! Lambda wiring only: configuration, the database secret, and `status::StatusProcessor`.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::db::{Db, DbConfig};
use shared::metrics::Metrics;
use shared::queue::{QueuePublisher, RetryPolicy};
use shared::secrets::SecretCache;
use status::{Config, Deps, StatusProcessor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config =
        Config::from_env().inspect_err(|e| tracing::error!(error = %e, "status cannot start"))?;
    let sdk = shared::aws::sdk_config()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "status cannot start"))?;
    let secrets = SecretCache::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        config.secrets_ttl,
    );
    let url = config
        .database
        .resolve(&secrets)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "status cannot read its secrets"))?;
    let processor = std::sync::Arc::new(StatusProcessor::new(Deps {
        db: Db::new(DbConfig::new(secrecy::ExposeSecret::expose_secret(&url))),
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&sdk), RetryPolicy::default()),
        queue_url: config.queue_url.clone(),
        dead_letter_queue_url: config.dead_letter_queue_url.clone(),
        max_retry_delay: config.max_retry_delay,
        metrics: Metrics::new(config.metrics_namespace.clone(), "status"),
    }));
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let processor = processor.clone();
        async move {
            Ok::<SqsBatchResponse, Error>(processor.handle_batch(event.payload.records).await)
        }
    }))
    .await
}
