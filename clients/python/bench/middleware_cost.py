"""What the Django middleware itself adds to a request, against a live daemon.

    TENANTWATCH_TEST_BIN=target/debug/tenantwatch \\
      target/venv/bin/python clients/python/bench/middleware_cost.py [--requests 20000]

Measured in one process, side by side:

- `check`: the middleware's own time per request (its total minus the time
  inside the view), with a `check` to the daemon on a kept-alive loopback
  connection, against the same view called bare, and beside it the floor:
  a `GET /healthz` on another kept-alive connection, sent and read by the
  client's own code; and the same check sent through `http.client` (what the
  client used first) on a third connection; in turns of 500 calls of each
  (one call after another on a connection, as a server thread makes them);
- `query`: the execute wrapper's own time per query (timing, classifying,
  queueing the event) around a no-op execute, against the no-op alone.

Prints the median and p99 of each, in microseconds.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests_live"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from daemon import Daemon
from django.conf import settings

settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], SECRET_KEY="bench", TENANTWATCH={})

import django  # noqa: E402

django.setup()

from django.http import HttpResponse  # noqa: E402
from django.test import RequestFactory  # noqa: E402

import tenantwatch  # noqa: E402
from tenantwatch.check import Checker  # noqa: E402
from tenantwatch.django import QueryRecorder, TenantwatchMiddleware  # noqa: E402


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


BLOCK = 500


def bench_requests(n: int) -> None:
    inside: list[float] = []
    response = HttpResponse("ok")

    def view(request):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        inside.append(time.perf_counter() - start)
        return response

    middleware = TenantwatchMiddleware(view)
    request = RequestFactory().get("/patients/")
    request.tenant = "clinic1"  # type: ignore[attr-defined]
    own: list[float] = []
    bare: list[float] = []
    probe: list[float] = []
    via_library: list[float] = []
    # The floor: a GET /healthz on its own kept-alive connection, the
    # cheapest round trip the daemon answers, sent and read by the same code.
    checker = tenantwatch.default_client().checker
    healthz = socket.create_connection((checker.host, checker.port))
    healthz.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    probe_request = b"GET /healthz HTTP/1.1\r\nHost: tenantwatch\r\n\r\n"

    def probe_once() -> None:
        Checker._exchange(healthz, probe_request, time.monotonic() + 1.0)

    # The same check through http.client (what the client used before):
    # the peer the raw exchange is measured against.
    library = http.client.HTTPConnection(checker.host, checker.port, timeout=1)
    check_body = b'{"tenant":"clinic1","cost":1}'
    check_headers = {"Content-Type": "application/json"}

    def library_once() -> None:
        library.request("POST", "/v1/ratelimit/check", check_body, check_headers)
        library.getresponse().read()

    for _ in range(1000):  # warm the connections and the code
        middleware(request)
        probe_once()
        library_once()
    inside.clear()
    # In blocks of BLOCK calls of each in turn: each path runs as a server
    # thread would run it (one call after another on its connection), and
    # all of them share the machine's noise.
    for _ in range(max(1, n // BLOCK)):
        for _ in range(BLOCK):
            start = time.perf_counter()
            view(request)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            middleware(request)
            own.append(time.perf_counter() - start - inside[-1])
        for _ in range(BLOCK):
            start = time.perf_counter()
            probe_once()
            probe.append(time.perf_counter() - start)
        for _ in range(BLOCK):
            start = time.perf_counter()
            library_once()
            via_library.append(time.perf_counter() - start)
    report("request (middleware with check)", own, bare)
    for what, samples in (
        ("floor, GET /healthz round trip", probe),
        ("the check through http.client", via_library),
    ):
        p50, p99 = percentiles(samples)
        print(f"  {what}: median {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us")
    stats = tenantwatch.default_client().stats().checks
    print(f"  checks {stats.checks}, failed {stats.failed}, denied {stats.denied}")


def bench_queries(n: int) -> None:
    class Cursor:
        rowcount = 3

    context = {"cursor": Cursor()}

    def execute(sql, params, many, context):  # type: ignore[no-untyped-def]
        return None

    recorder = QueryRecorder(tenantwatch.default_client(), "clinic1", endpoint="GET /patients/")
    own: list[float] = []
    bare: list[float] = []
    sql = "SELECT id, name FROM patients WHERE id = %s"
    for i in range(n):
        start = time.perf_counter()
        execute(sql, (i,), False, context)
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        recorder(execute, sql, (i,), False, context)
        own.append(time.perf_counter() - start)
        if i % 500 == 0:
            time.sleep(0.001)  # let the sender thread keep up, as real queries do
    report("query (execute wrapper)", own, bare)
    tenantwatch.default_client().flush()  # the last partial datagram
    stats = tenantwatch.default_client().stats().events
    print(f"  events queued {stats.queued}, sent {stats.sent}, dropped {stats.dropped}")


def report(what: str, own: list[float], bare: list[float]) -> None:
    p50, p99 = percentiles(own)
    b50, b99 = percentiles(bare)
    print(
        f"{what}: median {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us "
        f"(bare: median {b50 * 1e6:.2f} us, p99 {b99 * 1e6:.2f} us; n={len(own)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    daemon = Daemon()
    try:
        tenantwatch.configure(udp=daemon.udp_address, url=daemon.url)
        bench_requests(args.requests)
        bench_queries(args.requests)
    finally:
        tenantwatch.close()
        daemon.stop()


if __name__ == "__main__":
    main()
