#!/usr/bin/env bash
# What each way of getting Envoy's rate-limit messages adds to a clean
# build (docs/performance.md, "Envoy's rate-limit service over gRPC"): a
# scratch crate with tenantwatch's HTTP/TLS dependencies as the base, then
# tonic + prost with committed generated code (tenantwatch's way), then
# envoy-types on top, then protox + tonic-prost-build as build dependencies
# (generating at build time) instead. One target directory, so each step's
# figure is what it adds. Prints wall seconds and CPU seconds (user + system
# of cargo and every rustc); on a shared machine compare the CPU seconds.
#
#   scripts/measure-rls-build-cost.sh      # takes minutes; uses -j2
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
echo 'fn main() {}' > "$work/src/main.rs"
cp "$root/Cargo.lock" "$work/"
cat > "$work/Cargo.toml" <<'TOML'
[package]
name = "rls-build-cost"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
tokio = { version = "1.54.1", features = ["rt-multi-thread", "net", "signal", "macros", "time", "sync", "io-util"] }
hyper = { version = "1.12.0", features = ["server", "http1"] }
hyper-util = { version = "0.1.21", features = ["tokio", "server", "server-graceful", "http1"] }
rustls = { version = "0.23.46", default-features = false, features = ["ring", "std", "tls12"] }
tokio-rustls = { version = "0.26.6", default-features = false, features = ["ring", "tls12"] }
#STEP1
#STEP2
[build-dependencies]
#STEP3

[workspace]
members = ["."]
TOML
cd "$work"
export CARGO_TARGET_DIR="$work/target"
step() {
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$work/cpu" cargo build -j2 --quiet
  end=$(date +%s.%N)
  printf "%-26s wall %6.0f s  cpu %6.1f s\n" "$1" "$(echo "$end - $start" | bc)" "$(awk '{print $1 + $2}' "$work/cpu")"
}
step base
sed -i 's|^#STEP1|prost = "0.14"\nprost-types = "0.14"\ntonic = { version = "0.14", default-features = false, features = ["server", "codegen"] }\ntonic-prost = "0.14"\ntonic-health = { version = "0.14", default-features = false }\ntokio-stream = { version = "0.1", default-features = false }|' Cargo.toml
step "+ tonic, committed code"
sed -i 's|^#STEP2|envoy-types = "0.7"|' Cargo.toml
step "+ envoy-types"
sed -i 's|^envoy-types = "0.7"||' Cargo.toml
sed -i 's|^#STEP3|protox = "0.9"\ntonic-prost-build = "0.14"|' Cargo.toml
echo 'fn main() {}' > build.rs
step "+ protox, tonic-prost-build"
