//! The rules: one pure function each, from a typed input (window figures, a
//! target's snapshot, the rule's settings) to one [`Verdict`] per tenant
//! judged. No rule keeps state or sees another rule's result; the detector
//! gathers the inputs and applies hysteresis.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::inputs::{Baseline, WindowFigures};
use super::settings::RuleSettings;
use crate::event::OVERFLOW_TENANT;
use crate::store::{ActivitySnapshot, SchemaTotals, TenantActivity, TenantPools, TenantSnapshot};

/// One rule's verdict on one tenant in one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub tenant: String,
    pub holds: bool,
    pub value: f64,
    pub threshold: f64,
}

impl Verdict {
    fn new(tenant: &str, holds: bool, value: f64, threshold: f64) -> Verdict {
        Verdict {
            tenant: tenant.to_owned(),
            holds,
            value,
            threshold,
        }
    }
}

/// One tenant's database time over the window, as `db_time_hog` reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbTime<'a> {
    pub tenant: &'a str,
    /// Its share of every tenant's database time over the window.
    pub share: f64,
    /// Its database time over the window per second of the window: the
    /// sessions it kept busy on average.
    pub load: f64,
}

/// `db_time_hog`: share of the fleet's reported database time over the
/// window >= max(`threshold` x the mean share of the *other* active
/// tenants, `min`), and the tenant's load (database seconds per second over
/// the window) >= `factor`. Leave-one-out: the tenant judged is not part of
/// its own reference, so a hog among few tenants cannot raise its own bar
/// (with the subject included, three tenants could never have a hog: 3 x
/// 1/3 = 1). A tenant with no other active tenant is not judged: a share
/// is relative. The load floor keeps a quiet fleet's largest tenant from
/// being a hog of nothing: with every other tenant quiet, a tenant's few
/// milliseconds are a large share of a tiny total (found by the soak, issue
/// 26).
pub fn db_time_hog(
    r: &RuleSettings,
    tenants: &[&TenantSnapshot],
    window: Duration,
) -> Vec<Verdict> {
    let seconds = window.as_secs_f64().max(f64::MIN_POSITIVE);
    let times: Vec<DbTime<'_>> = tenants
        .iter()
        .map(|t| {
            let share = if t.window_db_time_ms > 0.0 {
                t.db_time_share
            } else {
                0.0
            };
            DbTime {
                tenant: t.tenant.as_str(),
                share,
                load: t.window_db_time_ms / 1000.0 / seconds,
            }
        })
        .collect();
    db_time_hog_from_shares(r, &times)
}

/// `db_time_hog` on each tenant's share and load of database time (this
/// replica's or the fleet's), as [`db_time_hog`] judges it.
pub fn db_time_hog_from_shares(r: &RuleSettings, times: &[DbTime<'_>]) -> Vec<Verdict> {
    hog_verdicts(r, times, |_| true)
}

/// `db_time_hog` on server-side figures: each tenant's share of the
/// statement time `pg_stat_statements` counted over the `window` (role and
/// database rules), judged for the tenants `judged` accepts (those that
/// send no events; the others are judged on their events).
pub fn db_time_hog_from_statements(
    r: &RuleSettings,
    window_seconds: &HashMap<String, f64>,
    window: Duration,
    judged: impl Fn(&str) -> bool,
) -> Vec<Verdict> {
    let total: f64 = window_seconds.values().filter(|s| **s > 0.0).sum();
    if total <= 0.0 {
        return Vec::new();
    }
    let span = window.as_secs_f64().max(f64::MIN_POSITIVE);
    let times: Vec<DbTime<'_>> = window_seconds
        .iter()
        .filter(|(tenant, _)| *tenant != OVERFLOW_TENANT)
        .map(|(tenant, seconds)| DbTime {
            tenant: tenant.as_str(),
            share: seconds.max(0.0) / total,
            load: seconds.max(0.0) / span,
        })
        .collect();
    hog_verdicts(r, &times, judged)
}

/// Leave-one-out: each judged tenant's share against `threshold` x the mean
/// share of the *other* active tenants (at least `min`), and its load
/// against `factor`; not judged without another active tenant.
fn hog_verdicts(
    r: &RuleSettings,
    times: &[DbTime<'_>],
    judged: impl Fn(&str) -> bool,
) -> Vec<Verdict> {
    let active = times.iter().filter(|t| t.share > 0.0).count();
    let total_share: f64 = times.iter().map(|t| t.share.max(0.0)).sum();
    times
        .iter()
        .filter(|t| judged(t.tenant))
        .filter_map(|t| {
            let is_active = t.share > 0.0;
            let others = active - usize::from(is_active);
            if others == 0 {
                return None;
            }
            let others_mean = (total_share - t.share.max(0.0)).max(0.0) / others as f64;
            let threshold = (r.threshold * others_mean).max(r.min);
            let holds = t.share >= threshold && t.load >= r.factor;
            Some(Verdict::new(t.tenant, holds, t.share, threshold))
        })
        .collect()
}

/// `latency_outlier`: window p95 >= max(`factor` x the median p95 of the
/// *other* judged tenants, `min` seconds), judged for tenants with at least
/// `threshold` queries. Leave-one-out: a slow tenant among few is not part
/// of the median it is compared with; a tenant judged alone is not judged.
pub fn latency_outlier(r: &RuleSettings, figures: &HashMap<String, WindowFigures>) -> Vec<Verdict> {
    let judged = |f: &WindowFigures| f.p95_seconds.filter(|_| f.queries >= r.threshold);
    let mut p95s: Vec<f64> = figures
        .iter()
        .filter(|(t, _)| *t != OVERFLOW_TENANT)
        .filter_map(|(_, f)| judged(f))
        .collect();
    p95s.sort_by(f64::total_cmp);
    figures
        .iter()
        .filter(|(t, _)| *t != OVERFLOW_TENANT)
        .filter_map(|(tenant, f)| {
            let p95 = judged(f)?;
            let median = median_without(&p95s, p95)?;
            let threshold = (r.factor * median).max(r.min);
            Some(Verdict::new(tenant, p95 >= threshold, p95, threshold))
        })
        .collect()
}

/// The median of `sorted` with one occurrence of `own` left out (the
/// upper median for an even count, as before); `None` when nothing is left.
fn median_without(sorted: &[f64], own: f64) -> Option<f64> {
    let others = sorted.len().checked_sub(1).filter(|n| *n > 0)?;
    let at = sorted.partition_point(|v| v.total_cmp(&own).is_lt());
    let index = others / 2;
    // Skip the subject's position: indexes at or past it shift by one.
    let index = if index >= at { index + 1 } else { index };
    sorted.get(index).copied()
}

/// `error_storm`: error ratio over the window >= `threshold` with at least
/// `min` errors.
pub fn error_storm(r: &RuleSettings, figures: &HashMap<String, WindowFigures>) -> Vec<Verdict> {
    figures
        .iter()
        .map(|(tenant, f)| {
            let ratio = if f.queries > 0.0 {
                f.errors / f.queries
            } else {
                0.0
            };
            Verdict::new(
                tenant,
                ratio >= r.threshold && f.errors >= r.min,
                ratio,
                r.threshold,
            )
        })
        .collect()
}

/// `rate_spike`: query rate >= max(`factor` x the tenant's own baseline,
/// `min` queries/s), once the baseline has `warm` samples.
pub fn rate_spike(
    r: &RuleSettings,
    figures: &HashMap<String, WindowFigures>,
    baselines: &HashMap<String, Baseline>,
    warm: u32,
) -> Vec<Verdict> {
    figures
        .iter()
        .filter_map(|(tenant, f)| {
            let baseline = baselines.get(tenant).filter(|b| b.samples >= warm)?;
            let threshold = (r.factor * baseline.rate).max(r.min);
            Some(Verdict::new(tenant, f.rate >= threshold, f.rate, threshold))
        })
        .collect()
}

/// `pool_saturation`: clients waiting for a server connection in the
/// tenant's PgBouncer pools >= `threshold` (pools map to tenants by the
/// database and role rules; shared pools are left to the fleet alerts).
pub fn pool_saturation(r: &RuleSettings, tenants: &BTreeMap<String, TenantPools>) -> Vec<Verdict> {
    tenants
        .iter()
        .filter(|(tenant, _)| *tenant != OVERFLOW_TENANT)
        .map(|(tenant, pools)| {
            let waiting = pools.waiting_clients as f64;
            Verdict::new(tenant, waiting >= r.threshold, waiting, r.threshold)
        })
        .collect()
}

/// `connection_hog`: connections on a target >= max(`threshold` x
/// `max_connections`, `factor` x the mean over the *other* connected
/// tenants). Leave-one-out: a tenant holding most connections among few
/// cannot raise its own bar; alone on a target only the `max_connections`
/// part applies (it still starves the tenants to come).
pub fn connection_hog(
    r: &RuleSettings,
    activity: &ActivitySnapshot,
    max_connections: Option<u64>,
) -> Vec<Verdict> {
    let counts: Vec<(&String, u64)> = activity
        .tenants
        .iter()
        .map(|(t, a)| (t, a.total_connections()))
        .collect();
    let total: u64 = counts.iter().map(|(_, c)| c).sum();
    let max = max_connections.unwrap_or(100) as f64;
    counts
        .iter()
        .map(|&(tenant, c)| {
            let others = counts.len() - 1;
            let others_mean = if others == 0 {
                0.0
            } else {
                (total - c) as f64 / others as f64
            };
            let threshold = (r.threshold * max).max(r.factor * others_mean);
            Verdict::new(tenant, c as f64 >= threshold, c as f64, threshold)
        })
        .collect()
}

/// A session figure of every tenant on a target against a fixed threshold.
fn session_figure(
    r: &RuleSettings,
    activity: &ActivitySnapshot,
    figure: impl Fn(&TenantActivity) -> f64,
) -> Vec<Verdict> {
    activity
        .tenants
        .iter()
        .map(|(tenant, a)| {
            let value = figure(a);
            Verdict::new(tenant, value >= r.threshold, value, r.threshold)
        })
        .collect()
}

/// `idle_in_transaction`: a session idle in a transaction >= `threshold` s.
pub fn idle_in_transaction(r: &RuleSettings, activity: &ActivitySnapshot) -> Vec<Verdict> {
    session_figure(r, activity, |a| a.idle_in_transaction_max_seconds)
}

/// `long_query`: a query running >= `threshold` s.
pub fn long_query(r: &RuleSettings, activity: &ActivitySnapshot) -> Vec<Verdict> {
    session_figure(r, activity, |a| a.longest_query_seconds)
}

/// `lock_blocker`: >= `threshold` other backends waiting on the tenant's locks.
pub fn lock_blocker(r: &RuleSettings, activity: &ActivitySnapshot) -> Vec<Verdict> {
    session_figure(r, activity, |a| a.blocking as f64)
}

/// `bloat`: dead tuples >= `threshold` x live tuples, and >= `min` dead.
pub fn bloat(r: &RuleSettings, schemas: &BTreeMap<String, SchemaTotals>) -> Vec<Verdict> {
    schemas
        .iter()
        .map(|(tenant, s)| {
            let dead = s.n_dead_tup as f64;
            let ratio = if s.n_live_tup > 0 {
                dead / s.n_live_tup as f64
            } else if dead > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            Verdict::new(
                tenant,
                ratio >= r.threshold && dead >= r.min,
                ratio.min(1e9),
                r.threshold,
            )
        })
        .collect()
}

/// `runaway_growth` for one tenant on one target: growth >= `threshold`
/// bytes per hour (over at least 45 minutes) or >= `factor` (a fraction)
/// per day (over at least 20 hours), from its size samples. `None` until
/// the samples span 45 minutes.
pub fn runaway_growth(
    r: &RuleSettings,
    tenant: &str,
    now: Instant,
    size: u64,
    samples: &VecDeque<(Instant, u64)>,
) -> Option<Verdict> {
    let at_least = |age: Duration| {
        samples
            .iter()
            .rev()
            .find(move |(t, _)| now.saturating_duration_since(*t) >= age)
    };
    let per_hour = at_least(Duration::from_secs(45 * 60)).map(|(t, old)| {
        (size as f64 - *old as f64) / now.saturating_duration_since(*t).as_secs_f64() * 3600.0
    });
    let per_day = at_least(Duration::from_secs(20 * 3600))
        .filter(|(_, old)| *old > 0)
        .map(|(t, old)| {
            (size as f64 - *old as f64)
                / *old as f64
                / now.saturating_duration_since(*t).as_secs_f64()
                * 86400.0
        });
    if per_hour.is_none() && per_day.is_none() {
        return None;
    }
    let hourly = per_hour.unwrap_or(0.0);
    let daily = per_day.unwrap_or(0.0);
    let holds = hourly >= r.threshold || daily >= r.factor;
    Some(Verdict::new(tenant, holds, hourly, r.threshold))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::settings::RuleName;

    fn settings(rule: RuleName) -> RuleSettings {
        RuleSettings::default_for(rule)
    }

    fn holding(verdicts: &[Verdict]) -> Vec<&str> {
        let mut v: Vec<&str> = verdicts
            .iter()
            .filter(|v| v.holds)
            .map(|v| v.tenant.as_str())
            .collect();
        v.sort();
        v
    }

    fn window(queries: f64, errors: f64, p95: Option<f64>) -> WindowFigures {
        WindowFigures {
            queries,
            errors,
            rate: queries / 60.0,
            p95_seconds: p95,
            whole_window: true,
        }
    }

    /// The window of the `db_time_hog` tests.
    const MINUTE: Duration = Duration::from_secs(60);

    /// A tenant with `share` of a fleet that keeps one session busy over
    /// [`MINUTE`] (its load is its share).
    fn snapshot(tenant: &str, share: f64) -> TenantSnapshot {
        TenantSnapshot {
            tenant: tenant.into(),
            db_time_share: share,
            window_db_time_ms: share * 60_000.0,
            ..TenantSnapshot::default()
        }
    }

    #[test]
    fn db_time_hog_judges_against_the_other_tenants_mean() {
        // 20 active tenants: hog's bar = max(3 x 0.5/19, 0.2) = 0.2.
        let mut tenants = vec![snapshot("hog", 0.5)];
        tenants.extend((0..19).map(|i| snapshot(&format!("t{i}"), 0.5 / 19.0)));
        let refs: Vec<&TenantSnapshot> = tenants.iter().collect();
        let verdicts = db_time_hog(&settings(RuleName::DbTimeHog), &refs, MINUTE);
        assert_eq!(holding(&verdicts), ["hog"]);
        assert!((verdicts[0].threshold - 0.2).abs() < 1e-12);
        assert!(db_time_hog(&settings(RuleName::DbTimeHog), &[], MINUTE).is_empty());
    }

    #[test]
    fn a_db_time_hog_among_few_tenants_cannot_raise_its_own_bar() {
        // With the hog in its own fair share, 3 x 1/3 = 1.0: no tenant of
        // three could ever be a hog. Against the others' mean (0.15) it is.
        let few = [snapshot("a", 0.7), snapshot("b", 0.1), snapshot("c", 0.2)];
        let refs: Vec<&TenantSnapshot> = few.iter().collect();
        let verdicts = db_time_hog(&settings(RuleName::DbTimeHog), &refs, MINUTE);
        assert_eq!(holding(&verdicts), ["a"]);
        assert!((verdicts[0].threshold - 0.45).abs() < 1e-12);
        // Alone there is no one to hog from: not judged.
        let alone = [snapshot("solo", 1.0)];
        let refs: Vec<&TenantSnapshot> = alone.iter().collect();
        assert!(db_time_hog(&settings(RuleName::DbTimeHog), &refs, MINUTE).is_empty());
    }

    /// The soak's flag (seed 2616): the fleet's load had stalled, and a
    /// tenant with a handful of events (75 ms over a 20 s window) held 31%
    /// of what was left beside seven others: a hog by its share, of nothing.
    #[test]
    fn a_quiet_fleets_largest_tenant_is_not_a_db_time_hog() {
        let window = Duration::from_secs(20);
        let r = settings(RuleName::DbTimeHog);
        let quiet = |tenant: &str, ms: f64| TenantSnapshot {
            tenant: tenant.into(),
            db_time_share: ms / 240.0,
            window_db_time_ms: ms,
            ..TenantSnapshot::default()
        };
        let mut tenants = vec![quiet("clinic1", 75.0)];
        tenants.extend((0..7).map(|i| quiet(&format!("t{i}"), 165.0 / 7.0)));
        let refs: Vec<&TenantSnapshot> = tenants.iter().collect();
        let verdicts = db_time_hog(&r, &refs, window);
        let clinic = verdicts.iter().find(|v| v.tenant == "clinic1").unwrap();
        assert!(
            clinic.value >= clinic.threshold,
            "a hog by its share: {clinic:?}"
        );
        assert!(holding(&verdicts).is_empty(), "{verdicts:?}");
        // The same shares of a busy fleet (2.4 sessions): a hog.
        for t in &mut tenants {
            t.window_db_time_ms *= 200.0;
        }
        let refs: Vec<&TenantSnapshot> = tenants.iter().collect();
        assert_eq!(holding(&db_time_hog(&r, &refs, window)), ["clinic1"]);
        // On server-side statement time alike.
        let quiet: HashMap<String, f64> = tenants
            .iter()
            .map(|t| (t.tenant.clone(), t.window_db_time_ms / 200_000.0))
            .collect();
        assert!(holding(&db_time_hog_from_statements(&r, &quiet, window, |_| true)).is_empty());
    }

    #[test]
    fn latency_outlier_compares_with_the_other_tenants_median() {
        let mut figures = HashMap::new();
        for i in 0..9 {
            figures.insert(format!("t{i}"), window(100.0, 0.0, Some(0.05)));
        }
        figures.insert("slow".into(), window(100.0, 0.0, Some(2.0)));
        figures.insert("few".into(), window(3.0, 0.0, Some(9.0)));
        let verdicts = latency_outlier(&settings(RuleName::LatencyOutlier), &figures);
        assert_eq!(holding(&verdicts), ["slow"]);
        assert!(!verdicts.iter().any(|v| v.tenant == "few"));
        // Two tenants: the slow one was half of the median it was compared
        // with (the upper median is its own p95); now it is the other's.
        let mut two = HashMap::new();
        two.insert("slow".to_string(), window(100.0, 0.0, Some(2.0)));
        two.insert("fast".to_string(), window(100.0, 0.0, Some(0.05)));
        let verdicts = latency_outlier(&settings(RuleName::LatencyOutlier), &two);
        assert_eq!(holding(&verdicts), ["slow"]);
        let mut alone = HashMap::new();
        alone.insert("solo".to_string(), window(100.0, 0.0, Some(5.0)));
        assert!(latency_outlier(&settings(RuleName::LatencyOutlier), &alone).is_empty());
    }

    #[test]
    fn the_median_without_the_subject() {
        assert_eq!(median_without(&[1.0, 2.0, 3.0], 3.0), Some(2.0));
        assert_eq!(median_without(&[1.0, 2.0, 3.0], 1.0), Some(3.0));
        assert_eq!(median_without(&[1.0, 2.0, 2.0, 9.0], 2.0), Some(2.0));
        assert_eq!(median_without(&[5.0, 5.0], 5.0), Some(5.0));
        assert_eq!(median_without(&[5.0], 5.0), None);
    }

    #[test]
    fn error_storm_needs_a_ratio_and_a_count() {
        let mut figures = HashMap::new();
        figures.insert("storm".into(), window(100.0, 30.0, None));
        figures.insert("few".into(), window(10.0, 5.0, None));
        figures.insert("calm".into(), window(1000.0, 1.0, None));
        let verdicts = error_storm(&settings(RuleName::ErrorStorm), &figures);
        assert_eq!(holding(&verdicts), ["storm"]);
    }

    #[test]
    fn rate_spike_waits_for_a_warm_baseline() {
        let mut figures = HashMap::new();
        figures.insert("spike".into(), window(6000.0, 0.0, None)); // 100/s
        figures.insert("steady".into(), window(600.0, 0.0, None)); // 10/s
        let mut baselines = HashMap::new();
        baselines.insert(
            "spike".into(),
            Baseline {
                rate: 10.0,
                samples: 6,
            },
        );
        baselines.insert(
            "steady".into(),
            Baseline {
                rate: 10.0,
                samples: 6,
            },
        );
        let r = settings(RuleName::RateSpike);
        assert_eq!(holding(&rate_spike(&r, &figures, &baselines, 6)), ["spike"]);
        assert!(rate_spike(&r, &figures, &baselines, 7).is_empty());
    }

    fn connections(tenants: &[(&str, u64)]) -> ActivitySnapshot {
        let mut activity = ActivitySnapshot::default();
        for (tenant, n) in tenants {
            let mut a = TenantActivity::default();
            a.connections.insert("idle", *n);
            activity.tenants.insert((*tenant).into(), a);
        }
        activity
    }

    #[test]
    fn a_statement_hog_is_judged_only_when_it_sends_no_events() {
        let r = settings(RuleName::DbTimeHog);
        let seconds: HashMap<String, f64> = [
            ("heavy".to_owned(), 90.0),
            ("a".to_owned(), 4.0),
            ("b".to_owned(), 3.0),
            ("c".to_owned(), 3.0),
        ]
        .into();
        let verdicts = db_time_hog_from_statements(&r, &seconds, MINUTE, |_| true);
        assert_eq!(holding(&verdicts), vec!["heavy"]);
        // A tenant that sends events is judged on them instead.
        let verdicts = db_time_hog_from_statements(&r, &seconds, MINUTE, |t| t != "heavy");
        assert!(holding(&verdicts).is_empty());
        assert_eq!(verdicts.len(), 3);
        // Nothing ran: nothing judged.
        let idle: HashMap<String, f64> = [("a".to_owned(), 0.0)].into();
        assert!(db_time_hog_from_statements(&r, &idle, MINUTE, |_| true).is_empty());
    }

    #[test]
    fn pool_saturation_holds_from_the_threshold_and_skips_the_overflow() {
        let r = settings(RuleName::PoolSaturation);
        let pools = |waiting| TenantPools {
            waiting_clients: waiting,
            ..TenantPools::default()
        };
        let tenants: BTreeMap<String, TenantPools> = [
            ("busy".to_owned(), pools(4)),
            ("calm".to_owned(), pools(0)),
            (OVERFLOW_TENANT.to_owned(), pools(9)),
        ]
        .into();
        let verdicts = pool_saturation(&r, &tenants);
        assert_eq!(verdicts.len(), 2);
        assert_eq!(holding(&verdicts), vec!["busy"]);
    }

    #[test]
    fn a_connection_hog_among_many_tenants() {
        let r = settings(RuleName::ConnectionHog);
        // Among 21 connected tenants: max(0.25 x 100, 4 x 20/20) = 25.
        let mut many = vec![("hog", 30)];
        let names: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        many.extend(names.iter().map(|n| (n.as_str(), 1)));
        let verdicts = connection_hog(&r, &connections(&many), Some(100));
        assert_eq!(holding(&verdicts), ["hog"]);
    }

    #[test]
    fn a_connection_hog_among_few_tenants_cannot_raise_its_own_bar() {
        let r = settings(RuleName::ConnectionHog);
        // 60 of 80 connections, two others with 1 and 2. With the hog in
        // the mean the bar was max(0.25 x 80, 4 x 63/3) = 84: never flagged.
        // Against the others' mean: max(20, 4 x 1.5) = 20.
        let few = connections(&[("hog", 60), ("a", 1), ("b", 2)]);
        let verdicts = connection_hog(&r, &few, Some(80));
        assert_eq!(holding(&verdicts), ["hog"]);
        let hog = verdicts.iter().find(|v| v.tenant == "hog").unwrap();
        assert!((hog.threshold - 20.0).abs() < 1e-9);
        // The small ones are judged against a mean that includes the hog.
        let a = verdicts.iter().find(|v| v.tenant == "a").unwrap();
        assert!((a.threshold - 124.0).abs() < 1e-9);
    }

    #[test]
    fn a_connection_hog_alone_on_a_target_is_judged_by_max_connections() {
        let r = settings(RuleName::ConnectionHog);
        let alone = connections(&[("solo", 30)]);
        assert_eq!(
            holding(&connection_hog(&r, &alone, Some(100))),
            ["solo"],
            "30 of 100 is above 0.25 x max_connections"
        );
        let light = connections(&[("solo", 5)]);
        assert!(holding(&connection_hog(&r, &light, Some(100))).is_empty());
    }

    #[test]
    fn session_rules_use_their_own_figure() {
        let mut activity = ActivitySnapshot::default();
        let a = TenantActivity {
            idle_in_transaction_max_seconds: 61.0,
            longest_query_seconds: 10.0,
            blocking: 3,
            ..TenantActivity::default()
        };
        activity.tenants.insert("x".into(), a);
        let idle = idle_in_transaction(&settings(RuleName::IdleInTransaction), &activity);
        let long = long_query(&settings(RuleName::LongQuery), &activity);
        let blocker = lock_blocker(&settings(RuleName::LockBlocker), &activity);
        assert_eq!(holding(&idle), ["x"]);
        assert!(holding(&long).is_empty());
        assert_eq!(holding(&blocker), ["x"]);
    }

    #[test]
    fn bloat_needs_a_ratio_and_dead_rows() {
        let mut schemas = BTreeMap::new();
        let totals = |live, dead| SchemaTotals {
            n_live_tup: live,
            n_dead_tup: dead,
            ..SchemaTotals::default()
        };
        schemas.insert("bloated".into(), totals(5_000_000, 2_000_000));
        schemas.insert("small".into(), totals(1000, 900));
        schemas.insert("empty".into(), totals(0, 2_000_000));
        let verdicts = bloat(&settings(RuleName::Bloat), &schemas);
        assert_eq!(holding(&verdicts), ["bloated", "empty"]);
        assert!(verdicts.iter().all(|v| v.value.is_finite()));
    }

    #[test]
    fn runaway_growth_from_size_samples() {
        let start = Instant::now();
        let r = settings(RuleName::RunawayGrowth);
        let hour = Duration::from_secs(3600);
        let samples: VecDeque<(Instant, u64)> = [(start, 1u64 << 30)].into();
        assert!(runaway_growth(&r, "t", start + hour / 2, 2 << 30, &samples).is_none());
        let verdict = runaway_growth(&r, "t", start + hour, 3 << 30, &samples).unwrap();
        assert!(verdict.holds, "{verdict:?}");
        let verdict = runaway_growth(&r, "t", start + hour, (1 << 30) + 1000, &samples).unwrap();
        assert!(!verdict.holds);
    }
}
