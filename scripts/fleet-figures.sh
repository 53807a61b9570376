#!/usr/bin/env bash
# The fleet view's costs, for docs/performance.md: N replicas (default 3)
# sharing one throwaway Redis, each fed TENANTS tenants (default 10,000)
# over HTTP, all polling one throwaway PostgreSQL 15 with SCHEMAS tenant
# schemas (default 1,000) and pg_stat_statements loaded. Prints, per replica
# and detection interval: the Redis commands and round trips, the bytes of
# window figures written and read; and the database's statement time and
# calls per minute from all replicas together.
#
#   scripts/fleet-figures.sh [path/to/tenantwatch]   (default target/debug/tenantwatch)
#   REPLICAS=1 scripts/fleet-figures.sh               (the database cost of one)
#
# Needs redis-server, initdb/pg_ctl (postgresql-15), psql, curl, python3.
set -euo pipefail

BIN=${1:-target/debug/tenantwatch}
REPLICAS=${REPLICAS:-3}
TENANTS=${TENANTS:-10000}
SCHEMAS=${SCHEMAS:-1000}
INTERVAL_S=${INTERVAL_S:-2}
MEASURE_S=${MEASURE_S:-60}

for tool in redis-server redis-cli psql curl python3; do
    command -v "$tool" >/dev/null || { echo "fleet-figures: $tool is missing (apt-get install redis-server postgresql-15 curl python3)" >&2; exit 1; }
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

WORK=$(mktemp -d /tmp/tw-fleet-figures.XXXXXX)
chmod 755 "$WORK"
chown postgres "$WORK"
PIDS=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() {
    cp "$WORK/r1.log" /tmp/tw-fleet-figures-r1.log 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${PGPORT:-}" ] && su postgres -c "$PGBIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

PGPORT=$(free_port)
su postgres -c "$PGBIN/initdb -D $WORK/pg -A trust -U postgres" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $WORK/pg -l $WORK/pg.log -w -o '-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements' start" >/dev/null
PSQL=(psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qAt -v ON_ERROR_STOP=1)
"${PSQL[@]}" -d postgres -c "create database app" -c "create role tenantwatch login in role pg_monitor"
"${PSQL[@]}" -d app -c "create extension pg_stat_statements" -c "
do \$\$ begin for i in 1..$SCHEMAS loop
  execute format('create schema tenant_%s; create table tenant_%s.items (id int primary key, v text)', i, i);
end loop; end \$\$;"
sleep 1
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

for i in $(seq 1 "$REPLICAS"); do
    port=$(free_port)
    cat >"$WORK/r$i.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
metrics_max_age = "0s"
[ingest]
udp_listen = ""
max_tenants = $TENANTS
[detect]
interval = "${INTERVAL_S}s"
[ratelimit]
backend = "redis"
[ratelimit.redis]
url = "redis://127.0.0.1:$REDIS_PORT"
instance = "r$i"
[[targets]]
name = "main"
dsn = "host=127.0.0.1 port=$PGPORT user=tenantwatch dbname=app"
poll_interval = "10s"
size_interval = "5m"
[[tenants.rules]]
source = "schema"
pattern = "^tenant_(?P<tenant>.+)$"
EOF
    "$BIN" run --config "$WORK/r$i.toml" >"$WORK/r$i.log" 2>&1 &
    PIDS+=($!)
    echo "$port" >"$WORK/r$i.port"
done
for i in $(seq 1 "$REPLICAS"); do
    port=$(cat "$WORK/r$i.port")
    until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.2; done
    # Every tenant on every replica: the largest figures each one shares.
    python3 - "$port" "$TENANTS" <<'EOF'
import sys, urllib.request
port, tenants = sys.argv[1], int(sys.argv[2])
for start in range(0, tenants, 2000):
    body = "".join(
        '{"tenant":"t%05d","kind":"read","duration_ms":%d,"error":%s}\n'
        % (t, 1 + t % 300, "true" if t % 50 == 0 else "false")
        for t in range(start, min(tenants, start + 2000))
        for _ in range(3)
    ).encode()
    urllib.request.urlopen(urllib.request.Request(
        "http://127.0.0.1:%s/v1/events" % port, data=body, method="POST",
        headers={"content-type": "application/x-ndjson"})).read()
EOF
done

metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'; }
# Let every replica publish once with the full figures, then measure.
sleep $((INTERVAL_S * 3))
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
"${PSQL[@]}" -d app -c "select pg_stat_statements_reset()" >/dev/null
sleep "$MEASURE_S"
STATS=$(redis-cli -p "$REDIS_PORT" info commandstats)
DB=$("${PSQL[@]}" -d app -c "select coalesce(sum(calls),0), round(coalesce(sum(total_exec_time),0)::numeric, 1)
      from pg_stat_statements s join pg_roles r on r.oid = s.userid where r.rolname = 'tenantwatch'")
SESSIONS=$("${PSQL[@]}" -d app -c "select count(*) from pg_stat_activity where application_name = 'tenantwatch'")
port1=$(cat "$WORK/r1.port")
python3 - "$REPLICAS" "$INTERVAL_S" "$MEASURE_S" "$TENANTS" "$DB" "$SESSIONS" \
    "$(metric "$port1" 'tenantwatch_fleet_exchange_bytes{direction="sent"}')" \
    "$(metric "$port1" 'tenantwatch_fleet_exchange_bytes{direction="received"}')" \
    "$(metric "$port1" tenantwatch_fleet_replicas)" <<EOF
import re, sys
replicas, interval, measure, tenants = map(int, sys.argv[1:5])
calls, exec_ms = sys.argv[5].split("|")
sessions, sent, received, seen = sys.argv[6:10]
stats = {m[0]: int(m[1]) for m in re.findall(r"cmdstat_(\w+):calls=(\d+)", """$STATS""")}
# Each evaluation writes two keys (its advice and its figures): slow
# evaluations (a debug build at 10,000 tenants) make fewer than one per interval.
evaluations = stats.get("set", 0) / 2 or 1
exchange = {k: v for k, v in stats.items() if k in ("set", "sadd", "pexpire", "smembers", "mget", "srem")}
print(f"replicas {replicas} (view holds {seen}), tenants {tenants} each, detect.interval {interval}s, {measure}s measured")
print(f"evaluations: {evaluations:.0f} over {replicas} replicas ({evaluations / (replicas * measure / interval):.2f} per interval)")
print(f"redis commands per evaluation (advice and figures): " + ", ".join(f"{k} {v / evaluations:.2f}" for k, v in sorted(exchange.items())))
print(f"redis round trips per evaluation (one pipeline + one MGET per exchange): {2 * exchange.get('mget', 0) / evaluations:.2f}")
print(f"fleet figures per evaluation: {float(sent or 0):.0f} bytes written, {float(received or 0):.0f} bytes read")
print(f"database, all replicas: {float(calls) * 60 / measure:.0f} statements/min, {float(exec_ms) * 60 / measure:.1f} ms/min execution, {sessions} sessions")
EOF
