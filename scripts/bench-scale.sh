#!/usr/bin/env bash
# Issue 31's situations, each measured on this build and, with
# BASELINE_BIN=, on another build (main's) in the same run:
#
#   1. bytes per tenant per structure at TENANTS (examples/bench_memory.rs)
#   2. in-process costs at TENANTS and at 10,000: store record, snapshot,
#      detection interval, tenant list page (examples/bench_scale.rs)
#   3. the daemon, per build: RSS at TENANTS known tenants (before and
#      after scrapes); GET /api/v1/tenants?sort=db_time_share&limit=50;
#      /metrics gzip at 10,000 tenants and at TENANTS of which ACTIVE sent
#      events lately (with `metrics.idle_after = "20s"` when the build
#      knows the key, so idle series leave); CPU of the idle daemon over
#      CPU_SECONDS (detection, sampler, eviction); zero-loss UDP ingest, 20
#      events per datagram, at 10,000 and at TENANTS distinct tenants
#      (UDP_REPEATS searches of each, alternating; their medians)
#   4. with DATABASES=N (5000 for the issue's row; long, and the exporter
#      holds one connection per database), scripts/bench-databases.sh
#
#   scripts/bench-scale.sh
#   BASELINE_BIN=/tmp/main/target/release/tenantwatch scripts/bench-scale.sh
#   TENANTS=20000 SKIP_UDP=1 SKIP_IN_PROCESS=1 CPU_SECONDS=10 scripts/bench-scale.sh
#                                           # a quick look at the daemon
set -euo pipefail
cd "$(dirname "$0")/.."

TENANTS=${TENANTS:-100000}
ACTIVE=${ACTIVE:-10000}
CPU_SECONDS=${CPU_SECONDS:-60}
TRIAL_SECONDS=${TRIAL_SECONDS:-2}
BISECT_STEPS=${BISECT_STEPS:-3}
UDP_REPEATS=${UDP_REPEATS:-3}
BASELINE_BIN=${BASELINE_BIN:-}
DATABASES=${DATABASES:-0}

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-scale.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
# NO_BUILD=1 measures the binaries already in target/release.
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --locked --quiet --bin tenantwatch \
    --example udp_bench --example bench_memory --example bench_scale
fi
BIN=target/release/tenantwatch
SEND=target/release/examples/udp_bench
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms() { python3 -c "import sys; print(f'{float(sys.stdin.read()) * 1000:.1f}')"; }

if [ -z "${SKIP_IN_PROCESS:-}" ]; then
  echo "== 1. memory per structure"
  target/release/examples/bench_memory "$TENANTS" 2
  echo
  echo "== 2. in-process costs"
  target/release/examples/bench_scale "$TENANTS" 5
  target/release/examples/bench_scale 10000 5
  echo
fi

# start BINARY MAX_TENANTS: the daemon on fresh ports (idle_after when known)
start() {
  stop
  HTTP=$(free_port); UDP=$(free_port)
  printf '[server]\nlisten = "127.0.0.1:%s"\nmetrics_max_age = "0s"\n[ingest]\nudp_listen = "127.0.0.1:%s"\nudp_recv_buffer_bytes = 8388608\nmax_tenants = %s\n' \
    "$HTTP" "$UDP" "$2" > "$WORK/tenantwatch.toml"
  cp "$WORK/tenantwatch.toml" "$WORK/idle.toml"
  # idle_after may not be shorter than ingest.share_window (check-config
  # refuses it): both 20 s, so the bench waits 21 s, not a minute.
  sed -i 's/^\[ingest\]$/[ingest]\nshare_window = "20s"/' "$WORK/idle.toml"
  printf '[metrics]\nidle_after = "20s"\n' >> "$WORK/idle.toml"
  IDLE_KNOWN=""
  if "$1" check-config "$WORK/idle.toml" >/dev/null 2>&1; then
    cp "$WORK/idle.toml" "$WORK/tenantwatch.toml"; IDLE_KNOWN=1
  fi
  TENANTWATCH_LOG=warn "$1" run --config "$WORK/tenantwatch.toml" &
  PID=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
}
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
received() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '$1 == "tenantwatch_events_received_total{source=\"udp\"}" {printf "%d\n", $2}'; }
rss() { awk '/^VmRSS/ {print int($2/1024)}' "/proc/$PID/status"; }
# load N: every one of N tenants sends each kind, at 100,000 events/s
load() { "$SEND" send "127.0.0.1:$UDP" 100000 20 "$(( $1 * 3 / 100000 + 1 ))" "$1" >/dev/null; sleep 1; }
timed() { for _ in 1 2 3 4 5; do curl -s -o "$WORK/body" -w '%{time_total}\n' "$@"; done | median | ms; }
gzip_ms() { timed -H 'Accept-Encoding: gzip' "http://127.0.0.1:$HTTP/metrics"; }
samples() { curl -s "http://127.0.0.1:$HTTP/metrics" | grep -vc '^#'; }
cpu_pct() {
  local tick before after
  tick=$(getconf CLK_TCK)
  before=$(awk '{print $14 + $15}' "/proc/$PID/stat"); sleep "$1"
  after=$(awk '{print $14 + $15}' "/proc/$PID/stat")
  python3 -c "print(f'{($after - $before) / $tick / $1 * 100:.1f}')"
}
# trial RATE TENANTS: every event of 20 per datagram counted, sender within 3%
trial() {
  local before out after
  before=$(received)
  out=$("$SEND" send "127.0.0.1:$UDP" "$1" 20 "$TRIAL_SECONDS" "$2")
  sleep 1
  after=$(received)
  python3 -c "import sys; sys.exit(0 if float('$out'.split()[1]) >= 0.97 * $1 else 1)" &&
    [ $((after - before)) -eq "${out%% *}" ]
}
search() {
  local tenants=$1 rate=250000 lo=0 hi=0
  while [ "$rate" -le 64000000 ]; do
    if trial "$rate" "$tenants"; then lo=$rate; rate=$((rate * 2)); else hi=$rate; break; fi
  done
  if [ "$hi" -ne 0 ]; then
    for _ in $(seq "$BISECT_STEPS"); do
      local mid=$(((lo + hi) / 2))
      if trial "$mid" "$tenants"; then lo=$mid; else hi=$mid; fi
    done
  fi
  echo "$lo"
}

declare -A FIG
measure() {
  local b=$1 name=$2
  echo "-- $name: $b" >&2
  start "$b" 10000; load 10000
  FIG[$name,scrape10k]="$(gzip_ms) ms, $(samples) samples"
  start "$b" "$TENANTS"; load "$TENANTS"
  FIG[$name,rss_loaded]=$(rss)
  FIG[$name,api]="$(timed "http://127.0.0.1:$HTTP/api/v1/tenants?sort=db_time_share&limit=50") ms"
  FIG[$name,cpu]="$(cpu_pct "$CPU_SECONDS")%"
  # After CPU_SECONDS of detection intervals: the detector's window holds
  # every tenant by then.
  FIG[$name,rss_steady]=$(rss)
  [ -n "$IDLE_KNOWN" ] && sleep 21
  load "$ACTIVE"
  FIG[$name,scrape100k]="$(gzip_ms) ms, $(samples) samples"
  FIG[$name,rss_scraped]=$(rss)
  if [ -z "${SKIP_UDP:-}" ]; then
    # Zero-loss searches are noisy on two cores: UDP_REPEATS of each,
    # alternating, and their medians.
    local few=() many=()
    for _ in $(seq "$UDP_REPEATS"); do
      few+=("$(search 10000)"); many+=("$(search "$TENANTS")")
    done
    FIG[$name,udp10k]=$(printf '%s\n' "${few[@]}" | median)
    FIG[$name,udp100k]=$(printf '%s\n' "${many[@]}" | median)
    FIG[$name,udp_trials]="10,000: ${few[*]}; $TENANTS: ${many[*]}"
  else
    FIG[$name,udp10k]=-; FIG[$name,udp100k]=-
  fi
  stop
}

echo "== 3. the daemon"
builds=(this)
measure "$BIN" this
if [ -n "$BASELINE_BIN" ]; then measure "$BASELINE_BIN" baseline; builds+=(baseline); fi
row() {
  printf '%-62s' "$1"
  for b in "${builds[@]}"; do printf ' %24s' "${FIG[$b,$2]}"; done
  printf '\n'
}
printf '%-62s' "figure"; for b in "${builds[@]}"; do printf ' %24s' "$b"; done; printf '\n'
row "/metrics gzip at 10,000 tenants (median of 5)" scrape10k
row "/metrics gzip at $TENANTS tenants, $ACTIVE active" scrape100k
row "RSS MiB at $TENANTS known tenants, before scrapes" rss_loaded
row "RSS MiB at $TENANTS known tenants, after the API call and ${CPU_SECONDS}s" rss_steady
row "RSS MiB at $TENANTS known tenants, after scrapes" rss_scraped
row "GET /api/v1/tenants?sort=db_time_share&limit=50 (median of 5)" api
row "CPU of the idle daemon at $TENANTS tenants (${CPU_SECONDS}s)" cpu
row "UDP zero-loss events/s, 20/datagram, 10,000 tenants" udp10k
row "UDP zero-loss events/s, 20/datagram, $TENANTS tenants" udp100k
for b in "${builds[@]}"; do
  if [ "${FIG[$b,udp10k]}" != "-" ] && [ "${FIG[$b,udp10k]}" -gt 0 ]; then
    echo "$b: UDP at $TENANTS / at 10,000 = $(python3 -c "print(f'{${FIG[$b,udp100k]} / ${FIG[$b,udp10k]}:.2f}')") (medians of $UDP_REPEATS; each search: ${FIG[$b,udp_trials]})"
  fi
done

if [ "$DATABASES" -gt 0 ]; then
  echo
  echo "== 4. $DATABASES tenant databases"
  DATABASES=$DATABASES scripts/bench-databases.sh
fi
