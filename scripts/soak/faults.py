"""The fault schedule: four lanes (PostgreSQL/PgBouncer, Redis, daemons,
clients) run side by side, each drawing its next fault and the gap before it
from one seeded generator, so a seed repeats a run. The PostgreSQL lane and
the daemon kills keep out of the misbehaviours' windows (a restarted primary
would end the misbehaviour it is meant to be judged on).

Every fault is recorded as (kind, family, target, start, end, note)."""

import contextlib
import os
import random
import signal
import socket
import threading
import time

import load

FAMILIES = {
    "postgres": [
        "pg_fast_restart",
        "pg_kill9",
        "pg_freeze",
        "standby_restart",
        "pgbouncer_restart",
        "pgbouncer_pause",
        "pgbouncer_refuse_admin",
    ],
    "redis": ["redis_kill_restart_empty", "redis_freeze"],
    "daemon": [
        "daemon_kill9",
        "daemon_sighup_valid",
        "daemon_sighup_broken",
        "daemon_sigterm_during_scrapes",
    ],
    "clients": ["metrics_never_read", "udp_burst", "hostile_lines", "tenant_flood"],
}
# Seconds between two faults of a lane in a long run: each kind several
# times an hour.
GAPS = {"postgres": (20, 60), "redis": (60, 180), "daemon": (40, 120), "clients": (40, 120)}
# Faults that take a daemon (or the database the misbehaviours use) away.
QUIET = {"daemon_kill9", "daemon_sigterm_during_scrapes"} | set(FAMILIES["postgres"])


class Fault:
    def __init__(self, kind, family, target, start, end, note=""):
        self.kind, self.family, self.target, self.start, self.end, self.note = (
            kind,
            family,
            target,
            start,
            end,
            note,
        )
        self.recovery = {}  # daemon -> seconds from end to up == 1 with fresh figures

    def row(self, t0):
        return f"{self.start - t0:7.1f}s {self.end - self.start:5.1f}s {self.kind} {self.target} {self.note}"


def plan(seed, minutes, busy):
    """Each lane's faults as (at, kind) in seconds from the start. The short
    form (< 10 minutes) draws each lane's kinds once in a seeded order; a
    longer run draws kinds at random with 20-70 s gaps. QUIET faults move
    out of the `busy` windows (the misbehaviours')."""
    rng = random.Random(seed)
    span = minutes * 60
    lanes = {}
    for family, kinds in FAMILIES.items():
        at, out = rng.uniform(8, 20), []
        order = rng.sample(kinds, len(kinds))
        while at < span - 25:
            kind = order.pop(0) if order else (rng.choice(kinds) if minutes >= 10 else None)
            if kind is None:
                break
            if kind in QUIET or family == "postgres":
                for lo, hi in busy:
                    if lo - 25 <= at <= hi + 5:
                        at = hi + 5
            if at >= span - 25:
                break
            out.append((at, kind))
            at += rng.uniform(*GAPS[family]) if minutes >= 10 else rng.uniform(6, 10)
        lanes[family] = out
    return lanes


class Injector:
    """Carries out the faults on the parts; every method returns the note."""

    def __init__(self, parts, sender, hostile, capacity, stop, log):
        self.p, self.sender, self.hostile, self.capacity, self.stop, self.log = (
            parts,
            sender,
            hostile,
            capacity,
            stop,
            log,
        )
        self.rng = random.Random(parts["seed"] + 1)
        self.daemon_turn = 0
        self.flood_round = 0

    def next_daemon(self, quiet):
        # Kills and SIGTERMs go to the last daemon only, in every run length,
        # so that the first one lives through the whole run: its RSS slope
        # over the last three quarters is read over one life (a life begun
        # at a kill is all warm-up). Other faults alternate.
        daemons = self.p["daemons"]
        if quiet:
            return daemons[-1]
        self.daemon_turn += 1
        return daemons[self.daemon_turn % len(daemons)]

    def run(self, kind):
        return getattr(self, kind)()

    def pg_fast_restart(self):
        self.p["primary"].restart()
        return "pg_ctl restart -m fast"

    def pg_kill9(self):
        primary = self.p["primary"]
        primary.signal(signal.SIGKILL)
        time.sleep(1)
        # The orphaned backends exit by themselves; start once they have.
        for _ in range(100):
            try:
                primary.start()
                break
            except Exception:
                time.sleep(0.3)
        return "kill -9 postmaster, then pg_ctl start"

    def pg_freeze(self):
        hold = self.p["freeze_seconds"]
        self.p["primary"].freeze_all(signal.SIGSTOP)
        time.sleep(hold)
        self.p["primary"].freeze_all(signal.SIGCONT)
        return f"SIGSTOP {hold:.0f}s (poll timeout {self.p['poll_timeout']}s), SIGCONT"

    def standby_restart(self):
        standby = self.p["standby"]
        standby.stop("fast")
        time.sleep(self.rng.uniform(3, 8))
        standby.start()
        return "standby stopped, restarted"

    def pgbouncer_restart(self):
        bouncer = self.p["pgbouncer"]
        bouncer.stop()
        time.sleep(1)
        bouncer.start()
        return "SIGTERM, start"

    def pgbouncer_pause(self):
        self.p["pgbouncer"].admin("PAUSE")
        time.sleep(self.rng.uniform(2, 5))
        self.p["pgbouncer"].admin("RESUME")
        return "PAUSE, RESUME"

    def pgbouncer_refuse_admin(self):
        bouncer = self.p["pgbouncer"]
        bouncer.write_ini(refuse_stats=True)
        bouncer.admin("RELOAD")
        time.sleep(self.rng.uniform(5, 10))
        bouncer.write_ini(refuse_stats=False)
        bouncer.admin("RELOAD")
        return "stats_users without tenantwatch, RELOAD; restored"

    def redis_kill_restart_empty(self):
        redis = self.p["redis"]
        redis.signal(signal.SIGKILL)
        redis.wait(5)
        time.sleep(self.rng.uniform(2, 5))
        redis.start()
        return "kill -9, restarted empty"

    def redis_freeze(self):
        hold = self.rng.uniform(1, 3)
        self.p["redis"].signal(signal.SIGSTOP)
        time.sleep(hold)
        self.p["redis"].signal(signal.SIGCONT)
        return f"SIGSTOP {hold:.1f}s (timeout {self.p['redis_timeout']})"

    def restart_daemon(self, daemon):
        daemon.start()
        for _ in range(300):
            if self.p["healthy"](daemon):
                return
            time.sleep(0.1)

    def daemon_kill9(self):
        daemon = self.next_daemon(True)
        self.p["expected_exit"][daemon.name].append(time.time())
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        self.restart_daemon(daemon)
        return f"{daemon.name}: kill -9, restart (state file kept)"

    def daemon_sighup_valid(self):
        daemon = self.next_daemon(False)
        text = daemon.good_config.replace(
            "default_qps = 100.0", f"default_qps = {self.rng.choice([90.0, 110.0])}"
        )
        with open(daemon.config, "w") as f:
            f.write(text)
        daemon.signal(signal.SIGHUP)
        time.sleep(2)
        ok = self.p["reload_ok"](daemon)
        with open(daemon.config, "w") as f:
            f.write(daemon.good_config)
        daemon.signal(signal.SIGHUP)
        if ok is not True:
            self.p["problems"].append(
                f"{daemon.name}: a valid SIGHUP was not applied (reload_successful={ok})"
            )
        return f"{daemon.name}: default_qps changed, applied={ok}; restored"

    def daemon_sighup_broken(self):
        daemon = self.next_daemon(False)
        with open(daemon.config, "w") as f:
            f.write(daemon.good_config + "\n[server]\nlisten = 'nonsense\n")
        daemon.signal(signal.SIGHUP)
        time.sleep(2)
        refused = self.p["reload_ok"](daemon) is False
        alive = daemon.alive()
        with open(daemon.config, "w") as f:
            f.write(daemon.good_config)
        daemon.signal(signal.SIGHUP)
        if not (refused and alive):
            self.p["problems"].append(
                f"{daemon.name}: broken SIGHUP: refused={refused} alive={alive}"
            )
        return f"{daemon.name}: broken file refused={refused}, still running={alive}; restored"

    def daemon_sigterm_during_scrapes(self):
        daemon = self.next_daemon(True)
        results = []

        def scrape():
            for _ in range(20):
                results.append(self.p["scrape_status"](daemon))

        scrapers = [threading.Thread(target=scrape, daemon=True) for _ in range(4)]
        for s in scrapers:
            s.start()
        time.sleep(0.3)
        self.p["expected_exit"][daemon.name].append(time.time())
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(30)
        for s in scrapers:
            s.join(10)
        if code != 0:
            self.p["problems"].append(f"{daemon.name}: exit status {code} after SIGTERM (want 0)")
        self.restart_daemon(daemon)
        broken = sum(1 for r in results if r not in (200, 503, None))
        return (
            f"{daemon.name}: SIGTERM under 4 scrapers, exit {code}, odd answers {broken}; restarted"
        )

    def metrics_never_read(self):
        daemon = self.next_daemon(False)
        socks = []
        for _ in range(50):
            try:
                s = socket.create_connection(("127.0.0.1", daemon.http_port), timeout=2)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n")
                socks.append(s)
            except OSError:
                pass
        time.sleep(self.rng.uniform(8, 15))
        for s in socks:
            s.close()
        return f"{daemon.name}: {len(socks)} connections never reading /metrics"

    def udp_burst(self):
        rate = 3.0 * self.capacity
        datagrams = load.burst(self.sender, rate, 5.0, self.stop)
        return (
            f"{datagrams} datagrams, {rate:.0f} events/s (3x capacity) for 5 s on top of the load"
        )

    def hostile_lines(self):
        daemon = self.next_daemon(False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        n = 0
        for payload in self.hostile:
            with contextlib.suppress(OSError):
                sock.sendto(payload[:65000], ("127.0.0.1", daemon.udp_port))
            self.p["post_raw"](daemon, payload)
            n += 1
        return f"{daemon.name}: {n} hostile payloads over UDP and HTTP"

    def tenant_flood(self):
        # Every daemon, as an application's flood reaches each replica:
        # the first one fills each daemon's `max_tenants` early, before the
        # span its RSS slope is judged on.
        self.flood_round += 1
        count = int(self.p["max_tenants"] * 1.5)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        lines = [
            f"tenantwatch.query:1|ms|#tenant:flood{self.flood_round}x{i},kind:read"
            for i in range(count)
        ]
        for i in range(0, count, 25):
            datagram = "\n".join(lines[i : i + 25]).encode()
            for daemon in self.p["daemons"]:
                sock.sendto(datagram, ("127.0.0.1", daemon.udp_port))
            time.sleep(0.002)
        return f"every daemon: {count} new tenant ids (max_tenants {self.p['max_tenants']})"


def run_lane(injector, lane, t0, faults, lock):
    for at, kind in lane:
        delay = t0 + at - time.time()
        if delay > 0 and injector.stop.wait(delay):
            return
        family = next(f for f, ks in FAMILIES.items() if kind in ks)
        start = time.time()
        try:
            note = injector.run(kind)
        except Exception as e:  # a fault that could not be carried out is reported, not hidden
            note = f"FAILED TO INJECT: {type(e).__name__}: {e}"
        fault = Fault(kind, family, "", start, time.time(), note)
        with lock:
            faults.append(fault)
        injector.log(f"fault {fault.row(t0)}")


def hostile_corpus(repo):
    """The fuzz seeds plus hand-made hostile payloads."""
    out = []
    for sub in ("dogstatsd", "ndjson", "ingest_payload"):
        d = os.path.join(repo, "fuzz", "seeds", sub)
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                with open(os.path.join(d, name), "rb") as f:
                    out.append(f.read())
    out += [
        b"\xff\xfe\xfd" * 100,
        b"tenantwatch.query:NaN|ms|#tenant:h1",
        b"tenantwatch.query:inf|ms|#tenant:h1",
        b"tenantwatch.query:-5|ms|#tenant:h1",
        b"tenantwatch.query:1|ms|@0.0000001|#tenant:h1",
        b'{"tenant":"h1","kind":"read","duration_ms":1e999}',
        b'{"tenant":"h1","kind":"read","duration_ms":-1}',
        b'{"tenant":"' + b"x" * 5000 + b'","kind":"read","duration_ms":1}',
        b"{" * 10000,
        b"tenantwatch.query:1|ms|#tenant:" + b"y" * 3000,
        b"\n" * 5000,
        b"tenantwatch.query:1|zz|#tenant:h1",
    ]
    return out
