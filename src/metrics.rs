//! Server-wide metrics of `ctproxy serve`: jobs, executor stages, cleanups, policy refusals and job
//! socket requests, rendered in Prometheus' text format on `/metrics` (next to the cache's).
//!
//! The same mechanism as `cache::metrics`: plain atomics (a mutex only for the label sets that are
//! not known in advance, the policy names), rendered by hand. One registry per process, reached
//! with [`server`]: the counters are touched deep in the request path (a policy refusal), where
//! threading a handle through would change every layer for a counter; only `ctproxy serve`
//! serves it. Like `config` and `telemetry`, every layer may use it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// The executor stages whose durations are recorded (`ctproxy executor prepare|run|cleanup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Prepare,
    Run,
    Cleanup,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Prepare, Stage::Run, Stage::Cleanup];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare",
            Stage::Run => "run",
            Stage::Cleanup => "cleanup",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the stage duration buckets, in seconds: a prepare that pulls images takes
/// minutes, a run stage anything up to the job's timeout.
const BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// A Prometheus histogram: cumulative counts rendered from per-bucket counts.
#[derive(Default)]
struct Histogram {
    /// Per bucket of [`BUCKETS`], then `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_owned(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// What a job's cleanup removed, by kind of object.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanupCounts {
    pub containers: usize,
    pub networks: usize,
    pub volumes: usize,
    pub images: usize,
}

#[derive(Default)]
pub struct ServerMetrics {
    jobs_running: AtomicI64,
    stages: [Histogram; Stage::ALL.len()],
    /// Objects removed by cleanups: containers, networks, volumes, images.
    removed: [AtomicU64; 4],
    /// Objects cleanups found but could not remove (left for the reaper), by the same kinds.
    left: [AtomicU64; 4],
    /// Cleanups by result: `[complete, incomplete]` (incomplete: something was left for the
    /// reaper, which retries).
    cleanups: [AtomicU64; 2],
    /// Refusals by (policy, status).
    refusals: Mutex<BTreeMap<(String, u16), u64>>,
    job_socket_requests: AtomicU64,
}

const KINDS: [&str; 4] = ["container", "network", "volume", "image"];

static SERVER: LazyLock<ServerMetrics> = LazyLock::new(ServerMetrics::default);

/// The process's registry.
pub fn server() -> &'static ServerMetrics {
    &SERVER
}

impl ServerMetrics {
    /// Sets the number of live jobs (their listeners).
    pub fn set_jobs_running(&self, n: usize) {
        self.jobs_running.store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub fn stage(&self, stage: Stage, took: Duration) {
        self.stages[stage.index()].observe(took);
    }

    /// Counts what a cleanup removed and what it left; `complete`: nothing of the job's was left
    /// behind.
    pub fn cleanup(&self, removed: CleanupCounts, left: CleanupCounts, complete: bool) {
        for (counters, counts) in [(&self.removed, removed), (&self.left, left)] {
            for (i, n) in [counts.containers, counts.networks, counts.volumes, counts.images].into_iter().enumerate() {
                counters[i].fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        self.cleanups[usize::from(!complete)].fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused by `policy` (a policy name, or `namespace` for a namespace's refusal).
    pub fn refusal(&self, policy: &str, status: u16) {
        let mut m = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((policy.to_owned(), status)).or_default() += 1;
    }

    pub fn job_socket_request(&self) {
        self.job_socket_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP ctproxy_jobs_running Jobs with a live job socket.");
        let _ = writeln!(out, "# TYPE ctproxy_jobs_running gauge");
        let _ = writeln!(out, "ctproxy_jobs_running {}", self.jobs_running.load(Ordering::Relaxed));
        let name = "ctproxy_executor_stage_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Wall time of the executor's stages, as the stages report it.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for s in Stage::ALL {
            self.stages[s.index()].render(&mut out, name, &format!("stage=\"{}\"", s.as_str()));
        }
        let _ = writeln!(out, "# HELP ctproxy_job_cleanup_removed_total Objects removed by job cleanups, by kind.");
        let _ = writeln!(out, "# TYPE ctproxy_job_cleanup_removed_total counter");
        for (i, kind) in KINDS.iter().enumerate() {
            let _ = writeln!(out, "ctproxy_job_cleanup_removed_total{{kind=\"{kind}\"}} {}", self.removed[i].load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP ctproxy_job_cleanup_left_total Objects job cleanups found but could not remove (left for the reaper), by kind."
        );
        let _ = writeln!(out, "# TYPE ctproxy_job_cleanup_left_total counter");
        for (i, kind) in KINDS.iter().enumerate() {
            let _ = writeln!(out, "ctproxy_job_cleanup_left_total{{kind=\"{kind}\"}} {}", self.left[i].load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "# HELP ctproxy_job_cleanups_total Job cleanups by result (incomplete: objects were left for the reaper).");
        let _ = writeln!(out, "# TYPE ctproxy_job_cleanups_total counter");
        for (i, result) in ["complete", "incomplete"].iter().enumerate() {
            let _ = writeln!(out, "ctproxy_job_cleanups_total{{result=\"{result}\"}} {}", self.cleanups[i].load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "# HELP ctproxy_refusals_total Requests refused, by policy (or namespace) and status.");
        let _ = writeln!(out, "# TYPE ctproxy_refusals_total counter");
        for ((policy, status), n) in self.refusals.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "ctproxy_refusals_total{{policy=\"{}\",status=\"{status}\"}} {n}", escape(policy));
        }
        let _ = writeln!(out, "# HELP ctproxy_job_socket_requests_total Requests received on job sockets.");
        let _ = writeln!(out, "# TYPE ctproxy_job_socket_requests_total counter");
        let _ = writeln!(out, "ctproxy_job_socket_requests_total {}", self.job_socket_requests.load(Ordering::Relaxed));
        out
    }
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_series() {
        let m = ServerMetrics::default();
        m.set_jobs_running(2);
        m.stage(Stage::Prepare, Duration::from_millis(300));
        m.cleanup(CleanupCounts { containers: 3, ..Default::default() }, CleanupCounts { networks: 1, ..Default::default() }, false);
        m.refusal("run\"ner", 403);
        m.job_socket_request();
        let text = m.render();
        for line in [
            "# TYPE ctproxy_jobs_running gauge",
            "ctproxy_jobs_running 2",
            "# TYPE ctproxy_executor_stage_duration_seconds histogram",
            "ctproxy_executor_stage_duration_seconds_bucket{stage=\"prepare\",le=\"0.25\"} 0",
            "ctproxy_executor_stage_duration_seconds_bucket{stage=\"prepare\",le=\"0.5\"} 1",
            "ctproxy_executor_stage_duration_seconds_bucket{stage=\"prepare\",le=\"+Inf\"} 1",
            "ctproxy_executor_stage_duration_seconds_count{stage=\"prepare\"} 1",
            "ctproxy_executor_stage_duration_seconds_sum{stage=\"prepare\"} 0.3",
            "ctproxy_job_cleanup_removed_total{kind=\"container\"} 3",
            "ctproxy_job_cleanup_left_total{kind=\"network\"} 1",
            "ctproxy_job_cleanups_total{result=\"incomplete\"} 1",
            "ctproxy_refusals_total{policy=\"run\\\"ner\",status=\"403\"} 1",
            "ctproxy_job_socket_requests_total 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
