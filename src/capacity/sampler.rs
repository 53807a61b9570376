//! The history sampler: every `api.history_resolution` it records each
//! target's connections and size, and each tenant's queries, share,
//! connections and size, for growth fits and the tenant detail; then it
//! works out the capacity figures the exposition shows.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{
    CapacitySettings, History, SharedTargetHistories, SharedTenantHistories, TargetSample,
    TenantSample,
};
use crate::store::{Store, TargetStatus, TargetStatuses};

/// What the sampler reads (the store, the targets' statuses) and where it
/// writes (the histories and the capacity figures).
pub struct Sampler {
    pub settings: CapacitySettings,
    pub store: Arc<Store>,
    pub statuses: TargetStatuses,
    pub histories: SharedTargetHistories,
    pub tenant_histories: SharedTenantHistories,
    pub figures: super::view::SharedCapacityFigures,
}

/// Samples until `shutdown`.
pub async fn run(sampler: Sampler, shutdown: CancellationToken) {
    let Sampler {
        settings,
        store,
        statuses,
        histories,
        tenant_histories,
        figures,
    } = sampler;
    let capacity = settings.history_len();
    let mut interval = tokio::time::interval(settings.history_resolution);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let statuses = statuses.snapshot();
        if settings.history_tenants > 0 {
            let samples = tenant_samples(unix, &store, &statuses);
            tenant_histories
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(samples);
        }
        let mut histories = histories.lock().unwrap_or_else(PoisonError::into_inner);
        for status in statuses.iter().filter(|s| s.up) {
            let size_bytes: u64 = status.tenant_sizes().map(|(_, size)| size).sum();
            histories
                .entry(status.name.clone())
                .or_insert_with(|| History::new(capacity))
                .push(TargetSample {
                    unix,
                    connections: status.connections_in_use() as f64,
                    size_bytes: size_bytes as f64,
                });
        }
        let worked_out = super::view::capacity_figures(&statuses, &histories, &settings);
        drop(histories);
        *figures.lock().unwrap_or_else(PoisonError::into_inner) = worked_out;
    }
}

/// One sample per tenant known from events or from any target, sorted by
/// tenant id (the first tenants by name keep their slots when over the cap).
fn tenant_samples(
    unix: f64,
    store: &Store,
    statuses: &[TargetStatus],
) -> Vec<(String, TenantSample)> {
    let snapshot = store.snapshot();
    let empty = || TenantSample {
        unix,
        queries: 0.0,
        db_time_share: 0.0,
        connections: 0.0,
        size_bytes: 0.0,
    };
    let mut samples: HashMap<String, TenantSample> = snapshot
        .tenants
        .iter()
        .map(|t| {
            let sample = TenantSample {
                queries: t.kinds.iter().flatten().map(|k| k.queries).sum(),
                db_time_share: t.db_time_share as f32,
                ..empty()
            };
            (t.tenant.clone(), sample)
        })
        .collect();
    for status in statuses {
        if let Some(activity) = &status.activity {
            for (tenant, a) in &activity.tenants {
                let sample = samples.entry(tenant.clone()).or_insert_with(empty);
                sample.connections += a.total_connections() as f32;
            }
        }
        for (tenant, size) in status.tenant_sizes() {
            samples
                .entry(tenant.clone())
                .or_insert_with(empty)
                .size_bytes += size as f64;
        }
    }
    let mut samples: Vec<(String, TenantSample)> = samples.into_iter().collect();
    samples.sort_by(|a, b| a.0.cmp(&b.0));
    samples
}
