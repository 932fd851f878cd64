//! Lambda wiring only: `migrate::Migrator` as the function's handler.

use std::sync::Arc;

use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let migrator =
        Arc::new(shared::bootstrap::start("migrate", migrate::Migrator::from_env).await?);
    run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let migrator = migrator.clone();
        async move { migrator.invoke(event.payload).await.map_err(Error::from) }
    }))
    .await
}
