//! The detector's settings: the rules by name, each rule's knobs with the
//! shipped defaults, and the detector-wide settings. Reloadable.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Problems, serde_text};

pub use crate::redact::QueryText;

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
            // share >= max(threshold x others' mean share, min), and load
            // (database seconds per second) >= factor
            RuleName::DbTimeHog => s(3.0, 0.2, 0.1, 120, Warning, true),
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

/// `[detect]`: the problem-tenant rules. Reloadable: a SIGHUP applies
/// every key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectSettings {
    /// How often every rule is evaluated.
    #[serde(with = "serde_text::duration")]
    pub interval: Duration,
    /// Window for rates, error ratios and latency percentiles: the store's
    /// `ingest.share_window`, set by `config`.
    #[serde(skip)]
    pub window: Duration,
    /// Half-life of each tenant's query-rate baseline (`rate_spike`).
    #[serde(with = "serde_text::duration")]
    pub baseline_half_life: Duration,
    /// Per-rule overrides, `[detect.rules.<name>]`: each key given replaces
    /// the rule's shipped default.
    #[serde(deserialize_with = "rules_over_defaults")]
    pub rules: BTreeMap<RuleName, RuleSettings>,
    /// Advice never tightens a quota below this many queries per second.
    pub floor_qps: f64,
    /// After a flag clears, the effective quota grows by this factor per
    /// interval until it is back at the base quota.
    pub relax_factor: f64,
    /// Sources whose evidence may tighten a quota: `postgres` (what the
    /// collectors read from the server and PgBouncer), `http`
    /// (`POST /v1/events`, behind the write token) and `udp` (no token). A
    /// flag whose evidence came only through sources not listed is still
    /// raised and reported, with `action = "none"`, but never tightens.
    pub tighten_from: Vec<EvidenceSource>,
    /// `[guard]`, set by `config`.
    #[serde(skip)]
    pub guard: GuardSettings,
}

/// Where a rule's evidence comes from (`detect.tighten_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceSource {
    /// The collectors: `pg_stat_activity`, `pg_stat_statements`, sizes,
    /// PgBouncer's pools.
    Postgres,
    /// Events over HTTP (`POST /v1/events`).
    Http,
    /// Events over UDP.
    Udp,
}

impl EvidenceSource {
    pub const ALL: [EvidenceSource; 3] = [
        EvidenceSource::Postgres,
        EvidenceSource::Http,
        EvidenceSource::Udp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceSource::Postgres => "postgres",
            EvidenceSource::Http => "http",
            EvidenceSource::Udp => "udp",
        }
    }
}

/// A set of [`EvidenceSource`]s, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evidence(u8);

impl Evidence {
    pub const NONE: Evidence = Evidence(0);
    pub const POSTGRES: Evidence = Evidence(1 << EvidenceSource::Postgres as u8);

    pub fn of(sources: &[EvidenceSource]) -> Evidence {
        Evidence(sources.iter().fold(0, |bits, s| bits | 1 << *s as u8))
    }

    /// The event sources a tenant's window figures came through.
    pub fn of_events(sources: crate::store::SourceSet) -> Evidence {
        use crate::store::Source;
        let mut evidence = Evidence::NONE;
        for source in Source::ALL {
            if sources.contains(source) {
                evidence = evidence.union(Evidence::of(&[match source {
                    Source::Udp => EvidenceSource::Udp,
                    Source::Http => EvidenceSource::Http,
                }]));
            }
        }
        evidence
    }

    pub fn union(self, other: Evidence) -> Evidence {
        Evidence(self.0 | other.0)
    }

    /// Whether any of this evidence came through a source in `trusted`.
    pub fn any_of(self, trusted: Evidence) -> bool {
        self.0 & trusted.0 != 0
    }
}

/// `[detect.rules.<name>]`: every key optional; unset keys keep the default.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RuleOverride {
    enabled: Option<bool>,
    threshold: Option<f64>,
    min: Option<f64>,
    factor: Option<f64>,
    #[serde(rename = "for", with = "serde_text::duration::option")]
    for_: Option<Duration>,
    #[serde(with = "serde_text::duration::option")]
    cooldown: Option<Duration>,
    severity: Option<Severity>,
    tighten: Option<bool>,
    /// `"cancel"`, `"terminate"` or `"none"` (long_query,
    /// idle_in_transaction and lock_blocker only).
    guard: Option<GuardChoice>,
}

/// A rule's `guard` key: an action, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum GuardChoice {
    Cancel,
    Terminate,
    None,
}

/// Every rule at its shipped default, with the file's keys laid over.
fn rules_over_defaults<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<RuleName, RuleSettings>, D::Error> {
    // Keyed by text, so that an error inside names its rule.
    let overrides = BTreeMap::<String, RuleOverride>::deserialize(deserializer)?;
    let mut rules = DetectSettings::default().rules;
    for (name, over) in overrides {
        let name = RuleName::parse(&name).ok_or_else(|| {
            let names: Vec<&str> = RuleName::ALL.iter().map(|r| r.as_str()).collect();
            serde::de::Error::custom(format!(
                "unknown rule `{name}`; rules are {}",
                names.join(", ")
            ))
        })?;
        let r = rules
            .entry(name)
            .or_insert_with(|| RuleSettings::default_for(name));
        r.enabled = over.enabled.unwrap_or(r.enabled);
        r.threshold = over.threshold.unwrap_or(r.threshold);
        r.min = over.min.unwrap_or(r.min);
        r.factor = over.factor.unwrap_or(r.factor);
        r.for_ = over.for_.unwrap_or(r.for_);
        r.cooldown = over.cooldown.unwrap_or(r.cooldown);
        r.severity = over.severity.unwrap_or(r.severity);
        r.tighten = over.tighten.unwrap_or(r.tighten);
        r.guard = match over.guard {
            None => r.guard,
            Some(GuardChoice::None) => None,
            Some(GuardChoice::Cancel) => Some(GuardAction::Cancel),
            Some(GuardChoice::Terminate) => Some(GuardAction::Terminate),
        };
    }
    Ok(rules)
}

impl DetectSettings {
    /// One rule's settings, to change in place.
    pub fn rule_mut(&mut self, name: RuleName) -> &mut RuleSettings {
        self.rules
            .entry(name)
            .or_insert_with(|| RuleSettings::default_for(name))
    }

    /// Checks each key on its own.
    pub fn check(&self, p: &mut Problems) {
        p.positive("detect.interval", self.interval);
        p.positive("detect.baseline_half_life", self.baseline_half_life);
        p.finite_above("detect.floor_qps", self.floor_qps, 0.0, f64::MAX);
        p.finite_above("detect.relax_factor", self.relax_factor, 1.0, f64::MAX);
        for (name, rule) in &self.rules {
            let key = |field: &str| format!("detect.rules.{}.{field}", name.as_str());
            for (field, value) in [
                ("threshold", rule.threshold),
                ("min", rule.min),
                ("factor", rule.factor),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    p.fail(&key(field), value, "must be a finite number >= 0");
                }
            }
            let guarded = matches!(
                name,
                RuleName::LongQuery | RuleName::IdleInTransaction | RuleName::LockBlocker
            );
            if let Some(action) = rule.guard
                && !guarded
            {
                p.fail(
                    &key("guard"),
                    format!("{:?}", action.as_str()),
                    "only long_query, idle_in_transaction and lock_blocker end sessions",
                );
            }
        }
    }
}

/// `guard.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardMode {
    /// Nothing is done (the default).
    Off,
    /// Each would-be action is logged and counted; no session is touched.
    DryRun,
    /// Sessions are cancelled or terminated.
    Enforce,
}

impl GuardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMode::Off => "off",
            GuardMode::DryRun => "dry_run",
            GuardMode::Enforce => "enforce",
        }
    }
}

/// `[guard]`: when and how often a flagged tenant's sessions are ended
/// (off by default). Reloadable.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardSettings {
    /// `"off"`, `"dry_run"` or `"enforce"`.
    pub mode: GuardMode,
    /// How long a flag stays raised before its sessions are ended.
    #[serde(with = "serde_text::duration")]
    pub grace: Duration,
    /// Actions at most per minute, over every target (at least 1).
    pub max_actions_per_minute: u32,
    /// Regular expressions over `application_name`: maintenance sessions
    /// the guard never ends.
    #[serde(deserialize_with = "regex_set")]
    pub exclude_applications: regex::RegexSet,
    /// How a session's query is shown in guard records and their log
    /// lines: `"redacted"` (literals replaced by `$1`, `$2`, … as
    /// `pg_stat_statements` does; the default, since literal values can be
    /// a tenant's data), `"full"` or `"none"`.
    pub query_text: QueryText,
}

fn regex_set<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<regex::RegexSet, D::Error> {
    let patterns = Vec::<String>::deserialize(deserializer)?;
    regex::RegexSet::new(&patterns).map_err(|err| {
        serde::de::Error::custom(format!("not a list of regular expressions ({err})"))
    })
}

impl GuardSettings {
    /// Checks each key on its own.
    pub fn check(&self, p: &mut Problems) {
        if self.max_actions_per_minute == 0 {
            p.fail(
                "guard.max_actions_per_minute",
                0,
                "must be at least 1 (turn the guard off with guard.mode = \"off\")",
            );
        }
    }
}

impl PartialEq for GuardSettings {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode
            && self.grace == other.grace
            && self.max_actions_per_minute == other.max_actions_per_minute
            && self.exclude_applications.patterns() == other.exclude_applications.patterns()
            && self.query_text == other.query_text
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
            query_text: QueryText::Redacted,
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
            tighten_from: EvidenceSource::ALL.to_vec(),
            guard: GuardSettings::default(),
        }
    }
}
