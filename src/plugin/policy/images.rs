//! `allowed_images` of a `conservative` policy: the images a client may pull or create containers
//! of, as doublestar globs with gitlab-runner's `allowed_images` syntax
//! ([`crate::docker::image_glob`]), so a runner's job can be held inside the job to the list its
//! `image:` was held to. Any spelling of the reference may match (`docker pull ruby` arrives as
//! `ruby` + `latest`). An image ID, or a name that does not parse, matches no name pattern: refused.

use serde_json::Value;

use crate::docker::image_create::{classify, ImageCreate};
use crate::docker::image_glob;
use crate::docker::Query;
use crate::plugin::Refusal;

/// `image` (as the client wrote it, from `field`) against `allowed`; empty allows any.
pub(super) fn check(allowed: &[String], image: &str, field: &str) -> Result<(), Refusal> {
    if allowed.is_empty() || image_glob::spellings(image).iter().any(|s| image_glob::matches_any(allowed, s)) {
        return Ok(());
    }
    Err(Refusal::forbidden(format!("the image {image:?} ({field}), which matches no pattern of allowed_images ({}),", allowed.join(", ")))
        .allowed_by("adding a pattern to", "allowed_images"))
}

/// A pull (`POST /images/create?fromImage=..&tag=..`): the reference dockerd would pull.
pub(super) fn check_pull(allowed: &[String], q: &Query) -> Result<(), Refusal> {
    if allowed.is_empty() {
        return Ok(());
    }
    let ImageCreate::Pull { from_image, tag } = classify(q) else { return Ok(()) };
    let reference = match tag {
        // A digest in `tag` (`fromImage=x&tag=sha256:...`) is joined with `@`, as dockerd does.
        t if t.starts_with("sha256:") => format!("{from_image}@{t}"),
        "" => from_image.to_owned(),
        t => format!("{from_image}:{t}"),
    };
    let all_tags = crate::docker::reference::Reference::parse(&reference).is_ok_and(|r| r.tag.is_none() && r.digest.is_none());
    if all_tags {
        // No tag: dockerd pulls every tag of the repository, so the bare name must be allowed as
        // such (`ruby`), not only its `latest`.
        let r = crate::docker::reference::Reference::parse(&reference).ok();
        let bare = [Some(reference.clone()), r.as_ref().map(|r| r.familiar()), r.as_ref().map(|r| r.to_string())];
        if bare.iter().flatten().any(|s| image_glob::matches_any(allowed, s)) {
            return Ok(());
        }
        return Err(Refusal::forbidden(format!(
            "pulling every tag of {reference:?} (fromImage without tag), whose name without a tag matches no pattern of allowed_images ({}),",
            allowed.join(", ")
        ))
        .allowed_by("adding a pattern to", "allowed_images"));
    }
    check(allowed, &reference, "fromImage")
}

/// A container create: `Image`, and the `Source` of every image mount.
pub(super) fn check_create(allowed: &[String], body: &Value) -> Result<(), Refusal> {
    if allowed.is_empty() {
        return Ok(());
    }
    check(allowed, body.get("Image").and_then(Value::as_str).unwrap_or(""), "Image")?;
    if let Some(Value::Array(mounts)) = body.pointer("/HostConfig/Mounts") {
        for (i, m) in mounts.iter().enumerate() {
            if m.get("Type").and_then(Value::as_str) == Some("image") {
                check(allowed, m.get("Source").and_then(Value::as_str).unwrap_or(""), &format!("HostConfig.Mounts[{i}].Source"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_allowed_image_passes() {
        let allowed = vec!["ruby:*".to_owned(), "ctproxy-test/**".to_owned()];
        assert!(check(&allowed, "ruby", "Image").is_ok());
        assert!(check(&allowed, "docker.io/library/ruby:3", "Image").is_ok());
        assert!(check(&allowed, "ctproxy-test/busybox", "Image").is_ok());
        let r = check(&allowed, "alpine:3", "Image").unwrap_err();
        assert_eq!(r.status, hyper::StatusCode::FORBIDDEN);
        assert!(r.what.contains("\"alpine:3\"") && r.what.contains("allowed_images (ruby:*, ctproxy-test/**)"));
        assert!(check(&allowed, "sha256:0123", "Image").is_err());
        assert!(check(&[], "anything", "Image").is_ok());
        assert!(check_create(
            &allowed,
            &serde_json::json!({"Image": "ruby:3", "HostConfig": {"Mounts": [{"Type": "image", "Source": "evil"}]}})
        )
        .is_err());
    }
}
