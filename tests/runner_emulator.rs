//! Self-tests of the gitlab-runner emulator (`support::runner`) against fake drivers: small POSIX sh
//! scripts written at test time. Each fake records, for every call, its environment, working
//! directory and (for run calls) the generated script, so the tests can check what the emulator
//! hands a driver as well as how it reacts to the driver's exits and signals.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::runner::{self, Driver, Image, Job, Outcome};
use tempfile::TempDir;

/// The fake driver: records the call, then runs the first matching `case` arm on the stage name
/// (`config`, `prepare`, `cleanup`, or the run stage). A test's own arms come before the defaults.
const FAKE: &str = r#"#!/bin/sh
out="$FAKE_OUT"
n=$(( $(cat "$out/n" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$out/n"
stage="$1"
[ "$1" = run ] && stage="$3"
env -0 > "$out/$n-$stage.env"
pwd > "$out/$n-$stage.cwd"
if [ "$1" = run ]; then
    cp "$2" "$out/$n-$stage.script"
    printf '%s\n' "$2" > "$out/$n-$stage.path"
fi
case "$stage" in
@ARMS@
config)
    printf '{"builds_dir":"%s","cache_dir":"/cache","driver":{"name":"fake","version":"0.1"},"job_env":{"FAKE_JOB":"job-%s"}}' "$FAKE_BUILDS" "$CUSTOM_ENV_CI_JOB_ID"
    echo "fake config says hi" >&2 ;;
prepare)
    echo "fake prepare for $CUSTOM_ENV_CI_JOB_IMAGE"
    cp "$JOB_RESPONSE_FILE" "$out/response.json"
    stat -c %a "$JOB_RESPONSE_FILE" > "$out/response.mode" ;;
cleanup)
    echo "fake cleanup for $FAKE_JOB"
    echo "fake cleanup stderr" >&2 ;;
*)
    sh "$2"; rc=$?
    if [ "$rc" -ne 0 ]; then echo "$rc" > "$BUILD_EXIT_CODE_FILE"; exit "$BUILD_FAILURE_EXIT_CODE"; fi ;;
esac
"#;

const WAIT: Duration = Duration::from_secs(10);

/// A fake driver in a temp dir, with its output dir and a builds dir for the jobs.
struct Fake {
    _dir: TempDir,
    out: PathBuf,
    builds: PathBuf,
    driver: Driver,
}

impl Fake {
    fn new(arms: &str) -> Fake {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        let builds = dir.path().join("builds");
        fs::create_dir_all(&out).expect("out dir");
        let script = dir.path().join("fake-driver");
        fs::write(&script, FAKE.replace("@ARMS@", arms)).expect("write the fake driver");
        // Run through /bin/sh rather than exec'ing a file just written (no ETXTBSY races).
        let mut driver = Driver::same_exec(Path::new("/bin/sh"), &[script.to_str().expect("utf-8 path")]);
        driver.env = vec![("FAKE_OUT".into(), out.display().to_string()), ("FAKE_BUILDS".into(), builds.display().to_string())];
        driver.graceful_kill_timeout = Duration::from_secs(20);
        driver.force_kill_timeout = Duration::from_secs(5);
        driver.retry_interval = Duration::from_millis(10);
        driver.stage_retry_backoff = Duration::from_millis(10);
        Fake { _dir: dir, out, builds, driver }
    }

    /// The recorded files of every call of `stage` with this suffix, in call order.
    fn recorded(&self, stage: &str, suffix: &str) -> Vec<PathBuf> {
        let tail = format!("-{stage}.{suffix}");
        let mut found: Vec<(u32, PathBuf)> = fs::read_dir(&self.out)
            .expect("read out dir")
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_suffix(&tail)?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// The environment of the `nth` call (0-based) of `stage`.
    fn env(&self, stage: &str, nth: usize) -> BTreeMap<String, String> {
        let files = self.recorded(stage, "env");
        let file = files.get(nth).unwrap_or_else(|| panic!("no call {nth} of {stage}; calls: {files:?}"));
        let raw = fs::read(file).expect("read env file");
        raw.split(|&c| c == 0)
            .filter(|e| !e.is_empty())
            .filter_map(|e| {
                let e = String::from_utf8_lossy(e);
                e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect()
    }

    fn text(&self, stage: &str, suffix: &str, nth: usize) -> String {
        let files = self.recorded(stage, suffix);
        let file = files.get(nth).unwrap_or_else(|| panic!("no {suffix} of call {nth} of {stage}"));
        fs::read_to_string(file).expect("read recorded file")
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
}

fn wait_file(path: &Path, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn stages(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn passing_job_runs_every_stage_in_order() {
    let f = Fake::new("");
    let mut job = Job::new(42, "alpine:3", &["echo hello > out.txt", "cat out.txt"]);
    job.get_sources = vec!["echo source > src.txt".into()];
    job.after_script = vec!["echo \"after with status $CI_JOB_STATUS\"".into()];
    let run = runner::run(&f.driver, &job);

    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert_eq!(
        run.stages(),
        stages(&[
            "config",
            "prepare",
            "prepare_script",
            "get_sources",
            "build_script",
            "after_script",
            "cleanup_file_variables",
            "cleanup"
        ])
    );
    for needle in [
        "fake config says hi",
        "Using Custom executor with driver fake 0.1...",
        "fake prepare for alpine:3",
        "Running on ",
        "$ echo hello > out.txt",
        "$ cat out.txt",
        "\nhello\n",
        "Starting with version 17.0 the 'build_script' stage will be replaced with 'step_script'",
        "after with status success",
        "Job succeeded",
    ] {
        assert!(run.log.contains(needle), "{needle:?} not in the job log:\n{}", run.log);
    }
    assert!(!run.log.contains("fake cleanup"), "cleanup output belongs to the runner log:\n{}", run.log);
    assert!(run.runner_log.contains("fake cleanup for job-42") && run.runner_log.contains("fake cleanup stderr"), "{}", run.runner_log);

    let project = f.builds.join("ci/example");
    assert_eq!(fs::read_to_string(project.join("out.txt")).expect("out.txt").trim(), "hello");
    assert_eq!(fs::read_to_string(project.join("src.txt")).expect("src.txt").trim(), "source");

    // One T, removed after cleanup; every process ran in it.
    assert_eq!(run.tmp_dirs.len(), 1);
    let t = &run.tmp_dirs[0];
    assert!(!t.exists(), "T was not removed");
    assert!(t.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("custom-executor")));
    assert_eq!(t.parent(), Some(std::env::temp_dir().as_path()));
    for stage in ["config", "prepare", "build_script", "cleanup"] {
        assert_eq!(f.text(stage, "cwd", 0).trim(), t.display().to_string(), "cwd of {stage}");
    }

    // The environment (§3.1, §3.2).
    let config = f.env("config", 0);
    let prepare = f.env("prepare", 0);
    assert_eq!(config["TMPDIR"], t.display().to_string());
    assert_eq!(config["BUILD_FAILURE_EXIT_CODE"], "1");
    assert_eq!(config["SYSTEM_FAILURE_EXIT_CODE"], "2");
    assert_eq!(config["BUILD_EXIT_CODE_FILE"], t.join("build_exit_code").display().to_string());
    assert_eq!(config["JOB_RESPONSE_FILE"], t.join("response.json").display().to_string());
    assert_eq!(config["CUSTOM_ENV_CI_BUILDS_DIR"], "", "the directories are empty during config (§3.3)");
    assert_eq!(config["CUSTOM_ENV_CI_PROJECT_DIR"], "");
    assert_eq!(config["CUSTOM_ENV_RUNNER_TEMP_PROJECT_DIR"], ".tmp");
    assert!(!config.contains_key("FAKE_JOB"), "job_env must not reach config");
    assert!(config.contains_key("PATH"), "the runner's own environment is passed on");
    assert_eq!(config["FAKE_OUT"], f.out.display().to_string());
    assert_eq!(prepare["FAKE_JOB"], "job-42");
    assert_eq!(prepare["CUSTOM_ENV_CI_BUILDS_DIR"], f.builds.display().to_string());
    assert_eq!(prepare["CUSTOM_ENV_CI_PROJECT_DIR"], project.display().to_string());
    assert_eq!(prepare["CUSTOM_ENV_RUNNER_TEMP_PROJECT_DIR"], format!("{}.tmp", project.display()));
    assert_eq!(prepare["CUSTOM_ENV_CI_JOB_ID"], "42");
    assert_eq!(prepare["CUSTOM_ENV_CI_RUNNER_ID"], "1");
    assert_eq!(prepare["CUSTOM_ENV_CI_PROJECT_PATH"], "ci/example");
    assert_eq!(prepare["CUSTOM_ENV_CI_PROJECT_PATH_SLUG"], "ci-example");
    assert_eq!(prepare["CUSTOM_ENV_CI_JOB_IMAGE"], "alpine:3");
    assert_eq!(prepare["CUSTOM_ENV_CI_JOB_STATUS"], "running");
    assert_eq!(prepare["CUSTOM_ENV_CI_JOB_TIMEOUT"], "600");
    assert_eq!(prepare["CUSTOM_ENV_CI_SERVER"], "yes");
    assert_eq!(prepare["CUSTOM_ENV_CI_SHARED_ENVIRONMENT"], "true");
    assert_eq!(prepare["CUSTOM_ENV_CI_CONCURRENT_PROJECT_ID"], "0");
    assert_eq!(prepare["CUSTOM_ENV_FF_USE_EXPONENTIAL_BACKOFF_STAGE_RETRY"], "true");
    assert!(prepare.contains_key("CUSTOM_ENV_CI_RUNNER_SHORT_TOKEN"));
    assert!(!prepare.contains_key("CUSTOM_ENV_CI_DISPOSABLE_ENVIRONMENT"));
    assert_eq!(prepare.get("CUSTOM_ENV_CI_JOB_SERVICES").map(String::as_str), Some(""), "present and empty without services");
    assert_eq!(f.env("after_script", 0)["CUSTOM_ENV_CI_JOB_STATUS"], "success");
    assert_eq!(f.env("cleanup", 0)["CUSTOM_ENV_CI_JOB_STATUS"], "success");
    assert_eq!(f.env("cleanup", 0)["FAKE_JOB"], "job-42");
    assert_eq!(run.job_env, BTreeMap::from([("FAKE_JOB".to_owned(), "job-42".to_owned())]));

    // JOB_RESPONSE_FILE (§3.6).
    assert_eq!(fs::read_to_string(f.out.join("response.mode")).expect("mode").trim(), "600");
    let raw = fs::read_to_string(f.out.join("response.json")).expect("response.json");
    assert!(raw.ends_with("}\n") && raw.matches('\n').count() == 1, "compact JSON plus one newline: {raw}");
    let payload: serde_json::Value = serde_json::from_str(&raw).expect("response.json is JSON");
    assert_eq!(payload["id"], 42);
    assert_eq!(payload["image"]["name"], "alpine:3");
    assert_eq!(payload["runner_info"]["timeout"], 600);
    assert_eq!(payload["git_info"]["repo_url"].as_str().map(|u| u.ends_with("/ci/example.git")), Some(true));
    assert_eq!(payload["steps"][0]["name"], "script");
    assert_eq!(payload["steps"][0]["script"][1], "cat out.txt");
    assert_eq!(payload["steps"][1]["name"], "after_script");
    let vars = payload["variables"].as_array().expect("variables");
    assert!(vars.iter().any(|v| v["key"] == "CI_JOB_ID" && v["value"] == "42" && v["masked"] == false));
    assert!(vars.iter().any(|v| v["key"] == "CI_JOB_TOKEN" && v["masked"] == true));
    assert!(!vars.iter().any(|v| v["key"] == "CI_PROJECT_DIR"), "runner-computed variables are not in the payload");

    // The run calls: argv = run_exec run_args... <script> <stage>; the script in T/scriptNNN/script.
    let path = PathBuf::from(f.text("build_script", "path", 0).trim());
    assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("script"));
    assert!(path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("script")));
    assert_eq!(path.parent().and_then(|p| p.parent()), Some(t.as_path()));
    let script = f.text("build_script", "script", 0);
    assert!(script.starts_with("#!/usr/bin/env sh\n\ntrap 'exit 1' TERM\n"), "{script}");
    assert!(script.contains("set +o noclobber\n( trap 'exit 1' TERM; eval '") && script.ends_with("' ) < /dev/null\nexit 0\n"), "{script}");
    // Inside the single-quoted eval argument, every quote of the body reads '\''.
    assert!(script.contains("export CI_JOB_ID='\\''42'\\''\n"), "{script}");
    assert!(script.contains(&format!("cd '\\''{}'\\''\n", project.display())), "{script}");
}

#[test]
fn the_file_modes_of_the_generated_script() {
    let f = Fake::new("build_script) stat -c %a \"$2\" \"$(dirname \"$2\")\" \"$TMPDIR\" > \"$FAKE_OUT/modes\" ;;");
    let run = runner::run(&f.driver, &Job::new(1, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert_eq!(fs::read_to_string(f.out.join("modes")).expect("modes"), "700\n700\n700\n", "script, its dir, T");
}

#[test]
fn cache_and_artifact_stages_run_when_the_job_has_them() {
    let f = Fake::new("");
    let mut job = Job::new(2, "alpine:3", &["true"]);
    job.with_cache = true;
    job.with_artifacts = true;
    job.extra_steps = vec![("release".into(), vec!["echo releasing".into()])];
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert_eq!(
        run.stages(),
        stages(&[
            "config",
            "prepare",
            "prepare_script",
            "get_sources",
            "restore_cache",
            "build_script",
            "step_release",
            "archive_cache",
            "upload_artifacts_on_success",
            "cleanup_file_variables",
            "cleanup",
        ])
    );
    assert!(run.log.contains("releasing") && run.log.contains("Saving cache for successful job"), "{}", run.log);
}

#[test]
fn build_failure_with_the_exit_code_file_reaches_the_outcome() {
    let f = Fake::new("");
    let mut job = Job::new(3, "alpine:3", &["echo before", "exit 3", "echo never"]);
    job.after_script = vec!["echo \"status=$CI_JOB_STATUS\"".into()];
    job.with_cache = true;
    job.with_artifacts = true;
    job.extra_steps = vec![("release".into(), vec!["echo releasing".into()])];
    let run = runner::run(&f.driver, &job);

    assert_eq!(run.outcome, Outcome::BuildFailure { exit_code: 3 }, "{}", run.log);
    assert_eq!(
        run.stages(),
        stages(&[
            "config",
            "prepare",
            "prepare_script",
            "get_sources",
            "restore_cache",
            "build_script",
            "after_script",
            "archive_cache_on_failure",
            "upload_artifacts_on_failure",
            "cleanup_file_variables",
            "cleanup",
        ])
    );
    assert!(run.log.contains("before") && !run.log.contains("\nnever") && !run.log.contains("releasing"), "{}", run.log);
    assert!(run.log.contains("status=failed") && run.log.contains("ERROR: Job failed: exit code 3"), "{}", run.log);
    assert_eq!(f.env("after_script", 0)["CUSTOM_ENV_CI_JOB_STATUS"], "failed");
    assert_eq!(f.env("cleanup", 0)["CUSTOM_ENV_CI_JOB_STATUS"], "failed");
}

#[test]
fn build_failure_without_the_exit_code_file_is_exit_code_1() {
    let f = Fake::new("build_script) sh \"$2\" || exit \"$BUILD_FAILURE_EXIT_CODE\" ;;");
    let run = runner::run(&f.driver, &Job::new(4, "alpine:3", &["exit 7"]));
    assert_eq!(run.outcome, Outcome::BuildFailure { exit_code: 1 }, "{}", run.log);
    assert!(run.stages().ends_with(&stages(&["build_script", "cleanup_file_variables", "cleanup"])));
}

#[test]
fn the_exit_code_file_is_parsed_like_go_atoi() {
    for (content, expected) in [
        ("42\n", Outcome::BuildFailure { exit_code: 42 }),
        ("42\r\nmore text\n", Outcome::BuildFailure { exit_code: 42 }),
        ("+5", Outcome::BuildFailure { exit_code: 5 }),
        (
            " 42",
            Outcome::SystemFailure(
                "unknown Custom executor executable exit code 2; executable execution terminated with: exit status 1".into(),
            ),
        ),
        (
            "",
            Outcome::SystemFailure(
                "unknown Custom executor executable exit code 2; executable execution terminated with: exit status 1".into(),
            ),
        ),
    ] {
        let f = Fake::new(&format!("build_script) printf '{content}' > \"$BUILD_EXIT_CODE_FILE\"; exit 1 ;;"));
        let run = runner::run(&f.driver, &Job::new(5, "alpine:3", &["true"]));
        assert_eq!(run.outcome, expected, "exit code file {content:?}:\n{}", run.log);
    }
}

#[test]
fn other_exit_codes_and_signals_are_system_failures() {
    let f = Fake::new("build_script) exit 2 ;;");
    let run = runner::run(&f.driver, &Job::new(6, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::SystemFailure("exit status 2".into()), "{}", run.log);
    assert!(run.log.contains("ERROR: Job failed (system failure): exit status 2"), "{}", run.log);

    let f = Fake::new("build_script) exit 9 ;;");
    let run = runner::run(&f.driver, &Job::new(6, "alpine:3", &["true"]));
    assert_eq!(
        run.outcome,
        Outcome::SystemFailure(
            "unknown Custom executor executable exit code 9; executable execution terminated with: exit status 9".into()
        )
    );

    let f = Fake::new("build_script) kill -s KILL $$ ;;");
    let run = runner::run(&f.driver, &Job::new(6, "alpine:3", &["true"]));
    assert_eq!(
        run.outcome,
        Outcome::SystemFailure(
            "unknown Custom executor executable exit code -1; executable execution terminated with: signal: killed".into()
        )
    );
    assert_eq!(run.calls_of("build_script")[0].signal, Some(9));
}

#[test]
fn invalid_config_output_is_retried_three_times_with_cleanups() {
    for output in ["printf 'not json'", "echo", "printf '{\"builds_dir\":\"/b\"} {}'", "printf '{\"builds_dir_is_shared\":\"true\"}'"] {
        let f = Fake::new(&format!("config) {output} ;;"));
        let run = runner::run(&f.driver, &Job::new(7, "alpine:3", &["true"]));
        assert!(
            matches!(&run.outcome, Outcome::SystemFailure(m) if m.starts_with("error while parsing JSON output: ")),
            "config output `{output}`: {:?}\n{}",
            run.outcome,
            run.log
        );
        assert_eq!(run.stages(), stages(&["config", "cleanup", "config", "cleanup", "config", "cleanup"]), "config output `{output}`");
        assert_eq!(run.calls.iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 1, 2, 2, 3, 3]);
        assert_eq!(run.log.matches("Will be retried in 10ms ...").count(), 3, "{}", run.log);
        assert_eq!(run.tmp_dirs.len(), 3);
        assert!(run.tmp_dirs.iter().all(|t| !t.exists()), "every T is removed after its cleanup");
        assert!(!f.env("cleanup", 0).contains_key("FAKE_JOB"), "no job_env after a failed config");
    }
}

#[test]
fn config_output_rules() {
    // Nothing on stdout: no overrides; the runner's own builds_dir and cache_dir are used.
    let mut f = Fake::new("config) ;;");
    f.driver.builds_dir = Some(f.builds.display().to_string());
    f.driver.cache_dir = Some("/cache".into());
    let run = runner::run(&f.driver, &Job::new(8, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert!(run.log.contains("Using Custom executor...\n"), "{}", run.log);

    // Keys match case-insensitively, unknown keys and nulls are ignored.
    let f = Fake::new(
        r#"config) printf '{"Builds_Dir":"%s","CACHE_DIR":"/c","hostname":null,"extra":[1],"driver":{"NAME":"x"}}' "$FAKE_BUILDS" ;;"#,
    );
    let run = runner::run(&f.driver, &Job::new(8, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert!(run.log.contains("Using Custom executor with driver x...\n"), "{}", run.log);

    // An empty builds_dir is a configuration error: no retry.
    let f = Fake::new(r#"config) printf '{"builds_dir":"","cache_dir":"/c"}' ;;"#);
    let run = runner::run(&f.driver, &Job::new(8, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::ConfigurationError("the builds_dir is not configured".into()), "{}", run.log);
    assert_eq!(run.stages(), stages(&["config", "cleanup"]));

    // A build-failure exit of config: no retry either.
    let f = Fake::new("config) exit 1 ;;");
    let run = runner::run(&f.driver, &Job::new(8, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::BuildFailure { exit_code: 1 });
    assert_eq!(run.stages(), stages(&["config", "cleanup"]));

    // The shell from config picks the script dialect.
    let f = Fake::new(r#"config) printf '{"builds_dir":"%s","cache_dir":"/c","shell":"bash"}' "$FAKE_BUILDS" ;;"#);
    let run = runner::run(&f.driver, &Job::new(8, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert!(f.text("build_script", "script", 0).starts_with("#!/usr/bin/env bash\n"));
}

#[test]
fn prepare_system_failure_is_retried_three_times_with_cleanup_after_each() {
    let f = Fake::new("prepare) echo 'no luck' >&2; exit 2 ;;");
    let run = runner::run(&f.driver, &Job::new(9, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::SystemFailure("exit status 2".into()), "{}", run.log);
    assert_eq!(run.stages(), stages(&["config", "prepare", "cleanup", "config", "prepare", "cleanup", "config", "prepare", "cleanup"]));
    assert_eq!(run.log.matches("ERROR: Preparation failed: exit status 2").count(), 3, "{}", run.log);
    assert_eq!(run.log.matches("no luck").count(), 3);
    // The cleanups of failed attempts see that attempt's job_env; a retry's config sees the
    // directories computed by the previous attempt (§3.3).
    assert_eq!(f.env("cleanup", 0)["FAKE_JOB"], "job-9");
    assert_eq!(f.env("config", 0)["CUSTOM_ENV_CI_PROJECT_DIR"], "");
    assert_eq!(f.env("config", 1)["CUSTOM_ENV_CI_PROJECT_DIR"], f.builds.join("ci/example").display().to_string());
    let ts: Vec<String> = (0..3).map(|i| f.env("prepare", i)["TMPDIR"].clone()).collect();
    assert!(ts[0] != ts[1] && ts[1] != ts[2], "a fresh T per attempt: {ts:?}");

    // Unknown codes are retried too.
    let f = Fake::new("prepare) exit 7 ;;");
    let run = runner::run(&f.driver, &Job::new(9, "alpine:3", &["true"]));
    assert!(matches!(&run.outcome, Outcome::SystemFailure(m) if m.contains("unknown Custom executor executable exit code 7")));
    assert_eq!(run.calls_of("prepare").len(), 3);

    // Success on the second attempt.
    let f = Fake::new("prepare) if [ ! -e \"$FAKE_OUT/once\" ]; then touch \"$FAKE_OUT/once\"; exit 2; fi ;;");
    let run = runner::run(&f.driver, &Job::new(9, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert_eq!(run.stages()[..6], stages(&["config", "prepare", "cleanup", "config", "prepare", "prepare_script"]));

    // A build failure in prepare is not retried.
    let f = Fake::new("prepare) exit 1 ;;");
    let run = runner::run(&f.driver, &Job::new(9, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::BuildFailure { exit_code: 1 });
    assert_eq!(run.stages(), stages(&["config", "prepare", "cleanup"]));
}

#[test]
fn get_sources_attempts_clear_the_worktree_before_the_second() {
    let f = Fake::new("get_sources) if [ ! -e \"$FAKE_OUT/once\" ]; then touch \"$FAKE_OUT/once\"; exit 1; fi; sh \"$2\" ;;");
    let mut job = Job::new(10, "alpine:3", &["true"]);
    job.get_sources_attempts = 2;
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert_eq!(
        run.stages(),
        stages(&[
            "config",
            "prepare",
            "prepare_script",
            "get_sources",
            "clear_worktree",
            "get_sources",
            "build_script",
            "cleanup_file_variables",
            "cleanup"
        ])
    );
    assert_eq!(run.calls_of("get_sources").iter().map(|c| c.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(f.env("get_sources", 0)["CUSTOM_ENV_GET_SOURCES_ATTEMPTS"], "2");

    // All attempts failing: no user script, no after_script; the failure stages still come.
    let f = Fake::new("get_sources) exit 1 ;;");
    let mut job = Job::new(10, "alpine:3", &["true"]);
    job.after_script = vec!["echo after".into()];
    job.with_artifacts = true;
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::BuildFailure { exit_code: 1 });
    assert_eq!(
        run.stages(),
        stages(&["config", "prepare", "prepare_script", "get_sources", "upload_artifacts_on_failure", "cleanup_file_variables", "cleanup"])
    );
    assert_eq!(f.env("cleanup", 0)["CUSTOM_ENV_CI_JOB_STATUS"], "running", "the user-script phase was never reached");
}

#[test]
fn prepare_script_failure_ends_the_job_at_once() {
    let f = Fake::new("prepare_script) exit 1 ;;");
    let mut job = Job::new(11, "alpine:3", &["true"]);
    job.with_cache = true;
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::BuildFailure { exit_code: 1 });
    assert_eq!(run.stages(), stages(&["config", "prepare", "prepare_script", "cleanup"]));
}

#[test]
fn cancel_during_build_script_terminates_its_group_then_runs_the_failure_stages() {
    let f = Fake::new("");
    let mut job = Job::new(12, "alpine:3", &["touch \"$FAKE_OUT/started\"", "sleep 30", "echo never"]);
    job.after_script = vec!["echo \"status=$CI_JOB_STATUS\"".into()];
    job.with_cache = true;
    job.with_artifacts = true;
    let h = runner::start(&f.driver, &job);
    assert!(h.wait_stage("build_script", WAIT), "build_script never started");
    assert!(wait_file(&f.marker("started"), WAIT), "the script never started");
    h.cancel();
    let run = h.join();

    assert_eq!(run.outcome, Outcome::Canceled, "{}", run.log);
    assert_eq!(
        run.stages(),
        stages(&[
            "config",
            "prepare",
            "prepare_script",
            "get_sources",
            "restore_cache",
            "build_script",
            "after_script",
            "archive_cache_on_failure",
            "upload_artifacts_on_failure",
            "cleanup_file_variables",
            "cleanup",
        ])
    );
    let build = run.calls_of("build_script")[0].clone();
    assert!(build.sent_sigterm && !build.sent_sigkill, "{build:?}");
    // The sleep got SIGTERM too (else it would hold the pipes until SIGKILL after 20 s).
    assert!(build.duration < Duration::from_secs(10), "{build:?}");
    assert_eq!(build.signal, Some(15), "the fake driver dies of SIGTERM: {build:?}");
    assert!(run.log.contains("status=canceled") && !run.log.contains("\nnever"), "{}", run.log);
    assert_eq!(f.env("after_script", 0)["CUSTOM_ENV_CI_JOB_STATUS"], "canceled");
    assert_eq!(f.env("cleanup", 0)["CUSTOM_ENV_CI_JOB_STATUS"], "canceled");
    assert!(run.log.contains("ERROR: Job failed: canceled"), "{}", run.log);
}

#[test]
fn cancel_before_the_user_script_aborts_the_job() {
    let f = Fake::new("get_sources) touch \"$FAKE_OUT/started\"; sleep 30 ;;");
    let mut job = Job::new(13, "alpine:3", &["true"]);
    job.after_script = vec!["echo after".into()];
    let h = runner::start(&f.driver, &job);
    assert!(wait_file(&f.marker("started"), WAIT));
    h.cancel();
    let run = h.join();
    assert_eq!(run.outcome, Outcome::Canceled, "{}", run.log);
    assert_eq!(run.stages(), stages(&["config", "prepare", "prepare_script", "get_sources", "cleanup"]));
    assert!(run.calls_of("get_sources")[0].sent_sigterm);
}

#[test]
fn a_driver_ignoring_sigterm_gets_sigkill_after_the_graceful_timeout() {
    let mut f = Fake::new("build_script) trap '' TERM; touch \"$FAKE_OUT/started\"; sh \"$2\" ;;");
    f.driver.graceful_kill_timeout = Duration::from_secs(1);
    let mut job = Job::new(14, "alpine:3", &["sleep 30"]);
    job.after_script = vec!["echo after".into()];
    let h = runner::start(&f.driver, &job);
    assert!(wait_file(&f.marker("started"), WAIT));
    let canceled = Instant::now();
    h.cancel();
    let run = h.join();
    assert_eq!(run.outcome, Outcome::Canceled, "{}", run.log);
    let build = run.calls_of("build_script")[0].clone();
    assert!(build.sent_sigterm && build.sent_sigkill, "{build:?}");
    assert_eq!(build.signal, Some(9), "{build:?}");
    assert!(canceled.elapsed() >= Duration::from_secs(1) && build.duration < Duration::from_secs(8), "{build:?}");
    assert!(run.stages().ends_with(&stages(&["build_script", "after_script", "cleanup_file_variables", "cleanup"])));
}

#[test]
fn a_dormant_process_is_given_up_after_the_force_timeout() {
    // A child that leaves the group keeps the pipe open after SIGKILL: the runner gives up.
    let mut f = Fake::new("build_script) setsid sleep 30 & echo $! > \"$FAKE_OUT/escaped\"; sleep 30 ;;");
    f.driver.graceful_kill_timeout = Duration::from_millis(200);
    f.driver.force_kill_timeout = Duration::from_millis(500);
    let mut job = Job::new(15, "alpine:3", &["true"]);
    job.timeout = Duration::from_secs(1);
    let run = runner::run(&f.driver, &job);
    let escaped = fs::read_to_string(f.marker("escaped")).unwrap_or_default();
    if let Ok(pid) = escaped.trim().parse::<u32>() {
        runner::kill_group(pid);
    }
    assert_eq!(run.outcome, Outcome::Timedout, "{}", run.log);
    let build = run.calls_of("build_script")[0].clone();
    assert!(build.sent_sigterm && build.sent_sigkill && build.left_running, "{build:?}");
    assert_eq!(run.stages().last().map(String::as_str), Some("cleanup"));
}

#[test]
fn job_timeout_stops_the_stage_and_skips_the_rest_but_not_cleanup() {
    let f = Fake::new("");
    let mut job = Job::new(16, "alpine:3", &["sleep 30"]);
    job.timeout = Duration::from_secs(2);
    job.after_script = vec!["echo after".into()];
    job.with_cache = true;
    let started = Instant::now();
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::Timedout, "{}", run.log);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(run.stages(), stages(&["config", "prepare", "prepare_script", "get_sources", "restore_cache", "build_script", "cleanup"]));
    assert!(run.calls_of("build_script")[0].sent_sigterm);
    assert_eq!(f.env("cleanup", 0)["CUSTOM_ENV_CI_JOB_STATUS"], "timedout");
    assert!(run.log.contains("ERROR: Job failed: execution took longer than 2 seconds"), "{}", run.log);
}

#[test]
fn job_timeout_covers_prepare_and_is_not_retried() {
    let f = Fake::new("prepare) sleep 30 ;;");
    let mut job = Job::new(17, "alpine:3", &["true"]);
    job.timeout = Duration::from_secs(1);
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::Timedout, "{}", run.log);
    assert_eq!(run.stages(), stages(&["config", "prepare", "cleanup"]));
    assert!(run.calls_of("prepare")[0].sent_sigterm);
}

#[test]
fn abandon_leaves_the_driver_running_and_skips_cleanup() {
    let f = Fake::new("");
    let job = Job::new(18, "alpine:3", &["touch \"$FAKE_OUT/started\"", "sleep 30"]);
    let h = runner::start(&f.driver, &job);
    assert!(wait_file(&f.marker("started"), WAIT));
    let abandoned = Instant::now();
    h.abandon();
    let run = h.join();
    assert!(abandoned.elapsed() < Duration::from_secs(2), "abandon must stop at once");
    assert_eq!(run.outcome, Outcome::Abandoned, "{}", run.log);
    assert_eq!(run.stages(), stages(&["config", "prepare", "prepare_script", "get_sources", "build_script"]));
    let pgids = run.left_running();
    assert_eq!(pgids.len(), 1);
    let alive = runner::group_alive(pgids[0]);
    runner::kill_group(pgids[0]);
    assert!(alive, "the driver's process group must survive the runner");
    assert!(run.tmp_dirs[0].exists(), "no cleanup: T stays");
    let _ = fs::remove_dir_all(&run.tmp_dirs[0]);
}

#[test]
fn ci_job_services_has_the_runners_exact_format() {
    let f = Fake::new("");
    let mut job = Job::new(19, "alpine:3", &["true"]);
    let mut pg = Image::new("my-postgres:9.4");
    pg.alias = Some("pg, postgres".into());
    pg.entrypoint = Some(vec!["path".into(), "to".into(), "entrypoint".into()]);
    pg.command = Some(vec!["path".into(), "to".into(), "cmd".into()]);
    pg.variables = vec![("POSTGRES_PASSWORD".into(), "secret".into()), ("POSTGRES_DB".into(), "mydb".into())];
    job.services = vec![Image::new("redis:latest"), pg];
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    let expected = r#"[{"name":"redis:latest","alias":"","entrypoint":null,"command":null},{"name":"my-postgres:9.4","alias":"pg","entrypoint":["path","to","entrypoint"],"command":["path","to","cmd"],"variables":{"POSTGRES_DB":"mydb","POSTGRES_PASSWORD":"secret"}}]"#;
    for stage in ["config", "prepare", "build_script", "cleanup"] {
        assert_eq!(f.env(stage, 0)["CUSTOM_ENV_CI_JOB_SERVICES"], expected, "in {stage}");
    }
    let payload: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(f.out.join("response.json")).expect("response")).expect("json");
    assert_eq!(payload["services"][1]["alias"], "pg, postgres");
    assert_eq!(payload["services"][1]["entrypoint"][2], "entrypoint");

    // Names and variables are expanded; Go's HTML escaping applies.
    let f = Fake::new("");
    let mut job = Job::new(20, "alpine:3", &["true"]);
    job.variables = vec![("SVC_TAG".into(), "7".into()), ("DB".into(), "db<&>".into())];
    let mut svc = Image::new("redis:$SVC_TAG");
    svc.variables = vec![("NAME".into(), "${DB}-x".into())];
    job.services = vec![svc];
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert_eq!(
        f.env("prepare", 0)["CUSTOM_ENV_CI_JOB_SERVICES"],
        r#"[{"name":"redis:7","alias":"","entrypoint":null,"command":null,"variables":{"NAME":"db\u003c\u0026\u003e-x"}}]"#
    );
}

#[test]
fn job_env_reaches_prepare_run_and_cleanup_but_cannot_override_custom_env() {
    let f = Fake::new(
        r#"config) printf '{"builds_dir":"%s","cache_dir":"/c","job_env":{"A":"1","TMPDIR":"/override","CUSTOM_ENV_CI_JOB_ID":"spoofed","PATH":"%s"}}' "$FAKE_BUILDS" "$PATH" ;;"#,
    );
    let run = runner::run(&f.driver, &Job::new(21, "alpine:3", &["true"]));
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);
    assert!(!f.env("config", 0).contains_key("A"));
    for stage in ["prepare", "prepare_script", "get_sources", "build_script", "cleanup_file_variables", "cleanup"] {
        let env = f.env(stage, 0);
        assert_eq!(env.get("A").map(String::as_str), Some("1"), "in {stage}");
        assert_eq!(env["TMPDIR"], "/override", "job_env comes after the protocol variables, in {stage}");
        assert_eq!(env["CUSTOM_ENV_CI_JOB_ID"], "21", "CUSTOM_ENV_* come after job_env, in {stage}");
    }
    assert_eq!(run.job_env.get("A").map(String::as_str), Some("1"));
}

#[test]
fn variables_are_expanded_escaped_masked_and_file_typed() {
    let f = Fake::new("");
    let mut job = Job::new(
        22,
        "alpine:3",
        &[
            r#"printf '%s\n' "greeting=$GREETING""#,
            r#"printf '%s\n' "raw=$RAW_ONE literal=$LITERAL""#,
            r#"echo 'single '"'"'quoted'"'"' text' "and \"double\" \\ \$HOME-not-expanded""#,
            "echo \"secret=$SECRET\"",
            "cat \"$CERT\"",
            "printf 'first\\n'\nprintf 'second\\n'",
        ],
    );
    job.variables = vec![
        ("GREETING".into(), "it's \"quoted\" job $CI_JOB_ID in ${CI_PROJECT_DIR} \\ `x`".into()),
        ("RAW_ONE".into(), "$CI_JOB_ID".into()),
        ("LITERAL".into(), "$$HOME".into()),
        ("SECRET".into(), "s3cr3t-value-xyz".into()),
        ("CERT".into(), "-----BEGIN-----\nline two\n".into()),
    ];
    job.raw_keys = vec!["RAW_ONE".into()];
    job.masked_keys = vec!["SECRET".into()];
    job.file_keys = vec!["CERT".into()];
    let run = runner::run(&f.driver, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", run.log);

    let project = f.builds.join("ci/example").display().to_string();
    let greeting = format!("it's \"quoted\" job 22 in {project} \\ `x`");
    for needle in [
        format!("greeting={greeting}\n"),
        "raw=$CI_JOB_ID literal=$HOME\n".into(),
        "\nsingle 'quoted' text and \"double\" \\ $HOME-not-expanded\n".into(),
        "$ echo 'single '\"'\"'quoted'\"'\"' text'".into(),
        "secret=[MASKED]\n".into(),
        "-----BEGIN-----\nline two\n".into(),
        "# collapsed multi-line command".into(),
        "first\nsecond\n".into(),
    ] {
        assert!(run.log.contains(&needle), "{needle:?} not in the job log:\n{}", run.log);
    }
    assert!(!run.log.contains("s3cr3t-value-xyz"), "masked values never reach the job log");
    let env = f.env("build_script", 0);
    assert_eq!(env["CUSTOM_ENV_GREETING"], greeting);
    assert_eq!(env["CUSTOM_ENV_RAW_ONE"], "$CI_JOB_ID");
    assert_eq!(env["CUSTOM_ENV_SECRET"], "s3cr3t-value-xyz", "masked variables reach the driver unmasked");
    assert_eq!(env["CUSTOM_ENV_CERT"], "-----BEGIN-----\nline two\n", "file variables reach the driver as contents");
    let payload: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(f.out.join("response.json")).expect("response")).expect("json");
    let vars = payload["variables"].as_array().expect("variables");
    assert!(vars.iter().any(|v| v["key"] == "CERT" && v["file"] == true));
    assert!(vars.iter().any(|v| v["key"] == "RAW_ONE" && v["raw"] == true && v["value"] == "$CI_JOB_ID"));
    assert!(vars.iter().any(|v| v["key"] == "SECRET" && v["masked"] == true));
    let mode = fs::metadata(f.builds.join("ci/example.tmp")).map(|m| m.permissions().mode());
    assert!(mode.is_ok(), "file variables are written under <CI_PROJECT_DIR>.tmp");
    assert!(!f.builds.join("ci/example.tmp/CERT").exists(), "cleanup_file_variables removes them");
}

#[test]
fn a_driver_that_cannot_start_is_a_system_failure_retried() {
    let mut f = Fake::new("");
    f.driver.prepare_exec = Some(f.out.join("does-not-exist"));
    let run = runner::run(&f.driver, &Job::new(23, "alpine:3", &["true"]));
    assert!(matches!(&run.outcome, Outcome::SystemFailure(m) if m.starts_with("failed to start command: ")), "{:?}", run.outcome);
    assert_eq!(run.calls_of("prepare").len(), 3);
    assert!(run.calls_of("prepare").iter().all(|c| c.pid.is_none()));
}
