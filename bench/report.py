"""Turns bench/run's results (one JSON object per measurement) into the tables of docs/PERFORMANCE.md.

    python3 bench/report.py RESULTS.jsonl [MARKDOWN_FILE]

Every figure is the median over the rounds of the per-round figure (itself a p50, p99, rate...), except
`docker run --rm`, whose hyperfine runs of all rounds are pooled. Machine facts come from BENCH_*
environment variables set by bench/run.
"""

import datetime
import json
import os
import random
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
md_path = sys.argv[2] if len(sys.argv) > 2 else ""
env = os.environ.get


def values(metric, side, key):
    return [r["r"][key] for r in rows if r["metric"] == metric and r["side"] == side]


def med(metric, side, key):
    v = values(metric, side, key)
    return statistics.median(v) if v else None


def per_request(metric, side, proc, what="cpu_ns", scale=1000):
    """Median over rounds of a process's CPU microseconds (or times scheduled in) per request sent."""
    v = [r[what][proc] / scale / r["r"]["sent"] for r in rows if r["metric"] == metric and r["side"] == side and proc in r.get(what, {})]
    return statistics.median(v) if v else None


def fmt(x, unit, digits=1):
    if x is None:
        return "—"
    return f"{x:,.{digits}f} {unit}"


out = []
table = [
    "| measurement | direct | ctproxy | ratio | ctproxy − direct | ctproxy, access log off | socat (bare relay) | target |",
    "|---|---:|---:|---:|---:|---:|---:|---|",
]
verdicts = {}


jobs_only = env("BENCH_JOBS_ONLY", "0") == "1"


def latency_row(label, metric, key, target_us=None):
    d, p, n, s = (med(metric, side, key) for side in ("direct", "proxy", "nolog", "socat"))
    if d is None or p is None:
        return
    added = p - d
    target = ""
    if target_us is not None:
        ok = added < target_us
        verdicts[label] = ok
        target = f"added < {target_us} µs: **{'met' if ok else 'MISSED'}**"
    extra = lambda x: f"{fmt(x, 'µs')} ({x - d:+.0f})" if x is not None else "—"
    table.append(f"| {label} | {fmt(d, 'µs')} | {fmt(p, 'µs')} | {p / d:.2f} | {added:+.1f} µs | {extra(n)} | {extra(s)} | {target} |")


def paired_ratio(metric, side, key):
    """Median of side/direct over the measurements taken next to each other (same round, same pass)."""
    pairs = list(zip(values(metric, "direct", key), values(metric, side, key)))
    return statistics.median(x / d for d, x in pairs) if pairs else None


def rate_row(label, metric, key, unit, target_ratio=None, with_nolog=True):
    d, p, n, s = (med(metric, side, key) for side in ("direct", "proxy", "nolog", "socat"))
    if d is None or p is None:
        return
    ratio = paired_ratio(metric, "proxy", key)
    target = ""
    if target_ratio is not None:
        ok = ratio >= target_ratio
        verdicts[label] = ok
        target = f"≥ {target_ratio:.0%} of direct: **{'met' if ok else 'MISSED'}** ({ratio:.1%})"
    extra = lambda x, side: f"{fmt(x, unit, 0)} ({paired_ratio(metric, side, key):.0%})" if x is not None else "—"
    table.append(
        f"| {label} | {fmt(d, unit, 0)} | {fmt(p, unit, 0)} | {ratio:.3f} | {p - d:+,.0f} {unit} "
        f"| {extra(n, 'nolog') if with_nolog else '—'} | {extra(s, 'socat')} | {target} |"
    )


latency_row("GET /_ping p50 (1 keep-alive connection, sequential)", "ping_latency", "p50_us", 50)
latency_row("GET /_ping p99", "ping_latency", "p99_us")
list_bytes = med("list_latency", "direct", "body_bytes")
latency_row(f"GET /v1.41/containers/json p50 (1 connection; {list_bytes or 0:,.0f}-byte answer)", "list_latency", "p50_us", 50)
latency_row("GET /v1.41/containers/json p99", "list_latency", "p99_us")
rate_row("GET /_ping req/s, 32 keep-alive connections", "ping_rps_c32", "rps", "req/s")
rate_row("GET /_ping req/s, 64 keep-alive connections", "ping_rps_c64", "rps", "req/s")

mb = float(env("BENCH_MB", "200"))
for r in rows:
    if r["metric"] == "exec_cli":
        r["r"]["mb_per_s"] = mb / r["r"]["seconds"]
rate_row(f"exec stream, raw hijack ({mb:.0f} MB through `cat`, both ways)", "exec_raw", "mb_per_s", "MB/s", 0.9, False)
rate_row(f"`docker exec -i … cat` ({mb:.0f} MB, CLI included)", "exec_cli", "mb_per_s", "MB/s", 0.9, False)

# docker run --rm: pool all hyperfine runs; bootstrap a 95% interval for the ratio of medians.
rd = [t for r in rows if r["metric"] == "run_rm" and r["side"] == "direct" for t in r["r"]["times"]]
rp = [t for r in rows if r["metric"] == "run_rm" and r["side"] == "proxy" for t in r["r"]["times"]]
run_ci = None
if rd and rp:
    d, p = statistics.median(rd) * 1000, statistics.median(rp) * 1000
    rng = random.Random(1)
    boots = sorted(
        statistics.median(rng.choices(rp, k=len(rp))) / statistics.median(rng.choices(rd, k=len(rd))) for _ in range(2000)
    )
    run_ci = (boots[50], boots[1949])
    ok = p / d <= 1.03
    verdicts["run"] = ok
    table.append(
        f"| `docker run --rm ctproxy-test/busybox true` wall time ({len(rd)} + {len(rp)} runs) | {fmt(d, 'ms')} | {fmt(p, 'ms')} | {p / d:.3f} "
        f"| {p - d:+.1f} ms | — | — | within 3%: **{'met' if ok else 'MISSED'}** ({p / d - 1:+.1%}; 95% CI of the ratio {run_ci[0]:.3f}–{run_ci[1]:.3f}) |"
    )

# Policy pipeline: the policy listener against ctproxy's transparent one.
cd_, cp, cpol, cs = (med("create_latency", side, "p50_us") for side in ("direct", "proxy", "policy", "socat"))
policy = [
    "| `POST /v1.41/containers/create` p50 (404: no such image) | latency | vs direct |",
    "|---|---:|---:|",
    f"| direct | {fmt(cd_, 'µs')} | |",
    f"| socat | {fmt(cs, 'µs')} | {cs - cd_:+.1f} µs |" if cs is not None else "| socat | — | |",
    f"| ctproxy, transparent listener | {fmt(cp, 'µs')} | {cp - cd_:+.1f} µs |",
    f"| ctproxy, `conservative` + `inject` listener | {fmt(cpol, 'µs')} | {cpol - cd_:+.1f} µs ({cpol - cp:+.1f} µs over transparent) |",
] if None not in (cd_, cp, cpol) else []

# Job sockets (a namespace plus `conservative` + `inject`), against direct and the relay, same run.
jobs = [
    "| job socket, 1 keep-alive connection | direct | relay (transparent) | job socket | job − direct | job − relay | job CPU per request | target |",
    "|---|---:|---:|---:|---:|---:|---:|---|",
]


def job_row(label, metric, relay_side, target_us):
    d, r, j = (med(metric, side, "p50_us") for side in ("direct", relay_side, "job"))
    if d is None or j is None:
        return
    added = j - d
    ok = added <= target_us
    verdicts[f"job {label}"] = ok
    cpu_us = per_request(metric, "job", "job")
    jobs.append(
        f"| {label} | {fmt(d, 'µs')} | {fmt(r, 'µs')} | {fmt(j, 'µs')} | {added:+.1f} µs | {j - r:+.1f} µs "
        f"| {fmt(cpu_us, 'µs')} | added ≤ +{target_us} µs: **{'met' if ok else 'MISSED'}** |"
    )


job_row("`GET /_ping` p50", "ping_latency", "proxy", 50)
job_bytes = med("job_list_latency", "job", "body_bytes")
if job_bytes is not None:
    job_row(
        f"`GET /v1.41/containers/json` p50 (the job's one container, {job_bytes:,.0f} bytes; direct and relay asked with the namespace's label filter)",
        "job_list_latency",
        "proxy",
        70,
    )
job_row("`POST /v1.41/containers/create` p50 (404: no such image), relay column: the `conservative` + `inject` listener", "create_latency", "policy", 100)
# 500 containers in 10 namespaces: the job socket's 50 against the daemon's socket listing them all.
ns_d, ns_r, ns_j = (med("ns500_list_latency", side, "p50_us") for side in ("direct", "proxy", "job"))
if ns_d is not None and ns_j is not None:
    ratio = ns_j / ns_d
    ok = ratio <= 1.5
    verdicts["job ns500"] = ok
    b = lambda side: med("ns500_list_latency", side, "body_bytes")
    jobs.append(
        f"| `GET /v1.41/containers/json?all=1`, 500 containers in 10 namespaces, p50 (direct: all {env('BENCH_NS500_DIRECT', '?')} on the daemon, "
        f"{b('direct'):,.0f} bytes; relay: the job's 50 by label filter, {b('proxy'):,.0f} bytes; job socket: its 50, {b('job'):,.0f} bytes) "
        f"| {fmt(ns_d, 'µs')} | {fmt(ns_r, 'µs')} | {fmt(ns_j, 'µs')} | {ns_j - ns_d:+.1f} µs ({ratio:.2f}×) | {ns_j - ns_r:+.1f} µs "
        f"| {fmt(per_request('ns500_list_latency', 'job', 'job'), 'µs')} | ≤ 1.5× direct: **{'met' if ok else 'MISSED'}** ({ratio:.2f}×) |"
    )
job_added_by_round = [j - d for d, j in zip(values("ping_latency", "direct", "p50_us"), values("ping_latency", "job", "p50_us"))]

# CPU per request, far steadier than latency on a shared machine.
cpu = [
    "| per request (all threads, median over rounds) | ctproxy | ctproxy, access log off | dockerd, direct | dockerd, via ctproxy |",
    "|---|---:|---:|---:|---:|",
]
for label, metric in (("GET /_ping, 1 connection", "ping_latency"), ("GET /_ping, 32 connections", "ping_rps_c32"),
                      ("GET /v1.41/containers/json, 1 connection", "list_latency")):
    for what, unit, scale, digits in (("cpu_ns", "µs", 1000, 1), ("slices", "", 1, 2)):
        name = "CPU time" if what == "cpu_ns" else "times scheduled in"
        vals = (per_request(metric, "proxy", "proxy", what, scale), per_request(metric, "nolog", "nolog", what, scale),
                per_request(metric, "direct", "dockerd", what, scale), per_request(metric, "proxy", "dockerd", what, scale))
        cpu.append(f"| {label}: {name} | " + " | ".join(fmt(v, unit, digits).strip() for v in vals) + " |")
stream_cpu = [r["cpu_ns"]["proxy"] / 1e9 / (r["r"]["bytes"] / 1e9) for r in rows if r["metric"] == "exec_raw" and r["side"] == "proxy"]
if stream_cpu:
    cpu.append(f"| exec stream, CPU time per GB each way | {statistics.median(stream_cpu):.2f} s | — | — | — |")

# Spread of the headline figure, round by round.
added_by_round = [p - d for d, p in zip(values("ping_latency", "direct", "p50_us"), values("ping_latency", "proxy", "p50_us"))]
socat_by_round = [s - d for d, s in zip(values("ping_latency", "direct", "p50_us"), values("ping_latency", "socat", "p50_us"))]
exec_by_round = {
    m: [p / d for d, p in zip(values(m, "direct", "mb_per_s"), values(m, "proxy", "mb_per_s"))] for m in ("exec_raw", "exec_cli")
}

rss = [int(x) / 1024 for x in env("BENCH_RSS", "0 0 0").split()]
lines = env("BENCH_LOGLINES", "? ?").split()
out.append(
    f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {env('BENCH_COMMIT', '?')}; "
    f"`bench/run --rounds {env('BENCH_ROUNDS', '?')} --runs {env('BENCH_RUNS', '?')}{' --jobs-only' if jobs_only else ''}`, {env('BENCH_SECONDS', '?')} s of measurements."
)
out.append(f"- Machine: {env('BENCH_CPU', '?')}, kernel {env('BENCH_KERNEL', '?')}, dockerd {env('BENCH_DOCKERD', '?')}.")
out.append(f"- Load average (1, 5, 15 min) at start / end: {env('BENCH_LOAD', '?')}.")
out.append("")
if not jobs_only:
    out.extend(table)
    out.append("")
    out.append(
        "Single-connection latencies were measured with the sides' requests interleaved one by one in a shuffled order. "
        "Latency and rate figures are medians over the rounds. Latency ratios are ctproxy / direct of those medians; "
        "rate ratios (and the percentages in parentheses) are medians of the ratios of measurements taken side by side "
        "(same round; for streams, same pass). The access-log-off and socat columns show, in parentheses, the difference "
        "from direct (latency) or the share of direct (rates)."
    )
    out.append(
        f"ctproxy − direct for the `/_ping` p50, round by round: {', '.join(f'{x:+.0f}' for x in added_by_round)} µs "
        f"(socat − direct: {', '.join(f'{x:+.0f}' for x in socat_by_round)} µs)."
    )
    out.append(
        "Exec stream ratio (ctproxy / direct), pass by pass: raw hijack "
        + ", ".join(f"{x:.2f}" for x in exec_by_round["exec_raw"])
        + "; docker CLI "
        + ", ".join(f"{x:.2f}" for x in exec_by_round["exec_cli"])
        + "."
    )
    out.append("")
    out.extend(cpu)
    out.append("")
if policy:
    out.extend(policy)
    out.append("")
if len(jobs) > 2:
    out.extend(jobs)
    out.append("")
    out.append(
        "Job socket − direct for the `/_ping` p50, round by round: " + ", ".join(f"{x:+.0f}" for x in job_added_by_round) + " µs. "
        "Job CPU per request: the job host's CPU time (all threads) over the requests its socket was sent (warm-up included)."
    )
    out.append("")
out.append(
    f"ctproxy's resident memory: {rss[0]:.1f} MiB after start, {rss[1]:.1f} MiB at the end, {rss[2]:.1f} MiB peak. "
    f"Access-log lines written: {lines[0]} (the access-log-off instance: {lines[1]})."
)
text = "\n".join(out)
print(text)
if md_path:
    with open(md_path, "w") as f:
        f.write(text + "\n")
