//! Lambda wiring only: configuration, secrets, clients, and `processor::Processor` as the SQS
//! handler.

use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use processor::{Config, Deps, GraphTokens, Processor};
use shared::db::{Db, DbConfig};
use shared::graph::GraphClient;
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
        .inspect_err(|e| tracing::error!(error = %e, "processor cannot start"))?;
    let sdk = shared::aws::sdk_config()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "processor cannot start"))?;
    let secrets = SecretCache::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        config.secrets_ttl,
    );
    let resolved = config
        .resolve(&secrets)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "processor cannot read its secrets"))?;
    let mut model = ClientSettings::new(config.openai_base_url.clone(), resolved.openai_api_key);
    model.allowed_base_urls = config.model_base_urls.clone();
    model.timeout = config.model_timeout;
    let deps = Deps {
        db: Db::new(DbConfig::new(secrecy::ExposeSecret::expose_secret(
            &resolved.database_url,
        ))),
        model: ResponsesClient::new(model),
        graph: GraphClient::new(
            config.graph_base_url.clone(),
            config.instagram_graph_base_url.clone(),
        ),
        tokens: GraphTokens {
            secrets,
            default: resolved.graph_access_token,
            prefix: config.token_secret_prefix.clone(),
        },
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&sdk), RetryPolicy::default()),
        extraction_queue_url: config.extraction_queue_url.clone(),
        dead_letter_queue_url: config.dead_letter_queue_url.clone(),
        inbound_queue_url: config.inbound_queue_url.clone(),
        max_retry_delay: config.max_retry_delay,
        metrics: Metrics::new(config.metrics_namespace.clone(), "processor"),
    };
    let processor = std::sync::Arc::new(Processor::new(deps));
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let processor = processor.clone();
        async move {
            processor::crash::set_invocation(&event.context.request_id);
            // Leave a margin to answer before the function times out.
            let deadline =
                shared::invocation_deadline(event.context.deadline(), Duration::from_secs(2));
            Ok::<SqsBatchResponse, Error>(
                processor
                    .handle_batch(event.payload.records, deadline)
                    .await,
            )
        }
    }))
    .await
}
