//! Errors the proxy itself answers with, shaped like OpenAI's so every SDK can parse them:
//! `{"error":{"message":"…","type":"…","code":"…"}}`.

use crate::body::{full, ProxyBody};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type` field: `invalid_request_error`, `rate_limit_error`, `api_error`, …
    pub kind: &'static str,
    /// Machine-readable code, stable across releases.
    pub code: &'static str,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, code, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "bad_request", message)
    }

    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "api_error", "upstream_unreachable", message)
    }

    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "api_error", "upstream_timeout", message)
    }

    pub fn no_upstream(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", "no_upstream_available", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", "conflict", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", "forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method_not_allowed", message)
    }

    /// A configuration change that does not validate: the message names the path and reason.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_config", message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "code": self.code}}).to_string()
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let body = self.to_json();
        self.respond_with(body)
    }

    /// The admin API's form: the error inside LLMProxy's envelope (`code`, `status: "error"`),
    /// so scripts written against either read it.
    pub fn into_admin_response(self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "code": self.status.as_u16(),
            "status": "error",
            "error": {"message": self.message, "type": self.kind, "code": self.code},
        })
        .to_string();
        self.respond_with(body)
    }

    fn respond_with(self, body: String) -> Response<ProxyBody> {
        let mut resp = Response::new(full(body));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Runtime compilation failures surface as rejected configuration changes.
impl From<String> for ApiError {
    fn from(message: String) -> Self {
        ApiError::invalid_config(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_openai_compatible() {
        let e = ApiError::bad_gateway("upstream \"a\" refused the connection");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["code"], "upstream_unreachable");
        assert_eq!(v["error"]["message"], "upstream \"a\" refused the connection");
        let r = ApiError::no_upstream("x").with_retry_after(3).into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "3");
    }
}
