//! Lambda wiring only: `status::StatusProcessor` as the status queue's handler.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let status =
        Arc::new(shared::bootstrap::start("status", status::StatusProcessor::from_env).await?);
    run(service_fn(move |event: LambdaEvent<_>| {
        let status = status.clone();
        async move { Ok::<_, Error>(status.invoke(event).await) }
    }))
    .await
}
