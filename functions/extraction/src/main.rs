//! Lambda wiring only: configuration, secrets, clients, and `extraction::Extractor`.

use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use extraction::{Config, Deps, Extractor};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::db::{Db, DbConfig};
use shared::idempotency::IdempotencyStore;
use shared::metrics::Metrics;
use shared::openai::{ClientSettings, ResponsesClient};
use shared::queue::{QueuePublisher, RetryPolicy};
use shared::secrets::SecretCache;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config = Config::from_env()
        .inspect_err(|e| tracing::error!(error = %e, "extraction cannot start"))?;
    let sdk = shared::aws::sdk_config()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "extraction cannot start"))?;
    let secrets = SecretCache::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        config.secrets_ttl,
    );
    let resolved = config
        .resolve(&secrets)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "extraction cannot read its secrets"))?;
    let mut model = ClientSettings::new(config.openai_base_url.clone(), resolved.openai_api_key);
    model.allowed_base_urls = config.model_base_urls.clone();
    model.timeout = config.model_timeout;
    let extractor = std::sync::Arc::new(Extractor::new(Deps {
        db: Db::new(DbConfig::new(secrecy::ExposeSecret::expose_secret(
            &resolved.database_url,
        ))),
        idempotency: IdempotencyStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            config.idempotency_table.clone(),
        ),
        model: ResponsesClient::new(model),
        model_override: config.model.clone(),
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&sdk), RetryPolicy::default()),
        dead_letter_queue_url: config.dead_letter_queue_url.clone(),
        webhooks: extraction::webhook::WebhookSender::new(Duration::from_secs(10)),
        metrics: Metrics::new(config.metrics_namespace.clone(), "extraction"),
    }));
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let extractor = extractor.clone();
        async move {
            // Leave a margin to answer before the function times out.
            let deadline =
                shared::invocation_deadline(event.context.deadline(), Duration::from_secs(2));
            Ok::<SqsBatchResponse, Error>(
                extractor
                    .handle_batch(event.payload.records, deadline)
                    .await,
            )
        }
    }))
    .await
}
