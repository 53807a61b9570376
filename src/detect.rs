//! Problematic-tenant detection: named rules evaluated every interval over
//! the tenant store and the targets' last polls, with hysteresis, and the
//! rate-limit advice that follows from the flags.
//!
//! A rule's condition must hold for its `for` before the flag is raised, and
//! stay false for its cool-down before the flag clears, so a tenant hovering
//! around a threshold does not flap. The detector is a plain struct driven
//! by [`Detector::evaluate`] with an explicit `now`, so tests replay
//! scenarios deterministically.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::collect::TargetStatus;
use crate::event::OVERFLOW_TENANT;
use crate::store::{BUCKET_COUNT, LATENCY_BUCKETS_SECONDS, StoreSnapshot};

/// The rules, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleName {
    DbTimeHog,
    LatencyOutlier,
    ErrorStorm,
    RateSpike,
    ConnectionHog,
    IdleInTransaction,
    LongQuery,
    LockBlocker,
    Bloat,
    RunawayGrowth,
}

impl RuleName {
    pub const ALL: [RuleName; 10] = [
        RuleName::DbTimeHog,
        RuleName::LatencyOutlier,
        RuleName::ErrorStorm,
        RuleName::RateSpike,
        RuleName::ConnectionHog,
        RuleName::IdleInTransaction,
        RuleName::LongQuery,
        RuleName::LockBlocker,
        RuleName::Bloat,
        RuleName::RunawayGrowth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleName::DbTimeHog => "db_time_hog",
            RuleName::LatencyOutlier => "latency_outlier",
            RuleName::ErrorStorm => "error_storm",
            RuleName::RateSpike => "rate_spike",
            RuleName::ConnectionHog => "connection_hog",
            RuleName::IdleInTransaction => "idle_in_transaction",
            RuleName::LongQuery => "long_query",
            RuleName::LockBlocker => "lock_blocker",
            RuleName::Bloat => "bloat",
            RuleName::RunawayGrowth => "runaway_growth",
        }
    }

    pub fn parse(text: &str) -> Option<RuleName> {
        RuleName::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn parse(text: &str) -> Option<Severity> {
        match text {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// One rule's knobs. What `threshold`, `min` and `factor` mean is the
/// rule's own (see `docs/detection.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSettings {
    pub enabled: bool,
    pub threshold: f64,
    pub min: f64,
    pub factor: f64,
    pub for_: Duration,
    pub cooldown: Duration,
    pub severity: Severity,
    /// Whether a raised flag tightens the tenant's rate limit.
    pub tighten: bool,
}

impl RuleSettings {
    /// The shipped defaults.
    pub fn default_for(rule: RuleName) -> RuleSettings {
        let s =
            |threshold: f64, min: f64, factor: f64, for_s: u64, severity, tighten| RuleSettings {
                enabled: true,
                threshold,
                min,
                factor,
                for_: Duration::from_secs(for_s),
                cooldown: Duration::from_secs(120),
                severity,
                tighten,
            };
        use Severity::*;
        match rule {
            // share >= max(threshold x fair share, min)
            RuleName::DbTimeHog => s(3.0, 0.2, 0.0, 120, Warning, true),
            // p95 >= factor x fleet median p95 and >= min seconds, >= threshold queries
            RuleName::LatencyOutlier => s(50.0, 0.25, 4.0, 120, Warning, true),
            // error ratio >= threshold with >= min errors
            RuleName::ErrorStorm => s(0.05, 20.0, 0.0, 60, Critical, false),
            // rate >= factor x baseline and >= min queries/s
            RuleName::RateSpike => s(0.0, 10.0, 5.0, 120, Warning, true),
            // connections >= max(threshold x max_connections, factor x fair share)
            RuleName::ConnectionHog => s(0.25, 0.0, 4.0, 60, Warning, true),
            // seconds idle in transaction >= threshold
            RuleName::IdleInTransaction => s(60.0, 0.0, 0.0, 0, Warning, false),
            // seconds running >= threshold
            RuleName::LongQuery => s(300.0, 0.0, 0.0, 0, Warning, false),
            // backends blocked >= threshold
            RuleName::LockBlocker => s(3.0, 0.0, 0.0, 30, Critical, false),
            // dead >= threshold x live and >= min dead
            RuleName::Bloat => s(0.2, 1_000_000.0, 0.0, 0, Warning, false),
            // growth >= threshold bytes/hour or >= factor (fraction) per day
            RuleName::RunawayGrowth => s(1024.0 * 1024.0 * 1024.0, 0.0, 0.5, 0, Warning, false),
        }
    }
}

/// Detector settings, reloadable.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectSettings {
    pub interval: Duration,
    /// Window for rates, error ratios and latency percentiles.
    pub window: Duration,
    /// Half-life of each tenant's query-rate baseline.
    pub baseline_half_life: Duration,
    pub rules: BTreeMap<RuleName, RuleSettings>,
    /// Advice never tightens a quota below this.
    pub floor_qps: f64,
    /// After a flag clears, the effective quota grows by this factor per
    /// interval until it is back at the base quota.
    pub relax_factor: f64,
}

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings {
            interval: Duration::from_secs(10),
            window: Duration::from_secs(60),
            baseline_half_life: Duration::from_secs(3600),
            rules: RuleName::ALL
                .into_iter()
                .map(|r| (r, RuleSettings::default_for(r)))
                .collect(),
            floor_qps: 1.0,
            relax_factor: 2.0,
        }
    }
}

/// A raised flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    pub tenant: String,
    pub reason: RuleName,
    pub severity: Severity,
    /// Unix seconds when the flag was raised.
    pub since: f64,
    pub value: f64,
    pub threshold: f64,
    /// The target the observation came from, for PostgreSQL-based rules.
    pub target: Option<String>,
}

/// A flag raised or cleared by one evaluation (logged once each).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Raised(Flag),
    Cleared(Flag),
}

/// A tenant's tightened quota.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    pub tenant: String,
    pub base_qps: f64,
    pub effective_qps: f64,
    /// The flag that caused it, or the one it is relaxing from.
    pub reason: RuleName,
    /// Unix seconds since the quota was first tightened.
    pub since: f64,
    /// True once the flag cleared and the quota is growing back.
    pub relaxing: bool,
}

/// One rule's verdict on one tenant in one evaluation.
#[derive(Debug, Clone, PartialEq)]
struct Observation {
    holds: bool,
    value: f64,
    threshold: f64,
    target: Option<String>,
}

#[derive(Debug, Default)]
struct RuleState {
    true_since: Option<Instant>,
    false_since: Option<Instant>,
    raised: Option<Flag>,
}

/// Cumulative query figures of a tenant (all kinds).
#[derive(Debug, Clone, Default)]
struct Cumulative {
    queries: f64,
    errors: f64,
    buckets: [f64; BUCKET_COUNT],
}

#[derive(Debug, Default, Clone, Copy)]
struct Baseline {
    rate: f64,
    samples: u32,
}

/// Size samples of one tenant on one target, at most one per
/// [`SIZE_SAMPLE_SPACING`], for the growth rule.
const SIZE_SAMPLE_SPACING: Duration = Duration::from_secs(15 * 60);
const SIZE_HISTORY: Duration = Duration::from_secs(26 * 3600);

/// Window figures of one tenant.
#[derive(Debug, Clone, Default)]
struct WindowFigures {
    queries: f64,
    errors: f64,
    rate: f64,
    p95_seconds: Option<f64>,
}

/// Quantile from per-bucket counts, interpolated as Prometheus'
/// `histogram_quantile` does.
pub fn quantile(q: f64, buckets: &[f64; BUCKET_COUNT]) -> Option<f64> {
    let total: f64 = buckets.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut cumulative = 0.0;
    for (i, count) in buckets.iter().enumerate() {
        let previous = cumulative;
        cumulative += count;
        if cumulative >= rank && *count > 0.0 {
            let Some(upper) = LATENCY_BUCKETS_SECONDS.get(i) else {
                return LATENCY_BUCKETS_SECONDS.last().copied();
            };
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BUCKETS_SECONDS[i - 1]
            };
            return Some(lower + (upper - lower) * (rank - previous) / count);
        }
    }
    LATENCY_BUCKETS_SECONDS.last().copied()
}

/// The detector.
#[derive(Debug)]
pub struct Detector {
    settings: DetectSettings,
    history: VecDeque<(Instant, HashMap<String, Cumulative>)>,
    baselines: HashMap<String, Baseline>,
    sizes: HashMap<(String, String), VecDeque<(Instant, u64)>>,
    states: HashMap<(String, RuleName), RuleState>,
    advice: BTreeMap<String, Advice>,
    last_evaluation: Option<Instant>,
    /// Query rate of each tenant over the last window.
    last_rates: HashMap<String, f64>,
}

impl Detector {
    pub fn new(settings: DetectSettings) -> Detector {
        Detector {
            settings,
            history: VecDeque::new(),
            baselines: HashMap::new(),
            sizes: HashMap::new(),
            states: HashMap::new(),
            advice: BTreeMap::new(),
            last_evaluation: None,
            last_rates: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &DetectSettings {
        &self.settings
    }

    /// Replaces the settings (SIGHUP); state and history are kept.
    pub fn set_settings(&mut self, settings: DetectSettings) {
        self.settings = settings;
    }

    /// The raised flags, by tenant then reason.
    pub fn flags(&self) -> Vec<Flag> {
        let mut flags: Vec<Flag> = self
            .states
            .values()
            .filter_map(|s| s.raised.clone())
            .collect();
        flags.sort_by(|a, b| (&a.tenant, a.reason).cmp(&(&b.tenant, b.reason)));
        flags
    }

    /// Tenants whose quota is tightened, with the effective qps.
    pub fn advice(&self) -> Vec<Advice> {
        self.advice.values().cloned().collect()
    }

    fn window_figures(
        &mut self,
        now: Instant,
        store: &StoreSnapshot,
    ) -> HashMap<String, WindowFigures> {
        let mut current: HashMap<String, Cumulative> = HashMap::with_capacity(store.tenants.len());
        for tenant in &store.tenants {
            let mut c = Cumulative::default();
            for totals in tenant.kinds.iter().flatten() {
                c.queries += totals.queries;
                c.errors += totals.errors;
                for (mine, theirs) in c.buckets.iter_mut().zip(&totals.buckets) {
                    *mine += theirs;
                }
            }
            current.insert(tenant.tenant.clone(), c);
        }
        // Keep just enough history to reach one window back.
        let horizon = self.settings.window + self.settings.interval / 2;
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
                    let zero = Cumulative::default();
                    let old_c = old.get(tenant).unwrap_or(&zero);
                    let mut buckets = [0.0; BUCKET_COUNT];
                    for (i, b) in buckets.iter_mut().enumerate() {
                        *b = (now_c.buckets[i] - old_c.buckets[i]).max(0.0);
                    }
                    let queries = (now_c.queries - old_c.queries).max(0.0);
                    figures.insert(
                        tenant.clone(),
                        WindowFigures {
                            queries,
                            errors: (now_c.errors - old_c.errors).max(0.0),
                            rate: queries / seconds,
                            p95_seconds: quantile(0.95, &buckets),
                        },
                    );
                }
            }
        }
        self.history.push_back((now, current));
        figures
    }

    fn observe(
        &mut self,
        now: Instant,
        store: &StoreSnapshot,
        targets: &[TargetStatus],
    ) -> HashMap<(String, RuleName), Observation> {
        let mut seen: HashMap<(String, RuleName), Observation> = HashMap::new();
        let rules = self.settings.rules.clone();
        let rule = |name: RuleName| rules.get(&name).filter(|r| r.enabled);
        let mut put = |tenant: &str,
                       name: RuleName,
                       holds: bool,
                       value: f64,
                       threshold: f64,
                       target: Option<&str>| {
            let key = (tenant.to_owned(), name);
            // With several targets, a tenant's worst observation counts.
            let replace = match seen.get(&key) {
                None => true,
                Some(old) => (holds && !old.holds) || (holds == old.holds && value > old.value),
            };
            if replace {
                seen.insert(
                    key,
                    Observation {
                        holds,
                        value,
                        threshold,
                        target: target.map(str::to_owned),
                    },
                );
            }
        };

        // From application events.
        let tenants: Vec<_> = store
            .tenants
            .iter()
            .filter(|t| t.tenant != OVERFLOW_TENANT)
            .collect();
        if let Some(r) = rule(RuleName::DbTimeHog) {
            let active = tenants.iter().filter(|t| t.window_db_time_ms > 0.0).count();
            if active > 0 {
                let threshold = (r.threshold / active as f64).max(r.min);
                for t in &tenants {
                    put(
                        &t.tenant,
                        RuleName::DbTimeHog,
                        t.db_time_share >= threshold,
                        t.db_time_share,
                        threshold,
                        None,
                    );
                }
            }
        }
        let figures = self.window_figures(now, store);
        self.last_rates = figures
            .iter()
            .filter(|(t, f)| *t != OVERFLOW_TENANT && f.rate > 0.0)
            .map(|(t, f)| (t.clone(), f.rate))
            .collect();
        if let Some(r) = rule(RuleName::LatencyOutlier) {
            let mut p95s: Vec<f64> = figures
                .iter()
                .filter(|(t, f)| *t != OVERFLOW_TENANT && f.queries >= r.threshold)
                .filter_map(|(_, f)| f.p95_seconds)
                .collect();
            p95s.sort_by(f64::total_cmp);
            if let Some(median) = p95s.get(p95s.len() / 2).copied() {
                let threshold = (r.factor * median).max(r.min);
                for (tenant, f) in &figures {
                    if let Some(p95) = f.p95_seconds.filter(|_| f.queries >= r.threshold) {
                        put(
                            tenant,
                            RuleName::LatencyOutlier,
                            p95 >= threshold,
                            p95,
                            threshold,
                            None,
                        );
                    }
                }
            }
        }
        if let Some(r) = rule(RuleName::ErrorStorm) {
            for (tenant, f) in &figures {
                let ratio = if f.queries > 0.0 {
                    f.errors / f.queries
                } else {
                    0.0
                };
                put(
                    tenant,
                    RuleName::ErrorStorm,
                    ratio >= r.threshold && f.errors >= r.min,
                    ratio,
                    r.threshold,
                    None,
                );
            }
        }
        if let Some(r) = rule(RuleName::RateSpike) {
            let dt = self
                .last_evaluation
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or(self.settings.interval);
            let alpha = 1.0
                - 0.5f64.powf(
                    dt.as_secs_f64() / self.settings.baseline_half_life.as_secs_f64().max(1.0),
                );
            // A baseline needs a window's worth of samples before it judges.
            let warm = (self.settings.window.as_secs_f64()
                / self.settings.interval.as_secs_f64().max(0.001))
            .ceil() as u32;
            for (tenant, f) in &figures {
                let baseline = self.baselines.entry(tenant.clone()).or_insert(Baseline {
                    rate: f.rate,
                    samples: 0,
                });
                if baseline.samples >= warm {
                    let threshold = (r.factor * baseline.rate).max(r.min);
                    put(
                        tenant,
                        RuleName::RateSpike,
                        f.rate >= threshold,
                        f.rate,
                        threshold,
                        None,
                    );
                }
                baseline.rate += alpha * (f.rate - baseline.rate);
                baseline.samples = baseline.samples.saturating_add(1);
            }
            self.baselines
                .retain(|tenant, _| figures.contains_key(tenant));
        }

        // From the targets' last polls.
        for target in targets.iter().filter(|t| t.up) {
            let name = target.name.as_str();
            if let Some(activity) = &target.activity {
                if let Some(r) = rule(RuleName::ConnectionHog) {
                    let counts: Vec<(&String, u64)> = activity
                        .tenants
                        .iter()
                        .map(|(t, a)| (t, a.connections.values().sum()))
                        .collect();
                    let total: u64 = counts.iter().map(|(_, c)| c).sum();
                    if !counts.is_empty() {
                        let fair = total as f64 / counts.len() as f64;
                        let max = target.max_connections.unwrap_or(100) as f64;
                        let threshold = (r.threshold * max).max(r.factor * fair);
                        for (tenant, c) in counts {
                            put(
                                tenant,
                                RuleName::ConnectionHog,
                                c as f64 >= threshold,
                                c as f64,
                                threshold,
                                Some(name),
                            );
                        }
                    }
                }
                for (tenant, a) in &activity.tenants {
                    if let Some(r) = rule(RuleName::IdleInTransaction) {
                        let v = a.idle_in_transaction_max_seconds;
                        put(
                            tenant,
                            RuleName::IdleInTransaction,
                            v >= r.threshold,
                            v,
                            r.threshold,
                            Some(name),
                        );
                    }
                    if let Some(r) = rule(RuleName::LongQuery) {
                        let v = a.longest_query_seconds;
                        put(
                            tenant,
                            RuleName::LongQuery,
                            v >= r.threshold,
                            v,
                            r.threshold,
                            Some(name),
                        );
                    }
                    if let Some(r) = rule(RuleName::LockBlocker) {
                        let v = a.blocking as f64;
                        put(
                            tenant,
                            RuleName::LockBlocker,
                            v >= r.threshold,
                            v,
                            r.threshold,
                            Some(name),
                        );
                    }
                }
            }
            if let Some(schemas) = &target.schemas {
                for (tenant, s) in schemas.iter() {
                    if let Some(r) = rule(RuleName::Bloat) {
                        let dead = s.n_dead_tup as f64;
                        let ratio = if s.n_live_tup > 0 {
                            dead / s.n_live_tup as f64
                        } else if dead > 0.0 {
                            f64::INFINITY
                        } else {
                            0.0
                        };
                        put(
                            tenant,
                            RuleName::Bloat,
                            ratio >= r.threshold && dead >= r.min,
                            ratio.min(1e9),
                            r.threshold,
                            Some(name),
                        );
                    }
                    let size = target
                        .exact_sizes
                        .as_ref()
                        .and_then(|sizes| sizes.get(tenant).copied())
                        .unwrap_or(s.estimated_bytes);
                    let samples = self
                        .sizes
                        .entry((name.to_owned(), tenant.clone()))
                        .or_default();
                    if samples.back().is_none_or(|(t, _)| {
                        now.saturating_duration_since(*t) >= SIZE_SAMPLE_SPACING
                    }) {
                        samples.push_back((now, size));
                    }
                    while samples
                        .front()
                        .is_some_and(|(t, _)| now.saturating_duration_since(*t) > SIZE_HISTORY)
                    {
                        samples.pop_front();
                    }
                    if let Some(r) = rule(RuleName::RunawayGrowth) {
                        let per_hour = samples
                            .iter()
                            .rev()
                            .find(|(t, _)| {
                                now.saturating_duration_since(*t) >= Duration::from_secs(45 * 60)
                            })
                            .map(|(t, old)| {
                                (size as f64 - *old as f64)
                                    / now.saturating_duration_since(*t).as_secs_f64()
                                    * 3600.0
                            });
                        let per_day = samples
                            .iter()
                            .rev()
                            .find(|(t, _)| {
                                now.saturating_duration_since(*t) >= Duration::from_secs(20 * 3600)
                            })
                            .filter(|(_, old)| *old > 0)
                            .map(|(t, old)| {
                                (size as f64 - *old as f64)
                                    / *old as f64
                                    / now.saturating_duration_since(*t).as_secs_f64()
                                    * 86400.0
                            });
                        if per_hour.is_some() || per_day.is_some() {
                            let hourly = per_hour.unwrap_or(0.0);
                            let daily = per_day.unwrap_or(0.0);
                            let holds = hourly >= r.threshold || daily >= r.factor;
                            put(
                                tenant,
                                RuleName::RunawayGrowth,
                                holds,
                                hourly,
                                r.threshold,
                                Some(name),
                            );
                        }
                    }
                }
            }
        }
        self.last_evaluation = Some(now);
        seen
    }

    /// Evaluates every rule at `now` (`wall` is the same instant as Unix
    /// time, for the flags' `since`). Returns the flags raised and cleared.
    /// `base_qps` gives each tenant's configured quota, for the advice.
    pub fn evaluate(
        &mut self,
        now: Instant,
        wall: SystemTime,
        store: &StoreSnapshot,
        targets: &[TargetStatus],
        base_qps: impl Fn(&str) -> f64,
    ) -> Vec<Transition> {
        let wall_s = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut observations = self.observe(now, store, targets);
        let mut transitions = Vec::new();
        // Rules that did not observe a tenant this time count as false.
        let keys: Vec<(String, RuleName)> = self.states.keys().cloned().collect();
        for key in keys {
            observations.entry(key).or_insert(Observation {
                holds: false,
                value: 0.0,
                threshold: 0.0,
                target: None,
            });
        }
        for ((tenant, rule), obs) in observations {
            let Some(settings) = self.settings.rules.get(&rule).cloned() else {
                continue;
            };
            let state = self.states.entry((tenant.clone(), rule)).or_default();
            if obs.holds && settings.enabled {
                state.false_since = None;
                let since = *state.true_since.get_or_insert(now);
                match &mut state.raised {
                    Some(flag) => {
                        flag.value = obs.value;
                        flag.threshold = obs.threshold;
                    }
                    None if now.saturating_duration_since(since) >= settings.for_ => {
                        let flag = Flag {
                            tenant: tenant.clone(),
                            reason: rule,
                            severity: settings.severity,
                            since: wall_s,
                            value: obs.value,
                            threshold: obs.threshold,
                            target: obs.target.clone(),
                        };
                        transitions.push(Transition::Raised(flag.clone()));
                        state.raised = Some(flag);
                    }
                    None => {}
                }
            } else {
                state.true_since = None;
                if state.raised.is_some() {
                    let since = *state.false_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= settings.cooldown
                        || !settings.enabled
                    {
                        if let Some(flag) = state.raised.take() {
                            transitions.push(Transition::Cleared(flag));
                        }
                        state.false_since = None;
                    }
                }
            }
        }
        self.states
            .retain(|_, s| s.raised.is_some() || s.true_since.is_some());
        self.update_advice(wall_s, base_qps);
        transitions
    }

    /// Tightens flagged tenants towards a fair share of the current total
    /// query rate (never below the floor, never above their quota), and
    /// relaxes the others step by step.
    fn update_advice(&mut self, wall_s: f64, base_qps: impl Fn(&str) -> f64) {
        let total_rate: f64 = self.last_rates.values().sum();
        let fair = if self.last_rates.is_empty() {
            f64::INFINITY
        } else {
            total_rate / self.last_rates.len() as f64
        };
        let mut tightening: BTreeMap<String, RuleName> = BTreeMap::new();
        for ((tenant, rule), state) in &self.states {
            if state.raised.is_some() && self.settings.rules.get(rule).is_some_and(|r| r.tighten) {
                tightening.entry(tenant.clone()).or_insert(*rule);
            }
        }
        for (tenant, rule) in &tightening {
            let base = base_qps(tenant);
            let target = fair.min(base).max(self.settings.floor_qps.min(base));
            let entry = self.advice.entry(tenant.clone()).or_insert(Advice {
                tenant: tenant.clone(),
                base_qps: base,
                effective_qps: target,
                reason: *rule,
                since: wall_s,
                relaxing: false,
            });
            entry.base_qps = base;
            entry.effective_qps = if entry.relaxing {
                entry.effective_qps.min(target)
            } else {
                target
            };
            entry.relaxing = false;
        }
        let relax = self.settings.relax_factor.max(1.01);
        self.advice.retain(|tenant, advice| {
            if tightening.contains_key(tenant) {
                return true;
            }
            advice.relaxing = true;
            advice.base_qps = base_qps(tenant);
            advice.effective_qps *= relax;
            advice.effective_qps < advice.base_qps
        });
    }
}

/// What readers (the API, the exposition) see of the detector: the flags and
/// advice of its last evaluation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Judgement {
    pub flags: Vec<Flag>,
    pub advice: Vec<Advice>,
}

/// Shared handle on the last judgement.
pub type SharedJudgement = std::sync::Arc<std::sync::RwLock<std::sync::Arc<Judgement>>>;

pub fn read_judgement(shared: &SharedJudgement) -> std::sync::Arc<Judgement> {
    shared
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::queries::{ActivitySnapshot, SchemaTotals, TenantActivity};
    use crate::event::{Event, QueryKind, Sample};
    use crate::store::{ManualClock, Store, StoreLimits};
    use std::borrow::Cow;
    use std::sync::Arc;

    const TICK: Duration = Duration::from_secs(10);

    /// A fleet of `n` tenants with Zipf-like skew (tenant i weighs 1/(i+1)),
    /// realistic latencies and a 0.5% error rate, on one healthy target.
    struct Fleet {
        store: Store,
        clock: Arc<ManualClock>,
        start: Instant,
        elapsed: Duration,
        detector: Detector,
        tenants: usize,
        target: TargetStatus,
        transitions: Vec<(Duration, Transition)>,
    }

    fn query(tenant: &str, duration_ms: f64, weight: f64, error: bool) -> Event<'_> {
        Event {
            tenant: Cow::Borrowed(tenant),
            kind: QueryKind::Read,
            sample: Sample::Query {
                duration_ms,
                rows: 1.0,
                error,
                weight,
            },
        }
    }

    impl Fleet {
        fn new(tenants: usize) -> Fleet {
            let clock = Arc::new(ManualClock::default());
            let store = Store::new(
                1,
                StoreLimits {
                    max_tenants: 10_000,
                    tenant_idle_ttl: Duration::from_secs(3600),
                    share_window: Duration::from_secs(60),
                },
                clock.clone(),
            );
            let mut activity = ActivitySnapshot::default();
            let mut schemas = BTreeMap::new();
            for i in 0..tenants {
                let name = format!("t{i}");
                let mut a = TenantActivity::default();
                a.connections.insert("idle", 1 + (i % 3) as u64);
                a.idle_in_transaction_max_seconds = if i % 10 == 0 { 2.0 } else { 0.0 };
                a.longest_query_seconds = 0.05;
                activity.tenants.insert(name.clone(), a);
                schemas.insert(
                    name,
                    SchemaTotals {
                        n_live_tup: 100_000 * (1 + i as u64 % 5),
                        n_dead_tup: 3_000,
                        estimated_bytes: 50_000_000,
                        ..SchemaTotals::default()
                    },
                );
            }
            let target = TargetStatus {
                name: "main".into(),
                up: true,
                max_connections: Some(1000),
                activity: Some(Arc::new(activity)),
                schemas: Some(Arc::new(schemas)),
                ..TargetStatus::default()
            };
            Fleet {
                store,
                clock,
                start: Instant::now(),
                elapsed: Duration::ZERO,
                detector: Detector::new(DetectSettings::default()),
                tenants,
                target,
                transitions: Vec::new(),
            }
        }

        /// Ten seconds of healthy traffic, plus whatever `extra` records.
        fn tick(&mut self, extra: impl Fn(&mut crate::store::ShardWriter<'_>)) {
            self.clock.advance(TICK);
            self.elapsed += TICK;
            {
                let mut w = self.store.writer(0);
                for i in 0..self.tenants {
                    let name = format!("t{i}");
                    // 100 queries/s for the biggest tenant, down the tail.
                    let queries = 1000.0 / (i + 1) as f64;
                    let fast = (queries * 0.9).max(0.0);
                    w.record(&query(&name, 4.0 + (i % 7) as f64, fast, false));
                    w.record(&query(
                        &name,
                        40.0 + (i % 5) as f64 * 10.0,
                        queries * 0.095,
                        false,
                    ));
                    w.record(&query(&name, 30.0, queries * 0.005, true));
                }
                extra(&mut w);
            }
            let snapshot = self.store.snapshot();
            let now = self.start + self.elapsed;
            let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.elapsed;
            let targets = [self.target.clone()];
            for t in self
                .detector
                .evaluate(now, wall, &snapshot, &targets, |_| 100.0)
            {
                self.transitions.push((self.elapsed, t));
            }
        }

        fn run(&mut self, ticks: usize, extra: impl Fn(&mut crate::store::ShardWriter<'_>)) {
            for _ in 0..ticks {
                self.tick(&extra);
            }
        }

        fn raised(&self, rule: RuleName) -> Vec<(Duration, String)> {
            self.transitions
                .iter()
                .filter_map(|(at, t)| match t {
                    Transition::Raised(f) if f.reason == rule => Some((*at, f.tenant.clone())),
                    _ => None,
                })
                .collect()
        }

        fn activity(&mut self, tenant: &str, change: impl FnOnce(&mut TenantActivity)) {
            let mut activity = (**self.target.activity.as_ref().unwrap()).clone();
            change(activity.tenants.entry(tenant.to_owned()).or_default());
            self.target.activity = Some(Arc::new(activity));
        }

        fn schema(&mut self, tenant: &str, change: impl FnOnce(&mut SchemaTotals)) {
            let mut schemas = (**self.target.schemas.as_ref().unwrap()).clone();
            change(schemas.entry(tenant.to_owned()).or_default());
            self.target.schemas = Some(Arc::new(schemas));
        }
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let mut buckets = [0.0; BUCKET_COUNT];
        buckets[4] = 100.0; // (0.005, 0.01]
        assert!((quantile(0.5, &buckets).unwrap() - 0.0075).abs() < 1e-12);
        buckets[15] = 100.0; // +Inf
        assert_eq!(quantile(0.99, &buckets), Some(30.0));
        assert_eq!(quantile(0.5, &[0.0; BUCKET_COUNT]), None);
    }

    #[test]
    fn a_healthy_fleet_of_200_skewed_tenants_stays_silent() {
        let mut fleet = Fleet::new(200);
        fleet.run(90, |_| {});
        assert!(fleet.transitions.is_empty(), "{:?}", fleet.transitions);
        assert!(fleet.detector.advice().is_empty());
    }

    #[test]
    fn db_time_hog_fires_after_its_for_and_tightens() {
        let mut fleet = Fleet::new(200);
        fleet.run(20, |_| {});
        // 200 slow queries/s: several times everyone else's database time.
        fleet.run(20, |w| w.record(&query("t150", 500.0, 2000.0, false)));
        let raised = fleet.raised(RuleName::DbTimeHog);
        assert_eq!(raised.len(), 1, "{:?}", fleet.transitions);
        assert_eq!(raised[0].1, "t150");
        // Held from the first hot tick (200 s) for 2m; the window fills over 60 s.
        assert!(raised[0].0 >= Duration::from_secs(320) && raised[0].0 <= Duration::from_secs(400));
        let advice = fleet.detector.advice();
        assert_eq!(advice.len(), 1);
        assert!(advice[0].effective_qps < 100.0 && advice[0].effective_qps >= 1.0);
        assert_eq!(
            fleet
                .raised(RuleName::LatencyOutlier)
                .iter()
                .filter(|(_, t)| t != "t150")
                .count(),
            0
        );
    }

    #[test]
    fn latency_outlier_fires() {
        let mut fleet = Fleet::new(200);
        fleet.run(10, |_| {});
        fleet.run(20, |w| w.record(&query("t40", 2000.0, 20.0, false)));
        let raised = fleet.raised(RuleName::LatencyOutlier);
        assert_eq!(
            raised.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            ["t40"]
        );
    }

    #[test]
    fn error_storm_fires() {
        let mut fleet = Fleet::new(200);
        fleet.run(10, |_| {});
        fleet.run(12, |w| w.record(&query("t3", 10.0, 50.0, true)));
        let raised = fleet.raised(RuleName::ErrorStorm);
        assert_eq!(
            raised.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            ["t3"]
        );
    }

    #[test]
    fn rate_spike_fires_against_the_tenants_own_baseline() {
        let mut fleet = Fleet::new(200);
        fleet.run(30, |_| {});
        // t100 normally runs 1 query/s; now 100/s of fast queries.
        fleet.run(20, |w| w.record(&query("t100", 1.0, 1000.0, false)));
        let raised = fleet.raised(RuleName::RateSpike);
        assert_eq!(
            raised.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            ["t100"]
        );
    }

    #[test]
    fn connection_hog_fires() {
        let mut fleet = Fleet::new(200);
        fleet.activity("t7", |a| {
            a.connections.insert("active", 300);
        });
        fleet.run(10, |_| {});
        let raised = fleet.raised(RuleName::ConnectionHog);
        assert_eq!(
            raised.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            ["t7"]
        );
        assert!(raised[0].0 >= Duration::from_secs(60));
    }

    #[test]
    fn session_rules_fire() {
        let mut fleet = Fleet::new(200);
        fleet.activity("t1", |a| a.idle_in_transaction_max_seconds = 61.0);
        fleet.activity("t2", |a| a.longest_query_seconds = 301.0);
        fleet.activity("t3", |a| a.blocking = 3);
        fleet.run(5, |_| {});
        assert_eq!(
            fleet
                .raised(RuleName::IdleInTransaction)
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>(),
            ["t1"]
        );
        assert_eq!(
            fleet
                .raised(RuleName::LongQuery)
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>(),
            ["t2"]
        );
        let blockers = fleet.raised(RuleName::LockBlocker);
        assert_eq!(
            blockers.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
            ["t3"]
        );
        assert!(
            blockers[0].0 >= Duration::from_secs(40),
            "after its 30 s for"
        );
    }

    #[test]
    fn bloat_fires() {
        let mut fleet = Fleet::new(200);
        fleet.schema("t9", |s| {
            s.n_live_tup = 5_000_000;
            s.n_dead_tup = 2_000_000;
        });
        fleet.schema("t10", |s| {
            // A high ratio on a small table is not bloat worth a flag.
            s.n_live_tup = 1_000;
            s.n_dead_tup = 900;
        });
        fleet.run(3, |_| {});
        assert_eq!(
            fleet
                .raised(RuleName::Bloat)
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>(),
            ["t9"]
        );
    }

    #[test]
    fn runaway_growth_fires() {
        let mut fleet = Fleet::new(20);
        // 90 minutes of 15-minute steps: t5 grows 2 GiB per hour.
        for step in 0..7u64 {
            fleet.schema("t5", |s| {
                s.estimated_bytes = 1_000_000_000 + step * 512 * 1024 * 1024
            });
            fleet.clock.advance(Duration::from_secs(15 * 60) - TICK);
            fleet.elapsed += Duration::from_secs(15 * 60) - TICK;
            fleet.tick(|_| {});
        }
        assert_eq!(
            fleet
                .raised(RuleName::RunawayGrowth)
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>(),
            ["t5"]
        );
    }

    #[test]
    fn a_flag_does_not_flap_around_its_threshold() {
        let mut fleet = Fleet::new(50);
        // Idle in transaction alternating just above and below 60 s every tick.
        for i in 0..30 {
            fleet.activity("t4", |a| {
                a.idle_in_transaction_max_seconds = if i % 2 == 0 { 61.0 } else { 59.0 }
            });
            fleet.tick(|_| {});
        }
        let changes: Vec<_> = fleet
            .transitions
            .iter()
            .filter(|(_, t)| matches!(t, Transition::Raised(f) | Transition::Cleared(f) if f.tenant == "t4"))
            .collect();
        assert_eq!(
            changes.len(),
            1,
            "raised once, never cleared while it hovers: {changes:?}"
        );
        // Below the threshold for the whole cool-down: cleared, once.
        fleet.activity("t4", |a| a.idle_in_transaction_max_seconds = 0.0);
        fleet.run(13, |_| {});
        let cleared = fleet
            .transitions
            .iter()
            .filter(|(_, t)| matches!(t, Transition::Cleared(f) if f.tenant == "t4"))
            .count();
        assert_eq!(cleared, 1);
        assert!(fleet.detector.flags().is_empty());
    }

    #[test]
    fn advice_relaxes_step_by_step_after_the_flag_clears() {
        let mut fleet = Fleet::new(50);
        fleet.run(10, |_| {});
        fleet.run(22, |w| w.record(&query("t30", 500.0, 2000.0, false)));
        let tightened = fleet.detector.advice()[0].effective_qps;
        assert!(tightened < 100.0);
        // Healthy again: after the 2m cool-down the quota doubles per tick.
        let mut seen = Vec::new();
        for _ in 0..30 {
            fleet.tick(|_| {});
            seen.push(
                fleet
                    .detector
                    .advice()
                    .first()
                    .map(|a| (a.effective_qps, a.relaxing)),
            );
        }
        let relaxing: Vec<f64> = seen
            .iter()
            .flatten()
            .filter(|(_, r)| *r)
            .map(|(q, _)| *q)
            .collect();
        assert!(relaxing.len() >= 2, "{seen:?}");
        assert!(
            relaxing
                .windows(2)
                .all(|w| (w[1] - 2.0 * w[0]).abs() < 1e-9)
        );
        assert_eq!(seen.last(), Some(&None), "back to the base quota");
    }

    #[test]
    fn a_disabled_rule_never_fires() {
        let mut fleet = Fleet::new(20);
        let mut settings = DetectSettings::default();
        settings
            .rules
            .get_mut(&RuleName::IdleInTransaction)
            .unwrap()
            .enabled = false;
        fleet.detector.set_settings(settings);
        fleet.activity("t1", |a| a.idle_in_transaction_max_seconds = 600.0);
        fleet.run(5, |_| {});
        assert!(fleet.raised(RuleName::IdleInTransaction).is_empty());
    }
}
