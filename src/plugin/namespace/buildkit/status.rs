//! `Control.Status` in a namespace: the build progress the client prints, with the client's own
//! names.
//!
//! The daemon reports what it did with the daemon-side names ctproxy gave it (`#9 naming to
//! 127.0.0.1:5001/alice/docker.io/library/app:1`, `load metadata for` a rewritten `FROM`), and the
//! hidden tag every build result carries (`<rp>/<ns>/ctproxy-untagged:<token>`). Each text field
//! of every vertex, status, log and warning is de-mangled ([`Demangler`]); a one-line status or
//! vertex that names the hidden tag (`naming to`, `unpacking to` it) is dropped, and a hidden tag in
//! longer text (a log) is cut out.

use bytes::Bytes;

use super::super::text::Demangler;
use super::Namespace;
use crate::docker::buildkit::{edit_status, Edit};
use crate::http::grpc::Mapper;

/// Rewrites one namespace's status messages.
pub(super) struct StatusText {
    demangler: Demangler,
    hidden: String,
    /// The registry proxy's address and the namespace, for URLs.
    registry: String,
    ns: String,
}

impl StatusText {
    pub fn new(ns: &Namespace) -> StatusText {
        StatusText {
            demangler: Demangler::new(&ns.name, &ns.settings.registry),
            hidden: ns.name.hidden_repo(&ns.settings.registry),
            registry: ns.settings.registry.clone(),
            ns: ns.name.to_string(),
        }
    }

    /// The answer mapper of a `Status` call. A message that does not parse is dropped: passing
    /// it could show the daemon's names.
    pub fn mapper(ns: &Namespace) -> Mapper {
        let (text, status) = (StatusText::new(ns), StatusText::new(ns));
        Mapper {
            message: Some(Box::new(move |msg: Bytes| match edit_status(&msg, |t| text.edit(t)) {
                Ok(out) => Some(out.into()),
                Err(e) => {
                    tracing::debug!(error = %e, "BuildKit status message dropped: it does not parse");
                    None
                }
            })),
            status: Some(Box::new(move |t: &str| status.plain(t))),
        }
    }

    /// The answer mapper of a call whose error text may name the daemon's names (`Solve`:
    /// `failed to push <name>`).
    pub fn error_mapper(ns: &Namespace) -> Mapper {
        let text = StatusText::new(ns);
        Mapper { message: None, status: Some(Box::new(move |t: &str| text.plain(t))) }
    }

    /// Text that is shown whole (an error): de-mangled, hidden tags cut out.
    pub fn plain(&self, s: &str) -> String {
        let cut = if s.contains(&self.hidden) { self.cut_hidden(s) } else { s.to_owned() };
        let urls = self.urls(&cut);
        self.demangler.text(urls.as_deref().unwrap_or(&cut)).into_owned()
    }

    /// Registry proxy URLs (`http://<rp>/v2/<ns>/<domain>/<path>/blobs/...`, in a failed push's
    /// error) as the real registry's (`http://<domain>/v2/<path>/blobs/...`); `None` if there are
    /// none.
    fn urls(&self, s: &str) -> Option<String> {
        let needle = format!("{}/v2/{}/", self.registry, self.ns);
        if !s.contains(&needle) {
            return None;
        }
        let mut out = s.to_owned();
        while let Some(start) = out.find(&needle) {
            let rest = &out[start + needle.len()..];
            let end = rest.find('/').unwrap_or(rest.len());
            let domain = super::super::names::decode_domain(&rest[..end]);
            let tail = rest.get(end + 1..).unwrap_or("").to_owned();
            out = format!("{}{domain}/v2/{tail}", &out[..start]);
        }
        Some(out)
    }

    /// One text field.
    pub fn edit(&self, text: &[u8]) -> Edit {
        let Ok(s) = std::str::from_utf8(text) else {
            // Log bytes need not be text; a name in them is still ASCII.
            let lossy = String::from_utf8_lossy(text);
            return match self.edit(lossy.as_bytes()) {
                Edit::Keep => Edit::Keep,
                e => e,
            };
        };
        let mut owned = None;
        if s.contains(&self.hidden) {
            if !s.trim_end().contains('\n') {
                return Edit::Drop;
            }
            owned = Some(self.cut_hidden(s));
        }
        if let Some(u) = self.urls(owned.as_deref().unwrap_or(s)) {
            owned = Some(u);
        }
        let base = owned.as_deref().unwrap_or(s);
        match self.demangler.text(base) {
            std::borrow::Cow::Owned(t) => Edit::Replace(t.into_bytes()),
            std::borrow::Cow::Borrowed(_) if owned.is_some() => Edit::Replace(base.as_bytes().to_vec()),
            std::borrow::Cow::Borrowed(_) => Edit::Keep,
        }
    }

    /// `s` without its hidden tags (and the comma that joined one to a list of names).
    fn cut_hidden(&self, s: &str) -> String {
        let mut out = s.to_owned();
        while let Some(start) = out.find(&self.hidden) {
            let end = out[start..].find(|c: char| c.is_whitespace() || c == ',' || c == '"').map_or(out.len(), |i| start + i);
            let (start, end) = if start > 0 && out[..start].ends_with(',') {
                (start - 1, end)
            } else if out[end..].starts_with(',') {
                (start, end + 1)
            } else {
                (start, end)
            };
            out.replace_range(start..end, "");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> StatusText {
        let ns = super::super::super::names::NsName::new("alice").unwrap();
        StatusText {
            demangler: Demangler::new(&ns, "127.0.0.1:5001"),
            hidden: ns.hidden_repo("127.0.0.1:5001"),
            registry: "127.0.0.1:5001".into(),
            ns: "alice".into(),
        }
    }

    fn edited(t: &StatusText, s: &str) -> Option<String> {
        match t.edit(s.as_bytes()) {
            Edit::Keep => Some(s.to_owned()),
            Edit::Replace(b) => Some(String::from_utf8(b).unwrap()),
            Edit::Drop => None,
        }
    }

    #[test]
    fn daemon_names_become_the_clients() {
        let t = text();
        assert_eq!(edited(&t, "naming to 127.0.0.1:5001/alice/docker.io/library/app:1").as_deref(), Some("naming to app:1"));
        assert_eq!(
            edited(&t, "[internal] load metadata for 127.0.0.1:5001/alice/localhost__5000/x:2").as_deref(),
            Some("[internal] load metadata for localhost:5000/x:2")
        );
        assert_eq!(edited(&t, "naming to 127.0.0.1:5001/alice/ctproxy-untagged:0123abcd"), None);
        assert_eq!(
            edited(&t, "names: 127.0.0.1:5001/alice/docker.io/library/app:1,127.0.0.1:5001/alice/ctproxy-untagged:0123\nnext\n").as_deref(),
            Some("names: app:1\nnext\n")
        );
        assert_eq!(edited(&t, "RUN echo hi").as_deref(), Some("RUN echo hi"));
        assert_eq!(
            t.plain("failed to push 127.0.0.1:5001/alice/localhost__5000/x:1: HEAD http://127.0.0.1:5001/v2/alice/localhost__5000/x/blobs/sha256:ab: 401"),
            "failed to push localhost:5000/x:1: HEAD http://localhost:5000/v2/x/blobs/sha256:ab: 401"
        );
    }
}
