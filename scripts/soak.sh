#!/usr/bin/env bash
# The fault-injection soak (issue 26; docs/reliability.md): a PostgreSQL
# primary + streaming standby, PgBouncer, Redis, two tenantwatch daemons and
# Prometheus on loopback, under load and a seeded random fault schedule.
# Writes target/soak/report.md and target/soak/soak.png; exits 1 when a
# figure is out of bounds.
#
#   scripts/soak.sh                         # 60 minutes
#   SOAK_MINUTES=3 scripts/soak.sh          # the short form CI runs
#   SOAK_SEED=4242 SOAK_MINUTES=3 scripts/soak.sh   # repeat a run
#   SOAK_PROFILE=release scripts/soak.sh    # a release build (default: debug)
#   SOAK_FULL_LOAD=0 scripts/soak.sh        # the one event sender of runs before 2026-12-08 (a tenth of the load)
set -euo pipefail
cd "$(dirname "$0")/.."

for pair in initdb:postgresql pg_basebackup:postgresql-client psql:postgresql-client \
            pgbouncer:pgbouncer redis-server:redis-server prometheus:prometheus; do
  bin=${pair%%:*}
  if ! command -v "$bin" >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/"$bin" /usr/sbin/"$bin" >/dev/null 2>&1; then
    echo "scripts/soak.sh: $bin is missing; install it (Debian: apt-get install ${pair#*:}), or run scripts/test.sh which installs it" >&2
    exit 1
  fi
done

# The driver's Python packages, pinned, in the venv other scripts share.
venv=target/venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || {
    echo "scripts/soak.sh: python3 -m venv failed; install python3-venv (Debian: apt-get install python3-venv)" >&2
    exit 1; }
fi
if ! "$venv/bin/python" -c 'import matplotlib, psycopg' 2>/dev/null; then
  "$venv/bin/pip" install --quiet 'matplotlib==3.11.*' 'psycopg[binary]==3.3.*'
fi

profile=${SOAK_PROFILE:-debug}
if [ "$profile" = release ]; then
  cargo build --locked --release --bin tenantwatch
else
  cargo build --locked --bin tenantwatch
fi
mkdir -p target/soak
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

# The daemons ask for a 32 MiB UDP receive buffer (scripts/soak/soak.py,
# UDP_RECV_BUFFER), which Linux grants only up to net.core.rmem_max: raise
# it for the run when we may (as root), and put it back after.
want_rmem=$((32 * 1024 * 1024))
rmem_file=/proc/sys/net/core/rmem_max
old_rmem=$(cat "$rmem_file" 2>/dev/null || echo 0)
if [ "$old_rmem" -lt "$want_rmem" ]; then
  if [ "$(id -u)" = 0 ] && echo "$want_rmem" > "$rmem_file" 2>/dev/null; then
    trap 'echo "$old_rmem" > "$rmem_file"' EXIT
    echo "scripts/soak.sh: net.core.rmem_max raised from $old_rmem to $want_rmem for the run"
  else
    echo "scripts/soak.sh: net.core.rmem_max is $old_rmem; the soak wants $want_rmem (sysctl -w net.core.rmem_max=$want_rmem, as root), or datagrams may be lost" >&2
  fi
fi
SOAK_BINARY="$target_dir/$profile/tenantwatch" "$venv/bin/python" scripts/soak/soak.py
