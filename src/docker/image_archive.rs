//! Image archives (`docker save` answers, `docker load` bodies): which members and fields name
//! images, and how the daemons read them. Anything that renames images in an archive must find every
//! name the daemon will read, read exactly as the daemon reads it.
//!
//! An archive is a tar; the daemon reads these members (names `path.Clean`ed; a member given twice:
//! the classic store untars, so the last one wins; containerd decodes `manifest.json` again into the
//! same slice, merging, and keeps the last `index.json`):
//!
//! - `index.json` (OCI layout; read by the containerd image store only, and only when an `oci-layout`
//!   member gives a version): an OCI image index. Each descriptor of its `manifests` becomes one image
//!   named by the descriptor's annotation `io.containerd.image.name`, or, when that one is empty,
//!   `org.opencontainers.image.ref.name` taken as it is (dockerd sets no translator, so a bare tag
//!   such as `1.0` becomes an image named `1.0`). A descriptor without either becomes the dangling
//!   image `moby-dangling@<digest>` (and so does one whose name does not parse). Only the
//!   top-level index is read for names: nested indexes (blobs) name nothing (containerd
//!   `client.Import`, whose handler names images only at the root). Decoded by Go's
//!   `encoding/json` into `ocispec.Index` ([`INDEX`]).
//! - `manifest.json` (Docker archive; the classic store always, containerd when there is no OCI
//!   layout): `[{Config, RepoTags, Layers, Parent, LayerSources}]`, each `RepoTags` entry an image
//!   name ([`MANIFEST`]). Go struct fields, so keys match case-insensitively.
//! - `repositories` (legacy archive; read by the classic store when there is no `manifest.json`):
//!   `{name: {tag: id}}` ([`REPOSITORIES`]).
//!
//! On save, dockerd writes `index.json` with `io.containerd.image.name` = the full normalised
//! reference (`docker.io/library/app:1`) and `org.opencontainers.image.ref.name` = its tag (`1`, or
//! the full reference when it has a digest and no tag), `manifest.json` with familiar `RepoTags`
//! (`app:1`), and (classic store) `repositories` with familiar names.

use super::json::{Kind, Schema};

pub const INDEX_JSON: &str = "index.json";
pub const MANIFEST_JSON: &str = "manifest.json";
pub const REPOSITORIES_FILE: &str = "repositories";

/// containerd's name of an image in an index (`images.AnnotationImageName`).
pub const IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI reference name; the image's name when [`IMAGE_NAME`] is empty.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The OCI base image name: read by no importer, but it names an image.
pub const BASE_NAME: &str = "org.opencontainers.image.base.name";

/// The annotations whose value is an image name.
pub const NAME_ANNOTATIONS: [&str; 3] = [IMAGE_NAME, REF_NAME, BASE_NAME];

/// `docker save` (containerd store) copies the content's distribution-source labels onto each
/// descriptor: `containerd.io/distribution.source.<registry host, no port>` = the comma-separated
/// repositories the content was pulled from there. No importer reads them back (containerd keeps
/// them on the image's target descriptor only; pushes read the content's labels).
pub const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";

/// Annotations known to name no image: the OCI pre-defined ones, and BuildKit's attestation links.
pub const PLAIN_ANNOTATIONS: [&str; 14] = [
    "org.opencontainers.image.created",
    "org.opencontainers.image.authors",
    "org.opencontainers.image.url",
    "org.opencontainers.image.documentation",
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.vendor",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.base.digest",
    "vnd.docker.reference.digest",
    "vnd.docker.reference.type",
];

const S: Kind = Kind::Scalar;
const STRINGS: Kind = Kind::Slice(&Kind::Scalar);
const STRING_MAP: Kind = Kind::Map(&Kind::Scalar);

/// `ocispec.Platform`.
pub static PLATFORM: Schema = Schema {
    name: "Platform",
    fields: &[("architecture", S), ("os", S), ("os.version", S), ("os.features", STRINGS), ("variant", S)],
    embeds: &[],
};

/// `ocispec.Descriptor`.
pub static DESCRIPTOR: Schema = Schema {
    name: "Descriptor",
    fields: &[
        ("mediaType", S),
        ("digest", S),
        ("size", S),
        ("urls", STRINGS),
        ("annotations", STRING_MAP),
        ("data", S),
        ("platform", Kind::PtrStruct(&PLATFORM)),
        ("artifactType", S),
    ],
    embeds: &[],
};

/// `ocispec.Index` (its embedded `specs.Versioned` promoted).
pub static INDEX_SCHEMA: Schema = Schema {
    name: "Index",
    fields: &[
        ("schemaVersion", S),
        ("mediaType", S),
        ("artifactType", S),
        ("manifests", Kind::Slice(&Kind::Struct(&DESCRIPTOR))),
        ("subject", Kind::PtrStruct(&DESCRIPTOR)),
        ("annotations", STRING_MAP),
    ],
    embeds: &[],
};

/// `index.json`, as containerd decodes it.
pub static INDEX: Kind = Kind::Struct(&INDEX_SCHEMA);

/// One `manifest.json` entry: the classic store's `manifestItem` (containerd reads the first three).
pub static MANIFEST_ITEM: Schema = Schema {
    name: "manifestItem",
    fields: &[("Config", S), ("RepoTags", STRINGS), ("Layers", STRINGS), ("Parent", S), ("LayerSources", Kind::Map(&Kind::Any))],
    embeds: &[],
};

/// `manifest.json`.
pub static MANIFEST: Kind = Kind::Slice(&Kind::Struct(&MANIFEST_ITEM));

/// `repositories`: `map[string]map[string]string`.
pub static REPOSITORIES: Kind = Kind::Map(&STRING_MAP);

/// The name containerd gives the image of one index descriptor (`client.imageName`): the
/// containerd annotation, else the OCI reference name as it is; `None`: a dangling image.
pub fn effective_name<'a>(annotation: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    annotation(IMAGE_NAME).filter(|n| !n.is_empty()).or_else(|| annotation(REF_NAME).filter(|n| !n.is_empty()))
}

/// Whether an OCI reference name is only a tag (`1.0`, `latest`): the form OCI suggests, which
/// containerd writes next to the full name.
pub fn is_bare_tag(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b[1..].iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::json::{canonicalize, Raw};
    use serde_json::json;

    #[test]
    fn index_decodes_like_go() {
        // Field names fold, annotations keys do not; a later duplicate wins.
        let raw = Raw::parse(
            br#"{"schemaVersion":2,"MANIFESTS":[{"digest":"sha256:x","Annotations":{"io.containerd.image.name":"a","IO.containerd.image.name":"b"}}],
                 "manifests":[{"digest":"sha256:y","annot\u0061tions":{"io.containerd.image.name":"c"}}]}"#,
        )
        .unwrap();
        let c = canonicalize(raw, &INDEX).unwrap();
        assert_eq!(c.value, json!({"schemaVersion":2,"manifests":[{"digest":"sha256:y","annotations":{"io.containerd.image.name":"c"}}]}));
        assert!(c.unknown.is_empty());
        let c = canonicalize(Raw::parse(br#"{"manifests":[{"digest":"d","x-name":"e"}]}"#).unwrap(), &INDEX).unwrap();
        assert_eq!(c.unknown, vec!["manifests[0].x-name".to_owned()]);
    }

    #[test]
    fn names_as_containerd_picks_them() {
        let m = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
        assert_eq!(effective_name(m(&[(IMAGE_NAME, "a:1"), (REF_NAME, "1")])), Some("a:1"));
        assert_eq!(effective_name(m(&[(IMAGE_NAME, ""), (REF_NAME, "x/y:1")])), Some("x/y:1"));
        assert_eq!(effective_name(m(&[(REF_NAME, "1.0")])), Some("1.0"));
        assert_eq!(effective_name(m(&[])), None);
        assert!(is_bare_tag("1.0") && is_bare_tag("latest") && !is_bare_tag("a/b") && !is_bare_tag("a:b") && !is_bare_tag(""));
    }
}
