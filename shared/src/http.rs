//! The HTTP edge the Function URL functions (webhook, web chat, admin) share: each is an axum
//! `Router` that `lambda_http::run` serves in Lambda and that tests call with `oneshot`.
//!
//! - [`correlate`]: the middleware every router runs first: it takes the caller's
//!   `x-correlation-id` when it is a sane token (else makes one), puts it in the request's
//!   extensions ([`CorrelationId`]) and in a span around everything the request logs
//!   (`span.correlation_id`); [`correlate_and_echo`] also echoes it on the response,
//!   whatever the response is (the webhook does, so Meta's retries can be traced);
//! - [`Problem`]: the one error type of the three: a status and one JSON shape,
//!   `{"error": code}` with an optional `message` and details, `Cache-Control: no-store`, and
//!   `Retry-After` when the caller should wait;
//! - [`Call`]: what a handler reads of a request (method, URI, headers, extensions, the whole
//!   body and the correlation id), as one extractor;
//! - [`first_query_value`]: a query parameter as Meta and browsers send it (percent- and
//!   plus-decoded, the first of repeated names wins);
//! - [`Routed`]: a function that is one router: `lambda_http::run` serves its `router()`,
//!   tests call its `handle` ([`call`]: the router on one `lambda_http` request, collected
//!   into a `lambda_http` response).

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use tower::ServiceExt;
use tracing::Instrument;

/// Header carrying a caller-supplied correlation id (echoed on every response).
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The request's correlation id, as [`correlate`] settled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

/// Middleware: settles the correlation id and runs the rest inside a span that carries it.
pub async fn correlate(req: Request, next: Next) -> Response {
    correlated(req, next).await.1
}

/// [`correlate`], and the id echoed on the response.
pub async fn correlate_and_echo(req: Request, next: Next) -> Response {
    let (id, mut resp) = correlated(req, next).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(CORRELATION_HEADER, v);
    }
    resp
}

async fn correlated(mut req: Request, next: Next) -> (String, Response) {
    let id = crate::telemetry::correlation_id(
        req.headers()
            .get(CORRELATION_HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let span = tracing::info_span!("request", correlation_id = %id);
    let resp = next.run(req).instrument(span).await;
    (id, resp)
}

/// A refused or failed request as every function answers it: `status`, and the JSON body
/// `{"error": code, "message": text?, ...details}` (keys in name order), no-store, with
/// `Retry-After: secs` when set. `code` is stable (clients and logs branch on it); `message`
/// is for people and never holds secrets, message text or phone numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    status: StatusCode,
    code: std::borrow::Cow<'static, str>,
    message: Option<String>,
    details: serde_json::Map<String, serde_json::Value>,
    retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self {
            status,
            code: code.into(),
            message: None,
            details: serde_json::Map::new(),
            retry_after: None,
        }
    }

    /// With a `message` for people.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// With one more body field (`error` and `message` are the problem's own).
    pub fn detail(mut self, name: &str, value: serde_json::Value) -> Self {
        self.details.insert(name.to_owned(), value);
        self
    }

    /// With `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &str {
        &self.code
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert(
            "error".to_owned(),
            serde_json::Value::from(self.code.as_ref()),
        );
        if let Some(m) = self.message {
            body.insert("message".to_owned(), serde_json::Value::from(m));
        }
        let mut resp: Response =
            crate::response::json_no_store(self.status, &serde_json::Value::Object(body));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// What a handler reads of a request. The body is read whole, with no limit of axum's: each
/// function checks its own limit and answers it in its own words.
pub struct Call {
    pub method: Method,
    /// As routed (a router behind [`routed_on`] sees the rewritten path).
    pub uri: axum::http::Uri,
    pub headers: HeaderMap,
    /// What the runtime and the layers put there (the Function URL's request context).
    pub extensions: axum::http::Extensions,
    pub body: Bytes,
    /// As [`correlate`] settled it (a new one if that layer did not run).
    pub correlation_id: String,
}

impl<S: Send + Sync> FromRequest<S> for Call {
    type Rejection = Response;

    async fn from_request(req: Request, _: &S) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let correlation_id = match parts.extensions.get::<CorrelationId>() {
            Some(CorrelationId(id)) => id.clone(),
            None => crate::telemetry::correlation_id(None),
        };
        // Lambda hands the function the whole body at once, so reading it fails only if the
        // connection did (a local server): nothing was read, nothing to answer but 400.
        let body = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => bytes,
            Err(_) => {
                tracing::warn!(
                    outcome = "rejected",
                    reason = "body_unreadable",
                    "request body could not be read"
                );
                return Err(
                    Problem::new(StatusCode::BAD_REQUEST, "body_unreadable").into_response()
                );
            }
        };
        Ok(Self {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            extensions: parts.extensions,
            body,
            correlation_id,
        })
    }
}

impl Call {
    /// The raw query string, if the URI has one.
    pub fn query(&self) -> Option<&str> {
        self.uri.query()
    }
}

/// `path` from its first `v1` segment on, empty segments dropped (`/lambda-url/admin//v1//me/`
/// → `/v1/me`): what the web chat and admin routes are matched on, so that any prefix before
/// `v1` (cargo lambda watch serves under `/lambda-url/<fn>/`) stays invisible. `None`: no such
/// segment.
pub fn from_v1(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = segs.iter().position(|s| *s == "v1")?;
    Some(format!("/{}", segs[at..].join("/")))
}

/// `routes`, matched on `rewrite(path)` instead of the request's path (the query kept). The
/// rewrite runs before routing, which a layer on `routes` itself could not do.
pub fn routed_on(routes: axum::Router, rewrite: fn(&str) -> String) -> axum::Router {
    let layer = tower::util::MapRequestLayer::new(move |mut req: Request| {
        let path = rewrite(req.uri().path());
        let routed = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        if let Ok(uri) = routed.parse() {
            *req.uri_mut() = uri;
        }
        req
    });
    axum::Router::new().fallback_service(tower::Layer::layer(&layer, routes))
}

/// The first value of query parameter `name` in `query` (percent- and plus-decoded).
pub fn first_query_value(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A function that is one axum router.
pub trait Routed {
    /// Every route of the function, with its layers: what `lambda_http::run` serves.
    fn router(&self) -> axum::Router;

    /// One request through the router, as Lambda runs it (tests call this). Never fails:
    /// every outcome is a response.
    fn handle(
        &self,
        req: lambda_http::Request,
    ) -> impl std::future::Future<Output = lambda_http::Response<lambda_http::Body>> + Send {
        call(self.router(), req)
    }
}

/// Runs `router` on one `lambda_http` request (as `lambda_http::run` does in Lambda) and
/// collects the response into a `lambda_http` one: text for text content types, bytes else.
pub async fn call(
    router: axum::Router,
    req: lambda_http::Request,
) -> lambda_http::Response<lambda_http::Body> {
    let (parts, body) = req.into_parts();
    let bytes: Vec<u8> = body.as_ref().to_vec();
    let req = Request::from_parts(parts, Body::from(bytes));
    let resp = match router.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    // Our handlers build every body in memory, so this never meets a limit.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body = match String::from_utf8(bytes.to_vec()) {
        Ok(text) if !text.is_empty() => lambda_http::Body::Text(text),
        Ok(_) => lambda_http::Body::Empty,
        Err(e) => lambda_http::Body::Binary(e.into_bytes()),
    };
    lambda_http::Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_problem_has_one_shape() {
        let resp = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            .message("wait")
            .detail("fields", serde_json::json!({"a": "b"}))
            .retry_after(7)
            .into_response();
        assert_eq!(resp.status(), 429);
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        assert_eq!(
            headers,
            [
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
                ("retry-after", "7")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 10)
            .await
            .unwrap();
        assert_eq!(
            &body[..],
            br#"{"error":"rate_limited","fields":{"a":"b"},"message":"wait"}"#
        );
        let bare = Problem::new(StatusCode::NOT_FOUND, "unknown_site").into_response();
        assert!(!bare.headers().contains_key("retry-after"));
        let body = axum::body::to_bytes(bare.into_body(), 1 << 10)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"error":"unknown_site"}"#);
    }

    #[test]
    fn paths_are_read_from_their_first_v1_segment() {
        for (path, routed) in [
            ("/v1/me", Some("/v1/me")),
            ("/lambda-url/admin//v1//me/", Some("/v1/me")),
            ("/v1/v1/me", Some("/v1/v1/me")),
            ("/x/v1", Some("/v1")),
            ("/V1/me", None),
            ("/", None),
        ] {
            assert_eq!(from_v1(path).as_deref(), routed, "{path}");
        }
    }

    #[tokio::test]
    async fn a_rewritten_path_is_routed_and_keeps_its_query() {
        let routes = axum::Router::new().route(
            "/v1/x",
            axum::routing::get(|call: Call| async move { format!("{:?}", call.query()) }),
        );
        let router = routed_on(routes, |p| from_v1(p).unwrap_or_else(|| p.to_owned()));
        let req = lambda_http::http::Request::builder()
            .uri("/prefix/v1/x/?a=1")
            .body(lambda_http::Body::Empty)
            .unwrap();
        let resp = call(router, req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body().as_ref(), br#"Some("a=1")"#);
    }

    #[test]
    fn the_first_of_repeated_parameters_wins_and_values_are_decoded() {
        let q = Some("a=1&b=x%20y&a=2&c=p+q&d=");
        assert_eq!(first_query_value(q, "a").as_deref(), Some("1"));
        assert_eq!(first_query_value(q, "b").as_deref(), Some("x y"));
        assert_eq!(first_query_value(q, "c").as_deref(), Some("p q"));
        assert_eq!(first_query_value(q, "d").as_deref(), Some(""));
        assert_eq!(first_query_value(q, "e"), None);
        assert_eq!(first_query_value(None, "a"), None);
    }

    #[tokio::test]
    async fn a_call_holds_the_request_as_the_handler_needs_it() {
        let router = axum::Router::new()
            .route(
                "/{*path}",
                axum::routing::any(|call: Call| async move {
                    format!(
                        "{} {:?} {} {} {}",
                        call.method,
                        call.query(),
                        call.headers["x-k"].to_str().unwrap_or_default(),
                        String::from_utf8_lossy(&call.body),
                        call.correlation_id
                    )
                }),
            )
            .layer(axum::middleware::from_fn(correlate));
        let req = lambda_http::http::Request::builder()
            .method("PUT")
            .uri("/a/b?x=1&y=2")
            .header("x-k", "v")
            .header(CORRELATION_HEADER, "trace-2")
            .body(lambda_http::Body::Text("hello".into()))
            .unwrap();
        let resp = call(router, req).await;
        assert!(
            !resp.headers().contains_key(CORRELATION_HEADER),
            "not echoed"
        );
        assert_eq!(
            resp.body().as_ref(),
            br#"PUT Some("x=1&y=2") v hello trace-2"#
        );
    }

    #[tokio::test]
    async fn every_answer_carries_the_correlation_id() {
        let router = axum::Router::new()
            .route(
                "/",
                axum::routing::get(|axum::Extension(CorrelationId(id)): axum::Extension<CorrelationId>| async move { id }),
            )
            .layer(axum::middleware::from_fn(correlate_and_echo));
        let req = lambda_http::http::Request::builder()
            .uri("/")
            .header(CORRELATION_HEADER, "trace-1")
            .body(lambda_http::Body::Empty)
            .unwrap();
        let resp = call(router.clone(), req).await;
        assert_eq!(resp.headers()[CORRELATION_HEADER], "trace-1");
        assert_eq!(resp.body().as_ref(), b"trace-1");
        let missing = lambda_http::http::Request::builder()
            .uri("/nowhere")
            .body(lambda_http::Body::Empty)
            .unwrap();
        let resp = call(router, missing).await;
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[CORRELATION_HEADER].len(), 36, "a new id");
    }
}
