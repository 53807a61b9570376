#!/usr/bin/env bash
# RSS of the release daemon at 10,000 tenants x 3 kinds: 3 s of UDP at
# 200,000 events/s (20 per datagram), then 5 scrapes (SCRAPES=n for more);
# prints the RSS and its peak (VmHWM). Give another build to compare side by
# side:
#
#   scripts/bench-rss.sh                                   # this checkout
#   scripts/bench-rss.sh /tmp/prev/target/release/tenantwatch
#   SCRAPES=40 scripts/bench-rss.sh                        # growth over scrapes
set -euo pipefail
cd "$(dirname "$0")/.."
# Build this checkout, unless another build is measured and the load
# generator is already built.
if [ $# -eq 0 ] || [ ! -x target/release/examples/udp_bench ]; then
  cargo build --release --locked --quiet --bin tenantwatch --example udp_bench
fi
BIN=${1:-target/release/tenantwatch}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(free_port); UDP=$(free_port); WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
printf '[server]\nlisten = "127.0.0.1:%s"\nmetrics_max_age = "0s"\n[ingest]\nudp_listen = "127.0.0.1:%s"\nudp_recv_buffer_bytes = 8388608\nmax_tenants = 10000\n' \
  "$HTTP" "$UDP" > "$WORK/tenantwatch.toml"
TENANTWATCH_LOG=warn "$BIN" run --config "$WORK/tenantwatch.toml" &
PID=$!
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
target/release/examples/udp_bench send "127.0.0.1:$UDP" 200000 20 3 10000 >/dev/null
sleep 1
for _ in $(seq "${SCRAPES:-5}"); do curl -s -o /dev/null "http://127.0.0.1:$HTTP/metrics"; done
tracked=$(curl -s "http://127.0.0.1:$HTTP/metrics" | awk '$1 == "tenantwatch_tenants_tracked" {print $2}')
echo "$BIN: $tracked tenants, RSS $(awk '/^VmRSS/ {print int($2/1024)}' "/proc/$PID/status") MiB, peak $(awk '/^VmHWM/ {print int($2/1024)}' "/proc/$PID/status") MiB"
