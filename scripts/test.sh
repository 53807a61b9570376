#!/usr/bin/env bash
# Runs every test of tenantwatch. Installs the system packages the tests need
# when they are missing (with apt-get, when run as root), then runs the Rust
# test suite: unit, property and integration tests against the real daemon
# and throwaway PostgreSQL clusters (run as the postgres user when root).
#
#   scripts/test.sh            # everything
#   scripts/test.sh ingest     # extra arguments go to `cargo test`
#   scripts/test.sh daemon::   # e.g. one module of the integration tests
#
# The integration tests are one binary, `it` (tests/it/main.rs, one module
# per area), so the crate is linked once for all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, as "command:package".
needed=(
  "python3:python3"
  "node:nodejs"
  "java:default-jdk-headless"
  "openssl:openssl"
  "promtool:prometheus"
  "amtool:prometheus-alertmanager"
  "prometheus:prometheus"
  "prometheus-alertmanager:prometheus-alertmanager"
  "kubectl:kubernetes-client"
  "redis-server:redis-server"
  "jsonnet:jsonnet"
  "pgbouncer:pgbouncer"
  "php:php-cli"
  "go:golang-go"
  "npm:npm"
)
# Jars the Java recipe of docs/integration.md compiles against, as "file:package".
needed_jars=(
  "/usr/share/java/spring3-web.servlet.jar:libspring-web-servlet-java"
  "/usr/share/java/servlet-api.jar:libservlet-api-java"
  "/usr/share/java/HikariCP.jar:libhikaricp-java"
  "/usr/share/java/postgresql.jar:libpostgresql-jdbc-java"
  "/usr/share/java/spring3-web.jar:libspring-web-java"
  "/usr/share/java/spring3-core.jar:libspring-core-java"
  "/usr/share/java/slf4j-api.jar:libslf4j-java"
)

missing=()
for pair in "${needed[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
for pair in "${needed_jars[@]}"; do
  [ -f "${pair%%:*}" ] || missing+=("${pair#*:}")
done
# The Python client's virtualenv needs venv and ensurepip (Debian splits them out).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=("python3-venv")
# PostgreSQL's server binaries (initdb, pg_ctl) for the throwaway clusters.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=("postgresql")
fi
# The soak's driver makes a virtualenv (Debian splits venv out of python3).
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  missing+=("python3-venv")
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: missing packages: ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
fi

# kubernetes-validate (offline Kubernetes schemas) comes from PyPI.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "scripts/test.sh: installing kubernetes-validate (pip)"
  python3 -m pip install --quiet kubernetes-validate || {
    echo "scripts/test.sh: pip install kubernetes-validate failed" >&2; exit 1; }
  command -v pyenv >/dev/null 2>&1 && pyenv rehash
  export PATH="$PATH:$(python3 -m site --user-base)/bin"
fi

# One virtualenv at target/venv for the Python the tests run, from PyPI:
# the Python client (clients/python) with its test extras, and the gRPC
# tools that compile Envoy's protos for tests/it/rls.rs, with PyYAML.
# Reinstalled when the client's pyproject.toml or this list changes; then
# ruff and mypy. The client's pytest suites run from tests/it/python_client.rs.
venv=target/venv
python_packages=("./clients/python[test]" grpcio-tools pyyaml)
stamp="$venv/.tenantwatch-$( (cat clients/python/pyproject.toml; echo "${python_packages[*]}") | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "scripts/test.sh: installing the Python client's test dependencies in $venv (pip)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || {
    echo "scripts/test.sh: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet "${python_packages[@]}" || {
    echo "scripts/test.sh: pip install ${python_packages[*]} failed" >&2; exit 1; }
  touch "$stamp"
fi
"$venv/bin/ruff" check --no-cache clients/python && "$venv/bin/ruff" format --no-cache --check clients/python \
  && (cd clients/python && "../../$venv/bin/mypy" --cache-dir=../../target/mypy-cache) || {
  echo "scripts/test.sh: ruff or mypy failed on clients/python" >&2; exit 1; }
# The bench and soak scripts, with the client's rules (scripts/ruff.toml).
"$venv/bin/ruff" check --no-cache scripts && "$venv/bin/ruff" format --no-cache --check scripts || {
  echo "scripts/test.sh: ruff failed on scripts/ (see scripts/ruff.toml)" >&2; exit 1; }

# Express for the Node recipe of docs/integration.md (npm registry).
if [ ! -d target/node/node_modules/express ]; then
  echo "scripts/test.sh: installing express (npm) in target/node"
  npm install --silent --no-audit --no-fund --prefix target/node express@4 || {
    echo "scripts/test.sh: npm install express failed" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is missing; install the Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --all-targets "$@" 2>&1 | tee "$log" || status=$?
# Every parser of outside input, fuzzed for a bounded time (FUZZ_SECONDS
# each, 20 by default; about 2 minutes plus the instrumented build).
# SKIP_FUZZ=1 leaves it out, e.g. when running a single test.
if [ "${SKIP_FUZZ:-0}" != 1 ] && [ $# -eq 0 ]; then
  FUZZ_SECONDS=${FUZZ_SECONDS:-20} scripts/fuzz.sh || status=1
fi
# The fault-injection soak's short form (docs/reliability.md): real
# PostgreSQL + standby, PgBouncer, Redis, Prometheus and two daemons under
# load and faults for SOAK_MINUTES (3 here; about 6 minutes with set-up).
# SOAK=0 leaves it out, e.g. when running a single test.
if [ "${SOAK:-1}" != 0 ] && [ $# -eq 0 ]; then
  SOAK_MINUTES=${SOAK_MINUTES:-3} scripts/soak.sh || status=1
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "%d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
