"""Turns bench/cache's results (one JSON object per measurement) into the cache tables of docs/PERFORMANCE.md.

    python3 bench/cache_report.py RESULTS.jsonl [MARKDOWN_FILE]

Rates are medians over the rounds; ratios are medians of the per-round ratios ctproxy / nginx (the two
sides were measured back to back in each round). CPU time is the cache process's (nginx: master and
workers), per request or per MB served. Machine facts come from BENCH_* environment variables set by
bench/cache.
"""

import datetime
import json
import os
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
md_path = sys.argv[2] if len(sys.argv) > 2 else ""
env = os.environ.get
SIDES = ("nginx", "ctproxy")


def runs(metric, side, scheme):
    return [r for r in rows if r["metric"] == metric and r["side"] == side and r.get("scheme") == scheme]


def rate(r, metric):
    """Requests/s (small object) or MB/s (10^6 bytes, large object) of one wrk run."""
    s = r["r"]["us"] / 1e6
    return r["r"]["requests"] / s if metric == "small_rps" else r["r"]["bytes"] / 1e6 / s


def cpu(r, metric):
    """CPU µs per request (small object) or per MB (large object) of one wrk run."""
    us = r["cpu_ns"] / 1000
    return us / max(r["r"]["requests"], 1) if metric == "small_rps" else us / max(r["r"]["bytes"] / 1e6, 1e-9)


def med(v):
    return statistics.median(v) if v else None


def fmt(x, digits=0, unit=""):
    return "—" if x is None else f"{x:,.{digits}f}{unit}"


def ratio(metric, scheme, f):
    """Median over rounds of ctproxy / nginx for f, pairing the runs of the same round."""
    n, c = runs(metric, "nginx", scheme), runs(metric, "ctproxy", scheme)
    v = [f(b, metric) / f(a, metric) for a, b in zip(n, c) if f(a, metric)]
    return f"{med(v):.2f}" if v else "—"


out = []
skipped = env("BENCH_SKIPPED", "")
out.append(
    f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {env('BENCH_COMMIT', '?')}; "
    f"`bench/cache --rounds {env('BENCH_ROUNDS', '?')} --duration {env('BENCH_DURATION', '?')}`, "
    f"{env('BENCH_SECONDS', '?')} s of measurements."
)
out.append(f"- Machine: {env('BENCH_CPU', '?')}, kernel {env('BENCH_KERNEL', '?')}; {env('BENCH_NGINX', '?')}, {env('BENCH_WRK', '?')}; objects and caches on {env('BENCH_STORE', '?')}.")
out.append(f"- Load average (1, 5, 15 min) at start / end: {env('BENCH_LOAD', '?')}.")
if skipped:
    out.append(f"- **ctproxy not measured**: {skipped}.")
out.append("")
out.append("| cache hits (wrk -t1) | nginx | ctproxy | ctproxy / nginx |")
out.append("|---|---:|---:|---:|")
checks = []
for metric, label, conns, unit, cpu_unit in (("small_rps", "10 KB", 32, "req/s", "µs per request"), ("big_mbps", "100 MB", 4, "MB/s", "µs per MB")):
    for scheme in ("http", "https"):
        rates = [med([rate(r, metric) for r in runs(metric, s, scheme)]) for s in SIDES]
        cpus = [med([cpu(r, metric) for r in runs(metric, s, scheme)]) for s in SIDES]
        name = f"{label}, {scheme.upper()}, {conns} connections"
        out.append(f"| {name}: {unit} | {fmt(rates[0])} | {fmt(rates[1])} | {ratio(metric, scheme, rate)} |")
        out.append(f"| {name}: CPU {cpu_unit} | {fmt(cpus[0], 1)} | {fmt(cpus[1], 1)} | {ratio(metric, scheme, cpu)} |")
        if metric == "small_rps":
            p99 = [med([r["r"]["p99_us"] / 1000 for r in runs(metric, s, scheme)]) for s in SIDES]
            out.append(f"| {name}: p99 latency | {fmt(p99[0], 2, ' ms')} | {fmt(p99[1], 2, ' ms')} | |")
        for s in SIDES:
            errors = sum(r["r"]["errors"] for r in runs(metric, s, scheme))
            origin = sum(r["origin_requests"] for r in runs(metric, s, scheme))
            if errors or origin:
                checks.append(f"{s}, {name}: {errors} wrk errors (connect, read, write, timeout, non-2xx), {origin} requests reached the origin")
out.append("")
out.append(
    "Rates and CPU figures are medians over the rounds; ratios are medians of the per-round ratios (above 1: ctproxy "
    "serves more, or spends more CPU). CPU is the cache process's own time (nginx: master and workers), read from "
    "/proc/PID/task/*/schedstat around each run; wrk shares the machine."
)
out.append("")
out.append(
    "Every request was a cache hit: no wrk errors and no request reached the origin during the measurements."
    if not checks
    else "**Not all requests were clean hits:** " + "; ".join(checks) + "."
)

hs = {r["side"]: r for r in rows if r["metric"] == "handshake"}
if hs:
    out.append("")
    out.append("| full TLS handshake, no resumption (Python client, median) | time |")
    out.append("|---|---:|")
    for side, label in (("nginx", "nginx"), ("ctproxy", "ctproxy, a server name it has a certificate for")):
        if side in hs:
            out.append(f"| {label} ({hs[side]['tls']}) | {fmt(med(hs[side]['warm_us']), 0, ' µs')} |")
    mint = hs.get("ctproxy-mint")
    if mint:
        first, again = med(mint["first_us"]), med(mint["again_us"])
        out.append(f"| ctproxy, a server name seen for the first time ({len(mint['first_us'])} names) | {fmt(first, 0, ' µs')} |")
        out.append(f"| ctproxy, the same names right after | {fmt(again, 0, ' µs')} |")
        out.append(f"| minting a certificate (difference of the medians) | {fmt(first - again, 0, ' µs')} |")

text = "\n".join(out)
print(text)
if md_path:
    with open(md_path, "w") as f:
        f.write(text + "\n")
