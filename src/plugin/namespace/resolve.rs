//! From what a client typed (a name, a full ID, an ID prefix) to an object its namespace owns.
//!
//! The daemon would resolve a reference against every namespace's objects, so it is never asked
//! with the client's string. Names are mangled first (a client can only ever name its own
//! objects); IDs and ID prefixes are matched against the namespace's own list. Whatever is not
//! found, or not owned, gets exactly the daemon's not-found answer with the client's own string in
//! it, so nothing about another namespace (not even its existence) leaks.

use serde_json::Value;

use super::daemon::enc;
use super::filters::Filters;
use super::{Daemon, Namespace, NsError};
use crate::docker::reference::Reference;

/// An image as the daemon should be asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// The namespace's own tag (mangled reference string).
    Owned(String),
    /// An image shared by the administrator, under its real name or ID.
    Shared(String),
    /// An image ID (`sha256:…`) that carries one of the namespace's tags.
    Id { id: String, tags: Vec<String> },
}

impl ImageRef {
    pub fn daemon_name(&self) -> &str {
        match self {
            ImageRef::Owned(s) | ImageRef::Shared(s) => s,
            ImageRef::Id { id, .. } => id,
        }
    }
}

fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether the daemon could read `typed` as an image ID or ID prefix (with or without `sha256:`):
/// only then does resolving it need the daemon's list of images.
pub(super) fn could_be_id_prefix(typed: &str) -> bool {
    is_hex_prefix(typed.strip_prefix("sha256:").unwrap_or(typed))
}

impl Namespace {
    /// The `filters` query value (encoded) selecting the namespace's objects by label.
    pub(super) fn own_filter(&self) -> String {
        let mut f = Filters::default();
        f.add("label", self.label_filter());
        enc(&f.encode())
    }

    /// The namespace's containers (all states), as the daemon lists them.
    pub async fn own_containers(&self, daemon: &Daemon) -> Result<Vec<Value>, NsError> {
        daemon.list(&format!("/containers/json?all=1&filters={}", self.own_filter())).await
    }

    /// A container reference → the container's full ID.
    pub async fn container(&self, daemon: &Daemon, typed: &str) -> Result<String, NsError> {
        if let Ok(name) = self.name.object(typed) {
            if let Some(c) = daemon.get(&format!("/containers/{}/json", enc(&name))).await? {
                if self.owns_labels(c.pointer("/Config/Labels")) {
                    return id_of(&c).ok_or_else(|| NsError::no_container(typed));
                }
            }
        }
        if is_hex_prefix(typed) {
            let ids: Vec<String> = self
                .own_containers(daemon)
                .await?
                .iter()
                .filter_map(|c| c.get("Id").and_then(Value::as_str))
                .filter(|id| id.starts_with(typed))
                .map(str::to_owned)
                .collect();
            return unique(ids, typed, NsError::no_container);
        }
        Err(NsError::no_container(typed))
    }

    /// A network reference → the name to give the daemon: a mangled name, the namespace's own
    /// default network for `bridge` and `default` (see [`super::network`]), or `host` and `none`,
    /// which join nothing another namespace can see.
    pub async fn network(&self, daemon: &Daemon, typed: &str) -> Result<String, NsError> {
        match typed {
            "host" | "none" => return Ok(typed.to_owned()),
            "bridge" | "default" => return self.default_network(daemon).await,
            _ => {}
        }
        if let Ok(name) = self.name.network(typed) {
            if let Some(n) = daemon.get(&format!("/networks/{}", enc(&name))).await? {
                if self.owns_labels(n.get("Labels")) {
                    return Ok(name);
                }
            }
        }
        if is_hex_prefix(typed) {
            let f = self.own_filter();
            let list = daemon.list(&format!("/networks?filters={f}")).await?;
            let names: Vec<String> = list
                .iter()
                .filter(|n| n.get("Id").and_then(Value::as_str).is_some_and(|id| id.starts_with(typed)))
                .filter_map(|n| n.get("Name").and_then(Value::as_str).map(str::to_owned))
                .collect();
            return unique(names, typed, NsError::no_network);
        }
        Err(NsError::no_network(typed))
    }

    /// A volume name → the mangled name (volumes have no IDs). Ownership is checked on the daemon.
    pub async fn volume(&self, daemon: &Daemon, typed: &str) -> Result<String, NsError> {
        let name = self.name.object(typed).map_err(|_| NsError::no_volume(typed))?;
        match daemon.get(&format!("/volumes/{}", enc(&name))).await? {
            Some(v) if self.owns_labels(v.get("Labels")) => Ok(name),
            _ => Err(NsError::no_volume(typed)),
        }
    }

    /// An exec instance: allowed only if it runs in one of the namespace's containers.
    pub async fn exec(&self, daemon: &Daemon, typed: &str) -> Result<(), NsError> {
        let Some(e) = daemon.get(&format!("/exec/{}/json", enc(typed))).await? else { return Err(NsError::no_exec(typed)) };
        let Some(cid) = e.get("ContainerID").and_then(Value::as_str) else { return Err(NsError::no_exec(typed)) };
        match daemon.get(&format!("/containers/{}/json", enc(cid))).await? {
            Some(c) if self.owns_labels(c.pointer("/Config/Labels")) => Ok(()),
            _ => Err(NsError::no_exec(typed)),
        }
    }

    /// The reference a client names an image by → the daemon-side reference (for images that may
    /// not exist yet: create, pull, tag targets). Shared images keep their real names.
    pub fn image_name(&self, r: &Reference) -> Result<String, NsError> {
        let repo = Reference { tag: None, digest: None, ..r.clone() }.familiar();
        if self.is_shared(&repo) {
            return Ok(r.familiar());
        }
        Ok(self.name.image(&self.settings.registry, r)?.to_string())
    }

    /// An existing image the client names (reference, ID, ID prefix) → how to ask the daemon.
    pub async fn image(&self, daemon: &Daemon, typed: &str) -> Result<ImageRef, NsError> {
        if let Ok(r) = Reference::parse(typed) {
            let r = r.with_default_tag();
            let repo = Reference { tag: None, digest: None, ..r.clone() }.familiar();
            if self.is_shared(&repo) {
                if daemon.get(&format!("/images/{}/json", enc(&r.to_string()))).await?.is_some() {
                    return Ok(ImageRef::Shared(r.familiar()));
                }
            } else {
                let m = self.name.image(&self.settings.registry, &r).map_err(|_| NsError::no_image(typed))?.to_string();
                if daemon.get(&format!("/images/{}/json", enc(&m))).await?.is_some() {
                    return Ok(ImageRef::Owned(m));
                }
            }
        }
        let hex = typed.strip_prefix("sha256:").unwrap_or(typed);
        if could_be_id_prefix(typed) {
            let images = daemon.list("/images/json").await?;
            let mut found: Vec<ImageRef> = Vec::new();
            for img in &images {
                let Some(id) = img.get("Id").and_then(Value::as_str) else { continue };
                if !id.strip_prefix("sha256:").unwrap_or(id).starts_with(hex) {
                    continue;
                }
                let tags = self.own_tags(img);
                if !tags.is_empty() {
                    found.push(ImageRef::Id { id: id.to_owned(), tags });
                } else if self.shared_tags(img).next().is_some() {
                    found.push(ImageRef::Shared(id.to_owned()));
                }
            }
            if found.len() == 1 {
                return Ok(found.remove(0));
            }
            if found.is_empty() && hex.len() == 64 {
                // Docker 28's listing skips an image whose content it could not read while another
                // client removed images (`docker::store_race`); the daemon's own lookup by ID does
                // not. Its answer counts only if the image is this namespace's (or shared).
                if let Some(found) = self.image_by_daemon_lookup(daemon, hex).await {
                    return Ok(found);
                }
            }
        }
        Err(NsError::no_image(typed))
    }

    /// The image the daemon finds by its full ID `hex`, if it is the namespace's own or shared;
    /// `None` otherwise.
    async fn image_by_daemon_lookup(&self, daemon: &Daemon, hex: &str) -> Option<ImageRef> {
        let img = daemon.get(&format!("/images/sha256:{}/json", enc(hex))).await.ok()??;
        let id = img.get("Id").and_then(Value::as_str)?;
        if id.strip_prefix("sha256:").unwrap_or(id) != hex {
            return None;
        }
        let tags = self.own_tags(&img);
        if !tags.is_empty() {
            return Some(ImageRef::Id { id: id.to_owned(), tags });
        }
        let shared = self.shared_tags(&img).next().is_some();
        shared.then(|| ImageRef::Shared(id.to_owned()))
    }

    /// The namespace's references on an image summary or inspect answer (daemon-side strings):
    /// its tags, its digests and its hidden tags ([`super::names::HIDDEN_REPO`]). An image with
    /// any of them is the namespace's, tagged or not (for the client, an image with only hidden
    /// ones is dangling).
    pub fn own_tags(&self, img: &Value) -> Vec<String> {
        let reg = &self.settings.registry;
        strings(img.get("RepoTags"))
            .chain(strings(img.get("RepoDigests")))
            .filter(|t| self.name.unimage_str(reg, t).is_some() || self.name.is_hidden(reg, t))
            .map(str::to_owned)
            .collect()
    }

    /// The namespace's tags of an image that the client sees (not the hidden ones, no digests).
    pub fn visible_own_tags(&self, img: &Value) -> Vec<String> {
        let reg = &self.settings.registry;
        strings(img.get("RepoTags")).filter(|t| self.name.unimage_str(reg, t).is_some()).map(str::to_owned).collect()
    }

    /// A new hidden tag for an image the namespace is about to make without a name.
    pub fn hidden_tag(&self, token: &str) -> String {
        format!("{}:{token}", self.name.hidden_repo(&self.settings.registry))
    }

    /// The tags of an image that the administrator shares.
    pub fn shared_tags<'v>(&'v self, img: &'v Value) -> impl Iterator<Item = &'v str> + 'v {
        strings(img.get("RepoTags"))
            .filter(|t| Reference::parse(t).is_ok_and(|r| self.is_shared(&Reference { tag: None, digest: None, ..r }.familiar())))
    }
}

pub fn strings(v: Option<&Value>) -> impl Iterator<Item = &str> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
}

fn id_of(v: &Value) -> Option<String> {
    v.get("Id").and_then(Value::as_str).map(str::to_owned)
}

fn unique(mut found: Vec<String>, typed: &str, not_found: fn(&str) -> NsError) -> Result<String, NsError> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_found(typed)),
        _ => Err(NsError::Malformed(format!("multiple IDs found with provided prefix: {typed}"))),
    }
}
