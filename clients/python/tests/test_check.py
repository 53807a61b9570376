from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import RATE_HEADERS, denied

import tenantwatch
from tenantwatch.check import Checker


def test_allowed_decision(daemon):
    checker = Checker(daemon.url, timeout=1.0)
    decision = checker.check("clinic1", cost=3)
    assert decision.allowed and not decision.failed
    assert (decision.limit, decision.remaining, decision.retry_after) == (200, 199, 0.0)
    assert daemon.requests[0][0] == {"tenant": "clinic1", "cost": 3}


def test_denied_decision_carries_retry_after_and_headers(daemon):
    daemon.answer = lambda body: (429, denied(body["tenant"], 1500), RATE_HEADERS)
    decision = Checker(daemon.url, timeout=1.0).check("clinic1")
    assert not decision.allowed
    assert decision.retry_after == 1.5
    assert decision.retry_after_header == "2"
    assert dict(decision.headers) == RATE_HEADERS


def test_the_connection_is_kept_alive(daemon):
    checker = Checker(daemon.url, timeout=1.0)
    for _ in range(20):
        assert checker.check("clinic1").allowed
    assert daemon.connections == 1


def test_a_connection_the_daemon_closed_is_reopened_without_a_failure(daemon):
    checker = Checker(daemon.url, timeout=1.0)
    assert checker.check("clinic1").allowed
    # The daemon's idle timeout closes the kept-alive connection.
    checker._local.sock.shutdown(socket.SHUT_RDWR)
    decision = checker.check("clinic1")
    assert decision.allowed and not decision.failed
    assert checker.stats.failed == 0


def test_token_from_the_environment(daemon, monkeypatch):
    monkeypatch.setenv("TENANTWATCH_TOKEN", "s3cret")
    client = tenantwatch.Client(url=daemon.url, timeout=1.0)
    client.check("clinic1")
    assert daemon.requests[0][1]["Authorization"] == "Bearer s3cret"


def test_token_file_from_the_environment(daemon, monkeypatch, tmp_path):
    path = tmp_path / "token"
    path.write_text("from-file\n")
    monkeypatch.delenv("TENANTWATCH_TOKEN", raising=False)
    monkeypatch.setenv("TENANTWATCH_TOKEN_FILE", str(path))
    tenantwatch.Client(url=daemon.url, timeout=1.0).check("clinic1")
    assert daemon.requests[0][1]["Authorization"] == "Bearer from-file"


@pytest.mark.parametrize(("fail_mode", "allowed"), [("open", True), ("closed", False)])
def test_daemon_down_is_decided_by_fail_mode(closed_port, fail_mode, allowed):
    checker = Checker(f"http://127.0.0.1:{closed_port}", fail_mode=fail_mode)
    decision = checker.check("clinic1")
    assert decision.failed and decision.allowed is allowed
    assert checker.stats.failures == {"connect": 1}
    if not allowed:
        assert decision.retry_after_header == "1"


def test_a_silent_daemon_fails_open_within_the_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (the kernel does), never answers
    checker = Checker(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.05)
    started = time.perf_counter()
    decision = checker.check("clinic1")
    elapsed = time.perf_counter() - started
    listener.close()
    assert decision.allowed and decision.failed
    assert checker.stats.failures == {"timeout": 1}
    assert elapsed < 0.5, f"took {elapsed:.3f} s"


def test_a_slow_answer_is_a_timeout(daemon):
    daemon.delay = 0.3
    checker = Checker(daemon.url, timeout=0.05)
    assert checker.check("clinic1").failed
    assert checker.stats.failures == {"timeout": 1}


@pytest.mark.parametrize("status", [400, 401, 403, 503])
def test_an_error_status_is_a_counted_failure(daemon, status):
    daemon.answer = lambda body: (status, {"title": "no"}, {})
    checker = Checker(daemon.url, timeout=1.0)
    decision = checker.check("clinic1")
    assert decision.allowed and decision.failed
    assert checker.stats.failures == {f"http_{status}": 1}


def test_a_bad_answer_is_a_counted_failure(daemon):
    daemon.answer = lambda body: (200, {"allowed": True}, {})
    checker = Checker(daemon.url, timeout=1.0)
    assert checker.check("clinic1").failed
    assert checker.stats.failures == {"bad_answer": 1}


def test_threads_use_their_own_connections(daemon):
    checker = Checker(daemon.url, timeout=1.0)
    results: list[bool] = []

    def run() -> None:
        results.extend(checker.check("clinic1").allowed for _ in range(10))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 40
    assert daemon.connections == 4
    assert checker.stats.checks == 40


@pytest.mark.parametrize("bad", [{"fail_mode": "maybe"}, {"timeout": 0}])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        Checker("http://127.0.0.1:9645", **bad)


def test_bad_url_is_refused():
    with pytest.raises(ValueError):
        Checker("127.0.0.1:9645")
