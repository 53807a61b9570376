#!/usr/bin/env bash
# Database-per-tenant benchmark: a throwaway PostgreSQL with DATABASES tenant
# databases (1,000 by default), watched side by side in the same run by
# tenantwatch (databases = ["*"], default max_sessions 2) and by Debian's
# prometheus-postgres-exporter with --auto-discover-databases. Reports the
# connections each holds on the instance, scrape time, samples, peak RSS,
# and tenantwatch's full detail cycle time.
#
#   scripts/bench-databases.sh               # 1,000 databases (a few minutes)
#   DATABASES=200 scripts/bench-databases.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASES=${DATABASES:-1000}

EXPORTER=/usr/bin/prometheus-postgres-exporter
if [ ! -x "$EXPORTER" ] || ! command -v curl >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-postgres-exporter curl >/dev/null
  else
    echo "bench-databases.sh: install prometheus-postgres-exporter and curl (apt-get install prometheus-postgres-exporter curl)" >&2
    exit 1
  fi
fi

cargo build --release --locked --quiet --bin tenantwatch --example bench_databases
echo "prometheus-postgres-exporter $("$EXPORTER" --version 2>&1 | head -1 | awk '{print $3}'), $DATABASES tenant databases"
target/release/examples/bench_databases target/release/tenantwatch "$EXPORTER" "$DATABASES"
