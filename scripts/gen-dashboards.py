#!/usr/bin/env python3
"""Generates tenantwatch's Grafana dashboards (dashboards/*.json).

The dashboards are code: edit this file, run `python3 scripts/gen-dashboards.py`,
commit both. tests/dashboards.rs checks the JSON (datasource variable on every
panel, a unit on every panel, $__rate_interval in rates, top-k instead of one
line per tenant) and that every expression parses with promtool and uses only
exported metrics.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
OUT = os.environ.get("TENANTWATCH_DASHBOARDS_OUT") or os.path.join(os.path.dirname(__file__), "..", "dashboards")


def var_datasource():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1}


def var_query(name, query, label=None, multi=False, include_all=False):
    return {"name": name, "label": label or name, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "multi": multi, "includeAll": include_all, "current": {}, "hide": 0, "sort": 1}


def var_custom(name, values, default):
    return {"name": name, "label": name, "type": "custom", "query": ",".join(values),
            "current": {"text": default, "value": default},
            "options": [{"text": v, "value": v, "selected": v == default} for v in values], "hide": 0}


class Board:
    def __init__(self, uid, title, tags, variables, description):
        self.uid, self.title, self.tags, self.variables = uid, title, tags, variables
        self.description = description
        self.panels, self.y, self.next_id = [], 0, 1
        self.annotations = []

    def annotation(self, name, expr, title, color):
        self.annotations.append({"datasource": DS, "enable": True, "name": name, "expr": expr, "step": "1m",
                                 "titleFormat": title, "tagKeys": "tenant,rule,action,result",
                                 "iconColor": color, "useValueForTime": False})

    def row(self, title):
        self.panels.append({"id": self.next_id, "type": "row", "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1
        self.y += 1

    def panel(self, kind, title, targets, unit, w=12, h=8, x=None, description="", options=None, field=None):
        if x is None:
            used = sum(p["gridPos"]["w"] for p in self.panels if p["gridPos"]["y"] == self.y and p["type"] != "row")
            x = used
            if x + w > 24:
                self.y += h
                x = 0
        panel = {
            "id": self.next_id, "type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": x, "y": self.y},
            "fieldConfig": {"defaults": dict({"unit": unit}, **(field or {})), "overrides": []},
            "options": options or {},
            "targets": [dict({"datasource": DS, "refId": chr(65 + i), "editorMode": "code", "range": True},
                             **t) for i, t in enumerate(targets)],
        }
        self.panels.append(panel)
        self.next_id += 1
        if x + w >= 24:
            self.y += h

    def json(self):
        return {"uid": self.uid, "title": self.title, "tags": ["tenantwatch"] + self.tags,
                "description": self.description, "editable": True, "schemaVersion": 39, "version": 1,
                "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "timezone": "",
                "graphTooltip": 1, "templating": {"list": self.variables}, "annotations": {"list": self.annotations},
                "links": [{"type": "dashboards", "tags": ["tenantwatch"], "asDropdown": True, "title": "tenantwatch"}],
                "panels": self.panels}


def t(expr, legend="__auto", instant=False):
    target = {"expr": expr, "legendFormat": legend}
    if instant:
        target.update({"instant": True, "range": False, "format": "table"})
    return target


TS = "timeseries"
TABLE_OPTS = {"showHeader": True, "cellHeight": "sm"}


def fleet():
    b = Board("tenantwatch-fleet", "tenantwatch / Fleet overview", ["fleet"],
              [var_datasource(), var_query("target", "label_values(tenantwatch_target_up, target)", multi=True, include_all=True)],
              "All tenants at a glance: query load, errors, latency, connections and flags.")
    b.row("Load")
    b.panel("stat", "Tenants tracked", [t("sum(tenantwatch_tenants_tracked)")], "short", w=4, h=4)
    b.panel("stat", "Flagged tenants", [t("count(count by (tenant) (tenantwatch_tenant_flagged)) or vector(0)")], "short", w=4, h=4)
    b.panel("stat", "Queries/s", [t("sum(rate(tenantwatch_tenant_queries_total[$__rate_interval]))")], "reqps", w=4, h=4)
    b.panel("stat", "Error ratio", [t("sum(rate(tenantwatch_tenant_query_errors_total[$__rate_interval])) / sum(rate(tenantwatch_tenant_queries_total[$__rate_interval]))")], "percentunit", w=4, h=4)
    b.panel("stat", "Targets up", [t('sum(tenantwatch_target_up{target=~"$target"})')], "short", w=4, h=4)
    b.panel("stat", "Connections in use", [t('sum(tenantwatch_target_connections{target=~"$target"})')], "short", w=4, h=4)
    b.panel(TS, "Queries/s by kind", [t("sum by (kind) (rate(tenantwatch_tenant_queries_total[$__rate_interval]))", "{{kind}}")], "reqps")
    b.panel(TS, "Fleet latency (p50, p95, p99)", [
        t(f"histogram_quantile({q}, sum by (le) (rate(tenantwatch_tenant_query_duration_seconds_bucket[$__rate_interval])))", f"p{int(q*100)}")
        for q in (0.5, 0.95, 0.99)], "s")
    b.panel("heatmap", "Query latency distribution", [
        {"expr": "sum by (le) (increase(tenantwatch_tenant_query_duration_seconds_bucket[$__rate_interval]))", "legendFormat": "{{le}}", "format": "heatmap"}],
        "s", w=24, options={"calculate": False, "yAxis": {"unit": "s"}, "color": {"scheme": "Oranges"}, "cellGap": 1})
    b.panel(TS, "Queries/s by instance (pod)", [t("topk(20, sum by (app_instance) (rate(tenantwatch_instance_queries_total[$__rate_interval])))", "{{app_instance}}")], "reqps",
            description="Per application instance, from the events' instance field; an overloaded pod stands out. At most ingest.max_instances, the rest as __other__.")
    b.panel(TS, "Connections by application_name (pod)", [t('topk(20, sum by (application) (tenantwatch_target_application_connections{target=~"$target"}))', "{{application}}")], "short",
            description="Client backends per application_name, as PostgreSQL sees them: set it to the pod name to see connections per pod.")
    b.panel(TS, "Queries/s by tier", [t("sum by (tier) (rate(tenantwatch_tenant_queries_total[$__rate_interval]) * on (job, instance, tenant) group_left (tier) tenantwatch_tenant_info)", "{{tier}}")], "reqps", w=24,
            description="Tenants with a tier ([ratelimit.tenants] or tenants.tiers_file), grouped by it through tenantwatch_tenant_info.")
    b.row("PgBouncer")
    b.panel("stat", "PgBouncers up", [t("sum(tenantwatch_pgbouncer_up)")], "short", w=4, h=4)
    b.panel("stat", "Clients waiting", [t('sum(tenantwatch_pgbouncer_pool_clients{state="waiting"}) or vector(0)')], "short", w=4, h=4,
            description="Clients queued for a server connection in every pool: above 0 for long, a pool is saturated.")
    b.panel("stat", "Longest client wait", [t("max(tenantwatch_pgbouncer_pool_maxwait_seconds) or vector(0)")], "s", w=4, h=4)
    b.panel("stat", "Client connections used", [t("max(sum without (application) (tenantwatch_pgbouncer_client_connections) / tenantwatch_pgbouncer_max_client_connections)")], "percentunit", w=4, h=4,
            description="The fullest PgBouncer's client connections over its max_client_conn.")
    b.panel("stat", "Server connections", [t("sum(tenantwatch_pgbouncer_pool_servers)")], "short", w=4, h=4)
    b.panel("stat", "Pooled transactions/s", [t("sum(rate(tenantwatch_pgbouncer_transactions_total[$__rate_interval]))")], "ops", w=4, h=4)
    b.panel(TS, "Clients waiting by pool", [t('topk(10, sum by (pgbouncer, database, user) (tenantwatch_pgbouncer_pool_clients{state="waiting"}))', "{{pgbouncer}} {{database}}/{{user}}")], "short",
            description="The ten pools with most clients queued for a server connection (SHOW POOLS cl_waiting).")
    b.panel(TS, "Longest wait by pool", [t("topk(10, max by (pgbouncer, database, user) (tenantwatch_pgbouncer_pool_maxwait_seconds))", "{{pgbouncer}} {{database}}/{{user}}")], "s",
            description="How long each pool's oldest waiting client has waited; above 1 s pages (TenantwatchPgBouncerMaxWaitHigh).")
    b.panel(TS, "Client wait time/s by database", [t("topk(10, sum by (pgbouncer, database) (rate(tenantwatch_pgbouncer_client_wait_seconds_total[$__rate_interval])))", "{{pgbouncer}} {{database}}")], "s",
            description="Seconds clients spent waiting for a server connection per second: the queueing cost of each database's pools.")
    b.panel(TS, "Server connections by state", [t("sum by (pgbouncer, state) (tenantwatch_pgbouncer_pool_servers)", "{{pgbouncer}} {{state}}")], "short")
    b.panel(TS, "Client connections vs max_client_conn", [
        t("sum by (pgbouncer) (tenantwatch_pgbouncer_client_connections)", "{{pgbouncer}} clients"),
        t("max by (pgbouncer) (tenantwatch_pgbouncer_max_client_connections)", "{{pgbouncer}} max_client_conn")], "short")
    b.panel(TS, "Pooled transactions/s by database", [t("topk(10, sum by (pgbouncer, database) (rate(tenantwatch_pgbouncer_transactions_total[$__rate_interval])))", "{{pgbouncer}} {{database}}")], "ops")
    b.row("Flags")
    b.panel("table", "Flagged tenants", [t("max by (tenant, reason, severity) (tenantwatch_tenant_flag_value)", instant=True)], "short", w=24, options=TABLE_OPTS)
    b.panel(TS, "Flags raised by reason", [t("count by (reason) (tenantwatch_tenant_flagged)", "{{reason}}")], "short", w=12)
    b.panel(TS, "Guard actions by result", [t("sum by (rule, action, result) (increase(tenantwatch_guard_actions_total[$__rate_interval]))", "{{rule}} {{action}} {{result}}")], "short", w=12,
            description="Sessions of flagged tenants cancelled or terminated (or would-be, in dry_run) by the guard.")
    b.annotation("Guard actions", "sum by (tenant, rule, action, result) (increase(tenantwatch_guard_actions_total[2m])) > 0",
                 "{{tenant}}: {{action}} ({{rule}}, {{result}})", "red")
    return b


def tenant():
    b = Board("tenantwatch-tenant", "tenantwatch / Tenant detail", ["tenant"],
              [var_datasource(), var_query("tenant", "label_values(tenantwatch_tenant_queries_total, tenant)", label="Tenant")],
              "One tenant in detail: its queries, latency, errors, share of database time, connections and schema.")
    b.row("Queries")
    b.panel(TS, "Queries/s by kind", [t('sum by (kind) (rate(tenantwatch_tenant_queries_total{tenant="$tenant"}[$__rate_interval]))', "{{kind}}")], "reqps")
    b.panel(TS, "Error ratio", [t('sum(rate(tenantwatch_tenant_query_errors_total{tenant="$tenant"}[$__rate_interval])) / sum(rate(tenantwatch_tenant_queries_total{tenant="$tenant"}[$__rate_interval]))', "errors")], "percentunit")
    b.panel(TS, "Latency (p50, p95, p99)", [
        t(f'histogram_quantile({q}, sum by (le) (rate(tenantwatch_tenant_query_duration_seconds_bucket{{tenant="$tenant"}}[$__rate_interval])))', f"p{int(q*100)}")
        for q in (0.5, 0.95, 0.99)], "s")
    b.panel(TS, "Share of database time", [t('tenantwatch_tenant_db_time_share{tenant="$tenant"}', "share")], "percentunit")
    b.panel("heatmap", "Latency distribution", [
        {"expr": 'sum by (le) (increase(tenantwatch_tenant_query_duration_seconds_bucket{tenant="$tenant"}[$__rate_interval]))', "legendFormat": "{{le}}", "format": "heatmap"}],
        "s", w=24, options={"calculate": False, "yAxis": {"unit": "s"}})
    b.panel(TS, "Rows/s", [t('sum by (kind) (rate(tenantwatch_tenant_rows_total{tenant="$tenant"}[$__rate_interval]))', "{{kind}}")], "short")
    b.panel(TS, "Requests/s by endpoint", [t('sum by (endpoint) (rate(tenantwatch_tenant_endpoint_requests_total{tenant="$tenant"}[$__rate_interval]))', "{{endpoint}}")], "reqps",
            description="Queries sent with an endpoint (at most ingest.max_endpoints_per_tenant per tenant, the rest as __other__).")
    b.panel(TS, "p95 latency by endpoint", [t('histogram_quantile(0.95, sum by (endpoint, le) (rate(tenantwatch_tenant_endpoint_duration_seconds_bucket{tenant="$tenant"}[$__rate_interval])))', "{{endpoint}}")], "s")
    b.panel(TS, "Schema switch p95", [t('histogram_quantile(0.95, sum by (le) (rate(tenantwatch_tenant_schema_switch_duration_seconds_bucket{tenant="$tenant"}[$__rate_interval])))', "p95")], "s",
            description="Time the application takes to switch a session to this tenant (schema_switch events); not counted as queries.")
    b.panel(TS, "Rate-limit decisions/s", [t('sum by (decision) (rate(tenantwatch_ratelimit_decisions_total{tenant="$tenant"}[$__rate_interval]))', "{{decision}}")], "reqps")
    b.row("Database")
    b.panel(TS, "Connections by state", [t('sum by (target, state) (tenantwatch_tenant_connections{tenant="$tenant"})', "{{target}} {{state}}")], "short")
    b.panel(TS, "Longest idle in transaction, oldest transaction", [
        t('tenantwatch_tenant_idle_in_transaction_max_seconds{tenant="$tenant"}', "{{target}} idle in txn"),
        t('tenantwatch_tenant_oldest_transaction_seconds{tenant="$tenant"}', "{{target}} oldest txn")], "s")
    b.panel(TS, "Schema size", [t('tenantwatch_tenant_schema_size_bytes{tenant="$tenant"}', "{{target}}")], "bytes")
    b.panel(TS, "Live and dead tuples", [
        t('tenantwatch_tenant_live_tuples{tenant="$tenant"}', "{{target}} live"),
        t('tenantwatch_tenant_dead_tuples{tenant="$tenant"}', "{{target}} dead")], "short")
    b.panel(TS, "Rows written/s", [t('sum by (op) (rate(tenantwatch_tenant_tuples_total{tenant="$tenant",op=~"inserted|updated|deleted"}[$__rate_interval]))', "{{op}}")], "short")
    b.panel(TS, "Cache hit ratio", [t('sum(rate(tenantwatch_tenant_blocks_total{tenant="$tenant",source="hit"}[$__rate_interval])) / sum(rate(tenantwatch_tenant_blocks_total{tenant="$tenant"}[$__rate_interval]))', "hit ratio")], "percentunit")
    b.panel(TS, "PgBouncer pool: waiting clients and wait time", [
        t('sum by (pgbouncer) (tenantwatch_tenant_pool_waiting_clients{tenant="$tenant"})', "{{pgbouncer}} waiting clients"),
        t('sum by (pgbouncer) (rate(tenantwatch_tenant_pool_wait_seconds_total{tenant="$tenant"}[$__rate_interval]))', "{{pgbouncer}} wait s/s")], "short",
            description="The tenant's clients queued for a server connection in its PgBouncer pools (database- or role-per-tenant pools), and the seconds they waited per second.")
    b.panel("table", "Flags", [t('max by (reason) (tenantwatch_tenant_flag_value{tenant="$tenant"})', instant=True)], "short", w=12, options=TABLE_OPTS)
    b.panel(TS, "Effective rate-limit quota", [t('tenantwatch_tenant_ratelimit_qps{tenant="$tenant"}', "qps")], "reqps")
    b.panel(TS, "Guard actions", [t('sum by (rule, action, result) (increase(tenantwatch_guard_actions_total{tenant="$tenant"}[$__rate_interval]))', "{{rule}} {{action}} {{result}}")], "short",
            description="This tenant's sessions the guard cancelled or terminated (GET /api/v1/guard has pid and query).")
    b.annotation("Guard actions", 'sum by (tenant, rule, action, result) (increase(tenantwatch_guard_actions_total{tenant="$tenant"}[2m])) > 0',
                 "{{action}} ({{rule}}, {{result}})", "red")
    return b


def noisy():
    b = Board("tenantwatch-noisy-neighbours", "tenantwatch / Noisy neighbours", ["tenants"],
              [var_datasource(), var_custom("limit", ["5", "10", "20", "50"], "10")],
              "Who is hurting everyone else: the top tenants by database time, latency, errors, connections and growth.")
    b.row("Top tenants")
    for title, expr, unit in [
        ("Share of database time", "topk($limit, tenantwatch_tenant_db_time_share)", "percentunit"),
        ("Queries/s", "topk($limit, sum by (tenant) (rate(tenantwatch_tenant_queries_total[$__rate_interval])))", "reqps"),
        ("p95 latency", "topk($limit, histogram_quantile(0.95, sum by (tenant, le) (rate(tenantwatch_tenant_query_duration_seconds_bucket[$__rate_interval]))))", "s"),
        ("Errors/s", "topk($limit, sum by (tenant) (rate(tenantwatch_tenant_query_errors_total[$__rate_interval])))", "reqps"),
        ("Connections", "topk($limit, sum by (tenant) (tenantwatch_tenant_connections))", "short"),
        ("Idle in transaction", "topk($limit, max by (tenant) (tenantwatch_tenant_idle_in_transaction_max_seconds))", "s"),
        ("Backends blocked", "topk($limit, sum by (tenant) (tenantwatch_tenant_blocking_backends))", "short"),
        ("Dead tuples", "topk($limit, sum by (tenant) (tenantwatch_tenant_dead_tuples))", "short"),
    ]:
        b.panel("table", title, [t(expr, instant=True)], unit, options=TABLE_OPTS)
    b.panel(TS, "Share of database time, top tenants", [t("topk($limit, tenantwatch_tenant_db_time_share)", "{{tenant}}")], "percentunit", w=24)
    return b


def capacity():
    b = Board("tenantwatch-capacity", "tenantwatch / Capacity", ["capacity"],
              [var_datasource(), var_query("target", "label_values(tenantwatch_target_up, target)", multi=True, include_all=True)],
              "Connection and size headroom per target, the biggest and fastest-growing tenants.")
    b.row("Connections")
    b.panel(TS, "Connection headroom", [t('tenantwatch_target_connection_headroom{target=~"$target"}', "{{target}} ({{instance}})")], "short")
    b.panel(TS, "Connections by state", [t('sum by (target, state) (tenantwatch_target_connections{target=~"$target"})', "{{target}} {{state}}")], "short")
    b.row("Size")
    b.panel(TS, "Tenant schemas total size", [t('sum by (target) (tenantwatch_tenant_schema_size_bytes{target=~"$target"})', "{{target}}")], "bytes")
    b.panel(TS, "Growth per day", [t('sum by (target) (deriv(tenantwatch_tenant_schema_size_bytes{target=~"$target"}[6h])) * 86400', "{{target}}")], "bytes")
    b.panel("stat", "More median tenants that fit", [t("tenantwatch_fleet_tenants_fit")], "short", w=6, h=4,
            description="Tenants of the median footprint (connections, size) that still fit in the headroom and size budget.")
    b.panel("stat", "Days until the size budget (soonest)", [t('min(tenantwatch_target_days_until_budget{target=~"$target"}) or vector(-1)')], "d", w=6, h=4,
            description="-1: no api.size_budget_bytes set, or no target growing.")
    b.panel("table", "Largest tenants", [t('topk(20, tenantwatch_tenant_schema_size_bytes{target=~"$target"})', instant=True)], "bytes", options=TABLE_OPTS)
    b.panel("table", "Fastest growing tenants (bytes/day)", [t('topk(20, deriv(tenantwatch_tenant_schema_size_bytes{target=~"$target"}[6h]) * 86400)', instant=True)], "bytes", options=TABLE_OPTS)
    b.row("Databases")
    b.panel(TS, "Transactions/s", [t('sum by (target) (rate(tenantwatch_database_commits_total{target=~"$target"}[$__rate_interval]) + rate(tenantwatch_database_rollbacks_total{target=~"$target"}[$__rate_interval]))', "{{target}}")], "ops")
    b.panel(TS, "Temp bytes written/s", [t('sum by (target) (rate(tenantwatch_database_temp_bytes_total{target=~"$target"}[$__rate_interval]))', "{{target}}")], "Bps")
    return b


def health():
    b = Board("tenantwatch-health", "tenantwatch / Self health", ["health"],
              [var_datasource(), var_query("target", "label_values(tenantwatch_target_up, target)", multi=True, include_all=True)],
              "tenantwatch itself: polls, ingest, HTTP and cardinality.")
    b.row("Polls")
    b.panel(TS, "Target up", [t('tenantwatch_target_up{target=~"$target"}', "{{target}}")], "short")
    b.panel(TS, "Poll duration by collector", [t('max by (target, collector) (tenantwatch_poll_duration_seconds{target=~"$target"})', "{{target}} {{collector}}")], "s")
    b.panel(TS, "Poll errors/s by kind", [t('sum by (target, collector, error) (rate(tenantwatch_poll_errors_total{target=~"$target"}[$__rate_interval]))', "{{target}} {{collector}} {{error}}")], "ops")
    b.panel(TS, "Seconds since the last successful poll", [t('time() - max by (target, collector) (tenantwatch_poll_last_success_timestamp_seconds{target=~"$target"})', "{{target}} {{collector}}")], "s")
    b.row("Ingest")
    b.panel(TS, "Events received/s", [t("sum by (source) (rate(tenantwatch_events_received_total[$__rate_interval]))", "{{source}}")], "reqps")
    b.panel(TS, "Events rejected/s by reason", [t("sum by (source, reason) (rate(tenantwatch_events_rejected_total[$__rate_interval]))", "{{source}} {{reason}}")], "reqps")
    b.panel(TS, "UDP kernel drops/s", [t("sum(rate(tenantwatch_udp_kernel_drops_total[$__rate_interval]))", "drops")], "reqps")
    b.panel(TS, "Tenants tracked and overflow", [
        t("sum(tenantwatch_tenants_tracked)", "tracked"),
        t("sum(rate(tenantwatch_tenants_overflow_total[$__rate_interval]))", "overflow events/s")], "short")
    b.row("HTTP")
    b.panel(TS, "Requests/s by endpoint and code", [t("sum by (endpoint, code) (rate(tenantwatch_http_requests_total[$__rate_interval]))", "{{endpoint}} {{code}}")], "reqps")
    b.panel(TS, "Rate limiters in memory", [t("sum(tenantwatch_ratelimit_limiters)", "limiters")], "short")
    b.panel(TS, "Last configuration reload applied", [t("tenantwatch_config_last_reload_successful", "{{instance}}")], "short",
            description="0 after SIGHUP found an invalid file: the running configuration stays, the next restart would fail.")
    b.row("Rate-limit backend")
    b.panel(TS, "Backend up", [t("tenantwatch_ratelimit_backend_up", "{{instance}} {{backend}}")], "short",
            description="0 while Redis does not answer and checks are decided by ratelimit.redis.fail_mode.")
    b.panel(TS, "Checks decided without Redis/s", [t("sum by (instance, error) (rate(tenantwatch_ratelimit_backend_errors_total[$__rate_interval]))", "{{instance}} {{error}}")], "ops")
    return b


def main():
    os.makedirs(os.path.join(OUT, "provisioning"), exist_ok=True)
    for board, name in [(fleet(), "fleet"), (tenant(), "tenant"), (noisy(), "noisy-neighbours"),
                        (capacity(), "capacity"), (health(), "health")]:
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(board.json(), f, indent=2)
            f.write("\n")
    with open(os.path.join(OUT, "provisioning", "tenantwatch.yml"), "w") as f:
        f.write("""# Grafana file provider: copy the dashboards to /var/lib/grafana/dashboards/tenantwatch
# and this file to /etc/grafana/provisioning/dashboards/.
apiVersion: 1
providers:
  - name: tenantwatch
    folder: tenantwatch
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 60
    options:
      path: /var/lib/grafana/dashboards/tenantwatch
      foldersFromFilesStructure: false
""")


if __name__ == "__main__":
    main()
