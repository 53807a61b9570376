// The mixin's settings. Override any of them when you import the mixin:
//
//   (import 'tenantwatch/mixin/mixin.libsonnet') + {
//     _config+:: { tenantwatchSelector: 'job="tenantwatch-prod"' },
//   }
{
  _config+:: {
    // Selects tenantwatch's scrape job, for the "tenantwatch is down" alert
    // (`up{...}`) and the dashboards' job variable.
    tenantwatchSelector: 'job="tenantwatch"',
    // Where the alert runbooks live: runbook_url is this prefix plus the
    // alert's name and ".md" (absolute, so that the link works in Slack or
    // PagerDuty). Point it at your own copy of docs/runbooks/ if you keep one.
    runbookURLPrefix: 'https://github.com/tenantwatch/tenantwatch/blob/main/docs/runbooks/',
    // Dashboards: a cluster variable and selector, for a Prometheus (or
    // Thanos, Mimir) that scrapes several Kubernetes clusters.
    showMultiCluster: false,
    clusterLabel: 'cluster',
    // Dashboards: title prefix, tags, refresh and default time range.
    dashboardTitlePrefix: 'tenantwatch / ',
    dashboardTags: ['tenantwatch'],
    dashboardRefresh: '30s',
    dashboardFrom: 'now-6h',
    // Latency quantiles (panels and the p95 recording rule) read the native
    // histograms first — what a Prometheus started with
    // --enable-feature=native-histograms scrapes, as tenantwatch then
    // answers in the protobuf format — and, with `or`, the classic
    // `_bucket` series, so they work with either (or both, with
    // scrape_classic_histograms). false: the classic series only.
    nativeHistograms: true,

    // Alert thresholds.
    tenantLatencyP95Seconds: 1,
    targetConnectionsNearMaxRatio: 0.9,
    targetSizeBudgetDays: 30,
    replicationLagSeconds: 30,
    pollSlowSeconds: 5,
    ingestRejectedRatio: 0.05,
    pgbouncerMaxWaitSeconds: 1,
    pgbouncerClientsNearMaxRatio: 0.9,
    // Silence: an instance that received events within eventsLookback and
    // none for eventsSilentFor pages; a target whose pg_stat_statements
    // calls have not moved for statementsStalledFor while its tenants work
    // warns.
    eventsSilentFor: '10m',
    eventsLookback: '6h',
    statementsStalledFor: '15m',
  },
}
