#!/usr/bin/env bash
# Rate-limit check benchmark: POST /v1/ratelimit/check throughput and latency
# with wrk (Debian's package) over loopback keep-alive connections, checks
# spread over 1,000 tenants. wrk shares the machine's cores with the daemon.
#
#   scripts/bench-ratelimit.sh                 # 3 runs of 10 s, median reported
#   RUNS=5 DURATION=20s CONNECTIONS=64 scripts/bench-ratelimit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}

for tool in wrk curl python3; do
  if ! command -v "$tool" >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    else
      echo "bench-ratelimit.sh: $tool is missing (apt-get install $tool)" >&2; exit 1
    fi
  fi
done

cargo build --release --locked --quiet --bin tenantwatch
WORK=$(mktemp -d)
DAEMON_PID=""
cleanup() { [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/tenantwatch.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
[ingest]
udp_listen = ""
[ratelimit]
default_qps = 1000000.0
default_burst = 1000000
CONF
TENANTWATCH_LOG=warn target/release/tenantwatch run --config "$WORK/tenantwatch.toml" &
DAEMON_PID=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

cat > "$WORK/check.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"tenant":"tenant' .. (n % 1000) .. '","cost":1}')
end
LUA

echo "== POST /v1/ratelimit/check, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, 1,000 tenants, $RUNS runs"
for run in $(seq "$RUNS"); do
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/check.lua" "http://127.0.0.1:$PORT/v1/ratelimit/check" > "$WORK/run$run.txt"
  rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/run$run.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$WORK/run$run.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/run$run.txt")
  echo "run $run: ${rps} checks/s, p99 ${p99}, non-2xx ${non2xx:-0}"
  echo "$rps" >> "$WORK/rps"
done
echo "median: $(sort -n "$WORK/rps" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') checks/s"
