//! Rewriting the image references of a Dockerfile, parsed the way dockerd's legacy builder parses it.
//!
//! The parser mirrors buildkit's `frontend/dockerfile/parser` (vendored by dockerd 20.10 and later)
//! line by line: parser directives, line continuations with the escape token, comments and empty
//! lines inside continuations, `splitCommand`/`extractBuilderFlags`, and the shell lexer used to
//! expand global `ARG`s in `FROM`. Wherever dockerd versions disagree, or ctproxy cannot be sure what
//! the daemon would resolve, the rewriter refuses ([`RewriteError::Unsupported`]) instead of guessing:
//! a guess that differs from the daemon's reading is an isolation hole.

use std::collections::{HashMap, HashSet};

/// Build arguments dockerd knows without an `ARG` instruction (`builtinAllowedBuildArgs`).
const BUILTIN_ARGS: [&str; 10] =
    ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"];

/// Why a Dockerfile could not be rewritten. Line numbers start at 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The Dockerfile is malformed; dockerd would reject it too.
    #[error("Dockerfile line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// dockerd may accept this, but ctproxy cannot tell for sure which image it would use.
    #[error("Dockerfile line {line}: {message} is not supported through ctproxy")]
    Unsupported { line: usize, message: String },
    /// The resolver refused an image reference; the message is the resolver's.
    #[error("{message}")]
    Resolve { line: usize, reference: String, message: String },
    /// The resolver returned something the daemon would not read back as the same plain reference.
    #[error("Dockerfile line {line}: {reference:?} resolved to unusable reference {resolved:?}")]
    BadResolution { line: usize, reference: String, resolved: String },
    /// The Dockerfile, or a trigger of a base image, would make the daemon do what the caller forbids.
    #[error("Dockerfile line {line}: {message}")]
    Refused { line: usize, message: String },
}

/// Rewrites every image reference in `FROM`, `COPY --from` and `ONBUILD COPY --from` of `text`.
///
/// `build_args` are the `buildargs` of `POST /build` (`None` = JSON `null`, which dockerd treats as
/// "not given"). Stage names, stage indexes and `scratch` are left alone; every other reference, after
/// expansion of global `ARG`s, goes through `resolve` and its answer replaces the reference literally.
/// Everything else is kept byte for byte, and the number of lines never changes.
///
/// This is the static half only: base images keep the resolved names (not pinned to what the daemon
/// holds), their `ONBUILD` triggers are not checked and `ADD <url>` is left alone. A caller that must
/// confine a build uses [`plan_dockerfile`].
pub fn rewrite_dockerfile(
    text: &str,
    build_args: &HashMap<String, Option<String>>,
    resolve: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<String, RewriteError> {
    plan_dockerfile(text, build_args, resolve)?.finish(&[], &[])
}

/// One `FROM` of a planned Dockerfile: a stage begins.
#[derive(Debug, Clone)]
pub struct FromStep {
    pub line: usize,
    /// The base image as the resolver answered it; `None` for `scratch` and for a stage.
    pub image: Option<String>,
    /// The `--platform` flag, expanded with the global `ARG`s; `None` without the flag, or when it
    /// cannot be expanded (it only guides which variant ctproxy pulls).
    pub platform: Option<String>,
    /// `FROM <stage>`: the index (in [`Plan::froms`]) of that stage.
    pub stage: Option<usize>,
    /// Lower-cased names of the stages finished when this one begins: what `COPY --from` in a
    /// trigger that runs here can name as a stage.
    known: HashSet<String>,
    /// This stage's own name (lower-cased), for a later `FROM <stage>`.
    name: Option<String>,
    /// Instruction index and logical span of the image reference, for pinning it.
    span: (usize, usize, usize),
}

/// What the caller learnt about a base image from the daemon.
#[derive(Debug, Clone, Default)]
pub struct BaseImage {
    /// `Config.Env`.
    pub env: Vec<String>,
    /// Whether `Config.OnBuild` has triggers (they run at the `FROM`, and may change the environment).
    pub triggers: bool,
}

/// An `ADD` whose sources are http(s) URLs, with its variables expanded as dockerd will expand them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddUrl {
    /// Index of the `ADD` in the plan (for [`Plan::finish`]).
    pub id: usize,
    pub line: usize,
    /// The URLs, in source order.
    pub urls: Vec<String>,
    /// Whether the destination ends with `/`; `None` when it names variables ctproxy cannot expand.
    pub dest_dir: Option<bool>,
}

/// A Dockerfile read once: the rewrite that needs nothing but the resolver, and what the caller
/// must still settle with the daemon (base images, their triggers) and the network (`ADD <url>`).
pub struct Plan {
    text: String,
    lines: Vec<Line>,
    escape: char,
    list: Vec<Instruction>,
    edits: Vec<(usize, usize, String)>,
    pub froms: Vec<FromStep>,
    /// Per stage (same index as `froms`): the `ONBUILD` triggers its instructions recorded, as
    /// dockerd stores them (`Config.OnBuild` of the stage's image).
    stage_triggers: Vec<Vec<String>>,
    steps: Vec<Step>,
    adds: Vec<AddIns>,
    meta: Vec<(String, Option<String>)>,
    build_args: HashMap<String, Option<String>>,
    /// `COPY --from` images (resolved), with their lines.
    copy_images: Vec<(usize, String)>,
}

/// What changes the environment an `ADD` source is expanded in, or an `ADD`, in order.
enum Step {
    /// `ENV` pairs (raw words), or `None` when dockerd would refuse the instruction.
    Env {
        stage: usize,
        pairs: Option<Vec<(String, String)>>,
    },
    /// `ARG` pairs (raw words), or `None` when dockerd would refuse the instruction.
    Arg {
        stage: usize,
        pairs: Option<Vec<(String, Option<String>)>>,
    },
    Add {
        stage: usize,
        add: usize,
    },
}

/// An `ADD` instruction of a stage.
struct AddIns {
    ins: usize,
    line: usize,
    /// Logical span of the instruction name.
    name: (usize, usize),
    /// Flags other than `--chown`, `--chmod` and `--link` (kept as they are by a rewrite to `COPY`).
    other_flags: Vec<String>,
    /// Sources then destination. `None` when dockerd would read them otherwise (see [`add_words`]).
    words: Result<Vec<Word>, RewriteError>,
}

/// A source or destination word of `ADD`/`COPY`: its raw text (a JSON string decoded) and span.
#[derive(Debug, Clone)]
struct Word {
    raw: String,
    span: (usize, usize),
    json: bool,
}

/// Reads `text` once: rewrites `FROM`, `COPY --from` and `ONBUILD COPY --from` references through
/// `resolve`, and records what [`Plan::add_urls`], [`Plan::check_triggers`] and [`Plan::finish`]
/// need.
pub fn plan_dockerfile(
    text: &str,
    build_args: &HashMap<String, Option<String>>,
    resolve: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Plan, RewriteError> {
    plan_dockerfile_for(Frontend::Classic, text, build_args, resolve)
}

/// Which parser will read the Dockerfile after ctproxy. They differ in one way that matters here:
/// heredocs (`RUN <<EOF` … `EOF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// The classic builder of any daemon ctproxy serves: older daemons read a heredoc's body as
    /// instructions, newer ones as the body, so the two readings can see different `FROM` lines:
    /// heredocs are refused.
    Classic,
    /// BuildKit's built-in Dockerfile frontend (a `# syntax=` frontend is refused before this):
    /// heredocs are read as it reads them, their bodies skipped. A body line that would read as an
    /// instruction naming an image or a URL (`names_an_image_or_url`) is refused, so that a
    /// heredoc ctproxy saw where BuildKit sees none could never hide one.
    BuildKit,
}

/// [`plan_dockerfile`] for the parser `frontend`.
pub fn plan_dockerfile_for(
    frontend: Frontend,
    text: &str,
    build_args: &HashMap<String, Option<String>>,
    resolve: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Plan, RewriteError> {
    let lines = split_lines(text);
    let parsed = parse(text, &lines, frontend == Frontend::BuildKit)?;
    let escape = parsed.escape;
    let all_stages = declared_stage_names(&parsed.list);
    let mut plan = Plan {
        text: text.to_owned(),
        lines,
        escape,
        list: Vec::new(),
        edits: Vec::new(),
        froms: Vec::new(),
        stage_triggers: Vec::new(),
        steps: Vec::new(),
        adds: Vec::new(),
        meta: Vec::new(),
        build_args: build_args.clone(),
        copy_images: Vec::new(),
    };
    let mut st = Stages::default();
    for (idx, ins) in parsed.list.iter().enumerate() {
        let line = ins.first_line + 1;
        let Some(cmd) = split_command(&ins.logical) else { continue };
        let name = go_lower(&ins.logical[cmd.name.0..cmd.name.1]);
        let heredoc_capable = matches!(name.as_str(), "run" | "copy" | "add" | "onbuild");
        if frontend == Frontend::Classic && heredoc_capable && ins.logical.contains("<<") {
            // Newer parsers read heredoc bodies as part of the instruction, older ones as
            // instructions: the two readings can see different FROM lines.
            return Err(RewriteError::Unsupported { line, message: "heredoc syntax (`<<`) in a classic build".into() });
        }
        for &(from, to) in &ins.bodies {
            for (n, l) in lines_of(text, &plan.lines, from, to) {
                if let Some(name) = names_an_image_or_url(l) {
                    return Err(unsupported(n + 1, format!("a heredoc line that reads as a {name} instruction")));
                }
            }
        }
        let stage = plan.froms.len().checked_sub(1);
        match name.as_str() {
            "arg" if st.count == 0 && st.pending.is_none() => {
                let Some(rest) = cmd.rest else {
                    return Err(syntax(line, "ARG requires at least one argument"));
                };
                let flags = extract_builder_flags(&ins.logical, rest, cmd.end).map_err(|m| unsupported(line, m))?;
                if let Some(f) = flags.flags.first() {
                    return Err(syntax(line, format!("unknown flag: {}", f.word)));
                }
                let args = go_trim_space_range(&ins.logical, flags.args_start, cmd.end);
                let words = parse_words(&ins.logical[args.0..args.1], escape);
                if words.is_empty() {
                    return Err(syntax(line, "ARG requires at least one argument"));
                }
                let env = arg_env(&plan.meta, build_args);
                for word in words {
                    let (k, v) = match word.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (word.clone(), None),
                    };
                    let k = expand(&k, &env, escape).map_err(|e| e.at(line))?;
                    let v = match v {
                        Some(v) => Some(expand(&v, &env, escape).map_err(|e| e.at(line))?),
                        None => None,
                    };
                    match plan.meta.iter_mut().find(|(name, _)| *name == k) {
                        Some(slot) => slot.1 = v,
                        None => plan.meta.push((k, v)),
                    }
                }
            }
            "arg" | "env" => {
                let Some(stage) = stage else { continue };
                let words = cmd.rest.and_then(|rest| {
                    let flags = extract_builder_flags(&ins.logical, rest, cmd.end).ok().filter(|f| f.flags.is_empty())?;
                    Some(go_trim_space_range(&ins.logical, flags.args_start, cmd.end))
                });
                let words = words.map(|(a, b)| &ins.logical[a..b]);
                plan.steps.push(if name == "arg" {
                    Step::Arg { stage, pairs: words.and_then(|w| arg_pairs(w, escape)) }
                } else {
                    Step::Env { stage, pairs: words.and_then(|w| env_pairs(w, escape)) }
                });
            }
            "from" => {
                st.commit();
                let env = arg_env(&plan.meta, build_args);
                let known = st.names.clone();
                let from = parse_from(&ins.logical, &cmd, escape, &env, line, &mut st)?;
                let stage_ref = match &from.image {
                    Some(_) => None,
                    None => plan.froms.iter().position(|f| f.name.as_deref() == Some(go_lower(&from.named).as_str())),
                };
                let image = match from.image {
                    Some(image) => Some(call_resolve(resolve, &image, line, &st)?),
                    None => None,
                };
                let platform = from.platform.and_then(|p| expand(&p, &env, escape).ok());
                let name = st.pending.clone().filter(|n| !n.is_empty());
                plan.froms.push(FromStep { line, image, platform, stage: stage_ref, known, name, span: (idx, from.start, from.end) });
                plan.stage_triggers.push(Vec::new());
            }
            "copy" => {
                let Some(rest) = cmd.rest else { continue };
                if let Some((fstart, fend, value)) = copy_from_flag(&ins.logical, rest, cmd.end, line)? {
                    if value.is_empty() || st.is_stage(&value) || value.parse::<i64>().is_ok() {
                        continue;
                    }
                    if value.chars().any(|c| matches!(c, '$' | '\'' | '"' | '\\' | '`')) {
                        return Err(unsupported(line, "variables, quotes or escapes in COPY --from"));
                    }
                    let resolved = call_resolve(resolve, &value, line, &st)?;
                    let edit = (fstart, fend, format!("--from={resolved}"));
                    plan.edits.extend(ins.edit_many(text, &plan.lines, &[edit], escape, line)?);
                    plan.copy_images.push((line, resolved));
                }
            }
            "add" => {
                let Some(stage) = stage else { continue };
                let Some(rest) = cmd.rest else { continue };
                let flags = extract_builder_flags(&ins.logical, rest, cmd.end).map_err(|m| unsupported(line, m))?;
                let other_flags = flags
                    .flags
                    .iter()
                    .filter(|f| {
                        let body = f.word.strip_prefix("--").unwrap_or(&f.word);
                        let fname = body.split_once('=').map_or(body, |(n, _)| n);
                        !matches!(fname, "chown" | "chmod" | "link")
                    })
                    .map(|f| f.word.clone())
                    .collect();
                let words = add_words(&ins.logical, flags.args_start, cmd.end, line);
                plan.adds.push(AddIns { ins: idx, line, name: cmd.name, other_flags, words });
                plan.steps.push(Step::Add { stage, add: plan.adds.len() - 1 });
            }
            "onbuild" => {
                let Some(rest) = cmd.rest else { continue };
                let flags = extract_builder_flags(&ins.logical, rest, cmd.end).map_err(|m| unsupported(line, m))?;
                if let Some(f) = flags.flags.first() {
                    return Err(syntax(line, format!("unknown flag: {}", f.word)));
                }
                let inner_start = flags.args_start;
                let mut edits = Vec::new();
                if let Some(inner) = split_command(&ins.logical[inner_start..cmd.end]) {
                    let inner_name = go_lower(&ins.logical[inner_start + inner.name.0..inner_start + inner.name.1]);
                    if let (Some(irest), "copy") = (inner.rest, inner_name.as_str()) {
                        if let Some((fstart, fend, value)) = copy_from_flag(&ins.logical, inner_start + irest, cmd.end, line)? {
                            // A stage of this Dockerfile, or an index, is left for the build the trigger runs in.
                            let stage_like = value.is_empty() || all_stages.contains(&go_lower(&value)) || value.parse::<i64>().is_ok();
                            if !stage_like {
                                if value.chars().any(|c| matches!(c, '$' | '\'' | '"' | '\\' | '`')) {
                                    return Err(unsupported(line, "variables, quotes or escapes in ONBUILD COPY --from"));
                                }
                                let resolved = call_resolve(resolve, &value, line, &st)?;
                                edits.push((fstart, fend, format!("--from={resolved}")));
                            }
                        }
                    }
                }
                let mut logical = ins.logical.clone();
                for (s, e, r) in edits.iter().rev() {
                    logical.replace_range(*s..*e, r);
                }
                plan.edits.extend(ins.edit_many(text, &plan.lines, &edits, escape, line)?);
                if let Some(stage) = stage {
                    plan.stage_triggers[stage].push(onbuild_expression(&logical).to_owned());
                }
            }
            _ => {}
        }
    }
    plan.list = parsed.list;
    Ok(plan)
}

impl Plan {
    /// The images `COPY --from` names (as resolved), with their line numbers.
    pub fn copy_images(&self) -> impl Iterator<Item = (usize, &str)> {
        self.copy_images.iter().map(|(l, i)| (*l, i.as_str()))
    }

    /// The `ONBUILD` triggers that run at `froms[from]` because it names a stage of this Dockerfile
    /// (a base image's triggers come from the daemon).
    pub fn stage_triggers(&self, from: usize) -> &[String] {
        match self.froms.get(from).and_then(|f| f.stage) {
            Some(s) => self.stage_triggers.get(s).map_or(&[], Vec::as_slice),
            None => &[],
        }
    }

    /// Checks the `ONBUILD` triggers that run at `froms[from]`, read as dockerd reads them: a
    /// `COPY --from` that names an image (not a stage known there) must name one `allowed` accepts,
    /// and no `ADD` may download a URL (the daemon would fetch it itself). `FROM` and unreadable
    /// triggers are refused too.
    pub fn check_triggers(
        &self,
        from: usize,
        triggers: &[String],
        allowed: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> Result<(), RewriteError> {
        let Some(f) = self.froms.get(from) else { return Ok(()) };
        for t in triggers {
            check_trigger(t, &f.known, allowed).map_err(|why| RewriteError::Refused {
                line: f.line,
                message: format!("the build trigger `ONBUILD {}` of the base image {why}", t.trim()),
            })?;
        }
        Ok(())
    }

    /// The `ADD` instructions that download URLs, their sources expanded in the environment
    /// dockerd will expand them in: the base image's `Config.Env` (`bases`, by `FROM` index; `None`
    /// when unknown), `ENV` and `ARG` of the stage, build arguments. A source whose value ctproxy
    /// cannot know for sure is refused, as are forms a `COPY` cannot reproduce (URLs mixed with
    /// local sources, flags other than `--chown`, `--chmod`, `--link`).
    pub fn add_urls(&self, bases: &[Option<BaseImage>]) -> Result<Vec<AddUrl>, RewriteError> {
        self.add_urls_where(bases, is_url)
    }

    /// [`Plan::add_urls`] with `remote` saying which expanded sources the builder fetches itself
    /// (BuildKit also clones Git URLs).
    pub fn add_urls_where(&self, bases: &[Option<BaseImage>], remote: fn(&str) -> bool) -> Result<Vec<AddUrl>, RewriteError> {
        let mut finals: Vec<StageEnv> = Vec::new();
        let mut out = Vec::new();
        let mut steps = self.steps.iter().peekable();
        for (s, f) in self.froms.iter().enumerate() {
            let mut env = match (&f.image, f.stage) {
                (Some(_), _) => bases.get(s).and_then(Option::as_ref).map_or_else(StageEnv::unknown, StageEnv::from_image),
                (None, Some(p)) => {
                    let mut e = finals.get(p).cloned().unwrap_or_else(StageEnv::unknown);
                    e.unknown |= self.stage_triggers.get(p).is_some_and(|t| !t.is_empty());
                    e
                }
                (None, None) => StageEnv::default(),
            };
            env.default_path();
            let mut args = StageArgs::default();
            while let Some(step) = steps.next_if(|st| st.stage() == s) {
                match step {
                    Step::Env { pairs: None, .. } | Step::Arg { pairs: None, .. } => env.unknown = true,
                    Step::Env { pairs: Some(pairs), .. } => {
                        let (map, poisoned) = self.lex_env(&env, &args);
                        let mut set = Vec::new();
                        for (k, v) in pairs {
                            let Ok(k) = expand_checked(k, &map, &poisoned, env.unknown, self.escape) else {
                                env.unknown = true;
                                break;
                            };
                            set.push((k, expand_checked(v, &map, &poisoned, env.unknown, self.escape).ok()));
                        }
                        for (k, v) in set {
                            env.poisoned.remove(&k);
                            if v.is_none() {
                                env.poisoned.insert(k.clone());
                            }
                            env.set(k, v.unwrap_or_default());
                        }
                    }
                    Step::Arg { pairs: Some(pairs), .. } => {
                        let (map, poisoned) = self.lex_env(&env, &args);
                        for (k, v) in pairs {
                            let Ok(k) = expand_checked(k, &map, &poisoned, env.unknown, self.escape) else {
                                env.unknown = true;
                                break;
                            };
                            match v.as_ref().map(|v| expand_checked(v, &map, &poisoned, env.unknown, self.escape)) {
                                Some(Err(_)) => {
                                    args.poisoned.insert(k.clone());
                                    args.declared.push((k, None));
                                }
                                Some(Ok(v)) => {
                                    args.poisoned.remove(&k);
                                    args.declared.push((k, Some(v)));
                                }
                                None => {
                                    args.poisoned.remove(&k);
                                    args.declared.push((k, None));
                                }
                            }
                        }
                    }
                    Step::Add { add, .. } => {
                        if let Some(a) = self.add_url(*add, &env, &args, remote)? {
                            out.push(a);
                        }
                    }
                }
            }
            finals.push(env);
        }
        Ok(out)
    }

    fn add_url(&self, id: usize, env: &StageEnv, args: &StageArgs, remote: fn(&str) -> bool) -> Result<Option<AddUrl>, RewriteError> {
        let Some(a) = self.adds.get(id) else { return Ok(None) };
        let words = a.words.as_ref().map_err(Clone::clone)?;
        let Some((dest, sources)) = words.split_last() else { return Ok(None) };
        if sources.is_empty() {
            return Ok(None);
        }
        let (map, poisoned) = self.lex_env(env, args);
        let mut urls = Vec::new();
        let mut local = false;
        for w in sources {
            let v = expand_checked(&w.raw, &map, &poisoned, env.unknown, self.escape).map_err(|e| e.at(a.line))?;
            if remote(&v) {
                urls.push(v);
            } else {
                local = true;
            }
        }
        if urls.is_empty() {
            return Ok(None);
        }
        if local {
            return Err(unsupported(a.line, "ADD of URLs together with local sources"));
        }
        if let Some(flag) = a.other_flags.first() {
            return Err(unsupported(a.line, format!("ADD {flag} of a URL")));
        }
        let dest_dir = expand_checked(&dest.raw, &map, &poisoned, env.unknown, self.escape).ok().map(|d| d.ends_with('/'));
        Ok(Some(AddUrl { id, line: a.line, urls, dest_dir }))
    }

    /// The environment an instruction's words are expanded in: the image's (`runConfig.Env`), then
    /// the build arguments allowed in the stage that the image's environment does not set
    /// (`BuildArgs.FilterAllowed`), and the names whose value is not known for sure.
    fn lex_env(&self, env: &StageEnv, args: &StageArgs) -> (HashMap<String, String>, HashSet<String>) {
        let mut map: HashMap<String, String> = env.vars.iter().cloned().collect();
        let mut poisoned = env.poisoned.clone();
        let keys = args.declared.iter().map(|(k, _)| k.as_str()).chain(BUILTIN_ARGS);
        for key in keys {
            if map.contains_key(key) || poisoned.contains(key) {
                continue;
            }
            let declared = args.declared.iter().rev().find(|(k, _)| k == key);
            if args.poisoned.contains(key) || (declared.is_none() && matches!(key, "ALL_PROXY" | "all_proxy")) {
                // dockerd 20.10 does not know ALL_PROXY as a builtin argument; later versions do.
                poisoned.insert(key.to_owned());
                continue;
            }
            let value = match (self.build_args.get(key), declared) {
                (Some(Some(v)), _) => Some(v.clone()),
                (_, Some((_, Some(default)))) => Some(default.clone()),
                _ => self.meta.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.clone()),
            };
            if let Some(v) = value {
                map.insert(key.to_owned(), v);
            }
        }
        (map, poisoned)
    }

    /// The rewritten Dockerfile: base images pinned to `pins` (by `FROM` index; unpinned ones keep
    /// the resolved name), and each planned `ADD` in `adds` (by [`AddUrl::id`]) turned into a
    /// `COPY` of the given build-context paths, one per source, everything else of it kept.
    pub fn finish(&self, pins: &[Option<String>], adds: &[(usize, Vec<String>)]) -> Result<String, RewriteError> {
        let mut edits = self.edits.clone();
        for (i, f) in self.froms.iter().enumerate() {
            let Some(image) = &f.image else { continue };
            let repl = pins.get(i).and_then(|p| p.as_deref()).unwrap_or(image);
            if !plain_reference(repl) {
                return Err(RewriteError::BadResolution { line: f.line, reference: image.clone(), resolved: repl.to_owned() });
            }
            let (idx, s, e) = f.span;
            let Some(ins) = self.list.get(idx) else { continue };
            edits.extend(ins.edit_many(&self.text, &self.lines, &[(s, e, repl.to_owned())], self.escape, f.line)?);
        }
        for (id, paths) in adds {
            let Some(a) = self.adds.get(*id) else { continue };
            let words = a.words.as_ref().map_err(Clone::clone)?;
            let sources = words.len().saturating_sub(1);
            if paths.len() != sources {
                return Err(unsupported(a.line, "a rewrite of this ADD"));
            }
            let mut ins_edits = vec![(a.name.0, a.name.1, "COPY".to_owned())];
            for (w, p) in words.iter().zip(paths) {
                if !p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+' | ',' | '=' | '@' | '%' | '~')) {
                    return Err(unsupported(a.line, format!("the context path {p:?}")));
                }
                ins_edits.push((w.span.0, w.span.1, if w.json { format!("\"{p}\"") } else { p.clone() }));
            }
            let Some(ins) = self.list.get(a.ins) else { continue };
            edits.extend(ins.edit_many(&self.text, &self.lines, &ins_edits, self.escape, a.line)?);
        }
        edits.sort_by_key(|e| e.0);
        let text = &self.text;
        let mut out = String::with_capacity(text.len() + 64);
        let mut at = 0;
        for (start, end, repl) in edits {
            if start < at {
                return Err(unsupported(1, "overlapping rewrites"));
            }
            out.push_str(&text[at..start]);
            out.push_str(&repl);
            at = end;
        }
        out.push_str(&text[at..]);
        Ok(out)
    }
}

impl Step {
    fn stage(&self) -> usize {
        match self {
            Step::Env { stage, .. } | Step::Arg { stage, .. } | Step::Add { stage, .. } => *stage,
        }
    }
}

/// dockerd's `PATH` for a Linux stage whose image sets none (`oci.DefaultPathEnv`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A stage's `runConfig.Env` as far as ctproxy can know it.
#[derive(Debug, Clone, Default)]
struct StageEnv {
    vars: Vec<(String, String)>,
    /// Names whose value is not known for sure (duplicated in the image, or set from such a name).
    poisoned: HashSet<String>,
    /// Nothing is known for sure (triggers ran, or an instruction dockerd reads differently).
    unknown: bool,
}

impl StageEnv {
    fn unknown() -> StageEnv {
        StageEnv { unknown: true, ..StageEnv::default() }
    }

    fn from_image(b: &BaseImage) -> StageEnv {
        let mut env = StageEnv { unknown: b.triggers, ..StageEnv::default() };
        for kv in &b.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if env.vars.iter().any(|(name, _)| name == k) {
                // dockerd versions disagree on which of two values wins.
                env.poisoned.insert(k.to_owned());
            } else {
                env.vars.push((k.to_owned(), v.to_owned()));
            }
        }
        env
    }

    fn default_path(&mut self) {
        if !self.vars.iter().any(|(k, _)| k == "PATH") {
            self.vars.push(("PATH".into(), DEFAULT_PATH.into()));
        }
    }

    /// `dispatchEnv`: replaces the variable where it is, or appends it.
    fn set(&mut self, k: String, v: String) {
        match self.vars.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => self.vars.push((k, v)),
        }
    }
}

/// The `ARG`s a stage declared (`BuildArgs.allowedBuildArgs`), in order.
#[derive(Debug, Default)]
struct StageArgs {
    declared: Vec<(String, Option<String>)>,
    poisoned: HashSet<String>,
}

/// Whether dockerd downloads this `ADD` source (`urlutil.IsURL`: case-sensitive prefixes).
fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Characters that survive dockerd's re-expansion and re-splitting of a reference unchanged.
fn plain_reference(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '-'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// One trigger, parsed as dockerd parses it (`parser.Parse` of the trigger text alone, default
/// escape), checked; `Err` says why it is refused.
fn check_trigger(trigger: &str, known: &HashSet<String>, allowed: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    let lines = split_lines(trigger);
    let parsed = parse(trigger, &lines, false).map_err(|e| format!("cannot be read ({e})"))?;
    let [ins] = parsed.list.as_slice() else { return Err("is not a single instruction".into()) };
    let Some(cmd) = split_command(&ins.logical) else { return Ok(()) };
    let name = go_lower(&ins.logical[cmd.name.0..cmd.name.1]);
    if matches!(name.as_str(), "run" | "copy" | "add" | "onbuild") && ins.logical.contains("<<") {
        return Err("uses heredoc syntax".into());
    }
    let line = ins.first_line + 1;
    match name.as_str() {
        "from" => Err("is a FROM".into()),
        "copy" => {
            let Some(rest) = cmd.rest else { return Ok(()) };
            let Some((_, _, value)) = copy_from_flag(&ins.logical, rest, cmd.end, line).map_err(|e| e.to_string())? else {
                return Ok(());
            };
            if value.is_empty() || known.contains(&go_lower(&value)) || value.parse::<i64>().is_ok() {
                return Ok(());
            }
            if value.chars().any(|c| matches!(c, '$' | '\'' | '"' | '\\' | '`')) {
                return Err("names an image with variables, quotes or escapes".into());
            }
            allowed(&value).map_err(|why| format!("names the image {value}: {why}"))
        }
        "add" => {
            let Some(rest) = cmd.rest else { return Ok(()) };
            let flags = extract_builder_flags(&ins.logical, rest, cmd.end).map_err(str::to_owned)?;
            let words = add_words(&ins.logical, flags.args_start, cmd.end, line).map_err(|e| e.to_string())?;
            let Some((_, sources)) = words.split_last() else { return Ok(()) };
            for w in sources {
                if w.raw.contains('$') {
                    return Err("has an ADD source with variables".into());
                }
                let v = expand(&w.raw, &HashMap::new(), parsed.escape).map_err(|e| e.at(line).to_string())?;
                if is_url(&v) {
                    return Err(format!("would make the daemon download {v}"));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The `--from` flag of a `COPY` whose arguments start at `rest`: its span and value.
fn copy_from_flag(logical: &str, rest: usize, end: usize, line: usize) -> Result<Option<(usize, usize, String)>, RewriteError> {
    let flags = extract_builder_flags(logical, rest, end).map_err(|m| unsupported(line, m))?;
    let mut found = None;
    for flag in &flags.flags {
        let Some(body) = flag.word.strip_prefix("--") else { continue };
        let (fname, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if fname != "from" {
            continue;
        }
        let Some(value) = value else {
            return Err(syntax(line, "missing a value on flag: from"));
        };
        if found.is_some() {
            return Err(syntax(line, "duplicate flag specified: from"));
        }
        found = Some((flag.start, flag.end, value.to_owned()));
    }
    Ok(found)
}

/// Lower-cased names of every stage the Dockerfile declares (`FROM x AS name`).
fn declared_stage_names(list: &[Instruction]) -> HashSet<String> {
    let mut names = HashSet::new();
    for ins in list {
        let Some(cmd) = split_command(&ins.logical) else { continue };
        if go_lower(&ins.logical[cmd.name.0..cmd.name.1]) != "from" {
            continue;
        }
        let Some(rest) = cmd.rest else { continue };
        let Ok(flags) = extract_builder_flags(&ins.logical, rest, cmd.end) else { continue };
        let (a, b) = go_trim_space_range(&ins.logical, flags.args_start, cmd.end);
        let args = split_ascii_ws(&ins.logical, a, b);
        if let [_, r#as, name] = args.as_slice() {
            if is_as(&ins.logical[r#as.0..r#as.1]) {
                names.insert(go_lower(&ins.logical[name.0..name.1]));
            }
        }
    }
    names
}

/// `ONBUILD`'s stored trigger: the instruction with `(?i)^\s*ONBUILD\s*` removed (RE2's `\s`).
fn onbuild_expression(logical: &str) -> &str {
    let is_s = |c: char| matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ');
    let s = logical.trim_start_matches(is_s);
    match s.get(..7) {
        Some(head) if head.eq_ignore_ascii_case("onbuild") => s[7..].trim_start_matches(is_s),
        _ => logical,
    }
}

/// The words of `ADD`/`COPY` after the flags (`parseMaybeJSONToList`): a JSON array of strings, or
/// words split at `[\t\v\f\r ]`. An argument list that starts with `[` but is not a plain JSON
/// array of strings with nothing after it is refused: dockerd versions read such lists
/// differently (20.10 ignores what follows the array, later ones fall back to words).
fn add_words(logical: &str, from: usize, to: usize, line: usize) -> Result<Vec<Word>, RewriteError> {
    let (a, b) = go_trim_space_range(logical, from, to);
    if logical[a..b].starts_with('[') {
        return json_words(logical, a, b)
            .ok_or_else(|| unsupported(line, "an ADD argument list that is not a plain JSON array of strings"));
    }
    Ok(split_ascii_ws(logical, a, b).into_iter().map(|(s, e)| Word { raw: logical[s..e].to_owned(), span: (s, e), json: false }).collect())
}

/// A JSON array of strings filling `s[from..to]` exactly (JSON whitespace around), with the span of
/// each string token (quotes included).
fn json_words(s: &str, from: usize, to: usize) -> Option<Vec<Word>> {
    let b = s.as_bytes();
    let ws = |i: &mut usize| {
        while *i < to && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
            *i += 1;
        }
    };
    let mut i = from;
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    ws(&mut i);
    let mut words = Vec::new();
    if b.get(i) == Some(&b']') && i < to {
        i += 1;
    } else {
        loop {
            let start = i;
            let (raw, end) = json_string(s, i, to)?;
            words.push(Word { raw, span: (start, end), json: true });
            i = end;
            ws(&mut i);
            match b.get(i) {
                Some(b',') if i < to => {
                    i += 1;
                    ws(&mut i);
                }
                Some(b']') if i < to => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    ws(&mut i);
    (i == to).then_some(words)
}

/// A JSON string token at `s[at..]`: its value and where it ends. Lone surrogates and control
/// characters are refused (Go would replace or reject them).
fn json_string(s: &str, at: usize, to: usize) -> Option<(String, usize)> {
    let b = s.as_bytes();
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let mut out = String::new();
    let mut i = at + 1;
    loop {
        if i >= to {
            return None;
        }
        let c = s[i..].chars().next()?;
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let e = *b.get(i + 1)?;
                i += 2;
                match e {
                    b'"' => out.push('"'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'b' => out.push('\u{8}'),
                    b'f' => out.push('\u{c}'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let hex = |i: usize| {
                            s.get(i..i + 4)
                                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                        };
                        let hi = hex(i)?;
                        i += 4;
                        let cp = if (0xd800..0xdc00).contains(&hi) {
                            if s.get(i..i + 2) != Some("\\u") {
                                return None;
                            }
                            let lo = hex(i + 2).filter(|lo| (0xdc00..0xe000).contains(lo))?;
                            i += 6;
                            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                        } else {
                            hi
                        };
                        out.push(char::from_u32(cp)?);
                    }
                    _ => return None,
                }
                if i > to {
                    return None;
                }
            }
            c if (c as u32) < 0x20 => return None,
            c => {
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
}

/// `ARG` words (`parseNameOrNameVal`, then `name[=default]`); `None` when dockerd refuses them.
fn arg_pairs(text: &str, escape: char) -> Option<Vec<(String, Option<String>)>> {
    let words = parse_words(text, escape);
    if words.is_empty() {
        return None;
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => None,
            Some((k, v)) => Some((k.to_owned(), Some(v.to_owned()))),
            None => Some((w, None)),
        })
        .collect()
}

/// `ENV` pairs (`parseNameVal`): `name value…` (old form: the rest of the line is the value) when the
/// first word has no `=`, else `name=value` words; `None` when dockerd refuses them.
fn env_pairs(text: &str, escape: char) -> Option<Vec<(String, String)>> {
    let words = parse_words(text, escape);
    let first = words.first()?;
    if !first.contains('=') {
        let is_ws = |c: char| matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ');
        let (k, v) = text.split_once(is_ws)?;
        return Some(vec![(k.to_owned(), v.trim_start_matches(is_ws).to_owned())]);
    }
    words.into_iter().map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect()
}

fn syntax(line: usize, message: impl Into<String>) -> RewriteError {
    RewriteError::Syntax { line, message: message.into() }
}

fn unsupported(line: usize, message: impl Into<String>) -> RewriteError {
    RewriteError::Unsupported { line, message: message.into() }
}

/// Stage names dockerd knows when it reaches an instruction: only those of *finished* stages
/// (`stagesBuildResults` is filled when a stage ends), lower-cased.
#[derive(Default)]
struct Stages {
    names: HashSet<String>,
    /// Stages finished so far.
    count: usize,
    /// The stage being built: `Some(name)` once a FROM was seen (`""` when unnamed).
    pending: Option<String>,
}

impl Stages {
    fn is_stage(&self, name: &str) -> bool {
        self.names.contains(&go_lower(name))
    }

    /// Called at each FROM: the previous stage is finished.
    fn commit(&mut self) {
        if let Some(name) = self.pending.take() {
            self.count += 1;
            if !name.is_empty() {
                self.names.insert(name);
            }
        }
    }
}

/// The environment global ARGs see (`BuildArgs.GetAllMeta`/`GetAllAllowed`): a build arg given
/// with a value wins, then the ARG's default; builtin proxy args exist only when given.
fn arg_env(meta: &[(String, Option<String>)], build_args: &HashMap<String, Option<String>>) -> HashMap<String, String> {
    let mut env = HashMap::new();
    let keys = meta.iter().map(|(k, _)| k.as_str()).chain(BUILTIN_ARGS);
    for key in keys {
        if env.contains_key(key) {
            continue;
        }
        if let Some(Some(v)) = build_args.get(key) {
            env.insert(key.to_string(), v.clone());
        } else if let Some((_, Some(d))) = meta.iter().find(|(k, _)| k == key) {
            env.insert(key.to_string(), d.clone());
        }
    }
    env
}

fn call_resolve(
    resolve: &mut dyn FnMut(&str) -> Result<String, String>,
    reference: &str,
    line: usize,
    st: &Stages,
) -> Result<String, RewriteError> {
    let resolved = resolve(reference).map_err(|message| RewriteError::Resolve { line, reference: reference.to_string(), message })?;
    // The daemon re-expands and re-splits what we write: only plain reference characters survive that
    // unchanged, and the result must not read as a flag, a stage or a stage index.
    if !plain_reference(&resolved) || st.is_stage(&resolved) || resolved.parse::<i64>().is_ok() || resolved == "scratch" {
        return Err(RewriteError::BadResolution { line, reference: reference.to_string(), resolved });
    }
    Ok(resolved)
}

/// A `FROM` as read.
struct ParsedFrom {
    /// Span of the image word in the logical line.
    start: usize,
    end: usize,
    /// The word after expansion.
    named: String,
    /// The reference to resolve; `None` for a stage or `scratch`.
    image: Option<String>,
    /// The raw value of `--platform`.
    platform: Option<String>,
}

/// `FROM [--platform=p] image [AS name]`. Records the stage as pending.
fn parse_from(
    logical: &str,
    cmd: &Command,
    escape: char,
    env: &HashMap<String, String>,
    line: usize,
    st: &mut Stages,
) -> Result<ParsedFrom, RewriteError> {
    let Some(rest) = cmd.rest else {
        return Err(syntax(line, "FROM requires either one or three arguments"));
    };
    let flags = extract_builder_flags(logical, rest, cmd.end).map_err(|m| unsupported(line, m))?;
    let mut platform = None;
    for flag in &flags.flags {
        let body = flag.word.strip_prefix("--").unwrap_or(&flag.word);
        match body.split_once('=') {
            Some(("platform", v)) if platform.is_none() => platform = Some(v.to_owned()),
            Some(("platform", _)) => return Err(syntax(line, "duplicate flag specified: platform")),
            None if body == "platform" => return Err(syntax(line, "missing a value on flag: platform")),
            _ => return Err(syntax(line, format!("unknown flag: {}", flag.word))),
        }
    }
    let (a, b) = go_trim_space_range(logical, flags.args_start, cmd.end);
    let args = split_ascii_ws(logical, a, b);
    let stage_name = match args.len() {
        1 => String::new(),
        3 if is_as(&logical[args[1].0..args[1].1]) => {
            let raw = &logical[args[2].0..args[2].1];
            let name = go_lower(raw);
            let mut chars = name.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(syntax(line, format!("invalid name for build stage: {raw:?}")));
            }
            name
        }
        _ => return Err(syntax(line, "FROM requires either one or three arguments")),
    };
    if !stage_name.is_empty() && st.names.contains(&stage_name) {
        return Err(syntax(line, format!("{stage_name} stage name already used")));
    }
    let (start, end) = args[0];
    let image = expand(&logical[start..end], env, escape).map_err(|e| e.at(line))?;
    if image.is_empty() {
        return Err(syntax(line, format!("base name ({}) should not be blank", &logical[start..end])));
    }
    st.pending = Some(stage_name);
    if st.is_stage(&image) || image == "scratch" {
        return Ok(ParsedFrom { start, end, named: image, image: None, platform });
    }
    Ok(ParsedFrom { start, end, named: image.clone(), image: Some(image), platform })
}

/// Go's `strings.EqualFold(s, "as")`: `ſ` (U+017F) folds to `s`.
fn is_as(s: &str) -> bool {
    let mut c = s.chars();
    matches!((c.next(), c.next(), c.next()), (Some('a' | 'A'), Some('s' | 'S' | '\u{17F}'), None))
}

/// Go's `strings.ToLower` for the cases that matter here (`İ` lowers to a plain `i` in Go).
fn go_lower(s: &str) -> String {
    s.chars().flat_map(|c| if c == '\u{130}' { "i".chars().collect::<Vec<_>>() } else { c.to_lowercase().collect() }).collect()
}

// === Lines and instructions ===

#[derive(Debug, Clone, Copy)]
struct Line {
    /// First byte of the line's content (after a BOM on the first line).
    start: usize,
    /// End of the content: trailing `\r`s and the `\n` are not content.
    content_end: usize,
    /// After the `\n` (or the end of the text).
    end: usize,
}

fn split_lines(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let (stop, end) = match text[start..].find('\n') {
            Some(i) => (start + i, start + i + 1),
            None => (text.len(), text.len()),
        };
        let content_end = start + text[start..stop].trim_end_matches('\r').len();
        lines.push(Line { start, content_end, end });
        start = end;
    }
    if let Some(first) = lines.first_mut() {
        if text[first.start..first.content_end].starts_with('\u{feff}') {
            first.start += '\u{feff}'.len_utf8();
        }
    }
    lines
}

/// A logical instruction line, and where each of its pieces came from.
struct Instruction {
    first_line: usize,
    last_line: usize,
    logical: String,
    /// (start in `logical`, start in the text, length)
    segments: Vec<(usize, usize, usize)>,
    /// The heredoc bodies that follow the instruction, as ranges of line indexes (end excluded).
    bodies: Vec<(usize, usize)>,
}

struct Parsed {
    escape: char,
    list: Vec<Instruction>,
}

impl Instruction {
    /// The text edits that replace `logical[start..end]` by `repl`, for each of `edits` (spans of
    /// this instruction that do not overlap).
    fn edit_many(
        &self,
        text: &str,
        lines: &[Line],
        edits: &[(usize, usize, String)],
        escape: char,
        line: usize,
    ) -> Result<Vec<(usize, usize, String)>, RewriteError> {
        let mut out = Vec::new();
        for (start, end, repl) in edits {
            match self.segments.iter().find(|&&(ls, _, len)| *start >= ls && *end <= ls + len && *start < ls + len) {
                Some(&(ls, os, _)) => out.push((os + (start - ls), os + (end - ls), repl.clone())),
                None => break,
            }
        }
        if out.len() == edits.len() {
            return Ok(out);
        }
        // A token is split by a line continuation: write the whole instruction on its first line and
        // leave the other lines empty, so that line numbers stay the same.
        let mut sorted = edits.to_vec();
        sorted.sort_by_key(|e| e.0);
        let mut logical = self.logical.clone();
        for (start, end, repl) in sorted.iter().rev() {
            logical.replace_range(*start..*end, repl);
        }
        if logical.trim_end_matches([' ', '\t']).ends_with(escape) {
            return Err(unsupported(line, "an instruction ending in the escape character"));
        }
        let Some(&(_, seg_start, _)) = self.segments.first() else { return Ok(Vec::new()) };
        // segments[0] is always the first line's (possibly empty) content.
        let mut repl_text = logical;
        for l in &lines[self.first_line..self.last_line] {
            repl_text.push_str(&text[l.content_end..l.end]);
        }
        Ok(vec![(seg_start, lines[self.last_line].content_end, repl_text)])
    }
}

/// Parser directives, evaluated as two dockerd generations do: 20.10 knows `escape` and `syntax`,
/// newer ones also `check`. Both must agree on the escape token.
struct Directives {
    settled: bool,
    done: [bool; 2],
    escape: [char; 2],
    seen: [HashSet<String>; 2],
}

impl Directives {
    fn new() -> Self {
        Directives { settled: false, done: [false; 2], escape: ['\\'; 2], seen: [HashSet::new(), HashSet::new()] }
    }

    fn observe(&mut self, line: &str, lineno: usize) -> Result<(), RewriteError> {
        let parsed = parse_directive(line);
        for gen in 0..2 {
            if self.done[gen] {
                continue;
            }
            let valid: &[&str] = if gen == 0 { &["escape", "syntax"] } else { &["escape", "syntax", "check"] };
            let Some((key, value)) = &parsed else {
                self.done[gen] = true;
                continue;
            };
            if !valid.contains(&key.as_str()) {
                self.done[gen] = true;
                continue;
            }
            if !self.seen[gen].insert(key.clone()) {
                return Err(syntax(lineno, format!("only one {key} parser directive can be used")));
            }
            if key == "escape" {
                match value.as_str() {
                    "\\" => self.escape[gen] = '\\',
                    "`" => self.escape[gen] = '`',
                    _ => return Err(syntax(lineno, format!("invalid escape token '{value}' does not match ` or \\"))),
                }
            }
        }
        self.settled = self.done[0] && self.done[1];
        Ok(())
    }

    fn escape(&self, lineno: usize) -> Result<char, RewriteError> {
        if self.escape[0] != self.escape[1] {
            return Err(unsupported(lineno, "an escape directive after other parser directives"));
        }
        Ok(self.escape[0])
    }
}

/// `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` with RE2's `\s` = `[\t\n\f\r ]`.
fn parse_directive(line: &str) -> Option<(String, String)> {
    let is_s = |c: char| matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ');
    let rest = line.strip_prefix('#')?.trim_start_matches(is_s);
    let key_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.chars().next()?.is_ascii_alphabetic() {
        return None;
    }
    let rest = rest[key_len..].trim_start_matches(is_s).strip_prefix('=')?;
    let value = rest.trim_start_matches(is_s).trim_end_matches(is_s);
    if value.is_empty() {
        // `.+?` takes one whitespace character when nothing else is left.
        if rest.is_empty() {
            return None;
        }
        return Some((key.to_ascii_lowercase(), rest[..1].to_string()));
    }
    Some((key.to_ascii_lowercase(), value.to_string()))
}

/// buildkit's `Parse`: physical lines into logical instruction lines.
/// `heredocs`: read heredoc bodies after the instructions that have them, as BuildKit's parser
/// does (`frontend/dockerfile/parser`), instead of as instructions.
fn parse(text: &str, lines: &[Line], heredocs: bool) -> Result<Parsed, RewriteError> {
    let mut directives = Directives::new();
    let mut escape = '\\';
    let mut list = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let raw = &text[l.start..l.content_end];
        let trimmed = raw.trim_start();
        let lead = raw.len() - trimmed.len();
        if !directives.settled {
            directives.observe(trimmed, i + 1)?;
            escape = directives.escape(i + 1)?;
        }
        let first = i;
        i += 1;
        let content = if trimmed.starts_with('#') { "" } else { trimmed };
        let (content, mut end_of_line) = trim_continuation(content, escape);
        if end_of_line && content.is_empty() {
            continue;
        }
        let mut logical = String::from(content);
        let mut segments = vec![(0, l.start + lead, content.len())];
        while !end_of_line && i < lines.len() {
            let l = lines[i];
            i += 1;
            let raw = &text[l.start..l.content_end];
            let left = raw.trim_start();
            if left.starts_with('#') || left.is_empty() {
                continue;
            }
            let (content, eol) = trim_continuation(raw, escape);
            end_of_line = eol;
            segments.push((logical.len(), l.start, content.len()));
            logical.push_str(content);
        }
        let mut bodies = Vec::new();
        if heredocs && logical.contains("<<") && can_contain_heredoc(&logical) {
            for doc in heredocs_of(&logical) {
                let start = i;
                loop {
                    let Some(l) = lines.get(i) else {
                        return Err(syntax(first + 1, "unterminated heredoc"));
                    };
                    i += 1;
                    let raw = &text[l.start..l.content_end];
                    let candidate = if doc.chomp { raw.trim_start_matches('\t') } else { raw };
                    if candidate == doc.name {
                        break;
                    }
                }
                bodies.push((start, i - 1));
            }
        }
        list.push(Instruction { first_line: first, last_line: i - 1, logical, segments, bodies });
    }
    Ok(Parsed { escape, list })
}

/// Whether a heredoc body line, read as an instruction, would name an image or a URL: a `FROM` of
/// a valid shape (`FROM [--flags] image [AS name]`), a `COPY --from`, any `ADD`, an `ONBUILD`.
/// (`RUN --mount from=` is checked over the whole file by the BuildKit caller.) Other lines cannot
/// reach beyond the namespace even if a parser read them as instructions, and a Python
/// `from x import y` in a `RUN <<EOF python3` body is not a valid `FROM`.
fn names_an_image_or_url(line: &str) -> Option<&'static str> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let first = go_lower(words.first()?);
    let args: Vec<&str> = words[1..].iter().copied().filter(|w| !w.starts_with("--")).collect();
    match first.as_str() {
        "from" if args.len() == 1 || (args.len() == 3 && args[1].eq_ignore_ascii_case("as")) => Some("FROM"),
        "copy" if words[1..].iter().any(|w| go_lower(w).starts_with("--from")) => Some("COPY --from"),
        "add" => Some("ADD"),
        "onbuild" => Some("ONBUILD"),
        _ => None,
    }
}

/// The physical lines `from..to` (indexes) with their index.
fn lines_of<'a>(text: &'a str, lines: &'a [Line], from: usize, to: usize) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    (from..to).filter_map(move |n| lines.get(n).map(|l| (n, &text[l.start..l.content_end])))
}

/// BuildKit's `Node.canContainHeredoc`: `ADD`, `COPY` and `RUN` (also after `ONBUILD`) in their
/// shell form; the JSON form (`["…"]` after the flags, a JSON array of strings) has none.
fn can_contain_heredoc(logical: &str) -> bool {
    let Some(cmd) = split_command(logical) else { return false };
    let mut name = go_lower(&logical[cmd.name.0..cmd.name.1]);
    let mut rest = cmd.rest;
    if name == "onbuild" {
        let Some(r) = rest else { return false };
        let Some(inner) = split_command(&logical[r..]) else { return false };
        name = go_lower(&logical[r + inner.name.0..r + inner.name.1]);
        rest = inner.rest.map(|x| r + x);
    }
    if !matches!(name.as_str(), "add" | "copy" | "run") {
        return false;
    }
    let Some(rest) = rest else { return false };
    let args = match extract_builder_flags(logical, rest, logical.len()) {
        Ok(f) => f.args_start,
        // Flags dockerd cannot read fail the build there; reading heredocs anyway only skips more.
        Err(_) => rest,
    };
    let args = logical[args..].trim();
    !(args.starts_with('[') && serde_json::from_str::<Vec<String>>(args).is_ok())
}

/// One heredoc an instruction line opens: the terminator's name and whether leading tabs are
/// stripped (`<<-`).
#[derive(Debug, PartialEq, Eq)]
struct Heredoc {
    name: String,
    chomp: bool,
}

/// BuildKit's `heredocsFromLine`: the line's words (quotes and escapes kept, as its lexer's
/// `RawQuotes` and `RawEscapes` do), each matched against `^(\d*)<<(-?)\s*([^<]*)$`; the name is
/// the rest unquoted, when that is a single word.
fn heredocs_of(line: &str) -> Vec<Heredoc> {
    let mut out = Vec::new();
    for word in shell_words(line, true) {
        let digits = word.bytes().take_while(u8::is_ascii_digit).count();
        let Some(rest) = word[digits..].strip_prefix("<<") else { continue };
        let (chomp, rest) = match rest.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let rest = rest.trim_start();
        if rest.is_empty() || rest.contains('<') {
            continue;
        }
        if let [name] = shell_words(rest, false).as_slice() {
            out.push(Heredoc { name: name.clone(), chomp });
        }
    }
    out
}

/// Words of `s` split at unquoted, unescaped blanks. `raw`: quotes and backslashes are kept in the
/// words (BuildKit's `RawQuotes` + `RawEscapes`); else they are removed (`\` escapes the next
/// character outside single quotes). Variables are not expanded (no environment, unset ones kept).
fn shell_words(s: &str, raw: bool) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if raw {
                    word.push(c);
                }
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '\'' | '"' => {
                in_word = true;
                if raw {
                    word.push(c);
                }
                while let Some(q) = chars.next() {
                    if q == c {
                        break;
                    }
                    if q == '\\' && c == '"' {
                        if raw {
                            word.push(q);
                        }
                        if let Some(next) = chars.next() {
                            word.push(next);
                        }
                        continue;
                    }
                    word.push(q);
                }
                if raw {
                    word.push(c);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `\<escape>[ \t]*$` removed: returns the content and whether the instruction ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(c) => (c, false),
        None => (line, true),
    }
}

/// Byte range of `s[from..to]` without Go's `unicode.IsSpace` at both ends.
fn go_trim_space_range(s: &str, from: usize, to: usize) -> (usize, usize) {
    let part = &s[from..to];
    let left = part.trim_start();
    let start = from + (part.len() - left.len());
    (start, start + left.trim_end().len())
}

/// `reWhitespace = [\t\v\f\r ]+`: splits `s[from..to]` into word ranges.
fn split_ascii_ws(s: &str, from: usize, to: usize) -> Vec<(usize, usize)> {
    let is_ws = |b: u8| matches!(b, b'\t' | 0x0b | 0x0c | b'\r' | b' ');
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = from;
    while i < to {
        while i < to && is_ws(bytes[i]) {
            i += 1;
        }
        let start = i;
        while i < to && !is_ws(bytes[i]) {
            i += 1;
        }
        if i > start {
            out.push((start, i));
        }
    }
    out
}

struct Command {
    name: (usize, usize),
    /// Where the arguments start in the logical line, when there are any.
    rest: Option<usize>,
    /// End of the trimmed line.
    end: usize,
}

/// `splitCommand`: `reWhitespace.Split(strings.TrimSpace(line), 2)`.
fn split_command(line: &str) -> Option<Command> {
    let (a, b) = go_trim_space_range(line, 0, line.len());
    if a == b {
        return None;
    }
    let words = split_ascii_ws(line, a, b);
    let name = *words.first()?;
    let bytes = line.as_bytes();
    let mut r = name.1;
    while r < b && matches!(bytes[r], b'\t' | 0x0b | 0x0c | b'\r' | b' ') {
        r += 1;
    }
    Some(Command { name, rest: (r < b).then_some(r), end: b })
}

struct Flag {
    word: String,
    start: usize,
    end: usize,
}

struct Flags {
    flags: Vec<Flag>,
    args_start: usize,
}

/// `extractBuilderFlags`: leading `--flag` words, with quotes and `\` escapes (always backslash).
/// Go walks bytes here, so non-ASCII bytes would be read as Latin-1: refused.
fn extract_builder_flags(line: &str, from: usize, to: usize) -> Result<Flags, &'static str> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let b = &line.as_bytes()[..to];
    let len = to;
    let is_space = |c: u8| matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let mut flags = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word: Vec<u8> = Vec::new();
    let mut word_start = from;
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = from;
    let mut push = |word: &mut Vec<u8>, start: usize, end: usize| {
        flags.push(Flag { word: String::from_utf8_lossy(word).into_owned(), start, end });
        word.clear();
    };
    while pos <= len {
        let mut ch = if pos < len { b[pos] } else { 0 };
        if pos < len && ch >= 0x80 {
            return Err("non-ASCII characters among instruction flags");
        }
        if phase == Phase::Spaces {
            if pos == len {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            if ch != b'-' || pos + 1 == len || b[pos + 1] != b'-' {
                return Ok(Flags { flags, args_start: pos });
            }
            phase = Phase::Word;
            word_start = pos;
        }
        if pos == len {
            if word != b"--" && (blank_ok || !word.is_empty()) {
                push(&mut word, word_start, pos);
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if word == b"--" {
                    return Ok(Flags { flags, args_start: pos });
                }
                if blank_ok || !word.is_empty() {
                    push(&mut word, word_start, pos);
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == b'\\' {
                if pos + 1 == len {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = b[pos];
                if ch >= 0x80 {
                    return Err("non-ASCII characters among instruction flags");
                }
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == b'\\' {
            if pos + 1 == len {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = b[pos];
            if ch >= 0x80 {
                return Err("non-ASCII characters among instruction flags");
            }
        }
        word.push(ch);
        pos += 1;
    }
    Ok(Flags { flags, args_start: len })
}

/// `parseWords`: whitespace-separated words, quotes and escapes kept (ARG, ENV, LABEL…).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

// === Shell lexer (buildkit `frontend/dockerfile/shell`, `ProcessWord`) ===

enum LexError {
    Syntax(String),
    Unsupported(String),
}

impl LexError {
    fn at(self, line: usize) -> RewriteError {
        match self {
            LexError::Syntax(m) => syntax(line, m),
            LexError::Unsupported(m) => unsupported(line, m),
        }
    }
}

/// Expands one word as `ProcessWord` does: quotes removed, escapes applied, `$VAR`, `${VAR}`,
/// `${VAR:-w}`, `${VAR:+w}`, `${VAR-w}`, `${VAR+w}`, `${VAR:?w}`, `${VAR?w}`. Forms whose meaning
/// changed between dockerd versions (`$1`, `$@`, `${VAR#p}`…) are refused.
fn expand(word: &str, env: &HashMap<String, String>, escape: char) -> Result<String, LexError> {
    let none = HashSet::new();
    let mut lx = Lexer { chars: word.chars().collect(), pos: 0, env, poisoned: &none, unknown: false, escape };
    lx.stop_on(None)
}

/// [`expand`], refusing a reference to a variable in `poisoned` (or to any, when `unknown`): ctproxy
/// cannot know its value for sure.
fn expand_checked(
    word: &str,
    env: &HashMap<String, String>,
    poisoned: &HashSet<String>,
    unknown: bool,
    escape: char,
) -> Result<String, LexError> {
    let mut lx = Lexer { chars: word.chars().collect(), pos: 0, env, poisoned, unknown, escape };
    lx.stop_on(None)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a HashMap<String, String>,
    poisoned: &'a HashSet<String>,
    unknown: bool,
    escape: char,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn stop_on(&mut self, stop: Option<char>) -> Result<String, LexError> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok(out);
            }
            match ch {
                '\'' => out.push_str(&self.single_quote()?),
                '"' => out.push_str(&self.double_quote()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.pos += 1;
                    if ch == self.escape {
                        match self.next() {
                            Some(c) => out.push(c),
                            None => break,
                        }
                    } else {
                        out.push(ch);
                    }
                }
            }
        }
        match stop {
            Some(c) => Err(LexError::Syntax(format!("unexpected end of statement while looking for matching {c}"))),
            None => Ok(out),
        }
    }

    fn single_quote(&mut self) -> Result<String, LexError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(LexError::Syntax("unexpected end of statement while looking for matching single-quote".into())),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, LexError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(LexError::Syntax("unexpected end of statement while looking for matching double-quote".into())),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(mut c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                c = n;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    /// A variable name; digits and special parameters mean different things across versions.
    fn name(&mut self) -> Result<String, LexError> {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && (c.is_numeric() || matches!(c, '*' | '#' | '@' | '?' | '-' | '$' | '!')) {
                return Err(LexError::Unsupported(format!("special parameter ${c}")));
            }
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else if c.is_alphanumeric() {
                return Err(LexError::Unsupported("non-ASCII variable names".into()));
            } else {
                break;
            }
        }
        if !name.is_empty() && (self.unknown || self.poisoned.contains(&name)) {
            return Err(LexError::Unsupported(format!("${name}, whose value ctproxy cannot know for sure here")));
        }
        Ok(name)
    }

    fn dollar(&mut self) -> Result<String, LexError> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name()?;
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.env.get(&name).cloned().unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(LexError::Syntax("syntax error: missing '}'".into())),
            Some('{' | '}' | ':') => return Err(LexError::Syntax("syntax error: bad substitution".into())),
            Some(_) => {}
        }
        let name = self.name()?;
        if name.is_empty() {
            return Err(LexError::Unsupported("this kind of ${...} substitution".into()));
        }
        let value = self.env.get(&name);
        let (colon, modifier) = match self.next() {
            None => return Err(LexError::Syntax("syntax error: missing '}'".into())),
            Some('}') => return Ok(value.cloned().unwrap_or_default()),
            Some(':') => (true, self.next()),
            Some(c) => (false, Some(c)),
        };
        let Some(modifier @ ('-' | '+' | '?')) = modifier else {
            return Err(LexError::Unsupported("this kind of ${...} substitution".into()));
        };
        let word = self.stop_on(Some('}'))?;
        let set = if colon { value.is_some_and(|v| !v.is_empty()) } else { value.is_some() };
        Ok(match modifier {
            '-' if set => value.cloned().unwrap_or_default(),
            '-' => word,
            '+' if set => word,
            '+' => String::new(),
            _ if set => value.cloned().unwrap_or_default(),
            _ => {
                let msg = if word.is_empty() { "is not allowed to be unset or empty".to_string() } else { word };
                return Err(LexError::Syntax(format!("{name}: {msg}")));
            }
        })
    }
}

#[cfg(test)]
mod tests;
