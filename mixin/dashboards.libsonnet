// The Grafana dashboards: fleet, tenant detail, noisy neighbours, capacity
// and tenantwatch's own health.
//
// House rules (tests/it/dashboards.rs checks them): every panel and query on
// the datasource variable, a unit on every panel, `$__rate_interval` in
// rates, a bounded number of lines per graph (top-k over the whole range,
// pinned with `@ end()`, so that the legend does not change from step to
// step), every metric one tenantwatch exports or a recording rule of this
// mixin. Every query selects `job` and `instance` (and `cluster` with
// showMultiCluster), and every tenant-valued table or series links to the
// tenant dashboard with the time range and variables kept.
local ds = { type: 'prometheus', uid: '${datasource}' };

local variable(name, query, label=null, multi=false, includeAll=false, allValue=null) = {
  name: name,
  label: if label == null then name else label,
  type: 'query',
  datasource: ds,
  query: { query: query, refId: name },
  definition: query,
  refresh: 2,
  multi: multi,
  includeAll: includeAll,
  current: {},
  hide: 0,
  sort: 1,
} + (if allValue == null then {} else { allValue: allValue });

local custom(name, values, default) = {
  name: name,
  label: name,
  type: 'custom',
  query: std.join(',', values),
  current: { text: default, value: default },
  options: [{ text: v, value: v, selected: v == default } for v in values],
  hide: 0,
};

local target(expr, legend='__auto', instant=false) =
  { expr: expr, legendFormat: legend } +
  (if instant then { instant: true, range: false, format: 'table' } else {});

local tableOptions = { showHeader: true, cellHeight: 'sm' };

// Places rows and panels on Grafana's 24-column grid, left to right, a new
// line when a panel does not fit; numbers them.
local layout(items) =
  local step(state, item) =
    if std.objectHas(item, 'row') then
      local y = if state.x > 0 then state.y + state.lineH else state.y;
      state {
        y: y + 1,
        x: 0,
        lineH: 0,
        id: state.id + 1,
        panels+: [{
          id: state.id,
          type: 'row',
          title: item.row,
          collapsed: false,
          gridPos: { h: 1, w: 24, x: 0, y: y },
          panels: [],
        }],
      }
    else
      local wraps = state.x + item.w > 24;
      local x = if wraps then 0 else state.x;
      local y = if wraps then state.y + state.lineH else state.y;
      local lineH = std.max(if wraps then 0 else state.lineH, item.h);
      local full = x + item.w >= 24;
      state {
        x: if full then 0 else x + item.w,
        y: if full then y + lineH else y,
        lineH: if full then 0 else lineH,
        id: state.id + 1,
        panels+: [item.panel { id: state.id, gridPos: { h: item.h, w: item.w, x: x, y: y } }],
      };
  std.foldl(step, items, { x: 0, y: 0, lineH: 0, id: 1, panels: [] }).panels;

{
  local config = $._config,
  local cluster = if config.showMultiCluster then '%s=~"$cluster", ' % config.clusterLabel else '',
  // The selector every query carries.
  local sel = cluster + 'job=~"$job", instance=~"$instance"',
  // `name{<selector>, extra}`.
  local m(name, extra='') = name + '{' + sel + (if extra == '' then '' else ', ' + extra) + '}',

  local tenantLink(field) = {
    title: 'Tenant detail',
    url: '/d/tenantwatch-tenant/tenantwatch-tenant-detail?var-tenant=' + field +
         '&${__url_time_range}&${datasource:queryparam}&${job:queryparam}&${instance:queryparam}' +
         (if config.showMultiCluster then '&${cluster:queryparam}' else ''),
  },

  // One panel on the grid. `tenant_link` adds a data link to the tenant
  // dashboard from each series (by its `tenant` label) or table row.
  local panel(kind, title, targets, unit, w=12, h=8, description='', options={}, field={}, tenant_link=false) = {
    w: w,
    h: h,
    panel: {
      type: kind,
      title: title,
      description: description,
      datasource: ds,
      fieldConfig: {
        defaults: { unit: unit } + field +
                  (if tenant_link then {
                     links: [tenantLink(if kind == 'table' then '${__data.fields.tenant}' else '${__field.labels.tenant}')],
                   } else {}),
        overrides: [],
      },
      options: options,
      targets: [
        { datasource: ds, refId: std.char(65 + i), editorMode: 'code', range: true } + targets[i]
        for i in std.range(0, std.length(targets) - 1)
      ],
    },
  },
  local ts = 'timeseries',
  local row(title) = { row: title },

  local variables(extra) =
    [{ name: 'datasource', label: 'Data source', type: 'datasource', query: 'prometheus', current: {}, hide: 0, refresh: 1 }] +
    (if config.showMultiCluster then
       [variable('cluster', 'label_values(tenantwatch_build_info, %s)' % config.clusterLabel, label='Cluster')]
     else []) +
    [
      variable('job',
               'label_values(tenantwatch_build_info{%s}, job)' % (if config.showMultiCluster then cluster + 'job!=""' else 'job!=""'),
               label='Job',
               multi=true,
               includeAll=true,
               allValue='.+'),
      variable('instance',
               'label_values(tenantwatch_build_info{%s}, instance)' % (cluster + 'job=~"$job"'),
               label='Instance',
               multi=true,
               includeAll=true,
               allValue='.+'),
    ] + extra,

  local targetVariable = variable('target', 'label_values(%s, target)' % m('tenantwatch_target_up'), multi=true, includeAll=true, allValue='.*'),

  local annotation(name, expr, title, color, tagKeys='tenant,reason,rule,action,result') = {
    datasource: ds,
    enable: true,
    name: name,
    expr: expr,
    step: '1m',
    titleFormat: title,
    tagKeys: tagKeys,
    iconColor: color,
    useValueForTime: false,
  },

  local dashboard(uid, title, tags, extraVariables, description, items, annotations=[]) = {
    uid: uid,
    title: config.dashboardTitlePrefix + title,
    tags: config.dashboardTags + tags,
    description: description,
    editable: true,
    schemaVersion: 39,
    version: 1,
    time: { from: config.dashboardFrom, to: 'now' },
    refresh: config.dashboardRefresh,
    timezone: '',
    graphTooltip: 1,
    templating: { list: variables(extraVariables) },
    annotations: { list: annotations },
    links: [{ type: 'dashboards', tags: config.dashboardTags, asDropdown: true, title: 'tenantwatch' }],
    panels: layout(items),
  },

  // Lines of the `limit` tenants highest on average over the whole range:
  // the same tenants at every step, not a different top-k per step.
  local topOverRange(series, limit='$limit') =
    '%s and on (tenant) topk(%s, avg_over_time(%s[$__range] @ end()))' % [series, limit, series],

  local flagAnnotation(extra='') = annotation(
    'Flags',
    'max without (severity) (%s)' % m('tenantwatch_tenant_flagged', extra),
    '{{tenant}} flagged: {{reason}}',
    'orange',
  ),
  local guardAnnotation(extra='') = annotation(
    'Guard actions',
    'sum by (tenant, rule, action, result) (increase(%s[2m])) > 0' % m('tenantwatch_guard_actions_total', extra),
    '{{tenant}}: {{action}} ({{rule}}, {{result}})',
    'red',
  ),

  local rate(name, extra='') = 'rate(%s[$__rate_interval])' % m(name, extra),
  // The `q` quantile of histogram `name` aggregated by `by`: from its
  // native buckets, or (`or`) its classic ones when Prometheus has none
  // (config.nativeHistograms; classic only without). `classicRate` replaces
  // the classic side's rate, e.g. by a recording rule.
  local quantile(q, name, extra='', by=[], classicRate=null) =
    local classic = 'histogram_quantile(%s, sum by (%s) (%s))' % [q, std.join(', ', by + ['le']), if classicRate == null then rate(name + '_bucket', extra) else classicRate];
    local native = 'histogram_quantile(%s, sum%s (%s))' % [q, if by == [] then '' else ' by (%s)' % std.join(', ', by), rate(name, extra)];
    if config.nativeHistograms then native + ' or ' + classic else classic,
  // The increase of a histogram's buckets, for a heatmap: native, or
  // classic by `le`.
  local heatmap(name, extra='') =
    local classic = 'sum by (le) (increase(%s[$__rate_interval]))' % m(name + '_bucket', extra);
    if config.nativeHistograms then 'sum(increase(%s[$__rate_interval])) or %s' % [m(name, extra), classic] else classic,

  grafanaDashboards+:: {
    'fleet.json': dashboard(
      'tenantwatch-fleet',
      'Fleet overview',
      ['fleet'],
      [targetVariable],
      'All tenants at a glance: query load, errors, latency, connections, PgBouncer pools, databases and flags.',
      [
        row('Load'),
        panel('stat', 'Tenants tracked', [target('sum(%s)' % m('tenantwatch_tenants_tracked'))], 'short', w=4, h=4),
        panel('stat', 'Flagged tenants', [target('count(count by (tenant) (%s)) or vector(0)' % m('tenantwatch_tenant_flagged'))], 'short', w=4, h=4),
        panel('stat', 'Queries/s', [target('sum(%s)' % m('tenant:tenantwatch_tenant_queries:rate5m'))], 'reqps', w=4, h=4),
        panel('stat', 'Error ratio', [target('sum(%s) / sum(%s)' % [m('tenant:tenantwatch_tenant_query_errors:rate5m'), m('tenant:tenantwatch_tenant_queries:rate5m')])], 'percentunit', w=4, h=4),
        panel('stat', 'Targets up', [target('sum(%s)' % m('tenantwatch_target_up', 'target=~"$target"'))], 'short', w=4, h=4),
        panel('stat', 'Connections in use', [target('sum(%s)' % m('tenantwatch_target_connections', 'target=~"$target"'))], 'short', w=4, h=4),
        panel(ts, 'Queries/s by kind', [target('sum by (kind) (%s)' % rate('tenantwatch_tenant_queries_total'), '{{kind}}')], 'reqps'),
        panel(ts, 'Fleet latency (p50, p95, p99)', [
          target(quantile(q, 'tenantwatch_tenant_query_duration_seconds', classicRate=m('le:tenantwatch_tenant_query_duration_seconds_bucket:rate5m')), 'p%d' % (q * 100))
          for q in [0.5, 0.95, 0.99]
        ], 's', description='From the native histograms, else the recording rule le:tenantwatch_tenant_query_duration_seconds_bucket:rate5m (5m rates summed over tenants).'),
        panel('heatmap', 'Query latency distribution', [
          { expr: heatmap('tenantwatch_tenant_query_duration_seconds'), legendFormat: '{{le}}', format: 'heatmap' },
        ], 's', w=24, options={ calculate: false, yAxis: { unit: 's' }, color: { scheme: 'Oranges' }, cellGap: 1 }),
        panel(ts,
              'Top tenants by queries/s',
              [target(topOverRange(m('tenant:tenantwatch_tenant_queries:rate5m'), '10'), '{{tenant}}')],
              'reqps',
              description='The ten tenants with most queries over the range; click a line for the tenant.',
              tenant_link=true),
        panel(ts,
              'Queries/s by instance (pod)',
              [target('topk(20, sum by (app_instance) (%s))' % rate('tenantwatch_instance_queries_total'), '{{app_instance}}')],
              'reqps',
              description="Per application instance, from the events' instance field; an overloaded pod stands out. At most ingest.max_instances, the rest as __other__."),
        panel(ts,
              'Connections by application_name (pod)',
              [target('topk(20, sum by (application) (%s))' % m('tenantwatch_target_application_connections', 'target=~"$target"'), '{{application}}')],
              'short',
              description='Client backends per application_name, as PostgreSQL sees them: set it to the pod name to see connections per pod.'),
        panel(ts,
              'Queries/s by tier',
              [target('sum by (tier) (%s * on (job, instance, tenant) group_left (tier) %s)' % [m('tenant:tenantwatch_tenant_queries:rate5m'), m('tenantwatch_tenant_info')], '{{tier}}')],
              'reqps',
              description='Tenants with a tier ([ratelimit.tenants] or tenants.tiers_file), grouped by it through tenantwatch_tenant_info.'),
        row('Databases'),
        panel(ts, 'Connections by database', [target('topk(10, sum by (target, database) (%s))' % m('tenantwatch_target_database_connections', 'target=~"$target"'), '{{target}} {{database}}')], 'short'),
        panel(ts, 'Connections by role', [target('topk(10, sum by (target, user) (%s))' % m('tenantwatch_target_user_connections', 'target=~"$target"'), '{{target}} {{user}}')], 'short'),
        panel(ts, 'Pooled and lock-waiting backends', [
          target('sum by (target) (%s)' % m('tenantwatch_target_pooled_connections', 'target=~"$target"'), '{{target}} pooled (idle, no tenant)'),
          target('sum by (target) (%s)' % m('tenantwatch_target_lock_waiting_backends', 'target=~"$target"'), '{{target}} waiting on a lock'),
        ], 'short', description='Pooled: idle server connections whose last query was tagged for a tenant (charged to none, see docs/attribution.md).'),
        panel(ts, 'Deadlocks, rollbacks and recovery conflicts/s', [
          target('sum by (target) (%s)' % rate('tenantwatch_database_deadlocks_total', 'target=~"$target"'), '{{target}} deadlocks'),
          target('sum by (target) (%s)' % rate('tenantwatch_database_rollbacks_total', 'target=~"$target"'), '{{target}} rollbacks'),
          target('sum by (target) (%s)' % rate('tenantwatch_database_conflicts_total', 'target=~"$target"'), '{{target}} conflicts'),
        ], 'ops'),
        panel(ts, 'Cache hit ratio by database', [
          target('topk(10, sum by (target, database) (%s) / sum by (target, database) (%s + %s))' % [
            rate('tenantwatch_database_blocks_hit_total', 'target=~"$target"'),
            rate('tenantwatch_database_blocks_hit_total', 'target=~"$target"'),
            rate('tenantwatch_database_blocks_read_total', 'target=~"$target"'),
          ], '{{target}} {{database}}'),
        ], 'percentunit'),
        panel(ts,
              'Replication lag (time)',
              [target('max by (target, replica) (%s)' % m('tenantwatch_target_replication_lag_seconds', 'target=~"$target"'), '{{target}} → {{replica}}')],
              's',
              description='Replay lag of each standby streaming from a watched primary (pg_stat_replication); 0 when caught up.'),
        panel(ts, 'Replication lag (WAL bytes)', [target('max by (target, replica) (%s)' % m('tenantwatch_target_replication_lag_bytes', 'target=~"$target"'), '{{target}} → {{replica}}')], 'bytes'),
        panel('stat',
              'Standbys watched',
              [target('sum(%s)' % m('tenantwatch_target_in_recovery', 'target=~"$target"'))],
              'short',
              w=6,
              h=4,
              description='Targets that are standbys (their write-based rules, bloat and runaway_growth, are skipped).'),
        panel(ts, 'Temporary files/s by database', [target('topk(10, sum by (target, database) (%s))' % rate('tenantwatch_database_temp_files_total', 'target=~"$target"'), '{{target}} {{database}}')], 'ops'),
        row('PgBouncer'),
        panel('stat', 'PgBouncers up', [target('sum(%s)' % m('tenantwatch_pgbouncer_up'))], 'short', w=4, h=4),
        panel('stat',
              'Clients waiting',
              [target('sum(%s) or vector(0)' % m('tenantwatch_pgbouncer_pool_clients', 'state="waiting"'))],
              'short',
              w=4,
              h=4,
              description='Clients queued for a server connection in every pool: above 0 for long, a pool is saturated.'),
        panel('stat', 'Longest client wait', [target('max(%s) or vector(0)' % m('tenantwatch_pgbouncer_pool_maxwait_seconds'))], 's', w=4, h=4),
        panel('stat',
              'Client connections used',
              [target('max(sum without (application) (%s) / %s)' % [m('tenantwatch_pgbouncer_client_connections'), m('tenantwatch_pgbouncer_max_client_connections')])],
              'percentunit',
              w=4,
              h=4,
              description="The fullest PgBouncer's client connections over its max_client_conn."),
        panel('stat', 'Server connections', [target('sum(%s)' % m('tenantwatch_pgbouncer_pool_servers'))], 'short', w=4, h=4),
        panel('stat', 'Pooled transactions/s', [target('sum(%s)' % rate('tenantwatch_pgbouncer_transactions_total'))], 'ops', w=4, h=4),
        panel(ts,
              'Clients waiting by pool',
              [target('topk(10, sum by (pgbouncer, database, user) (%s))' % m('tenantwatch_pgbouncer_pool_clients', 'state="waiting"'), '{{pgbouncer}} {{database}}/{{user}}')],
              'short',
              description='The ten pools with most clients queued for a server connection (SHOW POOLS cl_waiting).'),
        panel(ts,
              'Longest wait by pool',
              [target('topk(10, max by (pgbouncer, database, user) (%s))' % m('tenantwatch_pgbouncer_pool_maxwait_seconds'), '{{pgbouncer}} {{database}}/{{user}}')],
              's',
              description="How long each pool's oldest waiting client has waited; above 1 s alerts (TenantwatchPgBouncerMaxWaitHigh)."),
        panel(ts,
              'Client wait time/s by database',
              [target('topk(10, sum by (pgbouncer, database) (%s))' % rate('tenantwatch_pgbouncer_client_wait_seconds_total'), '{{pgbouncer}} {{database}}')],
              's',
              description='Seconds clients spent waiting for a server connection per second: the queueing cost of each database.'),
        panel(ts, 'Server connections by state', [target('sum by (pgbouncer, state) (%s)' % m('tenantwatch_pgbouncer_pool_servers'), '{{pgbouncer}} {{state}}')], 'short'),
        panel(ts, 'Client connections vs max_client_conn', [
          target('sum by (pgbouncer) (%s)' % m('tenantwatch_pgbouncer_client_connections'), '{{pgbouncer}} clients'),
          target('max by (pgbouncer) (%s)' % m('tenantwatch_pgbouncer_max_client_connections'), '{{pgbouncer}} max_client_conn'),
        ], 'short'),
        panel(ts, 'Pooled queries and transactions/s by database', [
          target('topk(10, sum by (pgbouncer, database) (%s))' % rate('tenantwatch_pgbouncer_transactions_total'), '{{pgbouncer}} {{database}} transactions'),
          target('topk(10, sum by (pgbouncer, database) (%s))' % rate('tenantwatch_pgbouncer_queries_total'), '{{pgbouncer}} {{database}} queries'),
        ], 'ops'),
        panel(ts, 'Server time per pooled query', [
          target('topk(10, sum by (pgbouncer, database) (%s) / sum by (pgbouncer, database) (%s))' % [rate('tenantwatch_pgbouncer_query_time_seconds_total'), rate('tenantwatch_pgbouncer_queries_total')], '{{pgbouncer}} {{database}}'),
        ], 's', w=24, description='Average time a query held a server connection (SHOW STATS total_query_time / total_query_count).'),
        row('Flags'),
        panel('table',
              'Flagged tenants',
              [target('max by (tenant, reason, severity) (%s)' % m('tenantwatch_tenant_flag_value'), instant=true)],
              'short',
              w=24,
              options=tableOptions,
              tenant_link=true),
        panel(ts, 'Flags raised by reason', [target('count by (reason) (%s)' % m('tenantwatch_tenant_flagged'), '{{reason}}')], 'short'),
        panel(ts,
              'Guard actions by result',
              [target('sum by (rule, action, result) (increase(%s[$__rate_interval]))' % m('tenantwatch_guard_actions_total'), '{{rule}} {{action}} {{result}}')],
              'short',
              description='Sessions of flagged tenants cancelled or terminated (or would-be, in dry_run) by the guard.'),
      ],
      [flagAnnotation(), guardAnnotation()],
    ),

    'tenant.json': dashboard(
      'tenantwatch-tenant',
      'Tenant detail',
      ['tenant'],
      // Every per-tenant family: tenants that only send events, that are
      // only polled (database per tenant), or that only have pools.
      [variable('tenant', 'label_values({__name__=~"tenantwatch_tenant_.+", %s}, tenant)' % sel, label='Tenant')],
      'One tenant in detail: its queries, latency, errors, share of database time, connections, pools and schema.',
      [
        row('Queries'),
        panel(ts, 'Queries/s by kind', [target('sum by (kind) (%s)' % rate('tenantwatch_tenant_queries_total', 'tenant="$tenant"'), '{{kind}}')], 'reqps'),
        panel(ts, 'Error ratio', [target('sum(%s) / sum(%s)' % [rate('tenantwatch_tenant_query_errors_total', 'tenant="$tenant"'), rate('tenantwatch_tenant_queries_total', 'tenant="$tenant"')], 'errors')], 'percentunit'),
        panel(ts, 'Latency (p50, p95, p99)', [
          target(quantile(q, 'tenantwatch_tenant_query_duration_seconds', 'tenant="$tenant"'), 'p%d' % (q * 100))
          for q in [0.5, 0.95, 0.99]
        ], 's'),
        panel(ts, 'Share of database time', [target(m('tenantwatch_tenant_db_time_ratio', 'tenant="$tenant"'), 'share')], 'percentunit'),
        panel('heatmap', 'Latency distribution', [
          { expr: heatmap('tenantwatch_tenant_query_duration_seconds', 'tenant="$tenant"'), legendFormat: '{{le}}', format: 'heatmap' },
        ], 's', w=24, options={ calculate: false, yAxis: { unit: 's' } }),
        panel(ts, 'Rows/s', [target('sum by (kind) (%s)' % rate('tenantwatch_tenant_rows_total', 'tenant="$tenant"'), '{{kind}}')], 'short'),
        panel(ts,
              'Queries/s by endpoint',
              [target('sum by (endpoint) (%s)' % rate('tenantwatch_tenant_endpoint_queries_total', 'tenant="$tenant"'), '{{endpoint}}')],
              'reqps',
              description='Queries sent with an endpoint (at most ingest.max_endpoints_per_tenant per tenant, the rest as __other__).'),
        panel(ts, 'p95 latency by endpoint', [target('histogram_quantile(0.95, sum by (endpoint, le) (%s))' % rate('tenantwatch_tenant_endpoint_duration_seconds_bucket', 'tenant="$tenant"'), '{{endpoint}}')], 's'),
        panel(ts,
              'Schema switch p95',
              [target('histogram_quantile(0.95, sum by (le) (%s))' % rate('tenantwatch_tenant_schema_switch_duration_seconds_bucket', 'tenant="$tenant"'), 'p95')],
              's',
              description='Time the application takes to switch a session to this tenant (schema_switch events); not counted as queries.'),
        panel(ts, 'Rate-limit decisions/s', [target('sum by (decision) (%s)' % rate('tenantwatch_ratelimit_decisions_total', 'tenant="$tenant"'), '{{decision}}')], 'reqps'),
        row('Database'),
        panel(ts, 'Connections by state', [target('sum by (target, state) (%s)' % m('tenantwatch_tenant_connections', 'tenant="$tenant"'), '{{target}} {{state}}')], 'short'),
        panel(ts, 'Longest query, idle in transaction, oldest transaction', [
          target(m('tenantwatch_tenant_longest_query_seconds', 'tenant="$tenant"'), '{{target}} longest query'),
          target(m('tenantwatch_tenant_idle_in_transaction_max_seconds', 'tenant="$tenant"'), '{{target}} idle in txn'),
          target(m('tenantwatch_tenant_oldest_transaction_seconds', 'tenant="$tenant"'), '{{target}} oldest txn'),
        ], 's'),
        panel(ts, 'Lock waits and blocking', [
          target(m('tenantwatch_tenant_lock_waiting_backends', 'tenant="$tenant"'), '{{target}} waiting on a lock'),
          target(m('tenantwatch_tenant_blocking_backends', 'tenant="$tenant"'), '{{target}} others blocked by it'),
        ], 'short'),
        panel(ts, 'Server-side statement time and calls (pg_stat_statements)', [
          target('sum by (target) (%s)' % rate('tenantwatch_tenant_statement_time_seconds_total', 'tenant="$tenant"'), '{{target}} statement time s/s'),
          target('sum by (target) (%s)' % rate('tenantwatch_tenant_statement_calls_total', 'tenant="$tenant"'), '{{target}} calls/s'),
        ], 'short', description="What PostgreSQL counted for the tenant's roles or databases, whether or not it sends events."),
        panel(ts,
              'Server-side blocks/s by source',
              [target('sum by (source) (%s)' % rate('tenantwatch_tenant_statement_blocks_total', 'tenant="$tenant"'), '{{source}}')],
              'short',
              description='Shared or local buffer hits, reads, and temporary blocks read and written by its statements.'),
        panel(ts, 'PgBouncer pool: waiting clients and wait time', [
          target('sum by (pgbouncer) (%s)' % m('tenantwatch_tenant_pool_waiting_clients', 'tenant="$tenant"'), '{{pgbouncer}} waiting clients'),
          target('sum by (pgbouncer) (%s)' % rate('tenantwatch_tenant_pool_wait_seconds_total', 'tenant="$tenant"'), '{{pgbouncer}} wait s/s'),
        ], 'short', description="The tenant's clients queued for a server connection in its PgBouncer pools (database- or role-per-tenant pools), and the seconds they waited per second."),
        panel(ts, 'Schema size', [
          target(m('tenantwatch_tenant_schema_size_bytes', 'tenant="$tenant"'), '{{target}} exact'),
          target(m('tenantwatch_tenant_schema_size_estimate_bytes', 'tenant="$tenant"'), '{{target}} estimate (schema_detail full)'),
        ], 'bytes'),
        panel(ts, 'Live and dead tuples', [
          target(m('tenantwatch_tenant_live_tuples', 'tenant="$tenant"'), '{{target}} live'),
          target(m('tenantwatch_tenant_dead_tuples', 'tenant="$tenant"'), '{{target}} dead'),
        ], 'short'),
        panel(ts, 'Time since the last vacuum and analyze', [
          target('time() - %s' % m('tenantwatch_tenant_last_vacuum_timestamp_seconds', 'tenant="$tenant"'), '{{target}} vacuum'),
          target('time() - %s' % m('tenantwatch_tenant_last_analyze_timestamp_seconds', 'tenant="$tenant"'), '{{target}} analyze (schema_detail full)'),
        ], 's'),
        panel(ts,
              'Vacuum and analyze runs/s',
              [target('sum by (target, op) (%s)' % rate('tenantwatch_tenant_maintenance_total', 'tenant="$tenant"'), '{{target}} {{op}}')],
              'ops',
              description='Manual and automatic runs (schema_detail full).'),
        panel(ts, 'Rows written/s', [target('sum by (op) (%s)' % rate('tenantwatch_tenant_tuples_total', 'tenant="$tenant", op=~"inserted|updated|deleted"'), '{{op}}')], 'short'),
        panel(ts,
              'Scans/s by type',
              [target('sum by (type) (%s)' % rate('tenantwatch_tenant_scans_total', 'tenant="$tenant"'), '{{type}}')],
              'ops',
              description='Sequential scans growing against index scans: a missing index.'),
        panel(ts, 'Cache hit ratio', [target('sum(%s) / sum(%s)' % [rate('tenantwatch_tenant_blocks_total', 'tenant="$tenant", source="hit"'), rate('tenantwatch_tenant_blocks_total', 'tenant="$tenant"')], 'hit ratio')], 'percentunit'),
        panel(ts, 'Tables and schemas', [
          target(m('tenantwatch_tenant_tables', 'tenant="$tenant"'), '{{target}} tables'),
          target(m('tenantwatch_tenant_schemas', 'tenant="$tenant"'), '{{target}} schemas'),
        ], 'short', description='schema_detail full.'),
        row('Flags and limits'),
        panel('table',
              'Flags',
              [
                target('max by (reason, severity) (%s)' % m('tenantwatch_tenant_flag_value', 'tenant="$tenant"'), instant=true),
                target('max by (reason, severity) (%s)' % m('tenantwatch_tenant_flag_threshold', 'tenant="$tenant"'), instant=true),
              ],
              'short',
              options=tableOptions,
              description='Each raised flag: A its value, B its threshold.'),
        panel(ts, 'Effective rate-limit quota', [target(m('tenantwatch_tenant_ratelimit_qps', 'tenant="$tenant"'), 'qps')], 'reqps'),
        panel(ts,
              'Guard actions',
              [target('sum by (rule, action, result) (increase(%s[$__rate_interval]))' % m('tenantwatch_guard_actions_total', 'tenant="$tenant"'), '{{rule}} {{action}} {{result}}')],
              'short',
              description="This tenant's sessions the guard cancelled or terminated (GET /api/v1/guard has pid and query)."),
      ],
      [flagAnnotation('tenant="$tenant"'), guardAnnotation('tenant="$tenant"')],
    ),

    'noisy-neighbours.json': dashboard(
      'tenantwatch-noisy-neighbours',
      'Noisy neighbours',
      ['tenants'],
      [custom('limit', ['5', '10', '20', '50'], '10')],
      'Who is hurting everyone else: the top tenants by database time, latency, errors, connections and growth. Click a tenant for its detail.',
      [row('Top tenants')] + [
        panel('table', p[0], [target(p[1], instant=true)], p[2], options=tableOptions, tenant_link=true)
        for p in [
          ['Share of database time', 'topk($limit, %s)' % m('tenantwatch_tenant_db_time_ratio'), 'percentunit'],
          ['Queries/s', 'topk($limit, %s)' % m('tenant:tenantwatch_tenant_queries:rate5m'), 'reqps'],
          ['p95 latency', 'topk($limit, %s)' % m('tenant:tenantwatch_tenant_query_duration_seconds:p95_5m'), 's'],
          ['Errors/s', 'topk($limit, %s)' % m('tenant:tenantwatch_tenant_query_errors:rate5m'), 'reqps'],
          ['Connections', 'topk($limit, sum by (tenant) (%s))' % m('target_tenant:tenantwatch_tenant_connections:sum'), 'short'],
          ['Idle in transaction', 'topk($limit, max by (tenant) (%s))' % m('tenantwatch_tenant_idle_in_transaction_max_seconds'), 's'],
          ['Longest running query', 'topk($limit, max by (tenant) (%s))' % m('tenantwatch_tenant_longest_query_seconds'), 's'],
          ['Backends blocked', 'topk($limit, sum by (tenant) (%s))' % m('tenantwatch_tenant_blocking_backends'), 'short'],
          ['Dead tuples', 'topk($limit, sum by (tenant) (%s))' % m('tenantwatch_tenant_dead_tuples'), 'short'],
          ['Statement time/s (pg_stat_statements)', 'topk($limit, sum by (tenant) (%s))' % rate('tenantwatch_tenant_statement_time_seconds_total'), 'short'],
          ['Rows/s (pg_stat_statements)', 'topk($limit, sum by (tenant) (%s))' % rate('tenantwatch_tenant_statement_rows_total'), 'short'],
          ['Clients waiting in PgBouncer', 'topk($limit, sum by (tenant) (%s))' % m('tenantwatch_tenant_pool_waiting_clients'), 'short'],
        ]
      ] + [
        panel(ts,
              'Share of database time, top tenants',
              [target(topOverRange(m('tenantwatch_tenant_db_time_ratio')), '{{tenant}}')],
              'percentunit',
              w=24,
              description='The $limit tenants with the highest average share over the range, the same at every step.',
              tenant_link=true),
      ],
      [flagAnnotation()],
    ),

    'capacity.json': dashboard(
      'tenantwatch-capacity',
      'Capacity',
      ['capacity'],
      [targetVariable],
      'Connection and size headroom per target and PgBouncer, the biggest and fastest-growing tenants.',
      [
        row('Connections'),
        panel(ts, 'Connection headroom', [target(m('tenantwatch_target_connection_headroom', 'target=~"$target"'), '{{target}} ({{instance}})')], 'short'),
        panel(ts, 'Connections by state', [target('sum by (target, state) (%s)' % m('tenantwatch_target_connections', 'target=~"$target"'), '{{target}} {{state}}')], 'short'),
        panel(ts, 'Usable and maximum connections', [
          target(m('tenantwatch_target_max_connections', 'target=~"$target"'), '{{target}} max_connections'),
          target('%s - %s' % [m('tenantwatch_target_max_connections', 'target=~"$target"'), m('tenantwatch_target_reserved_connections', 'target=~"$target"')], '{{target}} usable'),
        ], 'short'),
        panel(ts, 'PgBouncer pool size against server connections', [
          target('topk(10, sum by (pgbouncer, database) (%s))' % m('tenantwatch_pgbouncer_pool_servers'), '{{pgbouncer}} {{database}} servers'),
          target('topk(10, max by (pgbouncer, database) (%s))' % m('tenantwatch_pgbouncer_pool_size'), '{{pgbouncer}} {{database}} pool_size'),
        ], 'short'),
        row('Size'),
        panel(ts, 'Tenant schemas total size', [target('sum by (target) (%s)' % m('tenantwatch_tenant_schema_size_bytes', 'target=~"$target"'), '{{target}}')], 'bytes'),
        panel(ts, 'Growth per day', [target('sum by (target) (deriv(%s[6h])) * 86400' % m('tenantwatch_tenant_schema_size_bytes', 'target=~"$target"'), '{{target}}')], 'bytes'),
        panel('stat',
              'More median tenants that fit',
              [target(m('tenantwatch_fleet_tenants_fit'))],
              'short',
              w=6,
              h=4,
              description='Tenants of the median footprint (connections, size) that still fit in the headroom and size budget.'),
        panel('stat',
              'Time until the size budget (soonest)',
              [target('min(%s) or vector(-1)' % m('tenantwatch_target_time_to_size_budget_seconds', 'target=~"$target"'))],
              's',
              w=6,
              h=4,
              description='-1: no api.size_budget_bytes set, or no target growing.'),
        panel('stat', 'Databases watched', [target('sum(%s)' % m('tenantwatch_target_watched_databases', 'target=~"$target"'))], 'short', w=6, h=4),
        panel('stat',
              'Tenants with schema drift',
              [target('sum(%s)' % m('tenantwatch_tenant_schema_drift', 'target=~"$target"'))],
              'short',
              w=6,
              h=4,
              description="Tenants whose tables differ from their target's most common set (a migration that missed them); the tenant detail names the tables."),
        panel('stat',
              'Expected tenants missing',
              [target('count(%s) or vector(0)' % m('tenantwatch_tenant_missing', 'target=~"$target"'))],
              'short',
              w=6,
              h=4,
              description='Tenants of tenants.expected_file with no schema or database on a target of a group.'),
        panel('stat',
              'Tenant schemas',
              [target('sum(%s)' % m('tenantwatch_tenant_schemas', 'target=~"$target"'))],
              'short',
              w=6,
              h=4,
              description='schema_detail full.'),
        panel('table', 'Largest tenants', [target('topk(20, %s)' % m('tenantwatch_tenant_schema_size_bytes', 'target=~"$target"'), instant=true)], 'bytes', options=tableOptions, tenant_link=true),
        panel('table', 'Fastest growing tenants (bytes/day)', [target('topk(20, deriv(%s[6h]) * 86400)' % m('tenantwatch_tenant_schema_size_bytes', 'target=~"$target"'), instant=true)], 'bytes', options=tableOptions, tenant_link=true),
        row('Databases'),
        panel(ts, 'Transactions/s', [target('sum by (target) (%s + %s)' % [rate('tenantwatch_database_commits_total', 'target=~"$target"'), rate('tenantwatch_database_rollbacks_total', 'target=~"$target"')], '{{target}}')], 'ops'),
        panel(ts, 'Temp bytes written/s', [target('sum by (target) (%s)' % rate('tenantwatch_database_temp_bytes_total', 'target=~"$target"'), '{{target}}')], 'Bps'),
      ],
    ),

    'health.json': dashboard(
      'tenantwatch-health',
      'Self health',
      ['health'],
      [targetVariable],
      'tenantwatch itself: process, polls, ingest, HTTP, rate-limit backend and cardinality.',
      [
        row('Process'),
        panel('table', 'Versions', [target('max by (instance, version, revision) (%s)' % m('tenantwatch_build_info'), instant=true)], 'short', options=tableOptions),
        panel(ts, 'Resident memory', [target(m('process_resident_memory_bytes'), '{{instance}} RSS'), target(m('process_virtual_memory_bytes'), '{{instance}} virtual')], 'bytes'),
        panel(ts, 'CPU', [target(rate('process_cpu_seconds_total'), '{{instance}}')], 'percentunit'),
        panel(ts, 'Open file descriptors', [target(m('process_open_fds'), '{{instance}} open'), target(m('process_max_fds'), '{{instance}} max')], 'short'),
        panel(ts, 'Uptime', [target('time() - %s' % m('process_start_time_seconds'), '{{instance}}')], 's'),
        panel(ts, 'Last configuration reload', [
          target(m('tenantwatch_config_last_reload_successful'), '{{instance}} applied (1) or refused (0)'),
          target('time() - %s' % m('tenantwatch_config_last_reload_success_timestamp_seconds'), '{{instance}} seconds since'),
        ], 'short', description='0 after SIGHUP found an invalid file: the running configuration stays, the next restart would fail.'),
        row('Polls'),
        panel(ts, 'Target up', [target(m('tenantwatch_target_up', 'target=~"$target"'), '{{target}}')], 'short'),
        panel(ts, 'Poll duration by collector', [target('max by (target, collector) (%s)' % m('tenantwatch_poll_duration_seconds', 'target=~"$target"'), '{{target}} {{collector}}')], 's'),
        panel(ts, 'Poll errors/s by kind', [target('sum by (target, collector, error) (%s)' % rate('tenantwatch_poll_errors_total', 'target=~"$target"'), '{{target}} {{collector}} {{error}}')], 'ops'),
        panel(ts, 'Seconds since the last successful poll', [target('time() - max by (target, collector) (%s)' % m('tenantwatch_poll_last_success_timestamp_seconds', 'target=~"$target"'), '{{target}} {{collector}}')], 's'),
        panel(ts, 'Polls/s', [target('sum by (target) (%s)' % rate('tenantwatch_polls_total', 'target=~"$target"'), '{{target}}')], 'ops'),
        panel(ts, 'PgBouncer polls', [
          target(m('tenantwatch_pgbouncer_poll_duration_seconds'), '{{pgbouncer}} duration (s)'),
          target('sum by (pgbouncer) (%s)' % rate('tenantwatch_pgbouncer_poll_errors_total'), '{{pgbouncer}} errors/s'),
          target('sum by (pgbouncer) (%s)' % rate('tenantwatch_pgbouncer_bad_values_total'), '{{pgbouncer}} bad values/s'),
        ], 'short'),
        row('Ingest'),
        panel(ts, 'Events received/s', [target('sum by (source) (%s)' % rate('tenantwatch_events_received_total'), '{{source}}')], 'reqps'),
        panel(ts, 'Events rejected/s by reason', [target('sum by (source, reason) (%s)' % rate('tenantwatch_events_rejected_total'), '{{source}} {{reason}}')], 'reqps'),
        panel(ts, 'UDP datagrams/s, kernel drops/s, receive errors/s', [
          target('sum(%s)' % rate('tenantwatch_udp_datagrams_received_total'), 'datagrams'),
          target('sum(%s)' % rate('tenantwatch_udp_kernel_drops_total'), 'kernel drops'),
          target('sum(%s)' % rate('tenantwatch_udp_receive_errors_total'), 'receive errors'),
        ], 'reqps'),
        panel(ts,
              'UDP receive buffer',
              [target(m('tenantwatch_udp_receive_buffer_bytes'), '{{instance}}')],
              'bytes',
              description='What the kernel granted for ingest.udp_recv_buffer_bytes (net.core.rmem_max caps it).'),
        panel(ts, 'Tenants tracked and overflow', [
          target('sum(%s)' % m('tenantwatch_tenants_tracked'), 'tracked'),
          target('sum(%s)' % m('tenantwatch_tenants_exported'), 'exported (event within metrics.idle_after)'),
          target('sum(%s)' % rate('tenantwatch_tenants_overflow_total'), 'overflow events/s'),
          target('sum(%s)' % rate('tenantwatch_tenants_evicted_total'), 'idle tenants evicted/s'),
        ], 'short'),
        panel(ts, 'Label values folded/s', [
          target('sum(%s)' % rate('tenantwatch_endpoints_folded_total'), 'endpoints folded into __other__'),
          target('sum(%s)' % rate('tenantwatch_instances_folded_total'), 'instances folded into __other__'),
        ], 'ops', description='Events whose endpoint or instance was over its cap (ingest.max_endpoints_per_tenant, ingest.max_instances).'),
        row('HTTP'),
        panel(ts, 'Requests/s by endpoint and code', [target('sum by (endpoint, code) (%s)' % rate('tenantwatch_http_requests_total'), '{{endpoint}} {{code}}')], 'reqps'),
        panel(ts, 'Connections refused/s', [target('sum(%s)' % rate('tenantwatch_http_connections_rejected_total'), 'over server.max_connections')], 'ops'),
        panel(ts, 'Rate limiters in memory', [
          target('sum(%s)' % m('tenantwatch_ratelimit_limiters'), 'limiters'),
          target('sum(%s)' % rate('tenantwatch_ratelimit_limiters_evicted_total'), 'evicted/s'),
        ], 'short'),
        row('Rate-limit backend'),
        panel(ts,
              'Backend up',
              [target(m('tenantwatch_ratelimit_backend_up'), '{{instance}} {{backend}}')],
              'short',
              description='0 while Redis does not answer and checks are decided by ratelimit.redis.fail_mode.'),
        panel(ts, 'Checks decided without Redis/s', [target('sum by (instance, error) (%s)' % rate('tenantwatch_ratelimit_backend_errors_total'), '{{instance}} {{error}}')], 'ops'),
      ],
    ),
  },
}
