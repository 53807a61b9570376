#!/usr/bin/env bash
# Poll benchmark: a throwaway PostgreSQL with SCHEMAS tenant schemas of 5
# tables each (10,000 by default), watched side by side in the same run by
# tenantwatch and by Debian's prometheus-postgres-exporter (0.11) with its
# example queries.yaml. Reports per-collector poll time, database-side time
# of the per-poll queries, the database time each tool spends per minute
# (from pg_stat_statements, each running alone: tenantwatch with its
# defaults, the exporter scraped every 15 s), /metrics scrape time, samples,
# bytes and RSS.
#
#   scripts/bench-poll.sh            # 10,000 schemas (creating them takes a few minutes)
#   SCHEMAS=1000 scripts/bench-poll.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMAS=${SCHEMAS:-10000}

EXPORTER=/usr/bin/prometheus-postgres-exporter
QUERIES=/usr/share/doc/prometheus-postgres-exporter/examples/queries.yaml
if [ ! -x "$EXPORTER" ] || ! command -v curl >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-postgres-exporter curl >/dev/null
  else
    echo "bench-poll.sh: install prometheus-postgres-exporter and curl (apt-get install prometheus-postgres-exporter curl)" >&2
    exit 1
  fi
fi
if [ ! -f "$QUERIES" ] && [ -f "$QUERIES.gz" ]; then
  QUERIES_TMP=$(mktemp --suffix .yaml); gunzip -c "$QUERIES.gz" > "$QUERIES_TMP"; QUERIES=$QUERIES_TMP
fi

cargo build --release --locked --quiet --bin tenantwatch --example bench_poll
echo "prometheus-postgres-exporter $("$EXPORTER" --version 2>&1 | head -1 | awk '{print $3}') with $QUERIES"
target/release/examples/bench_poll target/release/tenantwatch "$EXPORTER" "$QUERIES" "$SCHEMAS"
