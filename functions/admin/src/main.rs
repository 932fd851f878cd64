//! Lambda wiring only: `admin::App`'s router as the Function URL's handler.

use lambda_http::{run, Error};
use shared::http::Routed;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let app = shared::bootstrap::start("admin", admin::App::from_env).await?;
    run(app.router()).await
}
