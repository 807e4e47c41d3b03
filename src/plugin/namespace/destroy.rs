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

/// What a destroy removed, and what it could not remove (`left`: objects whose removal the daemon
/// refused or failed; a later destroy, the reaper's, tries them again).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Removed {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
    pub images: usize,
    #[serde(default)]
    pub left: Left,
}

/// Objects of a namespace a destroy found but could not remove, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Left {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
    pub images: usize,
}

impl Left {
    pub fn is_empty(&self) -> bool {
        *self == Left::default()
    }
}

impl Namespace {
    /// Removes the namespace's containers (with their anonymous volumes), networks, volumes and
    /// image tags. Errors on single objects are logged and skipped: a destroy does what it can and
    /// can be run again.
    pub async fn destroy(&self, daemon: &Daemon) -> Result<Removed, NsError> {
        let containers = self.destroy_containers(daemon).await?;
        Ok(self.destroy_rest(daemon).await?.with_containers(containers))
    }

    /// The first half of [`Namespace::destroy`]: the containers (nothing of the namespace runs
    /// any more afterwards). Returns how many were removed and how many were left.
    pub async fn destroy_containers(&self, daemon: &Daemon) -> Result<(usize, usize), NsError> {
        let containers: Vec<String> = self
            .own_containers(daemon)
            .await?
            .iter()
            .filter_map(|c| c.get("Id").and_then(Value::as_str))
            .map(|id| format!("/containers/{id}?force=1&v=1"))
            .collect();
        let found = containers.len();
        let gone = delete_all(daemon, containers).await;
        Ok((gone, found - gone))
    }

    /// The second half of [`Namespace::destroy`], once the containers are gone: networks, volumes
    /// and image tags (networks and volumes in parallel).
    pub async fn destroy_rest(&self, daemon: &Daemon) -> Result<Removed, NsError> {
        // The default network goes too: a request still served afterwards asks the daemon again.
        self.forget_known();
        let filter = self.own_filter();
        let nets: Vec<String> = daemon
            .list(&format!("/networks?filters={filter}"))
            .await?
            .iter()
            .filter_map(|n| n.get("Id").and_then(Value::as_str))
            .map(|id| format!("/networks/{id}"))
            .collect();
        let vols = daemon.get(&format!("/volumes?filters={filter}")).await?;
        let vols: Vec<String> = vols
            .as_ref()
            .and_then(|v| v.get("Volumes"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("Name").and_then(Value::as_str))
            .map(|name| format!("/volumes/{}?force=1", enc(name)))
            .collect();
        let images = daemon.list("/images/json").await?;
        let tags: Vec<String> =
            images.iter().flat_map(|img| self.own_tags(img)).map(|tag| format!("/images/{}?force=1", enc(&tag))).collect();
        let found = (nets.len(), vols.len(), tags.len());
        // Tags one by one: untagging one image from several tasks at once races with itself.
        let untag = async {
            let mut n = 0;
            for t in &tags {
                n += usize::from(delete(daemon, t).await);
            }
            n
        };
        let (networks, volumes, images) = tokio::join!(delete_all(daemon, nets), delete_all(daemon, vols), untag);
        let left = Left { containers: 0, networks: found.0 - networks, volumes: found.1 - volumes, images: found.2 - images };
        Ok(Removed { containers: 0, networks, volumes, images, left })
    }
}

impl Removed {
    /// This with the counts of [`Namespace::destroy_containers`] (removed, left).
    pub fn with_containers(self, (removed, left): (usize, usize)) -> Removed {
        Removed { containers: removed, left: Left { containers: left, ..self.left }, ..self }
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

/// Deletes every path at once; returns how many are gone.
async fn delete_all(daemon: &Daemon, paths: Vec<String>) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for path in paths {
        let daemon = daemon.clone();
        set.spawn(async move { delete(&daemon, &path).await });
    }
    set.join_all().await.into_iter().filter(|gone| *gone).count()
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
