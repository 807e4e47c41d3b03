//! Translating what upstream registries answer back into the registry proxy's names.
//!
//! dockerd only ever sees mangled repositories (`<ns>/<domain>/<path>`) and the proxy's own paths: a
//! `Location` or `Link` that points into the upstream repository becomes the same path under the
//! mangled name, so the next request comes back through the proxy (and its namespace check). URLs
//! elsewhere (a CDN a blob redirects to) are passed on as absolute URLs: dockerd attaches its token
//! only to the host that challenged it, so following them leaks nothing.

use reqwest::Url;
use serde_json::Value;

use super::route::Repo;

/// Maps an upstream URL reference (absolute or relative to `base`, the upstream request's URL) to
/// what dockerd should see. `None` if it cannot be parsed.
pub fn location(raw: &str, base: &Url, repo: &Repo) -> Option<String> {
    let target = base.join(raw.trim()).ok()?;
    let same_origin = target.scheme() == base.scheme()
        && target.host_str() == base.host_str()
        && target.port_or_known_default() == base.port_or_known_default();
    let prefix = format!("/v2/{}/", repo.path);
    if same_origin {
        if let Some(rest) = target.path().strip_prefix(&prefix) {
            let mut out = format!("/v2/{}/{rest}", repo.mangled);
            if let Some(q) = target.query() {
                out.push('?');
                out.push_str(q);
            }
            return Some(out);
        }
    }
    Some(target.to_string())
}

/// Rewrites every `<url>` of a `Link` header (tags and referrers pagination).
pub fn link(raw: &str, base: &Url, repo: &Repo) -> Option<String> {
    let mut out = String::with_capacity(raw.len() + repo.mangled.len());
    let mut rest = raw;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>')? + open;
        out.push_str(&rest[..=open]);
        out.push_str(&location(&rest[open + 1..close], base, repo)?);
        out.push('>');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `GET tags/list`: the body names the repository; dockerd compares it with what it asked for.
pub fn tags_body(body: &[u8], repo: &Repo) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    if let Some(name) = v.get_mut("name") {
        *name = Value::String(repo.mangled.clone());
    }
    serde_json::to_vec(&v).ok()
}

/// An upstream error body: every string that is exactly the upstream repository becomes the mangled
/// name; `repository:<path>:` scopes in messages likewise. Nothing else is touched, so no name the
/// upstream did not send appears (in particular never another namespace's).
pub fn error_body(body: &[u8], repo: &Repo) -> Option<Vec<u8>> {
    fn walk(v: &mut Value, repo: &Repo) {
        match v {
            Value::String(s) if *s == repo.path => *s = repo.mangled.clone(),
            Value::String(s) => {
                let scope = format!("repository:{}:", repo.path);
                if s.contains(&scope) {
                    *s = s.replace(&scope, &format!("repository:{}:", repo.mangled));
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, repo)),
            Value::Object(o) => o.values_mut().for_each(|x| walk(x, repo)),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    walk(&mut v, repo);
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> Repo {
        Repo::parse("alice/localhost__5000/team/x").unwrap()
    }

    #[test]
    fn locations() {
        let base = Url::parse("http://localhost:5000/v2/team/x/blobs/uploads/").unwrap();
        let r = repo();
        assert_eq!(
            location("/v2/team/x/blobs/uploads/abc-1?_state=Zm9v%3D&x=1", &base, &r).unwrap(),
            "/v2/alice/localhost__5000/team/x/blobs/uploads/abc-1?_state=Zm9v%3D&x=1"
        );
        assert_eq!(
            location("http://localhost:5000/v2/team/x/blobs/sha256:ab", &base, &r).unwrap(),
            "/v2/alice/localhost__5000/team/x/blobs/sha256:ab"
        );
        // Another host (a CDN): absolute and unchanged.
        assert_eq!(location("https://cdn.example/blob?sig=1", &base, &r).unwrap(), "https://cdn.example/blob?sig=1");
        // Same host, another repository: not mapped into this namespace.
        assert_eq!(location("/v2/team/y/blobs/x", &base, &r).unwrap(), "http://localhost:5000/v2/team/y/blobs/x");
        assert_eq!(location("/v2/team/xy/blobs/x", &base, &r).unwrap(), "http://localhost:5000/v2/team/xy/blobs/x");
        // Another port is another origin.
        assert_eq!(location("http://localhost:5001/v2/team/x/b", &base, &r).unwrap(), "http://localhost:5001/v2/team/x/b");
    }

    #[test]
    fn links_and_bodies() {
        let base = Url::parse("http://localhost:5000/v2/team/x/tags/list").unwrap();
        let r = repo();
        assert_eq!(
            link("</v2/team/x/tags/list?last=b&n=2>; rel=\"next\"", &base, &r).unwrap(),
            "</v2/alice/localhost__5000/team/x/tags/list?last=b&n=2>; rel=\"next\""
        );
        let body = tags_body(br#"{"name":"team/x","tags":["1","2"]}"#, &r).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["name"], "alice/localhost__5000/team/x");
        assert_eq!(v["tags"][1], "2");
        let e = error_body(
            br#"{"errors":[{"code":"DENIED","message":"access to repository:team/x:push denied","detail":[{"Type":"repository","Name":"team/x"},{"Name":"team/xy"}]}]}"#,
            &r,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["errors"][0]["detail"][0]["Name"], "alice/localhost__5000/team/x");
        assert_eq!(v["errors"][0]["detail"][1]["Name"], "team/xy");
        assert_eq!(v["errors"][0]["message"], "access to repository:alice/localhost__5000/team/x:push denied");
        assert!(error_body(b"not json", &r).is_none());
    }
}
