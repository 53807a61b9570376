#!/usr/bin/env python3
"""Memory of release daemons through tenant floods, side by side.

Each build runs as the soak's `tw1` does, at a smaller scale: 300 steady
tenants over UDP (1,000 datagrams of 20 events a second), a gzip'd
`/metrics` in OpenMetrics and in text and a tenant page a second, the
Redis rate-limit backend (a `redis-server` each), a state file saved every
5 s as the soak's daemons have, `max_tenants = 600`;
every PERIOD seconds a flood of 900 new tenant ids, evicted TTL after. Every second it samples
each daemon's RSS and its anonymous part (`/proc/<pid>/status`) and prints,
per build, the medians before the first flood, while a flood's tenants are
held, after their eviction (from 11 s after the daemon reports them gone,
once its 10-second release of free pages has run, to the next flood), and
the change from the first gap's to the last's.

    scripts/bench-flood-rss.py target/release/tenantwatch /tmp/base/tenantwatch
    FLOODS=10 PERIOD=60 TTL=30s scripts/bench-flood-rss.py BIN [BIN...]

Both builds run at once (the samples are memory, not time); the CSV of
samples goes to target/bench-flood-rss/.
"""

import gzip
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

FLOODS = int(os.environ.get("FLOODS", "6"))
PERIOD = float(os.environ.get("PERIOD", "60"))
TTL = os.environ.get("TTL", "30s")
WARMUP = 30.0
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "bench-flood-rss")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(http, udp, redis, name):
    return f"""[server]
listen = "127.0.0.1:{http}"
metrics_max_age = "0s"
[ingest]
udp_listen = "127.0.0.1:{udp}"
max_tenants = 600
share_window = "20s"
tenant_idle_ttl = "{TTL}"
[metrics]
idle_after = "20s"
[detect]
interval = "2s"
[ratelimit]
default_qps = 100.0
default_burst = 200
backend = "redis"
[ratelimit.redis]
url = "redis://127.0.0.1:{redis}"
expected_instances = 2
fail_mode = "local"
instance = "{name}"
[api]
history = "10m"
history_resolution = "1m"
[state]
file = "{os.path.join(OUT, name + ".state.json")}"
save_interval = "5s"
"""


class Daemon:
    """One build, with a Redis of its own (the builds share no fleet)."""

    def __init__(self, index, binary):
        self.binary, self.http, self.udp = binary, free_port(), free_port()
        self.name = f"b{index}"
        redis_port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        # Each run starts empty: a state file left by an earlier run would
        # be loaded.
        state = os.path.join(OUT, f"{self.name}.state.json")
        if os.path.exists(state):
            os.remove(state)
        path = os.path.join(OUT, f"{self.name}.toml")
        with open(path, "w") as f:
            f.write(config(self.http, self.udp, redis_port, self.name))
        self.log_path = os.path.join(OUT, f"{self.name}.log")
        with open(self.log_path, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([binary, "run", "--config", path], stdout=log, stderr=log)
        self.tracked = None
        self.samples = []  # (t, rss MiB, anon MiB, tenants tracked)

    def memory(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                status = {
                    line.split(":")[0]: int(line.split()[1])
                    for line in f
                    if line.startswith(("VmRSS:", "RssAnon:"))
                }
            return status["VmRSS"] / 1024, status["RssAnon"] / 1024
        except (OSError, KeyError, ValueError):
            return None, None


def steady(daemons, stop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rng = random.Random(1)
    while not stop.is_set():
        for _ in range(50):
            lines = [
                f"tenantwatch.query:{rng.random() * 5:.3g}|ms|#tenant:t{rng.randrange(300):03d},kind:read"
                for _ in range(20)
            ]
            datagram = "\n".join(lines).encode()
            for d in daemons:
                sock.sendto(datagram, ("127.0.0.1", d.udp))
        time.sleep(0.05)


# What Prometheus asks for, and what curl gets.
FORMATS = ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", "*/*")


def scrape(d, stop):
    while not stop.is_set():
        try:
            for accept in FORMATS:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{d.http}/metrics",
                    headers={"Accept-Encoding": "gzip", "Accept": accept},
                )
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = r.read()
                    if r.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                for line in body.decode().splitlines():
                    if line.startswith("tenantwatch_tenants_tracked "):
                        d.tracked = float(line.split()[1])
            with urllib.request.urlopen(
                f"http://127.0.0.1:{d.http}/api/v1/tenants?sort=db_time&limit=50", timeout=5
            ) as r:
                r.read()
        except OSError as e:
            print(f"{d.name}: scrape failed: {e}", file=sys.stderr)
        stop.wait(1)


def flood(daemons, round_):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lines = [f"tenantwatch.query:1|ms|#tenant:flood{round_}x{i},kind:read" for i in range(900)]
    for i in range(0, 900, 25):
        datagram = "\n".join(lines[i : i + 25]).encode()
        for d in daemons:
            sock.sendto(datagram, ("127.0.0.1", d.udp))
        time.sleep(0.002)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def settled(d, floods_at, i):
    """The samples of gap `i` (from flood `i` to the next) once the flood's
    tenants are evicted and the allocator's next release (every 10 s) has
    run, until a second before the next flood."""
    at = floods_at[i]
    until = floods_at[i + 1] if i + 1 < len(floods_at) else at + PERIOD
    gap = [s for s in d.samples if at <= s[0] < until - 1]
    evicted = next((s[0] for s in gap if s[3] is not None and s[3] <= 300), None)
    if evicted is None:
        return []
    return [s for s in gap if s[0] >= evicted + 11]


def summary(d, floods_at):
    first = floods_at[0]
    before = [s for s in d.samples if first - 10 <= s[0] < first]
    held = [s for s in d.samples if s[0] >= first and s[3] is not None and s[3] > 300]
    gaps = [settled(d, floods_at, i) for i in range(len(floods_at))]
    after = [s for gap in gaps for s in gap]
    return (
        f"| {d.binary} | {median(s[2] for s in before):.2f} | {median(s[2] for s in held):.2f} | "
        f"{median(s[2] for s in after):.2f} | "
        f"{median(s[2] for s in gaps[-1]) - median(s[2] for s in gaps[0]):+.2f} | "
        f"{median(s[1] for s in after):.2f} | {max(s[1] or 0 for s in d.samples):.2f} |"
    )


def main():
    binaries = sys.argv[1:] or ["target/release/tenantwatch"]
    if not shutil.which("redis-server"):
        sys.exit("bench-flood-rss: redis-server is missing (apt-get install redis-server)")
    for b in binaries:
        if not os.access(b, os.X_OK):
            sys.exit(f"bench-flood-rss: {b} is not an executable (cargo build --release)")
    os.makedirs(OUT, exist_ok=True)
    daemons = [Daemon(i, b) for i, b in enumerate(binaries)]
    stop = threading.Event()
    try:
        time.sleep(1.5)
        threads = [threading.Thread(target=steady, args=(daemons, stop), daemon=True)]
        threads += [threading.Thread(target=scrape, args=(d, stop), daemon=True) for d in daemons]
        for t in threads:
            t.start()
        t0 = time.time()
        floods_at, next_flood = [], WARMUP
        while time.time() - t0 < WARMUP + FLOODS * PERIOD:
            now = time.time() - t0
            if now >= next_flood and len(floods_at) < FLOODS:
                floods_at.append(now)
                flood(daemons, len(floods_at))
                next_flood += PERIOD
            for d in daemons:
                if d.proc.poll() is not None:
                    sys.exit(
                        f"bench-flood-rss: {d.binary} exited ({d.proc.returncode}); see {d.log_path}"
                    )
                rss, anon = d.memory()
                d.samples.append((now, rss, anon, d.tracked))
            time.sleep(1)
        with open(os.path.join(OUT, "samples.csv"), "w") as f:
            f.write("build,t_s,rss_mib,anon_mib,tracked\n")
            for d in daemons:
                for t, rss, anon, tracked in d.samples:
                    f.write(f"{d.binary},{t:.1f},{rss},{anon},{tracked}\n")
        print(
            f"{FLOODS} floods of 900 new ids into max_tenants = 600, every {PERIOD:.0f} s, tenant_idle_ttl {TTL}; "
            f"anonymous memory (MiB, medians) unless said"
        )
        print(
            "| build | before the first flood | flood tenants held | after eviction | "
            "after eviction, last gap less first | RSS after eviction | RSS peak |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for d in daemons:
            print(summary(d, floods_at))
    finally:
        stop.set()
        for d in daemons:
            d.proc.send_signal(signal.SIGTERM)
        for d in daemons:
            try:
                d.proc.wait(20)
            except subprocess.TimeoutExpired:
                d.proc.kill()
            d.redis.kill()
            d.redis.wait()


if __name__ == "__main__":
    main()
