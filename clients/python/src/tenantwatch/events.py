"""Query events: `record_query` queues one NDJSON line and returns.

The caller never waits on the network. Lines go into a bounded deque; a
background thread packs them into UDP datagrams of at most `max_datagram`
bytes (1,400 by default, under a typical path MTU so nothing fragments) and
sends a datagram as soon as it is full, or every `flush_interval` (100 ms)
whatever it holds. When the deque is full the new event is dropped and
counted in `dropped`: losing an event is better than slowing a request.

The wire format is the NDJSON line of docs/ingest.md, one per event.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass

KINDS = ("read", "write", "other", "schema_switch")


@dataclass
class EventStats:
    """Counters of the event path since the client started."""

    queued: int = 0
    sent: int = 0
    datagrams: int = 0
    dropped: int = 0
    """Events refused because the queue was full (or the line alone was too long)."""
    send_errors: int = 0
    """Datagrams the socket refused (each loses the events it held)."""


def encode(
    tenant: str,
    kind: str,
    duration_ms: float,
    rows: int = 0,
    error: bool = False,
    endpoint: str | None = None,
    instance: str | None = None,
) -> bytes:
    """One NDJSON event line, without the trailing newline."""
    event: dict[str, object] = {
        "tenant": tenant,
        "kind": kind,
        "duration_ms": round(float(duration_ms), 3),
    }
    if rows:
        event["rows"] = int(rows)
    if error:
        event["error"] = True
    if endpoint:
        event["endpoint"] = endpoint
    if instance:
        event["instance"] = instance
    return json.dumps(event, separators=(",", ":")).encode()


class EventSender:
    """Batches event lines into datagrams from a background thread."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        max_datagram: int = 1400,
        flush_interval: float = 0.1,
        queue_size: int = 10_000,
        instance: str | None = None,
    ) -> None:
        if max_datagram < 256:
            raise ValueError("max_datagram must be at least 256 bytes")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.address = address
        self.max_datagram = max_datagram
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.instance = instance
        self.stats = EventStats()
        self._lines: collections.deque[bytes] = collections.deque()
        # Wake the sender early once about a datagram's worth is queued.
        self._wake_at = max(1, max_datagram // 120)
        self._wake = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        _after_fork.add(self)

    def record(
        self,
        tenant: str,
        kind: str,
        duration_ms: float,
        rows: int = 0,
        error: bool = False,
        endpoint: str | None = None,
    ) -> bool:
        """Queues one event; False when it was dropped (queue full, closed)."""
        lines = self._lines
        if self._closed or len(lines) >= self.queue_size:
            self.stats.dropped += 1
            return False
        line = encode(tenant, kind, duration_ms, rows, error, endpoint, self.instance)
        if len(line) > self.max_datagram:
            self.stats.dropped += 1
            return False
        lines.append(line)
        self.stats.queued += 1
        if self._thread is None:
            self._start()
        elif len(lines) >= self._wake_at and not self._wake.is_set():
            self._wake.set()
        return True

    def flush(self) -> None:
        """Sends everything queued now, from the calling thread."""
        with self._lock:
            self._drain()

    def close(self, timeout: float = 1.0) -> None:
        """Stops the thread and sends what is queued. Later events are dropped."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.flush()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            if self._sock is None:
                family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock = sock
            thread = threading.Thread(target=self._run, name="tenantwatch-events", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        while not self._closed:
            woken = self._wake.wait(self.flush_interval)
            self._wake.clear()
            with self._lock:
                # Woken because a datagram's worth is waiting: full
                # datagrams only; the rest leads the next one, or goes when
                # the interval passes without a wake. Sending the remainder
                # too would make a partial datagram at every wake whenever
                # the thread lags behind the caller (a busy machine).
                self._drain(whole_only=woken and not self._closed)

    def _drain(self, whole_only: bool = False) -> None:
        # Called with self._lock held. A partial datagram is at most one
        # flush_interval old: the thread wakes at least that often.
        lines = self._lines
        batch: list[bytes] = []
        size = 0
        seen_lines = seen_bytes = 0
        while lines:
            try:
                line = lines.popleft()
            except IndexError:
                break
            seen_lines += 1
            seen_bytes += len(line) + 1
            if batch and size + 1 + len(line) > self.max_datagram:
                self._send(batch)
                batch, size = [], 0
            size += len(line) + (1 if batch else 0)
            batch.append(line)
        if seen_lines:
            # Wake next when a little more than a datagram of lines of the
            # size just seen is queued: each early wake then sends one.
            self._wake_at = self.max_datagram * seen_lines // seen_bytes + 1
        if batch and whole_only:
            # Not a full datagram: back to the front of the queue, in order.
            lines.extendleft(reversed(batch))
        elif batch:
            self._send(batch)

    def _send(self, batch: list[bytes]) -> None:
        sock = self._sock
        if sock is None:
            self.stats.send_errors += 1
            return
        try:
            sock.sendto(b"\n".join(batch), self.address)
        except OSError:
            # Nobody listening (ICMP refused), a full socket buffer: the
            # datagram is lost, which UDP allows; the counter says so.
            self.stats.send_errors += 1
            return
        self.stats.sent += len(batch)
        self.stats.datagrams += 1

    def _reset_after_fork(self) -> None:
        # The thread did not survive fork(); a child starts its own on its
        # first event and never sends the parent's queued lines twice.
        self._thread = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._lines.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_after_fork: weakref.WeakSet[EventSender] = weakref.WeakSet()


def _reset_all() -> None:
    for sender in list(_after_fork):
        sender._reset_after_fork()


def _flush_all() -> None:
    # The sender thread is a daemon thread: at exit, send what it had not.
    for sender in list(_after_fork):
        sender.flush()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all)
atexit.register(_flush_all)


def monotonic_ms() -> float:
    """Milliseconds on the monotonic clock, for timing queries."""
    return time.perf_counter() * 1000.0
