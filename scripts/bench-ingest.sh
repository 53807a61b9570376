#!/usr/bin/env bash
# Ingest benchmark: the highest event rate the daemon sustains over loopback
# UDP with zero loss, beside a raw-receive baseline measured in the same run,
# plus RSS and /metrics scrape cost with 10,000 active tenants.
#
#   scripts/bench-ingest.sh                 # all of it (about 10 minutes)
#   REPEATS=1 TRIAL_SECONDS=2 scripts/bench-ingest.sh   # quicker, noisier
#   BASELINE_BIN=/path/to/older/tenantwatch scripts/bench-ingest.sh
#                                           # that build searched in the same run
#   SCRAPE_ONLY=1 [BASELINE_BIN=...] scripts/bench-ingest.sh
#                                           # only the /metrics figures, builds
#                                           # alternating over ROUNDS (3) rounds
#   SCRAPE_ONLY=1 GZIP=1 ...                # the same, gzip'd as Prometheus asks
#   SCRAPE_ONLY=1 GZIP=1 IDLE_TENANTS=100000 TENANTS=10000 IDLE_AFTER=15s ...
#                                           # IDLE_TENANTS send, go idle for
#                                           # IDLE_AFTER (metrics.idle_after and
#                                           # ingest.share_window, >= 12s), then
#                                           # TENANTS of them send again
#                                           # (a build without metrics.idle_after
#                                           # exports every tenant)
#
# A trial sends at a fixed rate from a separate process (examples/udp_bench.rs)
# for TRIAL_SECONDS, waits for the receiver to drain, and passes when every
# event sent was counted. The search doubles the rate until a trial fails,
# then bisects. Each search runs REPEATS times; the median is reported.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=${REPEATS:-3}
TRIAL_SECONDS=${TRIAL_SECONDS:-3}
TENANTS=${TENANTS:-10000}
IDLE_TENANTS=${IDLE_TENANTS:-0}
IDLE_AFTER=${IDLE_AFTER:-15s}
MAX_TENANTS=$(( IDLE_TENANTS > TENANTS ? IDLE_TENANTS : TENANTS ))
RECV_BUFFER=${RECV_BUFFER:-8388608}
BISECT_STEPS=${BISECT_STEPS:-4}
UDP_RECEIVERS=${UDP_RECEIVERS:-2}

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-ingest.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

cargo build --release --locked --quiet --bin tenantwatch --example udp_bench
BIN=target/release/tenantwatch
BENCH=target/release/examples/udp_bench
BASELINE_BIN=${BASELINE_BIN:-}
WORK=$(mktemp -d)
DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# start_daemon BINARY: (re)starts the daemon under test on fresh ports
start_daemon() {
  if [ -n "$DAEMON_PID" ]; then kill "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
  HTTP_PORT=$(free_port)
  DAEMON_UDP=$(free_port)
cat > "$WORK/tenantwatch.toml" <<EOF
[server]
listen = "127.0.0.1:$HTTP_PORT"
# Every scrape encodes afresh: the figure is the encode, not the cache.
metrics_max_age = "0s"
[ingest]
udp_listen = "127.0.0.1:$DAEMON_UDP"
udp_recv_buffer_bytes = $RECV_BUFFER
udp_receivers = $UDP_RECEIVERS
max_tenants = $MAX_TENANTS
EOF
  if [ "$IDLE_TENANTS" -gt 0 ]; then
    # Older builds refuse the key they do not know: they run without it.
    cp "$WORK/tenantwatch.toml" "$WORK/without-idle.toml"
    printf 'share_window = "%s"\n[metrics]\nidle_after = "%s"\n' "$IDLE_AFTER" "$IDLE_AFTER" >> "$WORK/tenantwatch.toml"
    "$1" check-config "$WORK/tenantwatch.toml" >/dev/null 2>&1 || cp "$WORK/without-idle.toml" "$WORK/tenantwatch.toml"
  fi
  TENANTWATCH_LOG=warn "$1" run --config "$WORK/tenantwatch.toml" &
  DAEMON_PID=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.1; done
}

scrape() { curl -sf "http://127.0.0.1:$HTTP_PORT/metrics"; }
udp_received() { scrape | awk '$1 == "tenantwatch_events_received_total{source=\"udp\"}" {printf "%d\n", $2}'; }

# sent_ok RATE "SENT ACHIEVED" -> exit 0 when the sender kept within 3% of RATE
sent_ok() { python3 -c "import sys; sys.exit(0 if float('$2'.split()[1]) >= 0.97 * $1 else 1)"; }

# trial_daemon RATE PER_DATAGRAM -> exit 0 when the rate was sent and nothing was lost
trial_daemon() {
  local before out after
  before=$(udp_received)
  out=$("$BENCH" send "127.0.0.1:$DAEMON_UDP" "$1" "$2" "$TRIAL_SECONDS" "$TENANTS")
  sleep 1
  after=$(udp_received)
  sent_ok "$1" "$out" && [ $((after - before)) -eq "${out%% *}" ]
}

# trial_raw RATE PER_DATAGRAM -> exit 0 when nothing was lost
trial_raw() {
  local port out got
  port=$(free_port)
  "$BENCH" sink "127.0.0.1:$port" "$RECV_BUFFER" 1000 > "$WORK/sink.out" &
  local sink=$!
  sleep 0.2
  out=$("$BENCH" send "127.0.0.1:$port" "$1" "$2" "$TRIAL_SECONDS" "$TENANTS")
  wait "$sink"
  got=$(awk '{print $2}' "$WORK/sink.out")
  sent_ok "$1" "$out" && [ "$got" -eq "${out%% *}" ]
}

# search TRIAL PER_DATAGRAM START_RATE -> the highest passing rate
search() {
  local trial=$1 per=$2 rate=$3 lo=0 hi=0
  while [ "$rate" -le 64000000 ]; do
    if "$trial" "$rate" "$per"; then lo=$rate; rate=$((rate * 2)); else hi=$rate; break; fi
  done
  [ "$hi" -eq 0 ] && { echo "$lo"; return; }
  for _ in $(seq "$BISECT_STEPS"); do
    local mid=$(((lo + hi) / 2))
    if "$trial" "$mid" "$per"; then lo=$mid; else hi=$mid; fi
  done
  echo "$lo"
}

run_searches() {
  local trial=$1 per=$2 start=$3 i
  for i in $(seq "$REPEATS"); do search "$trial" "$per" "$start"; done | median
}

# scrape_figures: 5 scrapes of the running daemon after every tenant sent
# events of each kind (after IDLE_TENANTS did and went idle); prints the
# median in milliseconds. GZIP=1: gzip'd, as Prometheus asks.
scrape_figures() {
  if [ "$IDLE_TENANTS" -gt 0 ]; then
    "$BENCH" send "127.0.0.1:$DAEMON_UDP" 100000 20 $(( IDLE_TENANTS * 3 / 100000 + 3 )) "$IDLE_TENANTS" >/dev/null
    sleep "$(python3 -c "import re; d='$IDLE_AFTER'; print(int(re.match(r'(\d+)', d).group(1)) * (60 if d.endswith('m') else 1) + 2)")"
  fi
  "$BENCH" send "127.0.0.1:$DAEMON_UDP" 100000 20 3 "$TENANTS" >/dev/null
  sleep 1
  local encoding=identity
  [ -n "${GZIP:-}" ] && encoding=gzip
  for _ in 1 2 3 4 5; do
    curl -s -H "Accept-Encoding: $encoding" -o "$WORK/metrics.out" -w '%{time_total}\n' "http://127.0.0.1:$HTTP_PORT/metrics"
  done | median | python3 -c "import sys; print(f'{float(sys.stdin.read()) * 1000:.1f}')"
  if [ -n "${GZIP:-}" ]; then gzip -dc "$WORK/metrics.out" > "$WORK/metrics.txt"; else cp "$WORK/metrics.out" "$WORK/metrics.txt"; fi
}

if [ -n "${SCRAPE_ONLY:-}" ]; then
  builds=("$BIN"); [ -n "$BASELINE_BIN" ] && builds+=("$BASELINE_BIN")
  echo "== /metrics with $TENANTS active tenants of $MAX_TENANTS (metrics_max_age 0s${GZIP:+, gzip}), ${ROUNDS:-3} rounds, median of 5 scrapes each"
  for round in $(seq "${ROUNDS:-3}"); do
    for build in "${builds[@]}"; do
      start_daemon "$build"
      ms=$(scrape_figures)
      echo "round $round $build: $ms ms, $(grep -vc '^#' "$WORK/metrics.txt") samples, $(wc -c < "$WORK/metrics.out") bytes sent"
    done
  done
  exit 0
fi

echo "== zero-loss UDP ingest, ${TRIAL_SECONDS}s trials, median of $REPEATS searches, $TENANTS tenants, $UDP_RECEIVERS receive thread(s)"
ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 else 'n/a')"; }
raw1=$(run_searches trial_raw 1 50000)
raw20=$(run_searches trial_raw 20 500000)
if [ -n "$BASELINE_BIN" ]; then
  start_daemon "$BASELINE_BIN"
  base1=$(run_searches trial_daemon 1 50000)
  base20=$(run_searches trial_daemon 20 500000)
fi
start_daemon "$BIN"
daemon1=$(run_searches trial_daemon 1 50000)
daemon20=$(run_searches trial_daemon 20 500000)
printf '%-34s %14s %14s %8s\n' "mode" "raw baseline/s" "tenantwatch/s" "ratio"
printf '%-34s %14s %14s %8s\n' "1 event per datagram" "$raw1" "$daemon1" "$(ratio "$daemon1" "$raw1")"
printf '%-34s %14s %14s %8s\n' "20 events per datagram" "$raw20" "$daemon20" "$(ratio "$daemon20" "$raw20")"
if [ -n "$BASELINE_BIN" ]; then
  printf '%-34s %14s %14s %8s\n' "1 event per datagram, BASELINE_BIN" "$raw1" "$base1" "$(ratio "$base1" "$raw1")"
  printf '%-34s %14s %14s %8s\n' "20 events per datagram, BASELINE_BIN" "$raw20" "$base20" "$(ratio "$base20" "$raw20")"
fi

echo "== with $TENANTS active tenants"
tracked=$(scrape | awk '$1 == "tenantwatch_tenants_tracked" {print $2}')
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$DAEMON_PID/status")
echo "tenants tracked: $tracked"
echo "daemon RSS: $((rss_kb / 1024)) MiB"
for _ in 1 2 3 4 5; do
  curl -s -o "$WORK/metrics.txt" -w '%{time_total}\n' "http://127.0.0.1:$HTTP_PORT/metrics"
done | median > "$WORK/scrape_time"
echo "/metrics scrape: $(python3 -c "print(f'{float(open(\"$WORK/scrape_time\").read())*1000:.0f}')") ms (median of 5), $(($(wc -c < "$WORK/metrics.txt") / 1024 / 1024)) MiB, $(grep -vc '^#' "$WORK/metrics.txt") series"
curl -s -H 'Accept-Encoding: gzip' -o "$WORK/metrics.gz" "http://127.0.0.1:$HTTP_PORT/metrics"
plain=$(wc -c < "$WORK/metrics.txt"); gz=$(wc -c < "$WORK/metrics.gz")
echo "gzip: $((gz / 1024)) KiB = 1/$((plain / gz)) of the plain exposition"
echo "samples per tracked tenant: $(python3 -c "print(round($(grep -vc '^#' "$WORK/metrics.txt") / $tracked, 1))")"
