//! The cache against the real package managers and the real registries CI jobs use: Debian's
//! archive (apt), PyPI (pip), the npm registry (npm) and crates.io (cargo), each in a Debian 12
//! image made by `tests/support/client-image.sh`, run as CI jobs through job sockets of a
//! `ctproxy serve` whose cache listens on dockerd's bridge gateway at ports 80 and 443 (so one of
//! these tests at a time, across processes too: `.config/nextest.toml` puts them in one group).
//!
//! Each check is on the cache's own per-ecosystem metrics: a repeat job (fresh container, same
//! packages) gets at least 95 % of its bytes from the cache and makes no full download (no miss, no
//! bypass); concurrent jobs make one full download per URL. Every job prints a `REAL-CLIENT` line
//! with its time and bytes, the numbers of `docs/PERFORMANCE.md`; nothing here asserts on time.
//!
//! These need the internet (deb.debian.org, pypi.org, files.pythonhosted.org, registry.npmjs.org,
//! index.crates.io, static.crates.io) and download about 40 MB in all.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::jobs::JobHost;

const HOSTS: [&str; 6] =
    ["deb.debian.org", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "index.crates.io", "static.crates.io"];

/// The cache binds ports 80 and 443 of the bridge gateway: one test of this file at a time in
/// this process (nextest's test group does the same across processes).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tag of the client image `name` with `packages`, built once (see the script).
fn client_image(name: &str, packages: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/client-image.sh");
    let out = std::process::Command::new(script)
        .arg(name)
        .args(packages)
        .env("CTPROXY_DIRECT_DOCKER_HOST", support::direct())
        .output()
        .expect("client-image.sh");
    assert!(out.status.success(), "client image {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct RealCache {
    host: JobHost,
    metrics: u16,
}

/// What the cache counted for one ecosystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    hit: u64,
    miss: u64,
    revalidated: u64,
    coalesced: u64,
    bypass: u64,
    stale: u64,
    from_cache: u64,
    from_upstream: u64,
    /// Stored entries downloaded in full again because the origin gave them no validator.
    refetched_no_validator: u64,
    refetched_changed: u64,
}

impl Counts {
    fn minus(&self, o: &Counts) -> Counts {
        Counts {
            hit: self.hit - o.hit,
            miss: self.miss - o.miss,
            revalidated: self.revalidated - o.revalidated,
            coalesced: self.coalesced - o.coalesced,
            bypass: self.bypass - o.bypass,
            stale: self.stale - o.stale,
            from_cache: self.from_cache - o.from_cache,
            from_upstream: self.from_upstream - o.from_upstream,
            refetched_no_validator: self.refetched_no_validator - o.refetched_no_validator,
            refetched_changed: self.refetched_changed - o.refetched_changed,
        }
    }

    fn requests(&self) -> u64 {
        self.hit + self.miss + self.revalidated + self.coalesced + self.bypass + self.stale
    }

    /// The share of body bytes that came from the cache.
    fn cache_ratio(&self) -> f64 {
        let total = self.from_cache + self.from_upstream;
        if total == 0 {
            return 0.0;
        }
        self.from_cache as f64 / total as f64
    }
}

impl RealCache {
    /// With `mutable_ttl` and `revalidate_window` of 10 minutes: a job that starts within 10
    /// minutes of the previous one takes its indexes from the cache however long the previous job
    /// took (the defaults, 60 s and 5 s, would make the test depend on the machine's speed).
    fn start() -> RealCache {
        for _ in 0..3 {
            let hosts: Vec<String> = HOSTS.iter().map(|h| format!("\"{h}\"")).collect();
            let extra = format!(
                r#"
[cache]
hosts = [{hosts}]
listen = "auto"
dir = "{{dir}}/cache"
max_bytes = "2g"
mutable_ttl = "10m"
revalidate_window = "10m"
metrics_listen = "127.0.0.1:0"
"#,
                hosts = hosts.join(", ")
            );
            let host = JobHost::start_with(&extra);
            if host.proxy.wait_log("cache listening", Duration::from_secs(10)) {
                let metrics = host.proxy.logged_addr("cache metrics listening").port();
                return RealCache { host, metrics };
            }
            assert!(host.log_text().contains("Address already in use"), "cache did not start:\n{}", host.log_text());
        }
        panic!("the cache could not bind its ports");
    }

    fn metrics_text(&self) -> String {
        let req = b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n";
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics)).expect("metrics");
        std::io::Write::write_all(&mut s, req).expect("write");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).expect("read");
        out
    }

    fn counts(&self, eco: &str) -> Counts {
        let text = self.metrics_text();
        let values: HashMap<&str, u64> =
            text.lines().filter_map(|l| l.rsplit_once(' ')).filter_map(|(k, v)| v.parse().ok().map(|v| (k, v))).collect();
        let req = |o: &str| {
            values.get(format!("ctproxy_cache_ecosystem_requests_total{{ecosystem=\"{eco}\",outcome=\"{o}\"}}").as_str()).copied()
        };
        let bytes =
            |s: &str| values.get(format!("ctproxy_cache_ecosystem_bytes_total{{ecosystem=\"{eco}\",source=\"{s}\"}}").as_str()).copied();
        let refetch =
            |r: &str| values.get(format!("ctproxy_cache_refetches_total{{ecosystem=\"{eco}\",reason=\"{r}\"}}").as_str()).copied();
        Counts {
            hit: req("hit").expect("hit"),
            miss: req("miss").expect("miss"),
            revalidated: req("revalidated").expect("revalidated"),
            coalesced: req("coalesced").expect("coalesced"),
            bypass: req("bypass").expect("bypass"),
            stale: req("stale").expect("stale"),
            from_cache: bytes("cache").expect("cache bytes"),
            from_upstream: bytes("upstream").expect("upstream bytes"),
            refetched_no_validator: refetch("no-validator").expect("refetches"),
            refetched_changed: refetch("changed").expect("refetches"),
        }
    }

    /// Restarts ctproxy on the same directory (the store survives) with `revalidate_window = "1s"`:
    /// every index a client asks fresh (`max-age=0`) is then revalidated upstream.
    fn restart_without_window(&mut self) {
        let proxy = &mut self.host.proxy;
        let _ = proxy.child.kill();
        let _ = proxy.child.wait();
        let config = proxy.dir().join("ctproxy.toml");
        let text = std::fs::read_to_string(&config)
            .expect("config")
            .replace("revalidate_window = \"10m\"", "revalidate_window = \"1s\"")
            // The metrics port bound at the start again (port 0 would give another one).
            .replace("metrics_listen = \"127.0.0.1:0\"", &format!("metrics_listen = \"127.0.0.1:{}\"", self.metrics));
        std::fs::write(&config, text).expect("write config");
        let log = std::fs::OpenOptions::new().append(true).open(&proxy.log).expect("log");
        proxy.child = std::process::Command::new(env!("CARGO_BIN_EXE_ctproxy"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,ctproxy=debug")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restart ctproxy");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.metrics)).is_err()
            || std::os::unix::net::UnixStream::connect(proxy.dir().join("control.sock")).is_err()
        {
            assert!(Instant::now() < deadline, "restarted ctproxy not listening:\n{}", tail(&self.host.log_text()));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until no fetch is in flight (a body is published just after its last byte is sent).
    fn settle(&self) {
        for _ in 0..1000 {
            let text = self.metrics_text();
            if text.lines().any(|l| l == "ctproxy_cache_fills_in_flight 0") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("fetches still in flight");
    }

    /// Runs `script` in a fresh container of `image` as a new CI job; panics unless it succeeds.
    fn job(&self, image: &str, script: &str) -> Duration {
        let job = self.host.job();
        let start = Instant::now();
        let out = job.docker(&["run", "--rm", image, "sh", "-c", script]);
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "job failed: {script}\nstdout:\n{}\nstderr:\n{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.host.log_text())
        );
        took
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(20_000);
    let start = (start..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
    &s[start..]
}

/// Three jobs in a row running `script` in fresh containers of `image`.
///
/// Job 2 runs right after job 1: it must get ≥ 95 % of its bytes from the cache, with no full
/// download (no miss, no bypass) of anything, although apt and pip ask `max-age=0` for indexes.
/// Job 3 runs after a restart without revalidation window: the store is still used, every index a
/// client asks fresh is asked upstream again, and the only full downloads allowed are of entries the
/// origin gave no validator (the registries as this test host reaches them send neither `ETag` nor
/// `Last-Modified`) or that changed; immutable files still come from the cache.
fn repeat_job_is_served_from_the_cache(eco: &str, image: &str, script: &str) {
    let _serial = serial();
    let mut cache = RealCache::start();
    let mut counts = vec![cache.counts(eco)];
    let mut times = Vec::new();
    for n in 1..=3 {
        if n == 3 {
            cache.restart_without_window();
            counts.push(cache.counts(eco));
        }
        times.push(cache.job(image, script));
        cache.settle();
        counts.push(cache.counts(eco));
    }
    let jobs = [counts[1].minus(&counts[0]), counts[2].minus(&counts[1]), counts[4].minus(&counts[3])];
    for (n, (t, c)) in times.iter().zip(&jobs).enumerate() {
        eprintln!(
            "REAL-CLIENT {eco} job {}: {:.1} s, {} B from upstream, {} B from the cache ({:.1} %), requests: {c:?}",
            n + 1,
            t.as_secs_f64(),
            c.from_upstream,
            c.from_cache,
            100.0 * c.cache_ratio()
        );
    }
    let [job1, job2, job3] = jobs;
    assert!(job1.requests() > 0 && job1.miss > 0, "job 1 went through the cache: {job1:?}");
    assert!(job1.from_cache + job1.from_upstream < 100 << 20, "bounded: {job1:?}");
    assert!(job2.cache_ratio() >= 0.95, "job 2 from the cache: {:.1} % ({job2:?})", 100.0 * job2.cache_ratio());
    assert_eq!((job2.miss, job2.bypass, job2.stale), (0, 0, 0), "no full download of an unchanged object in job 2: {job2:?}");
    assert_eq!(job2.requests(), job1.requests(), "the same requests in job 2");
    assert_eq!(job3.requests(), job1.requests(), "the same requests in job 3");
    assert_eq!((job3.bypass, job3.stale), (0, 0), "{job3:?}");
    assert_eq!(
        job3.miss,
        job3.refetched_no_validator + job3.refetched_changed,
        "job 3 downloads in full only indexes without a validator or changed: {job3:?}"
    );
    assert!(job3.miss < job1.miss || job1.miss == 1, "immutable files are not downloaded again: {job3:?}");
}

#[test]
fn apt_repeat_job_is_served_from_the_cache() {
    let image = client_image("apt", &[]);
    repeat_job_is_served_from_the_cache("apt", &image, "apt-get update && apt-get install -y --download-only hello");
}

#[test]
fn pip_repeat_job_is_served_from_the_cache() {
    let image = client_image("pip", &["python3-pip"]);
    repeat_job_is_served_from_the_cache("pypi", &image, "pip download --no-cache-dir -d /tmp/d requests==2.32.3");
}

#[test]
fn npm_repeat_job_is_served_from_the_cache() {
    let image = client_image("npm", &["npm"]);
    repeat_job_is_served_from_the_cache(
        "npm",
        &image,
        "mkdir /tmp/p && cd /tmp/p && npm install --no-audit --no-fund --no-update-notifier express@4.19.2",
    );
}

/// Debian 12's cargo (1.65) reaches crates.io's sparse index (index.crates.io) only behind
/// `-Z sparse-registry`; without it, it clones the git index from GitHub, which the cache does not
/// intercept.
const CARGO_FETCH: &str = "mkdir -p /tmp/p/src && cd /tmp/p && touch src/lib.rs && \
    printf '[package]\\nname = \"p\"\\nversion = \"0.1.0\"\\nedition = \"2021\"\\n[dependencies]\\ncfg-if = \"=1.0.0\"\\nitoa = \"=1.0.11\"\\nmemchr = \"=2.7.4\"\\n' > Cargo.toml && \
    RUSTC_BOOTSTRAP=1 CARGO_REGISTRIES_CRATES_IO_PROTOCOL=sparse cargo -Z sparse-registry fetch";

#[test]
fn cargo_repeat_job_is_served_from_the_cache() {
    let image = client_image("cargo", &["cargo"]);
    repeat_job_is_served_from_the_cache("cargo", &image, CARGO_FETCH);
}

/// Five jobs at once, each `apt-get update` then a `pip download`: every job succeeds, and each URL
/// is downloaded in full once (misses = requests / 5; the others are hits, shared fills, or 304s).
/// The jobs wait for a common start time, so that their requests overlap the fills in flight.
#[test]
fn five_concurrent_jobs_make_one_upstream_fetch_per_url() {
    let _serial = serial();
    let apt = client_image("apt", &[]);
    let pip = client_image("pip", &["python3-pip"]);
    let cache = RealCache::start();
    for (eco, image, script) in [
        ("apt", apt.as_str(), "apt-get update"),
        ("pypi", pip.as_str(), "pip download --no-cache-dir --no-deps -d /tmp/d requests==2.32.3 urllib3==2.2.2"),
    ] {
        let before = cache.counts(eco);
        // The five containers start one after the other; they all begin fetching at one moment.
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 20;
        let script = format!("t=$(({start} - $(date +%s))); if [ $t -gt 0 ]; then sleep $t; fi; {script}");
        std::thread::scope(|s| {
            let jobs: Vec<_> = (0..5).map(|_| s.spawn(|| cache.job(image, &script))).collect();
            for j in jobs {
                j.join().expect("job thread");
            }
        });
        cache.settle();
        let c = cache.counts(eco).minus(&before);
        eprintln!("REAL-CLIENT {eco} 5 concurrent jobs: {c:?}");
        assert_eq!(c.requests() % 5, 0, "every job made the same requests: {c:?}");
        assert_eq!(c.miss, c.requests() / 5, "one full download per URL: {c:?}");
        assert_eq!((c.bypass, c.stale), (0, 0), "{c:?}");
    }
}
