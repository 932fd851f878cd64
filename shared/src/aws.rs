//! One place that builds the AWS SDK configuration, with timeouts short enough for a webhook
//! that must answer Meta quickly. `AWS_ENDPOINT_URL` (or the per-service variables) points every
//! client at the local emulator; the SDK reads it itself.

use std::time::Duration;

use aws_config::{
    retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, ConfigLoader, SdkConfig,
};

/// The loader with the project's timeouts and retry policy (two attempts per SDK call; callers
/// such as the queue publisher add their own retries of what is left).
pub fn loader() -> ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(6))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2))
}

/// The SDK configuration, once the network guard has passed the endpoints it will use.
pub async fn sdk_config() -> Result<SdkConfig, crate::netguard::GuardError> {
    let guard = crate::netguard::Guard::parse(std::env::var(crate::netguard::ENV).ok().as_deref())?;
    let vars: Vec<(String, String)> = std::env::vars().collect();
    crate::netguard::check_aws_endpoints(
        guard,
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    let sdk = loader().load().await;
    // A profile file can name an endpoint too: check what the SDK actually resolved.
    if guard.guards_aws() {
        crate::netguard::check_aws_endpoints(
            guard,
            sdk.endpoint_url().map(|u| ("AWS_ENDPOINT_URL", u)),
        )?;
    }
    Ok(sdk)
}
