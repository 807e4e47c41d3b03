//! How a namespace's names are written on the shared daemon.
//!
//! Containers, volumes and networks: `ctp.<ns>.<name>`. The `ctp.` marker is reserved: a client name
//! that starts with it is refused, so no client can type a name that looks like another namespace's.
//! Namespace names are `[a-z0-9]+(-[a-z0-9]+)*`, without dots, so the prefix always ends at the
//! second dot and two namespaces never share a mangled name.
//!
//! Images: `<registry proxy>/<ns>/<domain>/<path>` where `<domain>` is the registry the user named,
//! lower-cased, with its port's `:` written `__` (a valid path component: `localhost__5000`). The
//! daemon then pushes and pulls every namespace image through ctproxy's registry proxy, which reads
//! the namespace and the real registry back out of the repository path ([`split_repository`]).

use std::fmt;
use std::sync::Arc;

use crate::docker::reference::{Reference, ReferenceError};

/// The marker every mangled container, volume and network name starts with.
pub const MARKER: &str = "ctp.";
/// The label that records the owning namespace on containers, volumes and networks.
pub const NS_LABEL: &str = "io.ctproxy.namespace";
/// The repository of a namespace's hidden tags (`<registry proxy>/<ns>/ctproxy-untagged:<token>`):
/// an image the namespace made without a name (`docker build` without `-t`, `docker commit`
/// without a repository, an untagged `docker load` entry) carries one, so that the daemon itself
/// records that the namespace owns it. It has two path components where every name a client can
/// write has at least three (`<ns>/<domain>/<path>`), so no client reference ever mangles to it,
/// and it is never shown ([`NsName::unimage`] does not read it back).
pub const HIDDEN_REPO: &str = "ctproxy-untagged";
/// Names longer than this are refused rather than cut (the daemon's limit for images is 255).
const NAME_MAX: usize = 255;

/// A namespace name, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NsName(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid namespace name {0:?}: use lower-case letters, digits and single dashes")]
    Namespace(String),
    #[error("the name {0:?} is not available: names starting with {MARKER:?} are reserved")]
    Reserved(String),
    #[error("invalid name {0:?}: only \"[a-zA-Z0-9][a-zA-Z0-9_.-]+\" are allowed")]
    Invalid(String),
    /// A name the daemon refuses, with the daemon's own message.
    #[error("{0}")]
    Daemon(String),
    #[error("the name {0:?} is too long in a namespace: its daemon-side form (with the namespace's prefix) would exceed {NAME_MAX} bytes")]
    TooLong(String),
    /// dockerd takes control characters in a network name; a namespace does not (they would reach
    /// logs and answers as written).
    #[error("the network name {0:?} contains control characters, which are not available in a namespace")]
    Control(String),
    #[error("{0}")]
    Reference(#[from] ReferenceError),
    #[error("registry {0:?} cannot be used from a namespace: an IP address in brackets has no spelling in a namespace's image names (use a host name)")]
    Domain(String),
}

impl NsName {
    pub fn new(name: &str) -> Result<NsName, NameError> {
        let ok = !name.is_empty()
            && name.len() <= 48
            && name.split('-').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        if !ok {
            return Err(NameError::Namespace(name.to_owned()));
        }
        Ok(NsName(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix of this namespace's object names: `ctp.<ns>.`.
    pub fn prefix(&self) -> String {
        format!("{MARKER}{}.", self.0)
    }

    /// The daemon-side name of a container, volume or network the client calls `name`.
    /// `name` must be a name the daemon accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`); networks accept more,
    /// but a namespace keeps to the common rule.
    pub fn object(&self, name: &str) -> Result<String, NameError> {
        let name = name.strip_prefix('/').unwrap_or(name);
        if name.len() >= MARKER.len() && name[..MARKER.len()].eq_ignore_ascii_case(MARKER) {
            return Err(NameError::Reserved(name.to_owned()));
        }
        let b = name.as_bytes();
        let valid =
            b.len() >= 2 && b[0].is_ascii_alphanumeric() && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !valid {
            return Err(NameError::Invalid(name.to_owned()));
        }
        let out = format!("{MARKER}{}.{name}", self.0);
        if out.len() > NAME_MAX {
            return Err(NameError::TooLong(name.to_owned()));
        }
        Ok(out)
    }

    /// [`NsName::object`] for a container the client names at creation or rename, refused with
    /// dockerd's own message (`daemon/names.go`).
    pub fn container(&self, name: &str) -> Result<String, NameError> {
        self.object(name).map_err(|e| match e {
            NameError::Invalid(n) => NameError::Daemon(format!("Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")),
            e => e,
        })
    }

    /// [`NsName::object`] for a volume the client creates, refused with the local driver's own
    /// messages (`volume/local`).
    pub fn volume(&self, name: &str) -> Result<String, NameError> {
        self.object(name).map_err(|e| match e {
            NameError::Invalid(n) if n.len() < 2 => {
                NameError::Daemon(format!("create {n}: volume name is too short, names should be at least two alphanumeric characters"))
            }
            NameError::Invalid(n) => NameError::Daemon(format!(
                "create {n}: {n:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
            )),
            e => e,
        })
    }

    /// The daemon-side name of a network: dockerd takes any non-empty name for a network (spaces,
    /// slashes, any character), so the namespace does too; only the reserved marker and the
    /// length are refused.
    pub fn network(&self, name: &str) -> Result<String, NameError> {
        if name.len() >= MARKER.len() && name.as_bytes()[..MARKER.len()].eq_ignore_ascii_case(MARKER.as_bytes()) {
            return Err(NameError::Reserved(name.to_owned()));
        }
        // dockerd's own message (libnetwork `ValidateName`, Docker 28); the prefix would make such
        // a name valid on the daemon.
        if name.trim().is_empty() {
            return Err(NameError::Daemon("invalid name: name is empty".to_owned()));
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::Control(name.to_owned()));
        }
        let out = format!("{MARKER}{}.{name}", self.0);
        if out.len() > NAME_MAX {
            return Err(NameError::TooLong(name.to_owned()));
        }
        Ok(out)
    }

    /// The client's name for a daemon-side object name, if this namespace owns the name.
    pub fn unobject<'a>(&self, mangled: &'a str) -> Option<&'a str> {
        let rest = mangled.strip_prefix('/').unwrap_or(mangled).strip_prefix(MARKER)?;
        let rest = rest.strip_prefix(&*self.0)?;
        rest.strip_prefix('.').filter(|n| !n.is_empty())
    }

    /// The daemon-side reference of an image the client calls `r`, with the registry proxy at
    /// `registry` (`127.0.0.1:5001`).
    pub fn image(&self, registry: &str, r: &Reference) -> Result<Reference, NameError> {
        let domain = encode_domain(&r.domain)?;
        let out = Reference {
            domain: registry.to_owned(),
            path: format!("{}/{domain}/{}", self.0, r.path),
            tag: r.tag.clone(),
            digest: r.digest.clone(),
        };
        if out.name().len() > NAME_MAX {
            return Err(NameError::TooLong(r.familiar()));
        }
        Ok(out)
    }

    /// The repository of this namespace's hidden tags ([`HIDDEN_REPO`]).
    pub fn hidden_repo(&self, registry: &str) -> String {
        format!("{registry}/{}/{HIDDEN_REPO}", self.0)
    }

    /// Whether a daemon-side reference string is one of this namespace's hidden tags.
    pub fn is_hidden(&self, registry: &str, s: &str) -> bool {
        s.strip_prefix(&self.hidden_repo(registry)).is_some_and(|rest| rest.starts_with([':', '@']))
    }

    /// The client's reference for a daemon-side one, if it is this namespace's.
    pub fn unimage(&self, registry: &str, r: &Reference) -> Option<Reference> {
        if r.domain != registry {
            return None;
        }
        let (ns, domain, path) = split_repository(&r.path)?;
        (ns == &*self.0).then(|| Reference { domain, path: path.to_owned(), tag: r.tag.clone(), digest: r.digest.clone() })
    }

    /// [`NsName::unimage`] on a reference string (`RepoTags`, `RepoDigests`, event names), giving the
    /// familiar form the CLI prints (`app:latest`).
    pub fn unimage_str(&self, registry: &str, s: &str) -> Option<String> {
        let r = Reference::parse(s).ok()?;
        self.unimage(registry, &r).map(|r| r.familiar())
    }
}

impl fmt::Display for NsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `localhost:5000` → `localhost__5000`. IPv6 literals have no path-component spelling.
pub fn encode_domain(domain: &str) -> Result<String, NameError> {
    if domain.starts_with('[') {
        return Err(NameError::Domain(domain.to_owned()));
    }
    Ok(domain.to_ascii_lowercase().replace(':', "__"))
}

/// `localhost__5000` → `localhost:5000`.
pub fn decode_domain(component: &str) -> String {
    component.replace("__", ":")
}

/// Splits a registry-proxy repository path `<ns>/<domain>/<path>` into the namespace, the real
/// registry (decoded) and the repository path there.
pub fn split_repository(path: &str) -> Option<(&str, String, &str)> {
    let (ns, rest) = path.split_once('/')?;
    let (domain, repo) = rest.split_once('/')?;
    if NsName::new(ns).is_err() || domain.is_empty() || repo.is_empty() {
        return None;
    }
    Some((ns, decode_domain(domain), repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> NsName {
        NsName::new(s).unwrap()
    }

    #[test]
    fn namespace_names() {
        for good in ["a", "alice", "job-123", "a1-b2-c3"] {
            assert!(NsName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "A", "a.b", "a_b", "-a", "a-", "a--b", "a/b", &"a".repeat(49)] {
            assert!(NsName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn objects_round_trip_and_never_collide() {
        let a = ns("alice");
        assert_eq!(a.object("db").unwrap(), "ctp.alice.db");
        assert_eq!(a.object("/db").unwrap(), "ctp.alice.db");
        assert_eq!(a.unobject("/ctp.alice.db"), Some("db"));
        assert_eq!(a.unobject("ctp.alice.proj_web_1"), Some("proj_web_1"));
        assert_eq!(a.unobject("ctp.alice-2.db"), None);
        assert_eq!(a.unobject("ctp.alice."), None);
        assert_eq!(a.unobject("db"), None);
        assert_eq!(ns("alice-2").unobject("ctp.alice.db"), None);
        assert_eq!(a.object("ctp.bob.db"), Err(NameError::Reserved("ctp.bob.db".into())));
        assert_eq!(a.object("CTP.bob.db"), Err(NameError::Reserved("CTP.bob.db".into())));
        for bad in ["", "a", "_x", ".x", "a b", "a/b", "a:b"] {
            assert!(a.object(bad).is_err(), "{bad:?}");
        }
        for good in ["a b", "a", "a/b", "é", ".dot", "a:b"] {
            let m = a.network(good).unwrap();
            assert_eq!(a.unobject(&m), Some(good), "{good:?}");
        }
        assert_eq!(a.network("ctp.bob.x"), Err(NameError::Reserved("ctp.bob.x".into())));
        assert!(a.network("").is_err());
        assert_eq!(a.container("x").unwrap_err().to_string(), "Invalid container name (x), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }

    #[test]
    fn images_round_trip() {
        let a = ns("alice");
        let rp = "127.0.0.1:5001";
        let m = a.image(rp, &Reference::parse("app:1").unwrap()).unwrap();
        assert_eq!(m.to_string(), "127.0.0.1:5001/alice/docker.io/library/app:1");
        assert_eq!(a.unimage_str(rp, &m.to_string()).as_deref(), Some("app:1"));
        let m = a.image(rp, &Reference::parse("localhost:5000/team/x").unwrap()).unwrap();
        assert_eq!(m.to_string(), "127.0.0.1:5001/alice/localhost__5000/team/x");
        assert_eq!(a.unimage(rp, &m).unwrap().familiar(), "localhost:5000/team/x");
        assert_eq!(ns("bob").unimage(rp, &m), None);
        assert_eq!(split_repository("alice/localhost__5000/team/x"), Some(("alice", "localhost:5000".into(), "team/x")));
        assert_eq!(split_repository("alice/docker.io"), None);
        assert!(a.image(rp, &Reference::parse("[::1]:5000/x").unwrap()).is_err());
        let hidden = format!("{}:abc", a.hidden_repo(rp));
        assert!(a.is_hidden(rp, &hidden));
        assert_eq!(a.unimage_str(rp, &hidden), None);
        assert!(!ns("alice-2").is_hidden(rp, &hidden));
        assert!(!a.is_hidden(rp, &format!("{}x:abc", a.hidden_repo(rp))));
        assert!(a.image(rp, &Reference::parse(&format!("a/{}", "b".repeat(230))).unwrap()).is_err());
    }
}
