//! The Dockerfile of a BuildKit build, rewritten on its way from the client to the daemon.
//!
//! The classic builder's parser and rewriter ([`crate::docker::buildctx::plan_dockerfile`]) name
//! every image of `FROM` and `COPY --from` in the namespace (or the shared image it names), as a
//! literal the daemon does not expand again. On top of that, what BuildKit reads but the classic
//! builder does not know is settled here, failing closed:
//! - a `# syntax=` directive (a custom frontend is an image the daemon would pull and run) is refused;
//! - `RUN --mount` may take `from=` only for a stage of the Dockerfile (an image there would be
//!   resolved by the daemon by its raw name); a flag split across lines is refused;
//! - `ADD <url>` is refused, Git repositories too (the daemon would download or clone it itself, from
//!   its own network);
//! - base images with `ONBUILD` triggers are refused (their triggers could name any image);
//! - heredocs are read as BuildKit reads them ([`Frontend::BuildKit`]).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::super::daemon::enc;
use super::{Daemon, Namespace};
use crate::docker::buildctx::{plan_dockerfile_for, Frontend};
use crate::docker::reference::Reference;

/// A Dockerfile larger than this is refused.
pub(super) const MAX_DOCKERFILE: usize = 1 << 20;

impl Namespace {
    /// `text` with its image references in the namespace; `Err` says why the build is refused.
    pub(super) async fn buildkit_dockerfile(
        &self,
        daemon: &Daemon,
        text: &str,
        build_args: &HashMap<String, Option<String>>,
    ) -> Result<String, String> {
        refuse_syntax_directive(text)?;
        let mut resolved = Vec::new();
        let mut resolve = |name: &str| -> Result<String, String> {
            let r = Reference::parse(name).map_err(|e| format!("invalid image reference {name:?}: {e}"))?;
            let out = self.image_name(&r.with_default_tag()).map_err(|e| e.to_string())?;
            resolved.push((name.to_owned(), out.clone()));
            Ok(out)
        };
        let plan = plan_dockerfile_for(Frontend::BuildKit, text, build_args, &mut resolve).map_err(|e| e.to_string())?;
        let adds = plan.add_urls_where(&vec![None; plan.froms.len()], fetched_by_buildkit).map_err(|e| e.to_string())?;
        if let Some(a) = adds.first() {
            return Err(format!("Dockerfile line {}: ADD of a URL is not available in BuildKit builds in a namespace (the daemon would download it): download it in a RUN step, or use the classic builder", a.line));
        }
        let out = plan.finish(&[], &[]).map_err(|e| e.to_string())?;
        check_run_mounts(&out)?;
        for (typed, image) in resolved {
            let Ok(Some(img)) = daemon.get(&format!("/images/{}/json", enc(&image))).await else { continue };
            let triggers = img.pointer("/Config/OnBuild").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
            if triggers {
                // The name the job wrote, never the daemon-side one.
                return Err(format!(
                    "the base image {typed} has ONBUILD triggers, which are not available in BuildKit builds in a namespace (use the classic builder)"
                ));
            }
        }
        Ok(out)
    }
}

/// Whether BuildKit's Dockerfile frontend fetches this (expanded) `ADD` source itself rather than
/// reading it from the build context: HTTP(S) URLs, and Git repositories, which it clones from the
/// daemon's network (`git://`, `ssh://`, any `SCHEME://`, whatever its case: Go lower-cases URL
/// schemes; scp-like `user@host:path`). Fails closed: a local path that looks like one is refused too.
fn fetched_by_buildkit(source: &str) -> bool {
    if source.contains("://") {
        return true;
    }
    // scp-like: `[user@]host:path`, a `:` with no `/` before it. Docker 28.5's frontend requires the
    // `user@`; some BuildKit versions make it optional, so a local `a:b` is refused too (`./a:b` is not).
    source.split_once(':').is_some_and(|(before, _)| !before.contains('/'))
}

/// Parser directives come first, before any other line: `# syntax=` there selects a frontend.
fn refuse_syntax_directive(text: &str) -> Result<(), String> {
    for line in text.lines() {
        let t = line.trim();
        let Some(d) = t.strip_prefix('#') else { break };
        let d = d.trim_start().to_ascii_lowercase();
        if d.starts_with("syntax") && d[6..].trim_start().starts_with('=') {
            return Err("a # syntax= directive (a custom Dockerfile frontend) is not available in a namespace".into());
        }
    }
    Ok(())
}

/// `RUN --mount` flags: `from=` must name a stage (by name or index). The flags are found in
/// the text as written; if joining continuation lines would make more of them, they are refused.
fn check_run_mounts(text: &str) -> Result<(), String> {
    let lower = text.to_ascii_lowercase();
    let stages = stage_names(&lower);
    let written = count_mounts(&lower);
    let joined: String = lower
        .replace("\\\r\n", "")
        .replace("\\\n", "")
        .replace("`\r\n", "")
        .replace("`\n", "")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    if count_mounts(&joined) != written || count_mounts(&lower.replace(['\\', '`'], "")) != written {
        return Err("a RUN --mount flag split across lines is not supported in a namespace".into());
    }
    for (at, _) in lower.match_indices("--mount") {
        let rest = lower[at + 7..].trim_start_matches(['=', ' ', '\t']);
        let value: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
        for field in value.split(',') {
            let (k, v) = field.split_once('=').unwrap_or((field, ""));
            let v = v.trim_matches(|c| c == '"' || c == '\'');
            let is_stage = stages.contains(v) || (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            if k.contains("from") && !is_stage {
                return Err(format!(
                    "RUN --mount from={v} names no stage of the Dockerfile: mounting an image is not available in a namespace (use a stage: FROM <image> AS <name>)"
                ));
            }
        }
    }
    Ok(())
}

fn count_mounts(s: &str) -> usize {
    s.matches("--mount").count()
}

/// Lower-cased stage names (`FROM … AS name`).
fn stage_names(lower: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for line in lower.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"from") && words.len() >= 4 && words[words.len() - 2] == "as" {
            out.insert(words[words.len() - 1].to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_directive_is_refused() {
        assert!(refuse_syntax_directive("# syntax=docker/dockerfile:1\nFROM a\n").is_err());
        assert!(refuse_syntax_directive("#SYNTAX = x\nFROM a\n").is_err());
        assert!(refuse_syntax_directive("FROM a\n# syntax=x\n").is_ok());
        assert!(refuse_syntax_directive("# check=skip=all\nFROM a\n").is_ok());
    }

    #[test]
    fn git_and_http_sources_are_fetched_by_buildkit() {
        for remote in [
            "http://127.0.0.1:1/x",
            "https://h/x.git#main",
            "git://127.0.0.1:9418/x.git",
            "GIT://h/x.git",
            "ssh://git@h:22/x.git",
            "git@127.0.0.1:x.git",
            "user@h:/srv/x",
            "host:x.git",
            "a:b",
        ] {
            assert!(fetched_by_buildkit(remote), "{remote}");
        }
        for local in ["x", "dir/x", "./a:b", "dir/u@h:x", "github.com/x/y", "a@b", "/abs/x"] {
            assert!(!fetched_by_buildkit(local), "{local}");
        }
    }

    #[test]
    fn run_mount_from_must_be_a_stage() {
        let ok = "FROM a AS build\nRUN x\nFROM b\nRUN --mount=type=bind,from=build,target=/x true\nRUN --mount=type=cache,target=/c true\n";
        assert!(check_run_mounts(ok).is_ok());
        let image = "FROM b\nRUN --mount=type=bind,from=other/image,target=/x true\n";
        assert!(check_run_mounts(image).is_err());
        let split = "FROM b\nRUN --mo\\\nunt=type=bind,from=x,target=/x true\n";
        assert!(check_run_mounts(split).is_err());
    }
}
