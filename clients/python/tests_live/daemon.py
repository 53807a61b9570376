"""The real tenantwatch daemon as a child process, and its exposition read
as numbers: what the live tests and the benchmark run against."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CONFIG = """
[server]
listen = "127.0.0.1:{http}"
shutdown_grace = "2s"
shutdown_delay = "0s"
metrics_max_age = "0s"

[ingest]
udp_listen = "127.0.0.1:{udp}"

[detect]
interval = "200ms"

[detect.rules.error_storm]
for = "0s"
min = 5.0
tighten = true

[ratelimit]
default_qps = 100000.0
default_burst = 100000

[ratelimit.tenants.tiny]
qps = 0.2
burst = 2
"""


def binary() -> str:
    path = os.environ.get("TENANTWATCH_TEST_BIN")
    if not path or not Path(path).is_file():
        raise RuntimeError(
            "TENANTWATCH_TEST_BIN must name the daemon binary (tests/it/python_client.rs sets it; "
            "by hand: cargo build, then TENANTWATCH_TEST_BIN=target/debug/tenantwatch)"
        )
    return path


def free_port(kind: int) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    def __init__(self) -> None:
        self.http = free_port(socket.SOCK_STREAM)
        self.udp = free_port(socket.SOCK_DGRAM)
        self.dir = tempfile.TemporaryDirectory(prefix="tw-python-")
        config = Path(self.dir.name) / "tenantwatch.toml"
        config.write_text(CONFIG.format(http=self.http, udp=self.udp))
        self.log = open(Path(self.dir.name) / "daemon.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary(), "run", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.http}"
        self.udp_address = f"127.0.0.1:{self.udp}"
        deadline = time.monotonic() + 20
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not start: {self.log_text()}")
            time.sleep(0.05)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=5) as reply:
            return str(reply.read().decode())

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of the exposition, keyed by name and label set."""
        samples = {}
        line_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
        label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
        for line in self.get("/metrics").splitlines():
            match = line_re.match(line)
            if match and not line.startswith("#"):
                labels = frozenset(label_re.findall(match.group(2) or ""))
                samples[(match.group(1), labels)] = float(match.group(3))
        return samples

    def value(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def wait_for(self, what: str, done, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            result = done()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def log_text(self) -> str:
        self.log.flush()
        return (Path(self.dir.name) / "daemon.log").read_text(errors="replace")[-4000:]
