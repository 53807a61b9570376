//! The capacity planners' read API: `GET /api/v1/tenants` (sortable, paged,
//! filterable, JSON or CSV), `GET /api/v1/tenants/{tenant}` and
//! `GET /api/v1/targets`. A reader: it merges the store snapshot, the
//! targets' last polls, the detector's judgement and the rate limits, and
//! never talks to PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use crate::collect::TargetStatus;
use crate::detect::{Flag, Judgement};
use crate::ratelimit::RateLimits;
use crate::store::StoreSnapshot;

/// Largest page.
pub const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

/// The numeric fields a tenant list can be sorted by, in CSV column order.
pub const NUMERIC_FIELDS: [&str; 11] = [
    "queries",
    "errors",
    "error_ratio",
    "rows",
    "db_time_share",
    "connections",
    "idle_in_transaction_max_seconds",
    "schema_size_bytes",
    "live_tuples",
    "dead_tuples",
    "effective_qps",
];

/// One tenant's current figures, from events and from every target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantRow {
    pub tenant: String,
    pub queries: f64,
    pub errors: f64,
    pub error_ratio: f64,
    pub rows: f64,
    pub db_time_share: f64,
    pub connections: f64,
    pub idle_in_transaction_max_seconds: f64,
    pub schema_size_bytes: f64,
    pub live_tuples: f64,
    pub dead_tuples: f64,
    pub effective_qps: f64,
    /// Targets the tenant has sessions or schemas on.
    pub targets: Vec<String>,
    pub flags: Vec<String>,
}

impl TenantRow {
    fn field(&self, name: &str) -> f64 {
        match name {
            "queries" => self.queries,
            "errors" => self.errors,
            "error_ratio" => self.error_ratio,
            "rows" => self.rows,
            "db_time_share" => self.db_time_share,
            "connections" => self.connections,
            "idle_in_transaction_max_seconds" => self.idle_in_transaction_max_seconds,
            "schema_size_bytes" => self.schema_size_bytes,
            "live_tuples" => self.live_tuples,
            "dead_tuples" => self.dead_tuples,
            "effective_qps" => self.effective_qps,
            _ => 0.0,
        }
    }
}

/// Builds every tenant's row.
pub fn tenant_rows(
    store: &StoreSnapshot,
    targets: &[TargetStatus],
    judgement: &Judgement,
    limits: &RateLimits,
) -> Vec<TenantRow> {
    let mut rows: BTreeMap<String, TenantRow> = BTreeMap::new();
    let empty = TenantRow::probe;
    for t in &store.tenants {
        let row = rows
            .entry(t.tenant.clone())
            .or_insert_with(|| empty(&t.tenant));
        for kind in t.kinds.iter().flatten() {
            row.queries += kind.queries;
            row.errors += kind.errors;
            row.rows += kind.rows;
        }
        row.db_time_share = t.db_time_share;
    }
    for target in targets {
        if let Some(activity) = &target.activity {
            for (tenant, a) in &activity.tenants {
                let row = rows.entry(tenant.clone()).or_insert_with(|| empty(tenant));
                row.connections += a.connections.values().sum::<u64>() as f64;
                row.idle_in_transaction_max_seconds = row
                    .idle_in_transaction_max_seconds
                    .max(a.idle_in_transaction_max_seconds);
                if !row.targets.contains(&target.name) {
                    row.targets.push(target.name.clone());
                }
            }
        }
        if let Some(schemas) = &target.schemas {
            for (tenant, s) in schemas.iter() {
                let row = rows.entry(tenant.clone()).or_insert_with(|| empty(tenant));
                let exact = target
                    .exact_sizes
                    .as_ref()
                    .and_then(|e| e.get(tenant).copied());
                row.schema_size_bytes += exact.unwrap_or(s.estimated_bytes) as f64;
                row.live_tuples += s.n_live_tup as f64;
                row.dead_tuples += s.n_dead_tup as f64;
                if !row.targets.contains(&target.name) {
                    row.targets.push(target.name.clone());
                }
            }
        }
    }
    for flag in &judgement.flags {
        if let Some(row) = rows.get_mut(&flag.tenant) {
            row.flags.push(flag.reason.as_str().to_owned());
        }
    }
    rows.into_values()
        .map(|mut row| {
            row.error_ratio = if row.queries > 0.0 {
                row.errors / row.queries
            } else {
                0.0
            };
            row.effective_qps = limits.effective(&row.tenant).1.qps;
            row.targets.sort();
            row
        })
        .collect()
}

/// A bad query parameter: its name and what is wrong (a 400).
#[derive(Debug, Clone, PartialEq)]
pub struct BadParameter {
    pub name: String,
    pub detail: String,
}

/// Parsed `GET /api/v1/tenants` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub sort: String,
    pub descending: bool,
    pub limit: usize,
    pub cursor: Option<(f64, String)>,
    pub target: Option<String>,
    pub flagged: Option<bool>,
    pub csv: bool,
}

/// Decodes `%XX` and `+` in a query-string component.
pub fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes everything but unreserved characters as `%XX`.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Parses the query string of `GET /api/v1/tenants`.
pub fn parse_list_query(query: Option<&str>, accept_csv: bool) -> Result<ListQuery, BadParameter> {
    let bad = |name: &str, detail: String| BadParameter {
        name: name.into(),
        detail,
    };
    let mut q = ListQuery {
        sort: "db_time_share".into(),
        descending: true,
        limit: DEFAULT_LIMIT,
        cursor: None,
        target: None,
        flagged: None,
        csv: accept_csv,
    };
    let mut order_given = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = url_decode(value);
        match key {
            "sort" => {
                if value != "tenant" && !NUMERIC_FIELDS.contains(&value.as_str()) {
                    return Err(bad(
                        "sort",
                        format!(
                            "{value:?} is not a field; use tenant or one of {}",
                            NUMERIC_FIELDS.join(", ")
                        ),
                    ));
                }
                q.sort = value;
            }
            "order" => match value.as_str() {
                "asc" => order_given = Some(false),
                "desc" => order_given = Some(true),
                _ => return Err(bad("order", format!("{value:?}: use asc or desc"))),
            },
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        bad(
                            "limit",
                            format!("{value:?}: use a number from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            "cursor" => {
                let (number, tenant) = value
                    .split_once('|')
                    .ok_or_else(|| bad("cursor", "not a cursor this API returned".into()))?;
                let number: f64 = number
                    .parse()
                    .map_err(|_| bad("cursor", "not a cursor this API returned".into()))?;
                q.cursor = Some((number, tenant.to_owned()));
            }
            "target" => q.target = Some(value),
            "flagged" => {
                q.flagged = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("flagged", format!("{value:?}: use true or false"))),
                })
            }
            "format" => match value.as_str() {
                "csv" => q.csv = true,
                "json" => q.csv = false,
                _ => return Err(bad("format", format!("{value:?}: use json or csv"))),
            },
            other => return Err(bad(other, "unknown parameter".into())),
        }
    }
    // Names sort ascending by default, figures descending (the biggest first).
    q.descending = order_given.unwrap_or(q.sort != "tenant");
    Ok(q)
}

/// One page of rows and the cursor of the next.
#[derive(Debug, Serialize)]
pub struct Page<'a> {
    pub tenants: Vec<&'a TenantRow>,
    pub total: usize,
    pub next_cursor: Option<String>,
}

/// Filters, sorts (ties broken by tenant id, so pages are stable) and pages.
pub fn page<'a>(rows: &'a [TenantRow], q: &ListQuery) -> Page<'a> {
    let mut selected: Vec<&TenantRow> = rows
        .iter()
        .filter(|r| q.target.as_ref().is_none_or(|t| r.targets.contains(t)))
        .filter(|r| q.flagged.is_none_or(|f| f != r.flags.is_empty()))
        .collect();
    let key = |r: &TenantRow| {
        if q.sort == "tenant" {
            0.0
        } else {
            r.field(&q.sort)
        }
    };
    let cmp = |a: &&TenantRow, b: &&TenantRow| {
        let by_value = key(a).total_cmp(&key(b));
        let by_value = if q.descending {
            by_value.reverse()
        } else {
            by_value
        };
        by_value.then_with(|| a.tenant.cmp(&b.tenant))
    };
    selected.sort_by(cmp);
    let total = selected.len();
    let start = match &q.cursor {
        None => 0,
        Some((value, tenant)) => {
            let probe = TenantRow::with_field(TenantRow::probe(tenant), &q.sort, *value);
            selected.partition_point(|r| cmp(r, &&probe) != std::cmp::Ordering::Greater)
        }
    };
    let tenants: Vec<&TenantRow> = selected.into_iter().skip(start).take(q.limit).collect();
    let next_cursor = (start + tenants.len() < total)
        .then(|| {
            tenants
                .last()
                .map(|r| url_encode(&format!("{}|{}", key(r), r.tenant)))
        })
        .flatten();
    Page {
        tenants,
        total,
        next_cursor,
    }
}

impl TenantRow {
    /// A row with every figure at zero.
    fn probe(tenant: &str) -> TenantRow {
        TenantRow {
            tenant: tenant.to_owned(),
            queries: 0.0,
            errors: 0.0,
            error_ratio: 0.0,
            rows: 0.0,
            db_time_share: 0.0,
            connections: 0.0,
            idle_in_transaction_max_seconds: 0.0,
            schema_size_bytes: 0.0,
            live_tuples: 0.0,
            dead_tuples: 0.0,
            effective_qps: 0.0,
            targets: Vec::new(),
            flags: Vec::new(),
        }
    }

    fn with_field(mut row: TenantRow, name: &str, value: f64) -> TenantRow {
        let slot = match name {
            "queries" => &mut row.queries,
            "errors" => &mut row.errors,
            "error_ratio" => &mut row.error_ratio,
            "rows" => &mut row.rows,
            "db_time_share" => &mut row.db_time_share,
            "connections" => &mut row.connections,
            "idle_in_transaction_max_seconds" => &mut row.idle_in_transaction_max_seconds,
            "schema_size_bytes" => &mut row.schema_size_bytes,
            "live_tuples" => &mut row.live_tuples,
            "dead_tuples" => &mut row.dead_tuples,
            "effective_qps" => &mut row.effective_qps,
            _ => return row,
        };
        *slot = value;
        row
    }
}

/// The rows as CSV: a header, then one line per tenant; lists joined by `;`.
pub fn csv(rows: &[&TenantRow]) -> String {
    let mut out = String::from("tenant");
    for field in NUMERIC_FIELDS {
        out.push(',');
        out.push_str(field);
    }
    out.push_str(",targets,flags\n");
    for row in rows {
        // Tenant ids and target names never contain commas or quotes.
        out.push_str(&row.tenant);
        for field in NUMERIC_FIELDS {
            let _ = write!(out, ",{}", row.field(field));
        }
        let _ = writeln!(out, ",{},{}", row.targets.join(";"), row.flags.join(";"));
    }
    out
}

/// One target for `GET /api/v1/targets`.
#[derive(Debug, Serialize)]
pub struct TargetView {
    pub name: String,
    /// `host:port/dbname`.
    pub address: String,
    pub up: bool,
    pub last_success_unix: Option<f64>,
    pub last_error: Option<&'static str>,
    pub server_version: Option<String>,
    pub max_connections: Option<u64>,
    pub reserved_connections: Option<u64>,
    pub connections: u64,
    pub size_bytes: u64,
    pub tenants: usize,
    pub watched_databases: Vec<String>,
}

fn unix(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn target_views(targets: &[TargetStatus]) -> Vec<TargetView> {
    targets
        .iter()
        .map(|t| {
            let mut tenants: HashMap<&str, ()> = HashMap::new();
            if let Some(a) = &t.activity {
                tenants.extend(a.tenants.keys().map(|k| (k.as_str(), ())));
            }
            let mut size = 0;
            if let Some(s) = &t.schemas {
                tenants.extend(s.keys().map(|k| (k.as_str(), ())));
                size = s
                    .iter()
                    .map(|(tenant, totals)| {
                        t.exact_sizes
                            .as_ref()
                            .and_then(|e| e.get(tenant).copied())
                            .unwrap_or(totals.estimated_bytes)
                    })
                    .sum();
            }
            TargetView {
                name: t.name.clone(),
                address: t.description.clone(),
                up: t.up,
                last_success_unix: t.last_success.map(unix),
                last_error: t.last_error,
                server_version: t.server_version.clone(),
                max_connections: t.max_connections,
                reserved_connections: t.reserved_connections,
                connections: t
                    .activity
                    .as_ref()
                    .map(|a| a.by_state.values().sum())
                    .unwrap_or(0),
                size_bytes: size,
                tenants: tenants.len(),
                watched_databases: t.watched_databases.clone(),
            }
        })
        .collect()
}

/// One tenant in detail: its row, its figures per kind and per target, its
/// flags and its quota.
pub fn tenant_detail(
    tenant: &str,
    rows: &[TenantRow],
    store: &StoreSnapshot,
    targets: &[TargetStatus],
    flags: &[Flag],
    limits: &RateLimits,
) -> Option<serde_json::Value> {
    let row = rows.iter().find(|r| r.tenant == tenant)?;
    let events = store.tenants.iter().find(|t| t.tenant == tenant).map(|t| {
        let kinds: BTreeMap<&str, serde_json::Value> = crate::event::QueryKind::ALL
            .iter()
            .filter_map(|k| {
                t.kinds[k.index()].as_ref().map(|totals| {
                    let p95 = crate::detect::quantile(0.95, &totals.buckets);
                    (
                        k.as_str(),
                        serde_json::json!({
                            "queries": totals.queries, "errors": totals.errors, "rows": totals.rows,
                            "duration_seconds_total": totals.duration_sum_ms / 1000.0,
                            "p95_seconds_since_start": p95,
                        }),
                    )
                })
            })
            .collect();
        serde_json::json!({ "db_time_share": t.db_time_share, "window_db_time_seconds": t.window_db_time_ms / 1000.0, "kinds": kinds })
    });
    let per_target: Vec<serde_json::Value> = targets
        .iter()
        .filter_map(|t| {
            let activity = t.activity.as_ref().and_then(|a| a.tenants.get(tenant));
            let schema = t.schemas.as_ref().and_then(|s| s.get(tenant));
            if activity.is_none() && schema.is_none() {
                return None;
            }
            Some(serde_json::json!({
                "target": t.name,
                "connections": activity.map(|a| a.connections.clone()),
                "oldest_transaction_seconds": activity.map(|a| a.oldest_transaction_seconds),
                "longest_query_seconds": activity.map(|a| a.longest_query_seconds),
                "idle_in_transaction_max_seconds": activity.map(|a| a.idle_in_transaction_max_seconds),
                "lock_waiting": activity.map(|a| a.lock_waiting),
                "blocking": activity.map(|a| a.blocking),
                "schemas": schema.map(|s| s.schemas),
                "tables": schema.map(|s| s.tables),
                "size_bytes": schema.map(|s| t.exact_sizes.as_ref().and_then(|e| e.get(tenant).copied()).unwrap_or(s.estimated_bytes)),
                "live_tuples": schema.map(|s| s.n_live_tup),
                "dead_tuples": schema.map(|s| s.n_dead_tup),
            }))
        })
        .collect();
    let (base, effective) = limits.effective(tenant);
    Some(serde_json::json!({
        "tenant": tenant,
        "summary": row,
        "events": events,
        "targets": per_target,
        "flags": flags.iter().filter(|f| f.tenant == tenant).collect::<Vec<_>>(),
        "quota": {
            "policy": base.policy, "base_qps": base.rate.qps, "base_burst": base.rate.burst,
            "effective_qps": effective.qps, "effective_burst": effective.burst, "shadow": base.shadow,
        },
    }))
}

/// `GET /api/v1/capacity`: headroom and growth per target, the heaviest
/// tenants, placement advice across targets, and a fleet projection.
pub fn capacity(
    targets: &[TargetStatus],
    histories: &BTreeMap<String, crate::capacity::History>,
    rows: &[TenantRow],
    api: &crate::config::ApiConfig,
) -> serde_json::Value {
    use crate::capacity::{Footprint, place, slope};
    let share_of: HashMap<&str, (f64, usize)> = rows
        .iter()
        .map(|r| (r.tenant.as_str(), (r.db_time_share, r.targets.len().max(1))))
        .collect();
    let mut footprints = Vec::new();
    let mut per_target = Vec::new();
    for t in targets {
        let mut tenants: BTreeMap<String, [f64; 3]> = BTreeMap::new();
        if let Some(a) = &t.activity {
            for (tenant, activity) in &a.tenants {
                tenants.entry(tenant.clone()).or_default()[1] =
                    activity.connections.values().sum::<u64>() as f64;
            }
        }
        if let Some(schemas) = &t.schemas {
            for (tenant, s) in schemas.iter() {
                let size = t
                    .exact_sizes
                    .as_ref()
                    .and_then(|e| e.get(tenant).copied())
                    .unwrap_or(s.estimated_bytes);
                tenants.entry(tenant.clone()).or_default()[2] = size as f64;
            }
        }
        for (tenant, load) in tenants.iter_mut() {
            if let Some((share, n)) = share_of.get(tenant.as_str()) {
                load[0] = share / *n as f64;
            }
            footprints.push(Footprint {
                tenant: tenant.clone(),
                target: t.name.clone(),
                load: *load,
            });
        }
        let in_use = t
            .activity
            .as_ref()
            .map(|a| a.by_state.values().sum::<u64>())
            .unwrap_or(0) as f64;
        let size: f64 = tenants.values().map(|l| l[2]).sum();
        let history = histories.get(&t.name);
        let peak = history
            .map(|h| h.samples().map(|s| s.connections).fold(in_use, f64::max))
            .unwrap_or(in_use);
        let growth_per_day = history
            .and_then(|h| slope(h.samples().map(|s| (s.unix, s.size_bytes))))
            .map(|per_second| per_second * 86400.0);
        let usable = t
            .max_connections
            .map(|m| m as f64 - t.reserved_connections.unwrap_or(0) as f64);
        let budget = api.size_budget_bytes as f64;
        let days_until_budget = match growth_per_day {
            Some(g) if budget > 0.0 && g > 0.0 => Some(((budget - size) / g).max(0.0)),
            _ => None,
        };
        let top = |d: usize| -> Vec<serde_json::Value> {
            let mut v: Vec<(&String, f64)> = tenants
                .iter()
                .map(|(k, l)| (k, l[d]))
                .filter(|(_, x)| *x > 0.0)
                .collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            v.into_iter()
                .take(5)
                .map(|(k, x)| serde_json::json!({"tenant": k, "value": x}))
                .collect()
        };
        per_target.push(serde_json::json!({
            "target": t.name,
            "up": t.up,
            "max_connections": t.max_connections,
            "usable_connections": usable,
            "connections_in_use": in_use,
            "connections_peak": peak,
            "connection_headroom": usable.map(|u| u - in_use),
            "size_bytes": size,
            "growth_bytes_per_day": growth_per_day,
            "history_samples": history.map(|h| h.len()).unwrap_or(0),
            "size_budget_bytes": (budget > 0.0).then_some(budget),
            "days_until_budget": days_until_budget,
            "heaviest": { "db_time_share": top(0), "connections": top(1), "size_bytes": top(2) },
        }));
    }
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let placement =
        (names.len() > 1).then(|| place(&names, &footprints, api.balance_tolerance, 50));
    let median = |d: usize| -> f64 {
        let mut v: Vec<f64> = footprints.iter().map(|f| f.load[d]).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (median_connections, median_size) = (median(1), median(2));
    let more_tenants_fit: Option<f64> = {
        let per_target: Vec<f64> = per_target
            .iter()
            .filter_map(|t| {
                let by_connections = t["connection_headroom"]
                    .as_f64()
                    .filter(|_| median_connections > 0.0)
                    .map(|h| (h / median_connections).floor().max(0.0));
                let by_size = (api.size_budget_bytes > 0 && median_size > 0.0).then(|| {
                    ((api.size_budget_bytes as f64 - t["size_bytes"].as_f64().unwrap_or(0.0))
                        / median_size)
                        .floor()
                        .max(0.0)
                });
                match (by_connections, by_size) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .collect();
        (!per_target.is_empty()).then(|| per_target.iter().sum())
    };
    serde_json::json!({
        "targets": per_target,
        "placement": placement,
        "fleet": {
            "tenants": rows.len(),
            "median_tenant": { "connections": median_connections, "size_bytes": median_size },
            "more_tenants_fit": more_tenants_fit,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str, share: f64, flagged: bool, target: &str) -> TenantRow {
        TenantRow {
            db_time_share: share,
            flags: if flagged {
                vec!["db_time_hog".into()]
            } else {
                vec![]
            },
            targets: vec![target.into()],
            ..TenantRow::probe(tenant)
        }
    }

    #[test]
    fn paging_is_stable_and_complete_with_ties() {
        let rows: Vec<TenantRow> = (0..57)
            .map(|i| {
                row(
                    &format!("t{i:02}"),
                    (i % 5) as f64 / 10.0,
                    i % 7 == 0,
                    if i % 2 == 0 { "a" } else { "b" },
                )
            })
            .collect();
        let mut q =
            parse_list_query(Some("sort=db_time_share&order=desc&limit=10"), false).unwrap();
        let mut seen = Vec::new();
        loop {
            let p = page(&rows, &q);
            assert_eq!(p.total, 57);
            seen.extend(
                p.tenants
                    .iter()
                    .map(|r| (r.db_time_share, r.tenant.clone())),
            );
            match p.next_cursor {
                Some(cursor) => {
                    q.cursor = parse_list_query(Some(&format!("cursor={cursor}")), false)
                        .unwrap()
                        .cursor
                }
                None => break,
            }
        }
        assert_eq!(seen.len(), 57);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        assert_eq!(seen, sorted);
    }

    #[test]
    fn filters_and_bad_parameters() {
        let rows: Vec<TenantRow> = (0..20)
            .map(|i| row(&format!("t{i}"), 0.0, i < 3, if i < 5 { "a" } else { "b" }))
            .collect();
        let q = parse_list_query(Some("flagged=true&target=a"), false).unwrap();
        assert_eq!(page(&rows, &q).total, 3);
        let q = parse_list_query(Some("target=b&sort=tenant"), false).unwrap();
        let p = page(&rows, &q);
        assert_eq!(p.total, 15);
        assert_eq!(p.tenants[0].tenant, "t10");
        for (query, name) in [
            ("sort=size", "sort"),
            ("order=up", "order"),
            ("limit=0", "limit"),
            ("limit=5000", "limit"),
            ("cursor=x", "cursor"),
            ("flagged=yes", "flagged"),
            ("format=xml", "format"),
            ("colour=red", "colour"),
        ] {
            assert_eq!(
                parse_list_query(Some(query), false).unwrap_err().name,
                name,
                "{query}"
            );
        }
    }

    #[test]
    fn csv_has_a_header_and_a_line_per_row() {
        let rows = [row("t1", 0.5, true, "a"), row("t2", 0.25, false, "b")];
        let text = csv(&rows.iter().collect::<Vec<_>>());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("tenant,queries,errors"));
        assert!(lines[1].starts_with("t1,0,0,0,0,0.5,"));
        assert!(lines[1].ends_with(",a,db_time_hog"));
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("a%7Cb+c"), "a|b c");
        assert_eq!(url_decode("%zz%"), "%zz%");
    }
}
