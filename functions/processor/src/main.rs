//! Lambda wiring only: configuration, clients, and `processor::Processor` as the SQS handler.

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use processor::{Deps, Processor};
use shared::config::EnvReader;
use shared::db::{Db, DbConfig};
use shared::graph::{GraphClient, GRAPH_VERSION};
use shared::idempotency::IdempotencyStore;
use shared::openai::{ClientSettings, ResponsesClient};
use shared::queue::{QueuePublisher, RetryPolicy};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let mut env = EnvReader::from_process_env();
    let database_url = env.required("DATABASE_URL");
    let table = env.required("IDEMPOTENCY_TABLE");
    let extraction = env.required_url("EXTRACTION_QUEUE_URL");
    let dlq = env.required_url("INBOUND_DLQ_URL");
    let openai_key = env.required("OPENAI_API_KEY");
    let openai_base = env
        .optional("OPENAI_BASE_URL")
        .unwrap_or_else(|| "https://api.openai.com/v1".into());
    let graph_token = env.required("GRAPH_ACCESS_TOKEN");
    let graph_base = env
        .optional("GRAPH_BASE_URL")
        .unwrap_or_else(|| format!("https://graph.facebook.com/{GRAPH_VERSION}"));
    let ig_base = env
        .optional("INSTAGRAM_GRAPH_BASE_URL")
        .unwrap_or_else(|| format!("https://graph.instagram.com/{GRAPH_VERSION}"));
    env.finish(())
        .inspect_err(|e| tracing::error!(error = %e, "processor cannot start"))?;

    let sdk = shared::aws::sdk_config().await;
    let deps = Deps {
        db: Db::new(DbConfig::new(database_url)),
        idempotency: IdempotencyStore::new(aws_sdk_dynamodb::Client::new(&sdk), table),
        model: ResponsesClient::new(ClientSettings::new(openai_base, openai_key.into())),
        graph: GraphClient::new(graph_base, ig_base),
        graph_token: graph_token.into(),
        publisher: QueuePublisher::new(aws_sdk_sqs::Client::new(&sdk), RetryPolicy::default()),
        extraction_queue_url: extraction,
        dead_letter_queue_url: dlq,
    };
    let processor = std::sync::Arc::new(Processor::new(deps));
    run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let processor = processor.clone();
        async move {
            // Leave a margin to answer before the function times out.
            let remaining = event
                .context
                .deadline()
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::from_secs(30));
            let deadline = Instant::now() + remaining.saturating_sub(Duration::from_secs(2));
            Ok::<SqsBatchResponse, Error>(
                processor
                    .handle_batch(event.payload.records, deadline)
                    .await,
            )
        }
    }))
    .await
}
