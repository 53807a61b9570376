//! Capacity planning: the targets' and tenants' sampled history, growth
//! fits over it, headroom, and placement advice that balances tenants
//! across targets (shards). A reader of the stores.
//!
//! - this file: the history types and the pure maths (least-squares
//!   growth, placement search);
//! - [`sampler`]: the task that records the history;
//! - [`view`]: the typed `GET /api/v1/capacity` view.

pub mod sampler;
pub mod view;

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// `[api]`: the capacity planners' API: how much target and tenant
/// history is kept and how placement advice balances targets. Every key
/// takes effect at start-up.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, crate::settings::Reload)]
#[serde(default, deny_unknown_fields)]
pub struct CapacitySettings {
    /// How much target history (connections, size) is kept for growth fits.
    #[serde(with = "crate::settings::serde_text::duration")]
    pub history: std::time::Duration,
    /// Time between two history samples (at most `history`).
    #[serde(with = "crate::settings::serde_text::duration")]
    pub history_resolution: std::time::Duration,
    /// Size budget per target for "days until full"; 0 for none.
    pub size_budget_bytes: u64,
    /// Tenants that keep a history for `GET /api/v1/tenants/{tenant}` (about
    /// 35 KB each at the default history and resolution).
    pub history_tenants: usize,
    /// Placement advice keeps every target's share of each load within this
    /// fraction above its fair share.
    pub balance_tolerance: f64,
}

impl Default for CapacitySettings {
    fn default() -> Self {
        CapacitySettings {
            history: std::time::Duration::from_secs(24 * 3600),
            history_resolution: std::time::Duration::from_secs(60),
            size_budget_bytes: 0,
            history_tenants: 1000,
            balance_tolerance: 0.2,
        }
    }
}

impl CapacitySettings {
    /// Checks each key, and the resolution against the history.
    pub fn check(&self, p: &mut crate::settings::Problems) {
        p.positive("api.history", self.history);
        p.positive("api.history_resolution", self.history_resolution);
        p.range("api.history_tenants", self.history_tenants, 0, 100_000);
        if !(self.balance_tolerance.is_finite() && self.balance_tolerance >= 0.0) {
            p.fail(
                "api.balance_tolerance",
                self.balance_tolerance,
                "must be a number >= 0",
            );
        }
        if self.history_resolution > self.history {
            p.fail(
                "api.history_resolution",
                format!(
                    "{:?}",
                    humantime::format_duration(self.history_resolution).to_string()
                ),
                "must not be longer than api.history",
            );
        }
    }

    /// Samples kept per history.
    pub fn history_len(&self) -> usize {
        (self.history.as_secs_f64() / self.history_resolution.as_secs_f64().max(0.001)).ceil()
            as usize
    }
}

/// One sample of a target's history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct TargetSample {
    pub unix: f64,
    pub connections: f64,
    pub size_bytes: f64,
}

/// A bounded history of samples, oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    samples: VecDeque<TargetSample>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            samples: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(2),
        }
    }

    pub fn push(&mut self, sample: TargetSample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn samples(&self) -> impl Iterator<Item = &TargetSample> {
        self.samples.iter()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// A history of `capacity` holding the newest of `samples`.
    pub fn restored(capacity: usize, samples: Vec<TargetSample>) -> History {
        let mut history = History::new(capacity);
        for sample in samples {
            history.push(sample);
        }
        history
    }
}

/// Each target's history, shared by the sampler and the API.
pub type SharedTargetHistories = std::sync::Arc<std::sync::Mutex<BTreeMap<String, History>>>;

/// The tenants' histories, shared by the sampler and the API.
pub type SharedTenantHistories = std::sync::Arc<std::sync::Mutex<TenantHistories>>;

/// One sample of a tenant's history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct TenantSample {
    pub unix: f64,
    /// Queries reported since start (cumulative).
    pub queries: f64,
    pub db_time_share: f32,
    pub connections: f32,
    pub size_bytes: f64,
}

/// Per-tenant histories, bounded twice: `capacity` samples per tenant and at
/// most `max_tenants` tenants (the first ones seen keep their history;
/// tenants that disappear free their slot).
#[derive(Debug, Clone, Default)]
pub struct TenantHistories {
    tenants: std::collections::HashMap<String, VecDeque<TenantSample>>,
    capacity: usize,
    max_tenants: usize,
}

impl TenantHistories {
    pub fn new(capacity: usize, max_tenants: usize) -> TenantHistories {
        TenantHistories {
            tenants: Default::default(),
            capacity: capacity.max(2),
            max_tenants,
        }
    }

    /// Records one sample for each of `samples`' tenants and forgets the
    /// tenants that are not among them.
    pub fn record(&mut self, samples: Vec<(String, TenantSample)>) {
        let present: std::collections::HashSet<&str> =
            samples.iter().map(|(t, _)| t.as_str()).collect();
        self.tenants
            .retain(|tenant, _| present.contains(tenant.as_str()));
        for (tenant, sample) in samples {
            if !self.tenants.contains_key(&tenant) && self.tenants.len() >= self.max_tenants {
                continue;
            }
            let ring = self.tenants.entry(tenant).or_default();
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(sample);
        }
    }

    pub fn get(&self, tenant: &str) -> Option<&VecDeque<TenantSample>> {
        self.tenants.get(tenant)
    }

    pub fn tenants(&self) -> usize {
        self.tenants.len()
    }

    /// Every tenant's samples, oldest first (for the state file).
    pub fn export(&self) -> Vec<(String, Vec<TenantSample>)> {
        let mut out: Vec<_> = self
            .tenants
            .iter()
            .map(|(tenant, ring)| (tenant.clone(), ring.iter().copied().collect()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores exported samples, within this history's bounds.
    pub fn restore(&mut self, saved: Vec<(String, Vec<TenantSample>)>) {
        for (tenant, samples) in saved {
            if self.tenants.len() >= self.max_tenants {
                break;
            }
            let skip = samples.len().saturating_sub(self.capacity);
            self.tenants
                .insert(tenant, samples.into_iter().skip(skip).collect());
        }
    }
}

/// The least-squares slope of `y` over `x` (units of y per unit of x), or
/// `None` with fewer than two distinct x values.
pub fn slope(points: impl IntoIterator<Item = (f64, f64)>) -> Option<f64> {
    let points: Vec<(f64, f64)> = points.into_iter().collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    Some(sxy / sxx)
}

/// The dimensions placement balances.
pub const DIMENSIONS: [&str; 3] = ["db_time", "connections", "size_bytes"];

/// A tenant's footprint on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    pub tenant: String,
    pub target: String,
    /// db time share, connections, size bytes.
    pub load: [f64; 3],
}

/// A suggested move and what it does to both targets' loads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Move {
    pub tenant: String,
    pub from: String,
    pub to: String,
    /// Per dimension: (from before, from after, to before, to after), as
    /// shares of the fleet's total.
    pub effect: BTreeMap<&'static str, [f64; 4]>,
}

/// Placement advice: the moves, and every target's load shares after them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    pub tolerance: f64,
    pub balanced_before: bool,
    pub balanced_after: bool,
    pub moves: Vec<Move>,
    /// Target -> per-dimension share of the fleet after the moves.
    pub shares_after: BTreeMap<String, BTreeMap<&'static str, f64>>,
}

/// The worst overload: max over targets and dimensions of
/// share / fair share - 1 (0 when every target is at or under fair share).
fn overload(loads: &BTreeMap<String, [f64; 3]>, totals: &[f64; 3]) -> f64 {
    let fair = 1.0 / loads.len().max(1) as f64;
    loads
        .values()
        .flat_map(|load| (0..3).map(move |d| (d, load[d])))
        .filter(|(d, _)| totals[*d] > 0.0)
        .map(|(d, value)| value / totals[d] / fair - 1.0)
        .fold(0.0, f64::max)
}

fn add_into(into: &mut [f64; 3], load: &[f64; 3], sign: f64) {
    for (sum, value) in into.iter_mut().zip(load) {
        *sum += sign * value;
    }
}

fn add(loads: &mut BTreeMap<String, [f64; 3]>, target: &str, load: &[f64; 3], sign: f64) {
    if let Some(sum) = loads.get_mut(target) {
        add_into(sum, load, sign);
    }
}

/// Suggests at most `max_moves` tenant moves so that every target's share of
/// every dimension is within `tolerance` above its fair share (1 / targets),
/// greedily taking the move that lowers the worst overload most.
pub fn place(
    targets: &[String],
    footprints: &[Footprint],
    tolerance: f64,
    max_moves: usize,
) -> Placement {
    let mut loads: BTreeMap<String, [f64; 3]> =
        targets.iter().map(|t| (t.clone(), [0.0; 3])).collect();
    let mut placed: Vec<Footprint> = footprints
        .iter()
        .filter(|f| loads.contains_key(&f.target))
        .cloned()
        .collect();
    let mut totals = [0.0; 3];
    for f in &placed {
        add(&mut loads, &f.target, &f.load, 1.0);
        add_into(&mut totals, &f.load, 1.0);
    }
    let balanced_before = overload(&loads, &totals) <= tolerance;
    let mut moves = Vec::new();
    while moves.len() < max_moves && loads.len() > 1 {
        let current = overload(&loads, &totals);
        if current <= tolerance {
            break;
        }
        let mut best: Option<(f64, usize, String)> = None;
        for (i, f) in placed.iter().enumerate() {
            for to in loads.keys().filter(|t| **t != f.target) {
                let mut trial = loads.clone();
                add(&mut trial, &f.target, &f.load, -1.0);
                add(&mut trial, to, &f.load, 1.0);
                let after = overload(&trial, &totals);
                if after < current - 1e-12 && best.as_ref().is_none_or(|(b, _, _)| after < *b) {
                    best = Some((after, i, to.clone()));
                }
            }
        }
        let Some((_, i, to)) = best else { break };
        let from = placed[i].target.clone();
        let share = |load: f64, d: usize| {
            if totals[d] > 0.0 {
                load / totals[d]
            } else {
                0.0
            }
        };
        let mut effect = BTreeMap::new();
        for (d, name) in DIMENSIONS.iter().enumerate() {
            let (from_before, to_before) = (loads[&from][d], loads[&to][d]);
            let moved = placed[i].load[d];
            effect.insert(
                *name,
                [
                    share(from_before, d),
                    share(from_before - moved, d),
                    share(to_before, d),
                    share(to_before + moved, d),
                ],
            );
        }
        let moved = placed[i].load;
        add(&mut loads, &from, &moved, -1.0);
        add(&mut loads, &to, &moved, 1.0);
        moves.push(Move {
            tenant: placed[i].tenant.clone(),
            from,
            to: to.clone(),
            effect,
        });
        placed[i].target = to;
    }
    let balanced_after = overload(&loads, &totals) <= tolerance;
    let shares_after = loads
        .iter()
        .map(|(target, load)| {
            let shares = DIMENSIONS
                .iter()
                .enumerate()
                .map(|(d, name)| {
                    (
                        *name,
                        if totals[d] > 0.0 {
                            load[d] / totals[d]
                        } else {
                            0.0
                        },
                    )
                })
                .collect();
            (target.clone(), shares)
        })
        .collect();
    Placement {
        tolerance,
        balanced_before,
        balanced_after,
        moves,
        shares_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_returns_the_exact_slope_of_a_linear_history() {
        // 1 MiB per minute for a day, sampled every minute.
        let points = (0..1440).map(|m| (1.7e9 + 60.0 * m as f64, 5e9 + 1048576.0 * m as f64));
        let per_second = slope(points).unwrap();
        assert!((per_second * 86400.0 - 1048576.0 * 1440.0).abs() < 1e-3);
        assert_eq!(slope([(1.0, 2.0)]), None);
        assert_eq!(slope([(1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn tenant_histories_are_bounded_in_length_and_tenants() {
        let mut h = TenantHistories::new(3, 2);
        let sample = |unix: f64| TenantSample {
            unix,
            queries: 0.0,
            db_time_share: 0.0,
            connections: 0.0,
            size_bytes: 0.0,
        };
        for i in 0..5 {
            h.record(vec![
                ("a".into(), sample(i as f64)),
                ("b".into(), sample(i as f64)),
                ("c".into(), sample(i as f64)),
            ]);
        }
        assert_eq!(h.tenants(), 2);
        assert_eq!(h.get("a").unwrap().len(), 3);
        assert!(h.get("c").is_none());
        // "a" goes away: its slot frees up for "c".
        h.record(vec![("b".into(), sample(9.0)), ("c".into(), sample(9.0))]);
        assert!(h.get("a").is_none());
        assert_eq!(h.get("c").unwrap().len(), 1);
    }

    #[test]
    fn history_is_bounded() {
        let mut h = History::new(3);
        for i in 0..10 {
            h.push(TargetSample {
                unix: i as f64,
                connections: 0.0,
                size_bytes: 0.0,
            });
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.samples().next().unwrap().unix, 7.0);
    }

    #[test]
    fn placement_brings_three_imbalanced_targets_within_tolerance() {
        let targets: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut footprints = Vec::new();
        // Everything on "a": 12 tenants of varied weight; "b" and "c" nearly empty.
        for i in 0..12 {
            footprints.push(Footprint {
                tenant: format!("t{i}"),
                target: "a".into(),
                load: [
                    0.05 + 0.01 * (i % 3) as f64,
                    3.0 + (i % 4) as f64,
                    1e9 * (1.0 + (i % 5) as f64),
                ],
            });
        }
        footprints.push(Footprint {
            tenant: "small_b".into(),
            target: "b".into(),
            load: [0.01, 1.0, 1e8],
        });
        footprints.push(Footprint {
            tenant: "small_c".into(),
            target: "c".into(),
            load: [0.01, 1.0, 1e8],
        });
        let placement = place(&targets, &footprints, 0.2, 50);
        assert!(!placement.balanced_before);
        assert!(placement.balanced_after, "{placement:#?}");
        assert!(!placement.moves.is_empty());
        for shares in placement.shares_after.values() {
            for share in shares.values() {
                assert!(*share <= (1.0 / 3.0) * 1.2 + 1e-9, "{placement:#?}");
            }
        }
        // A balanced fleet needs no move.
        let even = place(
            &targets,
            &[
                Footprint {
                    tenant: "x".into(),
                    target: "a".into(),
                    load: [1.0, 1.0, 1.0],
                },
                Footprint {
                    tenant: "y".into(),
                    target: "b".into(),
                    load: [1.0, 1.0, 1.0],
                },
                Footprint {
                    tenant: "z".into(),
                    target: "c".into(),
                    load: [1.0, 1.0, 1.0],
                },
            ],
            0.2,
            50,
        );
        assert!(even.balanced_before && even.moves.is_empty());
    }
}
