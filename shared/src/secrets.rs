//! Application secrets (Meta app secret, verify token, the OpenAI key, later the web chat signing
//! key) from one Secrets Manager secret holding a JSON object, cached in memory with a TTL, and
//! per-channel-account Graph API tokens ([`SecretCache`]).
//!
//! For local use the values can come from plain environment variables instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::signature::SignatureKey;

/// Keys of the JSON object stored in the app secret.
pub const KEY_META_APP_SECRET: &str = "meta_app_secret";
pub const KEY_META_VERIFY_TOKEN: &str = "meta_verify_token";
pub const KEY_OPENAI_API_KEY: &str = "openai_api_key";
/// Optional default Graph token (a system-user token) for accounts without their own secret.
pub const KEY_GRAPH_ACCESS_TOKEN: &str = "graph_access_token";

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
    #[error("secret `{0}` does not exist")]
    NotFound(String),
    #[error("secret refused: {0}")]
    Refused(String),
    #[error("secret value is not a JSON object with the expected keys")]
    Malformed,
    #[error("`{0}` is empty in the app secret: put the real value into the secret")]
    NotSet(&'static str),
}

impl SecretsError {
    /// Secrets Manager unreachable or throttled may pass; a missing or malformed value will not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SecretsError::Unavailable(_))
    }
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
    /// A Secrets Manager secret read through a [`SecretCache`] (re-read after its TTL, the last
    /// good value kept when a refresh fails). The parsed form (with the HMAC key prepared) is
    /// kept until the secret's text changes; a new text that does not parse also keeps the last
    /// good secrets (logged), so a bad edit does not turn into rejected webhooks.
    Manager {
        secrets: SecretCache,
        secret_id: String,
        parsed: Mutex<Option<(SecretString, Arc<MetaSecrets>)>>,
    },
}

impl MetaSecretSource {
    pub fn manager(
        client: aws_sdk_secretsmanager::Client,
        secret_id: String,
        ttl: Duration,
    ) -> Self {
        Self::Manager {
            secrets: SecretCache::new(client, ttl),
            secret_id,
            parsed: Mutex::new(None),
        }
    }

    pub async fn get(&self) -> Result<Arc<MetaSecrets>, SecretsError> {
        let (secrets, secret_id, parsed) = match self {
            Self::Static(s) => return Ok(s.clone()),
            Self::Manager {
                secrets,
                secret_id,
                parsed,
            } => (secrets, secret_id, parsed),
        };
        let text = secrets.get(secret_id).await?;
        let mut slot = crate::lock(parsed);
        if let Some((seen, s)) = slot.as_ref() {
            if seen.expose_secret() == text.expose_secret() {
                return Ok(s.clone());
            }
        }
        match parse_meta(&text) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *slot = Some((text, fresh.clone()));
                Ok(fresh)
            }
            Err(e) => match slot.as_ref() {
                Some((_, last_good)) => {
                    tracing::warn!(error = %e, "app secret changed but is unusable; using the last good value");
                    Ok(last_good.clone())
                }
                None => Err(e),
            },
        }
    }
}

fn parse_meta(text: &SecretString) -> Result<MetaSecrets, SecretsError> {
    let parsed: AppSecretJson =
        serde_json::from_str(text.expose_secret()).map_err(|_| SecretsError::Malformed)?;
    let empty = || SecretString::from(String::new());
    MetaSecrets::new(
        &parsed.meta_app_secret.unwrap_or_else(empty),
        parsed.meta_verify_token.unwrap_or_else(empty),
    )
}

async fn fetch_string(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<SecretString, SecretsError> {
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| {
            use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
            // Errors that a retry will not fix: the secret is missing, ours to read is denied
            // (e.g. a name outside the function's IAM grant), or its value cannot be used.
            let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
            if code == "ResourceNotFoundException" {
                SecretsError::NotFound(secret_id.to_owned())
            } else if matches!(
                code,
                "AccessDeniedException"
                    | "DecryptionFailure"
                    | "InvalidRequestException"
                    | "InvalidParameterException"
            ) {
                SecretsError::Refused(format!("{secret_id}: {code}"))
            } else {
                SecretsError::Unavailable(
                    aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
                )
            }
        })?;
    out.secret_string()
        .map(|s| SecretString::from(s.to_owned()))
        .ok_or(SecretsError::Malformed)
}

/// One string field of a secret holding a JSON object; `None` when absent or empty.
pub fn json_field(value: &SecretString, key: &str) -> Result<Option<SecretString>, SecretsError> {
    let map: HashMap<String, serde_json::Value> =
        serde_json::from_str(value.expose_secret()).map_err(|_| SecretsError::Malformed)?;
    Ok(map
        .get(key)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| SecretString::from(s.to_owned())))
}

/// A value given directly (a local environment variable) or, failing that, the field `key` of
/// the app secret `app_secret_id`; `None` when neither has it.
pub async fn app_value(
    direct: Option<&SecretString>,
    app_secret_id: Option<&str>,
    key: &str,
    secrets: &SecretCache,
) -> Result<Option<SecretString>, SecretsError> {
    match (direct, app_secret_id) {
        (Some(v), _) => Ok(Some(v.clone())),
        (None, Some(id)) => json_field(&secrets.get(id).await?, key),
        (None, None) => Ok(None),
    }
}

/// Where a function finds the Postgres URL: `DATABASE_URL` itself (local), else the `url` field
/// of the secret `DATABASE_SECRET_ID` (deployed: `<stack>/database`).
#[derive(Debug, Clone, Default)]
pub struct DatabaseSource {
    pub url: Option<SecretString>,
    pub secret_id: Option<String>,
}

impl DatabaseSource {
    /// Reads both variables; a problem is recorded when neither is set.
    pub fn from_env(env: &mut crate::config::EnvReader<'_>) -> Self {
        let url = env.optional("DATABASE_URL").map(SecretString::from);
        let secret_id = env.optional("DATABASE_SECRET_ID");
        if url.is_none() && secret_id.is_none() {
            env.problem(
                "set DATABASE_URL or DATABASE_SECRET_ID (a secret {\"url\": \"postgres://…\"})",
            );
        }
        Self { url, secret_id }
    }

    /// The database, its URL read now.
    pub async fn connect(&self, secrets: &SecretCache) -> Result<crate::db::Db, SecretsError> {
        let url = self.resolve(secrets).await?;
        Ok(crate::db::Db::new(crate::db::DbConfig::new(
            url.expose_secret(),
        )))
    }

    pub async fn resolve(&self, secrets: &SecretCache) -> Result<SecretString, SecretsError> {
        match (&self.url, &self.secret_id) {
            (Some(u), _) => Ok(u.clone()),
            (None, Some(id)) => {
                json_field(&secrets.get(id).await?, "url")?.ok_or(SecretsError::NotSet("url"))
            }
            (None, None) => Err(SecretsError::NotSet("url")),
        }
    }
}

/// A channel account's Graph token secret holds either the bare token or a JSON object with
/// an `access_token` field (the shape `aws secretsmanager create-secret` users tend to pick).
pub fn graph_token_of(value: &SecretString) -> Result<SecretString, SecretsError> {
    let raw = value.expose_secret().trim();
    if raw.starts_with('{') {
        return json_field(value, "access_token")?.ok_or(SecretsError::NotSet("access_token"));
    }
    if raw.is_empty() {
        return Err(SecretsError::NotSet("access_token"));
    }
    Ok(SecretString::from(raw.to_owned()))
}

/// Secrets Manager values by id, each cached for `ttl`. A failed refresh keeps serving the last
/// good value (logged), so a Secrets Manager blip does not stop replies; a value never seen
/// fails with the error. Concurrent misses may fetch twice; no lock is held across the call.
pub struct SecretCache {
    client: aws_sdk_secretsmanager::Client,
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, SecretString)>>,
}

impl SecretCache {
    pub fn new(client: aws_sdk_secretsmanager::Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, secret_id: &str) -> Result<SecretString, SecretsError> {
        let cached = crate::lock(&self.entries).get(secret_id).cloned();
        if let Some((at, v)) = &cached {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        match fetch_string(&self.client, secret_id).await {
            Ok(v) => {
                crate::lock(&self.entries)
                    .insert(secret_id.to_owned(), (Instant::now(), v.clone()));
                Ok(v)
            }
            Err(e) => match cached {
                Some((_, stale)) => {
                    tracing::warn!(secret_id, error = %e, "secret refresh failed; using the cached value");
                    Ok(stale)
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    #[test]
    fn graph_token_is_the_bare_value_or_the_access_token_field() {
        assert_eq!(
            graph_token_of(&s(" EAAG1\n")).unwrap().expose_secret(),
            "EAAG1"
        );
        assert_eq!(
            graph_token_of(&s(r#"{"access_token":"EAAG2","note":"x"}"#))
                .unwrap()
                .expose_secret(),
            "EAAG2"
        );
        assert!(matches!(
            graph_token_of(&s(r#"{"token":"EAAG3"}"#)),
            Err(SecretsError::NotSet("access_token"))
        ));
        assert!(matches!(
            graph_token_of(&s("{oops")),
            Err(SecretsError::Malformed)
        ));
        assert!(graph_token_of(&s("  ")).is_err());
    }

    #[test]
    fn json_field_treats_empty_as_absent() {
        let v = s(r#"{"openai_api_key":"sk-1","graph_access_token":""}"#);
        assert_eq!(
            json_field(&v, KEY_OPENAI_API_KEY)
                .unwrap()
                .unwrap()
                .expose_secret(),
            "sk-1"
        );
        assert!(json_field(&v, KEY_GRAPH_ACCESS_TOKEN).unwrap().is_none());
        assert!(json_field(&v, "missing").unwrap().is_none());
    }
}
