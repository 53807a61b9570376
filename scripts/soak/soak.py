"""tenantwatch's fault-injection soak (issue 26): starts the real parts on
loopback, runs the load and the seeded fault schedule for SOAK_MINUTES,
audits the daemons through their public contract only (CLI, config file,
/metrics, /healthz, /api/v1/flags, the UDP and HTTP formats), then writes
target/soak/report.md and target/soak/soak.png and exits 1 when a figure is
out of bounds. Run it with scripts/soak.sh."""

import collections
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import faults as faultlib
import load
import parts
import report

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
POLL = 2.0  # targets' and PgBouncer's poll_interval, and detect.interval
FOR = 10.0  # the misbehaviours' rules' `for` and `cooldown`
WINDOW = 20.0  # ingest.share_window
IDLE_THRESHOLD = 8.0
MAX_TENANTS = 600
# ingest.udp_recv_buffer_bytes: room for about a second of each daemon's
# datagrams at the asked load (a 20-line datagram takes some 4.3 KiB of
# buffer on loopback). On two cores shared by every part, a receive thread
# can wait 150 ms and more for a core; the 8 MiB default holds about 120 ms
# of it (docs/reliability.md). scripts/soak.sh raises net.core.rmem_max so
# that the kernel grants it, as docs/configuration.md says to.
UDP_RECV_BUFFER = 32 * 1024 * 1024
EXPECTED_INSTANCES = 2  # ratelimit.redis.expected_instances: each daemon's share while Redis is out
RL = {"rl0": (20.0, 20), "rl1": (50.0, 10)}  # tenant: (qps, burst), asked at 3x and 1.5x
BATCH = 20
HTTP_BATCH = 500  # lines in a `POST /v1/events` body (not with SOAK_FULL_LOAD=0)
SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def udp_sockets(ports):
    """(bytes queued, datagrams dropped) of the UDP sockets bound to
    `ports` on this host, from the kernel's tables."""
    found = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in ports:
                queued, drops = found.get(port, (0, 0))
                found[port] = (
                    queued + int(fields[4].split(":")[1], 16),
                    drops + int(fields[-1]),
                )
    return found


def config_text(pr, pgb, redis):
    def make(d):
        targets = "".join(
            f'[[targets]]\nname = "{name}"\ndsn = "host=127.0.0.1 port={pg.port} user=tenantwatch dbname=app"\n'
            f'poll_interval = "{POLL:.0f}s"\nstats_interval = "10s"\nsize_interval = "30s"\n'
            f'statement_timeout = "1s"\nlock_timeout = "500ms"\nconnect_timeout = "1s"\ndatabases = ["*"]\n\n'
            for name, pg in (("primary", pr[0]), ("standby", pr[1]))
        )
        rl = "".join(
            f"[ratelimit.tenants.{t}]\nqps = {q}\nburst = {b}\n" for t, (q, b) in RL.items()
        )
        rules = "".join(
            f'[detect.rules.{r}]\nfor = "{FOR:.0f}s"\ncooldown = "{FOR:.0f}s"\n'
            for r in ("db_time_hog", "error_storm", "lock_blocker")
        )
        return f"""# Written by scripts/soak: windows scaled down so a misbehaviour is judged in seconds.
[server]
listen = "127.0.0.1:{d.http_port}"
metrics_max_age = "0s"
shutdown_grace = "5s"
shutdown_delay = "1s"

[ingest]
udp_listen = "127.0.0.1:{d.udp_port}"
max_tenants = {MAX_TENANTS}
udp_recv_buffer_bytes = {UDP_RECV_BUFFER}
share_window = "{WINDOW:.0f}s"

{targets}[[pgbouncers]]
name = "edge"
dsn = "host=127.0.0.1 port={pgb.port} user=tenantwatch dbname=pgbouncer"
poll_interval = "{POLL:.0f}s"
connect_timeout = "1s"

[[tenants.rules]]
source = "schema"
pattern = "^tenant_(?P<tenant>.+)$"

[[tenants.rules]]
source = "database"
pattern = "^tenantdb_(?P<tenant>.+)$"

[[tenants.rules]]
source = "query_comment"
pattern = "^(?P<tenant>.+)$"

[detect]
interval = "{POLL:.0f}s"

{rules}[detect.rules.idle_in_transaction]
threshold = {IDLE_THRESHOLD}
cooldown = "{FOR:.0f}s"

[ratelimit]
default_qps = 100.0
default_burst = 200
backend = "redis"

{rl}[ratelimit.redis]
url = "redis://127.0.0.1:{redis.port}"
expected_instances = {EXPECTED_INSTANCES}
fail_mode = "local"
instance = "{d.name}"

[api]
# A day of history by default: its rings fill for 24 h, which a run of an
# hour cannot tell from a leak. Ten minutes fill before the span the RSS
# slope is judged on (the first quarter).
history = "10m"
history_resolution = "1m"

[state]
file = "{d.state}"
save_interval = "5s"
"""

    return make


def parse(text):
    """The exposition as {(name, frozenset(labels)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = SAMPLE.match(line)
        if m:
            labels = frozenset(LABEL.findall(m.group(2) or ""))
            try:
                out[(m.group(1), labels)] = float(m.group(3))
            except ValueError:
                out[(m.group(1), labels)] = float("nan")
    return out


def get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def pick(sample, name, **want):
    return [
        v
        for (n, labels), v in sample.items()
        if n == name and all((k, w) in labels for k, w in want.items())
    ]


class Soak:
    def __init__(self, minutes, seed, binary, run_dir, full_load=False):
        self.minutes, self.seed, self.binary, self.dir = minutes, seed, binary, run_dir
        self.full_load = full_load
        self.max_tenants = MAX_TENANTS
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.faults = []
        self.problems = []
        # daemon -> (t, rss, scrape_s, received_total, life, rss_anon, tenants_tracked)
        self.series = collections.defaultdict(list)
        self.healthz = collections.defaultdict(list)
        self.nonfinite = collections.Counter()
        self.flags = collections.defaultdict(list)  # daemon -> (t, {(tenant, reason)})
        self.checkpoints = collections.defaultdict(list)  # daemon -> (t, sample, ledger)
        self.unexpected = collections.Counter()
        self.lives = collections.defaultdict(list)  # daemon -> process start times seen
        self.expected_exit = collections.defaultdict(list)
        self.recovery = []
        self.log_lines = []

    def log(self, msg):
        line = f"[soak {time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.log_lines.append(line)

    # --- parts --------------------------------------------------------------

    def start_parts(self):
        t = time.time()
        self.schemas = [f"t{i:03d}" for i in range(300)] + ["hog", "idler", "blocker", "stormy"]
        self.primary, self.standby = parts.make_cluster(
            self.dir, self.schemas, [f"d{i:02d}" for i in range(30)]
        )
        self.pgbouncer = parts.PgBouncer(self.dir, self.primary.port)
        self.pgbouncer.start()
        self.redis = parts.Redis(self.dir)
        self.redis.start()
        for part in (self.pgbouncer, self.redis):
            if not parts.wait_port(part.port):
                raise SystemExit(f"soak: {part.name} did not start; see {part.log}")
        make = config_text((self.primary, self.standby), self.pgbouncer, self.redis)
        self.daemons = []
        for name in ("tw1", "tw2"):
            d = parts.Daemon.__new__(parts.Daemon)
            d.name = name
            parts.Daemon.__init__(d, self.binary, self.dir, name, make)
            checked = subprocess.run(
                [self.binary, "check-config", d.config], capture_output=True, text=True
            )
            if checked.returncode != 0:
                raise SystemExit(f"soak: {d.config} refused: {checked.stdout}{checked.stderr}")
            d.start()
            self.daemons.append(d)
        for d in self.daemons:
            if not self.wait_healthy(d, 60):
                raise SystemExit(f"soak: daemon {d.name} did not answer /healthz; see {d.log}")
        self.prometheus = parts.Prometheus(
            self.dir,
            self.daemons,
            os.path.join(REPO, "alerts", "tenantwatch.rules.yml"),
            self.prom_interval,
        )
        self.prometheus.start()
        if not parts.wait_port(self.prometheus.port):
            raise SystemExit(f"soak: prometheus did not start; see {self.prometheus.log}")
        self.log(
            f"parts up in {time.time() - t:.0f}s: primary :{self.primary.port}, standby :{self.standby.port}, "
            f"pgbouncer :{self.pgbouncer.port}, redis :{self.redis.port}, prometheus :{self.prometheus.port}, "
            + ", ".join(f"{d.name} http :{d.http_port} udp :{d.udp_port}" for d in self.daemons)
        )

    def stop_parts(self):
        probe = getattr(self, "probe", None)
        if probe is not None and probe.poll() is None:
            probe.terminate()  # still running: the run did not reach its end
        procs = getattr(self, "daemons", []) + [
            getattr(self, n, None) for n in ("prometheus", "pgbouncer", "redis")
        ]
        for p in procs:
            if p is not None:
                p.signal(signal.SIGCONT)
                p.stop()
        for pg in (getattr(self, "standby", None), getattr(self, "primary", None)):
            if pg is not None:
                pg.freeze_all(signal.SIGCONT)
                pg.stop("immediate")

    def wait_healthy(self, d, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.healthy(d):
                return True
            time.sleep(0.1)
        return False

    def healthy(self, d):
        try:
            return get(d.url("/healthz"), 1)[0] == 200
        except OSError:
            return False

    def scrape(self, d, timeout=10.0):
        t = time.time()
        _status, body = get(d.url("/metrics"), timeout)
        return time.time() - t, parse(body.decode("utf-8", "replace"))

    # --- capacity -------------------------------------------------------------

    def measure_capacity(self):
        """Blasts UDP at tw1 for 3 s (probe tenants) and reads how many
        events it counted: the daemon's capacity, or the sender's when the
        kernel dropped nothing (then a lower bound)."""
        d = self.daemons[0]
        _, before = self.scrape(d)
        # Linux grants twice what is asked, capped at twice net.core.rmem_max.
        self.udp_buffer = max(pick(before, "tenantwatch_udp_receive_buffer_bytes") or [0])
        if self.udp_buffer < 2 * UDP_RECV_BUFFER:
            self.log(
                f"the UDP receive buffer granted is {self.udp_buffer} bytes, not "
                f"{2 * UDP_RECV_BUFFER}: net.core.rmem_max is lower than {UDP_RECV_BUFFER} "
                "(scripts/soak.sh raises it when run as root); datagrams may be lost"
            )
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        payload = "\n".join(
            f"tenantwatch.query:0|ms|#tenant:probe{i % 4},kind:read" for i in range(BATCH)
        ).encode()
        # The kernel's own drop counter: the daemon's export of it is
        # refreshed only about once a second, by the thread that is busy here.
        drops_before = udp_sockets({d.udp_port}).get(d.udp_port, (0, 0))[1]
        sent, t = 0, time.time()
        while time.time() - t < 3.0:
            sock.sendto(payload, ("127.0.0.1", d.udp_port))
            sent += BATCH
        # The receive buffer holds up to a second or more of what was sent:
        # the events the daemon counted once it is empty (and the time it
        # took to empty it) are what it can take per second.
        self.wait_drained()
        elapsed = time.time() - t
        drops = udp_sockets({d.udp_port}).get(d.udp_port, (0, 0))[1] - drops_before
        time.sleep(0.5)
        _, after = self.scrape(d)
        counted = sum(pick(after, "tenantwatch_tenant_queries_total")) - sum(
            pick(before, "tenantwatch_tenant_queries_total")
        )
        self.capacity = counted / elapsed
        self.capacity_note = (
            f"sent {sent} events in {elapsed:.1f}s, counted {counted:.0f}, kernel drops {drops:.0f} "
            f"datagrams: " + ("daemon-limited" if drops > 0 else "sender-limited (a lower bound)")
        )
        self.log(f"capacity {self.capacity:.0f} events/s ({self.capacity_note})")

    # --- auditing -------------------------------------------------------------

    def audit_once(self, d, checkpoint, ledger):
        now = time.time()
        # RSS, and its anonymous part (the heap, stacks) apart from the
        # binary's own pages, which grow as new code runs (a fault's first
        # occurrence) and are no leak.
        status = {}
        try:
            with open(f"/proc/{d.pid()}/status") as f:
                status = {
                    line.split(":")[0]: line.split()[1]
                    for line in f
                    if line.startswith(("VmRSS:", "RssAnon:"))
                }
        except (OSError, TypeError, IndexError):
            pass

        def kib(key):
            try:
                return int(status[key]) * 1024
            except (KeyError, ValueError):
                return None

        # Each on its own: a kernel without RssAnon still gives the judged RSS.
        rss, anon = kib("VmRSS"), kib("RssAnon")
        try:
            took, sample = self.scrape(d)
        except (OSError, http.client.HTTPException):
            return
        for (name, labels), v in sample.items():
            if v != v or v in (float("inf"), float("-inf")):
                self.nonfinite[d.name] += 1
                if self.nonfinite[d.name] <= 5:
                    self.problems.append(f"{d.name}: non-finite sample {name}{dict(labels)} = {v}")
        start = (pick(sample, "process_start_time_seconds") or [0])[0]
        if not self.lives[d.name] or self.lives[d.name][-1] != start:
            self.lives[d.name].append(start)
        received = sum(pick(sample, "tenantwatch_events_received_total"))
        tracked = sum(pick(sample, "tenantwatch_tenants_tracked"))
        self.series[d.name].append((now, rss, took, received, start, anon, tracked))
        if checkpoint:
            self.checkpoints[d.name].append((now, sample, ledger))

    def watch_exits(self):
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is not None:
                expected = any(time.time() - t < 60 for t in self.expected_exit[d.name])
                if not expected:
                    code = d.proc.returncode
                    self.unexpected[d.name] += 1
                    self.problems.append(f"{d.name}: unexpected exit, status {code} (see {d.log})")
                    self.log(f"{d.name} exited unexpectedly ({code}); restarting it")
                    self.expected_exit[d.name].append(time.time())
                    d.start()

    def audit_loop(self):
        last_checkpoint = 0.0
        while not self.stop.is_set():
            t = time.time()
            checkpoint = t - last_checkpoint >= 15
            ledger = None
            if checkpoint:
                self.gate.close()
                self.wait_drained()
                time.sleep(0.7)  # lets the daemons count what they took last
                ledger = self.ledger.snapshot()
                last_checkpoint = t
            for d in self.daemons:
                self.audit_once(d, checkpoint, ledger)
            if checkpoint:
                self.gate.reopen()
            self.watch_exits()
            self.stop.wait(max(0.0, 2.0 - (time.time() - t)))

    def wait_drained(self, limit=10.0):
        """Until the daemons' UDP sockets hold no datagram (`rx_queue` in
        /proc/net/udp), at most `limit` seconds: a receive buffer of a
        second or more (UDP_RECV_BUFFER) can still hold what was sent
        before the gate closed, most of all after a burst on a debug build,
        and a checkpoint read then would count it in the next interval."""
        ports = {d.udp_port for d in self.daemons}
        deadline = time.time() + limit
        while time.time() < deadline:
            if not any(queued for queued, _ in udp_sockets(ports).values()):
                return
            time.sleep(0.05)
        self.log(f"UDP sockets not drained after {limit:.0f}s: {udp_sockets(ports)}")

    def start_probe(self):
        """/healthz and /api/v1/flags from another process (probe.py)."""
        self.probe_out = os.path.join(self.dir, "probe.jsonl")
        argv = [sys.executable, os.path.join(os.path.dirname(__file__), "probe.py"), self.probe_out]
        self.probe = subprocess.Popen(argv + [f"{d.name}:{d.http_port}" for d in self.daemons])

    def read_probe(self):
        self.probe.terminate()
        self.probe.wait(10)
        with open(self.probe_out) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # the last line, cut by the SIGTERM
                if "healthz" in r:
                    self.healthz[r["d"]].append((r["t"], r["healthz"]))
                else:
                    self.flags[r["d"]].append((r["t"], {tuple(f) for f in r["flags"]}))

    def recovery_watch(self, fault, d):
        """After a PostgreSQL or PgBouncer fault ends: how long until the
        daemon `d`'s own last successful poll (`/api/v1/targets`) is newer
        than the end, i.e. it is up with fresh figures. One watcher per
        daemon, at once: the last success read is the latest poll when it
        is read, so a daemon watched only once the other had recovered was
        read that late (seed 2620: 4.12 s for `tw2`, read after `tw1`'s
        3.55 s, the only figure out of bounds)."""
        name = (
            "edge"
            if fault.kind.startswith("pgbouncer")
            else ("standby" if fault.kind.startswith("standby") else "primary")
        )
        section = "pgbouncers" if name == "edge" else "targets"
        t = None
        while time.time() < fault.end + 60 and not self.stop.is_set():
            try:
                body = json.loads(get(d.url("/api/v1/targets"), 3)[1])
                row = next(r for r in body[section] if r["name"] == name)
                if row["up"] and (row.get("last_success_unix") or 0) >= fault.end:
                    t = row["last_success_unix"] - fault.end
                    break
            except (OSError, ValueError, KeyError, StopIteration, http.client.HTTPException):
                pass
            time.sleep(0.5)
        fault.recovery[d.name] = t

    def redis_recovery(self):
        """After a Redis fault: until each daemon's first check answered by
        Redis again (the clients' ledger)."""
        answers = sorted(a for c in self.rl_clients for a in c.answers)
        for f in self.faults:
            if f.family != "redis":
                continue
            for d in self.daemons:
                f.recovery[d.name] = next(
                    (
                        t - f.end
                        for t, dn, _, backend in answers
                        if dn == d.name and t >= f.end and backend == "redis"
                    ),
                    None,
                )

    # --- the run ------------------------------------------------------------

    def run(self):
        self.prom_interval = 5
        self.start_parts()
        self.measure_capacity()
        rate = 0.5 * self.capacity
        self.rate = rate
        steady = [f"t{i:03d}" for i in range(40)]
        self.ledger = load.Ledger()
        # The datagrams go from a process of their own and the requests
        # from a thread, which together reach most of `rate`.
        # SOAK_FULL_LOAD=0 runs the one sender thread of the runs before
        # (docs/reliability.md), every format in turn; it reaches about a
        # tenth of `rate`.
        if self.full_load:
            self.gate = load.Gate(senders=3)
            # Two thirds of the events in datagrams, a third over HTTP, as
            # in the one sender's mix. The misbehaviours' events go with a
            # tenth of the datagrams, sent from this process (they are made
            # as the misbehaviours run); the rest go from the other one.
            sender = load.EventSender(
                self.daemons,
                steady,
                ["hog", "idler", "blocker", "stormy"],
                rate * 2 / 3 / 10,
                self.ledger,
                self.gate,
                self.stop,
                self.seed,
                total_rate=rate,
                min_sleep=0.001,
            )
            senders = [
                sender,
                load.DatagramProcess(
                    sender,
                    rate * 2 / 3 * 9 / 10,
                    self.ledger,
                    self.gate,
                    self.stop,
                    seconds=self.minutes * 60 + 120,
                ),
                load.EventSender(
                    self.daemons,
                    steady,
                    [],
                    rate / 3,
                    self.ledger,
                    self.gate,
                    self.stop,
                    self.seed + 1,
                    batch=HTTP_BATCH,
                    formats=("http",),
                    total_rate=rate,
                    min_sleep=0.001,
                ),
            ]
        else:
            self.gate = load.Gate(senders=1)
            sender = load.EventSender(
                self.daemons,
                steady,
                ["hog", "idler", "blocker", "stormy"],
                rate,
                self.ledger,
                self.gate,
                self.stop,
                self.seed,
                formats=("dogstatsd", "ndjson", "http"),
            )
            senders = [sender]
        rl_clients = [
            load.RateLimitClient(self.daemons, t, q * (3.0 if t == "rl0" else 1.5), self.stop)
            for t, (q, _) in RL.items()
        ]
        sql = [
            load.SqlTenants(
                self.pgbouncer.port, [f"t{i:03d}" for i in range(300)], self.stop, self.seed + k
            )
            for k in range(3)
        ]
        self.t0 = t0 = time.time() + 5
        span = self.minutes * 60
        self.misbehaviours = []
        cycle = 600 if self.minutes >= 10 else span
        for c in range(max(1, int(span // cycle))):
            base = c * cycle
            for kind, tenant, lo, hi in (
                ("db_time_hog", "hog", 10, 40),
                ("idle_in_transaction", "idler", 10, 40),
                ("lock_blocker", "blocker", 10, 40),
                ("error_storm", "stormy", 10, 40),
            ):
                self.misbehaviours.append(
                    load.Misbehaviour(
                        kind,
                        tenant,
                        base + lo,
                        base + hi,
                        t0,
                        self.pgbouncer.port,
                        sender,
                        self.stop,
                    )
                )
        # Until the report's clear bound (cooldown + window + poll and
        # evaluation + the probe): a daemon killed before its flag cleared
        # brings the flag back from its state file and clears it late.
        busy = sorted(
            {(m.start_at, m.end_at + FOR + WINDOW + 2 * POLL + 2.0) for m in self.misbehaviours}
        )
        lanes = faultlib.plan(self.seed, self.minutes, busy)
        ctx = {
            "seed": self.seed,
            "minutes": self.minutes,
            "daemons": self.daemons,
            "primary": self.primary,
            "standby": self.standby,
            "pgbouncer": self.pgbouncer,
            "redis": self.redis,
            "freeze_seconds": 3 * POLL,
            "poll_timeout": 1,
            "redis_timeout": "50ms",
            "max_tenants": MAX_TENANTS,
            "healthy": self.healthy,
            "reload_ok": self.reload_ok,
            "scrape_status": self.scrape_status,
            "post_raw": self.post_raw,
            "expected_exit": self.expected_exit,
            "problems": self.problems,
        }
        injector = faultlib.Injector(
            ctx, sender, faultlib.hostile_corpus(REPO), self.capacity, self.stop, self.log
        )
        self.log(
            f"seed {self.seed}; {self.minutes} min; load {rate:.0f} events/s over {len(steady)} tenants; "
            f"faults planned: {sum(len(lane) for lane in lanes.values())}"
        )
        for th in [*senders, *rl_clients, *sql, *self.misbehaviours]:
            th.start()
        self.start_probe()
        threads = [threading.Thread(target=self.audit_loop, daemon=True)]
        lane_lock = threading.Lock()
        for lane in lanes.values():
            threads.append(
                threading.Thread(
                    target=faultlib.run_lane,
                    args=(injector, lane, t0, self.faults, lane_lock),
                    daemon=True,
                )
            )
        for th in threads:
            th.start()
        watchers = []
        seen = 0
        while time.time() < t0 + span:
            time.sleep(1)
            with lane_lock:
                new = self.faults[seen:]
                seen = len(self.faults)
            for f in new:
                if f.family == "postgres":
                    for d in self.daemons:
                        f.recovery.setdefault(d.name, None)  # the report's order
                    for d in self.daemons:
                        w = threading.Thread(target=self.recovery_watch, args=(f, d), daemon=True)
                        w.start()
                        watchers.append(w)
        self.end = time.time()
        for w in watchers:
            w.join(60)
        self.stop.set()
        for th in [*threads, *senders, *rl_clients]:
            th.join(15)
        self.ledger.fold()
        self.rl_clients, self.sql, self.sender = rl_clients, sql, sender
        self.redis_recovery()
        self.read_probe()
        self.prom_results = self.query_prometheus()
        for d in self.daemons:
            self.panics = getattr(self, "panics", {})
            with open(d.log, errors="replace") as f:
                self.panics[d.name] = sum(1 for line in f if "panicked" in line)

    def reload_ok(self, d):
        try:
            _, s = self.scrape(d, 5)
        except (OSError, http.client.HTTPException):
            return None
        v = pick(s, "tenantwatch_config_last_reload_successful")
        return None if not v else v[0] == 1.0

    def scrape_status(self, d):
        try:
            return get(d.url("/metrics"), 10)[0]
        except urllib.error.HTTPError as e:
            return e.code
        except (OSError, http.client.HTTPException):
            return None

    def post_raw(self, d, payload):
        try:
            req = urllib.request.Request(
                d.url("/v1/events"),
                data=payload,
                method="POST",
                headers={"Content-Type": "application/x-ndjson"},
            )
            urllib.request.urlopen(req, timeout=5).read()
        except (OSError, http.client.HTTPException):
            pass

    def query_prometheus(self):
        out = {"resets": {}, "rule_failures": None, "rules_unhealthy": []}
        base = f"http://127.0.0.1:{self.prometheus.port}/api/v1/"

        def q(expr, at):
            url = base + "query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
            return json.loads(get(url, 30)[1])["data"]["result"]

        try:
            out["rule_failures"] = sum(
                float(r["value"][1])
                for r in q("sum(prometheus_rule_evaluation_failures_total)", time.time())
            )
            rules = json.loads(get(base + "rules", 30)[1])["data"]["groups"]
            out["rules_unhealthy"] = [
                r["name"] for g in rules for r in g["rules"] if r.get("health") != "ok"
            ]
            for d in self.daemons:
                # Each life of the daemon, less one scrape at each end: a
                # reset inside one is a counter going back without a restart.
                starts = [s for s in self.lives[d.name] if s] + [self.end]
                total = 0.0
                for lo, hi in itertools.pairwise(starts):
                    lo, hi = max(lo, self.t0) + 2 * self.prom_interval, hi - self.prom_interval
                    if hi - lo < 3 * self.prom_interval:
                        continue
                    sel = f'instance="127.0.0.1:{d.http_port}"'
                    names = {
                        r["metric"]["__name__"]
                        for r in q(
                            f'count by (__name__)({{__name__=~"tenantwatch_.+_total",{sel}}})', hi
                        )
                    }
                    for name in sorted(names):
                        for r in q(f"sum(resets({name}{{{sel}}}[{int(hi - lo)}s]))", hi):
                            if float(r["value"][1]) > 0:
                                total += float(r["value"][1])
                                self.problems.append(
                                    f"{d.name}: {name} reset {r['value'][1]} times between "
                                    f"{lo - self.t0:.0f}s and {hi - self.t0:.0f}s"
                                )
                out["resets"][d.name] = total
        except (OSError, ValueError, KeyError) as e:
            self.problems.append(f"prometheus queries failed: {e}")
        return out


def main():
    minutes = float(os.environ.get("SOAK_MINUTES", "60"))
    seed = int(os.environ.get("SOAK_SEED") or int(time.time()) % 100000)
    binary = os.environ["SOAK_BINARY"]
    full_load = os.environ.get("SOAK_FULL_LOAD", "1") not in ("", "0")
    out_dir = os.path.join(REPO, "target", "soak")
    run_dir = os.path.join(out_dir, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    if parts.ROOT:
        shutil.chown(run_dir, "postgres", "postgres")
    print(
        f"[soak] seed {seed} (repeat with SOAK_SEED={seed}), {minutes:g} minutes, "
        f"{'the asked load' if full_load else 'one sender (SOAK_FULL_LOAD=0)'}, run dir {run_dir}",
        flush=True,
    )
    soak = Soak(minutes, seed, binary, run_dir, full_load)
    # A SIGTERM (a CI timeout, a user's kill) stops every part as the end does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        soak.run()
    finally:
        soak.stop.set()
        soak.stop_parts()
    ok = report.write(soak, out_dir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
