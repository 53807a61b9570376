//! Tenant rows: one tenant's current figures joined from the store, every
//! target's last poll, the flags and the rate limits; sorting, cursor
//! paging and CSV.

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use super::query::{ListQuery, SortField, SortKey, url_encode};
use crate::detect::Judgement;
use crate::ratelimit::RateLimits;
use crate::store::{TargetStatus, TenantSummary};

/// One tenant's current figures, from events and from every target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantRow {
    /// Shared with the store's summary: a list of 100,000 tenants allocates
    /// no id.
    #[serde(serialize_with = "serialize_str")]
    pub tenant: Arc<str>,
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

/// Builds every tenant's row, in id order: those of the store's
/// `summaries` (in id order), then those only the targets, or only the
/// fleet, know.
pub fn tenant_rows(
    summaries: &[TenantSummary],
    targets: &[TargetStatus],
    judgement: &Judgement,
    limits: &RateLimits,
) -> Vec<TenantRow> {
    let mut rows = rows_without_quota(summaries.iter().cloned(), targets, judgement);
    fill_effective_qps(&mut rows, limits);
    rows
}

/// `GET /api/v1/tenants`: the page `q` asks for of every tenant's row.
/// A row's quota (a policy lookup and two `ArcSwap` loads) is looked up for
/// the page's rows only, unless the list is sorted by it: at 100,000
/// tenants it was done 100,000 times to show 50.
pub fn tenant_page(
    summaries: Vec<TenantSummary>,
    targets: &[TargetStatus],
    judgement: &Judgement,
    limits: &RateLimits,
    q: &ListQuery,
) -> Page {
    let mut rows = rows_without_quota(summaries.into_iter(), targets, judgement);
    let sorted_by_quota = q.sort == SortKey::Field(SortField::EffectiveQps);
    if sorted_by_quota {
        fill_effective_qps(&mut rows, limits);
    }
    let mut page = page(&rows, q);
    if !sorted_by_quota {
        fill_effective_qps(&mut page.tenants, limits);
    }
    page
}

fn fill_effective_qps(rows: &mut [TenantRow], limits: &RateLimits) {
    for row in rows {
        row.effective_qps = limits.effective(&row.tenant).1.qps;
    }
}

/// Every tenant's row as [`tenant_rows`] builds it, but for its
/// `effective_qps`, left at 0.
///
/// `summaries` are taken by value: each row takes its summary's id, and
/// 100,000 reference counts go neither up nor down.
fn rows_without_quota(
    summaries: impl Iterator<Item = TenantSummary>,
    targets: &[TargetStatus],
    judgement: &Judgement,
) -> Vec<TenantRow> {
    let mut rows = Rows {
        sorted: summaries
            .map(|t| {
                let mut row = TenantRow::probe(t.tenant);
                row.queries = t.queries;
                row.errors = t.errors;
                row.rows = t.rows;
                row.db_time_share = t.db_time_share;
                row
            })
            .collect(),
        others: BTreeMap::new(),
    };
    // In fleet scope a tenant's share is the fleet's, and tenants seen only
    // by other replicas have rows too.
    if judgement.fleet.scope == crate::detect::fleet::Scope::Fleet {
        for row in &mut rows.sorted {
            row.db_time_share = 0.0;
        }
        for (tenant, share) in judgement.db_time_shares.iter() {
            rows.get(tenant).db_time_share = *share;
        }
    }
    for target in targets {
        if let Some(activity) = &target.activity {
            for (tenant, a) in &activity.tenants {
                let row = rows.get(tenant);
                row.connections += a.total_connections() as f64;
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
                let row = rows.get(tenant);
                row.schema_size_bytes += target.size_of(tenant, s) as f64;
                row.live_tuples += s.n_live_tup as f64;
                row.dead_tuples += s.n_dead_tup as f64;
                if !row.targets.contains(&target.name) {
                    row.targets.push(target.name.clone());
                }
            }
        }
    }
    for flag in &judgement.flags {
        if let Some(row) = rows.find(&flag.tenant) {
            row.flags.push(flag.reason.as_str().to_owned());
        }
    }
    let mut rows = rows.into_sorted();
    for row in &mut rows {
        row.error_ratio = if row.queries > 0.0 {
            row.errors / row.queries
        } else {
            0.0
        };
        row.targets.sort();
    }
    rows
}

fn serialize_str<S: serde::Serializer>(text: &Arc<str>, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(text)
}

/// Rows being built: the store's tenants in id order (found by binary
/// search), and the few others in a map.
struct Rows {
    sorted: Vec<TenantRow>,
    others: BTreeMap<String, TenantRow>,
}

impl Rows {
    fn find(&mut self, tenant: &str) -> Option<&mut TenantRow> {
        match self
            .sorted
            .binary_search_by(|row| (*row.tenant).cmp(tenant))
        {
            Ok(at) => self.sorted.get_mut(at),
            Err(_) => self.others.get_mut(tenant),
        }
    }

    /// The tenant's row, made if it has none.
    fn get(&mut self, tenant: &str) -> &mut TenantRow {
        if let Ok(at) = self
            .sorted
            .binary_search_by(|row| (*row.tenant).cmp(tenant))
        {
            return &mut self.sorted[at];
        }
        self.others
            .entry(tenant.to_owned())
            .or_insert_with(|| TenantRow::probe(tenant))
    }

    fn into_sorted(self) -> Vec<TenantRow> {
        let Rows { mut sorted, others } = self;
        if !others.is_empty() {
            sorted.extend(others.into_values());
            sorted.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        }
        sorted
    }
}

/// One page of rows and the cursor of the next.
#[derive(Debug, Serialize)]
pub struct Page {
    pub tenants: Vec<TenantRow>,
    pub total: usize,
    pub next_cursor: Option<String>,
}

/// Filters, sorts (ties broken by tenant id, so pages are stable) and pages.
pub fn page(rows: &[TenantRow], q: &ListQuery) -> Page {
    let key = |r: &TenantRow| match q.sort {
        SortKey::Tenant => 0.0,
        SortKey::Field(field) => r.figure(field),
    };
    let cursor = q.cursor.as_ref().map(|(value, tenant)| Ranked {
        value: match q.sort {
            SortKey::Tenant => 0.0,
            SortKey::Field(_) => *value,
        },
        descending: q.descending,
        tenant,
    });
    // The page's rows are kept in a heap of at most `limit`, its last row on
    // top: most rows lose to that one on their figure alone, so a page of a
    // large fleet costs one comparison of two numbers a row, without a sort
    // of every row and without reading their ids.
    let mut kept: BinaryHeap<(Ranked<'_>, usize)> = BinaryHeap::with_capacity(q.limit + 1);
    let (mut total, mut after_cursor) = (0, 0);
    for (at, row) in rows.iter().enumerate() {
        if q.target.as_ref().is_some_and(|t| !row.targets.contains(t))
            || q.flagged.is_some_and(|f| f == row.flags.is_empty())
        {
            continue;
        }
        total += 1;
        let candidate = Ranked {
            value: key(row),
            descending: q.descending,
            tenant: &row.tenant,
        };
        if cursor.as_ref().is_some_and(|c| candidate <= *c) {
            continue;
        }
        after_cursor += 1;
        if kept.len() < q.limit {
            kept.push((candidate, at));
        } else if let Some(mut last) = kept.peek_mut()
            && candidate < last.0
        {
            *last = (candidate, at);
        }
    }
    let tenants: Vec<TenantRow> = kept
        .into_sorted_vec()
        .into_iter()
        .map(|(_, at)| rows[at].clone())
        .collect();
    let next_cursor = (tenants.len() < after_cursor)
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

/// A row's place in a list: its figure (in the list's direction), then its
/// id.
struct Ranked<'a> {
    value: f64,
    descending: bool,
    tenant: &'a str,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let by_value = self.value.total_cmp(&other.value);
        let by_value = if self.descending {
            by_value.reverse()
        } else {
            by_value
        };
        by_value.then_with(|| self.tenant.cmp(other.tenant))
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked<'_> {}

impl TenantRow {
    /// The row's figure for `field`.
    pub fn figure(&self, field: SortField) -> f64 {
        match field {
            SortField::Queries => self.queries,
            SortField::Errors => self.errors,
            SortField::ErrorRatio => self.error_ratio,
            SortField::Rows => self.rows,
            SortField::DbTimeShare => self.db_time_share,
            SortField::Connections => self.connections,
            SortField::IdleInTransactionMaxSeconds => self.idle_in_transaction_max_seconds,
            SortField::SchemaSizeBytes => self.schema_size_bytes,
            SortField::LiveTuples => self.live_tuples,
            SortField::DeadTuples => self.dead_tuples,
            SortField::EffectiveQps => self.effective_qps,
        }
    }

    /// The row's figure for `field`, to write.
    pub fn figure_mut(&mut self, field: SortField) -> &mut f64 {
        match field {
            SortField::Queries => &mut self.queries,
            SortField::Errors => &mut self.errors,
            SortField::ErrorRatio => &mut self.error_ratio,
            SortField::Rows => &mut self.rows,
            SortField::DbTimeShare => &mut self.db_time_share,
            SortField::Connections => &mut self.connections,
            SortField::IdleInTransactionMaxSeconds => &mut self.idle_in_transaction_max_seconds,
            SortField::SchemaSizeBytes => &mut self.schema_size_bytes,
            SortField::LiveTuples => &mut self.live_tuples,
            SortField::DeadTuples => &mut self.dead_tuples,
            SortField::EffectiveQps => &mut self.effective_qps,
        }
    }

    /// A row with every figure at zero.
    pub(crate) fn probe(tenant: impl Into<Arc<str>>) -> TenantRow {
        TenantRow {
            tenant: tenant.into(),
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
}

/// The rows as CSV: a header, then one line per tenant; lists joined by `;`.
pub fn csv(rows: &[TenantRow]) -> String {
    let mut out = String::from("tenant");
    for field in SortField::ALL {
        out.push(',');
        out.push_str(field.as_str());
    }
    out.push_str(",targets,flags\r\n");
    for row in rows {
        push_csv_text(&mut out, &row.tenant);
        for field in SortField::ALL {
            let _ = write!(out, ",{}", row.figure(field));
        }
        out.push(',');
        push_csv_text(&mut out, &row.targets.join(";"));
        out.push(',');
        push_csv_text(&mut out, &row.flags.join(";"));
        out.push_str("\r\n");
    }
    out
}

/// One text field, quoted per RFC 4180 when it holds a comma, quote or line
/// break, and with a leading `=`, `+`, `-`, `@` (or tab, carriage return)
/// neutralised by a `'`, so a spreadsheet opening the file never runs a
/// tenant id as a formula.
fn push_csv_text(out: &mut String, text: &str) {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || text.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quote {
        out.push('"');
    }
}
