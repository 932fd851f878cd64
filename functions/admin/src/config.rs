//! The admin function's configuration, validated once at cold start.
//!
//! In AWS the template passes `DATABASE_SECRET_ID` (JSON: `url`) and `APP_SECRET_ID` (JSON:
//! optional `graph_access_token`, the default token for accounts that name no secret of their
//! own). Locally `DATABASE_URL` and `GRAPH_ACCESS_TOKEN` take precedence.

use std::time::Duration;

use secrecy::SecretString;
use shared::config::{ConfigError, EnvReader};
use shared::graph::GRAPH_VERSION;
use shared::secrets::{
    app_value, DatabaseSource, SecretCache, SecretsError, KEY_GRAPH_ACCESS_TOKEN,
};

#[derive(Debug)]
pub struct Config {
    pub database: DatabaseSource,
    pub app_secret_id: Option<String>,
    pub graph_access_token: Option<SecretString>,
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
    /// How long per-account Graph tokens are cached.
    pub secrets_ttl: Duration,
    /// CloudWatch namespace of the EMF metrics.
    pub metrics_namespace: String,
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
            secrets_ttl: Duration::from_secs(300),
            metrics_namespace: "AiAgent".to_owned(),
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
            graph_base_url: env.base_url("GRAPH_BASE_URL", &d.graph_base_url),
            instagram_graph_base_url: env
                .base_url("INSTAGRAM_GRAPH_BASE_URL", &d.instagram_graph_base_url),
            token_secret_prefix: env.optional("TOKEN_SECRET_PREFIX"),
            model_base_urls: env.url_list("MODEL_BASE_URL_ALLOWLIST"),
            max_body_bytes: d.max_body_bytes,
            secrets_ttl: Duration::from_secs(env.number("SECRETS_CACHE_TTL_SECS", 300, 0, 3600)),
            metrics_namespace: env
                .optional("METRICS_NAMESPACE")
                .unwrap_or(d.metrics_namespace),
        };
        let app_secret_id = env.optional("APP_SECRET_ID");
        if app_secret_id.is_some() && settings.token_secret_prefix.is_none() {
            // Deployed: without the prefix a tenant could name any secret as its token.
            env.problem(
                "TOKEN_SECRET_PREFIX is required with APP_SECRET_ID (deployed: <stack>/channel/)",
            );
        }
        let graph_access_token = env.optional("GRAPH_ACCESS_TOKEN").map(SecretString::from);
        env.finish(Self {
            database,
            app_secret_id,
            graph_access_token,
            settings,
        })
    }

    /// The database URL and the default Graph token (plain variables win over the secrets).
    pub async fn resolve(
        &self,
        secrets: &SecretCache,
    ) -> Result<(SecretString, Option<SecretString>), SecretsError> {
        let token = app_value(
            self.graph_access_token.as_ref(),
            self.app_secret_id.as_deref(),
            KEY_GRAPH_ACCESS_TOKEN,
            secrets,
        )
        .await?;
        Ok((self.database.resolve(secrets).await?, token))
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
