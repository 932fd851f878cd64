//! The status function's configuration, validated once at cold start.

use std::time::Duration;

use shared::bootstrap::Common;
use shared::config::{ConfigError, EnvReader};
use shared::secrets::DatabaseSource;

#[derive(Debug)]
pub struct Config {
    pub database: DatabaseSource,
    /// The status queue itself: failed records get their retry delay on it.
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    /// The longest a failed record waits before its redelivery (`MAX_RETRY_DELAY_SECS`).
    pub max_retry_delay: Duration,
    pub common: Common,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(EnvReader::from_process_env())
    }

    pub fn from_reader(mut env: EnvReader<'_>) -> Result<Self, ConfigError> {
        let database = DatabaseSource::from_env(&mut env);
        let queue_url = env.required_url("STATUS_QUEUE_URL");
        let dead_letter_queue_url = env.required_url("STATUS_DLQ_URL");
        let max_retry_delay = Duration::from_secs(env.number("MAX_RETRY_DELAY_SECS", 180, 1, 900));
        let common = Common::read(&mut env);
        env.finish(Self {
            database,
            queue_url,
            dead_letter_queue_url,
            max_retry_delay,
            common,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let err = Config::from_reader(EnvReader::from_pairs(&[])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("DATABASE_URL or DATABASE_SECRET_ID"),
            "{text}"
        );
        assert!(text.contains("STATUS_DLQ_URL"), "{text}");
        assert!(text.contains("STATUS_QUEUE_URL"), "{text}");
        let ok = Config::from_reader(EnvReader::from_pairs(&[
            ("DATABASE_SECRET_ID", "agent/database"),
            ("STATUS_QUEUE_URL", "http://127.0.0.1:4566/1/agent-status"),
            ("STATUS_DLQ_URL", "http://127.0.0.1:4566/1/agent-status-dlq"),
        ]))
        .unwrap();
        assert_eq!(ok.common.metrics_namespace, "AiAgent");
        assert_eq!(ok.max_retry_delay, Duration::from_secs(180));
    }
}
