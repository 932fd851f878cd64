//! Lambda wiring only: `webhook::App` as the Function URL's handler.

use lambda_http::{run, Error};
use shared::http::Routed;

// Many small allocations per request (envelope strings); mimalloc is faster than glibc's here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let app = shared::bootstrap::start("webhook", webhook::App::from_env).await?;
    run(app.router()).await
}
