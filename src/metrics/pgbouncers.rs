//! The exposition of what the PgBouncer pollers last saw: health, pools,
//! traffic per database, clients, and each tenant's pool pressure. Reads a
//! [`PgBouncerStatuses::snapshot`]; never talks to PgBouncer. As with the
//! targets, a PgBouncer that is down keeps only its health families.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::encode::{counter, counter_u64, family, gauge};
use crate::store::{PgBouncerStatus, PgBouncerStatuses, PollErrorKind, PoolFigures, PoolTraffic};

/// Exposes every PgBouncer's last status.
#[derive(Debug)]
pub struct PgBouncerCollector {
    pub pgbouncers: PgBouncerStatuses,
}

type Encoded = Result<(), std::fmt::Error>;

impl Collector for PgBouncerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Encoded {
        let all = self.pgbouncers.snapshot();
        if all.is_empty() {
            return Ok(());
        }
        encode_health(&all, &mut encoder)?;
        let up: Vec<PgBouncerStatus> = all.into_iter().filter(|p| p.up).collect();
        encode_pools(&up, &mut encoder)?;
        encode_traffic(&up, &mut encoder)?;
        encode_clients(&up, &mut encoder)?;
        encode_tenants(&up, &mut encoder)
    }
}

fn encode_health(all: &[PgBouncerStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_up",
        "1 when the PgBouncer admin console answered its last poll, 0 when it did not.",
        MetricType::Gauge,
    )?;
    for p in all {
        let up = if p.up { 1.0 } else { 0.0 };
        gauge(&mut m, &[("pgbouncer", p.name.as_str())], up)?;
    }
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_poll_errors",
        "Failed polls of the admin console, by bounded error kind (details in the logs).",
        MetricType::Counter,
    )?;
    for p in all {
        for kind in PollErrorKind::ALL {
            let count = p.poll_errors.get(&kind).copied().unwrap_or(0);
            let labels = [("pgbouncer", p.name.as_str()), ("error", kind.as_str())];
            counter_u64(&mut m, &labels, count)?;
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_bad_values",
        "Values from the admin console that were not numbers where numbers were expected (their series are left out).",
        MetricType::Counter,
    )?;
    for p in all {
        counter_u64(&mut m, &[("pgbouncer", p.name.as_str())], p.bad_values)?;
    }
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_poll_duration_seconds",
        "How long the last poll of the admin console took.",
        MetricType::Gauge,
    )?;
    for p in all {
        if let Some(seconds) = p.poll_seconds {
            gauge(&mut m, &[("pgbouncer", p.name.as_str())], seconds)?;
        }
    }
    Ok(())
}

fn encode_pools(up: &[PgBouncerStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_pool_clients",
        "Client connections of each pool: linked to a server (active) or waiting for one (SHOW POOLS).",
        MetricType::Gauge,
    )?;
    pool_states(&mut m, up, |pool| {
        vec![
            ("active", pool.clients_active),
            ("waiting", pool.clients_waiting),
        ]
    })?;
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_pool_servers",
        "Server connections of each pool by state (SHOW POOLS sv_*).",
        MetricType::Gauge,
    )?;
    pool_states(&mut m, up, |pool| pool.server_states().to_vec())?;
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_pool_maxwait_seconds",
        "How long the pool's oldest waiting client has waited for a server connection.",
        MetricType::Gauge,
    )?;
    for p in up {
        let Some(s) = &p.snapshot else { continue };
        for pool in &s.pools {
            if let Some(seconds) = pool.maxwait_seconds {
                let labels = [
                    ("pgbouncer", p.name.as_str()),
                    ("database", pool.database.as_str()),
                    ("user", pool.user.as_str()),
                ];
                gauge(&mut m, &labels, seconds)?;
            }
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_pool_size",
        "Server connections allowed per user pool of the database (SHOW DATABASES pool_size).",
        MetricType::Gauge,
    )?;
    for p in up {
        let Some(s) = &p.snapshot else { continue };
        for (database, d) in &s.databases {
            if let Some(size) = d.pool_size {
                let labels = [
                    ("pgbouncer", p.name.as_str()),
                    ("database", database.as_str()),
                ];
                gauge(&mut m, &labels, size as f64)?;
            }
        }
    }
    Ok(())
}

/// One gauge per pool and state, for the states this PgBouncer shows.
fn pool_states(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    up: &[PgBouncerStatus],
    states: impl Fn(&PoolFigures) -> Vec<(&'static str, Option<u64>)>,
) -> Encoded {
    for p in up {
        let Some(s) = &p.snapshot else { continue };
        for pool in &s.pools {
            for (state, value) in states(pool) {
                if let Some(value) = value {
                    let labels = [
                        ("pgbouncer", p.name.as_str()),
                        ("database", pool.database.as_str()),
                        ("user", pool.user.as_str()),
                        ("state", state),
                    ];
                    gauge(m, &labels, value as f64)?;
                }
            }
        }
    }
    Ok(())
}

fn encode_traffic(up: &[PgBouncerStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    type TrafficField = fn(&PoolTraffic) -> Option<f64>;
    let families: [(&str, &str, TrafficField); 4] = [
        (
            "tenantwatch_pgbouncer_queries",
            "Queries pooled by PgBouncer per database (SHOW STATS total_query_count).",
            |t| t.queries.map(|n| n as f64),
        ),
        (
            "tenantwatch_pgbouncer_transactions",
            "Transactions pooled by PgBouncer per database (SHOW STATS total_xact_count).",
            |t| t.transactions.map(|n| n as f64),
        ),
        (
            "tenantwatch_pgbouncer_query_time_seconds",
            "Time spent by PgBouncer's server connections running queries, per database.",
            |t| t.query_seconds,
        ),
        (
            "tenantwatch_pgbouncer_client_wait_seconds",
            "Time clients spent waiting for a server connection, per database (SHOW STATS total_wait_time).",
            |t| t.client_wait_seconds,
        ),
    ];
    for (name, help, field) in families {
        let mut m = family(encoder, name, help, MetricType::Counter)?;
        for p in up {
            let Some(s) = &p.snapshot else { continue };
            for (database, traffic) in &s.traffic {
                if let Some(value) = field(traffic) {
                    let labels = [
                        ("pgbouncer", p.name.as_str()),
                        ("database", database.as_str()),
                    ];
                    counter(&mut m, &labels, value)?;
                }
            }
        }
    }
    Ok(())
}

fn encode_clients(up: &[PgBouncerStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_client_connections",
        "Client connections by application_name (SHOW CLIENTS; at most 100 values, then __other__).",
        MetricType::Gauge,
    )?;
    for p in up {
        let Some(s) = &p.snapshot else { continue };
        for (application, count) in &s.clients_by_application {
            let labels = [
                ("pgbouncer", p.name.as_str()),
                ("application", application.as_str()),
            ];
            gauge(&mut m, &labels, *count as f64)?;
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_pgbouncer_max_client_connections",
        "The PgBouncer's max_client_conn setting.",
        MetricType::Gauge,
    )?;
    for p in up {
        if let Some(max) = p.snapshot.as_ref().and_then(|s| s.max_client_conn) {
            gauge(&mut m, &[("pgbouncer", p.name.as_str())], max as f64)?;
        }
    }
    Ok(())
}

fn encode_tenants(up: &[PgBouncerStatus], encoder: &mut DescriptorEncoder) -> Encoded {
    let mut m = family(
        encoder,
        "tenantwatch_tenant_pool_waiting_clients",
        "The tenant's clients waiting for a server connection in its pools (database- or user-per-tenant pools).",
        MetricType::Gauge,
    )?;
    for p in up {
        let Some(s) = &p.snapshot else { continue };
        for (tenant, pools) in &s.tenants {
            let labels = [("tenant", tenant.as_str()), ("pgbouncer", p.name.as_str())];
            gauge(&mut m, &labels, pools.waiting_clients as f64)?;
        }
    }
    let mut m = family(
        encoder,
        "tenantwatch_tenant_pool_wait_seconds",
        "Time the tenant's clients waited for a server connection (from SHOW STATS of databases whose every pool is the tenant's).",
        MetricType::Counter,
    )?;
    for p in up {
        let Some(s) = &p.snapshot else { continue };
        for (tenant, pools) in &s.tenants {
            let labels = [("tenant", tenant.as_str()), ("pgbouncer", p.name.as_str())];
            counter(&mut m, &labels, pools.wait_seconds_total)?;
        }
    }
    Ok(())
}
