"""The load: applications sending events (UDP DogStatsD, UDP NDJSON, HTTP
NDJSON) with a ledger of every event sent per daemon, tenant and kind;
rate-limit clients with a ledger of answers; tenants running real SQL
through PgBouncer, among them the scheduled misbehaviours.

Event senders stop at a checkpoint (`Gate`) so the auditor can compare the
ledger with each daemon's counters with nothing in flight."""

import collections
import contextlib
import http.client
import json
import multiprocessing
import os
import random
import socket
import threading
import time

import psycopg

KINDS = ("read", "write", "other")
# Waiters the lock_blocker rule needs (its default threshold).
LOCK_WAITERS_NEEDED = 3
# The most a sender makes up when it falls behind its pace (seconds).
CATCH_UP = 0.02
# The niceness of the DatagramProcess (0 is the other parts').
DATAGRAM_NICE = 10


# A process of its own starts afresh (no fork of this threaded one).
MP = multiprocessing.get_context("spawn")


def format_stride(formats, daemons):
    """How many batches a sender keeps one format for. Each daemon must get
    every format: when the daemons' count divides the formats', alternating
    both with every batch would pair each daemon with the same formats for
    good, so the format then moves on once per round of the daemons."""
    return daemons if formats % daemons == 0 else 1


def datagrams(sender):
    """The sender's pooled datagrams ((payload, lines) each, formats in
    turn) and the stride that gives each daemon every format."""
    udp = [(payload, lines) for fmt, payload, lines in sender.pool if fmt != "http"]
    formats = len({fmt for fmt, _, _ in sender.pool if fmt != "http"})
    return udp, format_stride(formats, len(sender.daemons))


def pace(next_at, step, min_sleep):
    """Sleeps until `next_at` + `step` when at least `min_sleep` ahead of
    it; when behind, makes up at most CATCH_UP (a sender that had no core
    for a while must not send the daemons a burst above the rate asked).
    Returns the next batch's time."""
    next_at += step
    delay = next_at - time.time()
    if delay > min_sleep:
        time.sleep(delay)
    elif delay < -CATCH_UP:
        next_at = time.time() - CATCH_UP
    return next_at


class Gate:
    """Senders pass through `gate.wait()` between batches; the auditor
    closes it, waits for every sender to be parked, reads, and reopens.
    Its event and semaphore work across processes (DatagramProcess)."""

    def __init__(self, senders):
        self.open = MP.Event()
        self.open.set()
        self.parked = MP.Semaphore(0)
        self.senders = senders

    def wait(self):
        """Parks while the gate is closed; says whether it did."""
        if self.open.is_set():
            return False
        self.parked.release()
        self.open.wait()
        return True

    def close(self):
        self.open.clear()
        for _ in range(self.senders):
            self.parked.acquire(timeout=10)

    def reopen(self):
        self.open.set()


class Ledger:
    """Events sent per daemon (every one to a ledger tenant), in total and
    per second, so the events sent while a daemon was down can be told
    apart. Cheap per batch: the sender adds a batch's line count."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = collections.Counter()
        self.per_second = collections.Counter()
        self.tenants = set()
        self.http_refused = collections.Counter()  # per daemon: the client saw the failure

        # Per-second counts a DatagramProcess writes (`attach`), and what
        # of them is already in `sent` and `per_second`.
        self.external = []

    def add(self, daemon, n, now):
        with self.lock:
            self.sent[daemon] += n
            self.per_second[(daemon, int(now))] += n

    def attach(self, counts, names, base, span):
        """Counts written by another process: `counts[i * span + s]` lines
        sent to daemon `names[i]` in second `base + s`."""
        with self.lock:
            self.external.append((counts, names, base, span, [0] * len(counts)))

    def fold(self):
        """Takes in what the attached processes counted since the last fold."""
        with self.lock:
            for counts, names, base, span, folded in self.external:
                now = list(counts)
                for k, (n, before) in enumerate(zip(now, folded, strict=True)):
                    if n != before:
                        daemon, second = names[k // span], base + k % span
                        self.sent[daemon] += n - before
                        self.per_second[(daemon, second)] += n - before
                        folded[k] = n

    def snapshot(self):
        self.fold()
        with self.lock:
            return collections.Counter(self.sent)

    def sent_between(self, daemon, start, end):
        self.fold()
        with self.lock:
            return sum(
                n for (d, s), n in self.per_second.items() if d == daemon and start <= s <= end
            )


# Durations keep three significant digits: at the soak's rates (over a
# million events/s) a healthy event lasts about half a microsecond, which
# two decimals rounded to 0, leaving the healthy tenants no database time
# and any tenant's few milliseconds a large share of the fleet's.
def dogstatsd_line(tenant, kind, ms, error):
    return f"tenantwatch.query:{ms:.3g}|ms|#tenant:{tenant},kind:{kind},error:{'true' if error else 'false'},rows:3"


def ndjson_line(tenant, kind, ms, error):
    return json.dumps(
        {
            "tenant": tenant,
            "kind": kind,
            "duration_ms": float(f"{ms:.3g}"),
            "rows": 3,
            "error": error,
        }
    )


class EventSender(threading.Thread):
    """Sends `rate` events/s spread over `tenants`, in batches of `batch`
    lines, alternating the daemon and the `formats`; ledgers every line.
    `extra` lets the misbehaviours add their own lines (tenant, kind, ms,
    error); the `trickle` tenants send 5 ordinary events/s each through it.

    The soak runs two: one for a tenth of the datagrams (DogStatsD and
    NDJSON, 20 lines each), which carries the misbehaviours' lines, beside
    a DatagramProcess for the rest, and one for `POST /v1/events` (larger
    bodies, as an application batches them). With SOAK_FULL_LOAD=0 it runs
    one, sending every format: a request waits for its answer, and with
    the formats in one thread those waits hold the datagrams back, so it
    reaches about a tenth of the rate it asks for. `total_rate` is the rate of
    all senders together, which the durations are scaled by; `min_sleep`
    is how far ahead of its pace a sender must be before it sleeps (a
    sleep lasts at least some 60 us, more than a batch's share of a
    second at a million events a second)."""

    def __init__(
        self,
        daemons,
        tenants,
        trickle,
        rate,
        ledger,
        gate,
        stop,
        seed,
        batch=20,
        formats=("dogstatsd", "ndjson"),
        total_rate=None,
        min_sleep=0.0,
    ):
        super().__init__(daemon=True)
        self.daemons, self.tenants, self.rate, self.ledger = daemons, tenants, rate, ledger
        self.gate, self.stop, self.batch, self.formats = gate, stop, batch, formats
        self.min_sleep = min_sleep
        self.rng = random.Random(seed)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.extra = collections.deque()
        self.conns = {}
        self.i = 0
        self.stride = format_stride(len(formats), len(daemons))
        self.trickle, self.trickle_at = trickle, 0.0
        ledger.tenants.update(tenants, trickle)
        # Payloads made once (formatting lines costs more than sending
        # them), each with its line count. Durations shrink
        # with the rate so the healthy tenants' summed database time stays
        # near 0.6 s/s, which a db-time hog must dwarf.
        scale_ms = 1000.0 / (total_rate or rate)
        self.pool = []
        for k in range(300):
            fmt = formats[k % len(formats)]
            make = dogstatsd_line if fmt == "dogstatsd" else ndjson_line
            lines = []
            for _ in range(batch):
                tenant, kind = self.rng.choice(tenants), self.rng.choice(KINDS)
                lines.append(
                    make(
                        tenant,
                        kind,
                        self.rng.uniform(0.2, 1.0) * scale_ms,
                        self.rng.random() < 0.001,
                    )
                )
            self.pool.append((fmt, "\n".join(lines).encode(), batch))

    def post(self, daemon, body):
        conn = self.conns.get(daemon.name)
        for _ in range(2):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=5)
                conn.request("POST", "/v1/events", body, {"Content-Type": "application/x-ndjson"})
                reply = conn.getresponse()
                reply.read()
                self.conns[daemon.name] = conn
                return reply.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                self.conns.pop(daemon.name, None)
        return None

    def one_batch(self):
        self.i += 1
        daemon = self.daemons[self.i % len(self.daemons)]
        now = time.time()
        if now - self.trickle_at >= 0.2:
            # The misbehaving tenants' ordinary traffic: 5 events/s each.
            self.trickle_at = now
            for tenant in self.trickle:
                self.extra.append(
                    (tenant, self.rng.choice(KINDS), self.rng.uniform(0.2, 1.0), False)
                )
        owners = set()
        if self.extra:
            fmt = self.formats[self.i // self.stride % len(self.formats)]
            make = dogstatsd_line if fmt == "dogstatsd" else ndjson_line
            lines = []
            while self.extra and len(lines) < self.batch:
                tenant, kind, ms, error, *owner = self.extra.popleft()
                lines.append(make(tenant, kind, ms, error))
                owners.update(owner)
            payload, counts = "\n".join(lines).encode(), len(lines)
        else:
            fmt, payload, counts = self.pool[self.i // self.stride % len(self.pool)]
        if fmt == "http":
            status = self.post(daemon, payload)
            self.ledger.add(daemon.name, counts, now)
            if status is None or not 200 <= status < 300:
                self.ledger.http_refused[daemon.name] += counts
        else:
            # OSError: ICMP port unreachable from an earlier datagram (the daemon is down).
            with contextlib.suppress(OSError):
                self.sock.sendto(payload, ("127.0.0.1", daemon.udp_port))
            self.ledger.add(daemon.name, counts, now)
        sent = time.time()
        for owner in owners:
            owner.delivered(sent)

    def run(self):
        next_at = time.time()
        while not self.stop.is_set():
            if self.gate.wait():
                next_at = time.time()  # parked at a checkpoint: the pause is not made up
            self.one_batch()
            next_at = pace(next_at, self.batch / self.rate, self.min_sleep)


def _send_datagrams(ports, payloads, rate, stride, counts, base, span, gate_open, parked, stop):
    """A DatagramProcess's loop: `payloads` ((bytes, lines) each) in turn,
    alternating `ports`, at `rate` lines/s, counting each datagram's lines
    per port and second in `counts`; parks while `gate_open` is clear."""
    # The load generator must not take the cores from what it measures: on
    # two cores this process, always behind its pace, would take one from
    # the daemons' receive threads (seed 2622's first run dropped datagrams
    # so while each daemon had a third of a core). Niced, it gets what the
    # daemons and the other parts leave; the report gives what it sent.
    os.nice(DATAGRAM_NICE)
    driver = os.getppid()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    next_at, i = time.time(), 0
    while not stop.is_set():
        if i % 4096 == 0 and os.getppid() != driver:
            return  # the driver is gone (killed): stop sending
        if not gate_open.is_set():
            parked.release()
            gate_open.wait()
            next_at = time.time()
        i += 1
        d = i % len(ports)
        payload, lines = payloads[i // stride % len(payloads)]
        with contextlib.suppress(OSError):
            sock.sendto(payload, ("127.0.0.1", ports[d]))
        counts[d * span + min(span - 1, max(0, int(time.time()) - base))] += lines
        next_at = pace(next_at, lines / rate, 0.001)


class DatagramProcess(threading.Thread):
    """The pool's datagrams (DogStatsD and NDJSON) at `rate`, sent from a
    Python process of its own: in this one, every thread (the other
    senders, the rate-limit and SQL clients, the auditor) shares one
    interpreter lock, and a sender here reaches about a quarter of a
    million events/s. The thread starts the process, stops it with `stop`
    and joins it; the ledger reads its counts (`Ledger.attach`), and it
    parks at the gate like the others (count it in `Gate(senders=...)`)."""

    def __init__(self, sender, rate, ledger, gate, stop, seconds):
        super().__init__(daemon=True)
        udp, stride = datagrams(sender)
        span = int(seconds) + 600
        base = int(time.time())
        counts = MP.RawArray("q", len(sender.daemons) * span)
        ledger.attach(counts, [d.name for d in sender.daemons], base, span)
        self.stop, self.child_stop = stop, MP.Event()
        self.process = MP.Process(
            target=_send_datagrams,
            args=(
                [d.udp_port for d in sender.daemons],
                udp,
                rate,
                stride,
                counts,
                base,
                span,
                gate.open,
                gate.parked,
                self.child_stop,
            ),
            daemon=True,
        )

    def run(self):
        self.process.start()
        self.stop.wait()
        self.child_stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


def burst(sender, rate, seconds, stop):
    """UDP at `rate` events/s for `seconds`, from the sender's pool (so the
    lines are ledgered like the steady ones), pausing at checkpoints."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp, stride = datagrams(sender)
    end, i, next_at = time.time() + seconds, 0, time.time()
    while time.time() < end and not stop.is_set():
        sender.gate.open.wait()
        i += 1
        daemon = sender.daemons[i % len(sender.daemons)]
        payload, counts = udp[i // stride % len(udp)]
        with contextlib.suppress(OSError):
            sock.sendto(payload, ("127.0.0.1", daemon.udp_port))
        sender.ledger.add(daemon.name, counts, time.time())
        next_at += sender.batch / rate
        delay = next_at - time.time()
        if delay > 0.001:
            time.sleep(delay)
    return i


class RateLimitClient(threading.Thread):
    """Asks for `rate` checks/s of `tenant`, alternating the daemons, and
    keeps every answer: (time, daemon, allowed, backend)."""

    def __init__(self, daemons, tenant, rate, stop):
        super().__init__(daemon=True)
        self.daemons, self.tenant, self.rate, self.stop = daemons, tenant, rate, stop
        self.answers = []
        self.errors = collections.Counter()
        self.conns = {}

    def ask(self, daemon):
        conn = self.conns.get(daemon.name) or http.client.HTTPConnection(
            "127.0.0.1", daemon.http_port, timeout=5
        )
        try:
            conn.request(
                "POST",
                "/v1/ratelimit/check",
                json.dumps({"tenant": self.tenant}),
                {"Content-Type": "application/json"},
            )
            reply = conn.getresponse()
            body = json.loads(reply.read() or b"{}")
            self.conns[daemon.name] = conn
            if reply.status in (200, 429):
                self.answers.append(
                    (time.time(), daemon.name, bool(body.get("allowed")), body.get("backend"))
                )
            else:
                self.errors[reply.status] += 1
        except (OSError, http.client.HTTPException, ValueError):
            conn.close()
            self.conns.pop(daemon.name, None)
            self.errors["connection"] += 1

    def run(self):
        i = 0
        next_at = time.time()
        while not self.stop.is_set():
            i += 1
            self.ask(self.daemons[i % len(self.daemons)])
            next_at += 1.0 / self.rate
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                next_at = time.time()


def connect(port, db="app", autocommit=True):
    # prepare_threshold=None: no server-side prepared statements, which
    # PgBouncer's transaction mode would send to another server connection.
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="app",
        dbname=db,
        connect_timeout=3,
        autocommit=autocommit,
        prepare_threshold=None,
    )


class SqlTenants(threading.Thread):
    """Healthy tenants' real SQL through PgBouncer, tagged sqlcommenter style;
    errors (faults) are counted and the worker reconnects."""

    def __init__(self, port, tenants, stop, seed):
        super().__init__(daemon=True)
        self.port, self.tenants, self.stop = port, tenants, stop
        self.rng = random.Random(seed)
        self.done = 0
        self.failed = 0

    def run(self):
        conn = None
        while not self.stop.is_set():
            tenant = self.rng.choice(self.tenants)
            try:
                if conn is None:
                    conn = connect(self.port)
                conn.execute(
                    f"UPDATE tenant_{tenant}.t SET v = v + 1 WHERE id = %s /* tenant='{tenant}' */",
                    (self.rng.randint(1, 50),),
                )
                conn.execute(
                    f"SELECT count(*) FROM tenant_{tenant}.t /* tenant='{tenant}' */"
                ).fetchone()
                self.done += 1
            except psycopg.Error:
                self.failed += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
            time.sleep(0.05)
        if conn is not None:
            conn.close()


class Misbehaviour(threading.Thread):
    """One scheduled misbehaviour, run between `start` and `end` (seconds
    from the run's start), recording when it really began and ended."""

    def __init__(self, kind, tenant, start, end, t0, port, sender, stop):
        super().__init__(daemon=True)
        self.kind, self.tenant, self.start_at, self.end_at = kind, tenant, start, end
        self.t0, self.port, self.sender, self.stop = t0, port, sender, stop
        self.began = self.ended = None
        # When it was in effect, which the report times the flags from:
        # the scheduled start can find PgBouncer paused or the sender
        # behind, and the effect then begins later than `began`.
        self.in_effect = None
        self.first_delivered = self.last_delivered = None
        self.lock = threading.Lock()
        self.problems = []

    def effective(self):
        """(onset, end): from its first effect (its first event delivered,
        the lock taken with enough waiters, the transaction opened) to the
        later of its end and its last event delivered."""
        onset = self.in_effect or self.first_delivered or self.began
        end = self.ended
        if end is not None and self.last_delivered is not None:
            end = max(end, self.last_delivered)
        return onset, end

    def delivered(self, at):
        """The sender sent one of this misbehaviour's events at `at`."""
        with self.lock:
            if self.first_delivered is None:
                self.first_delivered = at
            self.last_delivered = at

    def report(self, ms, error):
        self.sender.extra.append((self.tenant, "read", ms, error, self))

    def until_end(self):
        return not self.stop.is_set() and time.time() < self.t0 + self.end_at

    def run(self):
        delay = self.t0 + self.start_at - time.time()
        if delay > 0 and self.stop.wait(delay):
            return
        self.began = time.time()
        try:
            getattr(self, self.kind)()
        except psycopg.Error as e:
            self.problems.append(f"{type(e).__name__}: {e}".strip()[:200])
        self.ended = time.time()

    def db_time_hog(self):
        """Four sessions running 0.4 s queries back to back, and the app
        reporting each as an event with its measured duration."""

        def worker():
            try:
                with connect(self.port) as conn:
                    while self.until_end():
                        t = time.time()
                        conn.execute(
                            f"SELECT pg_sleep(0.4), count(*) FROM tenant_{self.tenant}.t "
                            f"/* tenant='{self.tenant}' */"
                        ).fetchone()
                        self.report((time.time() - t) * 1000.0, False)
            except psycopg.Error as e:
                self.problems.append(f"hog session: {e}".strip()[:200])

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def idle_in_transaction(self):
        with connect(self.port, autocommit=False) as conn:
            conn.execute(
                f"SELECT v FROM tenant_{self.tenant}.t WHERE id = 1 /* tenant='{self.tenant}' */"
            )
            self.in_effect = time.time()
            while self.until_end():
                time.sleep(0.2)
            conn.commit()

    def lock_blocker(self):
        """Holds a row lock that four other sessions queue behind."""
        with connect(self.port, autocommit=False) as conn:
            conn.execute(
                f"SELECT v FROM tenant_{self.tenant}.t WHERE id = 1 FOR UPDATE /* tenant='{self.tenant}' */"
            )

            waiting = []

            def waiter():
                try:
                    with connect(self.port) as w:
                        with self.lock:
                            waiting.append(time.time())
                            # The rule's threshold (3 waiters, the default)
                            # is met from the third on.
                            if len(waiting) == LOCK_WAITERS_NEEDED:
                                self.in_effect = waiting[-1]
                        w.execute(
                            f"UPDATE tenant_{self.tenant}.t SET v = v + 1 WHERE id = 1 /* tenant='queue' */"
                        )
                except psycopg.Error as e:
                    self.problems.append(f"waiter: {e}".strip()[:200])

            waiters = [threading.Thread(target=waiter, daemon=True) for _ in range(4)]
            for w in waiters:
                w.start()
            while self.until_end():
                time.sleep(0.2)
            conn.commit()
            for w in waiters:
                w.join(10)

    def error_storm(self):
        """Failing SQL (a missing table) and the app reporting the errors."""
        with connect(self.port) as conn:
            while self.until_end():
                for _ in range(5):
                    try:
                        conn.execute(
                            f"SELECT * FROM tenant_{self.tenant}.missing /* tenant='{self.tenant}' */"
                        )
                    except psycopg.errors.UndefinedTable:
                        self.report(1.0, True)
                time.sleep(0.1)
