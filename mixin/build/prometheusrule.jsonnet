// deploy/kustomize/base/prometheusrule.yaml: the same groups for the
// Prometheus Operator.
local mixin = import '../mixin.libsonnet';
|||
  # Generated from mixin/ by scripts/gen-mixin.sh: edit mixin/*.libsonnet, not this file.
||| + std.manifestYamlDoc(
  {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'PrometheusRule',
    metadata: {
      name: 'tenantwatch',
      labels: { 'app.kubernetes.io/name': 'tenantwatch' },
    },
    spec: { groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups },
  },
  indent_array_in_object=true,
  quote_keys=false,
) + '\n'
