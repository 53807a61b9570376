//! What the rules are judged on, gathered once per evaluation whatever rules
//! are enabled: per-tenant figures over the window (from the store's
//! cumulative counters), each tenant's query-rate baseline, and each
//! tenant's size samples per target. Baselines and size samples advance on
//! every evaluation, so disabling and re-enabling a rule does not restart
//! its warm-up.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::store::{NativeHistogram, SourceSet, StoreSnapshot};

/// Size samples of one tenant on one target are kept at most one per
/// this spacing, for the growth rule...
pub const SIZE_SAMPLE_SPACING: Duration = Duration::from_secs(15 * 60);
/// ...and for this long.
pub const SIZE_HISTORY: Duration = Duration::from_secs(26 * 3600);

/// Cumulative query figures of a tenant (all kinds).
#[derive(Debug, Clone, Default)]
struct Cumulative {
    queries: f64,
    errors: f64,
    /// The fine (native-histogram) buckets: a p95 within a few percent,
    /// where the classic bounds were off by up to 2.5x.
    latency: NativeHistogram,
}

/// Window figures of one tenant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowFigures {
    pub queries: f64,
    pub errors: f64,
    /// Queries per second over the window.
    pub rate: f64,
    pub p95_seconds: Option<f64>,
    /// The tenant was known at the window's start: `rate` covers the whole
    /// window. A tenant first seen within it has its queries spread over
    /// time it did not exist, so its rate reads low.
    pub whole_window: bool,
}

/// One tenant's figures over the window, as one replica saw them or summed
/// over the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantFigures {
    pub queries: f64,
    pub errors: f64,
    /// Queries per second over the window.
    pub rate: f64,
    /// Database time over the store's share window, in milliseconds.
    pub db_time_ms: f64,
    /// The latencies of the window's queries, in the store's fine
    /// (native-histogram) buckets.
    pub latency: NativeHistogram,
    /// The transports its events came through.
    pub sources: SourceSet,
    /// Known at the window's start on every replica that saw it (see
    /// [`WindowFigures::whole_window`]).
    pub whole_window: bool,
}

impl TenantFigures {
    /// Adds another replica's figures of the same tenant.
    pub fn add(&mut self, other: &TenantFigures) {
        self.queries += other.queries;
        self.errors += other.errors;
        self.rate += other.rate;
        self.db_time_ms += other.db_time_ms;
        self.latency.merge(&other.latency);
        self.sources = self.sources.union(other.sources);
        self.whole_window = self.whole_window && other.whole_window;
    }

    /// What the rules over rates, errors and latency read.
    pub fn window(&self) -> WindowFigures {
        WindowFigures {
            queries: self.queries,
            errors: self.errors,
            rate: self.rate,
            p95_seconds: self.latency.quantile(0.95),
            whole_window: self.whole_window,
        }
    }

    /// Whether it has anything to share.
    pub fn is_active(&self) -> bool {
        self.queries > 0.0 || self.db_time_ms > 0.0
    }
}

/// A tenant's query-rate baseline: an exponentially weighted mean.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    pub rate: f64,
    /// Evaluations folded in so far.
    pub samples: u32,
}

/// Cumulative figures of past evaluations, just enough to reach one window
/// back.
#[derive(Debug, Default)]
pub struct Window {
    history: VecDeque<(Instant, HashMap<String, Cumulative>)>,
}

impl Window {
    /// Records the store's cumulative figures at `now` and returns each
    /// tenant's figures since the oldest kept record (about `window` ago):
    /// queries, errors, rate and buckets (the caller adds the rest).
    pub fn advance(
        &mut self,
        now: Instant,
        store: &StoreSnapshot,
        horizon: Duration,
    ) -> HashMap<String, TenantFigures> {
        let mut current: HashMap<String, Cumulative> = HashMap::with_capacity(store.tenants.len());
        for tenant in &store.tenants {
            let mut c = Cumulative {
                latency: tenant.latency.clone(),
                ..Cumulative::default()
            };
            for totals in tenant.kinds.iter().flatten() {
                c.queries += totals.queries;
                c.errors += totals.errors;
            }
            current.insert(tenant.tenant.clone(), c);
        }
        while self
            .history
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= horizon)
        {
            self.history.pop_front();
        }
        let mut figures = HashMap::with_capacity(current.len());
        if let Some((then, old)) = self.history.front() {
            let seconds = now.saturating_duration_since(*then).as_secs_f64();
            if seconds > 0.0 {
                for (tenant, now_c) in &current {
                    figures.insert(tenant.clone(), difference(now_c, old.get(tenant), seconds));
                }
            }
        }
        self.history.push_back((now, current));
        figures
    }
}

fn difference(now: &Cumulative, old: Option<&Cumulative>, seconds: f64) -> TenantFigures {
    let zero = Cumulative::default();
    let old_known = old.is_some();
    let old = old.unwrap_or(&zero);
    let queries = (now.queries - old.queries).max(0.0);
    TenantFigures {
        queries,
        errors: (now.errors - old.errors).max(0.0),
        rate: queries / seconds,
        latency: now.latency.since(&old.latency),
        whole_window: old_known,
        ..TenantFigures::default()
    }
}

/// Each tenant's server-side statement seconds (from `pg_stat_statements`,
/// summed over targets) one window back.
#[derive(Debug, Default)]
pub struct StatementWindow {
    history: VecDeque<(Instant, HashMap<String, f64>)>,
}

impl StatementWindow {
    /// Records the cumulative seconds at `now` and returns each tenant's
    /// seconds since the oldest kept record (about `horizon` ago).
    pub fn advance(
        &mut self,
        now: Instant,
        current: HashMap<String, f64>,
        horizon: Duration,
    ) -> HashMap<String, f64> {
        while self
            .history
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= horizon)
        {
            self.history.pop_front();
        }
        let window = match self.history.front() {
            Some((_, old)) => current
                .iter()
                .map(|(tenant, now_s)| {
                    let then = old.get(tenant).copied().unwrap_or(0.0);
                    (tenant.clone(), (now_s - then).max(0.0))
                })
                .collect(),
            None => HashMap::new(),
        };
        self.history.push_back((now, current));
        window
    }
}

/// Folds this evaluation's rates into every tenant's baseline (`alpha` is
/// the weight of the new rate) but those `held` still, and forgets tenants
/// without figures. A tenant's baseline starts only from a whole window of
/// its figures: started from the partial window in which it first appeared
/// (its rate read low), it sat far below the tenant's steady rate, which
/// `rate_spike` then flagged after its `for`, and kept flagged, since a
/// spiking tenant's baseline is held still (found by the soak, issue 26).
pub fn advance_baselines(
    baselines: &mut HashMap<String, Baseline>,
    figures: &HashMap<String, WindowFigures>,
    alpha: f64,
    held: &std::collections::HashSet<String>,
) {
    let folded = figures
        .iter()
        .filter(|(t, f)| f.whole_window && !held.contains(*t));
    for (tenant, f) in folded {
        let baseline = baselines.entry(tenant.clone()).or_insert(Baseline {
            rate: f.rate,
            samples: 0,
        });
        baseline.rate += alpha * (f.rate - baseline.rate);
        baseline.samples = baseline.samples.saturating_add(1);
    }
    baselines.retain(|tenant, _| figures.contains_key(tenant));
}

/// Adds a size sample (at most one per [`SIZE_SAMPLE_SPACING`]) and drops
/// those older than [`SIZE_HISTORY`].
pub fn record_size(samples: &mut VecDeque<(Instant, u64)>, now: Instant, size: u64) {
    if samples
        .back()
        .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= SIZE_SAMPLE_SPACING)
    {
        samples.push_back((now, size));
    }
    while samples
        .front()
        .is_some_and(|(t, _)| now.saturating_duration_since(*t) > SIZE_HISTORY)
    {
        samples.pop_front();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::{KindTotals, TenantSnapshot};

    fn snapshot(queries: f64, latency: &NativeHistogram) -> StoreSnapshot {
        StoreSnapshot {
            tenants: vec![TenantSnapshot {
                tenant: "a".into(),
                kinds: [
                    Some(KindTotals {
                        queries,
                        ..KindTotals::default()
                    }),
                    None,
                    None,
                ],
                latency: latency.clone(),
                ..TenantSnapshot::default()
            }],
            ..StoreSnapshot::default()
        }
    }

    /// The window p95 comes from the fine buckets, and only from what was
    /// observed within the window: 1,000 queries at 1 ms before it, then
    /// 1,000 between 300 and 399 ms (true p95 ≈ 395 ms). The classic
    /// bounds (250 ms, 500 ms) would answer 475 ms.
    #[test]
    fn the_window_p95_reads_the_fine_buckets_of_the_window_only() {
        let mut window = Window::default();
        let start = Instant::now();
        let mut latency = NativeHistogram::default();
        for _ in 0..1000 {
            latency.observe(0.001, 1.0);
        }
        window.advance(start, &snapshot(1000.0, &latency), Duration::from_secs(60));
        for i in 0..1000 {
            latency.observe(0.3 + f64::from(i) * 0.0001, 1.0);
        }
        let figures = window.advance(
            start + Duration::from_secs(60),
            &snapshot(2000.0, &latency),
            Duration::from_secs(60),
        );
        let a = &figures["a"];
        assert_eq!(a.queries, 1000.0);
        let p95 = a.window().p95_seconds.unwrap();
        assert!((p95 / 0.395 - 1.0).abs() < 0.05, "{p95}");
    }
}
