// alerts/tenantwatch.rules.yml: the recording rules, then the alerts.
local mixin = import '../mixin.libsonnet';
|||
  # Generated from mixin/ by scripts/gen-mixin.sh: edit mixin/*.libsonnet, not this file.
  # Check: promtool check rules alerts/tenantwatch.rules.yml
  # Test:  promtool test rules alerts/tests/tenantwatch.test.yml
  # Runbooks: runbook_url is mixin/config.libsonnet's runbookURLPrefix plus the
  # alert's name; TenantwatchDown selects its tenantwatchSelector (job="tenantwatch").
||| + std.manifestYamlDoc(
  { groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups },
  indent_array_in_object=true,
  quote_keys=false,
) + '\n'
