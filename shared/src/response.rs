//! HTTP responses built without a fallible builder: the status, fixed headers and a body, so no
//! handler can fail (or panic) while answering.

use ::http::header::{HeaderName, CACHE_CONTROL, CONTENT_TYPE};
use ::http::{HeaderValue, Response, StatusCode};

/// `body` with `status` and `headers` (static names and values).
pub fn with_headers<B>(
    status: StatusCode,
    headers: &[(HeaderName, &'static str)],
    body: B,
) -> Response<B> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (name, value) in headers {
        resp.headers_mut()
            .insert(name.clone(), HeaderValue::from_static(value));
    }
    resp
}

/// A JSON document that no cache may keep (every API answer).
pub fn json_no_store<B: From<String>>(status: StatusCode, body: &serde_json::Value) -> Response<B> {
    with_headers(
        status,
        &[
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-store"),
        ],
        B::from(body.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_answer_has_its_status_type_cache_rule_and_body() {
        let resp: Response<String> =
            json_no_store(StatusCode::ACCEPTED, &serde_json::json!({"id": 7}));
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers().len(), 2);
        assert_eq!(resp.body(), r#"{"id":7}"#);
    }
}
