//! The processor's configuration, validated once at cold start, and the secrets it names.
//!
//! In AWS the template passes `APP_SECRET_ID` (JSON: `openai_api_key`, optional
//! `graph_access_token`) and `DATABASE_SECRET_ID` (JSON: `url`). Locally the plain variables
//! `OPENAI_API_KEY`, `GRAPH_ACCESS_TOKEN` and `DATABASE_URL` take precedence over the secrets.

use std::time::Duration;

use secrecy::SecretString;
use shared::config::{ConfigError, EnvReader};
use shared::graph::GRAPH_VERSION;
use shared::secrets::{
    app_value, DatabaseSource, SecretCache, SecretsError, KEY_GRAPH_ACCESS_TOKEN,
    KEY_OPENAI_API_KEY,
};

#[derive(Debug)]
pub struct Config {
    pub database: DatabaseSource,
    pub app_secret_id: Option<String>,
    pub openai_api_key: Option<SecretString>,
    pub graph_access_token: Option<SecretString>,
    pub extraction_queue_url: String,
    pub dead_letter_queue_url: String,
    pub inbound_queue_url: String,
    /// The longest a retried record waits (`MAX_RETRY_DELAY_SECS`, default 60).
    pub max_retry_delay: Duration,
    pub openai_base_url: String,
    /// Endpoints an agent's `base_url` may name (`MODEL_BASE_URL_ALLOWLIST`); others are ignored.
    pub model_base_urls: Vec<String>,
    pub graph_base_url: String,
    pub instagram_graph_base_url: String,
    pub metrics_namespace: String,
    /// Names every per-account token secret must have: `<prefix><provider account id>`.
    pub token_secret_prefix: Option<String>,
    /// How long per-account Graph tokens (and the app secret) are cached.
    pub secrets_ttl: Duration,
    /// Per model attempt.
    pub model_timeout: Duration,
}

/// The secret values the processor starts with.
pub struct Resolved {
    pub database_url: SecretString,
    pub openai_api_key: SecretString,
    pub graph_access_token: Option<SecretString>,
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
        let graph_access_token = env.optional("GRAPH_ACCESS_TOKEN").map(SecretString::from);
        let extraction_queue_url = env.required_url("EXTRACTION_QUEUE_URL");
        let dead_letter_queue_url = env.required_url("INBOUND_DLQ_URL");
        let inbound_queue_url = env.required_url("INBOUND_QUEUE_URL");
        let max_retry_delay = Duration::from_secs(env.number("MAX_RETRY_DELAY_SECS", 60, 1, 900));
        let openai_base_url = env.base_url("OPENAI_BASE_URL", "https://api.openai.com/v1");
        let model_base_urls = env.url_list("MODEL_BASE_URL_ALLOWLIST");
        let graph_base_url = env.base_url(
            "GRAPH_BASE_URL",
            &format!("https://graph.facebook.com/{GRAPH_VERSION}"),
        );
        let instagram_graph_base_url = env.base_url(
            "INSTAGRAM_GRAPH_BASE_URL",
            &format!("https://graph.instagram.com/{GRAPH_VERSION}"),
        );
        let metrics_namespace = env
            .optional("METRICS_NAMESPACE")
            .unwrap_or_else(|| "AiAgent".into());
        let token_secret_prefix = env.optional("TOKEN_SECRET_PREFIX");
        let secrets_ttl = Duration::from_secs(env.number("SECRETS_CACHE_TTL_SECS", 300, 0, 3600));
        let model_timeout = Duration::from_secs(env.number("MODEL_TIMEOUT_SECS", 30, 1, 300));
        env.finish(Self {
            database,
            app_secret_id,
            openai_api_key,
            graph_access_token,
            extraction_queue_url,
            dead_letter_queue_url,
            inbound_queue_url,
            max_retry_delay,
            openai_base_url,
            model_base_urls,
            graph_base_url,
            instagram_graph_base_url,
            metrics_namespace,
            token_secret_prefix,
            secrets_ttl,
            model_timeout,
        })
    }

    /// Reads the secrets the configuration names (plain variables win).
    pub async fn resolve(&self, secrets: &SecretCache) -> Result<Resolved, SecretsError> {
        let app_id = self.app_secret_id.as_deref();
        let openai_api_key = app_value(
            self.openai_api_key.as_ref(),
            app_id,
            KEY_OPENAI_API_KEY,
            secrets,
        )
        .await?
        .ok_or(SecretsError::NotSet(KEY_OPENAI_API_KEY))?;
        let graph_access_token = app_value(
            self.graph_access_token.as_ref(),
            app_id,
            KEY_GRAPH_ACCESS_TOKEN,
            secrets,
        )
        .await?;
        let database_url = self.database.resolve(secrets).await?;
        Ok(Resolved {
            database_url,
            openai_api_key,
            graph_access_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_reader(EnvReader::from_pairs(vars))
    }

    #[test]
    fn an_empty_environment_names_every_missing_setting() {
        let err = config(&[]).unwrap_err();
        let text = err.to_string();
        for needle in [
            "DATABASE_URL or DATABASE_SECRET_ID",
            "OPENAI_API_KEY or APP_SECRET_ID",
            "EXTRACTION_QUEUE_URL",
            "INBOUND_DLQ_URL",
            "INBOUND_QUEUE_URL",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
    }

    #[test]
    fn secret_ids_are_enough_and_defaults_point_at_meta_and_openai() {
        let c = config(&[
            ("DATABASE_SECRET_ID", "agent/db"),
            ("APP_SECRET_ID", "agent/app"),
            ("EXTRACTION_QUEUE_URL", "https://sqs/1/x"),
            ("INBOUND_DLQ_URL", "https://sqs/1/y.fifo"),
            ("INBOUND_QUEUE_URL", "https://sqs/1/in.fifo"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1/"),
        ])
        .unwrap();
        assert_eq!(c.openai_base_url, "http://127.0.0.1:11434/v1");
        assert!(c.graph_base_url.starts_with("https://graph.facebook.com/v"));
        assert!(c.openai_api_key.is_none() && c.database.url.is_none());
        assert_eq!(c.secrets_ttl, Duration::from_secs(300));
        assert_eq!(c.max_retry_delay, Duration::from_secs(60));
        let bad = config(&[
            ("DATABASE_URL", "postgres://x"),
            ("OPENAI_API_KEY", "sk"),
            ("EXTRACTION_QUEUE_URL", "https://sqs/1/x"),
            ("INBOUND_DLQ_URL", "https://sqs/1/y.fifo"),
            ("INBOUND_QUEUE_URL", "https://sqs/1/in.fifo"),
            ("GRAPH_BASE_URL", "graph.local"),
        ])
        .unwrap_err();
        assert_eq!(bad.problems.len(), 1, "{bad}");
    }
}
