#!/usr/bin/env python3
"""How far Prometheus' histogram_quantile(0.95, ...) lands from the true p95
for a bucket set, for log-normal query latencies (the usual shape of
database latency) whose true p95 sweeps 1 ms to 10 s.

    scripts/bucket-error.py                      # the default and the full set
    scripts/bucket-error.py 0.001 0.01 0.1 1     # any set, in seconds
    scripts/bucket-error.py --prometheus [BINARY]
        # measured end to end: a real tenantwatch (default
        # target/release/tenantwatch) and a real Prometheus

With --prometheus it sends each of 80 tenants 20,000 log-normal latencies
(true p95 from 1 ms to 10 s, sigma 0.5 and 1; fixed seed) over
POST /v1/events, lets a Prometheus started with
--enable-feature=native-histograms scrape them (protobuf, native
histograms), and compares histogram_quantile(0.95, ...) as that Prometheus
evaluates it with the p95 of the latencies sent (the event ledger); the
classic buckets' answer is computed from the same daemon's OpenMetrics
exposition with Prometheus' classic interpolation. Needs `prometheus`
(Debian's package).

For each decade of the true p95 it prints the median and worst relative
error, and the share of the decade within 10%, for spreads sigma 0.5 and 1
(the p95 is 2.3x and 5.2x the median). histogram_quantile interpolates
linearly inside a bucket, so the error grows with the ratio between bounds;
at a bound itself the answer is exact, which is why the default set has one
at the slow-query alert's 1 s threshold.
"""

import math
import sys
from statistics import NormalDist, median

DEFAULT = [0.001, 0.005, 0.025, 0.1, 0.25, 1, 5]
STORE = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def histogram_quantile(bounds, mu, sigma, q=0.95):
    dist = NormalDist(mu, sigma)
    prev_bound, prev_cdf = 0.0, 0.0
    for bound in bounds:
        cdf = dist.cdf(math.log(bound))
        if cdf >= q:
            return prev_bound + (bound - prev_bound) * (q - prev_cdf) / (cdf - prev_cdf)
        prev_bound, prev_cdf = bound, cdf
    return bounds[-1]  # the quantile is in +Inf: Prometheus answers the top bound


def report(name, bounds):
    print(f"{name}: {bounds}")
    print(f"  {'true p95':>16} {'sigma':>5} {'median err':>10} {'worst err':>9} {'within 10%':>10}")
    for sigma in (0.5, 1.0):
        for decade in range(-3, 1):
            errors = []
            for i in range(100):
                p95 = 10 ** (decade + i / 100)
                mu = math.log(p95) - 1.6449 * sigma
                errors.append(abs(histogram_quantile(bounds, mu, sigma) - p95) / p95)
            span = f"{10**decade:g}-{10 ** (decade + 1):g} s"
            within = sum(e < 0.10 for e in errors) / len(errors)
            print(
                f"  {span:>16} {sigma:>5} {median(errors):>9.0%} {max(errors):>9.0%} {within:>10.0%}"
            )


def measured(binary):
    """End to end through tenantwatch and Prometheus; see the module doc."""
    import json
    import random
    import shutil
    import socket
    import subprocess
    import tempfile
    import time
    import urllib.parse
    import urllib.request

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def get(url, accept=None):
        request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.read().decode()

    if shutil.which("prometheus") is None:
        sys.exit("bucket-error.py: prometheus is missing (apt-get install prometheus)")
    work = tempfile.mkdtemp(prefix="tw-bucket-error-")
    tw_port, prom_port = free_port(), free_port()
    with open(f"{work}/tw.toml", "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{tw_port}"\n[ingest]\nudp_listen = ""\n')
    with open(f"{work}/prometheus.yml", "w") as f:
        f.write(
            f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tw\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{tw_port}']\n"
        )
    daemon = subprocess.Popen(
        [binary, "run", "--config", f"{work}/tw.toml"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prometheus = None
    try:
        base = f"http://127.0.0.1:{tw_port}"
        for _ in range(100):
            try:
                get(f"{base}/readyz")
                break
            except OSError:
                time.sleep(0.1)
        rng = random.Random(28)
        ledger = {}
        for sigma in (0.5, 1.0):
            for i in range(40):
                p95 = 10 ** (-3 + 4 * i / 39)
                mu = math.log(p95) - 1.6449 * sigma
                tenant = f"sigma{sigma * 10:.0f}-{i:02d}"
                durations = [math.exp(rng.gauss(mu, sigma)) for _ in range(20_000)]
                ledger[tenant] = (sigma, p95, durations)
                for start in range(0, len(durations), 5_000):
                    body = "".join(
                        json.dumps({"tenant": tenant, "kind": "read", "duration_ms": d * 1000})
                        + "\n"
                        for d in durations[start : start + 5_000]
                    )
                    urllib.request.urlopen(
                        urllib.request.Request(
                            f"{base}/v1/events",
                            data=body.encode(),
                            method="POST",
                            headers={"Content-Type": "application/x-ndjson"},
                        ),
                        timeout=30,
                    ).read()
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={work}/prometheus.yml",
                f"--storage.tsdb.path={work}/data",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--enable-feature=native-histograms",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        query = (
            "histogram_quantile(0.95, sum by (tenant) (tenantwatch_tenant_query_duration_seconds))"
        )
        native = {}
        for _ in range(120):
            time.sleep(1)
            try:
                reply = json.loads(
                    get(
                        f"http://127.0.0.1:{prom_port}/api/v1/query?"
                        + urllib.parse.urlencode({"query": query})
                    )
                )
            except OSError:
                continue
            native = {r["metric"]["tenant"]: float(r["value"][1]) for r in reply["data"]["result"]}
            if len(native) == len(ledger):
                break
        if len(native) != len(ledger):
            sys.exit(
                f"bucket-error.py: Prometheus answered for {len(native)} of {len(ledger)} tenants"
            )
        classic = classic_p95s(get(f"{base}/metrics", "application/openmetrics-text"))
    finally:
        for process in (prometheus, daemon):
            if process is not None:
                process.terminate()
                process.wait()
        shutil.rmtree(work, ignore_errors=True)

    print("measured: tenantwatch + Prometheus (native histograms), 20,000 latencies per tenant")
    print(
        f"  {'true p95':>16} {'sigma':>5} {'native median':>13} {'native worst':>12}"
        f" {'classic median':>14} {'classic worst':>13}"
    )
    for sigma in (0.5, 1.0):
        for decade in range(-3, 1):
            rows = [
                (t, sorted(d)[int(0.95 * len(d))])
                for t, (s, p95, d) in ledger.items()
                if s == sigma and 10**decade <= p95 < 10 ** (decade + 1) * 1.0001
            ]
            n_err = [abs(native[t] - truth) / truth for t, truth in rows]
            c_err = [abs(classic[t] - truth) / truth for t, truth in rows]
            span = f"{10**decade:g}-{10 ** (decade + 1):g} s"
            print(
                f"  {span:>16} {sigma:>5} {median(n_err):>12.1%} {max(n_err):>12.1%}"
                f" {median(c_err):>13.0%} {max(c_err):>13.0%}"
            )
    worst = max(
        abs(native[t] - sorted(d)[int(0.95 * len(d))]) / sorted(d)[int(0.95 * len(d))]
        for t, (_, _, d) in ledger.items()
    )
    print(f"  worst native error over all {len(ledger)} tenants: {worst:.2%}")
    return worst


def classic_p95s(exposition):
    """Each tenant's p95 from the classic buckets of an OpenMetrics
    exposition, interpolated as Prometheus' histogram_quantile does."""
    import re

    buckets = {}
    pattern = re.compile(
        r"^tenantwatch_tenant_query_duration_seconds_bucket"
        r'\{le="([^"]+)",tenant="([^"]+)"\} (\S+)$'
    )
    for line in exposition.splitlines():
        m = pattern.match(line)
        if m:
            buckets.setdefault(m.group(2), []).append((float(m.group(1)), float(m.group(3))))
    out = {}
    for tenant, cumulative in buckets.items():
        cumulative.sort()
        rank = 0.95 * cumulative[-1][1]
        prev_bound, prev_count = 0.0, 0.0
        for bound, count in cumulative:
            if count >= rank:
                if math.isinf(bound):
                    out[tenant] = prev_bound
                else:
                    out[tenant] = prev_bound + (bound - prev_bound) * (rank - prev_count) / (
                        count - prev_count
                    )
                break
            prev_bound, prev_count = bound, count
    return out


if len(sys.argv) > 1 and sys.argv[1] == "--prometheus":
    worst = measured(sys.argv[2] if len(sys.argv) > 2 else "target/release/tenantwatch")
    sys.exit(0 if worst <= 0.05 else f"bucket-error.py: worst native error {worst:.2%} is over 5%")
elif len(sys.argv) > 1:
    report("given", sorted(float(a) for a in sys.argv[1:]))
else:
    report("default metrics.latency_buckets", DEFAULT)
    report("all 15 store bounds", STORE)
