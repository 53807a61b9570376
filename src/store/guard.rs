//! Guard actions: the orders the detector gives to end a flagged tenant's
//! offending sessions, and the record of what became of them (the last 100,
//! and counts by tenant, rule, action and result) for the API and the
//! exposition. The detector writes orders, the target's guard executor
//! carries them out; both record here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::ser::{SerializeMap, Serializer};

use super::targets::{Judged, JudgedActivity};

/// How a session is ended: `pg_cancel_backend` (the running query) or
/// `pg_terminate_backend` (the whole session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    Cancel,
    Terminate,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Cancel => "cancel",
            GuardAction::Terminate => "terminate",
        }
    }

    pub fn parse(text: &str) -> Option<GuardAction> {
        match text {
            "cancel" => Some(GuardAction::Cancel),
            "terminate" => Some(GuardAction::Terminate),
            _ => None,
        }
    }
}

/// One session to end, on one target: the backend and the statement or
/// idle transaction that was judged, so that the signal reaches that one
/// or none (a pid alone names whatever the backend runs by then).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GuardOrder {
    pub target: String,
    pub tenant: String,
    pub rule: &'static str,
    /// The signal to send (and, in a record, the one that was sent).
    pub action: GuardAction,
    /// The rule asked for `terminate`, but the session's tenant came from
    /// a field the client sets: only `cancel` is ever sent for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downgraded_from: Option<GuardAction>,
    pub pid: i32,
    /// `backend_start`, and `query_start` or `xact_start` and
    /// `state_change`, as the poll saw them (Unix seconds in the API).
    #[serde(flatten)]
    pub judged: Judged,
    /// The start of the session's query (at most [`QUERY_PREFIX_CHARS`]
    /// of it) as `guard.query_text` shows it: literals replaced by `$n`
    /// (the default), in full, or `""`. This text is what the record, its
    /// log line and `GET /api/v1/guard` show.
    pub query: String,
    /// How long the query has run, or the session sat idle in its
    /// transaction, or the blocker's transaction has lasted, in seconds.
    pub age_seconds: f64,
    /// Only log and count what would be done (`guard.mode = "dry_run"`);
    /// a record says so in its result.
    #[serde(skip)]
    pub dry_run: bool,
}

/// Characters of a query kept in an order and in the record.
pub const QUERY_PREFIX_CHARS: usize = 100;

/// What became of an order: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardResult {
    /// The signal was sent.
    Ok,
    /// Dry run: logged and counted, nothing sent.
    DryRun,
    /// The session had already ended (its pid is gone, or is another
    /// backend's now): nothing sent.
    Gone,
    /// The session is there but no longer runs the statement (or sits in
    /// the idle transaction) that was judged: nothing sent.
    Changed,
    /// tenantwatch's role may not signal it (needs `pg_signal_backend`).
    Permission,
    /// The target could not be reached, or another error.
    Error,
    /// Over `guard.max_actions_per_minute`: not sent.
    RateLimited,
    /// The target's order queue was full: not sent.
    Dropped,
}

impl GuardResult {
    pub const ALL: [GuardResult; 8] = [
        GuardResult::Ok,
        GuardResult::DryRun,
        GuardResult::Gone,
        GuardResult::Changed,
        GuardResult::Permission,
        GuardResult::Error,
        GuardResult::RateLimited,
        GuardResult::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GuardResult::Ok => "ok",
            GuardResult::DryRun => "dry_run",
            GuardResult::Gone => "gone",
            GuardResult::Changed => "changed",
            GuardResult::Permission => "permission",
            GuardResult::Error => "error",
            GuardResult::RateLimited => "rate_limited",
            GuardResult::Dropped => "dropped",
        }
    }
}

/// Unix seconds, to the microsecond PostgreSQL keeps.
fn unix_seconds(at: SystemTime) -> f64 {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// Flat in a record: `backend_start`, then `query_start` or `xact_start`
/// and `state_change`, each in Unix seconds.
impl serde::Serialize for Judged {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("backend_start", &unix_seconds(self.backend_start))?;
        match self.activity {
            JudgedActivity::Statement { query_start } => {
                map.serialize_entry("query_start", &unix_seconds(query_start))?;
            }
            JudgedActivity::IdleTransaction {
                xact_start,
                state_change,
            } => {
                map.serialize_entry("xact_start", &unix_seconds(xact_start))?;
                map.serialize_entry("state_change", &unix_seconds(state_change))?;
            }
        }
        map.end()
    }
}

/// One order and its result, as `GET /api/v1/guard` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GuardRecord {
    /// Unix seconds.
    pub at: f64,
    #[serde(flatten)]
    pub order: GuardOrder,
    pub result: GuardResult,
}

/// Records kept for the API.
pub const GUARD_RECORDS: usize = 100;

/// Count keys kept; beyond, new tenants count under `__other__` (the
/// `tenant` label stays bounded whatever the fleet).
const MAX_COUNT_KEYS: usize = 10_000;

/// Count key: tenant, rule, action, result.
pub type GuardCountKey = (String, &'static str, GuardAction, GuardResult);

/// The last [`GUARD_RECORDS`] records and the counts since start.
#[derive(Debug, Default)]
pub struct GuardLog {
    recent: VecDeque<GuardRecord>,
    counts: BTreeMap<GuardCountKey, u64>,
}

impl GuardLog {
    pub fn record(&mut self, order: &GuardOrder, result: GuardResult, at: f64) {
        let mut key = (order.tenant.clone(), order.rule, order.action, result);
        if !self.counts.contains_key(&key) && self.counts.len() >= MAX_COUNT_KEYS {
            key.0 = "__other__".into();
        }
        *self.counts.entry(key).or_default() += 1;
        if self.recent.len() == GUARD_RECORDS {
            self.recent.pop_front();
        }
        self.recent.push_back(GuardRecord {
            at,
            order: order.clone(),
            result,
        });
    }

    /// The records, newest first.
    pub fn recent(&self) -> Vec<GuardRecord> {
        self.recent.iter().rev().cloned().collect()
    }

    pub fn counts(&self) -> Vec<(GuardCountKey, u64)> {
        self.counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

pub type SharedGuardLog = Arc<Mutex<GuardLog>>;

/// The first [`QUERY_PREFIX_CHARS`] characters of a query.
pub fn query_prefix(query: &str) -> String {
    query.chars().take(QUERY_PREFIX_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(tenant: &str) -> GuardOrder {
        GuardOrder {
            target: "main".into(),
            tenant: tenant.into(),
            rule: "long_query",
            action: GuardAction::Cancel,
            downgraded_from: None,
            pid: 42,
            judged: Judged {
                backend_start: SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_micros(1_700_000_000_123_456),
                activity: JudgedActivity::Statement {
                    query_start: SystemTime::UNIX_EPOCH
                        + std::time::Duration::from_secs(1_700_000_100),
                },
            },
            query: query_prefix(&"x".repeat(500)),
            age_seconds: 301.0,
            dry_run: false,
        }
    }

    #[test]
    fn the_log_keeps_the_last_records_and_bounded_counts() {
        let mut log = GuardLog::default();
        for i in 0..(MAX_COUNT_KEYS + 50) {
            log.record(&order(&format!("t{i}")), GuardResult::Ok, i as f64);
        }
        assert_eq!(log.recent().len(), GUARD_RECORDS);
        assert_eq!(log.recent()[0].at, (MAX_COUNT_KEYS + 49) as f64);
        assert_eq!(log.recent()[0].order.query.len(), QUERY_PREFIX_CHARS);
        let counts = log.counts();
        assert_eq!(counts.len(), MAX_COUNT_KEYS + 1);
        let other = counts.iter().find(|(k, _)| k.0 == "__other__").unwrap();
        assert_eq!(other.1, 50);
    }

    #[test]
    fn a_record_names_the_backend_and_the_statement() {
        let mut log = GuardLog::default();
        log.record(&order("a"), GuardResult::Changed, 1.0);
        let json = serde_json::to_value(&log.recent()[0]).unwrap();
        assert_eq!(json["result"], "changed");
        assert_eq!(json["backend_start"], 1_700_000_000.123456);
        assert_eq!(json["query_start"], 1_700_000_100.0);
        assert!(json.get("xact_start").is_none());
        assert!(json.get("downgraded_from").is_none());
        let mut downgraded = order("a");
        downgraded.downgraded_from = Some(GuardAction::Terminate);
        downgraded.judged.activity = JudgedActivity::IdleTransaction {
            xact_start: SystemTime::UNIX_EPOCH,
            state_change: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2),
        };
        let json = serde_json::to_value(&downgraded).unwrap();
        assert_eq!(json["downgraded_from"], "terminate");
        assert_eq!(json["action"], "cancel");
        assert_eq!(json["state_change"], 2.0);
        assert!(json.get("query_start").is_none());
    }
}
