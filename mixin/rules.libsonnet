// Recording rules: the per-tenant rates, error ratio and p95 the alerts and
// the dashboards' expensive panels read, and the connection sums.
//
// Every rule aggregates with `without (...)`, never `by (...)`: `job`,
// `instance` and `namespace` stay, so two tenantwatch instances (shards, or
// two pods during a rollout) that both see tenant "acme" or both name their
// target "main" keep separate series instead of being merged, or failing a
// join on duplicate series.
{
  prometheusRules+:: {
    groups+: [
      {
        name: 'tenantwatch.recording',
        rules: [
          {
            record: 'tenant:tenantwatch_tenant_queries:rate5m',
            expr: 'sum without (kind) (rate(tenantwatch_tenant_queries_total[5m]))',
          },
          {
            record: 'tenant:tenantwatch_tenant_query_errors:rate5m',
            expr: 'sum without (kind) (rate(tenantwatch_tenant_query_errors_total[5m]))',
          },
          {
            record: 'tenant:tenantwatch_tenant_query_errors:ratio_rate5m',
            expr: |||
              tenant:tenantwatch_tenant_query_errors:rate5m
                / (tenant:tenantwatch_tenant_queries:rate5m > 0)
            |||,
          },
          {
            record: 'tenant_le:tenantwatch_tenant_query_duration_seconds_bucket:rate5m',
            expr: 'sum without (kind) (rate(tenantwatch_tenant_query_duration_seconds_bucket[5m]))',
          },
          {
            record: 'tenant:tenantwatch_tenant_query_duration_seconds:p95_5m',
            local classic = 'histogram_quantile(0.95, tenant_le:tenantwatch_tenant_query_duration_seconds_bucket:rate5m)',
            local native = 'histogram_quantile(0.95, sum without (kind) (rate(tenantwatch_tenant_query_duration_seconds[5m])))',
            expr: if $._config.nativeHistograms then native + ' or ' + classic else classic,
          },
          // The fleet's latency distribution, summed over tenants once per
          // evaluation instead of on every dashboard refresh.
          {
            record: 'le:tenantwatch_tenant_query_duration_seconds_bucket:rate5m',
            expr: 'sum without (tenant) (tenant_le:tenantwatch_tenant_query_duration_seconds_bucket:rate5m)',
          },
          {
            record: 'target:tenantwatch_target_connections:sum',
            expr: 'sum without (state) (tenantwatch_target_connections)',
          },
          {
            record: 'target_tenant:tenantwatch_tenant_connections:sum',
            expr: 'sum without (state) (tenantwatch_tenant_connections)',
          },
        ],
      },
    ],
  },
}
