//! Layer 3, plugins: who is calling ([`auth`]) and what they may do ([`policy`]).
//!
//! Both kinds sit behind one small trait each and are chained per listener from the configuration.
//! They see requests only through the Docker-layer model (an [`Endpoint`], a Go-parsed [`Query`], a
//! canonical JSON body), never raw bytes, so they judge exactly what dockerd will act on.

pub mod auth;
pub mod namespace;
pub mod policy;

use std::sync::Arc;

use hyper::{HeaderMap, Method, StatusCode};

use crate::docker::{Endpoint, Query, Route};

pub use auth::{AuthError, Authenticator};
pub use policy::{Policy, PolicyChain};

/// Adds the operator's own settings to every container created through a listener (the
/// transparent cache's host entries and CA trust). It runs after the policies, so what it adds is
/// never judged as if the client had asked for it; it must only add what is safe for any client.
pub trait CreateDecorator: Send + Sync {
    /// Rewrites a container-create body (canonical field names, `HostConfig` folded, names already
    /// as the daemon will see them). `daemon` answers questions such as the image's own config.
    fn decorate<'a>(
        &'a self,
        body: &'a mut serde_json::Value,
        daemon: &'a namespace::Daemon,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// Who made a request, as established by an authenticator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    /// Which authenticator established it (`unix-peer`, `tls-cert`, `http`, or `anonymous`).
    pub via: &'static str,
}

impl Identity {
    /// The identity of requests on a listener without authentication.
    pub fn anonymous() -> Identity {
        Identity { name: Arc::from("anonymous"), via: "anonymous" }
    }
}

/// A request as policies see it and may rewrite it.
pub struct RequestCtx<'a> {
    pub identity: &'a Identity,
    pub listener: &'a str,
    pub method: &'a Method,
    pub route: &'a Route,
    /// The query as dockerd will read it; the forwarded query is re-encoded from this.
    pub query: &'a mut Query,
    pub headers: &'a mut HeaderMap,
    /// A namespace stage runs after the policies: container references resolve to the namespace's
    /// own containers only.
    pub namespaced: bool,
    /// The listener's own Docker socket (a CI job's), which its containers may mount: binds of the
    /// host's socket have already been redirected to it.
    pub own_socket: Option<&'a std::path::Path>,
    /// Host paths ctproxy granted this listener's containers (a CI job's project cache and the
    /// runner binary): the conservative policy lets them be bound as granted.
    pub granted_binds: &'a [GrantedBind],
}

/// A host path a listener's containers may bind although no policy lists it: ctproxy made it for
/// the listener's owner (a CI job's project cache) or it is a read-only tool (the runner binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedBind {
    pub path: std::path::PathBuf,
    /// Only read-only binds of it are allowed.
    pub read_only: bool,
}

impl RequestCtx<'_> {
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.route.endpoint
    }
}

/// A decoded JSON body, in its canonical form (see `docker::json`).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonBody {
    pub value: serde_json::Value,
    /// Struct keys that match no known field: the daemon may know them even if ctproxy does not.
    pub unknown: Vec<String>,
}

/// A policy's refusal. The client sees `ctproxy: <what> is not allowed by policy <name>; <remedy>`
/// (403), or `ctproxy: <what>` for a request the policy found malformed (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// What was refused, with the field it came from, phrased to complete "... is not allowed":
    /// `privileged mode (HostConfig.Privileged)`.
    pub what: String,
    /// How an administrator could allow it, or why nothing can: the client passes the message on to
    /// whoever runs ctproxy, who then knows which setting to look at.
    pub remedy: Remedy,
}

/// The part of a refusal that tells an administrator what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Remedy {
    /// No setting of the policy allows it (privilege, host access): on purpose.
    #[default]
    Never,
    /// A field, parameter or value this ctproxy version does not know: no setting allows it, a newer
    /// version may.
    Unknown,
    /// A setting of the policy's own `[policy.NAME]` section allows it: "by `how` [policy.NAME] `key`".
    Setting { how: &'static str, key: &'static str },
    /// A namespace's refusal that no setting lifts inside a namespace; a listener without
    /// namespaces serves it (subject to its policies).
    Outside,
    /// A setting outside any policy allows it: "an administrator can allow it by `0`" (a whole
    /// phrase: "setting `[registry_proxy]`").
    Config(&'static str),
}

impl Remedy {
    /// The sentence, for the policy named `policy` (its `[policy.NAME]` section).
    pub fn text(&self, policy: &str) -> String {
        match self {
            Remedy::Never => "no setting allows it".to_owned(),
            Remedy::Unknown => format!("ctproxy {} does not know it (no setting allows it)", env!("CARGO_PKG_VERSION")),
            Remedy::Setting { how, key } => format!("an administrator can allow it by {how} [policy.{policy}] {key}"),
            Remedy::Outside => "no setting allows it in a namespace (a listener without namespaces does)".to_owned(),
            Remedy::Config(how) => format!("an administrator can allow it by {how}"),
        }
    }
}

/// The part of a namespace that made a refusal, as its message names it: `the namespace`,
/// `the namespace (build)` (a classic build's Dockerfile and context), `the namespace (BuildKit)`
/// (a BuildKit gRPC call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Namespace,
    Build,
    BuildKit,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Namespace => "the namespace",
            Layer::Build => "the namespace (build)",
            Layer::BuildKit => "the namespace (BuildKit)",
        })
    }
}

/// A namespace's refusal as the client reads it, the counterpart of [`Denied::message`] for
/// policies (without the `ctproxy: ` prefix, which the answer adds): what was refused (with its
/// field, instruction or method), which part of the namespace refused it, and how an
/// administrator allows it or that no setting can, on one line:
/// `the remote build context (remote) is not available in a namespace; refused by the namespace
/// (build); no setting allows it`.
///
/// [`Denied::message`]: policy::Denied::message
pub fn ns_refusal(what: &str, layer: Layer, remedy: &Remedy) -> String {
    format!("{what}; refused by {layer}; {}", remedy.text(""))
}

impl Refusal {
    pub fn forbidden(what: impl Into<String>) -> Refusal {
        Refusal { status: StatusCode::FORBIDDEN, what: what.into(), remedy: Remedy::Never }
    }

    /// A request the daemon would refuse as malformed too (an address that does not parse): 400.
    pub fn bad_request(what: impl Into<String>) -> Refusal {
        Refusal { status: StatusCode::BAD_REQUEST, what: what.into(), remedy: Remedy::Never }
    }

    /// Something this ctproxy version does not know (see [`Remedy::Unknown`]).
    pub fn unknown(mut self) -> Refusal {
        self.remedy = Remedy::Unknown;
        self
    }

    /// A setting allows it: "an administrator can allow it by `how` [policy.NAME] `key`".
    pub fn allowed_by(mut self, how: &'static str, key: &'static str) -> Refusal {
        self.remedy = Remedy::Setting { how, key };
        self
    }

    /// What the audit log records (next to the policy's name): what was refused, and the remedy.
    pub fn reason(&self, policy: &str) -> String {
        if self.status == StatusCode::BAD_REQUEST {
            return self.what.clone();
        }
        format!("{}; {}", self.what, self.remedy.text(policy))
    }
}
