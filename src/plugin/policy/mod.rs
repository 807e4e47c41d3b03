//! Policy plugins: refuse a request, or rewrite it, before it reaches dockerd.
//!
//! A listener (or an identity) has an ordered [`PolicyChain`]. Each policy first sees the request
//! head ([`Policy::check`]: endpoint, query, headers) and then, if it asked for it, the canonical
//! JSON body ([`Policy::check_body`]). A policy in dry-run mode runs on a copy: what it would refuse
//! is logged, nothing is refused and nothing it rewrites is kept.

mod conservative;
mod images;
mod inject;

pub use conservative::{Conservative, ConservativeConfig};
pub use inject::{Inject, InjectConfig};

use std::sync::Arc;

use super::{JsonBody, Refusal, RequestCtx};
use crate::docker::Endpoint;

pub trait Policy: Send + Sync {
    fn name(&self) -> &str;

    /// Every request passes here first. May rewrite the query and headers.
    fn check(&self, req: &mut RequestCtx<'_>) -> Result<(), Refusal>;

    /// Does [`Policy::check_body`] need the JSON body of this endpoint?
    fn reads_body(&self, _endpoint: Endpoint) -> bool {
        false
    }

    /// Checks or rewrites a decoded JSON body (the canonical form that will be forwarded).
    fn check_body(&self, _req: &mut RequestCtx<'_>, _body: &mut JsonBody) -> Result<(), Refusal> {
        Ok(())
    }
}

/// A refusal, with the policy that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub policy: String,
    pub refusal: Refusal,
}

impl Denied {
    /// The message the client sees; the docker CLI prints it as-is: what was refused (with its
    /// field), by which policy, and how an administrator allows it or that no setting can
    /// (`ctproxy: privileged mode (HostConfig.Privileged) is not allowed by policy ci; no setting
    /// allows it`). A 400 says only what is malformed.
    pub fn message(&self) -> String {
        let r = &self.refusal;
        if r.status == hyper::StatusCode::BAD_REQUEST {
            return format!("ctproxy: {}", r.what);
        }
        format!("ctproxy: {} is not allowed by policy {}; {}", r.what, self.policy, r.remedy.text(&self.policy))
    }
}

#[derive(Clone)]
struct Member {
    policy: Arc<dyn Policy>,
    dry_run: bool,
}

/// The ordered policies that apply to a request.
#[derive(Clone, Default)]
pub struct PolicyChain {
    members: Vec<Member>,
}

impl PolicyChain {
    pub fn push(&mut self, policy: Arc<dyn Policy>, dry_run: bool) {
        self.members.push(Member { policy, dry_run });
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.policy.name()).collect()
    }

    pub fn reads_body(&self, endpoint: Endpoint) -> bool {
        self.members.iter().any(|m| m.policy.reads_body(endpoint))
    }

    pub fn check(&self, req: &mut RequestCtx<'_>) -> Result<(), Denied> {
        for m in &self.members {
            let outcome = if m.dry_run {
                let (mut query, mut headers) = (req.query.clone(), req.headers.clone());
                let mut copy = RequestCtx { query: &mut query, headers: &mut headers, ..*req };
                m.policy.check(&mut copy)
            } else {
                m.policy.check(req)
            };
            self.judge(m, req, outcome)?;
        }
        Ok(())
    }

    pub fn check_body(&self, req: &mut RequestCtx<'_>, body: &mut JsonBody) -> Result<(), Denied> {
        let Some(endpoint) = req.endpoint() else { return Ok(()) };
        for m in self.members.iter().filter(|m| m.policy.reads_body(endpoint)) {
            let outcome = if m.dry_run {
                let (mut query, mut headers, mut copy_body) = (req.query.clone(), req.headers.clone(), body.clone());
                let mut copy = RequestCtx { query: &mut query, headers: &mut headers, ..*req };
                m.policy.check_body(&mut copy, &mut copy_body)
            } else {
                m.policy.check_body(req, body)
            };
            self.judge(m, req, outcome)?;
        }
        Ok(())
    }

    fn judge(&self, m: &Member, req: &RequestCtx<'_>, outcome: Result<(), Refusal>) -> Result<(), Denied> {
        let Err(refusal) = outcome else { return Ok(()) };
        let denied = Denied { policy: m.policy.name().to_owned(), refusal };
        if m.dry_run {
            tracing::warn!(
                target: "ctproxy::audit",
                dry_run = true,
                identity = %req.identity.name,
                listener = req.listener,
                method = %req.method,
                endpoint = req.route.endpoint.map_or("unknown", Endpoint::name),
                path = %req.route.path,
                policy = %denied.policy,
                reason = %denied.refusal.reason(&denied.policy),
                "request would be refused (dry run)"
            );
            return Ok(());
        }
        Err(denied)
    }
}
