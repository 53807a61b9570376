#!/usr/bin/env bash
# Rate-limit check benchmark: POST /v1/ratelimit/check throughput and latency
# with wrk (Debian's package) over loopback keep-alive connections, checks
# spread over 1,000 tenants, beside GET /healthz in the same run. wrk shares
# the machine's cores with the daemon (and Redis).
#
#   scripts/bench-ratelimit.sh                 # local backend: 3 runs of 10 s, medians
#   BACKEND=redis scripts/bench-ratelimit.sh   # local and Redis side by side, then
#                                              # three instances sharing one Redis
#   RUNS=5 DURATION=20s CONNECTIONS=64 scripts/bench-ratelimit.sh
#   BASELINE_BIN=/path/to/old/tenantwatch scripts/bench-ratelimit.sh
#                                              # adds another build's checks and /healthz
#   GRPC=0 scripts/bench-ratelimit.sh        # without Envoy's gRPC check (on by default:
#                                              # examples/rls_load drives ShouldRateLimit on
#                                              # ratelimit.grpc_listen beside wrk's HTTP
#                                              # check, as many requests in flight, same
#                                              # threads and tenants, two ways: `grpc`, as
#                                              # Envoy calls it, one HTTP/2 connection per
#                                              # thread carrying every call of that thread;
#                                              # `grpc_conns`, one call per connection, as
#                                              # wrk's connections)
#   GRPC_CLIENT=tonic scripts/bench-ratelimit.sh
#                                              # the generated tonic client instead of
#                                              # rls_load's small h2 one
#   CALLGRIND=1 [BASELINE_BIN=...] scripts/bench-ratelimit.sh
#                                              # instructions per request under
#                                              # valgrind's callgrind (noise-free)
#
# With BACKEND=redis a throwaway redis-server runs on a free loopback port
# (never the machine's shared one), and the last part checks that three
# instances hammering one tenant hold its one quota.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
BACKEND=${BACKEND:-local}
GRPC=${GRPC:-1}
GRPC_CLIENT=${GRPC_CLIENT:-h2}

need=(wrk curl python3)
[ "$BACKEND" = redis ] && need+=(redis-server)
[ -n "${CALLGRIND:-}" ] && need+=(valgrind)
for tool in "${need[@]}"; do
  if ! command -v "$tool" >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    else
      echo "bench-ratelimit.sh: $tool is missing (apt-get install $tool)" >&2; exit 1
    fi
  fi
done

cargo build --release --locked --quiet --bin tenantwatch
[ "$GRPC" = 1 ] && cargo build --release --locked --quiet --example rls_load
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REDIS_URL=""
if [ "$BACKEND" = redis ]; then
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null &
  PIDS+=($!)
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# start_daemon NAME BACKEND QPS BURST [BINARY]: starts a daemon; its port is in $PORT.
start_daemon() {
  local name=$1 backend=$2 qps=$3 burst=$4 binary=${5:-target/release/tenantwatch} port
  port=$(free_port)
  cat > "$WORK/$name.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
[ingest]
udp_listen = ""
[ratelimit]
default_qps = $qps
default_burst = $burst
CONF
  # An older build may not know the backend or gRPC keys: written only when used.
  if [ "$GRPC" = 1 ] && [ "$name" = local ]; then
    GRPC_PORT=$(free_port)
    sed -i "/^\[ratelimit\]/a grpc_listen = \"127.0.0.1:$GRPC_PORT\"" "$WORK/$name.toml"
  fi
  if [ "$backend" = redis ]; then
    printf 'backend = "redis"\n[ratelimit.redis]\nurl = "%s"\ninstance = "%s"\n' \
      "$REDIS_URL" "$name" >> "$WORK/$name.toml"
  fi
  TENANTWATCH_LOG=warn "$binary" run --config "$WORK/$name.toml" &
  PIDS+=($!)
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  PORT=$port
}

cat > "$WORK/check.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"tenant":"tenant' .. (n % 1000) .. '","cost":1}')
end
LUA
# One tenant, allowed and denied answers counted over every thread.
cat > "$WORK/quota.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"tenant":"shared"}'
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function() allowed = 0; denied = 0 end
response = function(status)
  if status == 200 then allowed = allowed + 1 elseif status == 429 then denied = denied + 1 end
end
done = function()
  local a, d = 0, 0
  for _, t in ipairs(threads) do a = a + t:get("allowed"); d = d + t:get("denied") end
  io.write(string.format("quota: allowed %d denied %d\n", a, d))
end
LUA

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# p99 in milliseconds from wrk's latency distribution.
p99_ms() { awk '$1 == "99%" { v=$2; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 } print v }' "$1"; }

# run LABEL PORT [SCRIPT]: one wrk run, its checks/s and p99 appended to LABEL's files.
run() {
  local label=$1 port=$2 script=${3:-} out="$WORK/$1.$RANDOM.txt" path=/healthz
  if [ -n "$script" ]; then path=/v1/ratelimit/check; fi
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency ${script:+-s "$script"} "http://127.0.0.1:$port$path" > "$out"
  awk '/^Requests\/sec/ {print $2}' "$out" >> "$WORK/$label.rps"
  p99_ms "$out" >> "$WORK/$label.p99"
  printf "  %-14s %10s req/s  p99 %6s ms  non-2xx %s\n" "$label" "$(awk '/^Requests\/sec/ {print $2}' "$out")" \
    "$(p99_ms "$out")" "$(awk '/Non-2xx/ {print $NF}' "$out" | grep . || echo 0)"
}
# run_grpc LABEL PORT CONNECTIONS STREAMS: one rls_load run (ShouldRateLimit),
# CONNECTIONS x STREAMS calls in flight, as run does for wrk.
run_grpc() {
  local label=$1 port=$2 out
  out=$(target/release/examples/rls_load "127.0.0.1:$port" "$3" "${DURATION%s}" 1000 "$THREADS" "$GRPC_CLIENT" "$4")
  awk '{print $4}' <<<"$out" >> "$WORK/$label.rps"
  awk '{print $8}' <<<"$out" >> "$WORK/$label.p99"
  printf "  %-14s %10s req/s  p99 %6s ms  errors %s\n" "$label" "$(awk '{print $4}' <<<"$out")" \
    "$(awk '{print $8}' <<<"$out")" "$(awk '{print $10}' <<<"$out")"
}
report() {
  local label=$1
  printf "%-14s median %10s req/s  p99 %6s ms\n" "$label" "$(median < "$WORK/$label.rps")" "$(median < "$WORK/$label.p99")"
}

# callgrind_per_request NAME BINARY: instructions per request for /healthz
# and for checks, counted by callgrind over 5 s of wrk -c4 after a warm-up
# (the daemon's start is not counted: instrumentation starts after it).
callgrind_per_request() {
  local name=$1 binary=$2 port vg what k=0
  port=$(free_port)
  printf '[server]\nlisten = "127.0.0.1:%s"\n[ingest]\nudp_listen = ""\n[ratelimit]\ndefault_qps = 1000000000\ndefault_burst = 1000000000\n' \
    "$port" > "$WORK/$name.toml"
  # gRPC too when this build is measured (an older one may not know the key).
  local grpc_port="" whats=(healthz check)
  if [ "$GRPC" = 1 ] && [ "$name" = this ]; then
    grpc_port=$(free_port)
    sed -i "/^\[ratelimit\]/a grpc_listen = \"127.0.0.1:$grpc_port\"" "$WORK/$name.toml"
    whats+=(grpc)
  fi
  # Already re-executed: valgrind follows one process.
  TENANTWATCH_REEXECUTED=1 TENANTWATCH_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$WORK/$name.%p.cg" "$binary" run --config "$WORK/$name.toml" 2>/dev/null &
  vg=$!
  PIDS+=("$vg")
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  callgrind_control -i on "$vg" >/dev/null 2>&1
  for what in "${whats[@]}"; do
    local args=("http://127.0.0.1:$port/healthz")
    [ "$what" = check ] && args=(-s "$WORK/check.lua" "http://127.0.0.1:$port/v1/ratelimit/check")
    # ShouldRateLimit: 4 calls in flight on one HTTP/2 connection.
    load() {
      if [ "$what" = grpc ]; then
        target/release/examples/rls_load "127.0.0.1:$grpc_port" 1 "$1" 1000 1 "$GRPC_CLIENT" 4 | awk '{print $2}'
      else
        wrk -t1 -c4 -d"$1"s "${args[@]}" | awk '/requests in/ {print $1}'
      fi
    }
    load 2 >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    local requests
    requests=$(load 5)
    callgrind_control -d "$vg" >/dev/null 2>&1
    k=$((k + 1))
    sleep 1
    local total
    total=$(callgrind_annotate "$WORK/$name.$vg.cg.$k" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    # Heap allocations: calls into malloc, calloc and realloc, from
    # callgrind's call counts (the crate denies the unsafe code a counting
    # global allocator would need).
    local allocations
    allocations=$(python3 - "$WORK/$name.$vg.cg.$k" <<'PY'
import re, sys
names, calls, callee = {}, 0, None
for line in open(sys.argv[1], errors="replace"):
    # Names are compressed: given once, with fn= or cfn=, then by id.
    m = re.match(r"(c?)fn=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(3):
            names[m.group(2)] = m.group(3).strip()
        if m.group(1):
            callee = names.get(m.group(2))
    elif line.startswith("calls=") and callee in ("malloc", "calloc", "realloc"):
        calls += int(line[6:].split()[0])
print(calls)
PY
)
    printf "  %-10s %-8s %8d requests  %7d instructions  %5.2f allocations per request\n" "$name" "$what" "$requests" \
      "$((total / requests))" "$(python3 -c "print($allocations / $requests)")"
  done
  kill "$vg" 2>/dev/null || true
}

# Quotas far above the load: every check is allowed, so this measures the path.
if [ -n "${CALLGRIND:-}" ]; then
  echo "== callgrind, wrk -t1 -c4 -d5s (gRPC: rls_load, 4 calls in flight on one connection), 1,000 tenants"
  callgrind_per_request this target/release/tenantwatch
  [ -n "${BASELINE_BIN:-}" ] && callgrind_per_request baseline "$BASELINE_BIN"
  exit 0
fi

start_daemon local local 1000000000 1000000000; LOCAL_PORT=$PORT
labels=(healthz local)
[ "$GRPC" = 1 ] && labels+=(grpc grpc_conns)
if [ -n "${BASELINE_BIN:-}" ]; then
  start_daemon baseline local 1000000000 1000000000 "$BASELINE_BIN"; BASELINE_PORT=$PORT
  labels+=(baseline baseline_healthz)
fi
if [ "$BACKEND" = redis ]; then
  start_daemon redis redis 1000000000 1000000000; REDIS_DAEMON_PORT=$PORT
  labels+=(redis)
fi
echo "== wrk -t$THREADS -c$CONNECTIONS -d$DURATION, 1,000 tenants, $RUNS rounds (each: ${labels[*]})"
for round in $(seq "$RUNS"); do
  echo "round $round"
  run healthz "$LOCAL_PORT"
  run local "$LOCAL_PORT" "$WORK/check.lua"
  if [ "$GRPC" = 1 ]; then
    run_grpc grpc "$GRPC_PORT" "$THREADS" $((CONNECTIONS / THREADS))
    run_grpc grpc_conns "$GRPC_PORT" "$CONNECTIONS" 1
  fi
  if [ -n "${BASELINE_BIN:-}" ]; then
    run baseline "$BASELINE_PORT" "$WORK/check.lua"
    run baseline_healthz "$BASELINE_PORT"
  fi
  [ "$BACKEND" = redis ] && run redis "$REDIS_DAEMON_PORT" "$WORK/check.lua"
done
for label in "${labels[@]}"; do report "$label"; done
python3 - "$WORK" "${labels[@]}" <<'PY'
import statistics, sys
work, labels = sys.argv[1], sys.argv[2:]
rps = {l: statistics.median(float(x) for x in open(f"{work}/{l}.rps")) for l in labels}
for l in labels[1:]:
    if l == "baseline_healthz":
        continue
    print(f"{l}: {rps[l] / rps['healthz']:.2f} of /healthz's throughput")
if "baseline" in rps:
    print(f"baseline: {rps['baseline'] / rps['baseline_healthz']:.2f} of its own /healthz's throughput")
    print(f"healthz: {rps['healthz'] / rps['baseline_healthz']:.2f} of the baseline build's /healthz")
if "redis" in rps:
    print(f"redis: {rps['redis'] / rps['local']:.2f} of the local backend's throughput")
if "grpc" in rps:
    print(f"grpc: {rps['grpc'] / rps['local']:.2f} of the HTTP check's throughput "
          "(one HTTP/2 connection per thread, as Envoy calls it)")
    print(f"grpc_conns: {rps['grpc_conns'] / rps['local']:.2f} of the HTTP check's throughput "
          "(one call per connection, as wrk's)")
if "baseline" in rps:
    print(f"local: {rps['local'] / rps['baseline']:.2f} of the baseline build's throughput")
PY

if [ "$BACKEND" = redis ]; then
  # Three instances, one Redis: each driven by its own wrk at once.
  ports=()
  for name in a b c; do start_daemon "shared-$name" redis 1000000000 1000000000; ports+=("$PORT"); done
  echo "== three instances sharing one Redis, wrk -c$CONNECTIONS -d$DURATION on each at once"
  wrks=()
  for i in 0 1 2; do
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/check.lua" \
      "http://127.0.0.1:${ports[$i]}/v1/ratelimit/check" > "$WORK/three.$i.txt" &
    wrks+=($!)
  done
  for pid in "${wrks[@]}"; do wait "$pid"; done
  for i in 0 1 2; do
    printf "  instance %d: %10s checks/s  p99 %6s ms\n" "$i" \
      "$(awk '/^Requests\/sec/ {print $2}' "$WORK/three.$i.txt")" "$(p99_ms "$WORK/three.$i.txt")"
  done
  awk '/^Requests\/sec/ {s += $2} END {printf "  together: %.0f checks/s\n", s}' "$WORK"/three.*.txt

  # The global quota: one tenant at 1,000/s (burst 1,000) through three instances.
  qports=()
  for name in qa qb qc; do start_daemon "quota-$name" redis 1000 1000; qports+=("$PORT"); done
  seconds=${DURATION%s}
  echo "== one tenant, quota 1,000/s burst 1,000, through three instances for ${seconds} s"
  wrks=()
  for i in 0 1 2; do
    wrk -t1 -c8 -d"$DURATION" -s "$WORK/quota.lua" \
      "http://127.0.0.1:${qports[$i]}/v1/ratelimit/check" > "$WORK/quota.$i.txt" &
    wrks+=($!)
  done
  for pid in "${wrks[@]}"; do wait "$pid"; done
  allowed=$(awk '/^quota:/ {s += $3} END {print s}' "$WORK"/quota.*.txt)
  denied=$(awk '/^quota:/ {s += $5} END {print s}' "$WORK"/quota.*.txt)
  python3 -c "
allowed, denied, seconds = $allowed, $denied, $seconds
expected = 1000 + 1000 * seconds
print(f'  allowed {allowed} of {allowed + denied} (expected {expected}): {allowed / expected:.3f} of the quota')"
fi
