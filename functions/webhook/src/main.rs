//! Lambda wiring only: `webhook::App` as the Function URL's handler.

use std::sync::Arc;

use lambda_http::{run, service_fn, Error, Request};

// Many small allocations per request (envelope strings); mimalloc is faster than glibc's here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let app = Arc::new(shared::bootstrap::start("webhook", webhook::App::from_env).await?);
    run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(app.handle(req).await) }
    }))
    .await
}
