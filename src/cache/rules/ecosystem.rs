//! Per-ecosystem URL layouts (apt, dnf, apk, Maven, OCI, npm, PyPI, cargo, Go): whether a URL is
//! an immutable artifact or a mutable index, and which ecosystem it belongs to. Pure functions.

use std::fmt;

// === Classification ===

/// How a URL's content changes over time, which sets how long a stored copy is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A versioned or content-addressed artifact: the bytes behind the URL never change.
    Immutable,
    /// An index or metadata file that changes when packages are published.
    Mutable,
    /// Neither is known: the response's own headers decide.
    Unknown,
}

impl Class {
    pub fn as_str(&self) -> &'static str {
        match self {
            Class::Immutable => "immutable",
            Class::Mutable => "mutable",
            Class::Unknown => "unknown",
        }
    }
}

/// Immutable artifact, mutable index, or unknown, by host and path (`docs/cache.md`, "What is cached, and for whom").
///
/// `host` may carry a port; `path` may carry a query (ignored: the key keeps it). Hosts with a
/// layout of their own (pypi.org, files.pythonhosted.org, registry.npmjs.org and its mirrors,
/// index.crates.io, static.crates.io) are decided by host. Everything else is decided by path
/// layout, whatever the host, so mirrors and repository managers (Nexus, Artifactory) classify too:
/// - apt: `pool/**/*.deb` (and `.udeb`, `.ddeb`, `.dsc`, source tarballs in `pool/`) and
///   `by-hash/<ALGO>/<hex>` are immutable; everything else under `dists/`, and `InRelease`,
///   `Release(.gpg)`, `Packages*`, `Sources*` anywhere, is mutable;
/// - dnf: `<name>-<ver>-<rel>.<arch>.rpm` and hash-prefixed `repodata/<hex>-*` are immutable;
///   `repomd.xml*`, other `repodata/` files, `metalink`, `mirrorlist` are mutable;
/// - apk: `<name>-<ver>-r<n>.apk` is immutable, `APKINDEX.tar.gz` mutable;
/// - Maven: `<group>/<artifact>/<version>/<artifact>-<version>[-<classifier>].<ext>` is immutable
///   unless the version is a `-SNAPSHOT`; `maven-metadata*` and SNAPSHOT files are mutable;
/// - OCI (`/v2/` anywhere in the path): blobs and manifests by `sha256:`/`sha512:` digest are
///   immutable; tag manifests, `tags/list`, `referrers/`, `_catalog` mutable;
/// - npm tarballs `<pkg>/-/<pkg>-<ver>.tgz`, `<name>/<name>-<ver>.crate`, wheels (`.whl` with a
///   versioned file name), Go `@v/<ver>.{zip,mod,info}` are immutable; `/simple/`, Go `@v/list`
///   and `@latest` mutable.
///
/// Immutable rules check the layout (a version in the file name) because a wrong "immutable" keeps
/// a changed file for [`super::http::FreshnessRules::immutable_ttl`]; mutable rules may be broad, since a wrong
/// "mutable" only shortens freshness.
pub fn classify(host: &str, path: &str) -> Class {
    let host = host_without_port(host).to_ascii_lowercase();
    let path = strip_query(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match host.trim_end_matches('.') {
        "files.pythonhosted.org" | "test-files.pythonhosted.org" => {
            return if segments.len() >= 2 && segments[0] == "packages" { Class::Immutable } else { Class::Unknown }
        }
        "pypi.org" | "test.pypi.org" => return classify_pypi(&segments),
        "registry.npmjs.org" | "registry.yarnpkg.com" | "registry.npmmirror.com" => return classify_npm(&segments),
        "index.crates.io" => return Class::Mutable,
        "static.crates.io" => {
            return if segments.last().is_some_and(|file| file.ends_with(".crate")) { Class::Immutable } else { Class::Unknown }
        }
        _ => {}
    }
    classify_by_layout(&segments)
}

fn classify_pypi(segments: &[&str]) -> Class {
    match segments {
        ["simple", ..] | ["rss", ..] => Class::Mutable,
        ["pypi", _, "json"] | ["pypi", _, _, "json"] => Class::Mutable,
        _ => Class::Unknown,
    }
}

/// registry.npmjs.org: `/<pkg>` and `/@scope/pkg` (or `/@scope%2fpkg`) are packuments, `/<pkg>/<ver>`
/// and `/<pkg>/latest` version documents (all mutable); `/<pkg>/-/<file>.tgz` tarballs (immutable).
fn classify_npm(segments: &[&str]) -> Class {
    let Some(first) = segments.first() else { return Class::Unknown };
    if first.starts_with('-') {
        return Class::Unknown;
    }
    let name_len = if first.starts_with('@') && !first.to_ascii_lowercase().contains("%2f") { 2 } else { 1 };
    match segments.get(name_len..) {
        Some([]) => Class::Mutable,
        Some([version]) if *version != "-" => Class::Mutable,
        Some(["-", file]) if file.ends_with(".tgz") => Class::Immutable,
        _ => Class::Unknown,
    }
}

/// Files of a Debian pool: binary packages and source packages (a pool file name never changes content).
const DEB_POOL_SUFFIXES: &[&str] = &[".deb", ".udeb", ".ddeb", ".dsc", ".diff.gz", ".tar.gz", ".tar.xz", ".tar.bz2"];

fn classify_by_layout(segments: &[&str]) -> Class {
    let Some((&file, dirs)) = segments.split_last() else { return Class::Unknown };
    if let Some(class) = classify_oci(segments) {
        return class;
    }
    // apt
    if let [.., "by-hash", algo, hex] = segments {
        let hex_len = match algo.to_ascii_lowercase().as_str() {
            "md5sum" => 32,
            "sha1" => 40,
            "sha256" => 64,
            "sha512" => 128,
            _ => 0,
        };
        if hex_len > 0 && is_lower_hex(hex, hex_len) {
            return Class::Immutable;
        }
    }
    if dirs.contains(&"dists")
        || ["InRelease", "Release", "Release.gpg"].contains(&file)
        || file.starts_with("Packages")
        || file.starts_with("Sources")
    {
        return Class::Mutable;
    }
    if dirs.contains(&"pool") && DEB_POOL_SUFFIXES.iter().any(|suffix| file.ends_with(suffix)) {
        return Class::Immutable;
    }
    // dnf
    if dirs.last() == Some(&"repodata") {
        let hash_prefixed = file.split_once('-').is_some_and(|(hash, _)| hash.len() >= 32 && is_lower_hex(hash, hash.len()));
        return if hash_prefixed { Class::Immutable } else { Class::Mutable };
    }
    if file == "metalink" || file == "mirrorlist" {
        return Class::Mutable;
    }
    if is_rpm_file(file) {
        return Class::Immutable;
    }
    // apk
    if file == "APKINDEX.tar.gz" {
        return Class::Mutable;
    }
    if is_apk_file(file) {
        return Class::Immutable;
    }
    // Maven
    if file.starts_with("maven-metadata") {
        return Class::Mutable;
    }
    if let [.., artifact, version, file] = segments {
        if segments.len() >= 4 && is_maven_file(artifact, version, file) {
            return if version.ends_with("-SNAPSHOT") { Class::Mutable } else { Class::Immutable };
        }
    }
    // npm tarball and crate outside their registries (mirrors, Nexus, Artifactory)
    if let [.., package, "-", file] = segments {
        if file.ends_with(".tgz") && file.starts_with(&format!("{package}-")) {
            return Class::Immutable;
        }
    }
    if let [.., name, file] = segments {
        if file.ends_with(".crate") && file.starts_with(&format!("{name}-")) {
            return Class::Immutable;
        }
    }
    // Python wheels: `{dist}-{version}(-{build})?-{python}-{abi}-{platform}.whl`
    if file.ends_with(".whl") && file.matches('-').count() >= 4 {
        return Class::Immutable;
    }
    // Go module proxy
    if dirs.last() == Some(&"@v") {
        if file == "list" {
            return Class::Mutable;
        }
        if [".zip", ".mod", ".info"].iter().any(|ext| file.ends_with(ext)) {
            return Class::Immutable;
        }
    }
    if file == "@latest" || segments.contains(&"simple") {
        return Class::Mutable;
    }
    Class::Unknown
}

/// OCI distribution paths, wherever `/v2/` starts (Artifactory prefixes it with its own path).
fn classify_oci(segments: &[&str]) -> Option<Class> {
    let start = segments.iter().position(|s| *s == "v2")?;
    let api = &segments[start + 1..];
    match api {
        ["_catalog"] => Some(Class::Mutable),
        [name @ .., "tags", "list"] if !name.is_empty() => Some(Class::Mutable),
        [name @ .., "referrers", _] if !name.is_empty() => Some(Class::Mutable),
        [name @ .., "manifests", reference] if !name.is_empty() => {
            Some(if is_oci_digest(reference) { Class::Immutable } else { Class::Mutable })
        }
        [name @ .., "blobs", reference] if !name.is_empty() && is_oci_digest(reference) => Some(Class::Immutable),
        _ => None,
    }
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>` (the OCI image spec's encodings).
fn is_oci_digest(reference: &str) -> bool {
    match reference.split_once(':') {
        Some(("sha256", hex)) => is_lower_hex(hex, 64),
        Some(("sha512", hex)) => is_lower_hex(hex, 128),
        _ => false,
    }
}

pub(super) fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `<name>-<version>-<release>.<arch>.rpm`, with a known architecture.
fn is_rpm_file(file: &str) -> bool {
    const ARCHES: &[&str] = &["x86_64", "aarch64", "noarch", "i686", "i386", "ppc64le", "s390x", "armv7hl", "src"];
    let Some(stem) = file.strip_suffix(".rpm") else { return false };
    let Some((nvr, arch)) = stem.rsplit_once('.') else { return false };
    ARCHES.contains(&arch) && nvr.matches('-').count() >= 2
}

/// Alpine's `<name>-<version>-r<n>.apk`.
fn is_apk_file(file: &str) -> bool {
    let Some(stem) = file.strip_suffix(".apk") else { return false };
    let Some((_, release)) = stem.rsplit_once("-r") else { return false };
    !release.is_empty() && release.bytes().all(|b| b.is_ascii_digit()) && stem.matches('-').count() >= 2
}

/// `<artifact>-<version>` followed by `.` or `-` (a classifier), in the `<artifact>/<version>/` directory.
fn is_maven_file(artifact: &str, version: &str, file: &str) -> bool {
    let Some(rest) = file.strip_prefix(artifact).and_then(|rest| rest.strip_prefix('-')) else { return false };
    if version.ends_with("-SNAPSHOT") {
        // Snapshot files are `<artifact>-<base>-<timestamp>-<n>.jar` or `<artifact>-<version>.jar`.
        return rest.starts_with(version.trim_end_matches("-SNAPSHOT"));
    }
    rest.strip_prefix(version).is_some_and(|tail| tail.starts_with('.') || tail.starts_with('-'))
}

// === Ecosystems and the use of a stored entry ===

/// The package ecosystem a URL belongs to: a metrics label, and the unit of
/// [`super::http::RevalidationRules::index_max_age`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ecosystem {
    Apt,
    Dnf,
    Apk,
    Pypi,
    Npm,
    Cargo,
    Maven,
    Go,
    Oci,
    Other,
}

impl Ecosystem {
    pub const ALL: [Ecosystem; 10] = [
        Ecosystem::Apt,
        Ecosystem::Dnf,
        Ecosystem::Apk,
        Ecosystem::Pypi,
        Ecosystem::Npm,
        Ecosystem::Cargo,
        Ecosystem::Maven,
        Ecosystem::Go,
        Ecosystem::Oci,
        Ecosystem::Other,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Ecosystem::Apt => "apt",
            Ecosystem::Dnf => "dnf",
            Ecosystem::Apk => "apk",
            Ecosystem::Pypi => "pypi",
            Ecosystem::Npm => "npm",
            Ecosystem::Cargo => "cargo",
            Ecosystem::Maven => "maven",
            Ecosystem::Go => "go",
            Ecosystem::Oci => "oci",
            Ecosystem::Other => "other",
        }
    }

    /// The ecosystem named `name` (as in [`Ecosystem::as_str`]), for the configuration.
    pub fn from_name(name: &str) -> Option<Ecosystem> {
        Ecosystem::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// Position in [`Ecosystem::ALL`], for per-ecosystem arrays.
    pub fn index(&self) -> usize {
        *self as usize
    }
}

impl fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ecosystem of a URL, by the same host and layout rules as [`classify`] (a URL [`classify`]
/// knows is never `Other`; a URL it does not know may still belong to a known registry host).
pub fn ecosystem(host: &str, path: &str) -> Ecosystem {
    let host = host_without_port(host).to_ascii_lowercase();
    match host.trim_end_matches('.') {
        "files.pythonhosted.org" | "test-files.pythonhosted.org" | "pypi.org" | "test.pypi.org" => return Ecosystem::Pypi,
        "registry.npmjs.org" | "registry.yarnpkg.com" | "registry.npmmirror.com" => return Ecosystem::Npm,
        "index.crates.io" | "static.crates.io" | "crates.io" => return Ecosystem::Cargo,
        _ => {}
    }
    let segments: Vec<&str> = strip_query(path).split('/').filter(|s| !s.is_empty()).collect();
    let Some((&file, dirs)) = segments.split_last() else { return Ecosystem::Other };
    if classify_oci(&segments).is_some() {
        return Ecosystem::Oci;
    }
    if dirs.contains(&"by-hash")
        || dirs.contains(&"dists")
        || ["InRelease", "Release", "Release.gpg"].contains(&file)
        || file.starts_with("Packages")
        || file.starts_with("Sources")
        || (dirs.contains(&"pool") && DEB_POOL_SUFFIXES.iter().any(|suffix| file.ends_with(suffix)))
    {
        return Ecosystem::Apt;
    }
    if dirs.last() == Some(&"repodata") || file == "metalink" || file == "mirrorlist" || is_rpm_file(file) {
        return Ecosystem::Dnf;
    }
    if file == "APKINDEX.tar.gz" || is_apk_file(file) {
        return Ecosystem::Apk;
    }
    if dirs.last() == Some(&"@v") || file == "@latest" {
        return Ecosystem::Go;
    }
    if file.starts_with("maven-metadata") {
        return Ecosystem::Maven;
    }
    if let [.., artifact, version, file] = segments.as_slice() {
        if is_maven_file(artifact, version, file) {
            return Ecosystem::Maven;
        }
    }
    if file.ends_with(".whl") || segments.contains(&"simple") {
        return Ecosystem::Pypi;
    }
    if file.ends_with(".tgz") && dirs.last() == Some(&"-") {
        return Ecosystem::Npm;
    }
    if file.ends_with(".crate") {
        return Ecosystem::Cargo;
    }
    Ecosystem::Other
}

pub(super) fn strip_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` without the port.
pub(super) fn host_without_port(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}
