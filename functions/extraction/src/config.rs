//! The extraction function's configuration, validated once at cold start.

use std::time::Duration;

use secrecy::SecretString;
use shared::config::{ConfigError, EnvReader};
use shared::secrets::{app_value, DatabaseSource, SecretCache, SecretsError, KEY_OPENAI_API_KEY};

#[derive(Debug)]
pub struct Config {
    pub database: DatabaseSource,
    pub app_secret_id: Option<String>,
    pub openai_api_key: Option<SecretString>,
    pub openai_base_url: String,
    /// Endpoints an agent's `base_url` may name (`MODEL_BASE_URL_ALLOWLIST`); others are ignored.
    pub model_base_urls: Vec<String>,
    /// Model for every extraction (e.g. a small, cheap one); unset: the agent's model.
    pub model: Option<String>,
    pub model_timeout: Duration,
    pub idempotency_table: String,
    pub dead_letter_queue_url: String,
    pub metrics_namespace: String,
    pub secrets_ttl: Duration,
}

pub struct Resolved {
    pub database_url: SecretString,
    pub openai_api_key: SecretString,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(EnvReader::from_process_env())
    }

    pub fn from_reader(mut env: EnvReader<'_>) -> Result<Self, ConfigError> {
        let database = DatabaseSource::from_env(&mut env);
        let app_secret_id = env.optional("APP_SECRET_ID");
        let openai_api_key = env.optional("OPENAI_API_KEY").map(SecretString::from);
        if openai_api_key.is_none() && app_secret_id.is_none() {
            env.problem("set OPENAI_API_KEY or APP_SECRET_ID (a secret with `openai_api_key`)");
        }
        let openai_base_url = env.base_url("OPENAI_BASE_URL", "https://api.openai.com/v1");
        let model_base_urls = env.url_list("MODEL_BASE_URL_ALLOWLIST");
        let model = env.optional("EXTRACTION_MODEL");
        let model_timeout = Duration::from_secs(env.number("MODEL_TIMEOUT_SECS", 30, 1, 300));
        let idempotency_table = env.required("IDEMPOTENCY_TABLE");
        let dead_letter_queue_url = env.required_url("EXTRACTION_DLQ_URL");
        let metrics_namespace = env
            .optional("METRICS_NAMESPACE")
            .unwrap_or_else(|| "AiAgent".into());
        let secrets_ttl = Duration::from_secs(env.number("SECRETS_CACHE_TTL_SECS", 300, 0, 3600));
        env.finish(Self {
            database,
            app_secret_id,
            openai_api_key,
            openai_base_url,
            model_base_urls,
            model,
            model_timeout,
            idempotency_table,
            dead_letter_queue_url,
            metrics_namespace,
            secrets_ttl,
        })
    }

    pub async fn resolve(&self, secrets: &SecretCache) -> Result<Resolved, SecretsError> {
        let openai_api_key = app_value(
            self.openai_api_key.as_ref(),
            self.app_secret_id.as_deref(),
            KEY_OPENAI_API_KEY,
            secrets,
        )
        .await?
        .ok_or(SecretsError::NotSet(KEY_OPENAI_API_KEY))?;
        Ok(Resolved {
            database_url: self.database.resolve(secrets).await?,
            openai_api_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing_and_takes_a_model_override() {
        let text = Config::from_reader(EnvReader::from_pairs(&[]))
            .unwrap_err()
            .to_string();
        for needle in [
            "DATABASE_URL or DATABASE_SECRET_ID",
            "OPENAI_API_KEY or APP_SECRET_ID",
            "IDEMPOTENCY_TABLE",
            "EXTRACTION_DLQ_URL",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        let c = Config::from_reader(EnvReader::from_pairs(&[
            ("DATABASE_URL", "postgres://x"),
            ("OPENAI_API_KEY", "sk"),
            ("IDEMPOTENCY_TABLE", "t"),
            ("EXTRACTION_DLQ_URL", "http://127.0.0.1:4566/1/dlq"),
            ("EXTRACTION_MODEL", "gpt-5-nano"),
        ]))
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("gpt-5-nano"));
        assert_eq!(c.openai_base_url, "https://api.openai.com/v1");
    }
}
