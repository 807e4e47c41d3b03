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

/// The same error as whole HTTP/1.1 (or 1.0) response bytes, for the raw relay: JSON body with its
/// length, a `Date`, and `Connection: close` when the connection ends after it.
pub fn error_bytes(status: StatusCode, message: &str, http11: bool, close: bool) -> Vec<u8> {
    let body = serde_json::json!({ "message": message }).to_string() + "\n";
    let mut out = format!(
        "HTTP/1.{} {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nDate: {}\r\n",
        u8::from(http11),
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    match (close, http11) {
        (true, _) => out.push_str("Connection: close\r\n"),
        (false, false) => out.push_str("Connection: keep-alive\r\n"),
        (false, true) => {}
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
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

    #[test]
    fn error_bytes_are_a_whole_response() {
        let raw = String::from_utf8(error_bytes(StatusCode::BAD_REQUEST, "ctproxy: bad", true, true)).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close") && head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["message"], "ctproxy: bad");
    }

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
