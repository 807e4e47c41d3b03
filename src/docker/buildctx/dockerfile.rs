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
}

/// Rewrites every image reference in `FROM` and `COPY --from` of `text`.
///
/// `build_args` are the `buildargs` of `POST /build` (`None` = JSON `null`, which dockerd treats as
/// "not given"). Stage names, stage indexes and `scratch` are left alone; every other reference, after
/// expansion of global `ARG`s, goes through `resolve` and its answer replaces the reference literally.
/// Everything else is kept byte for byte, and the number of lines never changes.
pub fn rewrite_dockerfile(
    text: &str,
    build_args: &HashMap<String, Option<String>>,
    resolve: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<String, RewriteError> {
    let lines = split_lines(text);
    let instructions = parse(text, &lines)?;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut st = Stages::default();
    // Global ARGs (before the first FROM): name → default after expansion.
    let mut meta: Vec<(String, Option<String>)> = Vec::new();
    let escape = instructions.escape;
    for ins in &instructions.list {
        let line = ins.first_line + 1;
        let Some(cmd) = split_command(&ins.logical) else { continue };
        let name = go_lower(&ins.logical[cmd.name.0..cmd.name.1]);
        let heredoc_capable = matches!(name.as_str(), "run" | "copy" | "add" | "onbuild");
        if heredoc_capable && ins.logical.contains("<<") {
            // Newer parsers read heredoc bodies as part of the instruction, older ones as
            // instructions: the two readings can see different FROM lines.
            return Err(RewriteError::Unsupported { line, message: "heredoc syntax (`<<`)".into() });
        }
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
                let env = arg_env(&meta, build_args);
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
                    match meta.iter_mut().find(|(name, _)| *name == k) {
                        Some(slot) => slot.1 = v,
                        None => meta.push((k, v)),
                    }
                }
            }
            "from" => {
                st.commit();
                let env = arg_env(&meta, build_args);
                let (start, end, image) = parse_from(&ins.logical, &cmd, escape, &env, line, &mut st)?;
                if let Some(image) = image {
                    let resolved = call_resolve(resolve, &image, line, &st)?;
                    edits.extend(ins.edit(text, &lines, start, end, &resolved, escape, line)?);
                }
            }
            "copy" => {
                let Some(rest) = cmd.rest else { continue };
                let flags = extract_builder_flags(&ins.logical, rest, cmd.end).map_err(|m| unsupported(line, m))?;
                let mut seen = false;
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
                    if std::mem::replace(&mut seen, true) {
                        return Err(syntax(line, "duplicate flag specified: from"));
                    }
                    if value.is_empty() || st.is_stage(value) || value.parse::<i64>().is_ok() {
                        continue;
                    }
                    if value.chars().any(|c| matches!(c, '$' | '\'' | '"' | '\\' | '`')) {
                        return Err(unsupported(line, "variables, quotes or escapes in COPY --from"));
                    }
                    let resolved = call_resolve(resolve, value, line, &st)?;
                    let new_flag = format!("--from={resolved}");
                    edits.extend(ins.edit(text, &lines, flag.start, flag.end, &new_flag, escape, line)?);
                }
            }
            _ => {}
        }
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for (start, end, repl) in edits {
        out.push_str(&text[at..start]);
        out.push_str(&repl);
        at = end;
    }
    out.push_str(&text[at..]);
    Ok(out)
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
    let plain = resolved.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '-'));
    let starts_ok = resolved.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !plain || !starts_ok || st.is_stage(&resolved) || resolved.parse::<i64>().is_ok() || resolved == "scratch" {
        return Err(RewriteError::BadResolution { line, reference: reference.to_string(), resolved });
    }
    Ok(resolved)
}

/// `FROM [--platform=p] image [AS name]`: returns the span of `image` and, unless it names a stage
/// or `scratch`, the expanded reference to resolve. Records the stage as pending.
fn parse_from(
    logical: &str,
    cmd: &Command,
    escape: char,
    env: &HashMap<String, String>,
    line: usize,
    st: &mut Stages,
) -> Result<(usize, usize, Option<String>), RewriteError> {
    let Some(rest) = cmd.rest else {
        return Err(syntax(line, "FROM requires either one or three arguments"));
    };
    let flags = extract_builder_flags(logical, rest, cmd.end).map_err(|m| unsupported(line, m))?;
    let mut platform = false;
    for flag in &flags.flags {
        let body = flag.word.strip_prefix("--").unwrap_or(&flag.word);
        match body.split_once('=') {
            Some(("platform", _)) if !platform => platform = true,
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
        return Ok((start, end, None));
    }
    Ok((start, end, Some(image)))
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
}

struct Parsed {
    escape: char,
    list: Vec<Instruction>,
}

impl Instruction {
    /// The text edit that replaces `logical[start..end]` by `repl`.
    #[allow(clippy::too_many_arguments)]
    fn edit(
        &self,
        text: &str,
        lines: &[Line],
        start: usize,
        end: usize,
        repl: &str,
        escape: char,
        line: usize,
    ) -> Result<Option<(usize, usize, String)>, RewriteError> {
        for &(ls, os, len) in &self.segments {
            if start >= ls && end <= ls + len && start < ls + len {
                return Ok(Some((os + (start - ls), os + (end - ls), repl.to_string())));
            }
        }
        // The token is split by a line continuation: write the whole instruction on its first line and
        // leave the other lines empty, so that line numbers stay the same.
        let mut logical = String::with_capacity(self.logical.len() + repl.len());
        logical.push_str(&self.logical[..start]);
        logical.push_str(repl);
        logical.push_str(&self.logical[end..]);
        if logical.trim_end_matches([' ', '\t']).ends_with(escape) {
            return Err(unsupported(line, "an instruction ending in the escape character"));
        }
        let Some(&(_, seg_start, _)) = self.segments.first() else { return Ok(None) };
        // segments[0] is always the first line's (possibly empty) content.
        let mut repl_text = logical;
        for l in &lines[self.first_line..self.last_line] {
            repl_text.push_str(&text[l.content_end..l.end]);
        }
        Ok(Some((seg_start, lines[self.last_line].content_end, repl_text)))
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
fn parse(text: &str, lines: &[Line]) -> Result<Parsed, RewriteError> {
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
        list.push(Instruction { first_line: first, last_line: i - 1, logical, segments });
    }
    Ok(Parsed { escape, list })
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
    let mut lx = Lexer { chars: word.chars().collect(), pos: 0, env, escape };
    lx.stop_on(None)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a HashMap<String, String>,
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
