//! The admin API (a `lambda_http` function behind its own Function URL): JSON REST under `/v1`
//! for the platform operator (tenants, top-ups) and for each tenant (channel accounts, agents,
//! credits, conversations, leads, human handoff, outbound webhook, API keys).
//!
//! Every request: route and method ([`extract::Matched`]) → API key (`Authorization: Bearer
//! aak_…`) and the rate limits per address and per key ([`extract::Caller`]) → role check →
//! body limit → handler. The routes, with the role each needs, are [`routes::ROUTES`]; the
//! OpenAPI document (`openapi.yaml`, served at `GET /v1/openapi.yaml`) is checked against that
//! table by a test. Errors are [`shared::http::Problem`]s, JSON `{"error": code, "message":
//! text}` (plus `fields` on 422): 401 no or bad key, 403 role, 404 unknown id *or another
//! tenant's id* (existence is never revealed), 409 state conflict, 422 invalid fields, 429
//! with `Retry-After`. One log line per request with route, status and key prefix; never a
//! key, secret or message text.

// No panics on data: request, queue or database values are matched, never unwrapped; the few
// start-up and plain-data cases carry an `allow` with their reason.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

pub mod config;
pub mod routes;

mod api;
mod extract;
mod input;

use extract::{Caller, Matched};

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value as Json};
use shared::db::apikeys::{Principal, Role};
use shared::db::{Db, DbError, TenantId};
use shared::graph::{GraphClient, GraphTokens};
use shared::http::{Call, Problem};
use shared::metrics::Metrics;
use shared::queue::QueuePublisher;
use shared::ratelimit::RateLimiter;
use tracing::{info, warn};

pub use config::{Config, Settings};
use routes::Access;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// Largest page a list returns (`limit` defaults to 50).
pub const MAX_PAGE: i64 = 200;

/// The API: what [`Inner`] holds, shared by every request its [`App::router`] serves.
#[derive(Clone)]
pub struct App(Arc<Inner>);

impl Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The API's configuration and clients.
pub struct Inner {
    settings: Settings,
    db: Db,
    limiter: RateLimiter,
    graph: GraphClient,
    tokens: GraphTokens,
    publisher: QueuePublisher,
    metrics: Metrics,
}

/// A failed request, mapped to one status and JSON body.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    Forbidden(String),
    NotFound,
    MethodNotAllowed,
    BadRequest(&'static str, String),
    Invalid(BTreeMap<String, String>),
    Conflict(&'static str, String),
    Limited(u64),
    /// Meta refused or failed a send: message, Meta's code, the parts that did go out.
    Upstream(String, Option<i64>, Json),
    /// The database (or another dependency) is unreachable; worth retrying.
    Unavailable,
    Internal,
}

impl ApiError {
    /// A 422 about one field.
    pub fn field(name: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid(BTreeMap::from([(name.to_owned(), message.into())]))
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(..) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(..) => StatusCode::CONFLICT,
            ApiError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream(..) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable code for the body and the log line.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::BadRequest(code, _) => code,
            ApiError::Invalid(_) => "invalid",
            ApiError::Conflict(code, _) => code,
            ApiError::Limited(_) => "rate_limited",
            ApiError::Upstream(..) => "send_failed",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// The problem this error answers as (the one JSON error shape of every function).
    fn problem(&self) -> Problem {
        let problem = Problem::new(self.status(), self.code());
        match self {
            ApiError::Unauthorized => {
                problem.message("send a valid API key as `Authorization: Bearer aak_…`")
            }
            ApiError::Forbidden(m) | ApiError::BadRequest(_, m) | ApiError::Conflict(_, m) => {
                problem.message(m.clone())
            }
            ApiError::NotFound => problem.message("no such resource"),
            ApiError::MethodNotAllowed => problem.message("this path does not take that method"),
            ApiError::Invalid(fields) => problem
                .message("some fields are invalid")
                .detail("fields", json!(fields)),
            ApiError::Limited(secs) => problem
                .message(format!("too many requests for this key; retry in {secs} s"))
                .retry_after(*secs),
            ApiError::Upstream(m, code, sent) => {
                let problem = problem.message(m.clone()).detail("sent", sent.clone());
                match code {
                    Some(c) => problem.detail("provider_code", json!(c)),
                    None => problem,
                }
            }
            ApiError::Unavailable => problem.message("a dependency is unavailable; retry shortly"),
            ApiError::Internal => problem.message("internal error"),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if let DbError::Postgres(pg) = &e {
            if let Some(db) = pg.as_db_error() {
                match db.code().code() {
                    "23505" => {
                        return ApiError::Conflict(
                            "already_exists",
                            "a resource with that identity already exists".into(),
                        )
                    }
                    // check / not-null / invalid text: a value the schema refuses
                    "23514" | "23502" | "22P02" | "22007" | "22008" | "22003" | "22021"
                    | "22P05" => return ApiError::field("_", db.message().to_owned()),
                    _ => {}
                }
            }
        }
        if e.is_retryable() {
            warn!(error = %e, "database unavailable");
            ApiError::Unavailable
        } else {
            tracing::error!(error = %e, "database error");
            ApiError::Internal
        }
    }
}

/// What a handler returns.
pub enum Reply {
    Json(StatusCode, Json),
    Csv(String, Option<String>),
    Yaml(&'static str),
}

impl Reply {
    pub fn ok(v: Json) -> Self {
        Reply::Json(StatusCode::OK, v)
    }
    pub fn created(v: Json) -> Self {
        Reply::Json(StatusCode::CREATED, v)
    }
}

fn json_response(status: StatusCode, body: &Json) -> Response {
    shared::response::json_no_store(status, body)
}

/// A tenant route reached with a key of no tenant.
fn no_tenant() -> ApiError {
    ApiError::Forbidden("this route needs a tenant key".into())
}

/// One request, as the handlers see it.
pub struct Ctx<'a> {
    pub app: &'a Inner,
    pub who: &'a Principal,
    pub params: Vec<String>,
    pub query: BTreeMap<String, String>,
    pub body: &'a [u8],
}

impl Ctx<'_> {
    /// The caller's tenant (tenant routes are only dispatched to tenant keys, so a key without
    /// one never gets here; if it did, it would be refused, not abort the instance).
    pub fn tenant(&self) -> Result<TenantId, ApiError> {
        self.who.tenant.ok_or_else(no_tenant)
    }

    /// Path parameter `i` as a UUID; anything else names nothing (404).
    pub fn id(&self, i: usize) -> Result<uuid::Uuid, ApiError> {
        self.params
            .get(i)
            .and_then(|p| uuid::Uuid::parse_str(p).ok())
            .ok_or(ApiError::NotFound)
    }

    /// `limit` query parameter (1..=MAX_PAGE, default 50).
    pub fn limit(&self) -> Result<i64, ApiError> {
        self.limit_within(50, MAX_PAGE)
    }

    /// `limit` query parameter in 1..=`max`, `default` when absent.
    pub fn limit_within(&self, default: i64, max: i64) -> Result<i64, ApiError> {
        match self.query.get("limit") {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::field("limit", format!("an integer from 1 to {max}"))),
        }
    }

    /// The decoded `cursor` query parameter (what [`cursor`] made), if any.
    pub fn cursor(&self) -> Result<Option<Json>, ApiError> {
        let Some(raw) = self.query.get("cursor") else {
            return Ok(None);
        };
        URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
            .filter(Json::is_array)
            .map(Some)
            .ok_or_else(|| ApiError::field("cursor", "not a cursor this API returned"))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.app.metrics
    }
}

/// An opaque page cursor for the keyset `key` (e.g. `[updated_at, id]` of the last row).
pub fn cursor(key: Json) -> String {
    URL_SAFE_NO_PAD.encode(key.to_string())
}

/// A page of `rows` (fetched with `limit + 1` to know whether more follow) as
/// `{"data": [...], "next_cursor": ...}`. Each row carries its keyset as `_k` (removed here).
pub fn page(mut rows: Vec<Json>, limit: i64) -> Json {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|r| json!(cursor(r["_k"].clone())))
    } else {
        None
    };
    for r in &mut rows {
        if let Some(o) = r.as_object_mut() {
            o.remove("_k");
        }
    }
    json!({"data": rows, "next_cursor": next})
}

impl App {
    /// The API as its environment describes it (cold start).
    pub async fn from_env(
        start: shared::bootstrap::Start,
    ) -> Result<Self, shared::bootstrap::StartError> {
        let config = Config::from_env()?;
        let secrets = start.secrets(config.common.secrets_ttl);
        let db = config.database.connect(&secrets).await?;
        let tokens = config.graph.tokens(secrets).await?;
        let metrics = config.common.metrics(start.function);
        Ok(Self::new(config.settings, db, &start.sdk, tokens, metrics))
    }

    pub fn new(
        settings: Settings,
        db: Db,
        sdk: &aws_config::SdkConfig,
        tokens: GraphTokens,
        metrics: Metrics,
    ) -> Self {
        Self(Arc::new(Inner {
            limiter: RateLimiter::new(
                aws_sdk_dynamodb::Client::new(sdk),
                settings.limits_table.clone(),
            ),
            graph: GraphClient::new(
                settings.graph_base_url.clone(),
                settings.instagram_graph_base_url.clone(),
            ),
            publisher: QueuePublisher::new(
                aws_sdk_sqs::Client::new(sdk),
                shared::queue::RetryPolicy::default(),
            ),
            settings,
            db,
            tokens,
            metrics,
        }))
    }
}

impl shared::http::Routed for App {
    /// The routes of [`routes::ROUTES`], matched on the path from its first `v1` segment (any
    /// prefix before it, empty segments ignored): an unknown path 404, a known path with
    /// another method 405 (no `Allow` header), both before the key is read. Every request runs
    /// in a span with its correlation id (not echoed) and ends with one log line (route,
    /// status, key prefix) and one EMF document (`Requests` by `Status`).
    fn router(&self) -> Router {
        let mut paths: Vec<&'static str> = Vec::new();
        for spec in routes::ROUTES {
            if !paths.contains(&spec.path) {
                paths.push(spec.path);
            }
        }
        let mut routes = Router::new();
        for template in paths {
            let public = routes::ROUTES
                .iter()
                .any(|r| r.path == template && r.access == Access::Public);
            routes = if public {
                routes.route(template, any(openapi))
            } else {
                routes.route(template, any(keyed))
            };
        }
        let routes = routes
            .fallback(|| async { served(None, None, Err(ApiError::NotFound)) })
            .with_state(self.clone());
        shared::http::routed_on(routes, routed_path)
            .layer(DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn_with_state(self.clone(), account))
            .layer(axum::middleware::from_fn(shared::http::correlate))
    }
}

/// The path the routes are matched on: from the first `v1` segment, empty segments dropped;
/// a path with no `v1` segment is left as it is (and matches nothing).
fn routed_path(path: &str) -> String {
    shared::http::from_v1(path).unwrap_or_else(|| path.to_owned())
}

/// The OpenAPI document: no key.
async fn openapi(route: Matched) -> Response {
    served(Some(route.spec.path), None, Ok(Reply::Yaml(OPENAPI_YAML)))
}

/// Every other route: the route, then the key, then the request.
async fn keyed(State(app): State<App>, route: Matched, caller: Caller, call: Call) -> Response {
    app.serve(route, caller, call).await
}

/// What [`account`] logs of a request, left on its response by the handler.
#[derive(Clone)]
struct Served {
    route: Option<&'static str>,
    key: Option<String>,
}

/// The answer for a result, carrying what the log line needs.
fn served(
    route: Option<&'static str>,
    key: Option<String>,
    result: Result<Reply, ApiError>,
) -> Response {
    let mut resp = match result {
        Ok(reply) => render(reply),
        Err(e) => {
            let r = e.problem().into_response();
            if r.status().is_server_error() {
                warn!(error = e.code(), "request failed");
            }
            r
        }
    };
    resp.extensions_mut().insert(Served { route, key });
    resp
}

/// One log line and one EMF document per request, after its answer.
async fn account(State(app): State<App>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let served = resp.extensions().get::<Served>().cloned();
    let (route, key) = match &served {
        Some(s) => (s.route, s.key.as_deref()),
        None => (None, None),
    };
    info!(
        method = %method,
        route = route.unwrap_or("unmatched"),
        key = key.unwrap_or("-"),
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "admin request"
    );
    app.metrics
        .count_by("Requests", "Status", resp.status().as_u16().to_string(), 1);
    app.metrics.flush();
    resp
}

impl Inner {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn graph(&self) -> &GraphClient {
        &self.graph
    }

    fn tokens(&self) -> &GraphTokens {
        &self.tokens
    }

    fn publisher(&self) -> &QueuePublisher {
        &self.publisher
    }

    /// Running metric totals (tests read them).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// A keyed request: the role its route needs, the body limit, the handler.
    async fn serve(&self, route: Matched, caller: Caller, call: Call) -> Response {
        let result = self
            .authorised(&call, route.spec, route.params, &caller.who)
            .await;
        served(Some(route.spec.path), caller.prefix, result)
    }

    async fn authorised(
        &self,
        req: &Call,
        spec: &'static routes::RouteSpec,
        params: Vec<String>,
        who: &Principal,
    ) -> Result<Reply, ApiError> {
        match spec.access {
            Access::Public | Access::AnyKey => {}
            Access::Platform if who.role == Role::Platform => {}
            Access::Platform => {
                return Err(ApiError::Forbidden(
                    "this route needs the platform key".into(),
                ))
            }
            Access::Tenant(_) if who.role == Role::Platform => {
                return Err(ApiError::Forbidden(
                    "this route needs a tenant key; the platform key manages tenants".into(),
                ))
            }
            Access::Tenant(required) => {
                let tenant = who.tenant.ok_or_else(no_tenant)?;
                if !who.may(tenant, required) {
                    return Err(ApiError::Forbidden(format!(
                        "this route needs the {} role",
                        required.as_str()
                    )));
                }
            }
        }
        let body: &[u8] = &req.body;
        if body.len() > self.settings.max_body_bytes {
            return Err(ApiError::BadRequest(
                "body_too_large",
                format!(
                    "bodies are limited to {} bytes",
                    self.settings.max_body_bytes
                ),
            ));
        }
        let query = req
            .query()
            .map(|q| {
                form_pairs(q)
                    .into_iter()
                    .collect::<BTreeMap<String, String>>()
            })
            .unwrap_or_default();
        let ctx = Ctx {
            app: self,
            who,
            params,
            query,
            body,
        };
        api::dispatch(spec.op, &ctx).await
    }
}

/// `a=1&b=x%20y` → pairs, percent- and plus-decoded.
fn form_pairs(q: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

fn render(reply: Reply) -> Response {
    match reply {
        Reply::Json(status, body) => json_response(status, &body),
        Reply::Csv(text, next) => {
            let mut resp = shared::response::with_headers(
                StatusCode::OK,
                &[
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"leads.csv\"",
                    ),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                Body::from(text),
            );
            if let Some(n) = next {
                // The cursor is this API's own base64url, so it is always a valid header value.
                match HeaderValue::from_str(&n) {
                    Ok(v) => {
                        resp.headers_mut().insert("x-next-cursor", v);
                    }
                    Err(_) => {
                        tracing::error!(
                            outcome = "failed",
                            reason = "bad_cursor",
                            "export cursor is not a header value"
                        );
                        return ApiError::Internal.problem().into_response();
                    }
                }
            }
            resp
        }
        Reply::Yaml(text) => shared::response::with_headers(
            StatusCode::OK,
            &[(header::CONTENT_TYPE, "application/yaml")],
            Body::from(text),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            form_pairs("mode=human&updated_since=2026-01-01T00%3A00%3A00Z&x=a+b&bad=%zz&&t=%4"),
            vec![
                ("mode".to_owned(), "human".to_owned()),
                (
                    "updated_since".to_owned(),
                    "2026-01-01T00:00:00Z".to_owned()
                ),
                ("x".to_owned(), "a b".to_owned()),
                ("bad".to_owned(), "%zz".to_owned()),
                ("t".to_owned(), "%4".to_owned()),
            ]
        );
    }

    #[test]
    fn pages_carry_a_cursor_only_when_more_rows_follow() {
        let rows: Vec<Json> = (1..=3).map(|i| json!({"id": i, "_k": [i]})).collect();
        let p = page(rows.clone(), 2);
        assert_eq!(p["data"], json!([{"id": 1}, {"id": 2}]));
        let c = p["next_cursor"].as_str().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(c).unwrap(), b"[2]");
        let p = page(rows, 3);
        assert!(p["next_cursor"].is_null());
    }
}
