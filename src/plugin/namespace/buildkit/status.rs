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
use crate::http::grpc::MapResponse;

/// Rewrites one namespace's status messages.
pub(super) struct StatusText {
    demangler: Demangler,
    hidden: String,
}

impl StatusText {
    pub fn new(ns: &Namespace) -> StatusText {
        StatusText { demangler: Demangler::new(&ns.name, &ns.settings.registry), hidden: ns.name.hidden_repo(&ns.settings.registry) }
    }

    /// The response mapper of a `Status` call. A message that does not parse is dropped: passing
    /// it could show the daemon's names.
    pub fn mapper(self) -> MapResponse {
        Box::new(move |msg: Bytes| match edit_status(&msg, |t| self.edit(t)) {
            Ok(out) => Some(out.into()),
            Err(e) => {
                tracing::debug!(error = %e, "BuildKit status message dropped: it does not parse");
                None
            }
        })
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
        StatusText { demangler: Demangler::new(&ns, "127.0.0.1:5001"), hidden: ns.hidden_repo("127.0.0.1:5001") }
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
    }
}
