//! Namespaces: many users on one daemon, each seeing only their own containers, volumes, networks,
//! exec instances and images.
//!
//! Unlike a policy, a namespace has to ask the daemon (who owns `db`? which container runs exec
//! `3f…`?) and to rewrite answers (lists, inspect, events, progress streams), so it is an async stage
//! of its own with two halves: [`Namespace::prepare`] rewrites a request that passed the policies
//! and says what to do with the answer ([`After`]); [`Namespace::finish`] does it.
//!
//! - [`names`]: how names are mangled (`ctp.<ns>.<name>`, `<registry proxy>/<ns>/<domain>/<path>`);
//! - [`daemon`]: the few internal requests the stage makes to dockerd;
//! - [`resolve`]: a client's reference (name, ID, ID prefix) to an object the namespace owns, or the
//!   daemon's own not-found answer;
//! - [`request`]: per-endpoint rewriting of paths, queries, headers and JSON bodies;
//! - [`response`]: de-mangling and filtering of answers, buffered or streamed line by line;
//! - [`buildkit`]: BuildKit's gRPC calls on `/grpc` and `/session`, judged and rewritten;
//! - [`archive`]: image names inside `docker load` bodies and `docker save` answers.
//!
//! Ownership lives on the daemon (the [`NS_LABEL`] label, image tags under the namespace's prefix),
//! so a restarted ctproxy needs no state of its own to give every namespace exactly its own world.

pub mod archive;
mod build;
pub mod buildkit;
pub mod commit;
pub mod daemon;
pub mod destroy;
pub mod export;
pub mod fetch;
pub mod filters;
pub mod names;
pub mod network;
pub mod pool;
pub mod request;
pub mod resolve;
pub mod response;
pub mod swarm;
pub mod text;

use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::StatusCode;
use serde_json::Value;

use crate::plugin::{ns_refusal, Layer, Remedy};

pub use daemon::Daemon;
pub use names::{NameError, NsName, MARKER, NS_LABEL};
pub use request::NsRequest;
pub use response::After;

/// Hands out the registry credentials dockerd presents to ctproxy's registry proxy.
///
/// Implemented by the registry proxy (a higher layer): a pull or push of a namespace image carries a
/// one-time token that names the namespace and, inside ctproxy only, the client's own credentials
/// for the real registry.
pub trait RegistryTokens: Send + Sync {
    /// The `X-Registry-Auth` value to send to dockerd instead of the client's (`client`).
    fn issue(&self, namespace: &NsName, client: Option<&HeaderValue>) -> HeaderValue;
}

/// What every namespace on this server shares.
#[derive(Clone)]
pub struct Settings {
    /// The registry proxy's address (`127.0.0.1:5001`): the domain of every namespace image.
    pub registry: String,
    /// Images every namespace may use read-only under their real names (`ctproxy-test/*`).
    pub shared_images: Vec<String>,
    pub tokens: Option<Arc<dyn RegistryTokens>>,
    /// The largest answer buffered for rewriting (lists, inspect).
    pub max_response: usize,
    /// Where namespace networks get their subnets (`None`: the daemon's pools, no chosen subnets).
    pub pool: Option<pool::NetworkPool>,
    /// The IDs of the shared images, as last listed (for `docker info`'s count).
    pub shared_ids: SharedIds,
}

/// The IDs of the images every namespace sees as shared, remembered for [`SharedIds::FOR`].
///
/// Why: `docker info` counts the shared images among a namespace's own, BuildKit's clients ask
/// `/info` before every build, and listing images on Docker 28's containerd store costs the daemon
/// several milliseconds per image. Shared images are the administrator's and change rarely; a
/// count at most this old is what `docker info` shows of them (a namespace's own images are listed
/// every time).
#[derive(Clone, Default)]
pub struct SharedIds(Arc<std::sync::Mutex<Option<Listed>>>);

/// Image IDs and when they were listed.
type Listed = (std::time::Instant, Vec<String>);

impl SharedIds {
    const FOR: std::time::Duration = std::time::Duration::from_secs(10);

    pub fn get(&self) -> Option<Vec<String>> {
        let slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref().filter(|(at, _)| at.elapsed() < Self::FOR).map(|(_, ids)| ids.clone())
    }

    pub fn put(&self, ids: Vec<String>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((std::time::Instant::now(), ids));
    }
}

/// One namespace, as a request sees it.
#[derive(Clone)]
pub struct Namespace {
    pub name: NsName,
    pub settings: Arc<Settings>,
    /// What this namespace has learnt from the daemon and may reuse (shared by its clones).
    known: Arc<network::Known>,
}

/// Why a request was answered by the namespace stage instead of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// Exactly the daemon's answer for an object that does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("{}", bad_name(.0))]
    BadName(#[from] NameError),
    #[error("ctproxy: {0}")]
    Malformed(String),
    /// A parameter the daemon itself would refuse (400), with the daemon's own message.
    #[error("{0}")]
    Invalid(String),
    /// Refused on purpose (403): the message says what, by which part of the namespace, and how an
    /// administrator allows it ([`ns_refusal`]). Made by [`NsError::refused`].
    #[error("ctproxy: {}", ns_refusal(.what, *.layer, .remedy))]
    Refused { what: String, layer: Layer, remedy: Remedy },
    #[error("ctproxy: {0}")]
    Daemon(String),
}

/// A name the daemon itself refuses is refused with its message (and a reference it cannot parse
/// with the parser's); the others are ctproxy's refusals, which say so ([`ns_refusal`]).
fn bad_name(e: &NameError) -> String {
    match e {
        NameError::Daemon(m) => m.clone(),
        NameError::Reference(_) => format!("ctproxy: {e}"),
        NameError::Reserved(_) => format!(
            "ctproxy: {}",
            ns_refusal(
                &format!("{e} (a namespace's own objects are named {MARKER}<namespace>.<name> on the daemon)"),
                Layer::Namespace,
                &Remedy::Never
            )
        ),
        e => format!("ctproxy: {}", ns_refusal(&e.to_string(), Layer::Namespace, &Remedy::Never)),
    }
}

impl NsError {
    pub fn status(&self) -> StatusCode {
        match self {
            NsError::NotFound(_) => StatusCode::NOT_FOUND,
            NsError::BadName(_) | NsError::Malformed(_) | NsError::Invalid(_) => StatusCode::BAD_REQUEST,
            NsError::Refused { .. } => StatusCode::FORBIDDEN,
            NsError::Daemon(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A refusal of the namespace that no setting lifts: `what` names what was refused, with its
    /// field or parameter, and why (`the remote build context (remote) is not available in a
    /// namespace: the daemon would download it`).
    pub fn refused(what: impl Into<String>) -> NsError {
        NsError::Refused { what: what.into(), layer: Layer::Namespace, remedy: Remedy::Never }
    }

    /// The same refusal with another remedy ([`Remedy::Outside`], [`Remedy::Config`]).
    pub fn remedy(self, remedy: Remedy) -> NsError {
        match self {
            NsError::Refused { what, layer, .. } => NsError::Refused { what, layer, remedy },
            e => e,
        }
    }

    /// The same refusal, made by another part of the namespace ([`Layer::Build`]).
    pub fn by(self, layer: Layer) -> NsError {
        match self {
            NsError::Refused { what, remedy, .. } => NsError::Refused { what, layer, remedy },
            e => e,
        }
    }

    pub fn no_container(what: &str) -> NsError {
        NsError::NotFound(format!("No such container: {what}"))
    }

    pub fn no_image(what: &str) -> NsError {
        NsError::NotFound(format!("No such image: {what}"))
    }

    pub fn no_network(what: &str) -> NsError {
        NsError::NotFound(format!("network {what} not found"))
    }

    pub fn no_volume(what: &str) -> NsError {
        NsError::NotFound(format!("get {what}: no such volume"))
    }

    pub fn no_exec(what: &str) -> NsError {
        NsError::NotFound(format!("No such exec instance: {what}"))
    }
}

impl Namespace {
    pub fn new(name: NsName, settings: Arc<Settings>) -> Namespace {
        Namespace { name, settings, known: Arc::default() }
    }

    /// Whether `labels` (an object's `Labels`) carry this namespace's ownership label.
    pub(super) fn owns_labels(&self, labels: Option<&Value>) -> bool {
        labels.and_then(|l| l.get(NS_LABEL)).and_then(Value::as_str) == Some(self.name.as_str())
    }

    /// The label filter that selects this namespace's containers, volumes and networks.
    pub fn label_filter(&self) -> String {
        format!("{NS_LABEL}={}", self.name)
    }

    /// Whether the administrator shares `familiar` (a repository name without tag: `ctproxy-test/busybox`).
    /// Namespaced images (under the registry proxy's name) are never shared, whatever the patterns
    /// say: `*` must not hand one namespace's images to another.
    pub fn is_shared(&self, familiar_repo: &str) -> bool {
        let namespaced = familiar_repo.strip_prefix(self.settings.registry.as_str()).is_some_and(|rest| rest.starts_with('/'));
        !namespaced && self.settings.shared_images.iter().any(|p| glob(p, familiar_repo))
    }
}

/// `*` matches any run of characters (`/` included); everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(s) = s.strip_prefix(head) else { return false };
            (0..=s.len()).filter(|&i| s.is_char_boundary(i)).any(|i| glob(rest, &s[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{glob, Layer, NameError, NsError, NsName, Remedy};
    use hyper::StatusCode;

    /// A namespace refusal ends like a policy's: what, by which part of the namespace, the remedy.
    #[track_caller]
    fn refusal(e: &NsError, layer: &str, remedy: &str) -> String {
        let m = e.to_string();
        assert!(m.starts_with("ctproxy: "), "{m}");
        assert!(m.contains(&format!("; refused by {layer}; ")), "{m}");
        assert!(m.ends_with(remedy), "{m}");
        assert!(!m.contains('\n'), "{m}");
        m
    }

    #[test]
    fn refusals_name_the_layer_and_the_remedy() {
        let e = NsError::refused("a build from a remote context (remote) is not available in a namespace").by(Layer::Build);
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let m = refusal(&e, "the namespace (build)", "; no setting allows it");
        assert!(m.contains("(remote)"), "{m}");
        let e = NsError::refused("SwarmInit is not available in a namespace").remedy(Remedy::Outside);
        refusal(&e, "the namespace", "; no setting allows it in a namespace (a listener without namespaces does)");
        let e = NsError::refused("x").remedy(Remedy::Config("setting [registry_proxy]"));
        refusal(&e, "the namespace", "; an administrator can allow it by setting [registry_proxy]");
        let e = NsError::refused("POST /x is not an endpoint").remedy(Remedy::Unknown).by(Layer::BuildKit);
        refusal(&e, "the namespace (BuildKit)", "(no setting allows it)");
    }

    #[test]
    fn name_refusals_name_the_layer_and_the_remedy() {
        let a = NsName::new("alice").unwrap();
        for e in [a.object("ctp.bob.db"), a.network("ctp.x"), a.network("a\u{1}b"), a.object(&"x".repeat(250))] {
            let e = NsError::from(e.unwrap_err());
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            refusal(&e, "the namespace", "; no setting allows it");
        }
        let m = NsError::from(a.object("ctp.bob.db").unwrap_err()).to_string();
        assert!(m.contains("\"ctp.bob.db\"") && m.contains("reserved"), "{m}");
        let m = NsError::from(a.object(&"x".repeat(250)).unwrap_err()).to_string();
        assert!(m.contains("is too long in a namespace"), "{m}");
        let m = NsError::from(a.network("a\u{1}b").unwrap_err()).to_string();
        assert!(m.contains("network name") && m.contains("control characters") && !m.contains("[a-zA-Z0-9]"), "{m}");
        // The daemon's own refusals keep its words.
        for (name, msg) in [("", "invalid name: name is empty"), ("  ", "invalid name: name is empty")] {
            assert_eq!(a.network(name), Err(NameError::Daemon(msg.into())));
            assert_eq!(NsError::from(a.network(name).unwrap_err()).to_string(), msg);
        }
    }

    #[test]
    fn globs() {
        assert!(glob("ctproxy-test/*", "ctproxy-test/busybox"));
        assert!(glob("busybox", "busybox"));
        assert!(!glob("busybox", "busybox2"));
        assert!(glob("*", "a/b"));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "abbb"));
    }
}
