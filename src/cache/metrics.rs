//! Cache counters, split by HTTP and HTTPS and by package ecosystem, rendered in Prometheus' text
//! format.
//!
//! Plain atomics: the hit path increments four of them, nothing else. The per-ecosystem series
//! (`ctproxy_cache_ecosystem_*`) are what an operator reads to see whether a client's repeat jobs
//! come from the cache: `outcome="revalidated"` counts upstream 304s, `outcome="miss"` full
//! downloads (a stale entry whose revalidation returned a new body counts as a miss too).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::rules::{Ecosystem, Scheme};

/// What a request turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Revalidated,
    /// Served from a fill another request started.
    Coalesced,
    /// Passed through without the cache.
    Bypass,
    /// Stale entry served because the origin failed.
    Stale,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [Outcome::Hit, Outcome::Miss, Outcome::Revalidated, Outcome::Coalesced, Outcome::Bypass, Outcome::Stale];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Revalidated => "revalidated",
            Outcome::Coalesced => "coalesced",
            Outcome::Bypass => "bypass",
            Outcome::Stale => "stale",
        }
    }

    /// The answer came from the cache's storage (or a shared fill), not from a fetch of its own.
    pub fn from_cache(self) -> bool {
        matches!(self, Outcome::Hit | Outcome::Revalidated | Outcome::Coalesced | Outcome::Stale)
    }
}

#[derive(Default)]
struct PerScheme {
    requests: [AtomicU64; 6],
    bytes_from_cache: AtomicU64,
    bytes_from_upstream: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    http: PerScheme,
    https: PerScheme,
    /// The same counts by [`Ecosystem::index`] (both schemes together).
    ecosystems: [PerScheme; Ecosystem::ALL.len()],
    /// Stored entries downloaded in full again (a revalidation answered 200, counted in `miss`
    /// too), by ecosystem: `[changed, no_validator]`. `no_validator`: the origin sent neither
    /// `ETag` nor `Last-Modified`, so no conditional request was possible and every revalidation
    /// of the entry is a full download.
    refetches: [[AtomicU64; 2]; Ecosystem::ALL.len()],
    pub refused: AtomicU64,
}

fn idx(o: Outcome) -> usize {
    Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0)
}

impl Metrics {
    fn of(&self, s: Scheme) -> &PerScheme {
        match s {
            Scheme::Http => &self.http,
            Scheme::Https => &self.https,
        }
    }

    fn of_ecosystem(&self, e: Ecosystem) -> &PerScheme {
        &self.ecosystems[e.index() % Ecosystem::ALL.len()]
    }

    pub fn request(&self, s: Scheme, e: Ecosystem, o: Outcome) {
        for p in [self.of(s), self.of_ecosystem(e)] {
            p.requests[idx(o)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A stored entry was downloaded in full again; `conditional`: it was asked with a validator
    /// (so the body changed), else the origin had given it none.
    pub fn refetch(&self, e: Ecosystem, conditional: bool) {
        self.refetches[e.index() % Ecosystem::ALL.len()][usize::from(!conditional)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes(&self, s: Scheme, e: Ecosystem, from_cache: bool, n: u64) {
        for p in [self.of(s), self.of_ecosystem(e)] {
            if from_cache { &p.bytes_from_cache } else { &p.bytes_from_upstream }.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The Prometheus exposition text.
    pub fn render(&self, stored_bytes: u64, entries: usize, fills: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP ctproxy_cache_requests_total Requests to the cache by scheme and outcome.");
        let _ = writeln!(out, "# TYPE ctproxy_cache_requests_total counter");
        for (name, p) in [("http", &self.http), ("https", &self.https)] {
            for o in Outcome::ALL {
                let _ = writeln!(
                    out,
                    "ctproxy_cache_requests_total{{scheme=\"{name}\",outcome=\"{}\"}} {}",
                    o.as_str(),
                    p.requests[idx(o)].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# HELP ctproxy_cache_bytes_total Body bytes sent to clients, by where they came from.");
        let _ = writeln!(out, "# TYPE ctproxy_cache_bytes_total counter");
        for (name, p) in [("http", &self.http), ("https", &self.https)] {
            let _ = writeln!(
                out,
                "ctproxy_cache_bytes_total{{scheme=\"{name}\",source=\"cache\"}} {}",
                p.bytes_from_cache.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "ctproxy_cache_bytes_total{{scheme=\"{name}\",source=\"upstream\"}} {}",
                p.bytes_from_upstream.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ctproxy_cache_ecosystem_requests_total Requests to the cache by package ecosystem and outcome.");
        let _ = writeln!(out, "# TYPE ctproxy_cache_ecosystem_requests_total counter");
        for e in Ecosystem::ALL {
            let p = self.of_ecosystem(e);
            for o in Outcome::ALL {
                let n = p.requests[idx(o)].load(Ordering::Relaxed);
                let _ = writeln!(out, "ctproxy_cache_ecosystem_requests_total{{ecosystem=\"{e}\",outcome=\"{}\"}} {n}", o.as_str());
            }
        }
        let _ = writeln!(
            out,
            "# HELP ctproxy_cache_ecosystem_bytes_total Body bytes sent to clients by package ecosystem and where they came from."
        );
        let _ = writeln!(out, "# TYPE ctproxy_cache_ecosystem_bytes_total counter");
        for e in Ecosystem::ALL {
            let p = self.of_ecosystem(e);
            for (source, n) in [("cache", &p.bytes_from_cache), ("upstream", &p.bytes_from_upstream)] {
                let _ = writeln!(
                    out,
                    "ctproxy_cache_ecosystem_bytes_total{{ecosystem=\"{e}\",source=\"{source}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ctproxy_cache_refetches_total Stored entries downloaded in full again on revalidation, by ecosystem and why."
        );
        let _ = writeln!(out, "# TYPE ctproxy_cache_refetches_total counter");
        for e in Ecosystem::ALL {
            let r = &self.refetches[e.index()];
            for (i, reason) in ["changed", "no-validator"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ctproxy_cache_refetches_total{{ecosystem=\"{e}\",reason=\"{reason}\"}} {}",
                    r[i].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# HELP ctproxy_cache_refused_total Requests refused (host not intercepted, Host/SNI mismatch).");
        let _ = writeln!(out, "# TYPE ctproxy_cache_refused_total counter");
        let _ = writeln!(out, "ctproxy_cache_refused_total {}", self.refused.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP ctproxy_cache_stored_bytes Bytes held by the cache store.");
        let _ = writeln!(out, "# TYPE ctproxy_cache_stored_bytes gauge");
        let _ = writeln!(out, "ctproxy_cache_stored_bytes {stored_bytes}");
        let _ = writeln!(out, "# HELP ctproxy_cache_entries Entries held by the cache store.");
        let _ = writeln!(out, "# TYPE ctproxy_cache_entries gauge");
        let _ = writeln!(out, "ctproxy_cache_entries {entries}");
        let _ = writeln!(out, "# HELP ctproxy_cache_fills_in_flight Upstream fetches being written to the cache.");
        let _ = writeln!(out, "# TYPE ctproxy_cache_fills_in_flight gauge");
        let _ = writeln!(out, "ctproxy_cache_fills_in_flight {fills}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecosystem_series_follow_prometheus_conventions() {
        let m = Metrics::default();
        m.request(Scheme::Http, Ecosystem::Apt, Outcome::Revalidated);
        m.request(Scheme::Https, Ecosystem::Pypi, Outcome::Hit);
        m.bytes(Scheme::Https, Ecosystem::Pypi, true, 1000);
        m.bytes(Scheme::Http, Ecosystem::Apt, false, 7);
        m.refetch(Ecosystem::Pypi, false);
        let text = m.render(0, 0, 0);
        for line in [
            "ctproxy_cache_ecosystem_requests_total{ecosystem=\"apt\",outcome=\"revalidated\"} 1",
            "ctproxy_cache_ecosystem_requests_total{ecosystem=\"pypi\",outcome=\"hit\"} 1",
            "ctproxy_cache_ecosystem_requests_total{ecosystem=\"npm\",outcome=\"miss\"} 0",
            "ctproxy_cache_ecosystem_bytes_total{ecosystem=\"pypi\",source=\"cache\"} 1000",
            "ctproxy_cache_ecosystem_bytes_total{ecosystem=\"apt\",source=\"upstream\"} 7",
            "ctproxy_cache_requests_total{scheme=\"https\",outcome=\"hit\"} 1",
            "ctproxy_cache_bytes_total{scheme=\"http\",source=\"upstream\"} 7",
            "# TYPE ctproxy_cache_ecosystem_requests_total counter",
            "ctproxy_cache_refetches_total{ecosystem=\"pypi\",reason=\"no-validator\"} 1",
            "ctproxy_cache_refetches_total{ecosystem=\"pypi\",reason=\"changed\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
