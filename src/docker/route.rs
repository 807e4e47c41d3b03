//! Routes of the Engine API: the optional `/vX.Y` prefix and the endpoints that hijack the connection.
//!
//! dockerd registers every route twice, as `/<path>` and `/v{version:[0-9.]+}/<path>`, and compares
//! versions numerically per component (so `/v1.041/` is `1.41`); see `docs/` for the details.

use std::fmt;

/// An API version as `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A request path split into its version prefix and the route proper (which starts with `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath<'a> {
    pub version: Option<ApiVersion>,
    pub route: &'a str,
}

impl<'a> ApiPath<'a> {
    /// Splits `/v1.41/containers/json` into `1.41` and `/containers/json`. A first segment that is
    /// not a version (`/_ping`) leaves the path whole; an unparseable one (`/v1/x`) is kept as route,
    /// so the daemon answers it as it would.
    pub fn parse(path: &'a str) -> Self {
        if let Some(rest) = path.strip_prefix("/v") {
            let (ver, route) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if let Some(version) = parse_version(ver) {
                return ApiPath { version: Some(version), route };
            }
        }
        ApiPath { version: None, route: path }
    }

    /// Does this endpoint hijack the connection (raw stdin/stdout after the response head)?
    /// The daemon decides in the end (a detached exec start answers a plain 200); this says only
    /// that it may.
    pub fn may_hijack(&self, method: &hyper::Method) -> bool {
        if method != hyper::Method::POST {
            return false;
        }
        let mut segs = self.route.trim_start_matches('/').split('/');
        matches!(
            (segs.next(), segs.next(), segs.next(), segs.next()),
            (Some("containers"), Some(id), Some("attach"), None) | (Some("exec"), Some(id), Some("start"), None)
                if !id.is_empty()
        )
    }
}

/// `1.41`, `1.041`, `01.41`, `1.41.0` → 1.41, as dockerd's numeric comparison reads them.
fn parse_version(s: &str) -> Option<ApiVersion> {
    let mut parts = s.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    if parts.any(|p| p.parse::<u32>() != Ok(0)) {
        return None;
    }
    Some(ApiVersion { major, minor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn splits_version_prefix() {
        let p = ApiPath::parse("/v1.41/containers/json");
        assert_eq!(p.version, Some(ApiVersion { major: 1, minor: 41 }));
        assert_eq!(p.route, "/containers/json");
        assert_eq!(ApiPath::parse("/v1.041/_ping").version, Some(ApiVersion { major: 1, minor: 41 }));
        assert_eq!(ApiPath::parse("/_ping"), ApiPath { version: None, route: "/_ping" });
        assert_eq!(ApiPath::parse("/v1/_ping").version, None);
        assert_eq!(ApiPath::parse("/volumes/x").route, "/volumes/x");
    }

    #[test]
    fn knows_hijacking_endpoints() {
        assert!(ApiPath::parse("/v1.41/containers/abc/attach").may_hijack(&Method::POST));
        assert!(ApiPath::parse("/exec/abc/start").may_hijack(&Method::POST));
        assert!(!ApiPath::parse("/containers/abc/attach").may_hijack(&Method::GET));
        assert!(!ApiPath::parse("/containers/abc/attach/ws").may_hijack(&Method::POST));
        assert!(!ApiPath::parse("/containers//attach").may_hijack(&Method::POST));
        assert!(!ApiPath::parse("/exec/abc/resize").may_hijack(&Method::POST));
    }
}
