//! Image allow-list patterns, with the syntax and semantics of gitlab-runner's `allowed_images`
//! and `allowed_services` (which match with `github.com/bmatcuk/doublestar/v4`'s `Match`), so an
//! administrator's list means here what it meant under the Docker executor:
//!
//! - `*` any run of characters other than `/`; `?` one character other than `/`;
//! - `**` as a whole path component (`a/**`, `**/b`, `a/**/b`): zero or more components; anywhere
//!   else it is a plain `*`;
//! - `[abc]`, `[a-z]`, `[^a-z]` / `[!a-z]`: one character (never `/`) of (or not of) a class;
//! - `{alt1,alt2}` (nestable): one of the alternatives;
//! - `\x`: the character `x` itself.
//!
//! gitlab-runner matches the name as the job wrote it (after variable expansion), without
//! normalising it: `ruby:*` allows `ruby:3.3` but not `ruby` nor `docker.io/library/ruby:3.3`. A
//! malformed pattern matches nothing there; here [`validate`] lets the configuration refuse it.
//!
//! The job's own Docker calls do not carry the name as written (the CLI sends `ruby` + `latest`
//! for `docker pull ruby`); [`spellings`] gives the equivalent spellings of a reference, any of
//! which may match, which allows nothing more since they all name the same image.

use super::reference::Reference;

/// A pattern that cannot match anything (doublestar's `ErrBadPattern`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {pattern:?}: {why}")]
pub struct PatternError {
    pub pattern: String,
    pub why: &'static str,
}

/// Whether `name` matches `pattern`; a malformed pattern matches nothing.
pub fn matches(pattern: &str, name: &str) -> bool {
    let Ok(alternatives) = expand_braces(pattern) else { return false };
    let name: Vec<char> = name.chars().collect();
    alternatives.iter().any(|p| matches!(match_chars(p, &name, true), Ok(true)))
}

/// Whether `name` matches any of `patterns`.
pub fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

/// Refuses a pattern that doublestar would call malformed (unclosed `[` or `{`, a trailing `\`).
pub fn validate(pattern: &str) -> Result<(), PatternError> {
    let err = |why| PatternError { pattern: pattern.to_owned(), why };
    let alternatives = expand_braces(pattern).map_err(err)?;
    for p in &alternatives {
        // Matching against the empty name walks every class and escape of the pattern.
        let mut probe: Vec<char> = Vec::new();
        match_chars(p, &probe, true).map_err(err)?;
        probe.push('x');
        match_chars(p, &probe, true).map_err(err)?;
    }
    Ok(())
}

/// The spellings of one image that an allow-list may name: as given, then (when it parses) the
/// familiar form (`ruby:3`, `team/app`), the familiar form with the default tag, and the fully
/// qualified name with and without its tag (`docker.io/library/ruby:3`).
pub fn spellings(name: &str) -> Vec<String> {
    let mut out = vec![name.to_owned()];
    let mut add = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    if let Ok(r) = Reference::parse(name) {
        let tagged = r.clone().with_default_tag();
        add(r.familiar());
        add(tagged.familiar());
        add(r.to_string());
        add(tagged.to_string());
    }
    out
}

/// `{a,b{c,d}}` → every alternative spelled out; escapes are kept for the matcher.
fn expand_braces(pattern: &str) -> Result<Vec<Vec<char>>, &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    expand(&chars, Vec::new(), &mut out)?;
    Ok(out)
}

fn expand(rest: &[char], prefix: Vec<char>, out: &mut Vec<Vec<char>>) -> Result<(), &'static str> {
    if out.len() > 1024 {
        return Err("too many alternatives");
    }
    let mut i = 0;
    let mut in_class = false;
    while i < rest.len() {
        match rest[i] {
            '\\' => i += 1,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '{' if !in_class => {
                // The matching close brace and the top-level commas between.
                let (mut depth, mut j, mut cuts) = (0usize, i + 1, vec![i]);
                let mut class = false;
                let close = loop {
                    let Some(&c) = rest.get(j) else { return Err("unclosed '{'") };
                    match c {
                        '\\' => j += 1,
                        '[' if !class => class = true,
                        ']' if class => class = false,
                        '{' if !class => depth += 1,
                        '}' if !class && depth == 0 => break j,
                        '}' if !class => depth -= 1,
                        ',' if !class && depth == 0 => cuts.push(j),
                        _ => {}
                    }
                    j += 1;
                };
                cuts.push(close);
                let head: Vec<char> = prefix.iter().chain(&rest[..i]).copied().collect();
                for w in cuts.windows(2) {
                    let mut alt = head.clone();
                    alt.extend_from_slice(&rest[w[0] + 1..w[1]]);
                    // The alternative may hold braces itself; what follows the group is expanded too.
                    let mut tail = alt;
                    tail.extend_from_slice(&rest[close + 1..]);
                    expand(&tail, Vec::new(), out)?;
                }
                return Ok(());
            }
            _ => {}
        }
        i += 1;
    }
    let mut whole = prefix;
    whole.extend_from_slice(rest);
    out.push(whole);
    Ok(())
}

/// Is `p[i..]` a `**` that stands as a whole path component?
fn is_doublestar(p: &[char], i: usize) -> bool {
    p.get(i) == Some(&'*') && p.get(i + 1) == Some(&'*') && (i == 0 || p[i - 1] == '/') && matches!(p.get(i + 2), None | Some('/'))
}

/// Matches a brace-free pattern; `Err` for a malformed one. `at_start`: `p` begins at the
/// pattern's start or right after a `/` of it (so a `**` there is a whole component).
fn match_chars(p: &[char], s: &[char], at_start: bool) -> Result<bool, &'static str> {
    let Some(&c) = p.first() else { return Ok(s.is_empty()) };
    match c {
        '*' if at_start && is_doublestar(p, 0) => {
            if p.len() == 2 {
                // A trailing `**`: the rest of the name, whatever it is.
                return Ok(true);
            }
            // `**/rest`: `rest` here, or after any `/` of the name.
            let rest = &p[3..];
            if match_chars(rest, s, true)? {
                return Ok(true);
            }
            for (i, _) in s.iter().enumerate().filter(|(_, &c)| c == '/') {
                if match_chars(rest, &s[i + 1..], true)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        '/' if p.len() == 3 && p[1] == '*' && p[2] == '*' => {
            // `a/**` matches `a` itself and anything below it, but not `a/`.
            Ok(s.is_empty() || (s[0] == '/' && s.len() > 1))
        }
        '*' => {
            // Any run of non-separators (a `**` that is no whole component is a `*`).
            let mut q = 1;
            while p.get(q) == Some(&'*') {
                q += 1;
            }
            let rest = &p[q..];
            let mut i = 0;
            loop {
                if match_chars(rest, &s[i..], false)? {
                    return Ok(true);
                }
                if i >= s.len() || s[i] == '/' {
                    // Finish checking the pattern for malformed parts before giving up.
                    return Ok(false);
                }
                i += 1;
            }
        }
        '?' => Ok(matches!(s.first(), Some(&x) if x != '/') && match_chars(&p[1..], &s[1..], false)?),
        '[' => {
            let (class_matches, len) = class(&p[1..], s.first().copied())?;
            Ok(class_matches && match_chars(&p[1 + len..], &s[1..], false)?)
        }
        '\\' => {
            let Some(&lit) = p.get(1) else { return Err("trailing '\\'") };
            Ok(s.first() == Some(&lit) && match_chars(&p[2..], &s[1..], false)?)
        }
        _ => {
            if s.first() != Some(&c) {
                // Still reject a malformed remainder, so validation sees it.
                return match_chars(&p[1..], &[], false).map(|_| false);
            }
            match_chars(&p[1..], &s[1..], c == '/')
        }
    }
}

/// A class after its `[`: whether `c` (none, at the end of the name) is in it, and the class's
/// length including the `]`. `/` is never in a class.
fn class(p: &[char], c: Option<char>) -> Result<(bool, usize), &'static str> {
    let mut i = 0;
    let negated = matches!(p.first(), Some('^' | '!'));
    if negated {
        i += 1;
    }
    let start = i;
    let mut found = false;
    let lit = |i: &mut usize| -> Result<char, &'static str> {
        match p.get(*i) {
            Some('\\') => {
                *i += 1;
                p.get(*i).copied().ok_or("unclosed '['")
            }
            Some(&ch) => Ok(ch),
            None => Err("unclosed '['"),
        }
    };
    loop {
        match p.get(i) {
            None => return Err("unclosed '['"),
            Some(']') if i > start => break,
            Some(']') => return Err("empty character class"),
            _ => {}
        }
        let lo = lit(&mut i)?;
        i += 1;
        let mut hi = lo;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&n| n != ']') {
            i += 1;
            hi = lit(&mut i)?;
            i += 1;
        }
        if let Some(ch) = c {
            if lo <= ch && ch <= hi {
                found = true;
            }
        }
    }
    let ok = match c {
        Some('/') | None => false,
        Some(_) => found != negated,
    };
    Ok((ok, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases from doublestar's own tests and gitlab-runner's documented examples.
    #[test]
    fn doublestar_semantics() {
        let yes = [
            ("", ""),
            ("*", ""),
            ("*", "abc"),
            ("*c", "abc"),
            ("a*", "a"),
            ("a*/b", "abc/b"),
            ("a*b?c*x", "abxbbxdbxebxczzx"),
            ("ab[b-d]", "abc"),
            ("ab[^e-g]", "abc"),
            ("a[!a]b", "a☺b"),
            ("a?b", "a☺b"),
            ("[\\]a]", "]"),
            ("[x-]", "-"),
            ("[a-b-d]", "-"),
            ("**", ""),
            ("**", "a/b/c"),
            ("a/**", "a"),
            ("a/**", "a/b/c"),
            ("**/c", "c"),
            ("**/c", "a/b/c"),
            ("a/**/b", "a/b"),
            ("a/**/d", "a/b/c/d"),
            ("path/**.txt", "path/a.txt"),
            ("**/{a,b}", "a/b"),
            ("some{thing{new,},}", "somethingnew"),
            ("some{thing{new,},}", "some"),
            ("a\\*b", "a*b"),
            // gitlab-runner's documentation.
            ("ruby:*", "ruby:3.3"),
            ("my.registry.tld:5000/*:*", "my.registry.tld:5000/app:1"),
            ("registry.example.com/group/**", "registry.example.com/group/sub/app:1"),
        ];
        for (p, s) in yes {
            assert!(matches(p, s), "{p:?} should match {s:?}");
        }
        let no = [
            ("*", "/"),
            ("a*", "ab/c"),
            ("a*b", "a/b"),
            ("a?b", "a/b"),
            ("a???b", "a☺b"),
            ("ab[^c]", "abc"),
            ("[x-]", "z"),
            ("a/**", "a/"),
            ("**/c", "a/b"),
            ("**/c", "abcd"),
            ("a*/b", "a/c/b"),
            ("a\\*b", "ab"),
            ("path/**.txt", "path/x/a.txt"),
            ("ruby:*", "ruby"),
            ("ruby:*", "docker.io/library/ruby:3"),
            ("my.registry.tld:5000/*:*", "my.registry.tld:5000/group/app:1"),
            // Malformed patterns match nothing.
            ("[]a]", "]"),
            ("[", "a"),
            ("a[", "a"),
            ("\\", "a"),
            ("{a,b", "a"),
        ];
        for (p, s) in no {
            assert!(!matches(p, s), "{p:?} should not match {s:?}");
        }
    }

    #[test]
    fn malformed_patterns_are_found() {
        for bad in ["[", "a[", "[^bc", "\\", "{a,b", "x/[]a]", "{a,[}"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        for good in ["ruby:*", "**/*", "a{b,c}[!d]\\*", "registry.example.com:5000/**"] {
            assert_eq!(validate(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn spellings_of_one_image() {
        assert_eq!(spellings("ruby"), ["ruby", "ruby:latest", "docker.io/library/ruby", "docker.io/library/ruby:latest"]);
        assert_eq!(spellings("docker.io/library/ruby:3"), ["docker.io/library/ruby:3", "ruby:3"]);
        assert_eq!(spellings("NOT A REF"), ["NOT A REF"]);
        assert!(spellings("localhost:5000/app").contains(&"localhost:5000/app:latest".to_owned()));
    }
}
