//! The one place where errors become HTTP responses, in the shape dockerd uses: `{"message": "..."}`.
//!
//! The docker CLI and the SDKs print the `message` field as-is, so every message says what failed and
//! why, prefixed with `ctproxy:` so a user can tell a proxy refusal from a daemon error.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::ProxyBody;

/// A Docker-style JSON error response.
pub fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json(status, &serde_json::json!({ "message": message }))
}

/// A JSON answer made here (as dockerd writes them: one line).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let body = value.to_string() + "\n";
    let mut rsp = Response::new(ProxyBody::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_is_docker_shaped() {
        let rsp = error(StatusCode::BAD_GATEWAY, "ctproxy: \"quoted\" daemon down");
        assert_eq!(rsp.status(), 502);
        assert_eq!(rsp.headers()[CONTENT_TYPE], "application/json");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["message"], "ctproxy: \"quoted\" daemon down");
    }
}
