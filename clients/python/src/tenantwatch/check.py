"""Rate-limit checks: `POST /v1/ratelimit/check` over a kept-alive connection.

Each thread keeps one HTTP/1.1 connection to the daemon, so a check costs
one round trip on loopback. The request (head and body) goes out in one
write, which the daemon answers on its fastest path (docs/api.md), and the
answer is read with a few byte splits: `http.client` parses headers with
the `email` package and cost about 100 µs more per check. A check waits at
most `timeout` (50 ms by default) in all, connect included; when the daemon
does not answer in time, or answers something other than a decision, the
check is decided by `fail_mode`: `open` allows, `closed` denies with a
one-second retry, and the failure is counted by reason.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FAIL_MODES = ("open", "closed")
PATH = "/v1/ratelimit/check"
# The most a decision's head and body may take: the daemon's are ~300 bytes.
MAX_ANSWER = 16384


class _Closed(Exception):
    """The daemon closed the connection before answering."""


class _BadAnswer(Exception):
    """Not an HTTP/1.1 answer this client understands."""


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
        head = f"POST {PATH} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        self._head = head.encode("latin-1")
        self._tls = ssl.create_default_context() if self.https else None
        self._local = threading.local()
        self._stats_lock = threading.Lock()

    def check(self, tenant: str, cost: int = 1) -> Decision:
        """One decision; never raises for a daemon that is down or slow."""
        body = json.dumps({"tenant": tenant, "cost": cost}, separators=(",", ":")).encode()
        request = self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        deadline = time.monotonic() + self.timeout
        for attempt in range(2):
            sock: socket.socket | None = getattr(self._local, "sock", None)
            reused = sock is not None
            try:
                if sock is None:
                    sock = self._connect(deadline)
                status, headers, data = self._exchange(sock, request, deadline)
            except TimeoutError:
                self._drop()
                return self._fail("timeout")
            except (_Closed, ConnectionResetError, BrokenPipeError):
                # The daemon closed an idle kept-alive connection
                # (server.idle_timeout): try once on a fresh one.
                self._drop()
                if reused and attempt == 0:
                    continue
                return self._fail("connect")
            except _BadAnswer:
                self._drop()
                return self._fail("bad_answer")
            except OSError:
                self._drop()
                return self._fail("connect")
            if headers.get(b"connection", b"").lower() == b"close":
                self._drop()
            return self._decide(status, headers, data)
        return self._fail("connect")

    def close(self) -> None:
        """Closes this thread's connection."""
        self._drop()

    def _connect(self, deadline: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), _remaining(deadline))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self._local.sock = sock
        return sock

    @staticmethod
    def _exchange(
        sock: socket.socket, request: bytes, deadline: float
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        sock.settimeout(_remaining(deadline))
        sock.sendall(request)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += _recv(sock, deadline)
            if len(buf) > MAX_ANSWER:
                raise _BadAnswer
        lines = buf[:end].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise _BadAnswer
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers:
            raise _BadAnswer  # the daemon sends Content-Length
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            raise _BadAnswer from None
        if not 0 <= length <= MAX_ANSWER:
            raise _BadAnswer
        data = buf[end + 4 :]
        while len(data) < length:
            data += _recv(sock, deadline)
        return int(code), headers, data[:length]

    def _decide(self, status: int, headers: dict[bytes, bytes], data: bytes) -> Decision:
        if status not in (200, 429):
            return self._fail(f"http_{status}")
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
                    (name, value.decode("latin-1"))
                    for name in ("RateLimit-Policy", "RateLimit")
                    if (value := headers.get(name.lower().encode())) is not None
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

    def _drop(self) -> None:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close()
            self._local.sock = None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _recv(sock: socket.socket, deadline: float) -> bytes:
    sock.settimeout(_remaining(deadline))
    chunk = sock.recv(4096)
    if not chunk:
        raise _Closed
    return chunk
