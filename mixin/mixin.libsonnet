// tenantwatch's monitoring mixin: recording rules, alerts and Grafana
// dashboards from one source, in the form kube-prometheus, node_exporter and
// postgres_exporter users take them. scripts/gen-mixin.sh writes the
// committed alerts/tenantwatch.rules.yml, deploy/kustomize/base/
// prometheusrule.yaml and dashboards/*.json from it; tests keep them equal.
(import 'config.libsonnet') +
(import 'rules.libsonnet') +
(import 'alerts.libsonnet') +
(import 'dashboards.libsonnet')
