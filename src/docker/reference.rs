//! Image references, parsed and normalised as Docker's `distribution/reference` does.
//!
//! `busybox`, `library/busybox:latest` and `docker.io/library/busybox` name the same image; the daemon
//! normalises them all to `docker.io/library/busybox`. Whatever rewrites image names (namespaces, the
//! registry proxy) must do the same normalisation first, or two spellings of one name would escape it.
//! Grammar (from distribution/reference):
//! `name[:tag][@digest]`, `name := [domain '/'] path ('/' path)*`, a path component is
//! `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`, a tag `[\w][\w.-]{0,127}`, a digest `algo:hex`, and the
//! name is at most 255 characters.

use std::fmt;

/// The registry that names without a domain refer to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_MAX: usize = 255;

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `registry.example.com`.
    pub domain: String,
    /// `library/busybox`, `team/app`.
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:…`
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format")]
    Format,
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase,
    #[error("repository name must not be more than {NAME_MAX} characters")]
    TooLong,
    #[error("invalid tag format")]
    Tag,
    #[error("invalid digest format")]
    Digest,
}

impl Reference {
    /// Parses and normalises a reference as `docker pull`/`docker tag` accept it.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Format);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(parse_digest(d)?)),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a port belongs to the domain).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !is_tag(tag) {
                    return Err(ReferenceError::Tag);
                }
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        if name.len() > NAME_MAX {
            return Err(ReferenceError::TooLong);
        }
        let (domain, path) = split_domain(name);
        if !is_domain(&domain) {
            return Err(ReferenceError::Format);
        }
        if path.split('/').any(|c| !is_path_component(c)) {
            return Err(if path.chars().any(|c| c.is_ascii_uppercase()) { ReferenceError::Uppercase } else { ReferenceError::Format });
        }
        Ok(Reference { domain, path, tag, digest })
    }

    /// The repository name with its domain: `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The short form users type and the CLI prints: `busybox:latest`, `team/app`, `localhost:5000/x`.
    pub fn familiar(&self) -> String {
        let mut out = if self.domain == DEFAULT_DOMAIN {
            self.path.strip_prefix(OFFICIAL_REPO_PREFIX).unwrap_or(&self.path).to_owned()
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = &self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }

    /// The same reference with the tag the daemon adds when none (and no digest) is given.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".into());
        }
        self
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `splitDockerDomain`: the first component is a domain only if it looks like one.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) => {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_owned();
    }
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path = format!("{OFFICIAL_REPO_PREFIX}{path}");
    }
    (domain, path)
}

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0] as char) || !is_alnum_lower(b[b.len() - 1] as char) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if is_alnum_lower(c) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one '_', "__", or any number of '-'.
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i] as char) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A host name (components of `[a-zA-Z0-9-]`, not starting or ending with `-`) or an IPv6 literal in
/// brackets, with an optional numeric port.
fn is_domain(d: &str) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if let Some(rest) = d.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else { return false };
        let port = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return port && !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_hexdigit() || c == b':');
    }
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    port.is_none_or(port_ok)
        && !host.is_empty()
        && host
            .split('.')
            .all(|c| !c.is_empty() && !c.starts_with('-') && !c.ends_with('-') && c.bytes().all(|x| x.is_ascii_alphanumeric() || x == b'-'))
}

/// `[\w][\w.-]{0,127}`
fn is_tag(t: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

fn parse_digest(d: &str) -> Result<String, ReferenceError> {
    let (algo, hex) = d.split_once(':').ok_or(ReferenceError::Digest)?;
    let algo_ok = !algo.is_empty() && algo.split(['+', '.', '_', '-']).all(|p| !p.is_empty() && p.chars().all(is_alnum_lower));
    let hex_ok = hex.len() >= 32 && hex.bytes().all(|c| c.is_ascii_hexdigit());
    if !algo_ok || !hex_ok || (algo == "sha256" && hex.len() != 64) {
        return Err(ReferenceError::Digest);
    }
    Ok(d.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_the_daemon() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox");
        assert_eq!(norm("index.docker.io/library/busybox"), "docker.io/library/busybox");
        assert_eq!(norm("team/app:v1"), "docker.io/team/app:v1");
        assert_eq!(norm("localhost/app"), "localhost/app");
        assert_eq!(norm("localhost:5000/a/b:c"), "localhost:5000/a/b:c");
        assert_eq!(norm("127.0.0.1:5000/x"), "127.0.0.1:5000/x");
        assert_eq!(norm("[::1]:5000/x:y"), "[::1]:5000/x:y");
        assert_eq!(norm("registry.example.com/a__b/c-d.e_f"), "registry.example.com/a__b/c-d.e_f");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm(&format!("busybox@{d}")), format!("docker.io/library/busybox@{d}"));
        assert_eq!(norm(&format!("busybox:1@{d}")), format!("docker.io/library/busybox:1@{d}"));
    }

    #[test]
    fn familiar_form() {
        let f = |s: &str| Reference::parse(s).unwrap().familiar();
        assert_eq!(f("docker.io/library/busybox:latest"), "busybox:latest");
        assert_eq!(f("docker.io/team/app"), "team/app");
        assert_eq!(f("localhost:5000/x:1"), "localhost:5000/x:1");
        assert_eq!(Reference::parse("busybox").unwrap().with_default_tag().familiar(), "busybox:latest");
    }

    #[test]
    fn refuses_what_the_daemon_refuses() {
        for bad in ["", "Busybox", "a//b", "a/", "/a", "a:", "a:-x", "-a", "a-", "a..b", "a___b", "a@sha256:123", "a@md5", "a b"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        // An upper-case first component is taken as a domain, as distribution does.
        assert_eq!(Reference::parse("Team/app").unwrap().domain, "Team");
        assert_eq!(Reference::parse("team/App"), Err(ReferenceError::Uppercase));
        assert!(Reference::parse(&"a".repeat(256)).is_err());
        assert!(Reference::parse(&format!("a:{}", "t".repeat(129))).is_err());
    }
}
