//! What dockerd's classic builder does with `ADD <http(s) url> <dest>`, as pure functions: which URLs
//! ctproxy can fetch exactly as Go's `http.Get` would, which file name the download gets
//! (`getFilenameForDownload`) and its modification time (`Last-Modified`, else the epoch).
//!
//! ctproxy fetches these URLs itself (SSRF-checked) and hands the daemon a `COPY` of the downloaded
//! file instead: for that `COPY` to give the same image as the `ADD`, the file must be named and
//! dated as dockerd would have named and dated it. Whatever could be read two ways is refused.

/// The file name dockerd gives a download whose name it cannot determine (`unnamedFilename`).
pub const UNNAMED: &str = "__unnamed__";

/// An `ADD` URL as Go's `url.Parse` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddSource {
    /// The URL as written (what is fetched).
    pub url: String,
    /// `host` or `[v6]`, as written.
    pub host: String,
    pub port: Option<u16>,
    /// The path, percent-decoded (`url.URL.Path`).
    pub path: String,
}

/// Characters Go and WHATWG URL parsers (reqwest's) may treat differently, or that no plain URL has.
const UNSAFE: &[u8] = b"\\\"'<>^`{|}";

/// Reads an `ADD` URL, refusing anything whose reading could differ between Go's `url.Parse` (what
/// dockerd would have fetched) and the URL parser of ctproxy's client: non-ASCII, spaces and
/// controls, `\ " ' < > ^ ` { | }`, user information, `%` in the host, dot segments.
pub fn parse_add_url(url: &str) -> Result<AddSource, String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).ok_or("is not an http(s) URL")?;
    if let Some(c) = url.bytes().find(|&c| !c.is_ascii_graphic() || UNSAFE.contains(&c)) {
        return Err(format!("contains the character {:?}, which ctproxy does not pass on", c as char));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() {
        return Err("has no host".into());
    }
    if authority.contains(['@', '%']) {
        return Err("has user information or escapes in its host part".into());
    }
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            let port = authority[i + 1..].parse::<u16>().map_err(|_| "has an invalid port")?;
            (&authority[..i], Some(port))
        }
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    let raw_path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    let path = percent_decode(raw_path).ok_or("has an invalid %-escape in its path")?;
    // A WHATWG parser removes dot segments (also escaped ones); Go sends them as they are.
    if raw_path.split('/').any(|seg| matches!(percent_decode(seg).as_deref(), Some(".") | Some(".."))) {
        return Err("has `.` or `..` path segments".into());
    }
    Ok(AddSource { url: url.to_owned(), host: host.to_owned(), port, path })
}

/// Go's `url.PathUnescape` for a path: `%XX` decoded, invalid escapes an error.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok().filter(|_| hex.bytes().all(|c| c.is_ascii_hexdigit()))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `getFilenameForDownload`: the last element of the URL path, else the `filename` of a
/// `Content-Disposition` answer, else `None`. A `Content-Disposition` ctproxy cannot read exactly as
/// Go's `mime.ParseMediaType` does is an error.
pub fn download_filename(path: &str, content_disposition: Option<&str>) -> Result<Option<String>, String> {
    if !path.is_empty() && !path.ends_with('/') {
        if let Some(base) = path.rsplit('/').next().filter(|b| !b.is_empty()) {
            return Ok(Some(base.to_owned()));
        }
    }
    let Some(cd) = content_disposition.map(str::trim).filter(|c| !c.is_empty()) else { return Ok(None) };
    let params = media_params(cd).map_err(|why| format!("its Content-Disposition header {cd:?} {why}"))?;
    let Some(name) = params.into_iter().find(|(k, _)| k == "filename").map(|(_, v)| v) else { return Ok(None) };
    if name.is_empty() || name.ends_with('/') {
        return Ok(None);
    }
    // filepath.Base: the last element after trailing slashes are removed (there are none here).
    Ok(name.rsplit('/').next().filter(|b| !b.is_empty()).map(str::to_owned))
}

/// RFC 2045 `tspecials`.
fn is_token(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

/// The parameters of a media type or disposition (`type; a=b; c="d"`), keys lower-cased. Forms
/// Go reads in ways not reproduced here (RFC 2231 `key*`, duplicates, stray characters) are errors.
fn media_params(v: &str) -> Result<Vec<(String, String)>, &'static str> {
    let (base, mut rest) = v.split_once(';').unwrap_or((v, ""));
    let base = base.trim();
    let (t, sub) = base.split_once('/').map_or((base, None), |(a, b)| (a, Some(b)));
    if t.is_empty() || !t.chars().all(is_token) || sub.is_some_and(|s| s.is_empty() || !s.chars().all(is_token)) {
        return Err("has an invalid type");
    }
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(params);
        }
        let key_len = rest.find(|c: char| !is_token(c)).unwrap_or(rest.len());
        let key = rest[..key_len].to_ascii_lowercase();
        if key.is_empty() || key.contains('*') {
            return Err("has parameters ctproxy does not read");
        }
        rest = rest[key_len..].trim_start().strip_prefix('=').ok_or("has a parameter without a value")?.trim_start();
        let value = if let Some(q) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("has an unterminated quoted string"),
                    Some((i, '"')) => break i + 1,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err("has an unterminated quoted string"),
                    },
                    Some((_, c)) if c.is_control() => return Err("has control characters"),
                    Some((_, c)) => value.push(c),
                }
            };
            rest = &q[end..];
            value
        } else {
            let len = rest.find(|c: char| !is_token(c)).unwrap_or(rest.len());
            if len == 0 {
                return Err("has a parameter without a value");
            }
            let value = rest[..len].to_owned();
            rest = &rest[len..];
            value
        };
        if params.iter().any(|(k, _)| *k == key) {
            return Err("has duplicate parameters");
        }
        params.push((key, value));
        rest = rest.trim_start();
        match rest.strip_prefix(';') {
            Some(r) => rest = r,
            None if rest.is_empty() => return Ok(params),
            None => return Err("has stray characters"),
        }
    }
}

/// A download's modification time as dockerd sets it: `Last-Modified` (any HTTP date form), else
/// the epoch; times before the epoch are the epoch (`system.Chtimes`).
pub fn download_mtime(last_modified: Option<&str>) -> u64 {
    last_modified
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Whether a download's file name can be written in a `COPY` source as it is: no variables, quotes,
/// escapes, wildcards or spaces that dockerd would interpret, and not `.`/`..`.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | ',' | '=' | '@' | '%' | '~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_go_reads_them() {
        let s = parse_add_url("https://deb.debian.org/debian/README?x=1#f").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.path.as_str()), ("deb.debian.org", None, "/debian/README"));
        let s = parse_add_url("http://[::1]:8080/a%20b").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.path.as_str()), ("[::1]", Some(8080), "/a b"));
        assert_eq!(parse_add_url("http://h").unwrap().path, "");
        for bad in [
            "ftp://h/x",
            "HTTP://h/x",
            "http:///x",
            "http://u:p@h/x",
            "http://h/a b",
            "http://h\\@evil/x",
            "http://h/%zz",
            "http://h/a/../b",
            "http://h/a/%2E%2e/b",
            "http://h:99999/",
            "http://h:/x",
            "http://h/é",
        ] {
            assert!(parse_add_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names_as_the_builder_gives_them() {
        assert_eq!(download_filename("/debian/README", Some("attachment; filename=x")), Ok(Some("README".into())));
        assert_eq!(download_filename("/dir/", None), Ok(None));
        assert_eq!(download_filename("", Some("attachment; filename=\"a \\\"b\\\".tgz\"")), Ok(Some("a \"b\".tgz".into())));
        assert_eq!(download_filename("/", Some("attachment; filename=\"../x/y.tar\"")), Ok(Some("y.tar".into())));
        // Go's parser fails on a `/` outside quotes (and then ignores the header): not reproduced, refused.
        assert!(download_filename("/", Some("attachment; filename=../x/y.tar")).is_err());
        assert_eq!(download_filename("/", Some("inline")), Ok(None));
        assert_eq!(download_filename("/", Some("attachment; filename=\"dir/\"")), Ok(None));
        assert!(download_filename("/", Some("attachment; filename*=UTF-8''x")).is_err());
        assert!(download_filename("/", Some("attachment; filename=a; filename=b")).is_err());
        assert!(download_filename("/", Some("attachment; filename=\"x")).is_err());
        assert!(plain_file_name("README") && plain_file_name("a-1.2_3+x.tar.gz"));
        for bad in ["", ".", "..", "a b", "$x", "a*", "a\\b", "x\"", "é"] {
            assert!(!plain_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn modification_times() {
        assert_eq!(download_mtime(Some("Sun, 06 Nov 1994 08:49:37 GMT")), 784111777);
        assert_eq!(download_mtime(Some("Sunday, 06-Nov-94 08:49:37 GMT")), 784111777);
        assert_eq!(download_mtime(Some("Sun Nov  6 08:49:37 1994")), 784111777);
        assert_eq!(download_mtime(Some("yesterday")), 0);
        assert_eq!(download_mtime(None), 0);
    }
}
