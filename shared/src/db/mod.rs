//! Postgres access: one lazily made connection per container (re-made when it closes), connect
//! and statement timeouts, TLS when the URL asks for it, the migration runner, and the typed
//! queries, one module per table group.
//!
//! Every query of tenant data takes a [`TenantId`] and filters on it; the one lookup that does
//! not ([`channels::resolve_channel_account`]) is how a webhook's provider account id is turned into
//! a tenant in the first place.

pub mod agents;
pub mod apikeys;
pub mod channels;
pub mod conversations;
pub mod credits;
pub mod leads;
pub mod messages;
pub mod outbox;
pub mod statuses;
pub mod tenants;
pub mod turns;
pub mod webchat;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres::Client;
use uuid::Uuid;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Lock id for migrations, so two containers starting at once do not both run them.
const MIGRATION_LOCK: i64 = 0x6167_656e_745f_6d67; // "agent_mg"

/// The tenant (`user_id` in every table). Only the data layer makes these from raw ids, so a
/// query cannot be called with some other id by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantId(Uuid);

impl TenantId {
    /// From an id that came out of our own database or a verified credential.
    pub fn from_trusted(id: Uuid) -> Self {
        Self(id)
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL is invalid: {0}")]
    BadUrl(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("could not connect to the database within {0:?}")]
    ConnectTimeout(Duration),
    /// Displayed without the server's DETAIL and HINT, which can quote row values (phone
    /// numbers, message text) into logs and DLQ attributes.
    #[error("database error: {}", pg_summary(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("{0}")]
    Invalid(String),
}

/// Severity, message and SQLSTATE of a server error; the client's own text otherwise.
fn pg_summary(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl DbError {
    /// Worth retrying later (connection trouble, timeouts, serialisation conflicts), as opposed
    /// to a bug or bad data that will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::ConnectTimeout(_) => true,
            DbError::Postgres(e) => {
                e.is_closed()
                    || e.code().is_none()
                    || e.code().is_some_and(|c| {
                        let c = c.code();
                        // connection exceptions, serialization/deadlock, insufficient resources,
                        // operator intervention (shutdown, statement timeout = 57014)
                        c.starts_with("08")
                            || c == "40001"
                            || c == "40P01"
                            || c.starts_with("53")
                            || c.starts_with("57")
                    })
            }
            _ => false,
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub url: SecretString,
    pub connect_timeout: Duration,
    /// Applied to every statement of the session; keep it below the function timeout.
    pub statement_timeout: Duration,
    /// Extra PEM CA bundle (e.g. the Amazon RDS CAs); the Mozilla roots are always trusted.
    pub ca_file: Option<std::path::PathBuf>,
}

impl DbConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// The per-container database handle.
pub struct Db {
    config: DbConfig,
    client: Mutex<Option<Arc<Client>>>,
}

impl Db {
    /// Nothing is connected until the first query.
    pub fn new(config: DbConfig) -> Self {
        Self {
            config,
            client: Mutex::new(None),
        }
    }

    /// The live connection, made on first use and re-made when the server closed it.
    pub async fn client(&self) -> Result<Arc<Client>, DbError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            tracing::warn!("database connection was closed; reconnecting");
        }
        let client = Arc::new(connect(&self.config).await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Applies every pending migration from `migrations/`, each in its own transaction, under an
    /// advisory lock. Re-running is a no-op; a failing migration leaves the schema as it was.
    pub async fn migrate(&self) -> Result<usize, DbError> {
        self.run_migrations(embedded::migrations::runner()).await
    }

    /// Runs the given refinery runner under the migration lock (tests use it with other sets).
    pub async fn run_migrations(&self, runner: refinery::Runner) -> Result<usize, DbError> {
        // The runner needs a client of its own (it takes `&mut`).
        let mut client = connect(&self.config).await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let result = runner
            .set_abort_divergent(true)
            .run_async(&mut client)
            .await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        let report = result.map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(report.applied_migrations().len())
    }
}

async fn connect(config: &DbConfig) -> Result<Client, DbError> {
    let mut pg: tokio_postgres::Config = config
        .url
        .expose_secret()
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::BadUrl(e.to_string()))?;
    pg.connect_timeout(config.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            config.statement_timeout.as_millis(),
            config.statement_timeout.as_millis() * 2
        ));
    if pg.get_application_name().is_none() {
        pg.application_name(
            std::env::var("AWS_LAMBDA_FUNCTION_NAME")
                .as_deref()
                .unwrap_or("agent"),
        );
    }
    let timeout = config.connect_timeout;
    let fut = async {
        if pg.get_ssl_mode() == SslMode::Disable {
            let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
            drive(conn);
            Ok::<_, DbError>(client)
        } else {
            let (client, conn) = pg
                .connect(tls_connector(config.ca_file.as_deref())?)
                .await?;
            drive(conn);
            Ok(client)
        }
    };
    tokio::time::timeout(timeout + Duration::from_millis(500), fut)
        .await
        .map_err(|_| DbError::ConnectTimeout(timeout))?
}

/// Runs a connection's I/O in the background; when it ends the client reports `is_closed()`.
fn drive<C>(conn: C)
where
    C: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
}

/// rustls with the Mozilla roots (Neon, most managed Postgres) plus an optional CA bundle (RDS).
/// `sslmode=prefer` (the libpq default) tries TLS and falls back; `require` insists on it.
fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| DbError::Tls(e.to_string()))? {
            let cert = cert.map_err(|e| DbError::Tls(e.to_string()))?;
            roots.add(cert).map_err(|e| DbError::Tls(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `url` with its database name replaced (keeps user, password, host and parameters).
pub fn url_with_database(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{dbname}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The first column (jsonb) of every row of `sql`: the admin API's views are built in
/// Postgres (`to_jsonb`), so an answer is exactly the selected columns.
pub(crate) async fn json_rows(
    db: &Db,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<serde_json::Value>, DbError> {
    let c = db.client().await?;
    let rows = c.query(sql, params).await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, serde_json::Value>(0))
        .collect())
}

/// The first column (jsonb) of the first row of `sql`, if any.
pub(crate) async fn json_row(
    db: &Db,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<serde_json::Value>, DbError> {
    Ok(json_rows(db, sql, params).await?.into_iter().next())
}

/// Helpers for tests against a real server (`DATABASE_URL`, set by `make test`); feature
/// `testing`, which only dev-dependencies turn on, so no function binary carries them.
#[cfg(any(test, feature = "testing"))]
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test set-up: a failure here should stop the test, loudly"
)]
pub mod testing {
    use super::*;

    /// A database made for one test (random name, migrations applied), dropped on drop.
    pub struct TestDb {
        pub db: Db,
        pub url: String,
        admin_url: String,
        name: String,
    }

    impl TestDb {
        pub async fn new() -> Self {
            let admin_url = std::env::var("DATABASE_URL")
                .expect("DATABASE_URL is not set: run the tests with `make test`");
            let name = format!("test_{}", Uuid::new_v4().simple());
            let admin = Db::new(DbConfig::new(admin_url.clone()));
            admin
                .client()
                .await
                .expect("connect to DATABASE_URL")
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            let url = url_with_database(&admin_url, &name);
            let db = Db::new(DbConfig::new(url.clone()));
            db.migrate().await.expect("migrations apply");
            Self {
                db,
                url,
                admin_url,
                name,
            }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
            // Drop runs inside the test's runtime; use a runtime of our own on another thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(c) = Db::new(DbConfig::new(admin_url)).client().await {
                        let _ = c
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_database_name() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/postgres?sslmode=require", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=require"
        );
        assert_eq!(
            url_with_database("postgres://h:1", "t2"),
            "postgres://h:1/t2"
        );
        assert_eq!(
            url_with_database("postgres://h/db", "t3"),
            "postgres://h/t3"
        );
    }
}
