#!/usr/bin/env bash
# Regenerates src/rls/generated/ from proto/ (Envoy's rate-limit service
# protocol, trimmed: see proto/README.md). The generated code is committed so
# that building tenantwatch compiles no proto and needs no protoc.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo run --quiet --release --manifest-path "$root/scripts/rls-codegen/Cargo.toml" \
    --target-dir "$root/target/rls-codegen" -- "$root"
rustfmt --edition 2024 "$root"/src/rls/generated/*.rs
