//! The exposition of what the PostgreSQL collectors last saw: per target,
//! per tenant on a target, and per database. Reads a
//! [`TargetStatuses::snapshot`]; never queries PostgreSQL. One function per
//! group of families, most of them table-driven.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::encode::{counter, family, gauge};
use crate::store::{
    ActivitySnapshot, CollectorName, DatabaseStats, PollErrorKind, SchemaDetail, SchemaTotals,
    TargetStatus, TargetStatuses, TenantActivity, TenantStatements,
};

/// Exposes every target's last status.
#[derive(Debug)]
pub struct TargetCollector {
    pub targets: TargetStatuses,
}

type Encoded = Result<(), std::fmt::Error>;

type SchemaField = fn(&SchemaTotals) -> f64;

/// A per-tenant counter family split by one label over schema figures.
struct SchemaCounterFamily {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    /// (label value, field, only with `schema_detail = "full"`)
    values: &'static [(&'static str, SchemaField, bool)],
}

const SCHEMA_COUNTERS: [SchemaCounterFamily; 3] = [
    SchemaCounterFamily {
        name: "tenantwatch_tenant_tuples",
        help: "Rows read and written in the tenant's tables (pg_stat_user_tables).",
        label: "op",
        values: &[
            ("seq_read", |s| s.seq_tup_read as f64, false),
            ("idx_fetch", |s| s.idx_tup_fetch as f64, false),
            ("inserted", |s| s.n_tup_ins as f64, false),
            ("updated", |s| s.n_tup_upd as f64, false),
            ("deleted", |s| s.n_tup_del as f64, false),
            ("hot_updated", |s| s.n_tup_hot_upd as f64, true),
        ],
    },
    SchemaCounterFamily {
        name: "tenantwatch_tenant_scans",
        help: "Sequential and index scans on the tenant's tables.",
        label: "type",
        values: &[
            ("seq", |s| s.seq_scan as f64, false),
            ("idx", |s| s.idx_scan as f64, false),
        ],
    },
    SchemaCounterFamily {
        name: "tenantwatch_tenant_maintenance",
        help: "(Auto)vacuum and (auto)analyze runs on the tenant's tables.",
        label: "op",
        values: &[
            ("vacuum", |s| s.vacuums as f64, true),
            ("analyze", |s| s.analyzes as f64, true),
        ],
    },
];

impl Collector for TargetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Encoded {
        // Copy under the lock (cheap: the snapshots are behind Arcs), encode after.
        let targets = self.targets.snapshot();
        encode_target_health(&targets, &mut encoder)?;
        encode_polls(&targets, &mut encoder)?;
        // What a down target last reported is withdrawn, not repeated: stale
        // connections and tenant figures would keep alerts on them firing
        // (or resolved) on data nobody is refreshing. Its health and poll
        // families stay, saying that it is down and since when.
        let up: Vec<TargetStatus> = targets.into_iter().filter(|t| t.up).collect();
        encode_target_activity(&up, &mut encoder)?;
        encode_tenant_activity(&up, &mut encoder)?;
        encode_tenant_schemas(&up, &mut encoder)?;
        encode_tenant_schema_counters(&up, &mut encoder)?;
        encode_tenant_statements(&up, &mut encoder)?;
        encode_tenant_presence(&self.targets, &up, &mut encoder)?;
        encode_databases(&up, &mut encoder)
    }
}

/// Up, connection limits.
fn encode_target_health(targets: &[TargetStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_target_up",
        "1 when the target answered its last poll, 0 when it did not.",
        MetricType::Gauge,
    )?;
    for t in targets {
        gauge(
            &mut m,
            &[("target", t.name.as_str())],
            if t.up { 1.0 } else { 0.0 },
        )?;
    }
    let mut m = family(
        encoder,
        "tenantwatch_target_max_connections",
        "The target's max_connections setting.",
        MetricType::Gauge,
    )?;
    for t in targets {
        if let Some(max) = t.max_connections {
            gauge(&mut m, &[("target", t.name.as_str())], max as f64)?;
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_target_reserved_connections",
        "Connections reserved for superusers (superuser_reserved_connections).",
        MetricType::Gauge,
    )?;
    for t in targets {
        if let Some(reserved) = t.reserved_connections {
            gauge(&mut m, &[("target", t.name.as_str())], reserved as f64)?;
        }
    }
    Ok(())
}

/// Connections by state, database, role and application; lock waiters;
/// watched databases.
fn encode_target_activity(targets: &[TargetStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_target_connections",
        "Client backends by state (tenantwatch's own excluded).",
        MetricType::Gauge,
    )?;
    for t in targets {
        if let Some(activity) = &t.activity {
            for (state, count) in &activity.by_state {
                gauge(
                    &mut m,
                    &[("target", t.name.as_str()), ("state", state)],
                    *count as f64,
                )?;
            }
        }
    }
    type LabelCounts = fn(&ActivitySnapshot) -> &std::collections::BTreeMap<String, u64>;
    let by_label: [(&str, &str, &str, LabelCounts); 3] = [
        (
            "tenantwatch_target_database_connections",
            "Client backends by database (at most 100 values, then __other__).",
            "database",
            |a| &a.by_database,
        ),
        (
            "tenantwatch_target_user_connections",
            "Client backends by role (at most 100 values, then __other__).",
            "user",
            |a| &a.by_user,
        ),
        (
            "tenantwatch_target_application_connections",
            "Client backends by application_name (at most 100 values, then __other__).",
            "application",
            |a| &a.by_application,
        ),
    ];
    for (name, help, label, counts) in by_label {
        let mut m = family(encoder, name, help, MetricType::Gauge)?;
        for t in targets {
            let Some(activity) = &t.activity else {
                continue;
            };
            for (value, count) in counts(activity) {
                gauge(
                    &mut m,
                    &[("target", t.name.as_str()), (label, value.as_str())],
                    *count as f64,
                )?;
            }
        }
    }
    // One value per target, when the target has it.
    type PerTarget = fn(&TargetStatus) -> Option<f64>;
    let per_target: [(&str, &str, PerTarget); 6] = [
        (
            "tenantwatch_target_lock_waiting_backends",
            "Client backends waiting on a lock.",
            |t| t.activity.as_ref().map(|a| a.lock_waiting as f64),
        ),
        (
            "tenantwatch_target_pooled_connections",
            "Idle backends charged to no tenant because only their last query's sqlcommenter tag named one (pooled server connections).",
            |t| t.activity.as_ref().map(|a| a.pooled as f64),
        ),
        (
            "tenantwatch_target_in_recovery",
            "1 when the target is a standby (pg_is_in_recovery()), 0 on a primary.",
            |t| t.in_recovery.map(|standby| if standby { 1.0 } else { 0.0 }),
        ),
        (
            "tenantwatch_target_maintenance_connections",
            "Backends of maintenance sessions ([[tenants.exclude]]: pg_dump, migration tools), charged to no tenant.",
            |t| t.activity.as_ref().map(|a| a.maintenance as f64),
        ),
        (
            "tenantwatch_target_detail_cycle_seconds",
            "How long the last full cycle of per-database detail (schema statistics, sizes, tables of every watched database) took.",
            |t| t.detail_cycle_seconds,
        ),
        (
            "tenantwatch_target_watched_databases",
            "Databases watched for schema statistics.",
            |t| Some(t.watched_databases.len() as f64),
        ),
    ];
    for (name, help, value) in per_target {
        let mut m = family(encoder, name, help, MetricType::Gauge)?;
        for t in targets {
            if let Some(value) = value(t) {
                gauge(&mut m, &[("target", t.name.as_str())], value)?;
            }
        }
    }
    encode_replication_lag(targets, encoder)
}

/// Each standby's replay lag, in seconds and bytes.
fn encode_replication_lag(targets: &[TargetStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    type Lag = fn(&(f64, f64)) -> f64;
    let lags: [(&str, &str, Lag); 2] = [
        (
            "tenantwatch_target_replication_lag_seconds",
            "Replay lag of each standby streaming from the target (pg_stat_replication.replay_lag; 0 when caught up).",
            |lag| lag.0,
        ),
        (
            "tenantwatch_target_replication_lag_bytes",
            "WAL the standby has yet to replay (pg_current_wal_lsn() - replay_lsn).",
            |lag| lag.1,
        ),
    ];
    for (name, help, field) in lags {
        let mut m = family(encoder, name, help, MetricType::Gauge)?;
        for t in targets {
            for (replica, lag) in t.replicas.iter().flat_map(|r| r.iter()) {
                let labels = [("target", t.name.as_str()), ("replica", replica.as_str())];
                gauge(&mut m, &labels, field(lag))?;
            }
        }
    }
    Ok(())
}

/// Each collector's last duration, errors, last success; polls.
fn encode_polls(targets: &[TargetStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_poll_duration_seconds",
        "How long the last run of each collector took.",
        MetricType::Gauge,
    )?;
    for t in targets {
        for (collector, seconds) in &t.poll_seconds {
            gauge(
                &mut m,
                &[
                    ("target", t.name.as_str()),
                    ("collector", collector.as_str()),
                ],
                *seconds,
            )?;
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_poll_errors",
        "Failed collector runs, by bounded error kind (details in the logs).",
        MetricType::Counter,
    )?;
    for t in targets {
        // Every combination, from zero, so rate() and alerts see the
        // first error.
        for collector in CollectorName::ALL {
            for kind in PollErrorKind::ALL {
                let count = t.poll_errors.get(&(collector, kind)).copied().unwrap_or(0);
                counter(
                    &mut m,
                    &[
                        ("target", t.name.as_str()),
                        ("collector", collector.as_str()),
                        ("error", kind.as_str()),
                    ],
                    count as f64,
                )?;
            }
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_poll_last_success_timestamp_seconds",
        "Unix time of each collector's last successful run.",
        MetricType::Gauge,
    )?;
    for t in targets {
        for (collector, at) in &t.last_poll_success {
            let seconds = at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            gauge(
                &mut m,
                &[
                    ("target", t.name.as_str()),
                    ("collector", collector.as_str()),
                ],
                seconds,
            )?;
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_polls",
        "Polls started per target (they never overlap).",
        MetricType::Counter,
    )?;
    for t in targets {
        m.encode_family(&[("target", t.name.as_str())])?
            .encode_counter::<NoLabelSet, _, u64>(&t.polls, None)?;
    }

    Ok(())
}

/// Per tenant, from `pg_stat_activity`.
fn encode_tenant_activity(targets: &[TargetStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_tenant_connections",
        "The tenant's client backends by state.",
        MetricType::Gauge,
    )?;
    for t in targets {
        let Some(activity) = &t.activity else {
            continue;
        };
        for (tenant, a) in &activity.tenants {
            for (state, count) in &a.connections {
                gauge(
                    &mut m,
                    &[
                        ("target", t.name.as_str()),
                        ("tenant", tenant.as_str()),
                        ("state", state),
                    ],
                    *count as f64,
                )?;
            }
        }
    }
    type ActivityField = fn(&TenantActivity) -> f64;
    let per_tenant_activity: [(&str, &str, ActivityField); 5] = [
        (
            "tenantwatch_tenant_idle_in_transaction_max_seconds",
            "Longest time one of the tenant's sessions has sat idle in a transaction (from state_change).",
            |a| a.idle_in_transaction_max_seconds,
        ),
        (
            "tenantwatch_tenant_oldest_transaction_seconds",
            "Age of the tenant's oldest open transaction.",
            |a| a.oldest_transaction_seconds,
        ),
        (
            "tenantwatch_tenant_longest_query_seconds",
            "Run time of the tenant's longest running query.",
            |a| a.longest_query_seconds,
        ),
        (
            "tenantwatch_tenant_lock_waiting_backends",
            "The tenant's backends waiting on a lock.",
            |a| a.lock_waiting as f64,
        ),
        (
            "tenantwatch_tenant_blocking_backends",
            "Other backends waiting on locks held by the tenant's sessions (pg_blocking_pids).",
            |a| a.blocking as f64,
        ),
    ];
    for (name, help, field) in per_tenant_activity {
        let mut m = family(encoder, name, help, MetricType::Gauge)?;
        for t in targets {
            let Some(activity) = &t.activity else {
                continue;
            };
            for (tenant, a) in &activity.tenants {
                gauge(
                    &mut m,
                    &[("target", t.name.as_str()), ("tenant", tenant.as_str())],
                    field(a),
                )?;
            }
        }
    }

    Ok(())
}

/// Per tenant, from the schema statistics.
fn encode_tenant_schemas(targets: &[TargetStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_tenant_schema_size_bytes",
        "Size of the tenant's tables, indexes and TOAST: exact from the last size cycle, else estimated from page counts.",
        MetricType::Gauge,
    )?;
    for t in targets {
        for (tenant, size) in t.tenant_sizes() {
            gauge(
                &mut m,
                &[("target", t.name.as_str()), ("tenant", tenant.as_str())],
                size as f64,
            )?;
        }
    }
    // (name, help, value, only with schema_detail = "full")
    let schema_gauges: [(&str, &str, SchemaField, bool); 7] = [
        (
            "tenantwatch_tenant_schema_size_estimate_bytes",
            "Size estimated from pg_class page counts every poll.",
            |s| s.estimated_bytes as f64,
            true,
        ),
        (
            "tenantwatch_tenant_live_tuples",
            "Estimated live rows in the tenant's tables.",
            |s| s.n_live_tup as f64,
            false,
        ),
        (
            "tenantwatch_tenant_dead_tuples",
            "Estimated dead rows in the tenant's tables.",
            |s| s.n_dead_tup as f64,
            false,
        ),
        (
            "tenantwatch_tenant_tables",
            "Tables in the tenant's schemas.",
            |s| s.tables as f64,
            true,
        ),
        (
            "tenantwatch_tenant_schemas",
            "Schemas attributed to the tenant.",
            |s| s.schemas as f64,
            true,
        ),
        (
            "tenantwatch_tenant_last_vacuum_timestamp_seconds",
            "Unix time of the most recent (auto)vacuum of any of the tenant's tables.",
            |s| s.last_vacuum_unix.unwrap_or(f64::NAN),
            false,
        ),
        (
            "tenantwatch_tenant_last_analyze_timestamp_seconds",
            "Unix time of the most recent (auto)analyze of any of the tenant's tables.",
            |s| s.last_analyze_unix.unwrap_or(f64::NAN),
            true,
        ),
    ];
    for (name, help, field, full_only) in schema_gauges {
        let mut m = family(encoder, name, help, MetricType::Gauge)?;
        for t in targets {
            if full_only && t.schema_detail != SchemaDetail::Full {
                continue;
            }
            let Some(schemas) = &t.schemas else { continue };
            for (tenant, totals) in schemas.iter() {
                let value = field(totals);
                if !value.is_nan() {
                    gauge(
                        &mut m,
                        &[("target", t.name.as_str()), ("tenant", tenant.as_str())],
                        value,
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// Per tenant, the cumulative schema counters: tuples, scans, maintenance,
/// blocks.
fn encode_tenant_schema_counters(
    targets: &[TargetStatus],
    encoder: &mut DescriptorEncoder,
) -> Encoded {
    for fam in SCHEMA_COUNTERS {
        let mut m = family(encoder, fam.name, fam.help, MetricType::Counter)?;
        for t in targets {
            let Some(schemas) = &t.schemas else { continue };
            for (tenant, totals) in schemas.iter() {
                for (value, field, full_only) in fam.values {
                    if *full_only && t.schema_detail != SchemaDetail::Full {
                        continue;
                    }
                    let labels = [
                        ("target", t.name.as_str()),
                        ("tenant", tenant.as_str()),
                        (fam.label, value),
                    ];
                    counter(&mut m, &labels, field(totals))?;
                }
            }
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_tenant_blocks",
        "Blocks of the tenant's tables and indexes read from disk or found in shared buffers (pg_statio_user_tables).",
        MetricType::Counter,
    )?;
    for t in targets {
        let Some(schemas) = &t.schemas else { continue };
        for (tenant, s) in schemas.iter() {
            for (object, source, value, full_only) in [
                ("heap", "read", s.heap_blks_read, false),
                ("heap", "hit", s.heap_blks_hit, false),
                ("index", "read", s.idx_blks_read, true),
                ("index", "hit", s.idx_blks_hit, true),
            ] {
                if full_only && t.schema_detail != SchemaDetail::Full {
                    continue;
                }
                counter(
                    &mut m,
                    &[
                        ("target", t.name.as_str()),
                        ("tenant", tenant.as_str()),
                        ("object", object),
                        ("source", source),
                    ],
                    value as f64,
                )?;
            }
        }
    }

    Ok(())
}

/// Per tenant, whether its tables drift from the target's most common set,
/// and the expected tenants missing from a target of a group.
fn encode_tenant_presence(
    statuses: &TargetStatuses,
    targets: &[TargetStatus],
    encoder: &mut DescriptorEncoder,
) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_tenant_schema_drift",
        "1 when the tenant's tables differ from the target's most common set (a migration that missed it), else 0.",
        MetricType::Gauge,
    )?;
    for t in targets {
        for (tenant, (missing, extra)) in t.schema_drift.iter().flat_map(|d| d.iter()) {
            let drifts = !missing.is_empty() || !extra.is_empty();
            let labels = [("target", t.name.as_str()), ("tenant", tenant.as_str())];
            gauge(&mut m, &labels, if drifts { 1.0 } else { 0.0 })?;
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_tenant_missing",
        "1 for a tenant of tenants.expected_file with no schema or database on this target of a group.",
        MetricType::Gauge,
    )?;
    for t in targets {
        for tenant in statuses.missing_tenants(t) {
            let labels = [("target", t.name.as_str()), ("tenant", tenant.as_str())];
            gauge(&mut m, &labels, 1.0)?;
        }
    }
    Ok(())
}

/// Per tenant, from `pg_stat_statements` (role and database rules).
fn encode_tenant_statements(targets: &[TargetStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    type StatementField = fn(&TenantStatements) -> f64;
    let families: [(&str, &str, StatementField); 3] = [
        (
            "tenantwatch_tenant_statement_calls",
            "Statements the tenant's roles or databases ran (pg_stat_statements calls), summed from per-poll increases.",
            |s| s.calls,
        ),
        (
            "tenantwatch_tenant_statement_time_seconds",
            "Execution plus planning time of the tenant's statements (pg_stat_statements).",
            |s| s.seconds,
        ),
        (
            "tenantwatch_tenant_statement_rows",
            "Rows the tenant's statements returned or affected (pg_stat_statements).",
            |s| s.rows,
        ),
    ];
    for (name, help, field) in families {
        let mut m = family(encoder, name, help, MetricType::Counter)?;
        for t in targets {
            for (tenant, figures) in t.statements.iter().flat_map(|s| s.iter()) {
                let labels = [("target", t.name.as_str()), ("tenant", tenant.as_str())];
                counter(&mut m, &labels, field(figures))?;
            }
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_tenant_statement_blocks",
        "Blocks the tenant's statements found in shared buffers (hit), read (read), or read and wrote as temporary files (temp).",
        MetricType::Counter,
    )?;
    for t in targets {
        for (tenant, figures) in t.statements.iter().flat_map(|s| s.iter()) {
            for (source, value) in [
                ("hit", figures.blocks_hit),
                ("read", figures.blocks_read),
                ("temp", figures.blocks_temp),
            ] {
                let labels = [
                    ("target", t.name.as_str()),
                    ("tenant", tenant.as_str()),
                    ("source", source),
                ];
                counter(&mut m, &labels, value)?;
            }
        }
    }
    Ok(())
}

/// Per database, from `pg_stat_database`.
fn encode_databases(targets: &[TargetStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    type DatabaseField = fn(&DatabaseStats) -> u64;
    let database_counters: [(&str, &str, DatabaseField); 8] = [
        (
            "tenantwatch_database_commits",
            "Committed transactions (pg_stat_database.xact_commit).",
            |d| d.xact_commit,
        ),
        (
            "tenantwatch_database_rollbacks",
            "Rolled back transactions.",
            |d| d.xact_rollback,
        ),
        (
            "tenantwatch_database_deadlocks",
            "Deadlocks detected.",
            |d| d.deadlocks,
        ),
        (
            "tenantwatch_database_temp_files",
            "Temporary files created by queries.",
            |d| d.temp_files,
        ),
        (
            "tenantwatch_database_temp_bytes",
            "Bytes written to temporary files by queries.",
            |d| d.temp_bytes,
        ),
        (
            "tenantwatch_database_conflicts",
            "Queries cancelled by recovery conflicts (standbys).",
            |d| d.conflicts,
        ),
        (
            "tenantwatch_database_blocks_read",
            "Blocks read from disk.",
            |d| d.blks_read,
        ),
        (
            "tenantwatch_database_blocks_hit",
            "Blocks found in shared buffers.",
            |d| d.blks_hit,
        ),
    ];
    let mut m = family(
        encoder,
        "tenantwatch_database_size_bytes",
        "pg_database_size of each watched database (a database per tenant: the tenant's size), measured in rotation every size_interval.",
        MetricType::Gauge,
    )?;
    for t in targets {
        for (database, bytes) in t.database_sizes.iter().flat_map(|d| d.iter()) {
            let labels = [("target", t.name.as_str()), ("database", database.as_str())];
            gauge(&mut m, &labels, *bytes as f64)?;
        }
    }
    for (name, help, field) in database_counters {
        let mut m = family(encoder, name, help, MetricType::Counter)?;
        for t in targets {
            let Some(databases) = &t.databases else {
                continue;
            };
            for (database, stats) in databases.iter() {
                counter(
                    &mut m,
                    &[("target", t.name.as_str()), ("database", database.as_str())],
                    field(stats) as f64,
                )?;
            }
        }
    }
    Ok(())
}
