#!/usr/bin/env bash
# Generates tenantwatch's monitoring content from the mixin (mixin/): the
# Prometheus rules (alerts/tenantwatch.rules.yml), the PrometheusRule
# (deploy/kustomize/base/prometheusrule.yaml) and the Grafana dashboards
# (dashboards/*.json). Edit mixin/*.libsonnet, run this, commit both; the
# tests fail when the committed files differ from what this writes.
#
#   scripts/gen-mixin.sh          # writes into the repository
#   scripts/gen-mixin.sh DIR      # writes the same tree under DIR (for the tests)
#
# Needs jsonnet (Debian: apt-get install jsonnet; scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
if ! command -v jsonnet >/dev/null 2>&1; then
  echo "scripts/gen-mixin.sh: jsonnet is missing (apt-get install jsonnet)" >&2
  exit 1
fi
mkdir -p "$out/alerts" "$out/deploy/kustomize/base" "$out/dashboards"
jsonnet -J mixin -S mixin/build/rules.jsonnet -o "$out/alerts/tenantwatch.rules.yml"
jsonnet -J mixin -S mixin/build/prometheusrule.jsonnet -o "$out/deploy/kustomize/base/prometheusrule.yaml"
jsonnet -J mixin -m "$out/dashboards" mixin/build/dashboards.jsonnet >/dev/null
