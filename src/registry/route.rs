//! The Registry API v2 routes the registry proxy serves, parsed from the request path.
//!
//! Everything is validated before anything is forwarded: the repository name against the
//! distribution grammar (so it cannot carry `..`, `%`-escapes or query characters into the upstream
//! URL), and the reference, digest and upload id against narrow character sets. A path that is not one
//! of these routes is not forwarded at all.

use crate::config::valid_registry_domain;
use crate::plugin::namespace::names::split_repository;

/// What a request asks for. `name` is the mangled repository `<ns>/<domain>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`: the version check and auth challenge.
    Base,
    /// `/token`: the realm of our challenge. dockerd with a registry token never calls it.
    TokenRealm,
    Manifest {
        repo: Repo,
        reference: String,
    },
    Blob {
        repo: Repo,
        digest: String,
    },
    /// `POST /v2/<name>/blobs/uploads/`
    UploadStart {
        repo: Repo,
    },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload {
        repo: Repo,
        id: String,
    },
    TagsList {
        repo: Repo,
    },
    Referrers {
        repo: Repo,
        digest: String,
    },
    /// `/v2/_catalog`: would list every namespace's repositories.
    Catalog,
}

/// A mangled repository and what it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// `<ns>/<domain>/<path>`, as dockerd names it.
    pub mangled: String,
    pub namespace: String,
    /// The real registry (`docker.io`, `localhost:5000`).
    pub domain: String,
    /// The repository there (`library/busybox`, `team/x`).
    pub path: String,
}

impl Repo {
    /// Reads a mangled repository name; `None` unless it is valid and names a usable registry.
    pub fn parse(mangled: &str) -> Option<Repo> {
        if mangled.len() > 255 || !mangled.split('/').all(valid_path_component) {
            return None;
        }
        let (ns, domain, path) = split_repository(mangled)?;
        let domain = if domain == "index.docker.io" { "docker.io".to_owned() } else { domain };
        if !valid_registry_domain(&domain) {
            return None;
        }
        // `docker.io/busybox` is stored as `docker.io/library/busybox`; a one-component Hub path
        // would be a different repository upstream, so it is refused rather than guessed.
        if domain == "docker.io" && !path.contains('/') {
            return None;
        }
        Some(Repo { mangled: mangled.to_owned(), namespace: ns.to_owned(), domain, path: path.to_owned() })
    }
}

/// distribution/reference's path component: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
pub fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or a run of '-', always between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i >= b.len() || !is_alnum(b[i]) || start == 0 {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A tag (`[\w][\w.-]{0,127}`) or a digest (`algo:hex`); never `.`-led, never `/`.
fn valid_reference(r: &str) -> bool {
    let b = r.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b':' | b'+' | b'='))
}

/// An upload id as registries issue them (UUIDs, base64url strings); opaque but harmless in a path.
fn valid_upload_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 512
        && b[0] != b'.'
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'='))
}

/// Why a path was not a route: unknown, or a known shape with an invalid name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    Unknown,
    /// The repository is not `<ns>/<domain>/<path>` with a valid namespace and registry.
    Name(String),
}

impl Route {
    pub fn parse(path: &str) -> Result<Route, RouteError> {
        if path == "/v2/" || path == "/v2" {
            return Ok(Route::Base);
        }
        if path == "/token" {
            return Ok(Route::TokenRealm);
        }
        let rest = path.strip_prefix("/v2/").ok_or(RouteError::Unknown)?;
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        let repo = |name: &str| Repo::parse(name).ok_or_else(|| RouteError::Name(name.to_owned()));
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Ok(Route::TagsList { repo: repo(name)? });
        }
        let (head, last) = rest.rsplit_once('/').ok_or(RouteError::Unknown)?;
        if let Some(name) = head.strip_suffix("/blobs/uploads") {
            if last.is_empty() {
                return Ok(Route::UploadStart { repo: repo(name)? });
            }
            if valid_upload_id(last) {
                return Ok(Route::Upload { repo: repo(name)?, id: last.to_owned() });
            }
            return Err(RouteError::Unknown);
        }
        if !valid_reference(last) {
            return Err(RouteError::Unknown);
        }
        if let Some(name) = head.strip_suffix("/manifests") {
            return Ok(Route::Manifest { repo: repo(name)?, reference: last.to_owned() });
        }
        if let Some(name) = head.strip_suffix("/blobs") {
            return Ok(Route::Blob { repo: repo(name)?, digest: last.to_owned() });
        }
        if let Some(name) = head.strip_suffix("/referrers") {
            return Ok(Route::Referrers { repo: repo(name)?, digest: last.to_owned() });
        }
        Err(RouteError::Unknown)
    }

    pub fn repo(&self) -> Option<&Repo> {
        match self {
            Route::Manifest { repo, .. }
            | Route::Blob { repo, .. }
            | Route::UploadStart { repo }
            | Route::Upload { repo, .. }
            | Route::TagsList { repo }
            | Route::Referrers { repo, .. } => Some(repo),
            Route::Base | Route::TokenRealm | Route::Catalog => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components() {
        for good in ["a", "a1", "a.b", "a_b", "a__b", "a-b", "a---b", "127.0.0.1__5000", "localhost__5000"] {
            assert!(valid_path_component(good), "{good}");
        }
        for bad in ["", "A", ".a", "a.", "a..b", "a___b", "-a", "a-", "a%2f", "..", "a:b", "a b"] {
            assert!(!valid_path_component(bad), "{bad}");
        }
    }

    #[test]
    fn routes() {
        let r = Route::parse("/v2/alice/localhost__5000/team/x/manifests/1.0").unwrap();
        let Route::Manifest { repo, reference } = &r else { panic!("{r:?}") };
        assert_eq!((repo.namespace.as_str(), repo.domain.as_str(), repo.path.as_str()), ("alice", "localhost:5000", "team/x"));
        assert_eq!(repo.mangled, "alice/localhost__5000/team/x");
        assert_eq!(reference, "1.0");
        assert!(matches!(Route::parse("/v2/a/docker.io/library/busybox/blobs/sha256:abcd"), Ok(Route::Blob { .. })));
        assert!(matches!(Route::parse("/v2/a/docker.io/library/busybox/blobs/uploads/"), Ok(Route::UploadStart { .. })));
        let r = Route::parse("/v2/a/docker.io/library/busybox/blobs/uploads/0b1c-2d_3=").unwrap();
        assert!(matches!(r, Route::Upload { ref id, .. } if id == "0b1c-2d_3="));
        assert!(matches!(Route::parse("/v2/a/docker.io/library/x/tags/list"), Ok(Route::TagsList { .. })));
        assert!(matches!(Route::parse("/v2/a/docker.io/library/x/referrers/sha256:ab"), Ok(Route::Referrers { .. })));
        // A repository may itself contain "manifests" or "blobs" components.
        let r = Route::parse("/v2/a/r.io/manifests/blobs/manifests/latest").unwrap();
        assert_eq!(r.repo().unwrap().path, "manifests/blobs");
        assert_eq!(Route::parse("/v2/"), Ok(Route::Base));
        assert_eq!(Route::parse("/v2/_catalog"), Ok(Route::Catalog));
        assert_eq!(Route::parse("/token"), Ok(Route::TokenRealm));
        assert_eq!(Route::parse("/v2/a/index.docker.io/library/x/manifests/1").unwrap().repo().unwrap().domain, "docker.io");
    }

    #[test]
    fn refused_paths() {
        for bad in [
            "/v2/a/r.io/x/manifests/..",
            "/v2/a/r.io/x/manifests/.hidden",
            "/v2/a/r.io/x/manifests/a%2fb",
            "/v2/a/r.io/x/blobs/uploads/..",
            "/v2/a/r.io/x/unknown/1",
            "/v1/a/r.io/x/manifests/1",
            "/v2/a/r.io/x/manifests/",
            "/other",
        ] {
            assert_eq!(Route::parse(bad), Err(RouteError::Unknown), "{bad}");
        }
        for bad in [
            "/v2/a/r.io/manifests/1",          // no path upstream
            "/v2/A/r.io/x/manifests/1",        // invalid component
            "/v2/a-/r.io/x/manifests/1",       // invalid namespace
            "/v2/a/r.io/../x/manifests/1",     // traversal
            "/v2/a/r.io/x%2f/manifests/1",     // escapes
            "/v2/a/a__b__c/x/manifests/1",     // two ports
            "/v2/a/r.io__99999/x/manifests/1", // bad port
            "/v2/a/docker.io/busybox/manifests/1",
        ] {
            assert!(matches!(Route::parse(bad), Err(RouteError::Name(_))), "{bad}: {:?}", Route::parse(bad));
        }
    }
}
