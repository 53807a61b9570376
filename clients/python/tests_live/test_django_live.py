"""The Django middleware and query instrumentation in a real project on
PostgreSQL, against the real daemon: events counted exactly against a
ledger, 429s over quota and when flagged, fail-open when the daemon is down."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from daemon import Daemon
from django.test import Client as DjangoClient

import tenantwatch


@pytest.fixture
def tw(daemon):
    # A long timeout: on a loaded machine a 50 ms one could fail open here.
    client = tenantwatch.configure(
        udp=daemon.udp_address, url=daemon.url, flush_interval=0.02, timeout=2.0
    )
    yield client
    tenantwatch.close()


def get(tenant: str, path: str = "/patients/", method: str = "get"):
    return getattr(DjangoClient(), method)(path, HTTP_HOST=f"{tenant}.example.test")


def test_events_match_the_ledger_exactly(daemon, tw):
    # What the views run, per request: (tenant, kind) -> queries, rows, errors.
    queries: Counter[tuple[str, str]] = Counter()
    rows: Counter[tuple[str, str]] = Counter()
    errors: Counter[tuple[str, str]] = Counter()
    endpoints: Counter[tuple[str, str]] = Counter()
    plan = [("clinic1", "get", "/patients/")] * 5 + [("clinic1", "post", "/patients/")] * 2
    plan += [("clinic1", "get", "/broken/"), ("clinic2", "get", "/patients/")] * 3
    # django-tenants sets the search_path on each new cursor, through
    # Django's cursor (so the wrapper sees it): one schema switch per view.
    switches: Counter[str] = Counter()
    for tenant, method, path in plan:
        switches[tenant] += 1
        status = get(tenant, path, method).status_code
        if path == "/broken/":
            assert status == 500
            queries[tenant, "read"] += 1
            errors[tenant, "read"] += 1
            endpoints[tenant, "GET /broken/"] += 1
        elif method == "post":
            assert status == 200
            queries[tenant, "write"] += 1
            rows[tenant, "write"] += 1
            endpoints[tenant, "POST /patients/"] += 1
        else:
            assert status == 200
            queries[tenant, "read"] += 1
            rows[tenant, "read"] += 3
            endpoints[tenant, "GET /patients/"] += 1
    tw.flush()
    total = sum(queries.values()) + sum(switches.values())
    daemon.wait_for(
        f"{total} events",
        lambda: daemon.value("tenantwatch_events_received_total", source="udp") >= total,
    )
    m = daemon.metrics()

    def sample(name: str, **labels: str) -> float:
        return m.get((name, frozenset(labels.items())), 0.0)

    assert sample("tenantwatch_events_received_total", source="udp") == total
    rejected = sum(v for (n, _), v in m.items() if n == "tenantwatch_events_rejected_total")
    assert rejected == 0
    for tenant in ("clinic1", "clinic2"):
        for kind in ("read", "write"):
            key = (tenant, kind)
            labels = {"tenant": tenant, "kind": kind}
            assert sample("tenantwatch_tenant_queries_total", **labels) == queries[key], key
            assert sample("tenantwatch_tenant_rows_total", **labels) == rows[key], key
            assert sample("tenantwatch_tenant_query_errors_total", **labels) == errors[key], key
    for tenant, count in switches.items():
        got = sample("tenantwatch_tenant_schema_switch_duration_seconds_count", tenant=tenant)
        assert got == count, tenant
    for (tenant, endpoint), count in endpoints.items():
        got = sample("tenantwatch_tenant_endpoint_queries_total", tenant=tenant, endpoint=endpoint)
        assert got == count, (tenant, endpoint)
    stats = tw.stats()
    assert stats.events.dropped == 0 and stats.events.send_errors == 0
    assert stats.checks.failed == 0


def test_over_quota_is_429_with_retry_after(daemon, tw):
    # `tiny` has burst 2 at 0.2/s: the third request within a second is denied.
    answers = [get("tiny") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    denied = answers[2]
    assert int(denied["Retry-After"]) >= 1
    assert denied["RateLimit-Policy"].startswith('"tenant:tiny";q=2')
    assert denied["RateLimit"].startswith('"tenant:tiny";r=0')
    assert answers[0]["RateLimit-Policy"] == denied["RateLimit-Policy"]
    # The denied request ran no query: two events only.
    tw.flush()
    daemon.wait_for(
        "tiny's events",
        lambda: daemon.value("tenantwatch_tenant_queries_total", tenant="tiny", kind="read") >= 2,
    )
    time.sleep(0.2)
    assert daemon.value("tenantwatch_tenant_queries_total", tenant="tiny", kind="read") == 2


def test_a_flagged_tenant_is_tightened_to_429(daemon, tw):
    # Failing queries through the app raise error_storm, which tightens
    # `stormy` from 100,000/s to a fair share; `clinic2` keeps its quota.
    for _ in range(20):
        # The flag may be raised (and the quota cut) within the loop.
        assert get("stormy", "/broken/").status_code in (500, 429)
        assert get("clinic2").status_code == 200
    tw.flush()
    daemon.wait_for("stormy's advice", lambda: '"tenant":"stormy"' in daemon.get("/api/v1/advice"))
    codes = [get("stormy").status_code for _ in range(50)]
    assert 429 in codes, codes
    assert all(get("clinic2").status_code == 200 for _ in range(50))


def test_fail_open_within_the_timeout_when_the_daemon_is_down():
    own = Daemon()
    try:
        client = tenantwatch.configure(udp=own.udp_address, url=own.url, timeout=2.0)
        assert get("clinic1").status_code == 200
        assert client.stats().checks.failed == 0
        client = tenantwatch.configure(udp=own.udp_address, url=own.url, timeout=0.05)
        own.pause()  # hung: connections queue in the kernel, nothing answers
        started = time.perf_counter()
        assert get("clinic1").status_code == 200
        hung = time.perf_counter() - started
        assert client.stats().checks.failures == {"timeout": 1}
        own.resume()
        own.kill()  # gone: connections refused
        started = time.perf_counter()
        assert get("clinic1").status_code == 200
        gone = time.perf_counter() - started
        assert client.stats().checks.failures == {"timeout": 1, "connect": 1}
        print(f"fail-open: hung daemon {hung * 1000:.1f} ms, stopped daemon {gone * 1000:.1f} ms")
        # Loose bounds (10x the timeout): the point is that nothing waits
        # for the daemon beyond its timeout, not a latency target.
        assert hung < 0.5 and gone < 0.5
    finally:
        tenantwatch.close()
        own.stop()
