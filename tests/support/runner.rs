//! An emulator of gitlab-runner's side of the custom-executor protocol, so that tests can run CI
//! jobs through a driver (the real `ctproxy executor ...`, or a fake) without a GitLab instance.
//!
//! It follows `gitlab-custom-executor.md` of the design docs (written from gitlab-runner 19.4's
//! source): the per-attempt temp dir `T` and `T/response.json` (§0, §3.6), how every driver process
//! is started and its output routed (§2), the environment and its order (§3.1–§3.5, with
//! `CUSTOM_ENV_CI_JOB_SERVICES` byte for byte as in §3.4), the config output parsed with Go's rules
//! (§4), the preparation retry loop with a cleanup after every failed attempt (§5), the run stages,
//! their order and the generated scripts (§6.1–§6.3), cleanup (§7), the classification of exits
//! (§8), and the contexts, kill sequence, cancel and timeout (§2.3, §9.2, §9.3). The algorithm is
//! §10's.
//!
//! What it leaves out: git (the `get_sources` stage runs the job's [`Job::get_sources`] commands
//! instead), `download_artifacts` (a job here never has dependencies; the cache and artifact stages
//! call `gitlab-runner` as the real scripts do, and the tests give a stand-in binary), PowerShell, `RUNNER_SCRIPT_TIMEOUT` / `RUNNER_AFTER_SCRIPT_TIMEOUT`
//! (`after_script` always gets the default 5 minutes), `prepare_timeout` / `get_sources_timeout`,
//! TLS variables, the 5-minute `WaitForBuildFinishTimeout` (the emulator always waits for the kill
//! sequence to end), and masking of token prefixes (masked variables are masked).
//!
//! Synchronous by design: one thread per job, one poll loop per driver process, two reader threads
//! per process. Every driver process leads its own process group, as under the real runner, and
//! signals go to the whole group.
//!
//! ```ignore
//! let driver = runner::Driver::same_exec(Path::new(env!("CARGO_BIN_EXE_ctproxy")), &["executor"]);
//! let job = runner::Job::new(1, "busybox:latest", &["echo hello"]);
//! let run = runner::run(&driver, &job);
//! assert_eq!(run.outcome, runner::Outcome::Success, "{}", run.log);
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

/// The runner version the emulator claims to be (`CI_RUNNER_VERSION`, the first job-log line).
pub const RUNNER_VERSION: &str = "19.4.0";
/// Preparation attempts (`PreparationRetries`, §5.2).
const PREPARATION_ATTEMPTS: u32 = 3;
/// `runner_info.timeout` ≤ 0 means this (`DefaultTimeout`, §9.2).
const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(7200);
/// The default `after_script` timeout (`AfterScriptTimeout`, §9.2).
const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// The cap of the exponential backoff between stage attempts (§6.2 notes).
const STAGE_RETRY_CAP: Duration = Duration::from_secs(300);
/// How often a waiting loop looks at the process and the contexts.
const POLL: Duration = Duration::from_millis(10);
/// The server the emulated GitLab lives at (only ever used as text).
const SERVER_HOST: &str = "gitlab.example.com";
const REGISTRY_HOST: &str = "registry.example.com";

// === Configuration: the runner's config.toml and the job payload ===

/// How the runner calls the driver: `[runners.custom]` of config.toml, plus the few `[[runners]]`
/// values the custom executor uses.
#[derive(Clone, Debug)]
pub struct Driver {
    pub config_exec: Option<PathBuf>,
    pub config_args: Vec<String>,
    pub prepare_exec: Option<PathBuf>,
    pub prepare_args: Vec<String>,
    pub run_exec: PathBuf,
    pub run_args: Vec<String>,
    pub cleanup_exec: Option<PathBuf>,
    pub cleanup_args: Vec<String>,
    /// SIGTERM → SIGKILL (the runner's default is 600 s; [`Driver::same_exec`] uses 10 s).
    pub graceful_kill_timeout: Duration,
    /// SIGKILL → the runner gives up on the process (§2.3).
    pub force_kill_timeout: Duration,
    /// `config_exec_timeout`, `prepare_exec_timeout`, `cleanup_exec_timeout` (default 1 h each).
    pub config_exec_timeout: Duration,
    pub prepare_exec_timeout: Duration,
    pub cleanup_exec_timeout: Duration,
    /// Extra entries of the runner process's own environment, added on top of the test process's.
    pub env: Vec<(String, String)>,
    /// `[[runners]] builds_dir` / `cache_dir`: used unless config_exec returns its own.
    pub builds_dir: Option<String>,
    pub cache_dir: Option<String>,
    /// `[[runners]] shell`: the dialect of the generated scripts, `bash` or `sh`.
    pub shell: String,
    /// The wait between preparation attempts (`PreparationRetryInterval`, 3 s in the runner).
    pub retry_interval: Duration,
    /// The first wait between `get_sources` attempts; it doubles per attempt, up to 5 min (the
    /// runner's exponential backoff starts at 5 s).
    pub stage_retry_backoff: Duration,
}

impl Driver {
    /// All four stages run `exe prefix_args... <stage>` (the usual one-binary driver), with
    /// `graceful_kill_timeout` and `force_kill_timeout` 10 s, shell `sh`, and no builds_dir or
    /// cache_dir of the runner's own (the driver's config stage must supply them).
    /// The driver of the first `[[runners]]` of a gitlab-runner `config.toml` (`runner-config/config.toml`):
    /// its `[runners.custom]` executables and arguments, kill and stage timeouts, `builds_dir`,
    /// `cache_dir` and `shell`, as gitlab-runner reads them. Executables named `ctproxy` (any
    /// directory) are `exe`; `env` is the runner process's own environment on top of the test's.
    pub fn from_config_toml(text: &str, exe: &Path, env: &[(&str, &str)]) -> Driver {
        let config: toml::Table = text.parse().expect("config.toml parses");
        let runner = config
            .get("runners")
            .and_then(toml::Value::as_array)
            .and_then(|r| r.first())
            .and_then(toml::Value::as_table)
            .expect("config.toml has a [[runners]]");
        assert_eq!(runner.get("executor").and_then(toml::Value::as_str), Some("custom"), "not a custom executor");
        let custom = runner.get("custom").and_then(toml::Value::as_table).expect("[runners.custom]");
        let exec = |key: &str| -> Option<PathBuf> {
            let path = PathBuf::from(custom.get(key)?.as_str().expect("an exec is a string"));
            Some(if path.file_name().is_some_and(|n| n == "ctproxy") { exe.to_path_buf() } else { path })
        };
        let args = |key: &str| -> Vec<String> {
            custom
                .get(key)
                .and_then(toml::Value::as_array)
                .map(|a| a.iter().map(|v| v.as_str().expect("an argument is a string").to_owned()).collect())
                .unwrap_or_default()
        };
        let secs = |key: &str, default: u64| {
            Duration::from_secs(custom.get(key).and_then(toml::Value::as_integer).map_or(default, |n| u64::try_from(n).unwrap_or(default)))
        };
        let text_of = |key: &str| runner.get(key).and_then(toml::Value::as_str).map(str::to_owned);
        Driver {
            config_exec: exec("config_exec"),
            config_args: args("config_args"),
            prepare_exec: exec("prepare_exec"),
            prepare_args: args("prepare_args"),
            run_exec: exec("run_exec").expect("run_exec is required"),
            run_args: args("run_args"),
            cleanup_exec: exec("cleanup_exec"),
            cleanup_args: args("cleanup_args"),
            graceful_kill_timeout: secs("graceful_kill_timeout", 600),
            force_kill_timeout: secs("force_kill_timeout", 600),
            config_exec_timeout: secs("config_exec_timeout", 3600),
            prepare_exec_timeout: secs("prepare_exec_timeout", 3600),
            cleanup_exec_timeout: secs("cleanup_exec_timeout", 3600),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            builds_dir: text_of("builds_dir"),
            cache_dir: text_of("cache_dir"),
            shell: text_of("shell").unwrap_or_else(|| "bash".into()),
            retry_interval: Duration::from_secs(3),
            stage_retry_backoff: Duration::from_secs(5),
        }
    }

    pub fn same_exec(exe: &Path, prefix_args: &[&str]) -> Driver {
        let args = |stage: &str| prefix_args.iter().map(|a| a.to_string()).chain([stage.to_owned()]).collect::<Vec<_>>();
        Driver {
            config_exec: Some(exe.to_path_buf()),
            config_args: args("config"),
            prepare_exec: Some(exe.to_path_buf()),
            prepare_args: args("prepare"),
            run_exec: exe.to_path_buf(),
            run_args: args("run"),
            cleanup_exec: Some(exe.to_path_buf()),
            cleanup_args: args("cleanup"),
            graceful_kill_timeout: Duration::from_secs(10),
            force_kill_timeout: Duration::from_secs(10),
            config_exec_timeout: Duration::from_secs(3600),
            prepare_exec_timeout: Duration::from_secs(3600),
            cleanup_exec_timeout: Duration::from_secs(3600),
            env: Vec::new(),
            builds_dir: None,
            cache_dir: None,
            shell: "sh".into(),
            retry_interval: Duration::from_secs(3),
            stage_retry_backoff: Duration::from_secs(5),
        }
    }
}

/// A job's `image:` or one of its `services:`.
#[derive(Clone, Debug, Default)]
pub struct Image {
    pub name: String,
    /// Comma- or space-separated aliases; `CI_JOB_SERVICES` carries only the first.
    pub alias: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub pull_policy: Vec<String>,
    /// `executor_opts.docker.user`.
    pub user: Option<String>,
    /// `executor_opts.docker.platform` (`docker: platform:` of the job's image or service).
    pub platform: Option<String>,
    pub variables: Vec<(String, String)>,
}

impl Image {
    pub fn new(name: &str) -> Image {
        Image { name: name.into(), ..Image::default() }
    }
}

/// A registry credential of the payload (`credentials[]`, type `registry`).
#[derive(Clone, Debug)]
pub struct Credential {
    pub url: String,
    pub username: String,
    pub password: String,
}

/// One CI job as GitLab would send it.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: u64,
    pub runner_id: u64,
    /// `group/project`: the repository path, hence `CI_PROJECT_DIR = <builds_dir>/<project_path>`.
    pub project_path: String,
    pub project_id: u64,
    /// The job token (`token`, `CI_JOB_TOKEN`, masked in the job log).
    pub token: String,
    pub image: Option<Image>,
    pub services: Vec<Image>,
    /// When true (the default), GitLab's predefined variables (`CI_JOB_ID`, `CI_RUNNER_ID`,
    /// `CI_PROJECT_PATH`, `CI_JOB_TOKEN`, ...) are sent first, computed from the fields above.
    pub predefined_variables: bool,
    /// The job's own variables (project, group, `.gitlab-ci.yml`), sent after the predefined ones
    /// and in this order; a later key wins.
    pub variables: Vec<(String, String)>,
    /// Keys of [`Job::variables`] that are masked, file-type, or raw (not expanded).
    pub masked_keys: Vec<String>,
    pub file_keys: Vec<String>,
    pub raw_keys: Vec<String>,
    /// The commands of the `get_sources` stage, run in `$CI_PROJECT_DIR` (which the stage creates
    /// first); the real runner runs git here.
    pub get_sources: Vec<String>,
    /// The `script` step (stage `build_script`), then further steps such as `("release", ...)`
    /// (stage `step_release`), then `after_script`.
    pub script: Vec<String>,
    pub extra_steps: Vec<(String, Vec<String>)>,
    pub after_script: Vec<String>,
    /// `runner_info.timeout`: the job timeout. Zero means the runner's default, 2 h. The payload and
    /// `CI_JOB_TIMEOUT` show whole seconds; the emulator's deadline keeps any fraction.
    pub timeout: Duration,
    pub credentials: Vec<Credential>,
    /// `GET_SOURCES_ATTEMPTS` (clamped to 1–10); sent as a job variable when not 1.
    pub get_sources_attempts: u32,
    /// Send a `cache:` / `artifacts:` entry (`when: always`), so that `restore_cache`,
    /// `archive_cache*` and `upload_artifacts_*` are called; their scripts call `gitlab-runner`
    /// (`cache-extractor`, `cache-archiver`, `artifacts-uploader`) as the real ones do.
    pub with_cache: bool,
    pub with_artifacts: bool,
}

impl Job {
    /// A job of runner 1 in project `ci/example` with a 600 s timeout and nothing else.
    pub fn new(id: u64, image: &str, script: &[&str]) -> Job {
        Job {
            id,
            runner_id: 1,
            project_path: "ci/example".into(),
            project_id: 1,
            token: format!("glcbt-64_emulator{id:08}tok"),
            image: Some(Image::new(image)),
            services: Vec::new(),
            predefined_variables: true,
            variables: Vec::new(),
            masked_keys: Vec::new(),
            file_keys: Vec::new(),
            raw_keys: Vec::new(),
            get_sources: Vec::new(),
            script: script.iter().map(|s| s.to_string()).collect(),
            extra_steps: Vec::new(),
            after_script: Vec::new(),
            timeout: Duration::from_secs(600),
            credentials: Vec::new(),
            get_sources_attempts: 1,
            with_cache: false,
            with_artifacts: false,
        }
    }
}

// === Results ===

/// How the job ended, as the runner would report it to GitLab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// `script_failure` with this exit code (a `BuildError`).
    BuildFailure {
        exit_code: i32,
    },
    /// `runner_system_failure`, with the runner's error text.
    SystemFailure(String),
    /// `runner_configuration_error` (reported to GitLab as `script_failure`): no builds_dir, an
    /// empty builds_dir or cache_dir from config, no run_exec.
    ConfigurationError(String),
    Canceled,
    /// `job_execution_timeout`.
    Timedout,
    /// The runner "died" ([`Handle::abandon`]): no further stage, no cleanup.
    Abandoned,
}

/// One driver process.
#[derive(Clone, Debug)]
pub struct Call {
    /// `config`, `prepare`, `cleanup`, or the stage name passed to run_exec (`build_script`, ...).
    pub stage: String,
    /// The preparation attempt for config, prepare and cleanup; the stage attempt for run stages.
    pub attempt: u32,
    pub exit: Option<i32>,
    pub signal: Option<i32>,
    pub sent_sigterm: bool,
    pub sent_sigkill: bool,
    pub duration: Duration,
    /// The process ID, which is also its process group ID (None if it could not start).
    pub pid: Option<u32>,
    /// The emulator stopped waiting while the process was alive (after a runner "death", or after
    /// SIGKILL plus `force_kill_timeout`): its process group may still be running.
    pub left_running: bool,
}

/// Everything a finished (or abandoned) job left behind.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub outcome: Outcome,
    /// The job log: the runner's own lines, config's stderr, prepare's and every run stage's
    /// stdout and stderr (masked variables masked).
    pub log: String,
    /// The runner process's log: cleanup's stdout and stderr (unmasked, as in the runner).
    pub runner_log: String,
    pub calls: Vec<Call>,
    /// The `job_env` of the last config call that returned one.
    pub job_env: BTreeMap<String, String>,
    /// Every `T` used, one per preparation attempt (removed after each cleanup, unless abandoned).
    pub tmp_dirs: Vec<PathBuf>,
}

impl JobRun {
    /// The stage of every call, in call order.
    pub fn stages(&self) -> Vec<String> {
        self.calls.iter().map(|c| c.stage.clone()).collect()
    }

    /// The calls of one stage.
    pub fn calls_of(&self, stage: &str) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.stage == stage).collect()
    }

    /// The process groups the emulator stopped waiting for (see [`Call::left_running`]).
    pub fn left_running(&self) -> Vec<u32> {
        self.calls.iter().filter(|c| c.left_running).filter_map(|c| c.pid).collect()
    }
}

/// A job running on its own thread.
pub struct Handle {
    shared: Arc<Shared>,
    thread: JoinHandle<JobRun>,
}

impl Handle {
    /// A cancel from the UI. During a user stage (`build_script`, `step_*`) only that stage's
    /// context ends (its process group gets SIGTERM; `after_script` and the `_on_failure` stages
    /// still follow); at any other time the whole job context is aborted (§9.3).
    pub fn cancel(&self) {
        let mut st = self.shared.lock();
        if st.in_user_script {
            st.script_canceled = true;
        } else {
            st.job_canceled = true;
        }
        self.shared.wake.notify_all();
    }

    /// The runner process dies: no further stage, no cleanup, `T` stays; the driver process that is
    /// running keeps running in its own process group (see [`JobRun::left_running`]).
    pub fn abandon(&self) {
        self.shared.lock().abandoned = true;
        self.shared.wake.notify_all();
    }

    /// Waits until a driver call of this stage (`config`, `prepare`, `cleanup` or a run stage
    /// name) has started; false after `timeout`.
    pub fn wait_stage(&self, stage: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.started.iter().any(|s| s == stage) {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            st = match self.shared.wake.wait_timeout(st, end - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) -> JobRun {
        match self.thread.join() {
            Ok(run) => run,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Starts the job on its own thread.
pub fn start(driver: &Driver, job: &Job) -> Handle {
    let timeout = if job.timeout.is_zero() { DEFAULT_JOB_TIMEOUT } else { job.timeout };
    let shared = Arc::new(Shared {
        state: Mutex::new(State { job_deadline: Some(Instant::now() + timeout), ..State::default() }),
        wake: Condvar::new(),
    });
    let emulator = Emulator::new(driver.clone(), job.clone(), shared.clone());
    let thread = thread::Builder::new()
        .name(format!("runner-job-{}", job.id))
        .spawn(move || emulator.run())
        .expect("cannot start the emulator's job thread");
    Handle { shared, thread }
}

/// Runs the job to the end.
pub fn run(driver: &Driver, job: &Job) -> JobRun {
    start(driver, job).join()
}

/// Sends `SIGKILL` to a process group (for tests that clean up after [`Handle::abandon`]).
pub fn kill_group(pgid: u32) {
    let _ = signal_group(pgid, libc::SIGKILL);
}

/// Whether any process of the group is still alive (zombies count until reaped).
pub fn group_alive(pgid: u32) -> bool {
    signal_group(pgid, 0).is_ok()
}

// === Shared state between the job thread and its Handle ===

#[derive(Default)]
struct State {
    job_deadline: Option<Instant>,
    /// The job context was cancelled (a cancel outside a user stage).
    job_canceled: bool,
    /// The script context was cancelled (a cancel during a user stage).
    script_canceled: bool,
    abandoned: bool,
    in_user_script: bool,
    started: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// Why a context is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Abandoned,
    JobCanceled,
    JobTimedOut,
    ScriptCanceled,
    /// The stage's own deadline (an `*_exec_timeout`, the after_script timeout).
    Deadline,
}

/// A context (§9.2): which cancellation sources end it, and its own deadline if any.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    deadline: Option<Instant>,
    /// A child of the job context (cancel, job timeout).
    job: bool,
    /// The script context (ends on a cancel during a user stage).
    script: bool,
}

impl Ctx {
    fn job() -> Ctx {
        Ctx { deadline: None, job: true, script: false }
    }
    fn job_within(limit: Duration) -> Ctx {
        Ctx { deadline: Some(Instant::now() + limit), job: true, script: false }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ended(&self, ctx: &Ctx) -> Option<Ended> {
        let st = self.lock();
        let now = Instant::now();
        if st.abandoned {
            Some(Ended::Abandoned)
        } else if ctx.job && st.job_canceled {
            Some(Ended::JobCanceled)
        } else if ctx.job && st.job_deadline.is_some_and(|d| now >= d) {
            Some(Ended::JobTimedOut)
        } else if ctx.script && st.script_canceled {
            Some(Ended::ScriptCanceled)
        } else if ctx.deadline.is_some_and(|d| now >= d) {
            Some(Ended::Deadline)
        } else {
            None
        }
    }

    fn abandoned(&self) -> bool {
        self.lock().abandoned
    }

    /// Sleeps up to `d`, waking early on a cancel or abandon.
    fn nap(&self, d: Duration) {
        let st = self.lock();
        let _ = self.wake.wait_timeout(st, d);
    }

    /// Sleeps `d` unless `ctx` ends first; returns why it ended.
    fn sleep(&self, d: Duration, ctx: &Ctx) -> Option<Ended> {
        let end = Instant::now() + d;
        loop {
            if let Some(e) = self.ended(ctx) {
                return Some(e);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            self.nap((end - now).min(Duration::from_millis(50)));
        }
    }

    fn set_in_user_script(&self, on: bool) {
        self.lock().in_user_script = on;
    }

    fn note_started(&self, stage: &str) {
        self.lock().started.push(stage.to_owned());
        self.wake.notify_all();
    }
}

// === Logs ===

/// A log that collects whole lines, with masked values replaced as the runner's trace does.
struct Log {
    text: Mutex<String>,
    masked: Vec<String>,
}

impl Log {
    fn new(masked: Vec<String>) -> Arc<Log> {
        Arc::new(Log { text: Mutex::new(String::new()), masked })
    }

    fn line(&self, line: &str) {
        let mut line = line.to_owned();
        for m in &self.masked {
            line = line.replace(m.as_str(), "[MASKED]");
        }
        let mut t = self.text.lock().unwrap_or_else(|p| p.into_inner());
        t.push_str(&line);
        t.push('\n');
    }

    fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Where one output stream of a driver process goes.
#[derive(Clone)]
enum Sink {
    Log(Arc<Log>),
    Buffer(Arc<Mutex<Vec<u8>>>),
}

impl Sink {
    fn take(&mut self, bytes: &[u8], pending: &mut Vec<u8>) {
        match self {
            Sink::Buffer(b) => b.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes),
            Sink::Log(log) => {
                pending.extend_from_slice(bytes);
                while let Some(i) = pending.iter().position(|&c| c == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    log.line(String::from_utf8_lossy(&line[..i]).trim_end_matches('\r'));
                }
            }
        }
    }

    fn finish(&mut self, pending: &mut Vec<u8>) {
        if let Sink::Log(log) = self {
            if !pending.is_empty() {
                log.line(&String::from_utf8_lossy(pending));
                pending.clear();
            }
        }
    }
}

/// Copies a pipe into a sink until EOF, or until the runner is abandoned (then the read end is
/// closed, as a dead runner's would be). Dropping `done` tells the waiter this pipe is finished.
fn spawn_reader<R: Read + AsRawFd + Send + 'static>(mut pipe: R, mut sink: Sink, shared: Arc<Shared>, done: mpsc::Sender<()>) {
    let spawned = thread::Builder::new().name("runner-pipe".into()).spawn(move || {
        let _done = done;
        let mut pending = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if shared.abandoned() {
                break;
            }
            let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, 50) };
            if ready == 0 {
                continue;
            }
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => sink.take(&buf[..n], &mut pending),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        sink.finish(&mut pending);
    });
    // If the thread cannot start, `done` was dropped with the closure and the pipe counts as closed.
    let _ = spawned;
}

// === Errors inside the runner ===

/// An error as the runner's code sees it (§8.1, §5.2).
#[derive(Clone, Debug)]
enum Failure {
    /// A `BuildError` with `script_failure`: fails the job, never retried in preparation.
    Build {
        exit_code: i32,
        message: String,
    },
    /// A `BuildError` with `runner_configuration_error`.
    Config(String),
    /// Any other error (system failure; preparation retries it).
    System(String),
    Canceled,
    TimedOut,
    Abandoned,
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Build { message, .. } | Failure::Config(message) | Failure::System(message) => message.clone(),
            Failure::Canceled => "canceled".into(),
            Failure::TimedOut => "execution took longer than the job timeout".into(),
            Failure::Abandoned => "abandoned".into(),
        }
    }

    fn is_build_error(&self) -> bool {
        matches!(self, Failure::Build { .. } | Failure::Config(_))
    }
}

impl From<Ended> for Failure {
    fn from(e: Ended) -> Failure {
        match e {
            Ended::Abandoned => Failure::Abandoned,
            Ended::JobCanceled | Ended::ScriptCanceled => Failure::Canceled,
            Ended::JobTimedOut => Failure::TimedOut,
            Ended::Deadline => Failure::System("context deadline exceeded".into()),
        }
    }
}

// === The emulator ===

/// One job variable, as in `GetAllVariables()`.
#[derive(Clone, Debug)]
struct Var {
    key: String,
    value: String,
    file: bool,
    masked: bool,
    raw: bool,
}

impl Var {
    fn new(key: &str, value: impl Into<String>) -> Var {
        Var { key: key.into(), value: value.into(), file: false, masked: false, raw: false }
    }
}

/// Where each stream of a process goes.
enum Output {
    /// config: stdout parsed, stderr to the job log.
    Config(Arc<Mutex<Vec<u8>>>),
    /// prepare and run: both to the job log.
    JobLog,
    /// cleanup: both to the runner's log.
    RunnerLog,
}

struct Emulator {
    driver: Driver,
    job: Job,
    shared: Arc<Shared>,
    log: Arc<Log>,
    runner_log: Arc<Log>,
    calls: Vec<Call>,
    tmp_dirs: Vec<PathBuf>,
    /// The payload's job variables (predefined ones first), before expansion.
    job_vars: Vec<Var>,
    // The state of the current preparation attempt.
    tmp: Option<PathBuf>,
    job_env: BTreeMap<String, String>,
    last_job_env: BTreeMap<String, String>,
    builds_dir: Option<String>,
    cache_dir: Option<String>,
    shared_builds_dir: bool,
    hostname: String,
    shell: String,
    /// Set by StartBuild; kept across attempts (§3.3).
    root_dir: String,
    project_dir: String,
    job_status: &'static str,
}

impl Emulator {
    fn new(driver: Driver, job: Job, shared: Arc<Shared>) -> Emulator {
        let job_vars = payload_variables(&job);
        let masked = job_vars.iter().filter(|v| v.masked && !v.value.is_empty()).map(|v| v.value.clone()).collect();
        Emulator {
            shell: driver.shell.clone(),
            builds_dir: driver.builds_dir.clone(),
            cache_dir: driver.cache_dir.clone(),
            driver,
            job,
            shared,
            log: Log::new(masked),
            runner_log: Log::new(Vec::new()),
            calls: Vec::new(),
            tmp_dirs: Vec::new(),
            job_vars,
            tmp: None,
            job_env: BTreeMap::new(),
            last_job_env: BTreeMap::new(),
            shared_builds_dir: false,
            hostname: String::new(),
            root_dir: String::new(),
            project_dir: String::new(),
            job_status: "running",
        }
    }

    /// RUN_JOB of §10.
    fn run(mut self) -> JobRun {
        self.log.line(&format!("Running with gitlab-runner {RUNNER_VERSION} (ctproxy test emulator)"));
        self.log.line("Preparing the \"custom\" executor");
        let result = match self.prepare_with_retries() {
            Err(f) => Err(f),
            Ok(()) => {
                let r = self.execute_script();
                let r = match (r, self.shared.ended(&Ctx::job())) {
                    (Err(Failure::Abandoned), _) | (_, Some(Ended::Abandoned)) => Err(Failure::Abandoned),
                    (_, Some(Ended::JobCanceled)) => Err(Failure::Canceled),
                    (_, Some(Ended::JobTimedOut)) => Err(Failure::TimedOut),
                    (r, _) => r,
                };
                if !matches!(r, Err(Failure::Abandoned)) && self.cleanup().is_err() {
                    Err(Failure::Abandoned)
                } else {
                    r
                }
            }
        };
        let outcome = match result {
            Ok(()) => Outcome::Success,
            Err(Failure::Build { exit_code, .. }) => Outcome::BuildFailure { exit_code },
            Err(Failure::Config(m)) => Outcome::ConfigurationError(m),
            Err(Failure::System(m)) => Outcome::SystemFailure(m),
            Err(Failure::Canceled) => Outcome::Canceled,
            Err(Failure::TimedOut) => Outcome::Timedout,
            Err(Failure::Abandoned) => Outcome::Abandoned,
        };
        match &outcome {
            Outcome::Success => self.log.line("Job succeeded"),
            Outcome::BuildFailure { exit_code } => self.log.line(&format!("ERROR: Job failed: exit code {exit_code}")),
            Outcome::SystemFailure(m) => self.log.line(&format!("ERROR: Job failed (system failure): {m}")),
            Outcome::ConfigurationError(m) => self.log.line(&format!("ERROR: Job failed: {m}")),
            Outcome::Canceled => self.log.line("ERROR: Job failed: canceled"),
            Outcome::Timedout => {
                self.log.line(&format!("ERROR: Job failed: execution took longer than {} seconds", self.job_timeout().as_secs()))
            }
            Outcome::Abandoned => self.log.line("(the emulated runner died here: no further stage, no cleanup)"),
        }
        JobRun {
            outcome,
            log: self.log.text(),
            runner_log: self.runner_log.text(),
            calls: self.calls,
            job_env: self.last_job_env,
            tmp_dirs: self.tmp_dirs,
        }
    }

    fn job_timeout(&self) -> Duration {
        if self.job.timeout.is_zero() {
            DEFAULT_JOB_TIMEOUT
        } else {
            self.job.timeout
        }
    }

    // --- Preparation (§5) ---

    /// The retry loop of §5.2.
    fn prepare_with_retries(&mut self) -> Result<(), Failure> {
        let mut last = Failure::System("no preparation attempt".into());
        for attempt in 1..=PREPARATION_ATTEMPTS {
            let err = match self.prepare(attempt) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if matches!(err, Failure::Abandoned) {
                return Err(err);
            }
            self.cleanup()?;
            if err.is_build_error() {
                return Err(err);
            }
            match self.shared.ended(&Ctx::job()) {
                Some(Ended::Abandoned) => return Err(Failure::Abandoned),
                Some(Ended::JobCanceled) => return Err(Failure::Canceled),
                Some(Ended::JobTimedOut) => return Err(Failure::TimedOut),
                _ => {}
            }
            self.log.line(&format!("ERROR: Preparation failed: {}", err.message()));
            self.log.line(&format!("Will be retried in {} ...", go_duration(self.driver.retry_interval)));
            match self.shared.sleep(self.driver.retry_interval, &Ctx::job()) {
                Some(Ended::Abandoned) => return Err(Failure::Abandoned),
                Some(Ended::JobCanceled) => return Err(Failure::Canceled),
                Some(Ended::JobTimedOut) => return Err(Failure::TimedOut),
                _ => {}
            }
            last = err;
        }
        Err(last)
    }

    /// One preparation attempt (§5.1).
    fn prepare(&mut self, attempt: u32) -> Result<(), Failure> {
        if self.driver.run_exec.as_os_str().is_empty() {
            return Err(Failure::Config("custom executor is missing RunExec".into()));
        }
        let tmp = tempfile::Builder::new()
            .prefix("custom-executor")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| Failure::System(format!("creating the temp dir: {e}")))?
            .keep();
        self.tmp_dirs.push(tmp.clone());
        self.tmp = Some(tmp.clone());
        // A new executor per attempt: the runner's own settings again, no job_env yet. The
        // directories StartBuild computed stay (§3.3).
        self.job_env.clear();
        self.builds_dir = self.driver.builds_dir.clone();
        self.cache_dir = self.driver.cache_dir.clone();
        self.shell = self.driver.shell.clone();
        self.hostname.clear();
        self.shared_builds_dir = false;
        self.write_response(&tmp).map_err(|e| Failure::System(format!("creating the job response file: {e}")))?;

        let mut driver_name = None;
        if let Some(exe) = self.driver.config_exec.clone() {
            let stdout = Arc::new(Mutex::new(Vec::new()));
            let ctx = Ctx::job_within(self.driver.config_exec_timeout);
            let args = self.driver.config_args.clone();
            self.exec("config", attempt, &exe, &args, ctx, Output::Config(stdout.clone()))?;
            let out = stdout.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(cfg) = parse_config(&out).map_err(Failure::System)? {
                driver_name = self.apply_config(cfg);
            }
        }
        self.log.line(&match driver_name {
            None => "Using Custom executor...".to_owned(),
            Some((n, None)) => format!("Using Custom executor with driver {n}..."),
            Some((n, Some(v))) => format!("Using Custom executor with driver {n} {v}..."),
        });
        self.start_build()?;
        if let Some(exe) = self.driver.prepare_exec.clone() {
            let ctx = Ctx::job_within(self.driver.prepare_exec_timeout);
            let args = self.driver.prepare_args.clone();
            self.exec("prepare", attempt, &exe, &args, ctx, Output::JobLog)?;
        }
        Ok(())
    }

    /// Applies a config output (§4); returns the driver's name and version for the log line.
    fn apply_config(&mut self, cfg: ConfigOutput) -> Option<(String, Option<String>)> {
        if let Some(d) = cfg.builds_dir {
            self.builds_dir = Some(d);
        }
        if let Some(d) = cfg.cache_dir {
            self.cache_dir = Some(d);
        }
        if let Some(s) = cfg.builds_dir_is_shared {
            self.shared_builds_dir = s;
        }
        if let Some(h) = cfg.hostname {
            self.hostname = h;
        }
        if let Some(s) = cfg.shell {
            self.shell = s;
        }
        if let Some(env) = cfg.job_env {
            self.job_env = env.clone();
            self.last_job_env = env;
        }
        cfg.driver_name.filter(|n| !n.is_empty()).map(|n| (n, cfg.driver_version.filter(|v| !v.is_empty())))
    }

    /// `StartBuild` and the shell selection (§5.1 step 6, §3.5).
    fn start_build(&mut self) -> Result<(), Failure> {
        let builds = self.builds_dir.clone().unwrap_or_default();
        if builds.is_empty() {
            return Err(Failure::Config("the builds_dir is not configured".into()));
        }
        if self.cache_dir.as_deref().unwrap_or("").is_empty() {
            return Err(Failure::Config("the cache_dir is not configured".into()));
        }
        let slug = self.job.project_path.trim_matches('/').trim_end_matches(".git").to_owned();
        let slug = if slug.is_empty() { format!("project-{}", self.job.project_id) } else { slug };
        let mut dir = if self.shared_builds_dir {
            format!("{}/{}/0/{slug}", builds.trim_end_matches('/'), short_token(&self.job))
        } else {
            format!("{}/{slug}", builds.trim_end_matches('/'))
        };
        if self.job_var("GIT_STRATEGY").as_deref() == Some("empty") {
            dir.push_str("-empty");
        }
        self.root_dir = builds;
        self.project_dir = dir;
        if self.shell != "sh" && self.shell != "bash" {
            return Err(Failure::System(format!("shell {} not found", self.shell)));
        }
        Ok(())
    }

    /// CLEANUP of §10 (§7): cleanup_exec under a context of its own, then `T` is removed.
    /// Err only if the runner was abandoned meanwhile.
    fn cleanup(&mut self) -> Result<(), Failure> {
        if self.tmp.is_none() {
            // The configuration check failed before `T` existed: the runner returns at once.
            return Ok(());
        }
        let attempt = self.tmp_dirs.len() as u32;
        if let Some(exe) = self.driver.cleanup_exec.clone() {
            let ctx = Ctx { deadline: Some(Instant::now() + self.driver.cleanup_exec_timeout), job: false, script: false };
            let args = self.driver.cleanup_args.clone();
            match self.exec("cleanup", attempt, &exe, &args, ctx, Output::RunnerLog) {
                Err(Failure::Abandoned) => return Err(Failure::Abandoned),
                Err(e) => self.log.line(&format!("WARNING: Cleanup script failed: {}", e.message())),
                Ok(()) => {}
            }
        }
        if let Some(t) = self.tmp.take() {
            let _ = fs::remove_dir_all(t);
        }
        Ok(())
    }

    // --- The run stages (§6) ---

    /// EXECUTE_SCRIPT: the stages of §6.2 in order.
    fn execute_script(&mut self) -> Result<(), Failure> {
        self.run_stage("prepare_script", 1, Ctx::job())?;

        let mut err = self.get_sources();
        if err.is_ok() && self.job.with_cache {
            err = self.run_stage("restore_cache", 1, Ctx::job());
        }
        // download_artifacts: skipped, a job here has no dependencies with artifacts.
        if matches!(err, Err(Failure::Abandoned)) {
            return err;
        }
        let job_err = if err.is_ok() { self.execute_user_scripts() } else { err };
        if matches!(job_err, Err(Failure::Abandoned)) {
            return job_err;
        }

        let ok = job_err.is_ok();
        let mut archive_err = Ok(());
        if self.job.with_cache {
            archive_err = self.run_stage(if ok { "archive_cache" } else { "archive_cache_on_failure" }, 1, Ctx::job());
        }
        let mut upload_err = Ok(());
        if self.job.with_artifacts {
            upload_err = self.run_stage(if ok { "upload_artifacts_on_success" } else { "upload_artifacts_on_failure" }, 1, Ctx::job());
        }
        match self.run_stage("cleanup_file_variables", 1, Ctx::job()) {
            Err(Failure::Abandoned) => return Err(Failure::Abandoned),
            // Not run at all because the job context is done: nothing to warn about.
            Err(Failure::Canceled | Failure::TimedOut) | Ok(()) => {}
            Err(e) => self.log.line(&format!("WARNING: Error while executing file based variables removal script: {}", e.message())),
        }
        for e in [&archive_err, &upload_err] {
            if matches!(e, Err(Failure::Abandoned)) {
                return Err(Failure::Abandoned);
            }
        }
        // pickPriorityError: the job's error, then the archive's, then the upload's.
        job_err.and(archive_err).and(upload_err)
    }

    /// `get_sources` with `GET_SOURCES_ATTEMPTS`, and `clear_worktree` before the 2nd attempt.
    fn get_sources(&mut self) -> Result<(), Failure> {
        // GET_SOURCES_ATTEMPTS as the job sends it (payload_variables adds it from
        // `Job::get_sources_attempts`), clamped like the runner does.
        let attempts = self.job_var("GET_SOURCES_ATTEMPTS").and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(1).clamp(1, 10);
        let mut result = Ok(());
        for attempt in 1..=attempts {
            if attempt > 1 {
                let factor = 1u32 << (attempt - 2).min(16);
                let wait = self.driver.stage_retry_backoff.saturating_mul(factor).min(STAGE_RETRY_CAP);
                self.log.line(&format!("Retrying in {} ...", go_duration(wait)));
                if let Some(e) = self.shared.sleep(wait, &Ctx::job()) {
                    return Err(e.into());
                }
            }
            if attempt == 2 {
                match self.run_stage("clear_worktree", 1, Ctx::job()) {
                    Err(Failure::Abandoned) => return Err(Failure::Abandoned),
                    Err(e) => {
                        result = Err(e);
                        continue;
                    }
                    Ok(()) => {}
                }
            }
            result = self.run_stage("get_sources", attempt, Ctx::job());
            match &result {
                Ok(()) => return result,
                Err(Failure::Abandoned | Failure::Canceled | Failure::TimedOut) => return result,
                Err(_) => {}
            }
        }
        result
    }

    /// The user steps under the script context, then after_script (§6.2 rows 5–6, §9.3).
    fn execute_user_scripts(&mut self) -> Result<(), Failure> {
        let mut steps: Vec<String> = Vec::new();
        if !self.job.script.is_empty() {
            steps.push("step_script".into());
        }
        steps.extend(self.job.extra_steps.iter().filter(|(_, s)| !s.is_empty()).map(|(n, _)| format!("step_{}", n.to_lowercase())));

        let script_ctx = Ctx { deadline: None, job: true, script: true };
        let mut err = Ok(());
        self.shared.set_in_user_script(true);
        for stage in &steps {
            err = self.run_stage(stage, 1, script_ctx);
            if err.is_err() {
                break;
            }
        }
        self.shared.set_in_user_script(false);
        if matches!(err, Err(Failure::Abandoned)) {
            return err;
        }
        err = match self.shared.ended(&script_ctx) {
            Some(e @ (Ended::ScriptCanceled | Ended::JobCanceled | Ended::JobTimedOut)) => Err(e.into()),
            _ => err,
        };
        self.job_status = match &err {
            Ok(()) => "success",
            Err(Failure::Canceled) => "canceled",
            Err(Failure::TimedOut) => "timedout",
            Err(_) => "failed",
        };
        if !self.job.after_script.is_empty() {
            // AFTER_SCRIPT_IGNORE_ERRORS (default true): its failure does not change the job.
            if let Err(Failure::Abandoned) = self.run_stage("after_script", 1, Ctx::job_within(AFTER_SCRIPT_TIMEOUT)) {
                return Err(Failure::Abandoned);
            }
        }
        err
    }

    /// RUN_STAGE of §10: one run_exec call with a freshly written script.
    fn run_stage(&mut self, stage: &str, attempt: u32, ctx: Ctx) -> Result<(), Failure> {
        if let Some(e) = self.shared.ended(&ctx) {
            return Err(e.into());
        }
        self.log.line(&stage_description(stage));
        let arg = if stage == "step_script" {
            self.log.line("WARNING: Starting with version 17.0 the 'build_script' stage will be replaced with 'step_script': https://gitlab.com/groups/gitlab-org/-/epics/6112");
            "build_script"
        } else {
            stage
        };
        let tmp = self.tmp.clone().ok_or_else(|| Failure::System("no temp dir".into()))?;
        let script = self.generate_script(stage);
        let path = write_script(&tmp, &script).map_err(|e| Failure::System(format!("writing the script: {e}")))?;
        let mut args = self.driver.run_args.clone();
        args.push(path.display().to_string());
        args.push(arg.to_owned());
        let exe = self.driver.run_exec.clone();
        self.exec(arg, attempt, &exe, &args, ctx, Output::JobLog)
    }

    /// The stage's script in the runner's bash/sh format (§6.3).
    fn generate_script(&self, stage: &str) -> String {
        let vars = self.all_variables();
        let mut body = String::new();
        let mut line = |s: &str| {
            body.push_str(s);
            body.push('\n');
        };
        if stage == "prepare_script" {
            let host = if self.hostname.is_empty() { String::new() } else { format!(" via {}", self.hostname) };
            let host = host.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$").replace('`', "\\`");
            line(&format!("echo \"Running on $(hostname){host}...\""));
            return finish_script(&self.shell, &body, false);
        }
        let tmp_dir = format!("{}.tmp", self.project_dir);
        for v in &vars {
            let key = sh_word(&v.key);
            if v.file {
                let path = format!("{tmp_dir}/{}", v.key);
                line(&format!("mkdir -p {}", sh_quote(&tmp_dir)));
                line(&format!("printf '%s' {} > {}", sh_quote(&v.value), sh_quote(&path)));
                line(&format!("export {key}={}", sh_quote(&path)));
            } else {
                line(&format!("export {key}={}", sh_quote(&v.value)));
            }
        }
        let cd = format!("cd {}", sh_quote(&self.project_dir));
        let echo = |s: &str| format!("printf '%s\\n' {}", sh_quote(s));
        let commands = |cmds: &[String], line: &mut dyn FnMut(&str)| {
            for c in cmds {
                let shown = match c.split_once('\n') {
                    Some((first, _)) => format!("$ {first} # collapsed multi-line command"),
                    None => format!("$ {c}"),
                };
                line(&echo(&shown));
                line(c);
            }
        };
        match stage {
            "get_sources" => {
                line(&echo(&format!("Fetching changes (emulated) into {}...", self.project_dir)));
                line(&format!("mkdir -p {}", sh_quote(&self.project_dir)));
                line(&cd);
                commands(&self.job.get_sources, &mut line);
            }
            "clear_worktree" => {
                line(&format!("if [ -d {0} ]; then cd {0} && rm -rf ./* ./.[!.]* ./..?*; fi", sh_quote(&self.project_dir)));
            }
            "step_script" => {
                line(&cd);
                commands(&self.job.script, &mut line);
            }
            "after_script" => {
                line(&cd);
                line(&echo("Running after script..."));
                commands(&self.job.after_script, &mut line);
            }
            "cleanup_file_variables" => {
                for v in vars.iter().filter(|v| v.file) {
                    line(&format!("rm -f {}", sh_quote(&format!("{tmp_dir}/{}", v.key))));
                }
            }
            s if s.starts_with("step_") => {
                line(&cd);
                let name = &s["step_".len()..];
                let cmds = self.job.extra_steps.iter().find(|(n, _)| n.to_lowercase() == name).map(|(_, c)| c.clone()).unwrap_or_default();
                commands(&cmds, &mut line);
            }
            "restore_cache" | "download_artifacts" => {
                line(&cd);
                self.runner_command(stage, &mut line);
            }
            s if s.starts_with("archive_cache") || s.starts_with("upload_artifacts") => {
                line(&cd);
                self.runner_command(stage, &mut line);
            }
            other => {
                line(&cd);
                line(&echo(&format!("{} (emulated)", stage_description(other))));
            }
        }
        let trace = vars.iter().rev().find(|v| v.key == "CI_DEBUG_TRACE").is_some_and(|v| go_bool(&v.value) == Some(true));
        finish_script(&self.shell, &body, trace)
    }

    /// The cache and artifact stages as gitlab-runner's shells/abstract.go writes them for the
    /// custom executor (runner command `gitlab-runner`, looked up in `PATH`): guarded by
    /// `gitlab-runner --version`, else "Missing gitlab-runner. <action> is disabled."; the local
    /// cache archive is `<cache_dir>/<server host>/<project path>/<key>/cache.zip`.
    fn runner_command(&self, stage: &str, line: &mut dyn FnMut(&str)) {
        let echo = |s: &str| format!("printf '%s\\n' {}", sh_quote(s));
        let cache_dir = self.cache_dir.clone().unwrap_or_default();
        let file = format!("{cache_dir}/{SERVER_HOST}/{}/default/cache.zip", self.job.project_path);
        let (action, commands): (&str, Vec<String>) = match stage {
            "restore_cache" => (
                "Extracting cache",
                vec![
                    echo("Checking cache for default..."),
                    format!("if gitlab-runner cache-extractor --file {} --timeout 10; then", sh_quote(&file)),
                    echo("Successfully extracted cache"),
                    "else".into(),
                    echo("WARNING: Failed to extract cache"),
                    "fi".into(),
                ],
            ),
            "download_artifacts" => (
                "Downloading artifacts",
                vec![format!("gitlab-runner artifacts-downloader --url https://{SERVER_HOST}/ --token {} --id 0", sh_quote(&self.job.token))],
            ),
            s if s.starts_with("archive_cache") => (
                "Creating cache",
                vec![
                    echo("Creating cache default..."),
                    format!("if gitlab-runner cache-archiver --file {} --timeout 10 --path cache/; then", sh_quote(&file)),
                    echo("Created cache"),
                    "else".into(),
                    echo("WARNING: Failed to create cache"),
                    "fi".into(),
                ],
            ),
            _ => (
                "Uploading artifacts",
                vec![
                    echo("Uploading artifacts..."),
                    format!(
                        "gitlab-runner artifacts-uploader --url https://{SERVER_HOST}/ --token {} --id {} --path artifacts/ --artifact-format zip --artifact-type archive",
                        sh_quote(&self.job.token),
                        self.job.id
                    ),
                ],
            ),
        };
        line("if gitlab-runner --version >/dev/null 2>/dev/null; then");
        for c in &commands {
            line(c);
        }
        line("else");
        line(&echo(&format!("WARNING: Missing gitlab-runner. {action} is disabled.")));
        line("fi");
    }

    // --- Variables and environment (§3) ---

    /// The value of a payload job variable (the last one wins).
    fn job_var(&self, key: &str) -> Option<String> {
        self.job_vars.iter().rev().find(|v| v.key == key).map(|v| v.value.clone())
    }

    /// `GetAllVariables()` in its order (§3.2), expanded as `Variables.Expand()` does.
    fn all_variables(&self) -> Vec<Var> {
        let mut vars = Vec::new();
        for (flag, default) in [("FF_NETWORK_PER_BUILD", false), ("FF_USE_EXPONENTIAL_BACKOFF_STAGE_RETRY", true)] {
            let value = self.job_var(flag).and_then(|v| go_bool(&v)).unwrap_or(default);
            vars.push(Var::new(flag, value.to_string()));
        }
        if let Some(image) = &self.job.image {
            vars.push(Var::new("CI_JOB_IMAGE", self.expand_with_job_vars(&image.name)));
        }
        vars.push(Var::new("CI_RUNNER_SHORT_TOKEN", short_token(&self.job)));
        vars.push(Var::new("CI_BUILDS_DIR", self.root_dir.clone()));
        vars.push(Var::new("CI_PROJECT_DIR", self.project_dir.clone()));
        vars.push(Var::new("CI_CONCURRENT_ID", "0"));
        vars.push(Var::new("CI_CONCURRENT_PROJECT_ID", "0"));
        vars.push(Var::new("CI_SERVER", "yes"));
        vars.push(Var::new("CI_JOB_STATUS", self.job_status));
        vars.push(Var::new("CI_JOB_TIMEOUT", self.job_timeout().as_secs().to_string()));
        vars.extend(self.job_vars.iter().filter(|v| !v.key.starts_with("FF_")).cloned());
        vars.push(Var::new("CI_SHARED_ENVIRONMENT", "true"));
        vars.push(Var::new("CI_RUNNER_VERSION", RUNNER_VERSION));
        vars.push(Var::new("CI_RUNNER_REVISION", "emulator"));
        vars.push(Var::new("CI_RUNNER_EXECUTABLE_ARCH", format!("linux/{}", go_arch())));
        vars.push(Var::new("RUNNER_TEMP_PROJECT_DIR", format!("{}.tmp", self.project_dir)));
        expand_all(&vars)
    }

    /// Expands an image or service field as `expandContainerOptions` does.
    fn expand_with_job_vars(&self, s: &str) -> String {
        let mut vars = self.job_vars.clone();
        vars.push(Var::new("RUNNER_TEMP_PROJECT_DIR", format!("{}.tmp", self.project_dir)));
        let vars = expand_all(&vars);
        go_expand(s, |k| lookup(&vars, k))
    }

    /// `CUSTOM_ENV_CI_JOB_SERVICES` (§3.4).
    fn services_json(&self, all: &[Var]) -> String {
        #[derive(Serialize)]
        struct JsonService {
            name: String,
            alias: String,
            entrypoint: Option<Vec<String>>,
            command: Option<Vec<String>>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            variables: BTreeMap<String, String>,
        }
        if self.job.services.is_empty() {
            return String::new();
        }
        let list: Vec<JsonService> = self
            .job
            .services
            .iter()
            .map(|s| {
                let mut scope = all.to_vec();
                scope.extend(s.variables.iter().map(|(k, v)| Var::new(k, v.clone())));
                let variables = s.variables.iter().map(|(k, v)| (k.clone(), go_expand(v, |name| lookup(&scope, name)))).collect();
                JsonService {
                    name: self.expand_with_job_vars(&s.name),
                    alias: first_alias(&self.expand_with_job_vars(s.alias.as_deref().unwrap_or(""))),
                    entrypoint: s.entrypoint.clone(),
                    command: s.command.clone(),
                    variables,
                }
            })
            .collect();
        go_json(&list)
    }

    /// The environment of a driver process (§3.1), in order; a later key wins.
    fn environment(&self, with_job_env: bool) -> Vec<(OsString, OsString)> {
        let tmp = self.tmp.clone().unwrap_or_default();
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        env.extend(self.driver.env.iter().map(|(k, v)| (k.into(), v.into())));
        let protocol = [
            ("TMPDIR", tmp.display().to_string()),
            ("BUILD_FAILURE_EXIT_CODE", "1".into()),
            ("SYSTEM_FAILURE_EXIT_CODE", "2".into()),
            ("BUILD_EXIT_CODE_FILE", tmp.join("build_exit_code").display().to_string()),
            ("JOB_RESPONSE_FILE", tmp.join("response.json").display().to_string()),
        ];
        env.extend(protocol.into_iter().map(|(k, v)| (k.into(), v.into())));
        if with_job_env {
            env.extend(self.job_env.iter().map(|(k, v)| (k.into(), v.into())));
        }
        let all = self.all_variables();
        env.extend(all.iter().map(|v| (format!("CUSTOM_ENV_{}", v.key).into(), v.value.clone().into())));
        env.push(("CUSTOM_ENV_CI_JOB_SERVICES".into(), self.services_json(&all).into()));
        env
    }

    /// `T/response.json` (§3.6).
    fn write_response(&self, tmp: &Path) -> std::io::Result<()> {
        let job = &self.job;
        let secs = self.job_timeout().as_secs();
        let variables: Vec<Value> = self
            .job_vars
            .iter()
            .map(|v| json!({"key": v.key, "value": v.value, "public": !v.masked, "file": v.file, "masked": v.masked, "raw": v.raw}))
            .collect();
        let image = |i: &Image| {
            let mut o = json!({
                "name": self.expand_with_job_vars(&i.name),
                "ports": [],
                "variables": i.variables.iter().map(|(k, v)| json!({"key": k, "value": v, "public": true, "file": false, "masked": false, "raw": false})).collect::<Vec<_>>(),
                "pull_policy": i.pull_policy,
                "executor_opts": {"docker": {"platform": i.platform.clone().unwrap_or_default(), "user": i.user.clone().unwrap_or_default()}, "kubernetes": {"user": ""}},
            });
            if let Some(a) = &i.alias {
                o["alias"] = json!(self.expand_with_job_vars(a));
            }
            if let Some(e) = &i.entrypoint {
                o["entrypoint"] = json!(e);
            }
            if let Some(c) = &i.command {
                o["command"] = json!(c);
            }
            o
        };
        let mut steps = Vec::new();
        if !job.script.is_empty() {
            steps.push(json!({"name": "script", "script": job.script, "timeout": secs, "when": "on_success", "allow_failure": false}));
        }
        for (name, script) in job.extra_steps.iter().filter(|(_, s)| !s.is_empty()) {
            steps.push(json!({"name": name, "script": script, "timeout": secs, "when": "on_success", "allow_failure": false}));
        }
        if !job.after_script.is_empty() {
            steps.push(
                json!({"name": "after_script", "script": job.after_script, "timeout": secs, "when": "always", "allow_failure": true}),
            );
        }
        let artifacts = if job.with_artifacts {
            json!([{"name": "", "untracked": false, "paths": ["artifacts/"], "exclude": [], "when": "always",
                    "artifact_type": "archive", "artifact_format": "zip", "expire_in": ""}])
        } else {
            json!([])
        };
        let cache = if job.with_cache {
            json!([{"key": "default", "untracked": false, "policy": "pull-push", "paths": ["cache/"], "when": "always", "fallback_keys": []}])
        } else {
            json!([])
        };
        let name = job.project_path.rsplit('/').next().unwrap_or("");
        let payload = json!({
            "id": job.id,
            "token": job.token,
            "allow_git_fetch": false,
            "job_info": {
                "name": "emulated", "stage": "test", "pipeline_id": job.id, "project_id": job.project_id,
                "project_name": name, "project_full_path": job.project_path, "namespace_id": 0,
                "root_namespace_id": 0, "organization_id": 0, "instance_id": "", "instance_uuid": "",
                "user_id": 0, "time_in_queue_seconds": 0, "project_jobs_running_on_instance_runners_count": "",
                "queue_size": 0, "queue_depth": 0,
            },
            "git_info": {
                "repo_url": repo_url(job), "repo_object_format": "sha1", "ref": "main", "sha": FAKE_SHA,
                "before_sha": "0000000000000000000000000000000000000000", "ref_type": "branch",
                "refspecs": ["+refs/heads/main:refs/remotes/origin/main"], "depth": 20, "protected": false,
            },
            "runner_info": {"uuid": "", "timeout": secs},
            "inputs": null,
            "variables": variables,
            "steps": steps,
            "image": job.image.as_ref().map(image).unwrap_or_else(|| json!({"name": "", "executor_opts": {"docker": {"platform": "", "user": ""}, "kubernetes": {"user": ""}}})),
            "services": job.services.iter().map(image).collect::<Vec<_>>(),
            "artifacts": artifacts,
            "cache": cache,
            "credentials": job.credentials.iter().map(|c| json!({"type": "registry", "url": c.url, "username": c.username, "password": c.password})).collect::<Vec<_>>(),
            "dependencies": [],
            "features": {"trace_sections": true, "token_mask_prefixes": [], "failure_reasons": ["script_failure", "runner_system_failure", "job_execution_timeout"], "tracing": null},
            "policy_options": {"execution_policy_job": false, "policy_name": ""},
            "suspend_options": {},
        });
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp.join("response.json"))?;
        f.write_all(go_json(&payload).as_bytes())?;
        f.write_all(b"\n")
    }

    // --- One driver process (§2) ---

    /// EXEC of §10: start, wait (with the kill sequence when `ctx` ends), classify (§8.1).
    fn exec(&mut self, stage: &str, attempt: u32, exe: &Path, args: &[String], ctx: Ctx, output: Output) -> Result<(), Failure> {
        let tmp = self.tmp.clone().ok_or_else(|| Failure::System("no temp dir".into()))?;
        let env = self.environment(stage != "config");
        let (out_sink, err_sink) = match output {
            Output::Config(buf) => (Sink::Buffer(buf), Sink::Log(self.log.clone())),
            Output::JobLog => (Sink::Log(self.log.clone()), Sink::Log(self.log.clone())),
            Output::RunnerLog => (Sink::Log(self.runner_log.clone()), Sink::Log(self.runner_log.clone())),
        };
        let started = Instant::now();
        let mut call = Call {
            stage: stage.to_owned(),
            attempt,
            exit: None,
            signal: None,
            sent_sigterm: false,
            sent_sigkill: false,
            duration: Duration::ZERO,
            pid: None,
            left_running: false,
        };
        self.shared.note_started(stage);
        let spawned = Command::new(exe)
            .args(args)
            .current_dir(&tmp)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                self.calls.push(call);
                return Err(Failure::System(format!("failed to start command: {e}")));
            }
        };
        let pid = child.id();
        call.pid = Some(pid);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        if let Some(out) = child.stdout.take() {
            spawn_reader(out, out_sink, self.shared.clone(), done_tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(err, err_sink, self.shared.clone(), done_tx);
        }

        let outcome = self.wait(&mut child, &done_rx, ctx, &mut call);
        call.duration = started.elapsed();
        let result = match outcome {
            Ok(status) => {
                call.exit = status.code();
                call.signal = status.signal();
                classify(status, &tmp.join("build_exit_code"))
            }
            Err(e) => {
                // Never reaped by the runner; a thread reaps it whenever it ends, so that it does
                // not linger as a zombie of the test process.
                call.left_running = true;
                let _ = thread::Builder::new().name("runner-reaper".into()).spawn(move || {
                    let _ = child.wait();
                });
                Err(e)
            }
        };
        self.calls.push(call);
        result
    }

    /// Waits for the process to exit and both pipes to close (Go's `cmd.Wait`); when `ctx` ends:
    /// SIGTERM to the group, SIGKILL after graceful_kill_timeout, give up after force_kill_timeout.
    fn wait(&self, child: &mut Child, done: &mpsc::Receiver<()>, ctx: Ctx, call: &mut Call) -> Result<ExitStatus, Failure> {
        #[derive(Clone, Copy)]
        enum Phase {
            Running,
            Terminated(Instant),
            Killed(Instant),
        }
        let pid = child.id();
        let mut status = None;
        let mut phase = Phase::Running;
        loop {
            if status.is_none() {
                status = child.try_wait().map_err(|e| Failure::System(format!("waiting for the process: {e}")))?;
            }
            let pipes_closed = matches!(done.try_recv(), Err(TryRecvError::Disconnected));
            if let (Some(s), true) = (status, pipes_closed) {
                return Ok(s);
            }
            if self.shared.abandoned() {
                return Err(Failure::Abandoned);
            }
            let now = Instant::now();
            match phase {
                Phase::Running if self.shared.ended(&ctx).is_some() => {
                    // If SIGTERM cannot be sent, SIGKILL at once (§2.3).
                    call.sent_sigterm = true;
                    if signal_group(pid, libc::SIGTERM).is_ok() {
                        phase = Phase::Terminated(now);
                    } else {
                        call.sent_sigkill = true;
                        let _ = signal_group(pid, libc::SIGKILL);
                        phase = Phase::Killed(now);
                    }
                }
                Phase::Terminated(t) if now >= t + self.driver.graceful_kill_timeout => {
                    call.sent_sigkill = true;
                    let _ = signal_group(pid, libc::SIGKILL);
                    phase = Phase::Killed(now);
                }
                Phase::Killed(t) if now >= t + self.driver.force_kill_timeout => {
                    return Err(Failure::System(format!("failed to kill process PID={pid}, likely process is dormant")));
                }
                _ => {}
            }
            self.shared.nap(POLL);
        }
    }
}

// === Helpers ===

const FAKE_SHA: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c";

fn repo_url(job: &Job) -> String {
    format!("https://gitlab-ci-token:{}@{SERVER_HOST}/{}.git", job.token, job.project_path)
}

/// The runner's short token, as `CI_RUNNER_SHORT_TOKEN` shows it.
fn short_token(job: &Job) -> String {
    format!("emu{:06}", job.runner_id)
}

/// The payload's `variables`: GitLab's predefined ones (if asked for), then the job's own.
fn payload_variables(job: &Job) -> Vec<Var> {
    let mut vars = Vec::new();
    if job.predefined_variables {
        let path = &job.project_path;
        let (namespace, name) = path.rsplit_once('/').unwrap_or(("", path));
        let server = format!("https://{SERVER_HOST}");
        let project_url = format!("{server}/{path}");
        let masked = |k: &str, v: String| Var { masked: true, ..Var::new(k, v) };
        vars.extend([
            Var::new("CI_PIPELINE_ID", job.id.to_string()),
            Var::new("CI_PIPELINE_URL", format!("{project_url}/-/pipelines/{}", job.id)),
            Var::new("CI_JOB_ID", job.id.to_string()),
            Var::new("CI_JOB_URL", format!("{project_url}/-/jobs/{}", job.id)),
            masked("CI_JOB_TOKEN", job.token.clone()),
            Var::new("CI_JOB_STARTED_AT", "2026-01-01T00:00:00Z"),
            Var::new("CI_REGISTRY_USER", "gitlab-ci-token"),
            masked("CI_REGISTRY_PASSWORD", job.token.clone()),
            Var::new("CI_REPOSITORY_URL", repo_url(job)),
            Var::new("CI", "true"),
            Var::new("GITLAB_CI", "true"),
            Var::new("CI_SERVER_URL", server.clone()),
            Var::new("CI_SERVER_HOST", SERVER_HOST),
            Var::new("CI_SERVER_PORT", "443"),
            Var::new("CI_SERVER_PROTOCOL", "https"),
            Var::new("CI_SERVER_NAME", "GitLab"),
            Var::new("CI_SERVER_VERSION", "19.4.0"),
            Var::new("CI_API_V4_URL", format!("{server}/api/v4")),
            Var::new("CI_PROJECT_ID", job.project_id.to_string()),
            Var::new("CI_PROJECT_NAME", name),
            Var::new("CI_PROJECT_TITLE", name),
            Var::new("CI_PROJECT_PATH", path.clone()),
            Var::new("CI_PROJECT_PATH_SLUG", slugify(path)),
            Var::new("CI_PROJECT_NAMESPACE", namespace),
            Var::new("CI_PROJECT_ROOT_NAMESPACE", namespace.split('/').next().unwrap_or("")),
            Var::new("CI_PROJECT_URL", project_url.clone()),
            Var::new("CI_PROJECT_VISIBILITY", "private"),
            Var::new("CI_REGISTRY", REGISTRY_HOST),
            Var::new("CI_REGISTRY_IMAGE", format!("{REGISTRY_HOST}/{path}")),
            Var::new("CI_PIPELINE_SOURCE", "push"),
            Var::new("CI_COMMIT_SHA", FAKE_SHA),
            Var::new("CI_COMMIT_SHORT_SHA", &FAKE_SHA[..8]),
            Var::new("CI_COMMIT_REF_NAME", "main"),
            Var::new("CI_COMMIT_REF_SLUG", "main"),
            Var::new("CI_COMMIT_BRANCH", "main"),
            Var::new("CI_DEFAULT_BRANCH", "main"),
            Var::new("CI_JOB_NAME", "emulated"),
            Var::new("CI_JOB_STAGE", "test"),
            Var::new("CI_RUNNER_ID", job.runner_id.to_string()),
            Var::new("CI_RUNNER_DESCRIPTION", "ctproxy test emulator"),
            Var::new("CI_RUNNER_TAGS", "[]"),
        ]);
    }
    let attempts = job.get_sources_attempts.clamp(1, 10);
    if attempts != 1 && !job.variables.iter().any(|(k, _)| k == "GET_SOURCES_ATTEMPTS") {
        vars.push(Var::new("GET_SOURCES_ATTEMPTS", attempts.to_string()));
    }
    let has = |keys: &[String], k: &str| keys.iter().any(|m| m == k);
    vars.extend(job.variables.iter().map(|(k, v)| Var {
        key: k.clone(),
        value: v.clone(),
        file: has(&job.file_keys, k),
        masked: has(&job.masked_keys, k),
        raw: has(&job.raw_keys, k),
    }));
    vars
}

/// GitLab's `CI_PROJECT_PATH_SLUG`: lower case, every non-alphanumeric a `-`, at most 63 bytes.
fn slugify(s: &str) -> String {
    let s: String = s.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    s.chars().take(63).collect::<String>().trim_matches('-').to_owned()
}

/// `Image.Aliases()[0]`: the alias list is split on commas and spaces.
fn first_alias(alias: &str) -> String {
    alias.replace(',', " ").split_whitespace().next().unwrap_or("").to_owned()
}

/// `Variables.Expand()`: every non-raw value expanded once against the whole list.
fn expand_all(vars: &[Var]) -> Vec<Var> {
    vars.iter().map(|v| if v.raw { v.clone() } else { Var { value: go_expand(&v.value, |k| lookup(vars, k)), ..v.clone() } }).collect()
}

/// `Variables.Get` as used by the expansion: the last value, a file variable's path.
fn lookup(vars: &[Var], key: &str) -> String {
    match key {
        "$" => return "$".into(),
        "*" | "#" | "@" | "!" | "?" | "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" => return String::new(),
        _ => {}
    }
    match vars.iter().rev().find(|v| v.key == key) {
        Some(v) if v.file => {
            let tmp = vars.iter().rev().find(|v| v.key == "RUNNER_TEMP_PROJECT_DIR").map(|v| v.value.as_str()).unwrap_or("");
            format!("{}/{}", tmp.trim_end_matches('/'), v.key)
        }
        Some(v) => v.value.clone(),
        None => String::new(),
    }
}

/// Go's `os.Expand`.
fn go_expand(s: &str, mapping: impl Fn(&str) -> String) -> String {
    fn special(c: u8) -> bool {
        matches!(c, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9')
    }
    fn shell_name(s: &str) -> (&str, usize) {
        let b = s.as_bytes();
        if b[0] == b'{' {
            if b.len() > 2 && special(b[1]) && b[2] == b'}' {
                return (&s[1..2], 3);
            }
            for (i, &c) in b.iter().enumerate().skip(1) {
                if c == b'}' {
                    return if i == 1 { ("", 2) } else { (&s[1..i], i + 1) };
                }
            }
            return ("", 1);
        }
        if special(b[0]) {
            return (&s[..1], 1);
        }
        let n = b.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
        (&s[..n], n)
    }
    let b = s.as_bytes();
    let mut out: Option<String> = None;
    let (mut i, mut j) = (0, 0);
    while j < b.len() {
        if b[j] == b'$' && j + 1 < b.len() {
            let buf = out.get_or_insert_with(String::new);
            buf.push_str(&s[i..j]);
            let (name, w) = shell_name(&s[j + 1..]);
            if name.is_empty() && w > 0 {
                // Bad syntax: the characters are eaten.
            } else if name.is_empty() {
                buf.push('$');
            } else {
                buf.push_str(&mapping(name));
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    match out {
        None => s.to_owned(),
        Some(mut buf) => {
            buf.push_str(&s[i.min(s.len())..]);
            buf
        }
    }
}

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// A duration as Go prints the small ones (`3s`, `10ms`, `1.5s`).
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Compact JSON with Go's HTML escaping (`json.Marshal`). Those characters only ever occur inside
/// strings, so escaping the serialized text is exact.
fn go_json<T: Serialize>(v: &T) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|e| panic!("serializing JSON cannot fail here: {e}"));
    s.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026").replace('\u{2028}', "\\u2028").replace('\u{2029}', "\\u2029")
}

/// A POSIX single-quoted word: correct for any text.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A variable name as a shell word: bare if it is a plain identifier, quoted otherwise (the export
/// then fails in the shell, as it would under the runner).
fn sh_word(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        s.to_owned()
    } else {
        sh_quote(s)
    }
}

/// The wrapper of `BashWriter.Finish` (§6.3).
fn finish_script(shell: &str, body: &str, trace: bool) -> String {
    let mut s = format!("#!/usr/bin/env {shell}\n\ntrap 'exit 1' TERM\n\n");
    if trace {
        s.push_str("set -o xtrace\n");
    }
    s.push_str("if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n");
    s.push_str("set +o noclobber\n");
    s.push_str(&format!("( trap 'exit 1' TERM; eval {} ) < /dev/null\n", sh_quote(body)));
    s.push_str("exit 0\n");
    s
}

/// Writes `T/scriptNNNN/script` (the directory and the file mode 0700, as the runner's
/// `os.MkdirTemp` and `WriteFile`) and returns its path.
fn write_script(tmp: &Path, script: &str) -> std::io::Result<PathBuf> {
    let dir = tempfile::Builder::new().prefix("script").permissions(fs::Permissions::from_mode(0o700)).tempdir_in(tmp)?.keep();
    let path = dir.join("script");
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o700).open(&path)?;
    f.write_all(script.as_bytes())?;
    Ok(path)
}

/// The job-log line that introduces a stage (§11).
fn stage_description(stage: &str) -> String {
    match stage {
        "prepare_script" => "Preparing environment".into(),
        "get_sources" => "Getting source from Git repository".into(),
        "clear_worktree" => "Deleting all tracked and untracked files due to source fetch failure".into(),
        "restore_cache" => "Restoring cache".into(),
        "download_artifacts" => "Downloading artifacts".into(),
        "after_script" => "Running after_script".into(),
        "archive_cache" => "Saving cache for successful job".into(),
        "archive_cache_on_failure" => "Saving cache for failed job".into(),
        "upload_artifacts_on_success" => "Uploading artifacts for successful job".into(),
        "upload_artifacts_on_failure" => "Uploading artifacts for failed job".into(),
        "cleanup_file_variables" => "Cleaning up project directory and file based variables".into(),
        s => format!("Executing \"{s}\" stage of the job script"),
    }
}

/// Sends a signal to a process group.
fn signal_group(pgid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Go's text for a signal in `exec.ExitError` (`signal: killed`).
fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "hangup".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGKILL => "killed".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGTERM => "terminated".into(),
        n => format!("signal {n}"),
    }
}

/// The classification of a driver exit (§8.1, §8.2).
fn classify(status: ExitStatus, exit_file: &Path) -> Result<(), Failure> {
    let unknown = |code: i32, how: &str| {
        Failure::System(format!("unknown Custom executor executable exit code {code}; executable execution terminated with: {how}"))
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(1), _) => match fs::read(exit_file) {
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Failure::Build { exit_code: 1, message: "exit status 1".into() }),
            Err(e) => Err(Failure::System(format!("reading {}: {e}", exit_file.display()))),
            Ok(data) => {
                // bufio.ScanLines: the first line, without "\n" or "\r\n"; then strconv.Atoi.
                let first = data.split(|&c| c == b'\n').next().unwrap_or(&[]);
                let first = first.strip_suffix(b"\r").unwrap_or(first);
                let code = std::str::from_utf8(first).ok().and_then(|s| s.parse::<i64>().ok()).and_then(|n| i32::try_from(n).ok());
                match code {
                    Some(n) => Err(Failure::Build { exit_code: n, message: format!("exit status {n}") }),
                    None => Err(unknown(2, "exit status 1")),
                }
            }
        },
        (Some(2), _) => Err(Failure::System("exit status 2".into())),
        (Some(c), _) => Err(unknown(c, &format!("exit status {c}"))),
        (None, Some(sig)) => Err(unknown(-1, &format!("signal: {}", signal_name(sig)))),
        (None, None) => Err(unknown(-1, "unknown")),
    }
}

// === The config stage's output (§4) ===

/// `ConfigExecOutput`, as far as the emulator uses it.
#[derive(Debug, Default)]
struct ConfigOutput {
    driver_name: Option<String>,
    driver_version: Option<String>,
    hostname: Option<String>,
    builds_dir: Option<String>,
    cache_dir: Option<String>,
    builds_dir_is_shared: Option<bool>,
    job_env: Option<BTreeMap<String, String>>,
    shell: Option<String>,
}

/// Parses config's stdout with Go's `json.Unmarshal` rules: empty means nothing; otherwise exactly
/// one JSON value (whitespace alone is an error); keys match case-insensitively; unknown keys are
/// ignored; `null` leaves a field unset; a wrong type is an error.
fn parse_config(out: &[u8]) -> Result<Option<ConfigOutput>, String> {
    if out.is_empty() {
        return Ok(None);
    }
    let err = |m: String| format!("error while parsing JSON output: {m}");
    let type_err = |what: &str, field: &str| err(format!("json: cannot unmarshal {what} into Go struct field ConfigExecOutput.{field}"));
    let value: Value =
        serde_json::from_slice(out).map_err(
            |e| {
                if e.is_eof() {
                    err("unexpected end of JSON input".into())
                } else {
                    err(e.to_string())
                }
            },
        )?;
    let map = match value {
        Value::Null => return Ok(Some(ConfigOutput::default())),
        Value::Object(m) => m,
        other => return Err(err(format!("json: cannot unmarshal {} into Go value of type api.ConfigExecOutput", json_kind(&other)))),
    };
    let string = |v: &Value, field: &str| -> Result<Option<String>, String> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(type_err(json_kind(other), field)),
        }
    };
    let mut cfg = ConfigOutput::default();
    for (key, v) in &map {
        match key.to_lowercase().as_str() {
            "driver" => match v {
                Value::Null => {}
                Value::Object(d) => {
                    for (dk, dv) in d {
                        match dk.to_lowercase().as_str() {
                            "name" => cfg.driver_name = string(dv, "driver.name")?.or(cfg.driver_name.take()),
                            "version" => cfg.driver_version = string(dv, "driver.version")?.or(cfg.driver_version.take()),
                            _ => {}
                        }
                    }
                }
                other => return Err(type_err(json_kind(other), "driver")),
            },
            "hostname" => cfg.hostname = string(v, "hostname")?.or(cfg.hostname.take()),
            "builds_dir" => cfg.builds_dir = string(v, "builds_dir")?.or(cfg.builds_dir.take()),
            "cache_dir" => cfg.cache_dir = string(v, "cache_dir")?.or(cfg.cache_dir.take()),
            "shell" => cfg.shell = string(v, "shell")?.or(cfg.shell.take()),
            "builds_dir_is_shared" => match v {
                Value::Null => {}
                Value::Bool(b) => cfg.builds_dir_is_shared = Some(*b),
                other => return Err(type_err(json_kind(other), "builds_dir_is_shared")),
            },
            "job_env" => match v {
                Value::Null => {}
                Value::Object(env) => {
                    let mut m = BTreeMap::new();
                    for (k, ev) in env {
                        match ev {
                            Value::String(s) => m.insert(k.clone(), s.clone()),
                            Value::Null => m.insert(k.clone(), String::new()),
                            other => return Err(type_err(json_kind(other), "job_env")),
                        };
                    }
                    cfg.job_env = Some(m);
                }
                other => return Err(type_err(json_kind(other), "job_env")),
            },
            _ => {}
        }
    }
    Ok(Some(cfg))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
