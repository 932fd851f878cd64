//! `DATABASE_URL=postgres://… cargo run -p shared --bin migrate-db` (`make migrate`): applies the pending migrations
//! of `migrations/` with the same runner the tests and the deployed stack use.

use shared::db::{Db, DbConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shared::telemetry::init();
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("migrate: DATABASE_URL is not set");
        return std::process::ExitCode::FAILURE;
    };
    match Db::new(DbConfig::new(url)).migrate().await {
        Ok(n) => {
            tracing::info!(applied = n, "migrations up to date");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "migrations failed; the schema is unchanged");
            std::process::ExitCode::FAILURE
        }
    }
}
