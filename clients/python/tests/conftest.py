"""Fakes of the daemon's two doors for the unit tests: a UDP socket that
collects datagrams and an HTTP server that answers checks as told."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class UdpSink:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        self.datagrams: list[bytes] = []

    def collect(self, events: int, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Reads datagrams until `events` lines arrived (or the timeout)."""
        deadline = time.monotonic() + timeout
        while self.count() < events and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.datagrams.append(self.sock.recv(65536))
        return self.events()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for d in self.datagrams for line in d.split(b"\n")]

    def count(self) -> int:
        return sum(d.count(b"\n") + 1 for d in self.datagrams)


@pytest.fixture
def udp() -> Iterator[UdpSink]:
    sink = UdpSink()
    yield sink
    sink.sock.close()


class FakeDaemon:
    """Answers POST /v1/ratelimit/check with `self.answer(body)`."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.connections = 0
        self.delay = 0.0
        self.answer: Callable[[dict[str, Any]], tuple[int, dict[str, Any], dict[str, str]]] = (
            lambda body: (200, allowed(body["tenant"]), {})
        )
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                fake.connections += 1
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                fake.requests.append((body, dict(self.headers)))
                if fake.delay:
                    time.sleep(fake.delay)
                status, answer, headers = fake.answer(body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()


def allowed(tenant: str) -> dict[str, Any]:
    return {
        "allowed": True,
        "tenant": tenant,
        "limit": 200,
        "qps": 100.0,
        "remaining": 199,
        "retry_after_ms": 0,
        "policy": "default",
        "reason": "within quota",
        "backend": "local",
    }


def denied(tenant: str, retry_after_ms: int = 1500) -> dict[str, Any]:
    return {
        **allowed(tenant),
        "allowed": False,
        "remaining": 0,
        "retry_after_ms": retry_after_ms,
        "reason": "quota exceeded",
    }


RATE_HEADERS = {"RateLimit-Policy": '"default";q=200;w=2', "RateLimit": '"default";r=0;t=2'}


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    fake = FakeDaemon()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port
