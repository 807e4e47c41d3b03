//! Removing everything a namespace holds on the daemon: what a CI job's cleanup, and the reaper of
//! jobs that were never cleaned up, do.
//!
//! Ownership is read from the daemon (labels, image tag prefixes), so this works after a crash or a
//! restart of ctproxy, with no state of ctproxy's own.

use hyper::Method;
use serde_json::Value;

use super::daemon::enc;
use super::filters::Filters;
use super::resolve::strings;
use super::{Daemon, Namespace, NsError, NsName, NS_LABEL};

/// What a destroy removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
    pub images: usize,
}

impl Namespace {
    /// Removes the namespace's containers (with their anonymous volumes), networks, volumes and
    /// image tags. Errors on single objects are logged and skipped: a destroy does what it can and
    /// can be run again.
    pub async fn destroy(&self, daemon: &Daemon) -> Result<Removed, NsError> {
        let mut removed = Removed::default();
        let filter = self.own_filter();
        for c in self.own_containers(daemon).await? {
            let Some(id) = c.get("Id").and_then(Value::as_str) else { continue };
            if delete(daemon, &format!("/containers/{id}?force=1&v=1")).await {
                removed.containers += 1;
            }
        }
        let nets = daemon.list(&format!("/networks?filters={filter}")).await?;
        for n in &nets {
            let Some(id) = n.get("Id").and_then(Value::as_str) else { continue };
            if delete(daemon, &format!("/networks/{id}")).await {
                removed.networks += 1;
            }
        }
        let vols = daemon.get(&format!("/volumes?filters={filter}")).await?;
        for v in vols.as_ref().and_then(|v| v.get("Volumes")).and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = v.get("Name").and_then(Value::as_str) else { continue };
            if delete(daemon, &format!("/volumes/{}?force=1", enc(name))).await {
                removed.volumes += 1;
            }
        }
        let images = daemon.list("/images/json").await?;
        for img in &images {
            for tag in self.own_tags(img) {
                if delete(daemon, &format!("/images/{}?force=1", enc(&tag))).await {
                    removed.images += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Every namespace that holds something on the daemon (by label or image tag), for reapers.
pub async fn namespaces_on_daemon(daemon: &Daemon, registry: &str) -> Result<Vec<NsName>, NsError> {
    let mut found = std::collections::BTreeSet::new();
    let label = |v: &Value, ptr: &str| v.pointer(ptr).and_then(|l| l.get(NS_LABEL)).and_then(Value::as_str).map(str::to_owned);
    let f = {
        let mut f = Filters::default();
        f.add("label", NS_LABEL.to_owned());
        enc(&f.encode())
    };
    for c in daemon.list(&format!("/containers/json?all=1&filters={f}")).await? {
        found.extend(label(&c, "/Labels"));
    }
    for n in daemon.list(&format!("/networks?filters={f}")).await? {
        found.extend(label(&n, "/Labels"));
    }
    if let Some(vols) = daemon.get(&format!("/volumes?filters={f}")).await? {
        for v in vols.get("Volumes").and_then(Value::as_array).into_iter().flatten() {
            found.extend(label(v, "/Labels"));
        }
    }
    let prefix = format!("{registry}/");
    for img in daemon.list("/images/json").await? {
        for t in strings(img.get("RepoTags")) {
            if let Some(rest) = t.strip_prefix(&prefix) {
                found.extend(rest.split('/').next().map(str::to_owned));
            }
        }
    }
    Ok(found.into_iter().filter_map(|n| NsName::new(&n).ok()).collect())
}

async fn delete(daemon: &Daemon, path: &str) -> bool {
    match daemon.call(Method::DELETE, path, None).await {
        Ok((status, _)) if status.is_success() || status == hyper::StatusCode::NOT_FOUND => true,
        Ok((status, body)) => {
            tracing::warn!(%path, %status, body = %String::from_utf8_lossy(&body).trim(), "could not remove a namespace object");
            false
        }
        Err(e) => {
            tracing::warn!(%path, error = %e, "could not remove a namespace object");
            false
        }
    }
}
