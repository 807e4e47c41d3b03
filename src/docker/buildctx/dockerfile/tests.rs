use super::*;

/// Resolves `x` to `ns.invalid/x` and records what it was asked.
fn rw_args(text: &str, args: &[(&str, Option<&str>)]) -> (Result<String, RewriteError>, Vec<String>) {
    let args: HashMap<String, Option<String>> = args.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect();
    let mut seen = Vec::new();
    let mut resolve = |r: &str| {
        seen.push(r.to_string());
        if r.contains("forbidden") {
            return Err(format!("no such image: {r}"));
        }
        Ok(format!("ns.invalid/{r}"))
    };
    let out = rewrite_dockerfile(text, &args, &mut resolve);
    (out, seen)
}

fn rw(text: &str) -> String {
    let (out, _) = rw_args(text, &[]);
    out.unwrap_or_else(|e| panic!("rewrite failed: {e}"))
}

fn err(text: &str) -> RewriteError {
    rw_args(text, &[]).0.expect_err("should fail")
}

#[test]
fn plain_from_and_rest_untouched() {
    let src = "# comment\nFROM busybox:1.36\nRUN echo FROM evil \\\n  && true\nCMD [\"sh\"]\n";
    assert_eq!(rw(src), "# comment\nFROM ns.invalid/busybox:1.36\nRUN echo FROM evil \\\n  && true\nCMD [\"sh\"]\n");
}

#[test]
fn instruction_names_are_case_insensitive_and_indented() {
    assert_eq!(rw("  from a\n\tFrOm b AS x\n"), "  from ns.invalid/a\n\tFrOm ns.invalid/b AS x\n");
}

#[test]
fn platform_and_stage_name_kept() {
    let src = "FROM --platform=$BUILDPLATFORM golang:1.22 AS build\nFROM --platform=linux/amd64 alpine\n";
    assert_eq!(rw(src), "FROM --platform=$BUILDPLATFORM ns.invalid/golang:1.22 AS build\nFROM --platform=linux/amd64 ns.invalid/alpine\n");
}

#[test]
fn stages_and_scratch_are_not_images() {
    let src = "FROM scratch AS base\nFROM golang AS Build\nFROM build\nFROM BUILD\nCOPY --from=build /a /b\nCOPY --from=0 /a /b\nCOPY --from=base /a /b\nCOPY --from=nginx:1 /a /b\n";
    let (out, seen) = rw_args(src, &[]);
    assert_eq!(
        out.unwrap(),
        "FROM scratch AS base\nFROM ns.invalid/golang AS Build\nFROM build\nFROM BUILD\nCOPY --from=build /a /b\nCOPY --from=0 /a /b\nCOPY --from=base /a /b\nCOPY --from=ns.invalid/nginx:1 /a /b\n"
    );
    assert_eq!(seen, vec!["golang", "nginx:1"]);
}

#[test]
fn later_stage_names_do_not_hide_images() {
    // dockerd knows a stage name only once that stage is finished.
    let (out, seen) = rw_args("FROM secret\nFROM busybox AS secret\nCOPY --from=secret /a /b\nFROM secret\n", &[]);
    assert_eq!(seen, vec!["secret", "busybox", "secret"]);
    assert_eq!(
        out.unwrap(),
        "FROM ns.invalid/secret\nFROM ns.invalid/busybox AS secret\nCOPY --from=ns.invalid/secret /a /b\nFROM secret\n"
    );
}

#[test]
fn copy_from_forms() {
    let src = "FROM a\nCOPY --chown=1:1 --from=\"img\" x y\ncopy --from=-1 x y\nCOPY --from= x y\nCOPY --link x --from=nope\n";
    let (out, seen) = rw_args(src, &[]);
    assert_eq!(seen, vec!["a", "img"]);
    assert_eq!(
        out.unwrap(),
        "FROM ns.invalid/a\nCOPY --chown=1:1 --from=ns.invalid/img x y\ncopy --from=-1 x y\nCOPY --from= x y\nCOPY --link x --from=nope\n"
    );
    // A number too large for an index is an image name to dockerd.
    assert_eq!(rw_args("FROM a\nCOPY --from=99999999999999999999 x y\n", &[]).1, vec!["a", "99999999999999999999"]);
    assert!(matches!(err("FROM a\nCOPY --from=a --from=b x y\n"), RewriteError::Syntax { line: 2, .. }));
    assert!(matches!(err("FROM a\nCOPY --from=$X x y\n"), RewriteError::Unsupported { line: 2, .. }));
}

#[test]
fn global_args_and_build_args() {
    let src =
        "ARG BASE=busybox\nARG TAG\nARG FULL=${BASE}:${TAG:-latest}\nFROM $FULL\nFROM ${BASE}\nFROM ${MISSING:-alpine}\nFROM ${TAG:+x}y\n";
    let (out, seen) = rw_args(src, &[]);
    assert_eq!(seen, vec!["busybox:latest", "busybox", "alpine", "y"]);
    assert_eq!(
        out.unwrap(),
        "ARG BASE=busybox\nARG TAG\nARG FULL=${BASE}:${TAG:-latest}\nFROM ns.invalid/busybox:latest\nFROM ns.invalid/busybox\nFROM ns.invalid/alpine\nFROM ns.invalid/y\n"
    );
    let (_, seen) = rw_args(src, &[("BASE", Some("debian")), ("TAG", Some("12")), ("FULL", None)]);
    assert_eq!(seen, vec!["debian:12", "debian", "alpine", "xy"]);
    // An explicit FULL wins over the default; an undeclared arg does not exist in FROM.
    let (_, seen) = rw_args("ARG FULL=a\nFROM $FULL\nFROM ${NOTDECLARED:-z}\n", &[("FULL", Some("b")), ("NOTDECLARED", Some("q"))]);
    assert_eq!(seen, vec!["b", "z"]);
    // Builtin proxy args exist without ARG when given.
    assert_eq!(rw_args("FROM ${HTTP_PROXY:-none}\n", &[("HTTP_PROXY", Some("p"))]).1, vec!["p"]);
    // Stage ARGs do not reach FROM.
    assert_eq!(rw_args("FROM a\nARG X=evil\nFROM ${X:-ok}\n", &[]).1, vec!["a", "ok"]);
    // Quotes and escapes in the ARG value and in FROM.
    assert!(rw_args("ARG \"A=b c\"\nFROM \"${A%%x}\"\n", &[]).0.is_err());
    assert_eq!(rw_args("ARG A='bu'sy\nFROM \"$A\"box\n", &[]).1, vec!["busybox"]);
}

#[test]
fn stage_selected_through_an_arg() {
    let (out, seen) = rw_args("FROM alpine AS build\nARG X\nFROM ${V}\n", &[("V", Some("build"))]);
    // V is not declared: empty base name.
    assert!(out.is_err());
    assert_eq!(seen, vec!["alpine"]);
    let (out, seen) = rw_args("ARG V=build\nFROM alpine AS build\nFROM ${V}\n", &[]);
    assert_eq!(seen, vec!["alpine"]);
    assert_eq!(out.unwrap(), "ARG V=build\nFROM ns.invalid/alpine AS build\nFROM ${V}\n");
}

#[test]
fn continuations_comments_and_empty_lines() {
    let src = "FROM \\\n  # inner comment\n\n  busybox \\\n  AS b\nRUN x\n";
    assert_eq!(rw(src), "FROM \\\n  # inner comment\n\n  ns.invalid/busybox \\\n  AS b\nRUN x\n");
    // The reference split across lines: the instruction moves to its first line.
    let src = "FROM busy\\\nbox AS b\nRUN x\n";
    let out = rw(src);
    assert_eq!(out, "FROM ns.invalid/busybox AS b\n\nRUN x\n");
    assert_eq!(out.lines().count(), src.lines().count());
    // CRLF line endings survive.
    assert_eq!(rw("FROM a\r\nRUN b\r\n"), "FROM ns.invalid/a\r\nRUN b\r\n");
    // A comment line ending in the escape does not continue.
    assert_eq!(rw("# x \\\nFROM a\n"), "# x \\\nFROM ns.invalid/a\n");
}

#[test]
fn escape_directive() {
    let src = "# escape=`\nFROM busy`\nbox\nRUN dir c:\\\nFROM b\n";
    let (out, seen) = rw_args(src, &[]);
    assert_eq!(seen, vec!["busybox", "b"]);
    assert_eq!(out.unwrap(), "# escape=`\nFROM ns.invalid/busybox\n\nRUN dir c:\\\nFROM ns.invalid/b\n");
    // Without the directive, the backslash continues the line.
    assert_eq!(rw_args("FROM a\\\n:1\n", &[]).1, vec!["a:1"]);
    // Directives after an instruction or comment are comments.
    assert_eq!(rw_args("# hello\n# escape=`\nFROM a\\\n:1\n", &[]).1, vec!["a:1"]);
    assert!(matches!(err("# escape=x\nFROM a\n"), RewriteError::Syntax { line: 1, .. }));
    assert!(matches!(err("# escape=`\n# escape=`\nFROM a\n"), RewriteError::Syntax { line: 2, .. }));
    // `check` is a directive only for newer daemons: the escape token would depend on the version.
    assert!(matches!(err("# check=skip=all\n# escape=`\nFROM a\n"), RewriteError::Unsupported { .. }));
    assert_eq!(rw_args("# syntax=docker/dockerfile:1\n# escape=`\nFROM a`\nb\n", &[]).1, vec!["ab"]);
    // A byte-order mark before the directive.
    assert_eq!(rw_args("\u{feff}# escape=`\nFROM a`\nb\n", &[]).1, vec!["ab"]);
}

#[test]
fn from_errors() {
    assert!(matches!(err("FROM\n"), RewriteError::Syntax { line: 1, .. }));
    assert!(matches!(err("FROM a b\n"), RewriteError::Syntax { .. }));
    assert!(matches!(err("FROM a AS 1x\n"), RewriteError::Syntax { .. }));
    assert!(matches!(err("FROM --pull a\n"), RewriteError::Syntax { .. }));
    assert!(matches!(err("FROM $EMPTY\n"), RewriteError::Syntax { .. }));
    assert!(matches!(err("FROM a AS x\nFROM b AS X\n"), RewriteError::Syntax { line: 2, .. }));
    assert!(matches!(err("FROM ${A\n"), RewriteError::Syntax { .. }));
    assert!(matches!(err("FROM $1\n"), RewriteError::Unsupported { .. }));
    assert!(matches!(err("FROM ${A#x}\n"), RewriteError::Unsupported { .. }));
    assert!(matches!(err("FROM a\nRUN <<EOF\nFROM x\nEOF\n"), RewriteError::Unsupported { line: 2, .. }));
    assert_eq!(rw_args("FROM a aſ b\n", &[]).1, vec!["a"], "Go's EqualFold folds ſ to s");
}

#[test]
fn resolver_errors_and_bad_answers() {
    let e = rw_args("FROM ok\nFROM forbidden/x\n", &[]).0.expect_err("refused");
    assert_eq!(e.to_string(), "no such image: forbidden/x");
    assert!(matches!(e, RewriteError::Resolve { line: 2, .. }));
    for bad in ["has space", "--platform=x", "$X", "builder", "0", "", "a`b"] {
        let mut resolve = |_: &str| Ok(bad.to_string());
        let r = rewrite_dockerfile("FROM a AS builder\nFROM b\n", &HashMap::new(), &mut resolve);
        assert!(matches!(r, Err(RewriteError::BadResolution { .. })), "{bad:?}: {r:?}");
    }
}

#[test]
fn unknown_and_other_instructions_are_left_alone() {
    let src = "FROM a\nONBUILD COPY --from=x / /\nADD --from=y a b\nLABEL from=z\nfoo bar\n";
    let (out, seen) = rw_args(src, &[]);
    assert_eq!(seen, vec!["a"]);
    assert_eq!(out.unwrap(), src.replacen("FROM a", "FROM ns.invalid/a", 1));
}

#[test]
fn lexer_quotes_and_escapes() {
    let env: HashMap<String, String> = [("A".to_string(), "x".to_string()), ("E".to_string(), String::new())].into();
    let ex = |w: &str| expand(w, &env, '\\').map_err(|_| ());
    assert_eq!(ex("'$A'\"$A\"\\$A$A"), Ok("$Ax$Ax".into()));
    assert_eq!(ex("${E:-d}${E-d}${A:+y}${U+y}"), Ok("dy".into()));
    assert_eq!(ex("a$/b$"), Ok("a$/b$".into()));
    assert_eq!(ex("\"a\\b\\\"\""), Ok("a\\b\"".into()));
    assert_eq!(ex("${A:?}"), Ok("x".into()));
    assert!(ex("${E:?gone}").is_err());
    assert!(ex("'x").is_err());
}
