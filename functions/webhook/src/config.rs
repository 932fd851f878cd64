//! The webhook's configuration, validated once at cold start.

use std::time::Duration;

use secrecy::SecretString;
use shared::config::{ConfigError, EnvReader};
use shared::ordering::OrderingScope;

/// Meta's documented maximum webhook size.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 3 * 1024 * 1024;

#[derive(Debug)]
pub enum SecretsConfig {
    /// `META_APP_SECRET` and `META_VERIFY_TOKEN` given directly (local development).
    Env {
        app_secret: SecretString,
        verify_token: SecretString,
    },
    /// `APP_SECRET_ID`: a Secrets Manager secret (name or ARN) holding the JSON object.
    Manager { secret_id: String, ttl: Duration },
}

#[derive(Debug)]
pub struct Config {
    pub inbound_queue_url: String,
    pub status_queue_url: String,
    pub ordering_scope: OrderingScope,
    pub max_body_bytes: usize,
    pub secrets: SecretsConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_reader(EnvReader::from_process_env())
    }

    pub fn from_reader(mut env: EnvReader<'_>) -> Result<Self, ConfigError> {
        let inbound_queue_url = env.required_url("INBOUND_QUEUE_URL");
        if !inbound_queue_url.is_empty() && !inbound_queue_url.ends_with(".fifo") {
            env.problem("INBOUND_QUEUE_URL must name a FIFO queue (ending in .fifo)");
        }
        let status_queue_url = env.required_url("STATUS_QUEUE_URL");
        let ordering_scope = env.parsed(
            "ORDERING_SCOPE",
            OrderingScope::default(),
            OrderingScope::parse,
        );
        let max_body_bytes = env.number(
            "MAX_BODY_BYTES",
            DEFAULT_MAX_BODY_BYTES,
            1024,
            6 * 1024 * 1024,
        ) as usize;
        let ttl = Duration::from_secs(env.number("SECRETS_CACHE_TTL_SECS", 300, 0, 3600));
        let app_secret = env.optional("META_APP_SECRET");
        let verify_token = env.optional("META_VERIFY_TOKEN");
        let secret_id = env.optional("APP_SECRET_ID");
        let secrets = match (app_secret, verify_token, secret_id) {
            (Some(a), Some(v), _) => SecretsConfig::Env {
                app_secret: a.into(),
                verify_token: v.into(),
            },
            (None, None, Some(secret_id)) => SecretsConfig::Manager { secret_id, ttl },
            (Some(_), None, _) | (None, Some(_), _) => {
                env.problem("META_APP_SECRET and META_VERIFY_TOKEN must be set together");
                SecretsConfig::Manager {
                    secret_id: String::new(),
                    ttl,
                }
            }
            (None, None, None) => {
                env.problem(
                    "APP_SECRET_ID is missing (or set META_APP_SECRET and META_VERIFY_TOKEN for local use)",
                );
                SecretsConfig::Manager {
                    secret_id: String::new(),
                    ttl,
                }
            }
        };
        env.finish(Config {
            inbound_queue_url,
            status_queue_url,
            ordering_scope,
            max_body_bytes,
            secrets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_reader(EnvReader::from_pairs(vars))
    }

    #[test]
    fn missing_variables_are_all_listed() {
        let err = load(&[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("INBOUND_QUEUE_URL is missing"), "{text}");
        assert!(text.contains("STATUS_QUEUE_URL is missing"), "{text}");
        assert!(text.contains("APP_SECRET_ID is missing"), "{text}");
        assert_eq!(err.problems.len(), 3);
    }

    #[test]
    fn bad_values_are_named() {
        let err = load(&[
            ("INBOUND_QUEUE_URL", "http://q/inbound"),
            ("STATUS_QUEUE_URL", "q"),
            ("ORDERING_SCOPE", "global"),
            ("MAX_BODY_BYTES", "-1"),
            ("META_APP_SECRET", "x"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "FIFO queue",
            "STATUS_QUEUE_URL must be an http(s) URL",
            "ORDERING_SCOPE must be",
            "MAX_BODY_BYTES must be",
            "must be set together",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
    }

    #[test]
    fn a_complete_configuration_loads_with_defaults() {
        let cfg = load(&[
            ("INBOUND_QUEUE_URL", "http://127.0.0.1:4566/1/in.fifo"),
            ("STATUS_QUEUE_URL", "http://127.0.0.1:4566/1/status"),
            ("APP_SECRET_ID", "agent/app"),
        ])
        .unwrap();
        assert_eq!(cfg.ordering_scope, OrderingScope::ChannelAccount);
        assert_eq!(cfg.max_body_bytes, 3 * 1024 * 1024);
        assert!(
            matches!(cfg.secrets, SecretsConfig::Manager { ref secret_id, ttl } if secret_id == "agent/app" && ttl.as_secs() == 300)
        );
    }
}
