//! What `POST /images/create` makes dockerd do: pull, import the request body, or download a URL.
//!
//! dockerd (moby `postImagesCreate`, 20.10 to 28) decides on `fromImage` first: any non-empty
//! `fromImage` is a pull, whatever `fromSrc` says. Only without it is the request an import, of the
//! request body when `fromSrc` is `-`, and otherwise of a URL the daemon downloads itself (an empty
//! `fromSrc` too: it becomes `http://`). Whoever judges the request must branch in the same order, or
//! `fromSrc=-&fromImage=<registry>/x` is a pull that was checked as an import. Both the namespace
//! stage and the `conservative` policy call [`classify`], so they cannot disagree with each other.
//!
//! Per branch, dockerd reads (all with `r.Form.Get`, the first value):
//! - pull: `fromImage` (one trailing `:` dropped, `pull -a` sends one), `tag` (a tag, or a digest
//!   that replaces the reference's tag and digest), `platform`, `X-Registry-Auth`; `repo`,
//!   `message`, `fromSrc` and `changes` are ignored;
//! - import: `fromSrc`, `repo` and `tag` (the new image's name: `repo` may carry a tag, `tag`
//!   replaces it, a digest in `repo` is refused), `message` (the history comment), every `changes`
//!   value (Dockerfile instructions applied to the config: `CMD`, `ENTRYPOINT`, `ENV`, `EXPOSE`,
//!   `HEALTHCHECK`, `LABEL`, `ONBUILD`, `STOPSIGNAL`, `USER`, `VOLUME`, `WORKDIR`), `platform`.
//!
//! Layer 2: facts about the API only, no policy.

use super::Query;

/// The branch dockerd takes for one `POST /images/create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageCreate<'q> {
    /// `fromImage` is set: dockerd pulls it from its registry.
    Pull {
        /// `fromImage` with the one trailing `:` dockerd drops removed.
        from_image: &'q str,
        /// `tag`, possibly empty, possibly a digest.
        tag: &'q str,
    },
    /// No `fromImage`, `fromSrc=-`: the request body is a root filesystem tar.
    ImportBody,
    /// No `fromImage`, any other `fromSrc`: dockerd downloads `url` itself.
    ImportUrl {
        /// The URL as dockerd completes it (`http://` added when there is no scheme).
        url: String,
    },
}

/// Classifies a `POST /images/create` exactly as dockerd's handler branches.
pub fn classify(q: &Query) -> ImageCreate<'_> {
    let from_image = q.get("fromImage").unwrap_or("");
    if !from_image.is_empty() {
        return ImageCreate::Pull { from_image: from_image.strip_suffix(':').unwrap_or(from_image), tag: q.get("tag").unwrap_or("") };
    }
    match q.get("fromSrc").unwrap_or("") {
        "-" => ImageCreate::ImportBody,
        // `len(strings.Split(src, "://")) == 1`: no `://` anywhere.
        src if !src.contains("://") => ImageCreate::ImportUrl { url: format!("http://{src}") },
        src => ImageCreate::ImportUrl { url: src.to_owned() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(q: &str) -> ImageCreate<'static> {
        let q: &'static Query = Box::leak(Box::new(Query::parse(q).unwrap()));
        classify(q)
    }

    #[test]
    fn from_image_wins_like_dockerd() {
        assert_eq!(c("fromImage=busybox&tag=1"), ImageCreate::Pull { from_image: "busybox", tag: "1" });
        // The disguised pull: dockerd pulls, whatever fromSrc says.
        assert_eq!(c("fromSrc=-&fromImage=127.0.0.1:9/x"), ImageCreate::Pull { from_image: "127.0.0.1:9/x", tag: "" });
        assert_eq!(c("fromSrc=http://h/x.tar&fromImage=x"), ImageCreate::Pull { from_image: "x", tag: "" });
        // `pull -a` sends one trailing colon; only one is dropped.
        assert_eq!(c("fromImage=busybox:"), ImageCreate::Pull { from_image: "busybox", tag: "" });
        assert_eq!(c("fromImage=busybox::"), ImageCreate::Pull { from_image: "busybox:", tag: "" });
        // The first value is the one dockerd reads.
        assert_eq!(c("fromImage=a&fromImage="), ImageCreate::Pull { from_image: "a", tag: "" });
        assert_eq!(c("fromImage=&fromImage=a&fromSrc=-"), ImageCreate::ImportBody);
    }

    #[test]
    fn imports_and_urls() {
        assert_eq!(c("fromSrc=-&repo=x"), ImageCreate::ImportBody);
        assert_eq!(c("fromImage=&fromSrc=-"), ImageCreate::ImportBody);
        assert_eq!(c("fromSrc=http://127.0.0.1:8080/x.tar"), ImageCreate::ImportUrl { url: "http://127.0.0.1:8080/x.tar".into() });
        assert_eq!(c("fromSrc=127.0.0.1:8080/x.tar"), ImageCreate::ImportUrl { url: "http://127.0.0.1:8080/x.tar".into() });
        // Neither parameter: dockerd tries to download "http://".
        assert_eq!(c(""), ImageCreate::ImportUrl { url: "http://".into() });
        assert_eq!(c("fromSrc="), ImageCreate::ImportUrl { url: "http://".into() });
        assert_eq!(c("fromSrc=--"), ImageCreate::ImportUrl { url: "http://--".into() });
    }
}
