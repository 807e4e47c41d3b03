//! `[jobs.executor]`: what the executor's prepare stage holds every job to, with the keys, values
//! and meaning of gitlab-runner's `[runners.docker]` keys of the same names, so an administrator
//! moving a runner from the Docker executor copies them over unchanged. `ctproxy serve` hands them
//! to prepare with the job's socket (the stages have no configuration file of their own).

use serde::{Deserialize, Serialize};

/// The pull policies gitlab-runner knows.
pub const PULL_POLICIES: [&str; 3] = ["always", "if-not-present", "never"];

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Images a job may name in `image:` (doublestar globs, matched against the name as written).
    /// Empty: any. The runner's default image is always allowed.
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// Images a job may name in `services:`. Empty: any.
    #[serde(default)]
    pub allowed_services: Vec<String>,
    /// The runner's pull policies, tried in order, for jobs that give none. Empty: `always`, as
    /// gitlab-runner's default.
    #[serde(default)]
    pub pull_policy: Vec<String>,
    /// The pull policies a job may ask for. Empty: the runner's `pull_policy`.
    #[serde(default)]
    pub allowed_pull_policies: Vec<String>,
}

impl ExecutorConfig {
    /// The first key whose value is wrong, and why (the glob patterns are judged by the build step,
    /// which knows their syntax).
    pub fn check(&self) -> Result<(), (String, String)> {
        for (key, list) in [("pull_policy", &self.pull_policy), ("allowed_pull_policies", &self.allowed_pull_policies)] {
            if let Some(p) = list.iter().find(|p| !PULL_POLICIES.contains(&p.as_str())) {
                return Err((key.to_owned(), format!("unsupported {key} config: {p:?} (use {})", PULL_POLICIES.join(", "))));
            }
        }
        Ok(())
    }
}
