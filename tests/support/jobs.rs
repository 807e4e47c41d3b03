//! A `ctproxy serve` with the job service on the runner's policies (`conservative` + `inject`
//! limits, as in `runner-config/ctproxy-runner.toml`), and job sockets made over its control socket:
//! what an attacker in a CI job talks to. Every security regression test goes through one of these,
//! and checks on the daemon's own socket that nothing happened.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use super::*;

/// The job namespace prefix of this test process: other test processes' servers share the daemon,
/// and a reaper only touches its own prefix.
pub fn job_prefix() -> String {
    format!("s{}", std::process::id())
}

/// The job host's configuration: the runner's policies (`conservative` added to that policy's
/// section), `namespaces` added to the `[namespaces]` section and `extra` at the end (`{dir}` is
/// the server's directory).
fn job_host_config(conservative: &str, namespaces: &str, extra: &str) -> String {
    job_host_config_sharing(&[], conservative, namespaces, extra)
}

/// [`job_host_config`] with `shared` images shared besides the test images. The network pool is
/// `10.200.0.0/16` unless `namespaces` sets its own `network_pool`.
fn job_host_config_sharing(shared: &[&str], conservative: &str, namespaces: &str, extra: &str) -> String {
    let shared: String = shared.iter().map(|s| format!(", {s:?}")).collect();
    let pool = if namespaces.contains("network_pool") { "" } else { "network_pool = [\"10.200.0.0/16\"]" };
    format!(
        r#"
[listener.main]
address = "unix://{{dir}}/docker.sock"
[policy.conservative]
kind = "conservative"
{conservative}
[policy.limits]
kind = "inject"
[policy.limits.force]
memory = "2g"
pids_limit = 4096
[namespaces]
shared_images = ["ctproxy-test/*"{shared}]
{pool}
{namespaces}
[jobs]
control_socket = "{{dir}}/control.sock"
dir = "{{dir}}/jobs"
policies = ["conservative", "limits"]
reap_interval_s = 5
namespace_prefix = "{prefix}"
{extra}
"#,
        prefix = job_prefix()
    )
}

/// A ctproxy running the job service; `extra` is appended to its configuration (`{dir}` is its
/// directory).
pub struct JobHost {
    pub proxy: Proxy,
}

/// One job's socket and namespace.
pub struct JobSocket {
    pub id: String,
    /// `unix://…/docker.sock`, for `DOCKER_HOST`.
    pub host: String,
    pub socket: PathBuf,
    /// The namespace on the daemon (`<prefix>-<id>`).
    pub namespace: String,
    control: PathBuf,
}

impl JobHost {
    pub fn start() -> JobHost {
        Self::start_with("")
    }

    pub fn start_with(extra: &str) -> JobHost {
        Self::start_with_namespaces("", extra)
    }

    /// With `namespaces` added to the `[namespaces]` section and `extra` at the end.
    pub fn start_with_namespaces(namespaces: &str, extra: &str) -> JobHost {
        Self::start_custom("", namespaces, extra)
    }

    /// With `conservative` added to the `[policy.conservative]` section, `namespaces` to
    /// `[namespaces]` and `extra` at the end.
    /// A job host that also shares `images` (`[namespaces] shared_images` patterns: repositories, no tag).
    pub fn start_sharing(images: &[&str], extra: &str) -> JobHost {
        JobHost { proxy: Proxy::start_with_config(&job_host_config_sharing(images, "", "", extra), "control.sock") }
    }

    /// `runner-config/ctproxy-runner.toml` itself, with only what must differ on a test machine
    /// replaced: the daemon, the paths (into the server's directory), the ports (free ones), this
    /// test process's namespace prefix, and `[jobs] runner_binary` when given. Every policy, pool,
    /// shared image, limit and executor setting is the file's.
    pub fn start_from_runner_config(runner_binary: Option<&Path>) -> JobHost {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("runner-config/ctproxy-runner.toml");
        let text = std::fs::read_to_string(&file).expect("runner-config/ctproxy-runner.toml");
        let mut config: toml::Table = text.parse().expect("ctproxy-runner.toml parses");
        let table = |config: &mut toml::Table, key: &str| -> toml::Table {
            config.get(key).and_then(toml::Value::as_table).cloned().unwrap_or_else(|| panic!("ctproxy-runner.toml has no [{key}]"))
        };
        let s = |v: &str| toml::Value::String(v.to_owned());
        let mut upstream = table(&mut config, "upstream");
        upstream.insert("url".into(), s(direct()));
        config.insert("upstream".into(), upstream.into());
        let mut listeners = table(&mut config, "listener");
        let mut default = listeners.get("default").and_then(toml::Value::as_table).cloned().expect("[listener.default]");
        default.insert("address".into(), s("unix://{dir}/docker.sock"));
        listeners.insert("default".into(), default.into());
        config.insert("listener".into(), listeners.into());
        let mut jobs = table(&mut config, "jobs");
        for (key, value) in [("control_socket", "{dir}/control.sock"), ("dir", "{dir}/jobs"), ("project_cache_dir", "{dir}/project-cache")]
        {
            assert!(jobs.contains_key(key), "[jobs] {key} is no longer in ctproxy-runner.toml");
            jobs.insert(key.into(), s(value));
        }
        jobs.insert("namespace_prefix".into(), s(&job_prefix()));
        if let Some(binary) = runner_binary {
            jobs.insert("runner_binary".into(), s(&binary.display().to_string()));
        }
        config.insert("jobs".into(), jobs.into());
        let mut registry = table(&mut config, "registry_proxy");
        registry.insert("address".into(), s("127.0.0.1:0"));
        config.insert("registry_proxy".into(), registry.into());
        let mut cache = table(&mut config, "cache");
        cache.insert("dir".into(), s("{dir}/cache"));
        cache.insert("http_port".into(), toml::Value::Integer(free_port().into()));
        cache.insert("https_port".into(), toml::Value::Integer(free_port().into()));
        cache.insert("metrics_listen".into(), s(&format!("127.0.0.1:{}", free_port())));
        config.insert("cache".into(), cache.into());
        let text = toml::to_string(&config).expect("serialize the configuration");
        JobHost { proxy: Proxy::start_with_config(&text, "control.sock") }
    }

    pub fn start_custom(conservative: &str, namespaces: &str, extra: &str) -> JobHost {
        JobHost { proxy: Proxy::start_with_config(&job_host_config(conservative, namespaces, extra), "control.sock") }
    }

    /// Rewrites the configuration (`conservative` added to `[policy.conservative]`, the rest as
    /// [`JobHost::start_with_namespaces`] takes it) and sends SIGHUP; returns once the reload is
    /// logged as applied.
    pub fn reload_with(&self, conservative: &str, namespaces: &str, extra: &str) {
        let dir = self.proxy.dir().display().to_string();
        let text = with_upstream(&job_host_config(conservative, namespaces, extra).replace("{dir}", &dir));
        std::fs::write(self.proxy.dir().join("ctproxy.toml"), text).expect("write config");
        let before = self.log_text().matches("configuration reloaded").count();
        self.proxy.signal("HUP");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while self.log_text().matches("configuration reloaded").count() <= before {
            assert!(std::time::Instant::now() < deadline, "no reload after SIGHUP; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new job (socket and namespace).
    pub fn job(&self) -> JobSocket {
        let id = unique("j").replace("ctproxy-test-", "");
        let control = self.proxy.dir().join("control.sock");
        let (status, job) = control_request(&control, "PUT", &format!("/jobs/{id}"), Some(r#"{"timeout_s": 900}"#));
        assert_eq!(status, 200, "job create: {job}\n{}", self.proxy.log_text());
        let socket = PathBuf::from(job["socket"].as_str().expect("job socket"));
        JobSocket {
            host: format!("unix://{}", socket.display()),
            socket,
            namespace: job["namespace"].as_str().expect("job namespace").to_owned(),
            id,
            control,
        }
    }

    pub fn log_text(&self) -> String {
        self.proxy.log_text()
    }

    /// Whether ctproxy wrote an audit line that contains `needle` (lines are written asynchronously).
    pub fn audited(&self, needle: &str) -> bool {
        self.proxy.wait_log("ctproxy::audit", Duration::from_secs(5))
            && self.proxy.wait_log(needle, Duration::from_secs(5))
            && self.log_text().lines().any(|l| l.contains("ctproxy::audit") && l.contains(needle))
    }
}

impl JobSocket {
    /// The docker CLI (28) on this job's socket.
    pub fn docker(&self, args: &[&str]) -> Output {
        output_within(docker_cmd("docker", &self.host, args), None, Duration::from_secs(300), &args.join(" "))
    }

    /// The same, and it must succeed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        check(&out, args);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A raw request on the job's socket: the status code and the JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        http_json(&self.socket, method, path, body)
    }

    /// Everything on the daemon that carries this job's namespace label: containers (IDs), networks
    /// and volumes (names). The namespace's default network (`ctp.<ns>.bridge`, made by the first
    /// request that needs it) is the namespace's own `bridge`, like the daemon's predefined ones,
    /// and is not listed.
    pub fn on_daemon(&self) -> Vec<String> {
        let label = format!("label=io.ctproxy.namespace={}", self.namespace);
        let default_network = format!("ctp.{}.bridge", self.namespace);
        let mut all = Vec::new();
        for args in [
            vec!["ps", "-aq", "--filter", &label],
            vec!["network", "ls", "--format", "{{.Name}}", "--filter", &label],
            vec!["volume", "ls", "-q", "--filter", &label],
        ] {
            all.extend(docker(direct(), &args).split_whitespace().filter(|n| *n != default_network).map(str::to_owned));
        }
        all
    }

    /// Removes the job: its listener and everything in its namespace.
    pub fn remove(&self) {
        let _ = control_request(&self.control, "DELETE", &format!("/jobs/{}", self.id), None);
    }
}

impl Drop for JobSocket {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One control request: the status code and the JSON body.
pub fn control_request(control: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    http_json(control, method, path, body)
}

/// One HTTP/1.1 request on a unix socket, `Connection: close`: the status code and the body as JSON
/// (`Value::String` of the text when it is not JSON).
pub fn http_json(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = raw_request(sock, req.as_bytes(), Duration::from_secs(120));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let payload = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("");
    let payload = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(payload) } else { payload.to_owned() };
    let json = serde_json::from_str(payload.trim()).unwrap_or(Value::String(payload));
    (status, json)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A refusal as the docker CLI shows it: non-zero exit, ctproxy's message on stderr.
pub fn assert_refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a refusal mentioning {needle:?}, but it succeeded: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(needle), "expected a refusal mentioning {needle:?}, got: {err}");
}

/// A refusal of the namespace as the client prints it: `needle` (what was refused), the part of
/// the namespace that refused it (`the namespace`, `the namespace (build)`, `the namespace
/// (BuildKit)`) and how an administrator allows it, or that no setting can.
#[track_caller]
pub fn assert_ns_refusal(text: &str, needle: &str, layer: &str) {
    assert!(text.contains("ctproxy: ") && text.contains(needle), "expected a refusal mentioning {needle:?}, got: {text}");
    let by = format!("; refused by {layer}; ");
    let Some(at) = text.find(&by) else { panic!("expected {by:?} in: {text}") };
    let remedy = &text[at + by.len()..];
    assert!(
        remedy.starts_with("no setting allows it")
            || remedy.starts_with("an administrator can allow it by ")
            || remedy.starts_with("ctproxy "),
        "no remedy after {by:?} in: {text}"
    );
}

/// [`assert_refused`] for a refusal of the namespace ([`assert_ns_refusal`]).
#[track_caller]
pub fn assert_ns_refused(out: &Output, needle: &str, layer: &str) {
    assert_refused(out, needle);
    assert_ns_refusal(&String::from_utf8_lossy(&out.stderr), needle, layer);
}

/// The subnets of one network of a daemon's `GET /networks` answer (`IPAM.Config[*].Subnet`).
pub fn network_subnets(network: &Value) -> Vec<ipnet::IpNet> {
    network
        .pointer("/IPAM/Config")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("Subnet").and_then(Value::as_str)?.parse().ok())
        .collect()
}
