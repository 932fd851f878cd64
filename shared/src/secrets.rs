//! Application secrets (Meta app secret, verify token, later the OpenAI key and web chat signing
//! key) from one Secrets Manager secret holding a JSON object, cached in memory with a TTL.
//!
//! For local use the values can come from plain environment variables instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::RwLock;

use crate::signature::SignatureKey;

/// Keys of the JSON object stored in the app secret.
pub const KEY_META_APP_SECRET: &str = "meta_app_secret";
pub const KEY_META_VERIFY_TOKEN: &str = "meta_verify_token";

/// What the webhook needs from the app secret, with the HMAC key prepared once per refresh.
pub struct MetaSecrets {
    pub signature_key: SignatureKey,
    pub verify_token: SecretString,
}

impl std::fmt::Debug for MetaSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaSecrets(<redacted>)")
    }
}

impl MetaSecrets {
    pub fn new(
        app_secret: &SecretString,
        verify_token: SecretString,
    ) -> Result<Self, SecretsError> {
        if app_secret.expose_secret().is_empty() {
            return Err(SecretsError::NotSet(KEY_META_APP_SECRET));
        }
        if verify_token.expose_secret().is_empty() {
            return Err(SecretsError::NotSet(KEY_META_VERIFY_TOKEN));
        }
        Ok(Self {
            signature_key: SignatureKey::new(app_secret.expose_secret().as_bytes()),
            verify_token,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret could not be read from Secrets Manager: {0}")]
    Unavailable(String),
    #[error("secret value is not a JSON object with the expected keys")]
    Malformed,
    #[error("`{0}` is empty in the app secret: put the real value into the secret")]
    NotSet(&'static str),
}

#[derive(Deserialize)]
struct AppSecretJson {
    #[serde(default)]
    meta_app_secret: Option<SecretString>,
    #[serde(default)]
    meta_verify_token: Option<SecretString>,
}

/// Where the Meta secrets come from.
pub enum MetaSecretSource {
    /// Fixed values (local development and tests).
    Static(Arc<MetaSecrets>),
    /// A Secrets Manager secret, re-read after `ttl`. If a refresh fails, the last good value
    /// keeps being used (and the failure is logged) so a Secrets Manager blip does not turn
    /// into rejected webhooks.
    Manager {
        client: aws_sdk_secretsmanager::Client,
        secret_id: String,
        ttl: Duration,
        cache: RwLock<Option<(Instant, Arc<MetaSecrets>)>>,
    },
}

impl MetaSecretSource {
    pub fn manager(
        client: aws_sdk_secretsmanager::Client,
        secret_id: String,
        ttl: Duration,
    ) -> Self {
        Self::Manager {
            client,
            secret_id,
            ttl,
            cache: RwLock::new(None),
        }
    }

    pub async fn get(&self) -> Result<Arc<MetaSecrets>, SecretsError> {
        let (client, secret_id, ttl, cache) = match self {
            Self::Static(s) => return Ok(s.clone()),
            Self::Manager {
                client,
                secret_id,
                ttl,
                cache,
            } => (client, secret_id, *ttl, cache),
        };
        if let Some((at, s)) = cache.read().await.as_ref() {
            if at.elapsed() < ttl {
                return Ok(s.clone());
            }
        }
        let mut slot = cache.write().await;
        // Another task may have refreshed while we waited for the lock.
        if let Some((at, s)) = slot.as_ref() {
            if at.elapsed() < ttl {
                return Ok(s.clone());
            }
        }
        match fetch(client, secret_id).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *slot = Some((Instant::now(), fresh.clone()));
                Ok(fresh)
            }
            Err(e) => match slot.as_ref() {
                Some((_, stale)) => {
                    tracing::warn!(error = %e, "app secret refresh failed; using the cached value");
                    Ok(stale.clone())
                }
                None => Err(e),
            },
        }
    }
}

async fn fetch(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<MetaSecrets, SecretsError> {
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| {
            SecretsError::Unavailable(
                aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
            )
        })?;
    let text = out.secret_string().ok_or(SecretsError::Malformed)?;
    let parsed: AppSecretJson = serde_json::from_str(text).map_err(|_| SecretsError::Malformed)?;
    let empty = || SecretString::from(String::new());
    MetaSecrets::new(
        &parsed.meta_app_secret.unwrap_or_else(empty),
        parsed.meta_verify_token.unwrap_or_else(empty),
    )
}
