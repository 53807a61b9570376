"""Rate-limit checks: `POST /v1/ratelimit/check` over a kept-alive connection.

Each thread keeps one HTTP/1.1 connection to the daemon (`http.client` is
not thread-safe), so a check costs one round trip on loopback. A check
waits at most `timeout` (50 ms by default) for each step (connect, send,
answer); when the daemon does not answer, or answers something other than
a decision, the check is decided by `fail_mode`: `open` allows, `closed`
denies with a one-second retry, and the failure is counted by reason.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FAIL_MODES = ("open", "closed")
PATH = "/v1/ratelimit/check"


@dataclass(frozen=True)
class Decision:
    """What the daemon (or `fail_mode`) decided for one check."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    """Seconds until a denied check of this cost could pass (0 when allowed)."""
    policy: str = ""
    reason: str = ""
    failed: bool = False
    """True when the daemon gave no decision and `fail_mode` decided."""
    headers: tuple[tuple[str, str], ...] = field(default=())
    """The `RateLimit-Policy` and `RateLimit` headers to pass on to the caller."""

    @property
    def retry_after_header(self) -> str:
        """`Retry-After` in whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


@dataclass
class CheckStats:
    """Counters of the check path since the client started."""

    checks: int = 0
    denied: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    """Checks decided by `fail_mode`, by reason: `timeout`, `connect`,
    `http_<status>`, `bad_answer`."""

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class Checker:
    """Asks the daemon for rate-limit decisions."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 0.05,
        fail_mode: str = "open",
    ) -> None:
        if fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be 'open' or 'closed', not {fail_mode!r}")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the daemon's URL must be http(s)://host:port, not {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.timeout = timeout
        self.fail_mode = fail_mode
        self.stats = CheckStats()
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._stats_lock = threading.Lock()

    def check(self, tenant: str, cost: int = 1) -> Decision:
        """One decision; never raises for a daemon that is down or slow."""
        body = json.dumps({"tenant": tenant, "cost": cost}, separators=(",", ":")).encode()
        reason = "connect"
        for attempt in range(2):
            conn, reused = self._connection()
            try:
                # A bytes body goes out in the same write as the head.
                conn.request("POST", PATH, body, self._headers)
                reply = conn.getresponse()
                data = reply.read()
            except TimeoutError:
                reason = "timeout"
                self._drop()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The daemon closed an idle kept-alive connection
                # (server.idle_timeout): try once on a fresh one.
                self._drop()
                reason = "connect"
                if reused and attempt == 0:
                    continue
                break
            except (OSError, http.client.HTTPException):
                reason = "connect"
                self._drop()
                break
            if reply.will_close:
                self._drop()
            return self._decide(reply, data)
        return self._fail(reason)

    def close(self) -> None:
        """Closes this thread's connection."""
        self._drop()

    def _decide(self, reply: http.client.HTTPResponse, data: bytes) -> Decision:
        if reply.status not in (200, 429):
            return self._fail(f"http_{reply.status}")
        try:
            answer = json.loads(data)
            decision = Decision(
                allowed=bool(answer["allowed"]),
                limit=int(answer["limit"]),
                remaining=int(answer["remaining"]),
                retry_after=float(answer["retry_after_ms"]) / 1000.0,
                policy=str(answer.get("policy", "")),
                reason=str(answer.get("reason", "")),
                headers=tuple(
                    (name, value)
                    for name in ("RateLimit-Policy", "RateLimit")
                    if (value := reply.getheader(name)) is not None
                ),
            )
        except (ValueError, KeyError, TypeError):
            return self._fail("bad_answer")
        with self._stats_lock:
            self.stats.checks += 1
            if not decision.allowed:
                self.stats.denied += 1
        return decision

    def _fail(self, reason: str) -> Decision:
        allowed = self.fail_mode == "open"
        with self._stats_lock:
            self.stats.checks += 1
            self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1
            if not allowed:
                self.stats.denied += 1
        return Decision(
            allowed=allowed,
            limit=0,
            remaining=0,
            retry_after=0.0 if allowed else 1.0,
            reason=f"tenantwatch unavailable ({reason}; fail_mode {self.fail_mode})",
            failed=True,
        )

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        if self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def _drop(self) -> None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
