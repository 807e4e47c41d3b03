//! `ctproxy doctor`: checks a runner host for what ctproxy needs, before the first CI job finds out.
//!
//! Every check prints one line (`ok`, `WARN` or `FAIL`, what was found, and for a problem what to
//! do about it), so an administrator can fix a host from the output alone. Only `FAIL` makes the
//! exit status non-zero: a `WARN` is something that works but deserves a look (cgroup v1, a pool
//! that is tight for docker-compose projects).
//!
//! The judging is done by pure functions of what was read (daemon answers, files), unit-tested
//! below; [`main`] only gathers the facts. The daemon is asked through the same pooled client and
//! internal-call helper the proxy uses ([`crate::build::forwarder`], [`Daemon`]).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::Value;

use crate::config::{Config, Overrides};
use crate::plugin::namespace::pool::{self, NetworkPool};
use crate::plugin::namespace::Daemon;

/// The oldest dockerd ctproxy is tested against (Debian 12's docker.io).
const MIN_DAEMON: (u32, u32) = (20, 10);
/// The API version dockerd 20.10 speaks; older daemons lack fields the namespaces read.
const MIN_API: (u32, u32) = (1, 41);
/// Below this much free space in the cache's file system, the cache cannot do its job at all.
const MIN_FREE_BYTES: u64 = 1 << 30;
/// Where gitlab-runner's packages and its manual install put the binary.
const RUNNER_BINARIES: [&str; 2] = ["/usr/bin/gitlab-runner", "/usr/local/bin/gitlab-runner"];
/// The control socket the executor stages use when `--control` is not given.
const DEFAULT_CONTROL: &str = "/run/ctproxy/control.sock";

/// What `ctproxy doctor` was asked to check.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub runner_config: PathBuf,
    pub concurrency: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    pub name: &'static str,
    pub detail: String,
    /// What to do; printed for `WARN` and `FAIL`.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check { status: Status::Ok, name, detail: detail.into(), fix: None }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { status: Status::Warn, name, detail: detail.into(), fix: Some(fix.into()) }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { status: Status::Fail, name, detail: detail.into(), fix: Some(fix.into()) }
    }

    /// The printed line: `ok   daemon: ...` or `FAIL shared images: ... -> fix: ...`. Always one
    /// line (a TOML parse error spans several: they are joined), so the output can be grepped.
    pub fn line(&self) -> String {
        let detail = one_line(&self.detail);
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        match (&self.fix, self.status) {
            (Some(fix), Status::Warn | Status::Fail) => format!("{tag} {}: {detail} -> fix: {}", self.name, one_line(fix)),
            _ => format!("{tag} {}: {detail}", self.name),
        }
    }
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Everything `doctor` found; decides the exit status in one place.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The configuration could not be read: nothing else was checked.
    pub config_unreadable: bool,
}

impl Report {
    /// 0: all checks pass (warnings allowed); 1: a check failed; 2: the configuration is unusable.
    pub fn exit_code(&self) -> u8 {
        if self.config_unreadable {
            2
        } else if self.checks.iter().any(|c| c.status == Status::Fail) {
            1
        } else {
            0
        }
    }

    fn push(&mut self, check: Check) {
        println!("{}", check.line());
        self.checks.push(check);
    }
}

/// Runs every check, printing each line as it is decided.
pub fn main(opts: &Options) -> Report {
    let mut report = Report::default();
    let loaded = Config::load(Some(&opts.config), &Overrides::default())
        .and_then(|c| crate::build::check_config(&c, &Config::origin(Some(&opts.config))).map(|()| c));
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            report.push(Check::fail(
                "config",
                e.to_string(),
                format!("correct it; `ctproxy serve --config {} --check` shows the first error", opts.config.display()),
            ));
            report.config_unreadable = true;
            return report;
        }
    };
    report.push(Check::ok("config", format!("{} is valid", opts.config.display())));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            report.push(Check::fail("runtime", e.to_string(), "check the process limits (threads, file descriptors)"));
            return report;
        }
    };
    runtime.block_on(check_all(&config, opts, &mut report));
    report
}

async fn check_all(config: &Config, opts: &Options, report: &mut Report) {
    let runner_text = std::fs::read_to_string(&opts.runner_config);
    let concurrency = opts.concurrency.or_else(|| runner_text.as_ref().ok().and_then(|t| runner_concurrency(t))).unwrap_or(4).max(1);

    let daemon = match crate::build::forwarder(config) {
        Ok(f) => Some(Daemon::new(f)),
        Err(e) => {
            report.push(Check::fail("daemon", e.to_string(), "correct [upstream] in the configuration"));
            None
        }
    };
    let version = match &daemon {
        Some(d) => d.get("/version").await.map_err(|e| e.to_string()),
        None => Err("no client".into()),
    };
    let daemon = match version {
        Ok(Some(v)) => {
            report.push(Check::ok("daemon", format!("reachable at {}", config.upstream.url)));
            report.push(daemon_version(&v));
            daemon
        }
        Ok(None) | Err(_) => {
            let why = version.err().unwrap_or_else(|| "GET /version: 404".into());
            report.push(Check::fail(
                "daemon",
                format!("{} does not answer: {why}", config.upstream.url),
                "start dockerd (`systemctl start docker`) and run doctor as root or a member of the docker group",
            ));
            None
        }
    };

    if let Some(d) = &daemon {
        match d.get("/info").await {
            Ok(Some(info)) => {
                report.push(storage(&info));
                report.push(cgroups(&info, Path::new("/sys/fs/cgroup/cgroup.controllers").exists()));
            }
            other => report.push(Check::fail("daemon info", format!("GET /info failed: {other:?}"), "check dockerd's log")),
        }
        report.push(pool_check(config, d, concurrency).await);
    }

    report.push(cache_ports(config, daemon.as_ref()).await);
    if let Some(rp) = &config.registry_proxy {
        report.push(port_check("registry proxy port", rp.address, config, "set [registry_proxy] address to a free port"));
    }

    report.push(runner_binary());
    report.push(match &runner_text {
        Ok(text) => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/ctproxy"));
            let control = config.jobs.as_ref().map(|j| j.control_socket.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL));
            runner_points_at(text, &opts.runner_config, &exe, &control)
        }
        Err(e) => Check::fail(
            "runner config",
            format!("cannot read {}: {e}", opts.runner_config.display()),
            "register the runner with the custom executor (docs/gitlab-runner.md) or pass --runner-config",
        ),
    });

    if let Some(cache) = &config.cache {
        report.push(disk_space(&cache.dir, cache.max_bytes.0));
    }
    if let Some(d) = &daemon {
        report.push(match d.list("/images/json").await {
            Ok(images) => shared_images(&config.namespaces.shared_images, &images),
            Err(e) => Check::fail("shared images", format!("cannot list images: {e}"), "check dockerd's log"),
        });
    }
}

/// `concurrent = N` of gitlab-runner's config.toml.
pub fn runner_concurrency(text: &str) -> Option<u32> {
    let v: toml::Value = toml::from_str(text).ok()?;
    v.get("concurrent")?.as_integer().and_then(|n| u32::try_from(n).ok())
}

/// `20.10.24+dfsg1` → (20, 10); `1.41` → (1, 41).
pub fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The daemon's version and API version against the oldest ctproxy supports.
pub fn daemon_version(version: &Value) -> Check {
    let v = version.get("Version").and_then(Value::as_str).unwrap_or("?");
    let api = version.get("ApiVersion").and_then(Value::as_str).unwrap_or("?");
    let detail = format!("dockerd {v}, API {api}");
    match (major_minor(v), major_minor(api)) {
        (Some(dv), Some(av)) if dv >= MIN_DAEMON && av >= MIN_API => Check::ok("daemon version", detail),
        _ => {
            Check::fail("daemon version", detail, "install dockerd 20.10 or later (API 1.41+): Debian 12's docker.io or Docker's packages")
        }
    }
}

/// The image store: classic graph drivers, or containerd's snapshotters (Docker 24+ option,
/// default in 29), which ctproxy has been tested less with.
pub fn storage(info: &Value) -> Check {
    let driver = info.get("Driver").and_then(Value::as_str).unwrap_or("?");
    let containerd = info
        .get("DriverStatus")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|pair| pair.as_array())
        .any(|pair| pair.iter().any(|s| s.as_str().is_some_and(|s| s.contains("io.containerd.snapshotter"))));
    if containerd {
        Check::warn(
            "storage",
            format!("containerd image store ({driver})"),
            "ctproxy is tested with the classic store; if images misbehave, disable the `containerd-snapshotter` feature in daemon.json",
        )
    } else {
        Check::ok("storage", format!("classic image store ({driver})"))
    }
}

/// cgroup v2 and whether dockerd can enforce the memory and pids caps the inject policy sets.
pub fn cgroups(info: &Value, v2_controllers_file: bool) -> Check {
    let version = info.get("CgroupVersion").and_then(Value::as_str).unwrap_or(if v2_controllers_file { "2" } else { "1" });
    let memory = info.get("MemoryLimit").and_then(Value::as_bool).unwrap_or(false);
    let pids = info.get("PidsLimit").and_then(Value::as_bool).unwrap_or(false);
    let mut missing = Vec::new();
    if !memory {
        missing.push("memory");
    }
    if !pids {
        missing.push("pids");
    }
    if !missing.is_empty() {
        return Check::fail(
            "cgroups",
            format!("cgroup v{version}: {} limits are not enforced", missing.join(" and ")),
            "enable the controllers (kernel cmdline `cgroup_enable=memory swapaccount=1`, or systemd's unified hierarchy) and restart dockerd",
        );
    }
    if version != "2" {
        return Check::warn(
            "cgroups",
            format!("cgroup v{version}; memory and pids limits enforced"),
            "prefer cgroup v2 (`systemd.unified_cgroup_hierarchy=1`): its memory accounting covers the page cache of a job",
        );
    }
    Check::ok("cgroups", "cgroup v2; memory and pids limits enforced")
}

/// Free blocks of the pool (up to `cap`), given the subnets already in use.
pub fn free_blocks(pool: &NetworkPool, used: &[IpNet], cap: usize) -> usize {
    pool.ranges
        .iter()
        .filter_map(|r| match r {
            IpNet::V4(v4) => v4.subnets(pool.prefix_len).ok(),
            IpNet::V6(_) => None,
        })
        .flatten()
        .filter(|b| !used.iter().any(|u| pool::overlaps(&IpNet::V4(*b), u)))
        .take(cap)
        .count()
}

/// Every job takes one block for its default network; docker-compose projects take one more each.
/// `capped`: counting stopped at `free` (there may be more).
pub fn pool_capacity(free: usize, capped: bool, jobs: u32) -> Check {
    let jobs = jobs as usize;
    let more = if capped { " or more" } else { "" };
    let detail = format!("{free}{more} free network block(s) for {jobs} concurrent job(s)");
    if free < jobs {
        Check::fail(
            "address pool",
            detail,
            "widen [namespaces] network_pool or lower network_prefix_len's block size, or lower `concurrent`",
        )
    } else if free < 2 * jobs {
        Check::warn("address pool", detail, "jobs that start docker-compose projects take a block per project network: widen network_pool")
    } else {
        Check::ok("address pool", detail)
    }
}

async fn pool_check(config: &Config, daemon: &Daemon, jobs: u32) -> Check {
    let ns = &config.namespaces;
    if ns.network_pool.is_empty() {
        return if jobs > 15 {
            Check::fail(
                "address pool",
                format!("no [namespaces] network_pool: dockerd's default pools hold about 31 networks, too few for {jobs} jobs"),
                "set network_pool (e.g. [\"10.200.0.0/16\"]) and network_prefix_len = 24",
            )
        } else {
            Check::warn(
                "address pool",
                "no [namespaces] network_pool: jobs share dockerd's default pools",
                "set network_pool (e.g. [\"10.200.0.0/16\"])",
            )
        };
    }
    let pool = match NetworkPool::parse(&ns.network_pool, ns.network_prefix_len) {
        Ok(p) => p,
        Err(e) => return Check::fail("address pool", e.to_string(), "correct [namespaces] network_pool"),
    };
    let networks = match daemon.list("/networks").await {
        Ok(n) => n,
        Err(e) => return Check::fail("address pool", format!("cannot list networks: {e}"), "check dockerd's log"),
    };
    let mut used = pool::subnets_in_use(&networks);
    used.extend(pool::host_routes());
    let cap = 4 * jobs as usize;
    let free = free_blocks(&pool, &used, cap);
    pool_capacity(free, free == cap, jobs)
}

/// Whether a TCP port can be bound: free, held by the running ctproxy (its control socket answers),
/// or taken by something else.
fn port_check(name: &'static str, addr: SocketAddr, config: &Config, fix: &str) -> Check {
    match TcpListener::bind(addr) {
        Ok(_) => Check::ok(name, format!("{addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && ctproxy_running(config) => {
            Check::ok(name, format!("{addr} is in use, ctproxy is running (its control socket answers)"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Check::fail(name, format!("{addr}: {e}"), "run ctproxy as root (the packaged unit does) or grant it CAP_NET_BIND_SERVICE")
        }
        Err(e) => {
            Check::fail(name, format!("{addr}: {e}"), format!("find the holder with `ss -ltnp 'sport = :{}'`, or {fix}", addr.port()))
        }
    }
}

fn ctproxy_running(config: &Config) -> bool {
    let control = config.jobs.as_ref().map(|j| j.control_socket.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL));
    std::os::unix::net::UnixStream::connect(control).is_ok()
}

async fn cache_ports(config: &Config, daemon: Option<&Daemon>) -> Check {
    let Some(cache) = &config.cache else {
        return Check::ok("cache ports", "no [cache] configured");
    };
    let ip: IpAddr = match cache.listen.parse() {
        Ok(ip) => ip,
        Err(_) => match daemon {
            Some(d) => match crate::app::bridge_gateway(d).await {
                Some(ip) => ip,
                None => {
                    return Check::fail(
                        "cache ports",
                        "dockerd's bridge network has no gateway",
                        "set [cache] listen to an address containers reach",
                    )
                }
            },
            None => return Check::fail("cache ports", "no daemon to find the bridge gateway", "fix the daemon first"),
        },
    };
    let fix = "set [cache] listen / http_port / https_port";
    let checks = [
        port_check("cache ports", SocketAddr::new(ip, cache.http_port), config, fix),
        port_check("cache ports", SocketAddr::new(ip, cache.https_port), config, fix),
    ];
    match checks.iter().find(|c| c.status != Status::Ok) {
        Some(bad) => bad.clone(),
        None => Check::ok("cache ports", format!("{ip}:{} and {ip}:{}: {}", cache.http_port, cache.https_port, checks[0].detail)),
    }
}

/// `Version:      17.0.0` of `gitlab-runner --version`.
pub fn runner_version(output: &str) -> Option<&str> {
    output.lines().find_map(|l| l.trim().strip_prefix("Version:")).map(str::trim)
}

fn find_runner() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join("gitlab-runner")).collect::<Vec<_>>());
    RUNNER_BINARIES.iter().map(PathBuf::from).chain(on_path.into_iter().flatten()).find(|p| p.is_file())
}

fn runner_binary() -> Check {
    let Some(path) = find_runner() else {
        return Check::fail(
            "gitlab-runner",
            "not found in /usr/bin, /usr/local/bin or PATH",
            "install it: https://docs.gitlab.com/runner/install/linux-repository.html (package gitlab-runner)",
        );
    };
    match std::process::Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Check::ok("gitlab-runner", format!("{} {}", path.display(), runner_version(&text).unwrap_or("(version unknown)")))
        }
        Ok(out) => {
            Check::fail("gitlab-runner", format!("{} --version exited with {}", path.display(), out.status), "reinstall gitlab-runner")
        }
        Err(e) => Check::fail("gitlab-runner", format!("cannot run {}: {e}", path.display()), "reinstall gitlab-runner"),
    }
}

/// The `--control SOCKET` an executor argument list passes (the default when it passes none).
fn control_arg(args: &[String]) -> PathBuf {
    args.iter()
        .position(|a| a == "--control")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--control=").map(PathBuf::from)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL))
}

/// Whether two paths name the same file (a symlink to it counts).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// Whether gitlab-runner's config.toml has a custom-executor runner whose four stages run this
/// ctproxy executable against this ctproxy's control socket.
pub fn runner_points_at(text: &str, file: &Path, exe: &Path, control: &Path) -> Check {
    const NAME: &str = "runner config";
    let register = "register a runner with the [runners.custom] of /usr/share/doc/ctproxy/examples/config.toml";
    let v: toml::Value = match toml::from_str(text) {
        Ok(v) => v,
        Err(e) => return Check::fail(NAME, format!("{}: {e}", file.display()), "correct the TOML"),
    };
    let runners = v.get("runners").and_then(toml::Value::as_array).cloned().unwrap_or_default();
    let custom: Vec<&toml::Value> = runners.iter().filter(|r| r.get("executor").and_then(toml::Value::as_str) == Some("custom")).collect();
    if custom.is_empty() {
        return Check::fail(NAME, format!("{}: no runner with executor = \"custom\"", file.display()), register);
    }
    let mut problems = Vec::new();
    for r in &custom {
        let name = r.get("name").and_then(toml::Value::as_str).unwrap_or("?");
        let Some(c) = r.get("custom") else {
            problems.push(format!("runner {name:?} has no [runners.custom]"));
            continue;
        };
        let mut other_exec = Vec::new();
        let mut other_control = Vec::new();
        for stage in ["config", "prepare", "run", "cleanup"] {
            let exec = c.get(format!("{stage}_exec")).and_then(toml::Value::as_str).unwrap_or("");
            if !same_file(Path::new(exec), exe) {
                other_exec.push(format!("{stage}_exec = {exec:?}"));
                continue;
            }
            let args: Vec<String> = c
                .get(format!("{stage}_args"))
                .and_then(toml::Value::as_array)
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let socket = control_arg(&args);
            if socket != control {
                other_control.push(format!("{stage}_args ({})", socket.display()));
            }
        }
        if !other_exec.is_empty() {
            problems.push(format!("runner {name:?}: {} not {}", other_exec.join(", "), exe.display()));
        }
        if !other_control.is_empty() {
            problems.push(format!("runner {name:?}: control socket of {} not {}", other_control.join(", "), control.display()));
        }
    }
    if problems.is_empty() {
        Check::ok(NAME, format!("{}: {} custom runner(s) call {}", file.display(), custom.len(), exe.display()))
    } else {
        Check::fail(NAME, problems.join("; "), format!("point every *_exec at {} and --control at {}", exe.display(), control.display()))
    }
}

/// Free space where the cache keeps its bodies (its nearest existing ancestor before the first
/// start) against its byte budget.
fn disk_space(dir: &Path, budget: u64) -> Check {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(existing) {
        Ok(s) => space_check(dir, s.blocks_available().saturating_mul(s.fragment_size()), budget),
        Err(e) => Check::fail("cache space", format!("{}: {e}", existing.display()), "check the cache directory's file system"),
    }
}

pub fn space_check(dir: &Path, free: u64, budget: u64) -> Check {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let detail = format!("{}: {} free, budget max_bytes {}", dir.display(), gib(free), gib(budget));
    if free < MIN_FREE_BYTES {
        Check::fail("cache space", detail, "free space on that file system or move [cache] dir")
    } else if free < budget {
        Check::warn("cache space", detail, "lower [cache] max_bytes below the free space, or free space")
    } else {
        Check::ok("cache space", detail)
    }
}

/// `*` matches any run of characters, as `[namespaces] shared_images` patterns do.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(s) = s.strip_prefix(head) else { return false };
            (0..=s.len()).filter(|&i| s.is_char_boundary(i)).any(|i| glob(rest, &s[i..]))
        }
    }
}

/// `docker.io/library/alpine:3` → `alpine`; `registry:5000/x/y:t` → `registry:5000/x/y`.
pub fn familiar_repo(tag: &str) -> &str {
    let repo = match tag.rfind(':') {
        Some(i) if !tag[i..].contains('/') => &tag[..i],
        _ => tag,
    };
    repo.strip_prefix("docker.io/library/").or_else(|| repo.strip_prefix("docker.io/")).unwrap_or(repo)
}

/// Shared images the administrator configured but the daemon does not have: every job would
/// otherwise pull its own copy into its namespace.
pub fn shared_images(patterns: &[String], images: &[Value]) -> Check {
    let repos: Vec<&str> = images
        .iter()
        .filter_map(|i| i.get("RepoTags").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| *t != "<none>:<none>")
        .map(familiar_repo)
        .collect();
    let missing: Vec<&str> = patterns.iter().map(String::as_str).filter(|p| !repos.iter().any(|r| glob(p, r))).collect();
    if missing.is_empty() {
        return Check::ok("shared images", format!("all {} configured pattern(s) have an image", patterns.len()));
    }
    let pulls = missing.iter().filter(|p| !p.contains('*')).map(|p| format!("docker pull {p}")).collect::<Vec<_>>();
    let mut fix = if pulls.is_empty() { "pull or build a matching image".to_owned() } else { pulls.join("; ") };
    fix.push_str(", or remove them from [namespaces] shared_images");
    Check::fail("shared images", format!("configured but missing on the daemon: {}", missing.join(", ")), fix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions() {
        assert_eq!(major_minor("20.10.24+dfsg1"), Some((20, 10)));
        assert_eq!(major_minor("1.41"), Some((1, 41)));
        assert_eq!(major_minor("x"), None);
        assert_eq!(daemon_version(&json!({"Version": "28.0.1", "ApiVersion": "1.48"})).status, Status::Ok);
        assert_eq!(daemon_version(&json!({"Version": "19.03.2", "ApiVersion": "1.40"})).status, Status::Fail);
        assert_eq!(daemon_version(&json!({})).status, Status::Fail);
    }

    #[test]
    fn storage_kinds() {
        let classic = json!({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]]});
        assert_eq!(storage(&classic).status, Status::Ok);
        let snap = json!({"Driver": "overlayfs", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]});
        assert_eq!(storage(&snap).status, Status::Warn);
    }

    #[test]
    fn cgroup_judgement() {
        let v2 = json!({"CgroupVersion": "2", "MemoryLimit": true, "PidsLimit": true});
        assert_eq!(cgroups(&v2, true).status, Status::Ok);
        let v1 = json!({"CgroupVersion": "1", "MemoryLimit": true, "PidsLimit": true});
        assert_eq!(cgroups(&v1, false).status, Status::Warn);
        let no_mem = json!({"CgroupVersion": "2", "MemoryLimit": false, "PidsLimit": true});
        let c = cgroups(&no_mem, true);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("memory"), "{c:?}");
    }

    #[test]
    fn pool_counts_free_blocks() {
        let pool = NetworkPool::parse(&["10.200.0.0/22".into()], 24).unwrap();
        assert_eq!(free_blocks(&pool, &[], 100), 4);
        let used: Vec<IpNet> = vec!["10.200.1.0/24".parse().unwrap(), "10.200.2.128/25".parse().unwrap()];
        assert_eq!(free_blocks(&pool, &used, 100), 2);
        assert_eq!(free_blocks(&pool, &used, 1), 1);
        assert_eq!(pool_capacity(2, false, 4).status, Status::Fail);
        assert_eq!(pool_capacity(5, false, 4).status, Status::Warn);
        assert_eq!(pool_capacity(8, false, 4).status, Status::Ok);
        assert!(pool_capacity(16, true, 4).detail.starts_with("16 or more free"));
    }

    #[test]
    fn runner_config_must_call_this_ctproxy() {
        let text = r#"
concurrent = 3
[[runners]]
  name = "ctproxy"
  executor = "custom"
  [runners.custom]
    config_exec = "/usr/bin/ctproxy"
    config_args = ["executor", "config"]
    prepare_exec = "/usr/bin/ctproxy"
    prepare_args = ["executor", "--control", "/run/ctproxy/control.sock", "prepare"]
    run_exec = "/usr/bin/ctproxy"
    run_args = ["executor", "run"]
    cleanup_exec = "/usr/bin/ctproxy"
    cleanup_args = ["executor", "cleanup"]
"#;
        let file = Path::new("config.toml");
        let control = Path::new("/run/ctproxy/control.sock");
        assert_eq!(runner_concurrency(text), Some(3));
        assert_eq!(runner_points_at(text, file, Path::new("/usr/bin/ctproxy"), control).status, Status::Ok);
        let c = runner_points_at(text, file, Path::new("/opt/ctproxy"), control);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("config_exec"), "{c:?}");
        let c = runner_points_at(text, file, Path::new("/usr/bin/ctproxy"), Path::new("/tmp/other.sock"));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("control socket of config_args"), "{c:?}");
        let docker = "[[runners]]\nname = \"d\"\nexecutor = \"docker\"\n";
        assert_eq!(runner_points_at(docker, file, Path::new("/usr/bin/ctproxy"), control).status, Status::Fail);
        assert_eq!(runner_points_at("not toml [", file, Path::new("/usr/bin/ctproxy"), control).status, Status::Fail);
    }

    #[test]
    fn runner_version_line() {
        let out = "Version:      17.2.0\nGit revision: 6428c288\nGit branch:   17-2-stable\n";
        assert_eq!(runner_version(out), Some("17.2.0"));
        assert_eq!(runner_version("nothing"), None);
    }

    #[test]
    fn shared_images_missing_get_a_pull() {
        let images = vec![json!({"RepoTags": ["docker.io/library/alpine:3", "ctproxy-test/busybox:latest"]}), json!({"RepoTags": null})];
        let ok = shared_images(&["alpine".into(), "ctproxy-test/*".into()], &images);
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        let bad = shared_images(&["alpine".into(), "debian".into(), "node*".into()], &images);
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.detail.contains("debian, node*"), "{bad:?}");
        assert!(bad.fix.as_deref().unwrap_or("").contains("docker pull debian"), "{bad:?}");
        assert_eq!(familiar_repo("registry:5000/x/y:t"), "registry:5000/x/y");
        assert_eq!(familiar_repo("registry:5000/x/y"), "registry:5000/x/y");
    }

    #[test]
    fn space_and_exit_codes() {
        let d = Path::new("/var/lib/ctproxy/cache");
        assert_eq!(space_check(d, 100 << 30, 20 << 30).status, Status::Ok);
        assert_eq!(space_check(d, 10 << 30, 20 << 30).status, Status::Warn);
        assert_eq!(space_check(d, 1 << 20, 20 << 30).status, Status::Fail);
        let mut r = Report::default();
        assert_eq!(r.exit_code(), 0);
        r.checks.push(Check::warn("x", "y", "z"));
        assert_eq!(r.exit_code(), 0);
        r.checks.push(Check::fail("x", "y", "z"));
        assert_eq!(r.exit_code(), 1);
        assert!(r.checks[1].line().starts_with("FAIL x: y -> fix: z"));
        assert_eq!(Check::fail("c", "a\n  |\nb\n", "f").line(), "FAIL c: a | b -> fix: f");
        r.config_unreadable = true;
        assert_eq!(r.exit_code(), 2);
    }
}
