//! Lambda wiring only: `processor::Processor` as the inbound queue's handler.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let processor =
        Arc::new(shared::bootstrap::start("processor", processor::Processor::from_env).await?);
    run(service_fn(move |event: LambdaEvent<_>| {
        let processor = processor.clone();
        async move { Ok::<_, Error>(processor.invoke(event).await) }
    }))
    .await
}
