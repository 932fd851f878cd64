//! The processor's configuration, validated once at cold start, and the secrets it names.
//!
//! In AWS the template passes `APP_SECRET_ID` (JSON: `openai_api_key`, optional
//! `graph_access_token`) and `DATABASE_SECRET_ID` (JSON: `url`). Locally the plain variables
//! `OPENAI_API_KEY`, `GRAPH_ACCESS_TOKEN` and `DATABASE_URL` take precedence over the secrets.

use std::time::Duration;

use shared::bootstrap::Common;
use shared::config::{ConfigError, EnvReader};
use shared::graph::GraphSettings;
use shared::openai::ModelEndpoint;
use shared::secrets::DatabaseSource;

#[derive(Debug)]
pub struct Config {
    pub common: Common,
    pub database: DatabaseSource,
    pub model: ModelEndpoint,
    pub graph: GraphSettings,
    pub extraction_queue_url: String,
    pub dead_letter_queue_url: String,
    pub inbound_queue_url: String,
    /// The longest a retried record waits (`MAX_RETRY_DELAY_SECS`, default 60).
    pub max_retry_delay: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(EnvReader::from_process_env())
    }

    pub fn from_reader(mut env: EnvReader<'_>) -> Result<Self, ConfigError> {
        let database = DatabaseSource::from_env(&mut env);
        let model = ModelEndpoint::read(&mut env);
        let extraction_queue_url = env.required_url("EXTRACTION_QUEUE_URL");
        let dead_letter_queue_url = env.required_url("INBOUND_DLQ_URL");
        let inbound_queue_url = env.required_url("INBOUND_QUEUE_URL");
        let max_retry_delay = Duration::from_secs(env.number("MAX_RETRY_DELAY_SECS", 60, 1, 900));
        let graph = GraphSettings::read(&mut env);
        let common = Common::read(&mut env);
        env.finish(Self {
            common,
            database,
            model,
            graph,
            extraction_queue_url,
            dead_letter_queue_url,
            inbound_queue_url,
            max_retry_delay,
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
        assert_eq!(c.model.base_url, "http://127.0.0.1:11434/v1");
        assert!(c.graph.base_url.starts_with("https://graph.facebook.com/v"));
        assert!(c.model.api_key.is_none() && c.database.url.is_none());
        assert_eq!(c.common.secrets_ttl, Duration::from_secs(300));
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
