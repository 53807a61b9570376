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
/// back. Kept per tenant, and only when they changed: an idle tenant costs
/// one record, not one per evaluation in the window (at 100,000 tenants the
/// full copy per evaluation was the daemon's largest structure, issue 31).
#[derive(Debug, Default)]
pub struct Window {
    /// The evaluations kept: number and time, oldest first (the one being
    /// made is not in it yet).
    evaluations: VecDeque<(u64, Instant)>,
    next: u64,
    tenants: HashMap<String, Trail>,
}

/// One tenant's cumulative figures within the window.
#[derive(Debug, Default)]
struct Trail {
    /// As of the oldest kept evaluation (none: not known then).
    base: Option<Cumulative>,
    /// Each later evaluation they changed at, oldest first.
    changes: VecDeque<(u64, Cumulative)>,
    /// The last evaluation the tenant was in the store.
    seen: u64,
}

impl Trail {
    /// Moves the changes made at or before evaluation `front` into `base`.
    fn fold_up_to(&mut self, front: u64) {
        while self.changes.front().is_some_and(|(n, _)| *n <= front) {
            self.base = self.changes.pop_front().map(|(_, c)| c);
        }
    }

    fn latest(&self) -> Option<&Cumulative> {
        self.changes.back().map(|(_, c)| c).or(self.base.as_ref())
    }
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
        while self
            .evaluations
            .get(1)
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= horizon)
        {
            self.evaluations.pop_front();
        }
        let this = self.next;
        self.next += 1;
        let front = self.evaluations.front().copied();
        let seconds = front.map_or(0.0, |(_, then)| {
            now.saturating_duration_since(then).as_secs_f64()
        });
        let mut figures = HashMap::with_capacity(if seconds > 0.0 {
            store.tenants.len()
        } else {
            0
        });
        for tenant in &store.tenants {
            let (mut queries, mut errors) = (0.0, 0.0);
            for totals in tenant.kinds.iter().flatten() {
                queries += totals.queries;
                errors += totals.errors;
            }
            let trail = match self.tenants.get_mut(tenant.tenant.as_str()) {
                Some(trail) => trail,
                None => self.tenants.entry(tenant.tenant.clone()).or_default(),
            };
            trail.seen = this;
            if let Some((front, _)) = front {
                trail.fold_up_to(front);
            }
            // Latency moves only with queries: equal counts, nothing new.
            let changed = trail
                .latest()
                .is_none_or(|c| c.queries != queries || c.errors != errors);
            let now_c = changed.then(|| Cumulative {
                queries,
                errors,
                latency: tenant.latency.clone(),
            });
            if seconds > 0.0 {
                let current = now_c.as_ref().or(trail.latest());
                if let Some(current) = current {
                    figures.insert(
                        tenant.tenant.clone(),
                        difference(current, trail.base.as_ref(), seconds),
                    );
                }
            }
            if let Some(c) = now_c {
                trail.changes.push_back((this, c));
            }
        }
        // A tenant gone from the store since the window's start is
        // forgotten, as its records would have rolled out of the window.
        let oldest = front.map_or(this, |(n, _)| n);
        self.tenants.retain(|_, trail| trail.seen >= oldest);
        self.evaluations.push_back((this, now));
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

    fn tenants(list: &[(&str, f64)]) -> StoreSnapshot {
        StoreSnapshot {
            tenants: list
                .iter()
                .map(|(tenant, queries)| TenantSnapshot {
                    tenant: (*tenant).into(),
                    kinds: [
                        Some(KindTotals {
                            queries: *queries,
                            ..KindTotals::default()
                        }),
                        None,
                        None,
                    ],
                    ..TenantSnapshot::default()
                })
                .collect(),
            ..StoreSnapshot::default()
        }
    }

    /// An idle tenant keeps one record however many evaluations the window
    /// spans; an active one a record per evaluation in the window; a
    /// tenant's figures are always against its value at the window's start,
    /// and one first seen within the window is not `whole_window` until it
    /// has been known for a window.
    #[test]
    fn the_window_keeps_changes_only_and_reads_from_its_start() {
        let mut window = Window::default();
        let start = Instant::now();
        let tick = Duration::from_secs(10);
        let horizon = Duration::from_secs(60);
        let mut last = HashMap::new();
        for i in 0..20u32 {
            let t = f64::from(i);
            let mut list = vec![("idle", 5.0), ("busy", 100.0 * t)];
            if i >= 12 {
                list.push(("late", 7.0 * (t - 11.0)));
            }
            last = window.advance(start + tick * i, &tenants(&list), horizon);
            if i >= 6 {
                // 60 s back: six evaluations ago.
                assert_eq!(last["busy"].queries, 600.0, "at {i}");
                assert!((last["busy"].rate - 10.0).abs() < 1e-9);
                assert_eq!(last["idle"].queries, 0.0);
                assert!(last["idle"].whole_window && last["busy"].whole_window);
            }
            if (12..18).contains(&i) {
                assert!(!last["late"].whole_window, "at {i}");
            }
        }
        assert!(last["late"].whole_window);
        assert_eq!(last["late"].queries, 42.0);
        assert!(window.tenants["idle"].changes.is_empty());
        assert!(window.tenants["busy"].changes.len() <= 7);
        // A tenant gone from the store is forgotten once the window passed.
        for i in 20..28u32 {
            window.advance(start + tick * i, &tenants(&[("busy", 0.0)]), horizon);
        }
        assert!(!window.tenants.contains_key("idle"));
    }
}
