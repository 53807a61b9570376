//! The detector's settings: the rules by name, each rule's knobs with the
//! shipped defaults, and the detector-wide settings. Reloadable.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

pub use crate::store::guard::GuardAction;

/// The rules, by name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
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
    PoolSaturation,
}

impl RuleName {
    pub const ALL: [RuleName; 11] = [
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
        RuleName::PoolSaturation,
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
            RuleName::PoolSaturation => "pool_saturation",
        }
    }

    pub fn parse(text: &str) -> Option<RuleName> {
        RuleName::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// What follows from a flag: its quota is tightened (`tighten`), its
/// offending sessions are ended (`guard`), or it is only reported (`none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagAction {
    Tighten,
    Guard,
    #[default]
    None,
}

impl FlagAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagAction::Tighten => "tighten",
            FlagAction::Guard => "guard",
            FlagAction::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

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
    /// How the flagged tenant's offending sessions are ended while
    /// `guard.mode` is not off (`long_query`, `idle_in_transaction` and
    /// `lock_blocker` only).
    pub guard: Option<GuardAction>,
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
                guard: None,
            };
        use Severity::*;
        let guarded = |action, settings: RuleSettings| RuleSettings {
            guard: Some(action),
            ..settings
        };
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
            RuleName::IdleInTransaction => {
                guarded(GuardAction::Terminate, s(60.0, 0.0, 0.0, 0, Warning, false))
            }
            // seconds running >= threshold
            RuleName::LongQuery => {
                guarded(GuardAction::Cancel, s(300.0, 0.0, 0.0, 0, Warning, false))
            }
            // backends blocked >= threshold
            RuleName::LockBlocker => {
                guarded(GuardAction::Cancel, s(3.0, 0.0, 0.0, 30, Critical, false))
            }
            // dead >= threshold x live and >= min dead
            RuleName::Bloat => s(0.2, 1_000_000.0, 0.0, 0, Warning, false),
            // growth >= threshold bytes/hour or >= factor (fraction) per day
            RuleName::RunawayGrowth => s(1024.0 * 1024.0 * 1024.0, 0.0, 0.5, 0, Warning, false),
            // clients waiting in the tenant's PgBouncer pools >= threshold
            RuleName::PoolSaturation => s(1.0, 0.0, 0.0, 60, Warning, false),
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
    /// `[guard]`: ending offending sessions.
    pub guard: GuardSettings,
}

/// `guard.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    /// Nothing is done (the default).
    Off,
    /// Each would-be action is logged and counted; no session is touched.
    DryRun,
    /// Sessions are cancelled or terminated.
    Enforce,
}

/// `[guard]`: when and how often a flagged tenant's sessions are ended.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    pub mode: GuardMode,
    /// How long a flag stays raised before its sessions are ended.
    pub grace: Duration,
    pub max_actions_per_minute: u32,
    /// Sessions whose `application_name` matches are maintenance: never ended.
    pub exclude_applications: regex::RegexSet,
}

impl PartialEq for GuardSettings {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode
            && self.grace == other.grace
            && self.max_actions_per_minute == other.max_actions_per_minute
            && self.exclude_applications.patterns() == other.exclude_applications.patterns()
    }
}

/// Maintenance tools whose sessions the guard never ends.
pub const DEFAULT_GUARD_EXCLUDES: [&str; 7] = [
    "^pg_dump$",
    "^pg_dumpall$",
    "^pg_restore$",
    "^pg_basebackup$",
    "^vacuumdb$",
    "^reindexdb$",
    "^pg_repack$",
];

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            mode: GuardMode::Off,
            grace: Duration::from_secs(30),
            max_actions_per_minute: 10,
            exclude_applications: regex::RegexSet::new(DEFAULT_GUARD_EXCLUDES)
                .unwrap_or_else(|_| regex::RegexSet::empty()),
        }
    }
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
            guard: GuardSettings::default(),
        }
    }
}
