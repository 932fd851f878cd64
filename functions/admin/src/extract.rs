//! What the admin routes extract before their handler runs, in this order: [`Matched`] (the
//! route of the path and method; 405 otherwise), then [`Caller`] (the API key behind the
//! request, rate-limited by address and by key; 401 / 429 / 503 otherwise). A refusal is the
//! answer as [`served`](crate::served) logs it: the route (which `Matched` leaves in the
//! request), and the key prefix once the key is known.

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap};
use axum::response::Response;
use shared::db::apikeys::{self, Principal};

use crate::routes::{self, RouteSpec};
use crate::{served, ApiError, App};

/// The route a request matched: its spec and its raw path parameters.
pub struct Matched {
    pub spec: &'static RouteSpec,
    pub params: Vec<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Matched {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let template = parts
            .extensions
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
            .unwrap_or_default();
        match routes::find_method(template, parts.method.as_str(), parts.uri.path()) {
            Some((spec, params)) => {
                // For the extractors after this one (what their refusals are logged under).
                parts.extensions.insert(spec);
                Ok(Self { spec, params })
            }
            None => Err(served(None, None, Err(ApiError::MethodNotAllowed))),
        }
    }
}

/// Who is calling: the principal of a valid key and the key's printable prefix (what the log
/// line names; never the key).
pub struct Caller {
    pub who: Principal,
    pub prefix: Option<String>,
}

impl FromRequestParts<App> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        let route = parts
            .extensions
            .get::<&'static RouteSpec>()
            .map(|spec| spec.path);
        let refuse = |prefix: Option<String>, e: ApiError| served(route, prefix, Err(e));
        let Some(presented) = bearer(&parts.headers) else {
            return Err(refuse(None, ApiError::Unauthorized));
        };
        if let Some(ip) = source_ip(&parts.extensions) {
            let limit = app.settings().per_ip_per_minute;
            if let Err(retry_after) = app.limiter().check(&format!("ip#{ip}"), limit).await {
                return Err(refuse(None, ApiError::Limited(retry_after)));
            }
        }
        let who = match apikeys::authenticate(app.db(), presented).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(refuse(None, ApiError::Unauthorized)),
            Err(e) => return Err(refuse(None, e.into())),
        };
        let prefix = presented.get(..12).map(str::to_owned);
        let key = format!("k#{}", who.key_id.simple());
        if let Err(retry_after) = app
            .limiter()
            .check(&key, app.settings().per_key_per_minute)
            .await
        {
            return Err(refuse(prefix, ApiError::Limited(retry_after)));
        }
        Ok(Self { who, prefix })
    }
}

/// The key of `Authorization: Bearer <key>` (either case of `Bearer`).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
}

/// The caller's address as the Function URL saw it (none in tests and local invokes).
fn source_ip(extensions: &Extensions) -> Option<String> {
    use lambda_http::request::RequestContext;
    match extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(c) => c.http.source_ip.clone(),
        _ => None,
    }
}
