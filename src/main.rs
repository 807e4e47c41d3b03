//! The `ctproxy` command: parses the command line, sets up logging and runs the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ctproxy::app::{ConfigSource, Server};
use ctproxy::config::{LogFormat, Overrides};
use ctproxy::transport::{ListenAddr, UpstreamAddr};

/// The package version and the commit it was built from (build.rs), so a bug report names the exact source.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CTPROXY_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "ctproxy", version = VERSION, about = "Container Tuning Proxy: a reverse proxy for the Docker Engine API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Docker API on the configured listeners.
    Serve {
        /// TOML configuration file; without it, the embedded default configuration is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen here instead of the configured listeners (`unix:///path`, `tcp://host:port`). Repeatable.
        #[arg(long, value_parser = parse_listen)]
        listen: Vec<ListenAddr>,
        /// Forward to this daemon instead of the configured one (`unix:///path`, `tcp://host:port`).
        #[arg(long, value_parser = parse_upstream)]
        upstream: Option<UpstreamAddr>,
        /// Log format (overrides the configuration).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Check the configuration, print it, and exit.
        #[arg(long)]
        check: bool,
    },
    /// Manage the temporary job listeners of a running `ctproxy serve` (its control socket).
    Job {
        /// The control socket (`[jobs] control_socket`).
        #[arg(long, default_value = "/run/ctproxy/control.sock")]
        control: PathBuf,
        #[command(subcommand)]
        action: JobAction,
    },
    /// A GitLab Runner custom-executor stage (`*_exec` and `*_args` of `[runners.custom]`).
    Executor {
        /// The control socket of the running `ctproxy serve` (`[jobs] control_socket`). The config
        /// stage hands it to the later stages as `CTPROXY_CONTROL` in `job_env`; in gitlab-runner's
        /// own environment it sets the config stage's (job variables arrive as `CUSTOM_ENV_*` and
        /// cannot set it).
        #[arg(long, env = "CTPROXY_CONTROL", default_value = "/run/ctproxy/control.sock")]
        control: PathBuf,
        /// The image of jobs that name none (prepare).
        #[arg(long)]
        default_image: Option<String>,
        /// A helper image (git, git-lfs, gitlab-runner) for the stages that fetch sources and handle
        /// caches and artifacts (prepare); without it every stage runs in the job image.
        #[arg(long)]
        helper_image: Option<String>,
        /// Seconds to wait for every exposed TCP port of the job's services before the build
        /// (prepare; as `wait_for_services_timeout` of the Docker executor); -1 does not wait.
        #[arg(long, default_value_t = 30, allow_negative_numbers = true)]
        wait_for_services_timeout: i64,
        #[command(subcommand)]
        stage: Stage,
    },
    /// Check this host for what ctproxy needs (daemon, cgroups, address pools, ports, gitlab-runner,
    /// disk, shared images); one line per check, with the fix when it fails. Exit status 1 when a
    /// check fails, 2 when the configuration cannot be read.
    Doctor {
        /// ctproxy's configuration (the one `ctproxy serve` runs with).
        #[arg(long, short, default_value = "/etc/ctproxy/ctproxy.toml")]
        config: PathBuf,
        /// gitlab-runner's configuration, whose `[runners.custom]` should call this ctproxy.
        #[arg(long, default_value = "/etc/gitlab-runner/config.toml")]
        runner_config: PathBuf,
        /// Concurrent jobs to plan for (default: `concurrent` of the runner configuration, else 4).
        #[arg(long)]
        concurrency: Option<u32>,
    },
    /// Write the man page and the bash, zsh and fish completions into DIR (packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory: DIR/ctproxy*.1, DIR/ctproxy.bash, DIR/_ctproxy, DIR/ctproxy.fish.
        dir: PathBuf,
    },
    /// Read a password on stdin and print its bcrypt hash, for `users` of an `http` authenticator.
    HashPassword,
    /// Read a bearer token on stdin and print its SHA-256, for `tokens` of an `http` authenticator.
    HashToken,
}

#[derive(Subcommand)]
enum JobAction {
    /// Create the job's socket and namespace (idempotent); prints the job as JSON.
    Create {
        id: String,
        /// The job's timeout in seconds (the reaper adds the configured grace).
        #[arg(long)]
        timeout_s: Option<u64>,
    },
    /// Remove the job's socket and everything the job created (idempotent).
    Remove { id: String },
    /// List the live jobs as JSON.
    List,
}

#[derive(Subcommand)]
enum Stage {
    /// Prints the job's settings for gitlab-runner (one JSON object on stdout, nothing else).
    Config,
    /// Creates the job's socket, network, services and job container (idempotent).
    Prepare,
    /// Runs one stage script in the job's container.
    Run {
        /// The script gitlab-runner wrote.
        script: PathBuf,
        /// The stage's name (any: unknown stages run in the job container).
        stage: String,
    },
    /// Removes the job's socket and everything the job created.
    Cleanup,
}

fn executor_command(opts: ctproxy::executor::Options, stage: Stage) -> ExitCode {
    use ctproxy::executor::{exit_code, CleanupError, ConfigError, StageError};
    let codes = ctproxy::executor::ExitCodes::from_env();
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let control = opts.control.clone();
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    let no_runtime = |e: std::io::Error| format!("cannot start the runtime: {e}");
    // Every stage's outcome becomes its exit code in `executor::exit_code`, nowhere else.
    let code = match stage {
        Stage::Prepare => {
            let result = match runtime() {
                Ok(rt) => rt.block_on(timed(&env, &control, ctproxy::metrics::Stage::Prepare, ctproxy::executor::prepare(&env, &opts))),
                Err(e) => Err(StageError::system(no_runtime(e))),
            };
            exit_code("prepare", &result, &codes)
        }
        Stage::Run { script, stage } => {
            let result = match runtime() {
                Ok(rt) => {
                    rt.block_on(timed(&env, &control, ctproxy::metrics::Stage::Run, ctproxy::executor::run(&env, &opts, &script, &stage)))
                }
                Err(e) => Err(StageError::system(no_runtime(e))),
            };
            exit_code("run", &result, &codes)
        }
        Stage::Config => {
            let result = ctproxy::executor::config(&env, &control)
                .and_then(|c| serde_json::to_string(&c).map_err(|e| ConfigError::Output(e.to_string())))
                .map(|json| println!("{json}"));
            exit_code("config", &result, &codes)
        }
        Stage::Cleanup => {
            let result = match runtime() {
                Ok(rt) => rt.block_on(timed(&env, &control, ctproxy::metrics::Stage::Cleanup, ctproxy::executor::cleanup(&env, &control))),
                Err(e) => Err(CleanupError::Runtime(no_runtime(e))),
            };
            let result = result.map(|msg| eprintln!("ctproxy executor cleanup: {msg}"));
            exit_code("cleanup", &result, &codes)
        }
    };
    ExitCode::from(code)
}

/// Runs a stage and reports its wall time to `ctproxy serve` (best-effort).
async fn timed<T>(
    env: &std::collections::BTreeMap<String, String>,
    control: &std::path::Path,
    stage: ctproxy::metrics::Stage,
    f: impl std::future::Future<Output = T>,
) -> T {
    let start = std::time::Instant::now();
    let out = f.await;
    ctproxy::executor::report_stage(env, control, stage, start.elapsed()).await;
    out
}

/// Runs one job command against the control socket. Exit status: 0 done, 1 refused, 2 ctproxy
/// not reachable (a system failure for a CI stage).
fn job_command(control: PathBuf, action: JobAction) -> ExitCode {
    use ctproxy::jobs::api::{ControlClient, ControlError, CreateJob};
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ctproxy: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let client = ControlClient::new(&control);
    let answer = runtime.block_on(async {
        fn json(v: impl serde::Serialize) -> Result<serde_json::Value, ControlError> {
            serde_json::to_value(v).map_err(|e| ControlError::Malformed(e.to_string()))
        }
        match action {
            JobAction::Create { id, timeout_s } => json(client.create(&id, &CreateJob { timeout_s, project: None }).await?),
            JobAction::Remove { id } => json(client.remove(&id, false).await?),
            JobAction::List => json(client.list().await?),
        }
    });
    match answer {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(ControlError::Refused { status, message }) => {
            eprintln!("ctproxy: {status}: {message}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ctproxy: {e}");
            ExitCode::from(2)
        }
    }
}

/// The first line of stdin, without its line ending.
fn read_secret() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| format!("cannot read stdin: {e}"))?;
    let secret = line.trim_end_matches(['\n', '\r']).to_owned();
    if secret.is_empty() {
        return Err("empty input".into());
    }
    Ok(secret)
}

fn print_hash(hash: impl FnOnce(&str) -> Result<String, String>) -> ExitCode {
    match read_secret().and_then(|s| hash(&s)) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ctproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    ListenAddr::parse(s).map_err(|e| e.to_string())
}

fn parse_upstream(s: &str) -> Result<UpstreamAddr, String> {
    UpstreamAddr::parse(s).map_err(|e| e.to_string())
}

/// The man page (clap_mangen) and shell completions (clap_complete), generated from the same CLI
/// definition the binary parses, so they never drift from it.
fn generate_assets(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    use clap_complete::{generate_to, Shell};
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    // ctproxy.1 and one page per subcommand (ctproxy-serve.1, ctproxy-doctor.1, ...).
    clap_mangen::generate_to(cmd.clone(), dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        generate_to(shell, &mut cmd, "ctproxy", dir)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::GenerateAssets { dir } => match generate_assets(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ctproxy: cannot write into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Doctor { config, runner_config, concurrency } => {
            let opts = ctproxy::doctor::Options { config, runner_config, concurrency };
            ExitCode::from(ctproxy::doctor::main(&opts).exit_code())
        }
        Command::HashPassword => print_hash(|s| bcrypt::hash(s, bcrypt::DEFAULT_COST).map_err(|e| e.to_string())),
        Command::HashToken => print_hash(|s| Ok(ctproxy::plugin::auth::hash_token(s))),
        Command::Job { control, action } => job_command(control, action),
        Command::Executor { control, default_image, helper_image, wait_for_services_timeout, stage } => {
            executor_command(ctproxy::executor::Options { control, default_image, helper_image, wait_for_services_timeout }, stage)
        }
        Command::Serve { config, listen, upstream, log_format, check } => {
            let source = ConfigSource { path: config, overrides: Overrides { listen, upstream, log_format } };
            let loaded = match source.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ctproxy: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            if check {
                // The same build step as a start and a reload (users, groups, policies, TLS files).
                if let Err(e) = ctproxy::build::check_config(&loaded, &source.origin()) {
                    eprintln!("ctproxy: configuration error: {e}");
                    return ExitCode::from(2);
                }
                println!("configuration OK: {} listener(s), upstream {}", loaded.listener.len(), loaded.upstream.url);
                return ExitCode::SUCCESS;
            }
            ctproxy::telemetry::init(loaded.log.format, &loaded.log.level);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ctproxy: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let server = Server::start(source).await?;
                server.run().await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "ctproxy failed");
                    eprintln!("ctproxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
