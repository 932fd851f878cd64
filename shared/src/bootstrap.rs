//! One start-up path for every function. A `main.rs` calls [`start`] with its library's
//! constructor and hands the result to the Lambda runtime; everything between (logs, the AWS
//! SDK behind the network guard, the settings every function reads the same way, secrets,
//! clients) is built once, at cold start, and a failure is logged once with the function's
//! name before the runtime reports it.

use std::future::Future;
use std::time::Duration;

use crate::config::EnvReader;
use crate::metrics::Metrics;
use crate::secrets::SecretCache;

/// Why a function could not start.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// The settings every function reads the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    /// CloudWatch namespace of the EMF metrics (`METRICS_NAMESPACE`, default `AiAgent`).
    pub metrics_namespace: String,
    /// How long secret values are cached (`SECRETS_CACHE_TTL_SECS`, 0 to 3600, default 300).
    pub secrets_ttl: Duration,
}

impl Common {
    pub fn read(env: &mut EnvReader<'_>) -> Self {
        Self {
            metrics_namespace: env
                .optional("METRICS_NAMESPACE")
                .unwrap_or_else(|| "AiAgent".into()),
            secrets_ttl: Duration::from_secs(env.number("SECRETS_CACHE_TTL_SECS", 300, 0, 3600)),
        }
    }

    /// The function's metrics, in the configured namespace.
    pub fn metrics(&self, function: &'static str) -> Metrics {
        Metrics::new(self.metrics_namespace.clone(), function)
    }
}

/// What every function starts from.
pub struct Start {
    /// The function's name (logs, metrics).
    pub function: &'static str,
    /// The AWS SDK configuration, its endpoints passed by the network guard.
    pub sdk: aws_config::SdkConfig,
}

impl Start {
    /// A secrets cache whose values live `ttl`.
    pub fn secrets(&self, ttl: Duration) -> SecretCache {
        SecretCache::new(aws_sdk_secretsmanager::Client::new(&self.sdk), ttl)
    }

    /// An SQS publisher with the project's retry policy.
    pub fn publisher(&self) -> crate::queue::QueuePublisher {
        crate::queue::QueuePublisher::new(
            aws_sdk_sqs::Client::new(&self.sdk),
            crate::queue::RetryPolicy::default(),
        )
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }
}

/// Starts logging, loads the SDK configuration, then builds the function with `build`. A
/// failure is logged (`<function> cannot start`) and returned.
pub async fn start<T, F, Fut>(function: &'static str, build: F) -> Result<T, StartError>
where
    F: FnOnce(Start) -> Fut,
    Fut: Future<Output = Result<T, StartError>>,
{
    crate::telemetry::init();
    let built = async {
        let sdk = crate::aws::sdk_config().await?;
        build(Start { function, sdk }).await
    }
    .await;
    built.inspect_err(|e| tracing::error!(error = %e, "{function} cannot start"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_settings_have_defaults_and_bounds() {
        let mut env = EnvReader::from_pairs(&[]);
        let c = Common::read(&mut env);
        assert_eq!(c.metrics_namespace, "AiAgent");
        assert_eq!(c.secrets_ttl, Duration::from_secs(300));
        assert!(env.finish(()).is_ok());
        let mut env = EnvReader::from_pairs(&[
            ("METRICS_NAMESPACE", "Shop"),
            ("SECRETS_CACHE_TTL_SECS", "7200"),
        ]);
        let c = Common::read(&mut env);
        assert_eq!(c.metrics_namespace, "Shop");
        let problems = env.finish(()).unwrap_err().problems;
        assert!(
            problems[0].contains("SECRETS_CACHE_TTL_SECS"),
            "{problems:?}"
        );
    }

    #[tokio::test]
    async fn a_function_that_cannot_build_does_not_start() {
        let r: Result<(), StartError> = start("test", |_| async {
            Err::<(), StartError>("no database".into())
        })
        .await;
        assert_eq!(r.unwrap_err().to_string(), "no database");
    }
}
