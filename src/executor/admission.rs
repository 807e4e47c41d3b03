//! The administrator's allow-lists (`[jobs.executor] allowed_images` and `allowed_services`),
//! checked in prepare before anything is pulled or created, as gitlab-runner's Docker executor
//! checks `[runners.docker]`'s: the name as the job wrote it against doublestar globs
//! ([`crate::docker::image_glob`]), an empty list allowing any, the runner's own default image
//! always allowed. A refused job fails with gitlab-runner's wording, as a build failure (the job's
//! doing, nothing to retry).

use crate::config::ExecutorConfig;
use crate::docker::image_glob;

use super::job_response::JobResponse;
use super::StageError;

/// What a refusal prints: gitlab-runner's lines (its `ERROR: ` prefix included), the allowed
/// patterns one per line, then where to look.
pub fn refusal(image: &str, option: &str, allowed: &[String]) -> String {
    let mut out = format!("\nERROR: The {image:?} image is not present on list of allowed {option}:\n");
    for a in allowed {
        out.push_str(&format!("- {a}\n"));
    }
    out.push_str(
        "\nPlease check runner's allowed_images configuration: https://docs.gitlab.com/runner/configuration/advanced-configuration/\n",
    );
    out.push_str(&format!("(ctproxy: [jobs.executor] allowed_{option} of ctproxy's configuration)\n"));
    out
}

/// `image` against `allowed` (none: any); `internal` (the runner's own images) always pass.
pub fn verify(image: &str, option: &str, allowed: &[String], internal: &[&str]) -> Result<(), String> {
    if allowed.is_empty() || image_glob::matches_any(allowed, image) || internal.contains(&image) {
        return Ok(());
    }
    Err(refusal(image, option, allowed))
}

/// The job's image (unless it names none and gets the runner's default) and every service.
pub fn check_job(job: &JobResponse, settings: &ExecutorConfig, default_image: Option<&str>) -> Result<(), StageError> {
    let internal: Vec<&str> = default_image.into_iter().collect();
    let mut refused = String::new();
    if !job.image.name.is_empty() {
        if let Err(e) = verify(&job.image.name, "images", &settings.allowed_images, &internal) {
            refused.push_str(&e);
        }
    }
    // gitlab-runner stops at the first refused service; all are named here, the job fails either way.
    for s in &job.services {
        if let Err(e) = verify(&s.name, "services", &settings.allowed_services, &[]) {
            refused.push_str(&e);
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    print!("{refused}");
    Err(StageError::build(String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_runner_wording_and_semantics() {
        let allowed = vec!["ruby:*".to_owned(), "registry.example.com/ci/**".to_owned()];
        assert!(verify("ruby:3.3", "images", &allowed, &[]).is_ok());
        assert!(verify("registry.example.com/ci/tools/lint:1", "images", &allowed, &[]).is_ok());
        assert!(verify("anything", "images", &[], &[]).is_ok());
        assert!(verify("alpine:3", "images", &allowed, &["alpine:3"]).is_ok());
        let e = verify("ruby", "images", &allowed, &[]).unwrap_err();
        assert!(
            e.contains("ERROR: The \"ruby\" image is not present on list of allowed images:\n- ruby:*\n- registry.example.com/ci/**\n"),
            "{e}"
        );
        assert!(e.contains("Please check runner's allowed_images configuration"), "{e}");
        let e = verify("redis:7", "services", &allowed, &[]).unwrap_err();
        assert!(e.contains("on list of allowed services:"), "{e}");
    }
}
