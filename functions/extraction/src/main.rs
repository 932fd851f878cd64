//! Lambda wiring only: `extraction::Extractor` as the extraction queue's handler.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let extractor =
        Arc::new(shared::bootstrap::start("extraction", extraction::Extractor::from_env).await?);
    run(service_fn(move |event: LambdaEvent<_>| {
        let extractor = extractor.clone();
        async move { Ok::<_, Error>(extractor.invoke(event).await) }
    }))
    .await
}
