//! The web chat endpoints (a `lambda_http` function behind its own Function URL, so the Meta
//! webhook keeps no database dependency):
//!
//! | Route | What |
//! |---|---|
//! | `POST /v1/sites/{site}/sessions` | a visitor token for the site (reuses the visitor of a still-valid token; optional identity verification) |
//! | `POST /v1/sites/{site}/messages` | Bearer token; `{client_message_id, text}` → 202, enqueued on the inbound FIFO queue |
//! | `GET /v1/sites/{site}/messages?after=ID&wait=S` | Bearer token; the visitor's messages after `after` (long poll up to `wait` s), and `pending` while the agent works |
//! | `OPTIONS` on the above | CORS preflight |
//! | `GET /widget.js` | the embeddable widget |
//!
//! Every response to a browser carries CORS headers only for the site's allowed origins; a
//! request from any other origin (or none) is refused before anything else is read. Every
//! rejection is a [`shared::http::Problem`], JSON `{"error": reason}`, and one log line with
//! the reason; no token, secret or message text is logged. Nothing is queued unless the whole
//! request is valid. The site and origin ([`AllowedSite`]) and the visitor's token
//! ([`Visitor`]) are extractors, checked in that order before a handler reads the body.

// No panics on data: request, queue or database values are matched, never unwrapped; the few
// start-up and plain-data cases carry an `allow` with their reason.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

pub mod config;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::ops::Deref;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::cache::TtlCache;
use shared::db::webchat::{site_by_key, visitor_messages, WebchatSite};
use shared::db::Db;
use shared::http::{first_query_value, Call, Problem};
use shared::metrics::Metrics;
use shared::queue::QueuePublisher;
use shared::webchat::{identity_matches, origin_allowed, visitor_message, TokenKey, VisitorClaims};
use shared::wire::inbound_message;
use tracing::{info, warn};

pub use config::{Config, Settings};
use shared::ratelimit::RateLimiter;

/// Messages returned per poll (and the history shown after a reload).
pub const PAGE: i64 = 50;
/// How often a long poll looks for new messages.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// The function: what [`Inner`] holds, shared by every request its [`App::router`] serves.
#[derive(Clone)]
pub struct App(Arc<Inner>);

impl Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The function's configuration, clients and caches.
pub struct Inner {
    settings: Settings,
    db: Db,
    key: TokenKey,
    publisher: QueuePublisher,
    limiter: RateLimiter,
    sites: TtlCache<String, Option<Arc<WebchatSite>>>,
    metrics: Metrics,
}

/// A request's answer, or the problem it met (`error` is the stable reason).
type Outcome = Result<Response, Problem>;

/// The path the routes are matched on: `…/widget.js` is the widget wherever it is served from,
/// and anything before a `v1` segment is a prefix (cargo lambda watch serves under
/// `/lambda-url/<fn>/`); empty segments do not count.
fn routed_path(path: &str) -> String {
    if path.ends_with("/widget.js") {
        return "/widget.js".to_owned();
    }
    shared::http::from_v1(path).unwrap_or_else(|| path.to_owned())
}

#[derive(Deserialize, Default)]
struct SessionRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    identifier: Option<String>,
    #[serde(default)]
    identifier_hash: Option<String>,
}

#[derive(Deserialize)]
struct MessageRequest {
    client_message_id: String,
    text: String,
}

impl App {
    /// The function as its environment describes it (cold start).
    pub async fn from_env(
        start: shared::bootstrap::Start,
    ) -> Result<Self, shared::bootstrap::StartError> {
        let config = Config::from_env()?;
        let secrets = start.secrets(config.common.secrets_ttl);
        let (database_url, signing_key) = config.resolve(&secrets).await?;
        let db = Db::new(shared::db::DbConfig::new(
            secrecy::ExposeSecret::expose_secret(&database_url),
        ));
        let key = TokenKey::new(secrecy::ExposeSecret::expose_secret(&signing_key).as_bytes());
        let metrics = config.common.metrics(start.function);
        Ok(Self::new(config.settings, db, key, &start.sdk, metrics))
    }

    pub fn new(
        settings: Settings,
        db: Db,
        key: TokenKey,
        sdk: &aws_config::SdkConfig,
        metrics: Metrics,
    ) -> Self {
        Self(Arc::new(Inner {
            metrics,
            publisher: QueuePublisher::new(
                aws_sdk_sqs::Client::new(sdk),
                shared::queue::RetryPolicy::default(),
            ),
            limiter: RateLimiter::new(
                aws_sdk_dynamodb::Client::new(sdk),
                settings.limits_table.clone(),
            ),
            sites: TtlCache::new(settings.site_cache_ttl),
            settings,
            db,
            key,
        }))
    }

    /// Running metric totals (tests read them).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl shared::http::Routed for App {
    /// The routes, matched on [`routed_path`]: `GET /widget.js`; `/v1/sites/{site}/sessions`
    /// (`POST`) and `/v1/sites/{site}/messages` (`POST` sends, `GET` polls), each also answering
    /// `OPTIONS` (the preflight); anything else 404 `no_such_route`. The site and the origin are
    /// checked ([`AllowedSite`]) before the method, so a wrong method on a site's route is 405
    /// only for an allowed origin. Every request runs in a span with its correlation id (not
    /// echoed), and ends with one EMF document (`Sessions`, `MessagesAccepted`, `Polls`,
    /// `Refusals` by `Reason`).
    fn router(&self) -> Router {
        let routes = Router::new()
            .route("/widget.js", any(widget_route))
            .route("/v1/sites/{site}/sessions", any(sessions_route))
            .route("/v1/sites/{site}/messages", any(messages_route))
            .fallback(no_route)
            .with_state(self.clone());
        shared::http::routed_on(routes, routed_path)
            .layer(DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                flush_metrics,
            ))
            .layer(axum::middleware::from_fn(shared::http::correlate))
    }
}

impl Inner {
    /// The answer to a request that passed the site and origin checks: CORS for its origin.
    fn answer(&self, outcome: Outcome, site: &AllowedSite) -> Response {
        match outcome {
            Ok(resp) => with_cors(resp, site.origin.as_deref()),
            Err(p) => self.refuse(p, site.origin.as_deref()),
        }
    }

    fn refuse(&self, problem: Problem, origin: Option<&str>) -> Response {
        self.metrics
            .count_by("Refusals", "Reason", problem.code().to_owned(), 1);
        refused(problem, origin)
    }

    async fn site(&self, key: &str) -> Result<Option<Arc<WebchatSite>>, Problem> {
        if key.is_empty() || key.len() > 128 {
            return Ok(None);
        }
        if let Some(hit) = self.sites.get(&key.to_owned()) {
            return Ok(hit);
        }
        match site_by_key(&self.db, key).await {
            Ok(site) => {
                let site = site.map(Arc::new);
                self.sites.put(key.to_owned(), site.clone());
                Ok(site)
            }
            Err(e) => {
                tracing::error!(error = %e, "site lookup failed");
                Err(
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
                        .retry_after(5),
                )
            }
        }
    }

    fn body_json<T: serde::de::DeserializeOwned + Default>(
        &self,
        req: &Call,
        optional: bool,
    ) -> Result<T, Problem> {
        let body: &[u8] = &req.body;
        if body.len() > self.settings.max_body_bytes {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
            ));
        }
        if optional && body.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        serde_json::from_slice(body).map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "bad_json"))
    }

    fn claims(&self, headers: &HeaderMap, site: &WebchatSite) -> Result<VisitorClaims, Problem> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Problem::new(StatusCode::UNAUTHORIZED, "token_missing"))?;
        let claims = self
            .key
            .verify(token.trim(), &site.site_key, now_secs())
            .map_err(|e| Problem::new(StatusCode::UNAUTHORIZED, e.reason()))?;
        // A site that starts requiring identity stops anonymous tokens issued before at once.
        if site.require_identity && claims.idn.is_none() {
            return Err(Problem::new(StatusCode::UNAUTHORIZED, "identity_required"));
        }
        Ok(claims)
    }

    async fn limit(&self, key: String, limit: u32) -> Result<(), Problem> {
        self.limiter
            .check(&key, limit)
            .await
            .map_err(|retry_after| {
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited").retry_after(retry_after)
            })
    }

    async fn start_session(&self, req: &Call, site: &WebchatSite) -> Outcome {
        let body: SessionRequest = self.body_json(req, true)?;
        let now = now_secs();
        let previous = body
            .token
            .as_deref()
            .and_then(|t| self.key.verify(t, &site.site_key, now).ok());
        let identity = match (&body.identifier, &body.identifier_hash) {
            (Some(id), Some(hash)) => {
                let secret = site.identity_secret.as_deref().ok_or(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "identity_not_enabled",
                ))?;
                if !identity_matches(secret.as_bytes(), id, hash) {
                    return Err(Problem::new(StatusCode::UNAUTHORIZED, "identity_mismatch"));
                }
                Some(id.clone())
            }
            (None, None) => None,
            _ => return Err(Problem::new(StatusCode::BAD_REQUEST, "identity_incomplete")),
        };
        if site.require_identity && identity.is_none() {
            return Err(Problem::new(StatusCode::UNAUTHORIZED, "identity_required"));
        }
        // A visitor keeps their conversation across reloads, and an anonymous visitor who logs
        // in keeps it too. A token of a verified customer never carries over to anyone else:
        // not to another identity, and not to an anonymous session (a logout, or the next
        // person at the same browser).
        let visitor = match previous {
            Some(p) if p.idn == identity || (p.idn.is_none() && identity.is_some()) => p.vid,
            _ => {
                // New sessions have their own budget, so a script minting sessions cannot use
                // up the one real visitors' messages need.
                self.limit(
                    format!("ss#{}", site.site_key),
                    self.settings.site_per_minute,
                )
                .await?;
                uuid::Uuid::new_v4().to_string()
            }
        };
        let claims = VisitorClaims {
            v: shared::webchat::TOKEN_VERSION,
            site: site.site_key.clone(),
            vid: visitor,
            exp: now + self.settings.session_ttl.as_secs() as i64,
            idn: identity,
        };
        info!(
            outcome = "session",
            verified = claims.idn.is_some(),
            "web chat session issued"
        );
        self.metrics.count("Sessions", 1);
        Ok(json_response(
            StatusCode::OK,
            &json!({"token": self.key.issue(&claims), "visitor_id": claims.vid, "expires_at": claims.exp}),
        ))
    }

    async fn send(
        &self,
        req: &Call,
        site: &WebchatSite,
        visitor: Result<Visitor, Problem>,
    ) -> Outcome {
        let correlation_id = req.correlation_id.as_str();
        let claims = visitor?.0;
        let body: MessageRequest = match self.body_json::<Option<MessageRequest>>(req, false)? {
            Some(b) => b,
            None => return Err(Problem::new(StatusCode::BAD_REQUEST, "bad_json")),
        };
        let env = visitor_message(
            &claims,
            &body.client_message_id,
            &body.text,
            shared::now_ms(),
            correlation_id,
        )
        .map_err(|e| {
            let status = if e == shared::webchat::MessageError::TooLong {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            Problem::new(status, e.reason())
        })?;
        self.limit(
            format!("v#{}#{}", site.site_key, claims.vid),
            self.settings.visitor_per_minute,
        )
        .await?;
        self.limit(
            format!("s#{}", site.site_key),
            self.settings.site_per_minute,
        )
        .await?;
        let id = env.provider_message_id.clone();
        let message = inbound_message(env, self.settings.ordering_scope);
        if let Err(e) = self
            .publisher
            .send_all(&self.settings.inbound_queue_url, vec![message])
            .await
        {
            tracing::error!(error = %e, outcome = "failed", reason = "queue_unavailable", "web chat message not queued");
            return Err(
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
                    .retry_after(2),
            );
        }
        info!(outcome = "accepted", "web chat message queued");
        self.metrics.count("MessagesAccepted", 1);
        Ok(json_response(StatusCode::ACCEPTED, &json!({"id": id})))
    }

    async fn poll(
        &self,
        req: &Call,
        site: &WebchatSite,
        visitor: Result<Visitor, Problem>,
    ) -> Outcome {
        let claims = visitor?.0;
        let number = |name: &str, max: i64| -> Result<i64, Problem> {
            match first_query_value(req.query(), name).as_deref() {
                None => Ok(0),
                Some(v) => v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (0..=max).contains(n))
                    .ok_or(Problem::new(StatusCode::BAD_REQUEST, "bad_query")),
            }
        };
        let after = number("after", i64::MAX)?;
        let wait = Duration::from_secs(number("wait", 3600)? as u64).min(self.settings.max_wait);
        let deadline = Instant::now() + wait;
        loop {
            let (messages, pending) = visitor_messages(&self.db, site, &claims.vid, after, PAGE)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "reading the conversation failed");
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
                        .retry_after(2)
                })?;
            if !messages.is_empty() || Instant::now() + POLL_EVERY > deadline {
                self.metrics.count("Polls", 1);
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"messages": messages, "pending": pending}),
                ));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// A request's site, found and open to the request's origin. Refused otherwise (404
/// `unknown_site`, 403 `origin_not_allowed`, 503 when the lookup fails), without CORS and
/// before anything else of the request is read.
pub struct AllowedSite {
    site: Arc<WebchatSite>,
    origin: Option<String>,
}

impl FromRequestParts<App> for AllowedSite {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        // A key that does not decode names no site.
        let key = Path::<String>::from_request_parts(parts, app)
            .await
            .map(|Path(key)| key)
            .unwrap_or_default();
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let site = match app.site(&key).await {
            Ok(Some(site)) => site,
            Ok(None) => {
                return Err(app.refuse(Problem::new(StatusCode::NOT_FOUND, "unknown_site"), None))
            }
            Err(p) => return Err(app.refuse(p, None)),
        };
        if !origin_allowed(origin.as_deref(), &site.allowed_origins) {
            return Err(app.refuse(
                Problem::new(StatusCode::FORBIDDEN, "origin_not_allowed"),
                None,
            ));
        }
        parts.extensions.insert(Arc::clone(&site));
        Ok(Self { site, origin })
    }
}

/// The visitor a request's token names (`Authorization: Bearer <token>`), checked against the
/// request's site: [`AllowedSite`] runs first and leaves the site in the request. Refused 401
/// (`token_missing`, the token's own reason, `identity_required`). Routes that also answer
/// without a token take it as a `Result` and look only where a token is needed.
pub struct Visitor(VisitorClaims);

impl FromRequestParts<App> for Visitor {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Problem> {
        match parts.extensions.get::<Arc<WebchatSite>>() {
            Some(site) => app.claims(&parts.headers, site).map(Visitor),
            None => Err(Problem::new(StatusCode::NOT_FOUND, "unknown_site")),
        }
    }
}

fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
}

fn no_such_route(app: &Inner) -> Response {
    app.refuse(Problem::new(StatusCode::NOT_FOUND, "no_such_route"), None)
}

/// `GET` serves the widget; any other method is no route.
async fn widget_route(State(app): State<App>, method: Method) -> Response {
    if method == Method::GET {
        widget()
    } else {
        no_such_route(&app)
    }
}

async fn no_route(State(app): State<App>) -> Response {
    no_such_route(&app)
}

/// `POST` issues a visitor token; `OPTIONS` is the preflight.
async fn sessions_route(State(app): State<App>, site: AllowedSite, req: Call) -> Response {
    let outcome = match req.method {
        Method::OPTIONS => Ok(preflight()),
        Method::POST => app.start_session(&req, &site.site).await,
        _ => Err(method_not_allowed()),
    };
    app.answer(outcome, &site)
}

/// `POST` sends a message, `GET` polls for the conversation; `OPTIONS` is the preflight.
async fn messages_route(
    State(app): State<App>,
    site: AllowedSite,
    visitor: Result<Visitor, Problem>,
    req: Call,
) -> Response {
    let outcome = match req.method {
        Method::OPTIONS => Ok(preflight()),
        Method::POST => app.send(&req, &site.site, visitor).await,
        Method::GET => app.poll(&req, &site.site, visitor).await,
        _ => Err(method_not_allowed()),
    };
    app.answer(outcome, &site)
}

/// One EMF document per request, after its answer.
async fn flush_metrics(State(app): State<App>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    app.metrics.flush();
    resp
}

/// The embeddable widget (functions/webchat/widget/widget.js), served by the function itself
/// so the `<script src>` and the endpoints share one base URL.
pub const WIDGET_JS: &str = include_str!("../widget/widget.js");

fn widget() -> Response {
    shared::response::with_headers(
        StatusCode::OK,
        &[
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        Body::from(WIDGET_JS),
    )
}

fn now_secs() -> i64 {
    shared::now_ms() / 1000
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    shared::response::json_no_store(status, body)
}

fn preflight() -> Response {
    shared::response::with_headers(
        StatusCode::NO_CONTENT,
        &[
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type, x-correlation-id",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
        Body::empty(),
    )
}

fn with_cors(mut resp: Response, origin: Option<&str>) -> Response {
    let headers = resp.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(v) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        headers.insert("access-control-allow-origin", v);
        headers.insert(
            "access-control-expose-headers",
            HeaderValue::from_static("retry-after"),
        );
    }
    resp
}

fn refused(problem: Problem, origin: Option<&str>) -> Response {
    warn!(
        outcome = "rejected",
        status = problem.status().as_u16(),
        reason = problem.code(),
        "web chat request refused"
    );
    with_cors(problem.into_response(), origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_matched_behind_any_prefix() {
        for (path, routed) in [
            ("/v1/sites/s1/sessions", "/v1/sites/s1/sessions"),
            (
                "/lambda-url/webchat/v1/sites/s1/messages",
                "/v1/sites/s1/messages",
            ),
            ("//v1//sites/s1/messages/", "/v1/sites/s1/messages"),
            ("/lambda-url/webchat/widget.js", "/widget.js"),
            ("/v1/sites/s1/widget.js", "/widget.js"),
            ("/", "/"),
            ("/elsewhere", "/elsewhere"),
            ("/v1/sites/s1/messages/x", "/v1/sites/s1/messages/x"),
        ] {
            assert_eq!(routed_path(path), routed, "{path}");
        }
    }
}
