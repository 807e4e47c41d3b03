//! The `ctproxy` command: parses the command line, sets up logging and runs the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ctproxy::app::{ConfigSource, Server};
use ctproxy::config::{LogFormat, Overrides};
use ctproxy::transport::{ListenAddr, UpstreamAddr};

#[derive(Parser)]
#[command(name = "ctproxy", version, about = "Container Tuning Proxy: a reverse proxy for the Docker Engine API")]
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
        /// The control socket of the running `ctproxy serve` (`[jobs] control_socket`).
        #[arg(long, default_value = "/run/ctproxy/control.sock")]
        control: PathBuf,
        /// The image of jobs that name none (prepare).
        #[arg(long)]
        default_image: Option<String>,
        /// A helper image (git, git-lfs, gitlab-runner) for the stages that fetch sources and handle
        /// caches and artifacts (prepare); without it every stage runs in the job image.
        #[arg(long)]
        helper_image: Option<String>,
        #[command(subcommand)]
        stage: Stage,
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
    let codes = ctproxy::executor::ExitCodes::from_env();
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let control = opts.control.clone();
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    let staged = |name: &str, r: Result<(), ctproxy::executor::StageError>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(e.exit_code(name, &codes)),
    };
    match stage {
        Stage::Prepare => match runtime() {
            Ok(rt) => staged("prepare", rt.block_on(ctproxy::executor::prepare(&env, &opts))),
            Err(e) => staged("prepare", Err(ctproxy::executor::StageError::system(format!("cannot start the runtime: {e}")))),
        },
        Stage::Run { script, stage } => match runtime() {
            Ok(rt) => staged("run", rt.block_on(ctproxy::executor::run(&env, &opts, &script, &stage))),
            Err(e) => staged("run", Err(ctproxy::executor::StageError::system(format!("cannot start the runtime: {e}")))),
        },
        Stage::Config => match ctproxy::executor::config(&env, &control).and_then(|c| serde_json::to_string(&c).map_err(|e| e.to_string()))
        {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ctproxy executor config: {e}");
                ExitCode::from(codes.system_failure)
            }
        },
        Stage::Cleanup => {
            let runtime = match runtime() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ctproxy executor cleanup: cannot start the runtime: {e}");
                    return ExitCode::from(codes.system_failure);
                }
            };
            match runtime.block_on(ctproxy::executor::cleanup(&env, &control)) {
                Ok(msg) => {
                    eprintln!("ctproxy executor cleanup: {msg}");
                    ExitCode::SUCCESS
                }
                Err((_, msg)) => {
                    eprintln!("ctproxy executor cleanup: {msg}");
                    ExitCode::from(codes.system_failure)
                }
            }
        }
    }
}

/// Runs one job command against the control socket. Exit status: 0 done, 1 refused, 2 ctproxy
/// not reachable (a system failure for a CI stage).
fn job_command(control: PathBuf, action: JobAction) -> ExitCode {
    use hyper::Method;
    let (method, path, body) = match action {
        JobAction::Create { id, timeout_s } => {
            (Method::PUT, format!("/jobs/{id}"), timeout_s.map(|t| serde_json::json!({ "timeout_s": t })))
        }
        JobAction::Remove { id } => (Method::DELETE, format!("/jobs/{id}"), None),
        JobAction::List => (Method::GET, "/jobs".to_owned(), None),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ctproxy: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(ctproxy::jobs::control_request(&control, method, &path, body)) {
        Ok((status, v)) if status.is_success() => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok((status, v)) => {
            eprintln!("ctproxy: {status}: {}", v.get("message").and_then(|m| m.as_str()).unwrap_or(""));
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::HashPassword => print_hash(|s| bcrypt::hash(s, bcrypt::DEFAULT_COST).map_err(|e| e.to_string())),
        Command::HashToken => print_hash(|s| Ok(ctproxy::plugin::auth::hash_token(s))),
        Command::Job { control, action } => job_command(control, action),
        Command::Executor { control, default_image, helper_image, stage } => {
            executor_command(ctproxy::executor::Options { control, default_image, helper_image }, stage)
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
