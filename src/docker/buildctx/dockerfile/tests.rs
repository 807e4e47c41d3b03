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
    let src = "FROM a\nADD --from=y a b\nLABEL from=z\nfoo bar\n";
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

// === Plans: pinned base images, triggers, ADD <url> ===

fn plan_args(text: &str, args: &[(&str, Option<&str>)]) -> Result<Plan, RewriteError> {
    let args: HashMap<String, Option<String>> = args.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect();
    plan_dockerfile(text, &args, &mut |r: &str| Ok(format!("ns.invalid/{r}")))
}

fn plan(text: &str) -> Plan {
    plan_args(text, &[]).unwrap_or_else(|e| panic!("plan failed: {e}"))
}

/// Every FROM of `p` seen as an image with `env` and no triggers.
fn bases(p: &Plan, env: &[&str]) -> Vec<Option<BaseImage>> {
    p.froms
        .iter()
        .map(|f| f.image.as_ref().map(|_| BaseImage { env: env.iter().map(|s| s.to_string()).collect(), triggers: false }))
        .collect()
}

fn urls(text: &str, args: &[(&str, Option<&str>)], env: &[&str]) -> Result<Vec<Vec<String>>, RewriteError> {
    let p = plan_args(text, args)?;
    Ok(p.add_urls(&bases(&p, env))?.into_iter().map(|a| a.urls).collect())
}

#[test]
fn from_is_pinned_to_what_the_caller_checked() {
    let p = plan("FROM a AS one\nFROM one\nFROM --platform=linux/arm64 b\n");
    assert_eq!(
        p.froms.iter().map(|f| f.image.clone()).collect::<Vec<_>>(),
        vec![Some("ns.invalid/a".into()), None, Some("ns.invalid/b".into())]
    );
    assert_eq!(p.froms[1].stage, Some(0));
    assert_eq!(p.froms[2].platform.as_deref(), Some("linux/arm64"));
    let id = format!("sha256:{}", "a".repeat(64));
    assert_eq!(
        p.finish(&[Some(id.clone()), None, None], &[]).unwrap(),
        format!("FROM {id} AS one\nFROM one\nFROM --platform=linux/arm64 ns.invalid/b\n")
    );
    assert!(matches!(p.finish(&[Some("a b".into())], &[]), Err(RewriteError::BadResolution { .. })));
}

#[test]
fn add_url_becomes_copy_of_a_context_file() {
    let src = "FROM a\nADD --chown=1:2 https://h.example/debian/README /x/\nadd [\"http://h.example/a\", \"http://h.example/b\", \"/d/\"]\nADD local.tgz /y\n";
    let p = plan(src);
    let adds = p.add_urls(&bases(&p, &[])).unwrap();
    assert_eq!(
        adds.iter().map(|a| (a.line, a.urls.clone(), a.dest_dir)).collect::<Vec<_>>(),
        vec![
            (2, vec!["https://h.example/debian/README".to_string()], Some(true)),
            (3, vec!["http://h.example/a".to_string(), "http://h.example/b".to_string()], Some(true)),
        ]
    );
    let out = p
        .finish(
            &[],
            &[(adds[0].id, vec![".ctproxy/add/0/README".into()]), (adds[1].id, vec![".ctproxy/add/1/a".into(), ".ctproxy/add/2/b".into()])],
        )
        .unwrap();
    assert_eq!(
        out,
        "FROM ns.invalid/a\nCOPY --chown=1:2 .ctproxy/add/0/README /x/\nCOPY [\".ctproxy/add/1/a\", \".ctproxy/add/2/b\", \"/d/\"]\nADD local.tgz /y\n"
    );
}

#[test]
fn add_url_split_over_lines_is_rewritten_on_its_first_line() {
    let src = "FROM a\nADD http://h.example/\\\nfile \\\n  /dest\nRUN true\n";
    let p = plan(src);
    let adds = p.add_urls(&bases(&p, &[])).unwrap();
    assert_eq!(adds[0].urls, vec!["http://h.example/file"]);
    assert_eq!(adds[0].dest_dir, Some(false));
    let out = p.finish(&[], &[(adds[0].id, vec![".ctproxy/add/0/file".into()])]).unwrap();
    assert_eq!(out, "FROM ns.invalid/a\nCOPY .ctproxy/add/0/file   /dest\n\n\nRUN true\n");
}

#[test]
fn add_url_forms_that_copy_cannot_reproduce_are_refused() {
    for src in [
        "FROM a\nADD http://h/x local /d/\n",
        "FROM a\nADD --checksum=sha256:00 http://h/x /d\n",
        "FROM a\nADD --keep-git-dir=true http://h/x /d\n",
        "FROM a\nADD [\"http://h/x\", \"/d\"] trailing\n",
        "FROM a\nADD [\"http://h/x\", 1]\n",
    ] {
        assert!(matches!(urls(src, &[], &[]), Err(RewriteError::Unsupported { line: 2, .. })), "{src}");
    }
    // --link and --chmod are kept: dockerd treats them the same way for ADD and COPY.
    assert_eq!(urls("FROM a\nADD --link --chmod=644 http://h/x /d\n", &[], &[]).unwrap(), vec![vec!["http://h/x".to_string()]]);
    // Not URLs to dockerd: local paths, left alone.
    assert!(urls("FROM a\nADD HTTP://h/x git@github.com:x/y /d/\n", &[], &[]).unwrap().is_empty());
}

#[test]
fn add_url_hidden_by_quotes_or_escapes_is_found() {
    assert_eq!(
        urls("FROM a\nADD \"h\"ttp://h/x h\\ttps://h/y /d/\n", &[], &[]).unwrap(),
        vec![vec!["http://h/x".to_string(), "https://h/y".to_string()]]
    );
    assert_eq!(urls("# escape=`\nFROM a\nADD h`ttp://h/x /d/\n", &[], &[]).unwrap(), vec![vec!["http://h/x".to_string()]]);
    assert_eq!(urls("FROM a\nADD [\"h\\u0074tp://h/x\", \"/d/\"]\n", &[], &[]).unwrap(), vec![vec!["http://h/x".to_string()]]);
}

#[test]
fn add_url_variables_are_expanded_as_the_builder_does() {
    let u = |src: &str, args: &[(&str, Option<&str>)], env: &[&str]| urls(src, args, env).map(|v| v.concat());
    // A stage ARG: its default, or the build argument.
    assert_eq!(u("FROM a\nARG V=1\nADD http://h/$V /d/\n", &[], &[]).unwrap(), vec!["http://h/1"]);
    assert_eq!(u("FROM a\nARG V=1\nADD http://h/$V /d/\n", &[("V", Some("2"))], &[]).unwrap(), vec!["http://h/2"]);
    // Not declared in the stage: unset.
    assert_eq!(u("FROM a\nADD http://h/x$V /d/\n", &[("V", Some("2"))], &[]).unwrap(), vec!["http://h/x"]);
    // A global ARG is visible in a stage once declared there again (its value, not its name).
    assert_eq!(u("ARG V=g\nFROM a\nARG V\nADD http://h/${V} /d/\n", &[], &[]).unwrap(), vec!["http://h/g"]);
    // ENV, both forms, and the image's environment wins over ARG.
    assert_eq!(u("FROM a\nENV P=/x Q=y\nENV R  z z\nADD http://h$P/$Q/${R} /d/\n", &[], &[]).unwrap(), vec!["http://h/x/y/z z"]);
    assert_eq!(u("FROM a\nARG V=arg\nADD http://h/$V /d/\n", &[], &["V=img"]).unwrap(), vec!["http://h/img"]);
    // ENV pairs of one instruction see the environment before it.
    assert_eq!(u("FROM a\nENV A=1\nENV A=2 B=$A\nADD http://h/$B /d/\n", &[], &[]).unwrap(), vec!["http://h/1"]);
    // A later stage FROM an earlier one inherits its ENV.
    assert_eq!(u("FROM a AS one\nENV V=s\nFROM one\nADD http://h/$V /d/\n", &[], &[]).unwrap(), vec!["http://h/s"]);
    // A variable can make a URL out of a local-looking source.
    assert_eq!(u("FROM a\nARG S=http://h/y\nADD $S /d/\n", &[], &[]).unwrap(), vec!["http://h/y"]);
}

#[test]
fn add_url_variables_ctproxy_cannot_know_are_refused() {
    let p = plan("FROM a\nADD http://h/$V /d/\n");
    let unknown = vec![Some(BaseImage { env: vec![], triggers: true })];
    assert!(matches!(p.add_urls(&unknown), Err(RewriteError::Unsupported { line: 2, .. })));
    assert!(matches!(p.add_urls(&[None]), Err(RewriteError::Unsupported { line: 2, .. })));
    // Defined twice in the image: dockerd versions disagree on which wins.
    assert!(matches!(urls("FROM a\nADD http://h/$V /d/\n", &[], &["V=1", "V=2"]), Err(RewriteError::Unsupported { .. })));
    // ALL_PROXY is a builtin argument of newer dockerd only.
    assert!(matches!(
        urls("FROM a\nADD http://h/$ALL_PROXY /d/\n", &[("ALL_PROXY", Some("x"))], &[]),
        Err(RewriteError::Unsupported { .. })
    ));
    // Without variables nothing needs to be known.
    let plain = plan("FROM a\nADD http://h/x /d/\n");
    assert_eq!(plain.add_urls(&unknown).unwrap()[0].urls, vec!["http://h/x"]);
    // An unknown destination only matters when the file name cannot be determined.
    let d = plan("FROM a\nADD http://h/x $D\n");
    assert_eq!(d.add_urls(&unknown).unwrap()[0].dest_dir, None);
}

#[test]
fn onbuild_copy_from_names_the_namespace_image_and_is_recorded() {
    let src = "FROM a AS tools\nONBUILD COPY --from=img:1 /a /b\nONBUILD COPY --from=tools /a /b\nONBUILD ADD http://h/x /x\nFROM tools\n";
    let p = plan(src);
    assert_eq!(
        p.finish(&[], &[]).unwrap(),
        "FROM ns.invalid/a AS tools\nONBUILD COPY --from=ns.invalid/img:1 /a /b\nONBUILD COPY --from=tools /a /b\nONBUILD ADD http://h/x /x\nFROM tools\n"
    );
    assert_eq!(p.stage_triggers(1), ["COPY --from=ns.invalid/img:1 /a /b", "COPY --from=tools /a /b", "ADD http://h/x /x"]);
    assert!(p.stage_triggers(0).is_empty());
    // At `FROM tools`, the stage `tools` is finished: its name is a stage to the trigger; the ADD is not allowed.
    let mut seen = Vec::new();
    let r = p.check_triggers(1, p.stage_triggers(1), &mut |r| {
        seen.push(r.to_string());
        Ok(())
    });
    assert!(matches!(r, Err(RewriteError::Refused { line: 5, .. })), "{r:?}");
    assert_eq!(seen, vec!["ns.invalid/img:1"]);
    assert!(matches!(err("FROM a\nONBUILD COPY --from=$X / /\n"), RewriteError::Unsupported { line: 2, .. }));
}

#[test]
fn base_image_triggers_are_read_as_dockerd_reads_them() {
    let p = plan("FROM a AS s0\nFROM b\n");
    let check = |triggers: &[&str]| {
        let t: Vec<String> = triggers.iter().map(|s| s.to_string()).collect();
        let mut asked = Vec::new();
        let r = p.check_triggers(1, &t, &mut |r| {
            asked.push(r.to_string());
            if r.starts_with("mine/") {
                Ok(())
            } else {
                Err("not in the namespace".into())
            }
        });
        (r.map_err(|e| e.to_string()), asked)
    };
    assert_eq!(check(&["RUN make", "COPY . /src", "ENV A=1"]), (Ok(()), vec![]));
    assert_eq!(check(&["COPY --from=mine/x /a /b"]), (Ok(()), vec!["mine/x".to_string()]));
    // Stage names and indexes known at this FROM are stages, not images.
    assert_eq!(check(&["COPY --from=S0 /a /b", "copy --from=0 /a /b"]).0, Ok(()));
    let refused = |triggers: &[&str]| {
        let (r, _) = check(triggers);
        assert!(r.is_err(), "{triggers:?} should be refused");
        r.unwrap_err()
    };
    assert!(refused(&["COPY --from=127.0.0.1:5001/other/docker.io/library/secret /s /s"]).contains("not in the namespace"));
    assert!(refused(&["ADD http://127.0.0.1:9/secret /s"]).contains("download http://127.0.0.1:9/secret"));
    assert!(refused(&["ADD [\"h\\u0074tp://x/y\", \"/d\"]"]).contains("download"));
    refused(&["ADD $URL /s"]);
    refused(&["COPY --from=$IMG /a /b"]);
    refused(&["COPY --from=\"other\" /a /b"]);
    refused(&["FROM other"]);
    refused(&["COPY . /a\nCOPY --from=other /a /b"]);
    refused(&["RUN <<EOF\nx\nEOF"]);
    // A trigger is parsed on its own: its own escape directive applies.
    assert!(refused(&["# escape=`\nADD h`ttp://x/y /d"]).contains("download http://x/y"));
}

/// BuildKit's reading of heredocs: the body after the instruction line is not instructions; the
/// classic frontend refuses heredocs.
fn bk(text: &str) -> Result<String, RewriteError> {
    let mut resolve = |r: &str| Ok(format!("ns.invalid/{r}"));
    plan_dockerfile_for(Frontend::BuildKit, text, &HashMap::new(), &mut resolve)?.finish(&[], &[])
}

#[test]
fn heredocs_are_read_as_buildkit_reads_them() {
    let text = "FROM a\nRUN <<EOF\nset -e\necho from here\nEOF\nCOPY <<-\"END\" /x\n\tbody\n\tEND\nFROM b\n";
    let out = bk(text).unwrap();
    assert_eq!(out, "FROM ns.invalid/a\nRUN <<EOF\nset -e\necho from here\nEOF\nCOPY <<-\"END\" /x\n\tbody\n\tEND\nFROM ns.invalid/b\n");
    // Two heredocs on one line, then an instruction.
    assert!(bk("FROM a\nRUN <<A cat - <<B\na\nA\nb\nB\nFROM c\n").unwrap().ends_with("FROM ns.invalid/c\n"));
    // A body line that reads as an image-naming instruction is refused, whatever reads it.
    for body in
        ["FROM evil", "from evil", "FROM --platform=linux/amd64 evil AS x", "  COPY --from=evil / /", "ADD http://x /", "ONBUILD RUN x"]
    {
        let text = format!("FROM a\nRUN <<EOF\n{body}\nEOF\n");
        assert!(matches!(bk(&text), Err(RewriteError::Unsupported { line: 3, .. })), "{body}");
    }
    // Lines that would not name an image even if read as instructions pass: a Python heredoc.
    let python = "FROM a\nRUN <<EOF python3\nfrom pathlib import Path\nfrom os import path as p\nprint(Path('/'))\nEOF\nFROM b\n";
    assert!(bk(python).unwrap().ends_with("FROM ns.invalid/b\n"));
    // Unterminated: an error, as in BuildKit.
    assert!(matches!(bk("FROM a\nRUN <<EOF\necho\n"), Err(RewriteError::Syntax { .. })));
    // Not heredocs: quoted, in the JSON form, in other instructions.
    for text in
        ["FROM a\nRUN echo \"<<EOF\"\nFROM b\n", "FROM a\nRUN [\"sh\", \"-c\", \"<<EOF\"]\nFROM b\n", "FROM a\nENV X=<<EOF\nFROM b\n"]
    {
        assert!(bk(text).unwrap().ends_with("FROM ns.invalid/b\n"), "{text}");
    }
    // ONBUILD RUN takes heredocs too.
    assert!(bk("FROM a\nONBUILD RUN <<EOF\nx\nEOF\nFROM b\n").unwrap().ends_with("FROM ns.invalid/b\n"));
    // The classic builder refuses them.
    assert!(matches!(rw_args("FROM a\nRUN <<EOF\nx\nEOF\n", &[]).0, Err(RewriteError::Unsupported { .. })));
}

#[test]
fn heredoc_words_follow_buildkits_lexer() {
    let h = |name: &str, chomp: bool| Heredoc { name: name.into(), chomp };
    assert_eq!(heredocs_of("RUN <<EOF"), [h("EOF", false)]);
    assert_eq!(heredocs_of("RUN 3<<-'E O' cat"), [h("E O", true)]);
    assert_eq!(heredocs_of("COPY <<\"a\" <<b /dst"), [h("a", false), h("b", false)]);
    assert!(heredocs_of("RUN echo '<<EOF'").is_empty());
    assert!(heredocs_of("RUN echo a<<EOF").is_empty());
    assert!(heredocs_of("RUN cat <<").is_empty());
    assert!(heredocs_of("RUN cat <<<x").is_empty());
}
