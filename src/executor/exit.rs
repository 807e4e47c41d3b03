//! The one place where a stage's outcome becomes gitlab-runner's exit code (protocol: exit codes
//! of `gitlab-custom-executor.md` in the design docs): 0 done, `BUILD_FAILURE_EXIT_CODE` for the
//! job's own failures (its script, its image; the script's status goes to `BUILD_EXIT_CODE_FILE`),
//! `SYSTEM_FAILURE_EXIT_CODE` for the infrastructure's (gitlab-runner retries those).
//!
//! Each stage has an error type of its own ([`super::ConfigError`], [`super::StageError`] for
//! prepare and run, [`super::CleanupError`]); each says which of the two failures it is through
//! [`StageFailure`], and [`exit_code`] alone reports it and picks the code.

use std::fmt::Display;

/// The two failures gitlab-runner tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The job's: its script's exit status, when there is one.
    Build { exit_code: Option<i64> },
    /// The infrastructure's.
    System,
}

/// A stage's error: what it says in the job log (its `Display`, nothing when empty) and which
/// failure it is.
pub trait StageFailure: Display {
    fn failure(&self) -> Failure;
}

/// The protocol's exit codes, from the environment gitlab-runner gives every stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCodes {
    pub build_failure: u8,
    pub system_failure: u8,
}

impl ExitCodes {
    pub fn from_env() -> ExitCodes {
        let code = |k: &str, d: u8| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        ExitCodes { build_failure: code("BUILD_FAILURE_EXIT_CODE", 1), system_failure: code("SYSTEM_FAILURE_EXIT_CODE", 2) }
    }
}

/// The exit code of stage `stage` (`config`, `prepare`, `run`, `cleanup`) that ended with
/// `result`. A failure is reported on stderr (the job log), and a build failure's script status
/// is written to `BUILD_EXIT_CODE_FILE`.
pub fn exit_code<E: StageFailure>(stage: &str, result: &Result<(), E>, codes: &ExitCodes) -> u8 {
    let Err(e) = result else { return 0 };
    let message = e.to_string();
    if !message.is_empty() {
        eprintln!("ctproxy executor {stage}: {message}");
    }
    match e.failure() {
        Failure::Build { exit_code } => {
            if let (Some(code), Ok(file)) = (exit_code, std::env::var("BUILD_EXIT_CODE_FILE")) {
                // A bare integer, as gitlab-runner's strconv.Atoi wants it.
                if let Err(e) = std::fs::write(&file, format!("{code}\n")) {
                    eprintln!("ctproxy executor {stage}: cannot write {file}: {e}");
                }
            }
            codes.build_failure
        }
        Failure::System => codes.system_failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(Failure);

    impl Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("")
        }
    }

    impl StageFailure for E {
        fn failure(&self) -> Failure {
            self.0
        }
    }

    #[test]
    fn failures_map_to_the_runners_codes() {
        let codes = ExitCodes { build_failure: 11, system_failure: 22 };
        assert_eq!(exit_code::<E>("run", &Ok(()), &codes), 0);
        assert_eq!(exit_code("run", &Err(E(Failure::Build { exit_code: None })), &codes), 11);
        assert_eq!(exit_code("prepare", &Err(E(Failure::System)), &codes), 22);
    }
}
