#!/usr/bin/env bash
# Fuzzes every parser of outside input with libFuzzer for a bounded time:
# DogStatsD and NDJSON lines, whole ingest payloads, the API's paths and
# query strings, the sqlcommenter tag and session attribution, PgBouncer
# admin console answers, and the configuration file; and, differentially,
# the HTTP check lane against hyper alone on the same pipelined bytes
# (check_lane). Uses the stable toolchain with libFuzzer's coverage
# instrumentation (what cargo-fuzz passes, without a sanitizer).
#
#   scripts/fuzz.sh                  # every target, FUZZ_SECONDS each (default 20)
#   FUZZ_SECONDS=300 scripts/fuzz.sh dogstatsd
#
# A crash fails the run; the input is kept in fuzz/artifacts/<target>/ and
# should become a regression test beside the parser.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-20}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(dogstatsd ndjson ingest_payload api_query sqlcommenter config pgbouncer_admin check_lane)
fi
if ! command -v c++ >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: a C++ compiler is needed for libFuzzer (apt-get install g++)" >&2
  exit 1
fi

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation off build scripts and
# proc-macros (which run on the host and would not link), as cargo-fuzz does.
host=$(rustc -vV | awk '/^host:/ {print $2}')
cargo build --locked --release --bins --quiet --target "$host"

status=0
for target in "${targets[@]}"; do
  corpus=$(mktemp -d)
  cp seeds/"$target"/* "$corpus"/
  mkdir -p artifacts/"$target"
  log=$(mktemp)
  if ./target/"$host"/release/"$target" "$corpus" -max_total_time="$seconds" -max_len=8192 \
      -rss_limit_mb=1024 -artifact_prefix=artifacts/"$target"/ -print_final_stats=1 >"$log" 2>&1; then
    execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    echo "fuzz $target: ok, ${execs:-?} executions in ${seconds}s, coverage ${cov:-?} edges"
  else
    echo "fuzz $target: FAILED (input kept in fuzz/artifacts/$target/)" >&2
    tail -40 "$log" >&2
    status=1
  fi
  rm -rf "$corpus" "$log"
done
exit "$status"
