// The alerts. Per-tenant conditions have one family, built on the
// detector's flags (TenantwatchTenantFlagged routes by the flag's
// severity); the rest are about targets, PgBouncers and tenantwatch itself.
// Like the recording rules, every expression keeps `job` and `instance`
// (aggregating `without`, joining `ignoring ... group_left`), so it stays
// correct with several tenantwatch instances and targets of the same name.
{
  prometheusAlerts+:: {
    groups+: [
      {
        name: 'tenantwatch.tenants',
        rules: [
          {
            alert: 'TenantwatchTenantFlagged',
            expr: 'tenantwatch_tenant_flagged == 1',
            labels: { severity: '{{ $labels.severity }}' },
            annotations: {
              summary: 'Tenant {{ $labels.tenant }} is flagged: {{ $labels.reason }}',
              description: "tenantwatch's detector flagged tenant {{ $labels.tenant }} for {{ $labels.reason }}; GET /api/v1/flags has the value, threshold and since, GET /api/v1/advice its tightened quota.",
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchTenantFlagged.md',
            },
          },
          {
            alert: 'TenantwatchTenantLatencyHigh',
            expr: 'tenant:tenantwatch_tenant_query_duration_seconds:p95_5m > %(tenantLatencyP95Seconds)s and tenant:tenantwatch_tenant_queries:rate5m > 0.1' % $._config,
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Tenant {{ $labels.tenant }}: p95 query latency {{ $value | humanizeDuration }}',
              description: "Tenant {{ $labels.tenant }}'s 95th percentile query latency has been above %(tenantLatencyP95Seconds)s s for 10 minutes." % $._config,
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchTenantLatencyHigh.md',
            },
          },
        ],
      },
      {
        name: 'tenantwatch.targets',
        rules: [
          {
            alert: 'TenantwatchTargetDown',
            expr: 'tenantwatch_target_up == 0',
            'for': '1m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'PostgreSQL target {{ $labels.target }} does not answer tenantwatch',
              description: "tenantwatch's polls of {{ $labels.target }} have failed for a minute; its tenants' database figures are stale.",
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchTargetDown.md',
            },
          },
          {
            alert: 'TenantwatchTenantSchemaDrift',
            expr: 'tenantwatch_tenant_schema_drift == 1',
            'for': '30m',
            labels: { severity: 'warning' },
            annotations: {
              summary: "Tenant {{ $labels.tenant }}'s tables on {{ $labels.target }} differ from the other tenants'",
              description: "The tenant's schema (or database) lacks tables the most common set on the target has, or has others: a migration did not reach it. GET /api/v1/tenants/{{ $labels.tenant }} names the tables.",
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchTenantSchemaDrift.md',
            },
          },
          {
            alert: 'TenantwatchTenantMissing',
            expr: 'tenantwatch_tenant_missing == 1',
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Tenant {{ $labels.tenant }} has no schema or database on {{ $labels.target }}',
              description: "The tenant is in tenants.expected_file but {{ $labels.target }}'s group has nothing of it: its provisioning failed or was never run for this service, and its users will hit errors there.",
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchTenantMissing.md',
            },
          },
          {
            alert: 'TenantwatchReplicationLagHigh',
            expr: 'tenantwatch_target_replication_lag_seconds > %(replicationLagSeconds)s' % $._config,
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Standby {{ $labels.replica }} of {{ $labels.target }} replays {{ $value | humanizeDuration }} behind',
              description: "The standby's replay lag has been above %(replicationLagSeconds)s s for 5 minutes: reads on it return stale data, and a failover to it would lose or wait for that much." % $._config,
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchReplicationLagHigh.md',
            },
          },
          {
            alert: 'TenantwatchTargetConnectionsNearMax',
            expr: |||
              target:tenantwatch_target_connections:sum
                / (tenantwatch_target_max_connections - tenantwatch_target_reserved_connections) > %(targetConnectionsNearMaxRatio)s
            ||| % $._config,
            'for': '5m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'Target {{ $labels.target }} uses {{ $value | humanizePercentage }} of its usable connections',
              description: 'Client connections on {{ $labels.target }} are above %d%% of max_connections minus the reserved ones; new connections will soon be refused.' % (100 * $._config.targetConnectionsNearMaxRatio),
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchTargetConnectionsNearMax.md',
            },
          },
        ],
      },
      {
        name: 'tenantwatch.pgbouncer',
        rules: [
          {
            alert: 'TenantwatchPgBouncerDown',
            expr: 'tenantwatch_pgbouncer_up == 0',
            'for': '2m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'PgBouncer {{ $labels.pgbouncer }} does not answer tenantwatch',
              description: "tenantwatch cannot read {{ $labels.pgbouncer }}'s admin console for 2 minutes: PgBouncer is down or unreachable, and applications behind it likely cannot connect.",
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchPgBouncerDown.md',
            },
          },
          {
            alert: 'TenantwatchPgBouncerClientsWaiting',
            expr: 'sum without (user, state) (tenantwatch_pgbouncer_pool_clients{state="waiting"}) > 0',
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: '{{ $value }} clients wait for a server connection to {{ $labels.database }} on PgBouncer {{ $labels.pgbouncer }}',
              description: "Clients have queued in {{ $labels.database }}'s pools for 5 minutes: the pool is saturated (pool_size too small, slow queries, or a tenant holding server connections).",
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchPgBouncerClientsWaiting.md',
            },
          },
          {
            alert: 'TenantwatchPgBouncerMaxWaitHigh',
            expr: 'max without (user) (tenantwatch_pgbouncer_pool_maxwait_seconds) > %(pgbouncerMaxWaitSeconds)s' % $._config,
            'for': '2m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'A client has waited {{ $value | humanizeDuration }} for a server connection to {{ $labels.database }} on {{ $labels.pgbouncer }}',
              description: "The oldest waiting client of a pool has waited more than %(pgbouncerMaxWaitSeconds)s s for 2 minutes: requests through {{ $labels.database }}'s pool are slowed by queueing." % $._config,
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchPgBouncerMaxWaitHigh.md',
            },
          },
          {
            alert: 'TenantwatchPgBouncerNearMaxClientConn',
            expr: |||
              sum without (application) (tenantwatch_pgbouncer_client_connections)
                / tenantwatch_pgbouncer_max_client_connections > %(pgbouncerClientsNearMaxRatio)s
            ||| % $._config,
            'for': '5m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'PgBouncer {{ $labels.pgbouncer }} holds {{ $value | humanizePercentage }} of max_client_conn',
              description: 'Client connections to {{ $labels.pgbouncer }} are above %d%% of max_client_conn; new application connections will soon be refused.' % (100 * $._config.pgbouncerClientsNearMaxRatio),
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchPgBouncerNearMaxClientConn.md',
            },
          },
        ],
      },
      {
        name: 'tenantwatch.self',
        rules: [
          {
            alert: 'TenantwatchDown',
            expr: 'up{%(tenantwatchSelector)s} == 0 or absent(up{%(tenantwatchSelector)s})' % $._config,
            'for': '5m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'tenantwatch cannot be scraped{{ with $labels.instance }} ({{ . }}){{ end }}',
              description: 'Prometheus has not scraped tenantwatch for 5 minutes (or has no tenantwatch target at all): no tenant alert can fire meanwhile.',
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchDown.md',
            },
          },
          {
            alert: 'TenantwatchTargetNearSizeBudget',
            expr: 'tenantwatch_target_time_to_size_budget_seconds < %(targetSizeBudgetDays)s * 86400' % $._config,
            'for': '1h',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Target {{ $labels.target }} reaches its size budget in {{ $value | humanizeDuration }}',
              description: 'At the growth fitted over api.history, the tenant schemas on {{ $labels.target }} reach api.size_budget_bytes within %(targetSizeBudgetDays)s days. GET /api/v1/capacity has the fastest-growing tenants and placement advice.' % $._config,
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchTargetNearSizeBudget.md',
            },
          },
          {
            alert: 'TenantwatchConfigReloadFailed',
            expr: 'tenantwatch_config_last_reload_successful == 0',
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'tenantwatch refused its configuration file{{ with $labels.instance }} ({{ . }}){{ end }}',
              description: 'The last reload (SIGHUP) found an invalid file and kept the running configuration: the file on disk is not what runs, and the next restart will fail on it.',
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchConfigReloadFailed.md',
            },
          },
          {
            alert: 'TenantwatchPollsFailing',
            expr: |||
              sum without (error) (increase(tenantwatch_poll_errors_total{collector!="connect"}[10m])) > 0
                and ignoring (collector) tenantwatch_target_up == 1
            |||,
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: "tenantwatch's {{ $labels.collector }} collector keeps failing on {{ $labels.target }}",
              description: 'The target answers but a collector errors (permission, timeouts): some of its figures are stale.',
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchPollsFailing.md',
            },
          },
          {
            alert: 'TenantwatchPollsSlow',
            expr: 'tenantwatch_poll_duration_seconds{collector!="sizes"} > %(pollSlowSeconds)s' % $._config,
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: {
              summary: "tenantwatch's {{ $labels.collector }} poll takes {{ $value | humanizeDuration }} on {{ $labels.target }}",
              description: "A collector's poll has taken more than %(pollSlowSeconds)s s for 15 minutes: the database is struggling or the catalog is huge." % $._config,
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchPollsSlow.md',
            },
          },
          {
            alert: 'TenantwatchIngestDroppingEvents',
            expr: |||
              rate(tenantwatch_udp_kernel_drops_total[5m]) > 0
                or sum without (reason) (rate(tenantwatch_events_rejected_total[5m]))
                     / rate(tenantwatch_events_received_total[5m]) > %(ingestRejectedRatio)s
            ||| % $._config,
            'for': '5m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'tenantwatch is losing or refusing tenant events',
              description: "The kernel drops UDP datagrams for tenantwatch's socket, or more than %d%% of event lines are refused." % (100 * $._config.ingestRejectedRatio),
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchIngestDroppingEvents.md',
            },
          },
          {
            alert: 'TenantwatchRatelimitBackendDown',
            expr: 'tenantwatch_ratelimit_backend_up{backend="redis"} == 0',
            'for': '2m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'tenantwatch cannot reach Redis for rate limits{{ with $labels.instance }} ({{ . }}){{ end }}',
              description: "For 2 minutes Redis has not answered: rate-limit checks are decided by ratelimit.redis.fail_mode (this instance's share, allow all, or deny all) instead of the shared quota, and advice is not shared between instances.",
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchRatelimitBackendDown.md',
            },
          },
          {
            alert: 'TenantwatchGuardActionsFailing',
            expr: |||
              sum without (tenant, rule, action) (
                increase(tenantwatch_guard_actions_total{result=~"permission|error|dropped"}[10m])
              ) > 0
            |||,
            labels: { severity: 'warning' },
            annotations: {
              summary: "tenantwatch's guard could not end sessions ({{ $labels.result }})",
              description: 'In the last 10 minutes guard actions ended with result {{ $labels.result }}: the sessions behind long_query, idle_in_transaction or lock_blocker flags keep running. GET /api/v1/guard lists them.',
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchGuardActionsFailing.md',
            },
          },
          {
            alert: 'TenantwatchTenantOverflow',
            expr: 'rate(tenantwatch_tenants_overflow_total[5m]) > 0',
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'Events go to the __overflow__ tenant',
              description: 'ingest.max_tenants tenants are tracked and events of new tenants are lumped together as __overflow__.',
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchTenantOverflow.md',
            },
          },
        ],
      },
      {
        // Figures that stop without anything failing: the senders of events
        // went quiet, or pg_stat_statements stopped counting. Both compare an
        // instance with its own past (`without (source)`, `without (tenant)`
        // keep job and instance), so two daemons on one target name are
        // judged apart, and a series that is absent (a daemon gone, a target
        // down) never fires: TenantwatchDown and TenantwatchTargetDown say so.
        name: 'tenantwatch.silence',
        rules: [
          {
            alert: 'TenantwatchEventsStopped',
            expr: |||
              sum without (source) (increase(tenantwatch_events_received_total[%(eventsSilentFor)s])) == 0
                and sum without (source) (increase(tenantwatch_events_received_total[%(eventsLookback)s])) > 0
            ||| % $._config,
            'for': '5m',
            labels: { severity: 'critical' },
            annotations: {
              summary: 'tenantwatch receives no tenant events any more{{ with $labels.instance }} ({{ . }}){{ end }}',
              description: "This instance received events within the last %(eventsLookback)s and none, over UDP or HTTP, for %(eventsSilentFor)s: the applications stopped sending (a deploy without the client, a changed address, a network policy), so the per-tenant query figures stand still and the detector's rules that read events judge nobody." % $._config,
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchEventsStopped.md',
            },
          },
          {
            alert: 'TenantwatchStatementsStalled',
            expr: |||
              sum without (tenant) (increase(tenantwatch_tenant_statement_calls_total[%(statementsStalledFor)s])) == 0
                and (
                  sum without (tenant, op) (increase(tenantwatch_tenant_tuples_total[%(statementsStalledFor)s])) > 0
                  or sum without (tenant, state) (max_over_time(tenantwatch_tenant_connections{state="active"}[%(statementsStalledFor)s])) > 0
                )
            ||| % $._config,
            'for': '10m',
            labels: { severity: 'warning' },
            annotations: {
              summary: 'pg_stat_statements figures of {{ $labels.target }} stopped moving',
              description: "No tenant's statement count on {{ $labels.target }} has grown for %(statementsStalledFor)s while its tenants' tables were read or written or their sessions ran queries: tenantwatch_tenant_statement_* and the db_time_hog judgement of tenants that send no events are stale." % $._config,
              runbook_url: $._config.runbookURLPrefix + 'TenantwatchStatementsStalled.md',
            },
          },
        ],
      },
    ],
  },
}
