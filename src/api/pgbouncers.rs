//! The PgBouncers in the API: each one's health and pools for
//! `GET /api/v1/targets`, a tenant's pools for its detail.

use serde::Serialize;

use super::targets::unix;
use crate::store::{PgBouncerStatus, PollErrorKind, PoolFigures};

/// One PgBouncer for `GET /api/v1/targets`.
#[derive(Debug, Serialize)]
pub struct PgBouncerView {
    pub name: String,
    /// `host:port`.
    pub address: String,
    pub up: bool,
    pub last_success_unix: Option<f64>,
    pub last_error: Option<PollErrorKind>,
    pub version: Option<String>,
    pub client_connections: Option<u64>,
    pub max_client_connections: Option<u64>,
    /// The pools of its last poll (while it is up).
    pub pools: Vec<PoolView>,
}

/// One pool, with `null` for what this PgBouncer version does not show.
#[derive(Debug, Serialize)]
pub struct PoolView {
    pub database: String,
    pub user: String,
    pub tenant: Option<String>,
    pub clients_active: Option<u64>,
    pub clients_waiting: Option<u64>,
    pub servers: u64,
    pub pool_size: Option<u64>,
    pub maxwait_seconds: Option<f64>,
}

/// A tenant's pools on one PgBouncer, for its detail.
#[derive(Debug, Serialize)]
pub struct TenantPoolsView {
    pub pgbouncer: String,
    /// `{database, user}` of each pool (at most 20 listed).
    pub pools: Vec<PoolName>,
    pub waiting_clients: u64,
    pub active_clients: u64,
    pub maxwait_seconds: f64,
    pub wait_seconds_total: f64,
}

#[derive(Debug, Serialize)]
pub struct PoolName {
    pub database: String,
    pub user: String,
}

fn pool_view(pool: &PoolFigures, pool_size: Option<u64>) -> PoolView {
    PoolView {
        database: pool.database.clone(),
        user: pool.user.clone(),
        tenant: pool.tenant.clone(),
        clients_active: pool.clients_active,
        clients_waiting: pool.clients_waiting,
        servers: pool.servers(),
        pool_size,
        maxwait_seconds: pool.maxwait_seconds,
    }
}

pub fn pgbouncer_views(pgbouncers: &[PgBouncerStatus]) -> Vec<PgBouncerView> {
    pgbouncers
        .iter()
        .map(|p| {
            let snapshot = p.snapshot.as_ref().filter(|_| p.up);
            PgBouncerView {
                name: p.name.clone(),
                address: p.description.clone(),
                up: p.up,
                last_success_unix: p.last_success.map(unix),
                last_error: p.last_error,
                version: p.version.clone(),
                client_connections: snapshot.map(|s| s.client_connections),
                max_client_connections: snapshot.and_then(|s| s.max_client_conn),
                pools: snapshot
                    .map(|s| {
                        s.pools
                            .iter()
                            .map(|pool| {
                                let size =
                                    s.databases.get(&pool.database).and_then(|d| d.pool_size);
                                pool_view(pool, size)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// The tenant's pools on every PgBouncer that is up.
pub fn tenant_pools(tenant: &str, pgbouncers: &[PgBouncerStatus]) -> Vec<TenantPoolsView> {
    pgbouncers
        .iter()
        .filter(|p| p.up)
        .filter_map(|p| {
            let pools = p.snapshot.as_ref()?.tenants.get(tenant)?;
            Some(TenantPoolsView {
                pgbouncer: p.name.clone(),
                pools: pools
                    .pools
                    .iter()
                    .map(|(database, user)| PoolName {
                        database: database.clone(),
                        user: user.clone(),
                    })
                    .collect(),
                waiting_clients: pools.waiting_clients,
                active_clients: pools.active_clients,
                maxwait_seconds: pools.maxwait_seconds,
                wait_seconds_total: pools.wait_seconds_total,
            })
        })
        .collect()
}
