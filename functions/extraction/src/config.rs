//! The extraction function's configuration, validated once at cold start.

use shared::bootstrap::Common;
use shared::config::{ConfigError, EnvReader};
use shared::openai::ModelEndpoint;
use shared::secrets::DatabaseSource;

#[derive(Debug)]
pub struct Config {
    pub common: Common,
    pub database: DatabaseSource,
    pub model_endpoint: ModelEndpoint,
    /// Model for every extraction (e.g. a small, cheap one); unset: the agent's model.
    pub model: Option<String>,
    pub idempotency_table: String,
    pub dead_letter_queue_url: String,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(EnvReader::from_process_env())
    }

    pub fn from_reader(mut env: EnvReader<'_>) -> Result<Self, ConfigError> {
        let database = DatabaseSource::from_env(&mut env);
        let model_endpoint = ModelEndpoint::read(&mut env);
        let model = env.optional("EXTRACTION_MODEL");
        let idempotency_table = env.required("IDEMPOTENCY_TABLE");
        let dead_letter_queue_url = env.required_url("EXTRACTION_DLQ_URL");
        let common = Common::read(&mut env);
        env.finish(Self {
            common,
            database,
            model_endpoint,
            model,
            idempotency_table,
            dead_letter_queue_url,
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
        assert_eq!(c.model_endpoint.base_url, "https://api.openai.com/v1");
    }
}
