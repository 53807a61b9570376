//! `GET /api/v1/tenants/{tenant}`: one tenant in detail, as a typed view:
//! its row, its event figures per kind, its figures on each target, its
//! flags, its quota and its recent history.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::tenants::TenantRow;
use crate::capacity::TenantSample;
use crate::detect::Flag;
use crate::event::QueryKind;
use crate::ratelimit::RateLimits;
use crate::store::{PgBouncerStatus, TargetStatus, TenantSnapshot, TopStatement, quantile};

/// The whole detail.
#[derive(Debug, Serialize)]
pub struct TenantDetail<'a> {
    pub tenant: &'a str,
    pub summary: &'a TenantRow,
    /// Figures from application events; `null` for a tenant only polled.
    pub events: Option<EventFigures>,
    pub targets: Vec<TargetFigures>,
    /// The tenant's pools on each PgBouncer (database- or user-per-tenant
    /// pools).
    pub pools: Vec<super::pgbouncers::TenantPoolsView>,
    pub flags: Vec<&'a Flag>,
    pub quota: Quota,
    /// One sample per `api.history_resolution`; `null` without a history slot.
    pub history: Option<&'a VecDeque<TenantSample>>,
}

/// The tenant's event figures since it was first seen.
#[derive(Debug, Serialize)]
pub struct EventFigures {
    pub db_time_share: f64,
    pub window_db_time_seconds: f64,
    pub kinds: BTreeMap<&'static str, KindFigures>,
}

#[derive(Debug, Serialize)]
pub struct KindFigures {
    pub queries: f64,
    pub errors: f64,
    pub rows: f64,
    pub duration_seconds_total: f64,
    pub p95_seconds_since_start: Option<f64>,
}

/// The tenant on one target; `null` fields for what that target did not see.
#[derive(Debug, Serialize)]
pub struct TargetFigures {
    pub target: String,
    pub connections: Option<BTreeMap<&'static str, u64>>,
    pub oldest_transaction_seconds: Option<f64>,
    pub longest_query_seconds: Option<f64>,
    pub idle_in_transaction_max_seconds: Option<f64>,
    pub lock_waiting: Option<u64>,
    pub blocking: Option<u64>,
    pub schemas: Option<u64>,
    pub tables: Option<u64>,
    pub size_bytes: Option<u64>,
    pub live_tuples: Option<u64>,
    pub dead_tuples: Option<u64>,
    /// From `pg_stat_statements` (role and database rules); `null` without it.
    pub statements: Option<StatementFigures>,
    /// The tables it lacks and has more than the target's most common set;
    /// `null` before the first size cycle.
    pub schema_drift: Option<SchemaDrift>,
}

/// Tables (at most 20 of each) against the target's most common set.
#[derive(Debug, Serialize)]
pub struct SchemaDrift {
    pub drifts: bool,
    pub missing_tables: Vec<String>,
    pub extra_tables: Vec<String>,
}

/// The tenant's statements on a target: counters since tenantwatch started
/// (never lowered by a reset of the view), and its heaviest statements as the
/// view shows them now (text only with `statements_text = true`).
#[derive(Debug, Serialize)]
pub struct StatementFigures {
    pub calls: f64,
    pub time_seconds: f64,
    pub rows: f64,
    pub blocks_hit: f64,
    pub blocks_read: f64,
    pub blocks_temp: f64,
    /// Texts with any literal left in them replaced by `$n`.
    pub top: Vec<TopStatement>,
}

/// The tenant's configured and effective quota.
#[derive(Debug, Serialize)]
pub struct Quota {
    pub policy: String,
    /// The tenant's tier (`[ratelimit.tenants]` or `tenants.tiers_file`).
    pub tier: Option<String>,
    pub base_qps: f64,
    pub base_burst: u32,
    pub effective_qps: f64,
    pub effective_burst: u32,
    pub shadow: bool,
}

/// What a tenant's detail is built from.
pub struct DetailSources<'a> {
    pub rows: &'a [TenantRow],
    /// The tenant's event figures, if it sent any.
    pub events: Option<&'a TenantSnapshot>,
    pub targets: &'a [TargetStatus],
    pub pgbouncers: &'a [PgBouncerStatus],
    pub flags: &'a [Flag],
    pub limits: &'a RateLimits,
    pub history: Option<&'a VecDeque<TenantSample>>,
}

/// One tenant in detail, or `None` when no source knows it.
pub fn tenant_detail<'a>(tenant: &'a str, from: &DetailSources<'a>) -> Option<TenantDetail<'a>> {
    let summary = from.rows.iter().find(|r| *r.tenant == *tenant)?;
    let events = from.events.map(|t| EventFigures {
        db_time_share: t.db_time_share,
        window_db_time_seconds: t.window_db_time_ms / 1000.0,
        kinds: QueryKind::ALL
            .iter()
            .filter_map(|k| {
                let totals = t.kinds[k.index()].as_ref()?;
                let figures = KindFigures {
                    queries: totals.queries,
                    errors: totals.errors,
                    rows: totals.rows,
                    duration_seconds_total: totals.duration_sum_ms / 1000.0,
                    p95_seconds_since_start: quantile(0.95, &totals.buckets),
                };
                Some((k.as_str(), figures))
            })
            .collect(),
    });
    let targets = from
        .targets
        .iter()
        .filter_map(|t| target_figures(tenant, t))
        .collect();
    let (base, effective) = from.limits.effective(tenant);
    Some(TenantDetail {
        tenant,
        summary,
        events,
        targets,
        pools: super::pgbouncers::tenant_pools(tenant, from.pgbouncers),
        flags: from.flags.iter().filter(|f| f.tenant == tenant).collect(),
        quota: Quota {
            policy: base.policy.into_owned(),
            tier: from.limits.policy().tier_of(tenant).map(str::to_owned),
            base_qps: base.rate.qps,
            base_burst: base.rate.burst,
            effective_qps: effective.qps,
            effective_burst: effective.burst,
            shadow: base.shadow,
        },
        history: from.history,
    })
}

/// A top statement with any literal its text still holds replaced by
/// `$n`: `pg_stat_statements` normalises planned statements only, so a
/// utility statement (`ALTER ROLE app PASSWORD 'hunter2'`) keeps its values.
/// A normalised text comes out unchanged.
fn redacted(statement: &TopStatement) -> TopStatement {
    TopStatement {
        query: statement.query.as_deref().map(crate::redact::normalise),
        ..statement.clone()
    }
}

fn target_figures(tenant: &str, t: &TargetStatus) -> Option<TargetFigures> {
    let activity = t.activity.as_ref().and_then(|a| a.tenants.get(tenant));
    let schema = t.schemas.as_ref().and_then(|s| s.get(tenant));
    let statements = t.statements.as_ref().and_then(|s| s.get(tenant));
    if activity.is_none() && schema.is_none() && statements.is_none() {
        return None;
    }
    Some(TargetFigures {
        target: t.name.clone(),
        connections: activity.map(|a| a.connections.clone()),
        oldest_transaction_seconds: activity.map(|a| a.oldest_transaction_seconds),
        longest_query_seconds: activity.map(|a| a.longest_query_seconds),
        idle_in_transaction_max_seconds: activity.map(|a| a.idle_in_transaction_max_seconds),
        lock_waiting: activity.map(|a| a.lock_waiting),
        blocking: activity.map(|a| a.blocking),
        schemas: schema.map(|s| s.schemas),
        tables: schema.map(|s| s.tables),
        size_bytes: schema.map(|s| t.size_of(tenant, s)),
        live_tuples: schema.map(|s| s.n_live_tup),
        dead_tuples: schema.map(|s| s.n_dead_tup),
        statements: statements.map(|s| StatementFigures {
            calls: s.calls,
            time_seconds: s.seconds,
            rows: s.rows,
            blocks_hit: s.blocks_hit,
            blocks_read: s.blocks_read,
            blocks_temp: s.blocks_temp,
            top: s.top.iter().map(redacted).collect(),
        }),
        schema_drift: t.schema_drift.as_ref().and_then(|d| d.get(tenant)).map(
            |(missing, extra)| SchemaDrift {
                drifts: !missing.is_empty() || !extra.is_empty(),
                missing_tables: missing.clone(),
                extra_tables: extra.clone(),
            },
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_statement_keeps_no_literal() {
        let statement = |query: &str| TopStatement {
            queryid: 7,
            calls: 3,
            total_seconds: 1.5,
            mean_seconds: 0.5,
            query: Some(query.into()),
        };
        // pg_stat_statements leaves a utility statement's values in.
        let shown = redacted(&statement("ALTER ROLE app PASSWORD 'hunter2'"));
        assert_eq!(shown.query.as_deref(), Some("ALTER ROLE app PASSWORD $1"));
        assert_eq!(shown.queryid, 7);
        // A normalised text is left as it is.
        let normalised = "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3)";
        assert_eq!(
            redacted(&statement(normalised)).query.as_deref(),
            Some(normalised)
        );
        let without = TopStatement {
            query: None,
            ..statement("")
        };
        assert_eq!(redacted(&without), without);
    }
}
