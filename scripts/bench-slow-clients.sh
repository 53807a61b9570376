#!/usr/bin/env bash
# Slow and heavy clients against the release daemon with 10,000 tenants:
# 200 connections that ask for /metrics and never read, 8 clients looping
# on /api/v1/capacity and /metrics, UDP at UDP_RATE events/s (about half
# the zero-loss rate of scripts/bench-ingest.sh), while /healthz and
# /v1/ratelimit/check are probed. Prints the daemon's peak RSS, the probes'
# p50/p99 and the kernel's UDP drops (examples/slow_clients.rs).
#
#   scripts/bench-slow-clients.sh                 # 30 s, 200,000 events/s
#   SECONDS_RUN=60 UDP_RATE=150000 MAX_HEAVY=1 scripts/bench-slow-clients.sh
#   TENANTWATCH_BIN=/tmp/prev/target/release/tenantwatch scripts/bench-slow-clients.sh
#                                                 # another build, side by side
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_RUN=${SECONDS_RUN:-30}
UDP_RATE=${UDP_RATE:-200000}
command -v python3 >/dev/null || { echo "bench-slow-clients.sh: python3 is missing (apt-get install python3)" >&2; exit 1; }

cargo build --release --locked --quiet --bin tenantwatch --example slow_clients
WORK=$(mktemp -d)
DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

HTTP=127.0.0.1:$(free_port)
UDP=127.0.0.1:$(free_port)
cat > "$WORK/tenantwatch.toml" <<TOML
[server]
listen = "$HTTP"
max_heavy_requests = ${MAX_HEAVY:-0}
metrics_max_age = "${METRICS_MAX_AGE:-10s}"
[ingest]
udp_listen = "$UDP"
TOML
"${TENANTWATCH_BIN:-target/release/tenantwatch}" run --config "$WORK/tenantwatch.toml" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 50); do
  curl -fsS "http://$HTTP/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
target/release/examples/slow_clients "$HTTP" "$UDP" "$DAEMON_PID" "$SECONDS_RUN" "$UDP_RATE"
