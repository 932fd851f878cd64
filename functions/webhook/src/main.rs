//! Lambda wiring only: configuration, SDK clients, and the HTTP handler of `webhook::App`.

use std::sync::Arc;

use lambda_http::{run, service_fn, Error, Request};
use webhook::{App, Config};

// Many small allocations per request (envelope strings); mimalloc is faster than glibc's here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config =
        Config::from_env().inspect_err(|e| tracing::error!(error = %e, "webhook cannot start"))?;
    let sdk = shared::aws::sdk_config()
        .await
        .inspect_err(|e| tracing::error!(error = %e, "webhook cannot start"))?;
    let app = Arc::new(App::new(config, &sdk)?);
    run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(app.handle(req).await) }
    }))
    .await
}
