//! The admin function's configuration, validated once at cold start.
//!
//! In AWS the template passes `DATABASE_SECRET_ID` (JSON: `url`) and `APP_SECRET_ID` (JSON:
//! optional `graph_access_token`, the default token for accounts that name no secret of their
//! own). Locally `DATABASE_URL` and `GRAPH_ACCESS_TOKEN` take precedence.

use shared::bootstrap::Common;
use shared::config::{ConfigError, EnvReader};
use shared::graph::{GraphSettings, GRAPH_VERSION};
use shared::secrets::DatabaseSource;

#[derive(Debug)]
pub struct Config {
    pub common: Common,
    pub database: DatabaseSource,
    pub graph: GraphSettings,
    pub settings: Settings,
}

/// Everything but the secrets.
#[derive(Debug, Clone)]
pub struct Settings {
    /// DynamoDB table holding the per-key rate-limit counters (the idempotency table).
    pub limits_table: String,
    /// Requests per API key per minute.
    pub per_key_per_minute: u32,
    /// Requests per source address per minute, counted before the key is looked up (so bad
    /// keys cannot be tried at database speed).
    pub per_ip_per_minute: u32,
    /// Where a job is queued to deliver a handoff event to the tenant's webhook promptly.
    pub extraction_queue_url: String,
    pub graph_base_url: String,
    pub instagram_graph_base_url: String,
    /// Names every per-account token secret must have: `<prefix><provider account id>`.
    pub token_secret_prefix: Option<String>,
    /// Model endpoints an agent may name as its base URL (the deployment's OpenAI key is sent
    /// there, so a tenant cannot pick an arbitrary one). Empty: no override allowed.
    pub model_base_urls: Vec<String>,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            limits_table: String::new(),
            per_key_per_minute: 300,
            per_ip_per_minute: 600,
            extraction_queue_url: String::new(),
            graph_base_url: format!("https://graph.facebook.com/{GRAPH_VERSION}"),
            instagram_graph_base_url: format!("https://graph.instagram.com/{GRAPH_VERSION}"),
            token_secret_prefix: None,
            model_base_urls: Vec::new(),
            max_body_bytes: 256 * 1024,
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(EnvReader::from_process_env())
    }

    pub fn from_reader(mut env: EnvReader<'_>) -> Result<Self, ConfigError> {
        let d = Settings::default();
        let database = DatabaseSource::from_env(&mut env);
        let graph = GraphSettings::read(&mut env);
        let settings = Settings {
            limits_table: env.required("IDEMPOTENCY_TABLE"),
            per_key_per_minute: env.number(
                "ADMIN_REQUESTS_PER_MINUTE",
                d.per_key_per_minute as u64,
                1,
                100_000,
            ) as u32,
            per_ip_per_minute: env.number(
                "ADMIN_REQUESTS_PER_IP_PER_MINUTE",
                d.per_ip_per_minute as u64,
                1,
                1_000_000,
            ) as u32,
            extraction_queue_url: env.required_url("EXTRACTION_QUEUE_URL"),
            graph_base_url: graph.base_url.clone(),
            instagram_graph_base_url: graph.instagram_base_url.clone(),
            token_secret_prefix: graph.token_secret_prefix.clone(),
            model_base_urls: env.url_list("MODEL_BASE_URL_ALLOWLIST"),
            max_body_bytes: d.max_body_bytes,
        };
        if graph.app_secret_id.is_some() && settings.token_secret_prefix.is_none() {
            // Deployed: without the prefix a tenant could name any secret as its token.
            env.problem(
                "TOKEN_SECRET_PREFIX is required with APP_SECRET_ID (deployed: <stack>/channel/)",
            );
        }
        let common = Common::read(&mut env);
        env.finish(Self {
            common,
            database,
            graph,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing_and_reads_the_allowlist() {
        let err = Config::from_reader(EnvReader::from_pairs(&[])).unwrap_err();
        for needle in [
            "DATABASE_URL or DATABASE_SECRET_ID",
            "IDEMPOTENCY_TABLE",
            "EXTRACTION_QUEUE_URL",
        ] {
            assert!(err.to_string().contains(needle), "{needle} in {err}");
        }
        let c = Config::from_reader(EnvReader::from_pairs(&[
            ("DATABASE_SECRET_ID", "agent/db"),
            ("IDEMPOTENCY_TABLE", "t"),
            ("EXTRACTION_QUEUE_URL", "https://sqs/1/x"),
            (
                "MODEL_BASE_URL_ALLOWLIST",
                " https://api.openai.com/v1/ ,https://llm.internal/v1",
            ),
        ]))
        .unwrap();
        assert_eq!(
            c.settings.model_base_urls,
            ["https://api.openai.com/v1", "https://llm.internal/v1"]
        );
        assert_eq!(c.settings.per_key_per_minute, 300);
    }
}
