//! Meta Graph API sends: WhatsApp text, mark-as-read with typing indicator, Instagram text.
//! Errors are classified from the error `code` (never the HTTP status or title), per apis.md §3.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value as Json};

/// Pinned Graph API version.
pub const GRAPH_VERSION: &str = "v25.0";

/// Longest a send may take (the turn engine keeps this much of its time budget per part).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Graph API error {code} (HTTP {status})")]
pub struct SendError {
    /// Meta's error code; 0 when there was none (transport failure, unparseable body).
    pub code: i64,
    pub status: u16,
    pub retryable: bool,
    /// The request was written but no usable answer came back (timeout or reset after
    /// sending, a 2xx without a message id): Meta may have accepted it. An error *response*
    /// or a connection that never opened is not ambiguous: nothing was sent.
    pub ambiguous: bool,
}

impl SendError {
    /// No connection: the request was never written.
    fn not_connected() -> Self {
        Self {
            code: 0,
            status: 0,
            retryable: true,
            ambiguous: false,
        }
    }

    /// Written, and no answer (or an unreadable one) came back.
    fn no_answer(status: u16) -> Self {
        Self {
            code: 0,
            status,
            retryable: true,
            ambiguous: true,
        }
    }
}

/// Whether a Graph error code is worth retrying (rate limits, temporary errors). Everything else,
/// e.g. 131047 (24 h window closed), 131026 (undeliverable), 190 (token expired), 100 (bad
/// parameter), 131049/131050 (marketing suppressed / opted out), 368/131031 (restricted) is
/// recorded, not retried.
pub fn is_retryable_code(code: i64) -> bool {
    matches!(
        code,
        1 | 2 | 4 | 80007 | 130429 | 131000 | 131016 | 131056 | 131057
    )
}

/// Who a WhatsApp message goes to: the phone (wa_id) when known, else the business-scoped id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaRecipient {
    WaId(String),
    Bsuid(String),
}

/// The new message id at `pointer` of a success body. A 2xx without one is a send Meta
/// accepted that we cannot name: ambiguous (sending again could duplicate it).
fn id_at(out: &Json, pointer: &str) -> Result<String, SendError> {
    out.pointer(pointer)
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or(SendError {
            code: 0,
            status: 200,
            retryable: false,
            ambiguous: true,
        })
}

#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    /// `https://graph.facebook.com/v25.0` in production; a stub in tests and the local stack.
    facebook_base: String,
    /// `https://graph.instagram.com/v25.0` (Instagram Login accounts).
    instagram_base: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: i64,
}

impl GraphClient {
    pub fn new(facebook_base: impl Into<String>, instagram_base: impl Into<String>) -> Self {
        Self::with_http(
            crate::netguard::http_client(),
            facebook_base,
            instagram_base,
            SEND_TIMEOUT,
        )
    }

    /// The client on a builder of the caller's (the network guard's test passes its own) with
    /// a request timeout of `timeout`.
    #[allow(
        clippy::expect_used,
        reason = "built once at start-up; fails only when the TLS backend cannot start"
    )]
    pub fn with_http(
        builder: reqwest::ClientBuilder,
        facebook_base: impl Into<String>,
        instagram_base: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            http: builder
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(3))
                .build()
                .expect("HTTP client"),
            facebook_base: facebook_base.into(),
            instagram_base: instagram_base.into(),
        }
    }

    fn whatsapp_messages_url(&self, phone_number_id: &str) -> String {
        format!("{}/{phone_number_id}/messages", self.facebook_base)
    }

    pub fn production() -> Self {
        Self::new(
            format!("https://graph.facebook.com/{GRAPH_VERSION}"),
            format!("https://graph.instagram.com/{GRAPH_VERSION}"),
        )
    }

    async fn post(&self, url: String, token: &SecretString, body: Json) -> Result<Json, SendError> {
        let resp = self
            .http
            .post(url)
            .bearer_auth(token.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    SendError::not_connected()
                } else {
                    SendError::no_answer(0)
                }
            })?;
        let status = resp.status().as_u16();
        let ok = (200..300).contains(&status);
        let bytes = resp.bytes().await.map_err(|_| {
            if ok {
                SendError::no_answer(status)
            } else {
                // An error status is an answer: nothing was sent.
                SendError {
                    code: 0,
                    status,
                    retryable: status >= 500 || status == 429,
                    ambiguous: false,
                }
            }
        })?;
        if ok {
            return serde_json::from_slice(&bytes).map_err(|_| SendError {
                code: 0,
                status,
                retryable: false,
                ambiguous: true,
            });
        }
        match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(e) => Err(SendError {
                code: e.error.code,
                status,
                retryable: is_retryable_code(e.error.code) || (e.error.code == 0 && status >= 500),
                ambiguous: false,
            }),
            // A 5xx without Meta's error body came from something in between (a load
            // balancer, a gateway timeout) after the request may have reached Meta: ambiguous.
            Err(_) if status >= 500 => Err(SendError::no_answer(status)),
            Err(_) => Err(SendError {
                code: 0,
                status,
                retryable: status == 429,
                ambiguous: false,
            }),
        }
    }

    /// Sends a WhatsApp text (≤ 4096 chars: split first) and returns the new wamid.
    pub async fn send_whatsapp_text(
        &self,
        token: &SecretString,
        phone_number_id: &str,
        to: &WaRecipient,
        body: &str,
        reply_to: Option<&str>,
    ) -> Result<String, SendError> {
        self.whatsapp_send(token, phone_number_id, to, body, reply_to, None)
            .await
    }

    /// A WhatsApp text with its send tag: Meta echoes `tag` as `biz_opaque_callback_data` in
    /// the message's status webhooks.
    async fn whatsapp_send(
        &self,
        token: &SecretString,
        phone_number_id: &str,
        to: &WaRecipient,
        body: &str,
        reply_to: Option<&str>,
        tag: Option<&str>,
    ) -> Result<String, SendError> {
        let mut msg = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "type": "text",
            "text": {"preview_url": false, "body": body},
        });
        match to {
            WaRecipient::WaId(w) => msg["to"] = json!(w),
            WaRecipient::Bsuid(b) => msg["recipient"] = json!(b),
        }
        if let Some(id) = reply_to {
            msg["context"] = json!({"message_id": id});
        }
        if let Some(tag) = tag {
            msg["biz_opaque_callback_data"] = json!(tag);
        }
        let out = self
            .post(self.whatsapp_messages_url(phone_number_id), token, msg)
            .await?;
        id_at(&out, "/messages/0/id")
    }

    /// Marks the inbound message read and shows the typing indicator (up to 25 s or until the
    /// reply). Best effort: callers log a failure and go on.
    pub async fn mark_read_and_typing(
        &self,
        token: &SecretString,
        phone_number_id: &str,
        inbound_wamid: &str,
    ) -> Result<(), SendError> {
        let body = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": inbound_wamid,
            "typing_indicator": {"type": "text"},
        });
        self.post(self.whatsapp_messages_url(phone_number_id), token, body)
            .await
            .map(|_| ())
    }

    /// Sends an Instagram text (≤ 1000 UTF-8 bytes: split first) and returns the new mid.
    pub async fn send_instagram_text(
        &self,
        token: &SecretString,
        ig_account_id: &str,
        igsid: &str,
        text: &str,
    ) -> Result<String, SendError> {
        self.instagram_send(token, ig_account_id, igsid, text, None)
            .await
    }

    async fn instagram_send(
        &self,
        token: &SecretString,
        ig_account_id: &str,
        igsid: &str,
        text: &str,
        tag: Option<&str>,
    ) -> Result<String, SendError> {
        let mut body = json!({"recipient": {"id": igsid}, "message": {"text": text}});
        if let Some(tag) = tag {
            body["messaging_type"] = json!("MESSAGE_TAG");
            body["tag"] = json!(tag);
        }
        let out = self
            .post(
                format!("{}/{ig_account_id}/messages", self.instagram_base),
                token,
                body,
            )
            .await?;
        id_at(&out, "/message_id")
    }
}

/// The customer a reply goes to: the envelope's contact id (BSUID / IGSID / visitor id) and,
/// for WhatsApp, the phone's wa_id when known.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    pub contact_id: &'a str,
    pub wa_id: Option<&'a str>,
}

/// How one part goes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct PartOpts<'a> {
    /// Tag an Instagram message HUMAN_AGENT (human-written replies after 24 h only).
    pub human_agent: bool,
    /// The send tag WhatsApp echoes in the statuses (`shared::turn::send_tag`).
    pub tag: Option<&'a str>,
}

impl GraphClient {
    /// Sends one channel-sized part (see `split::split_for`) of a reply and returns its
    /// provider message id. Web chat is not sent anywhere: the stored row is the delivery (the
    /// widget polls for it), so the id is made here.
    pub async fn send_part(
        &self,
        channel: crate::envelope::Channel,
        token: &SecretString,
        account: &str,
        to: Recipient<'_>,
        text: &str,
        opts: PartOpts<'_>,
    ) -> Result<String, SendError> {
        use crate::envelope::Channel;
        match channel {
            Channel::Whatsapp => {
                let recipient = match to.wa_id {
                    Some(w) => WaRecipient::WaId(w.to_owned()),
                    None => WaRecipient::Bsuid(to.contact_id.to_owned()),
                };
                self.whatsapp_send(token, account, &recipient, text, None, opts.tag)
                    .await
            }
            Channel::Instagram => {
                let tag = opts.human_agent.then_some("HUMAN_AGENT");
                self.instagram_send(token, account, to.contact_id, text, tag)
                    .await
            }
            Channel::Webchat => Ok(format!("wc.out.{}", uuid::Uuid::new_v4().simple())),
        }
    }
}

/// The Graph API as a function's environment names it (processor, admin): `GRAPH_BASE_URL`
/// and `INSTAGRAM_GRAPH_BASE_URL` (Meta's by default), `TOKEN_SECRET_PREFIX`, and the default
/// token: `GRAPH_ACCESS_TOKEN`, else the `graph_access_token` field of `APP_SECRET_ID`.
#[derive(Debug)]
pub struct GraphSettings {
    pub base_url: String,
    pub instagram_base_url: String,
    /// Names every per-account token secret must have: `<prefix><provider account id>`.
    pub token_secret_prefix: Option<String>,
    pub access_token: Option<SecretString>,
    pub app_secret_id: Option<String>,
}

impl GraphSettings {
    pub fn read(env: &mut crate::config::EnvReader<'_>) -> Self {
        Self {
            base_url: env.base_url(
                "GRAPH_BASE_URL",
                &format!("https://graph.facebook.com/{GRAPH_VERSION}"),
            ),
            instagram_base_url: env.base_url(
                "INSTAGRAM_GRAPH_BASE_URL",
                &format!("https://graph.instagram.com/{GRAPH_VERSION}"),
            ),
            token_secret_prefix: env.optional("TOKEN_SECRET_PREFIX"),
            access_token: env.optional("GRAPH_ACCESS_TOKEN").map(SecretString::from),
            app_secret_id: env.optional("APP_SECRET_ID"),
        }
    }

    pub fn client(&self) -> GraphClient {
        GraphClient::new(self.base_url.clone(), self.instagram_base_url.clone())
    }

    /// The accounts' tokens, from `secrets`, with the deployment's default token read now.
    pub async fn tokens(
        &self,
        secrets: crate::secrets::SecretCache,
    ) -> Result<GraphTokens, crate::secrets::SecretsError> {
        let default = crate::secrets::app_value(
            self.access_token.as_ref(),
            self.app_secret_id.as_deref(),
            crate::secrets::KEY_GRAPH_ACCESS_TOKEN,
            &secrets,
        )
        .await?;
        Ok(GraphTokens {
            secrets,
            default,
            prefix: self.token_secret_prefix.clone(),
        })
    }
}

/// Where a channel account's Graph API token comes from: the Secrets Manager secret the account
/// names (`channel_accounts.access_token_secret`, cached), else the deployment's default token.
pub struct GraphTokens {
    pub secrets: crate::secrets::SecretCache,
    pub default: Option<SecretString>,
    /// When set (deployed: `<stack>/channel/`), an account's secret must be named
    /// `<prefix><provider account id>`: a row naming another account's secret must not make
    /// us send with that account's token.
    pub prefix: Option<String>,
}

/// Why no token could be had for an account.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct TokenError {
    /// Secrets Manager trouble that may pass; otherwise a configuration fault.
    pub retryable: bool,
    pub reason: String,
}

impl GraphTokens {
    /// The token for the account `provider_account_id` whose row names `secret_id`.
    pub async fn for_account(
        &self,
        secret_id: Option<&str>,
        provider_account_id: &str,
    ) -> Result<SecretString, TokenError> {
        let fault = |reason: String| TokenError {
            retryable: false,
            reason,
        };
        match (secret_id, &self.default) {
            (Some(id), _) => {
                if let Some(prefix) = &self.prefix {
                    if id.strip_prefix(prefix.as_str()) != Some(provider_account_id) {
                        return Err(fault(format!(
                            "the account's token secret must be named {prefix}{provider_account_id}"
                        )));
                    }
                }
                let value = self.secrets.get(id).await.map_err(|e| TokenError {
                    retryable: e.is_retryable(),
                    reason: e.to_string(),
                })?;
                crate::secrets::graph_token_of(&value).map_err(|e| fault(e.to_string()))
            }
            (None, Some(token)) => Ok(token.clone()),
            (None, None) => Err(fault(
                "the channel account names no token secret and no default Graph token is set"
                    .into(),
            )),
        }
    }
}
