// dashboards/*.json, one file per dashboard (jsonnet -m).
local mixin = import '../mixin.libsonnet';
mixin.grafanaDashboards
