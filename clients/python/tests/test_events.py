from __future__ import annotations

import os
import time

import tenantwatch
from tenantwatch.events import EventSender, encode


def test_record_query_sends_ndjson_lines(udp):
    client = tenantwatch.Client(udp=udp.address, url="http://127.0.0.1:1")
    client.record_query("clinic1", "read", 12.5, rows=100, endpoint="GET /patients/<int:id>")
    client.record_query("clinic1", "write", 3.1, error=True)
    client.close()
    events = udp.collect(2)
    assert events == [
        {
            "tenant": "clinic1",
            "kind": "read",
            "duration_ms": 12.5,
            "rows": 100,
            "endpoint": "GET /patients/<int:id>",
        },
        {"tenant": "clinic1", "kind": "write", "duration_ms": 3.1, "error": True},
    ]
    assert len(udp.datagrams) == 1
    stats = client.stats().events
    assert (stats.queued, stats.sent, stats.datagrams, stats.dropped) == (2, 2, 1, 0)


def test_datagrams_stay_within_the_limit_and_lose_nothing(udp):
    client = tenantwatch.Client(udp=udp.address, flush_interval=10.0, max_datagram=1400)
    for i in range(500):
        client.record_query(f"tenant-{i % 7}", "read", i / 10, rows=i, endpoint="GET /a/b/c")
    client.close()
    events = udp.collect(500)
    assert len(events) == 500
    assert [e["rows"] for e in events if "rows" in e] == list(range(1, 500))
    assert max(len(d) for d in udp.datagrams) <= 1400
    # Packed, not one event per datagram: ~80-byte lines fill each datagram.
    assert len(udp.datagrams) <= 500 * 90 // 1300 + 1


def test_a_sender_thread_that_keeps_up_still_sends_full_datagrams(udp):
    # Events a little apart, so the thread wakes at every datagram's worth:
    # it used to send what it found each time, a datagram two thirds full
    # when lines are shorter than it guessed (found under load, where the
    # thread lags behind the caller: 36 datagrams for 500 events).
    client = tenantwatch.Client(udp=udp.address, flush_interval=10.0, max_datagram=1400)
    for i in range(300):
        client.record_query(f"tenant-{i % 7}", "read", i / 10, rows=i, endpoint="GET /a/b/c")
        time.sleep(0.0005)
    client.close()
    assert len(udp.collect(300)) == 300
    *full, _last = udp.datagrams
    longest_line = max(len(line) for d in udp.datagrams for line in d.split(b"\n"))
    assert all(len(d) > 1400 - longest_line - 1 for d in full), [len(d) for d in full]


def test_a_full_datagram_goes_before_the_interval(udp):
    client = tenantwatch.Client(udp=udp.address, flush_interval=30.0)
    for _ in range(100):
        client.record_query("clinic1", "read", 1.0)
    # The interval is 30 s: only the size trigger can deliver these now,
    # every full datagram of them; the rest waits for the interval (or
    # close), to lead the next datagram.
    line = len(encode("clinic1", "read", 1.0)) + 1
    in_full = 100 // ((1400 + 1) // line) * ((1400 + 1) // line)
    assert len(udp.collect(in_full, timeout=2.0)) == in_full
    client.close()
    assert len(udp.collect(100)) == 100


def test_partial_datagrams_go_every_interval(udp):
    client = tenantwatch.Client(udp=udp.address, flush_interval=0.1)
    client.record_query("clinic1", "read", 1.0)
    started = time.monotonic()
    assert len(udp.collect(1, timeout=2.0)) == 1
    assert time.monotonic() - started < 1.5
    client.close()


def test_overflow_is_dropped_and_counted(udp):
    sender = EventSender(udp.address, queue_size=10, flush_interval=30.0)
    sender._thread = object()  # type: ignore[assignment]  # no sender thread: the queue only fills
    accepted = [sender.record("clinic1", "read", 1.0) for _ in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert sender.stats.dropped == 5
    assert sender.stats.queued == 10


def test_record_after_close_is_dropped(udp):
    client = tenantwatch.Client(udp=udp.address)
    client.close()
    assert client.record_query("clinic1", "read", 1.0) is False
    assert client.stats().events.dropped == 1


def test_a_line_longer_than_a_datagram_is_dropped(udp):
    client = tenantwatch.Client(udp=udp.address, max_datagram=256)
    assert client.record_query("t" * 300, "read", 1.0) is False
    client.close()


def test_encode_rounds_and_omits_defaults():
    assert encode("a", "other", 1.23456) == b'{"tenant":"a","kind":"other","duration_ms":1.235}'
    line = encode("a", "read", 1, rows=2, instance="web-1")
    assert line == b'{"tenant":"a","kind":"read","duration_ms":1.0,"rows":2,"instance":"web-1"}'


def test_a_forked_child_sends_its_own_events(udp):
    client = tenantwatch.Client(udp=udp.address)
    client.record_query("parent", "read", 1.0)
    client.flush()
    pid = os.fork()
    if pid == 0:  # the child: its sender thread was not inherited
        try:
            client.record_query("child", "read", 1.0)
            client.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    client.close()
    assert sorted(e["tenant"] for e in udp.collect(2)) == ["child", "parent"]


def test_module_level_functions_use_the_environment(udp, monkeypatch):
    monkeypatch.setenv("TENANTWATCH_UDP", f"127.0.0.1:{udp.address[1]}")
    tenantwatch.close()
    tenantwatch.record_query("clinic9", "read", 2.0)
    tenantwatch.close()
    assert udp.collect(1) == [{"tenant": "clinic9", "kind": "read", "duration_ms": 2.0}]


def test_events_queued_at_exit_are_sent(udp):
    code = (
        "import tenantwatch; "
        f"c = tenantwatch.Client(udp=('127.0.0.1', {udp.address[1]}), flush_interval=30); "
        "c.record_query('atexit', 'read', 1.0)"
    )
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True)
    assert [e["tenant"] for e in udp.collect(1)] == ["atexit"]
