//! The registry proxy's refusals and failures, and their responses in the Registry API's error
//! format (`{"errors":[{"code":..,"message":..}]}`), which dockerd prints as `<code>: <message>`.

use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::http::ProxyBody;

/// The header every registry response carries; dockerd's ping checks it.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No token, an unknown or expired one, or one of another namespace.
    #[error("{0}")]
    Unauthorized(String),
    /// The upstream registry refused the grant's credentials.
    #[error("upstream registry refused the credentials: {0}")]
    UpstreamUnauthorized(String),
    /// The upstream is on an address a namespace may not reach (SSRF), or the proxy itself.
    #[error("{0}")]
    Denied(String),
    #[error("invalid repository name {0:?}: expected <namespace>/<registry>/<path>")]
    NameInvalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("method not allowed here")]
    Method,
    /// The upstream could not be reached or answered something unusable.
    #[error("upstream registry: {0}")]
    Upstream(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: crate::transport::TransportError },
    #[error("upstream TLS configuration: {0}")]
    Tls(String),
    #[error("registry blob cache {path}: {source}")]
    Cache { path: std::path::PathBuf, source: crate::store::StoreError },
}

impl RegistryError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RegistryError::Unauthorized(_) | RegistryError::UpstreamUnauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            RegistryError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            RegistryError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            RegistryError::Unsupported(_) => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            RegistryError::Method => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            RegistryError::Upstream(_) | RegistryError::Bind { .. } | RegistryError::Tls(_) | RegistryError::Cache { .. } => {
                (StatusCode::BAD_GATEWAY, "UNKNOWN")
            }
        }
    }

    /// The response for this error. `challenge` is our `WWW-Authenticate` value, added to 401s so
    /// dockerd knows to send its registry token.
    pub fn response(&self, challenge: &HeaderValue) -> Response<ProxyBody> {
        let (status, code) = self.status_and_code();
        let mut rsp = error_response(status, code, &format!("ctproxy: {self}"));
        if status == StatusCode::UNAUTHORIZED {
            rsp.headers_mut().insert(WWW_AUTHENTICATE, challenge.clone());
        }
        rsp
    }
}

/// A registry-format error response.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] }).to_string();
    let mut rsp = Response::new(ProxyBody::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    rsp.headers_mut().insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    rsp
}
