"""tenantwatch client: query events and rate-limit checks from Python.

    import tenantwatch

    tw = tenantwatch.Client()                  # settings from the environment
    tw.record_query("clinic1", "read", 12.5, rows=100, endpoint="GET /patients")
    decision = tw.check("clinic1")             # 50 ms at most, fails open
    if not decision.allowed:
        ...                                    # 429, Retry-After: decision.retry_after_header
    tw.close()                                 # flushes queued events

The module-level `record_query`, `check` and `close` use one shared client,
made on first use (`configure(...)` sets its options first).

Environment (each overridden by the matching argument):

- `TENANTWATCH_UDP`: the daemon's UDP event address, `127.0.0.1:8125`.
- `TENANTWATCH_URL`: its HTTP listener, `http://127.0.0.1:9645`.
- `TENANTWATCH_TOKEN` (or a file named by `TENANTWATCH_TOKEN_FILE`): the
  bearer token for checks, when the daemon has tokens.
- `TENANTWATCH_FAIL_MODE`: `open` (default) or `closed`.
- `TENANTWATCH_TIMEOUT_MS`: the check timeout, 50.

Integrations: `tenantwatch.django` (middleware and query instrumentation),
`tenantwatch.wsgi`, `tenantwatch.asgi`, `tenantwatch.sqlalchemy`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from .check import Checker, CheckStats, Decision
from .events import KINDS, EventSender, EventStats

__all__ = [
    "KINDS",
    "CheckStats",
    "Client",
    "Decision",
    "EventStats",
    "Stats",
    "check",
    "close",
    "configure",
    "default_client",
    "record_query",
]

__version__ = "0.1.0"


@dataclass(frozen=True)
class Stats:
    """A client's counters: its event path and its check path."""

    events: EventStats
    checks: CheckStats


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"TENANTWATCH_UDP must be host:port, not {text!r}")
    return host.strip("[]"), int(port)


def _token_from_env() -> str | None:
    token = os.environ.get("TENANTWATCH_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("TENANTWATCH_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    return None


class Client:
    """Sends query events and asks for rate-limit decisions.

    Thread-safe; one per process is enough. A forked child (gunicorn,
    uWSGI workers) starts its own sender thread on its first event.
    """

    def __init__(
        self,
        *,
        udp: str | tuple[str, int] | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        fail_mode: str | None = None,
        max_datagram: int = 1400,
        flush_interval: float = 0.1,
        queue_size: int = 10_000,
        instance: str | None = None,
    ) -> None:
        env = os.environ
        if udp is None:
            udp = env.get("TENANTWATCH_UDP", "127.0.0.1:8125")
        address = _parse_address(udp) if isinstance(udp, str) else udp
        if timeout is None:
            timeout = float(env.get("TENANTWATCH_TIMEOUT_MS", "50")) / 1000.0
        self.events = EventSender(
            address,
            max_datagram=max_datagram,
            flush_interval=flush_interval,
            queue_size=queue_size,
            instance=instance,
        )
        self.checker = Checker(
            url or env.get("TENANTWATCH_URL", "http://127.0.0.1:9645"),
            token=token if token is not None else _token_from_env(),
            timeout=timeout,
            fail_mode=fail_mode or env.get("TENANTWATCH_FAIL_MODE", "open"),
        )

    def record_query(
        self,
        tenant: str,
        kind: str,
        duration_ms: float,
        rows: int = 0,
        error: bool = False,
        endpoint: str | None = None,
    ) -> bool:
        """Queues one query event; never blocks. False when it was dropped."""
        return self.events.record(tenant, kind, duration_ms, rows, error, endpoint)

    def check(self, tenant: str, cost: int = 1) -> Decision:
        """A rate-limit decision for `cost` units of `tenant`'s quota."""
        return self.checker.check(tenant, cost)

    def stats(self) -> Stats:
        return Stats(self.events.stats, self.checker.stats)

    def flush(self) -> None:
        self.events.flush()

    def close(self) -> None:
        """Sends queued events and closes this thread's check connection."""
        self.events.close()
        self.checker.close()


_default: Client | None = None
_default_options: dict[str, Any] = {}
_default_lock = threading.Lock()


def configure(**options: Any) -> Client:
    """Replaces the shared client with one made with `options` (see `Client`)."""
    global _default
    with _default_lock:
        old, _default = _default, Client(**options)
        _default_options.clear()
        _default_options.update(options)
    if old is not None:
        old.close()
    return _default


def default_client() -> Client:
    """The shared client, made from the environment on first use."""
    global _default
    client = _default
    if client is None:
        with _default_lock:
            if _default is None:
                _default = Client(**_default_options)
            client = _default
    return client


def record_query(
    tenant: str,
    kind: str,
    duration_ms: float,
    rows: int = 0,
    error: bool = False,
    endpoint: str | None = None,
) -> bool:
    """`Client.record_query` on the shared client."""
    return default_client().record_query(tenant, kind, duration_ms, rows, error, endpoint)


def check(tenant: str, cost: int = 1) -> Decision:
    """`Client.check` on the shared client."""
    return default_client().check(tenant, cost)


def close() -> None:
    """Flushes and closes the shared client (a later call makes a new one)."""
    global _default
    with _default_lock:
        client, _default = _default, None
    if client is not None:
        client.close()
