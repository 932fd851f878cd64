//! Lambda wiring only: `admin::App` as the Function URL's handler.

use std::sync::Arc;

use lambda_http::{run, service_fn, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let app = Arc::new(shared::bootstrap::start("admin", admin::App::from_env).await?);
    run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(app.handle(req).await) }
    }))
    .await
}
