//! `GET /api/v1/capacity` as a typed view: headroom and growth per target,
//! the heaviest tenants, placement advice across targets, and a fleet
//! projection. Built from the targets' last polls, their sampled history and
//! each tenant's database-time share.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{CapacitySettings, Footprint, History, Placement, place, slope};
use crate::store::{PgBouncerStatus, TargetStatus};

/// Dimensions of a tenant's load on a target, as indexes of `[f64; 3]`.
const DB_TIME: usize = 0;
const CONNECTIONS: usize = 1;
const SIZE: usize = 2;

/// Heaviest tenants listed per dimension and target.
const HEAVIEST: usize = 5;

/// A tenant's share of database time and the number of targets it is on,
/// which splits that share evenly between them.
#[derive(Debug, Clone, Copy)]
pub struct TenantShare {
    pub db_time_share: f64,
    pub targets: usize,
}

#[derive(Debug, Serialize)]
pub struct CapacityView {
    pub targets: Vec<TargetCapacity>,
    /// `null` with fewer than two targets.
    pub placement: Option<Placement>,
    pub fleet: FleetCapacity,
    /// Each PgBouncer's client and per-pool server headroom.
    pub pgbouncers: Vec<PgBouncerCapacity>,
}

/// One PgBouncer's headroom, while it is up.
#[derive(Debug, Serialize)]
pub struct PgBouncerCapacity {
    pub pgbouncer: String,
    pub max_client_connections: Option<u64>,
    pub client_connections: u64,
    /// `max_client_conn` minus the client connections.
    pub client_headroom: Option<i64>,
    pub pools: Vec<PoolHeadroom>,
}

/// A pool's server connections against its database's `pool_size`.
#[derive(Debug, Serialize)]
pub struct PoolHeadroom {
    pub database: String,
    pub user: String,
    pub tenant: Option<String>,
    pub pool_size: Option<u64>,
    pub servers: u64,
    pub server_headroom: Option<i64>,
    pub clients_waiting: Option<u64>,
}

/// Every PgBouncer that is up, with its headroom.
pub fn pgbouncer_capacity(pgbouncers: &[PgBouncerStatus]) -> Vec<PgBouncerCapacity> {
    pgbouncers
        .iter()
        .filter(|p| p.up)
        .filter_map(|p| {
            let s = p.snapshot.as_ref()?;
            let headroom = |max: u64, used: u64| max as i64 - used as i64;
            Some(PgBouncerCapacity {
                pgbouncer: p.name.clone(),
                max_client_connections: s.max_client_conn,
                client_connections: s.client_connections,
                client_headroom: s
                    .max_client_conn
                    .map(|max| headroom(max, s.client_connections)),
                pools: s
                    .pools
                    .iter()
                    .map(|pool| {
                        let pool_size = s.databases.get(&pool.database).and_then(|d| d.pool_size);
                        PoolHeadroom {
                            database: pool.database.clone(),
                            user: pool.user.clone(),
                            tenant: pool.tenant.clone(),
                            pool_size,
                            servers: pool.servers(),
                            server_headroom: pool_size.map(|size| headroom(size, pool.servers())),
                            clients_waiting: pool.clients_waiting,
                        }
                    })
                    .collect(),
            })
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct TargetCapacity {
    pub target: String,
    pub up: bool,
    pub max_connections: Option<u64>,
    pub usable_connections: Option<f64>,
    pub connections_in_use: f64,
    pub connections_peak: f64,
    pub connection_headroom: Option<f64>,
    pub size_bytes: f64,
    pub growth_bytes_per_day: Option<f64>,
    pub history_samples: usize,
    pub size_budget_bytes: Option<f64>,
    pub days_until_budget: Option<f64>,
    pub heaviest: Heaviest,
}

#[derive(Debug, Serialize)]
pub struct Heaviest {
    pub db_time_share: Vec<TenantValue>,
    pub connections: Vec<TenantValue>,
    pub size_bytes: Vec<TenantValue>,
}

#[derive(Debug, Serialize)]
pub struct TenantValue {
    pub tenant: String,
    pub value: f64,
}

#[derive(Debug, Serialize)]
pub struct FleetCapacity {
    pub tenants: usize,
    pub median_tenant: MedianTenant,
    /// How many more median tenants fit by connections and size budget.
    pub more_tenants_fit: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct MedianTenant {
    pub connections: f64,
    pub size_bytes: f64,
}

/// Builds the view. `shares` holds every known tenant (`tenants` of them).
pub fn capacity_view(
    targets: &[TargetStatus],
    pgbouncers: &[PgBouncerStatus],
    histories: &BTreeMap<String, History>,
    shares: &HashMap<&str, TenantShare>,
    tenants: usize,
    settings: &CapacitySettings,
) -> CapacityView {
    let measured = measure(targets, histories, shares, settings);
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let placement = (names.len() > 1)
        .then(|| place(&names, &measured.footprints, settings.balance_tolerance, 50));
    CapacityView {
        targets: measured.targets,
        placement,
        fleet: FleetCapacity {
            tenants,
            median_tenant: measured.median_tenant,
            more_tenants_fit: measured.more_tenants_fit,
        },
        pgbouncers: pgbouncer_capacity(pgbouncers),
    }
}

/// The capacity figures the exposition shows, as the sampler last worked
/// them out (every `api.history_resolution`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapacityFigures {
    /// Per target that is up: (target, connection headroom, days until
    /// the size budget), each when known.
    pub targets: Vec<(String, Option<f64>, Option<f64>)>,
    pub more_tenants_fit: Option<f64>,
}

pub type SharedCapacityFigures = std::sync::Arc<std::sync::Mutex<CapacityFigures>>;

/// The figures of [`capacity_view`] that need no tenant shares (no
/// placement): headroom, days until budget, tenants that fit.
pub fn capacity_figures(
    targets: &[TargetStatus],
    histories: &BTreeMap<String, History>,
    settings: &CapacitySettings,
) -> CapacityFigures {
    let up: Vec<TargetStatus> = targets.iter().filter(|t| t.up).cloned().collect();
    let measured = measure(&up, histories, &HashMap::new(), settings);
    CapacityFigures {
        targets: measured
            .targets
            .iter()
            .map(|t| (t.target.clone(), t.connection_headroom, t.days_until_budget))
            .collect(),
        more_tenants_fit: measured.more_tenants_fit,
    }
}

/// What the view and the figures share.
struct Measured {
    targets: Vec<TargetCapacity>,
    footprints: Vec<Footprint>,
    median_tenant: MedianTenant,
    more_tenants_fit: Option<f64>,
}

fn measure(
    targets: &[TargetStatus],
    histories: &BTreeMap<String, History>,
    shares: &HashMap<&str, TenantShare>,
    settings: &CapacitySettings,
) -> Measured {
    let mut footprints = Vec::new();
    let mut per_target = Vec::new();
    for t in targets {
        let loads = tenant_loads(t, shares);
        for (tenant, load) in &loads {
            footprints.push(Footprint {
                tenant: tenant.clone(),
                target: t.name.clone(),
                load: *load,
            });
        }
        per_target.push(target_capacity(t, &loads, histories.get(&t.name), settings));
    }
    let median = |d: usize| -> f64 {
        let mut v: Vec<f64> = footprints.iter().map(|f| f.load[d]).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let median_tenant = MedianTenant {
        connections: median(CONNECTIONS),
        size_bytes: median(SIZE),
    };
    let more_tenants_fit = more_tenants_fit(&per_target, &median_tenant, settings);
    Measured {
        targets: per_target,
        footprints,
        median_tenant,
        more_tenants_fit,
    }
}

/// Each tenant's load on one target: its share of database time (split over
/// its targets), its connections and its size.
fn tenant_loads(
    t: &TargetStatus,
    shares: &HashMap<&str, TenantShare>,
) -> BTreeMap<String, [f64; 3]> {
    let mut loads: BTreeMap<String, [f64; 3]> = BTreeMap::new();
    if let Some(a) = &t.activity {
        for (tenant, activity) in &a.tenants {
            loads.entry(tenant.clone()).or_default()[CONNECTIONS] =
                activity.total_connections() as f64;
        }
    }
    for (tenant, size) in t.tenant_sizes() {
        loads.entry(tenant.clone()).or_default()[SIZE] = size as f64;
    }
    for (tenant, load) in loads.iter_mut() {
        if let Some(share) = shares.get(tenant.as_str()) {
            load[DB_TIME] = share.db_time_share / share.targets.max(1) as f64;
        }
    }
    loads
}

fn target_capacity(
    t: &TargetStatus,
    loads: &BTreeMap<String, [f64; 3]>,
    history: Option<&History>,
    settings: &CapacitySettings,
) -> TargetCapacity {
    let in_use = t.connections_in_use() as f64;
    let size: f64 = loads.values().map(|l| l[SIZE]).sum();
    let peak = history
        .map(|h| h.samples().map(|s| s.connections).fold(in_use, f64::max))
        .unwrap_or(in_use);
    let growth_per_day = history
        .and_then(|h| slope(h.samples().map(|s| (s.unix, s.size_bytes))))
        .map(|per_second| per_second * 86400.0);
    let usable = t
        .max_connections
        .map(|m| m as f64 - t.reserved_connections.unwrap_or(0) as f64);
    let budget = settings.size_budget_bytes as f64;
    let days_until_budget = match growth_per_day {
        Some(g) if budget > 0.0 && g > 0.0 => Some(((budget - size) / g).max(0.0)),
        _ => None,
    };
    let top = |d: usize| -> Vec<TenantValue> {
        let mut v: Vec<(&String, f64)> = loads
            .iter()
            .map(|(k, l)| (k, l[d]))
            .filter(|(_, x)| *x > 0.0)
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v.into_iter()
            .take(HEAVIEST)
            .map(|(k, x)| TenantValue {
                tenant: k.clone(),
                value: x,
            })
            .collect()
    };
    TargetCapacity {
        target: t.name.clone(),
        up: t.up,
        max_connections: t.max_connections,
        usable_connections: usable,
        connections_in_use: in_use,
        connections_peak: peak,
        connection_headroom: usable.map(|u| u - in_use),
        size_bytes: size,
        growth_bytes_per_day: growth_per_day,
        history_samples: history.map(History::len).unwrap_or(0),
        size_budget_bytes: (budget > 0.0).then_some(budget),
        days_until_budget,
        heaviest: Heaviest {
            db_time_share: top(DB_TIME),
            connections: top(CONNECTIONS),
            size_bytes: top(SIZE),
        },
    }
}

/// Median tenants that still fit on every target, by connection headroom
/// and by size budget (the tighter of the two where both apply).
fn more_tenants_fit(
    targets: &[TargetCapacity],
    median: &MedianTenant,
    settings: &CapacitySettings,
) -> Option<f64> {
    let fits: Vec<f64> = targets
        .iter()
        .filter_map(|t| {
            let by_connections = t
                .connection_headroom
                .filter(|_| median.connections > 0.0)
                .map(|h| (h / median.connections).floor().max(0.0));
            let by_size = (settings.size_budget_bytes > 0 && median.size_bytes > 0.0).then(|| {
                ((settings.size_budget_bytes as f64 - t.size_bytes) / median.size_bytes)
                    .floor()
                    .max(0.0)
            });
            match (by_connections, by_size) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        })
        .collect();
    (!fits.is_empty()).then(|| fits.iter().sum())
}
