//! Guard orders: which sessions of a flagged tenant to end. For a raised
//! `long_query`, `idle_in_transaction` or `lock_blocker` flag whose rule has
//! a `guard` action, once the flag has been raised for `guard.grace`, the
//! sessions that caused it (as the target's last poll saw them): the
//! queries running at least the rule's threshold, the sessions idle in a
//! transaction that long, the backends others wait for. Never a
//! superuser's session, nor one whose `application_name` is a maintenance
//! tool's (`guard.exclude_applications`); tenantwatch's own sessions are not
//! in the poll at all. At most `guard.max_actions_per_minute`, and each
//! statement (or idle spell of a transaction) once.
//!
//! An order names what was judged, not only a pid: the backend's
//! `backend_start` and the statement's `query_start` (or the idle
//! transaction's `xact_start` and `state_change`). The target's poller
//! signals only if the server still shows exactly that (see
//! `collect::guard`). A session whose tenant came from a field the client
//! sets (`application_name`, a sqlcommenter tag) is only ever cancelled:
//! anyone can claim a tenant there, and behind a pooler the next client's
//! session would be the one terminated.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::Flag;
use super::settings::{DetectSettings, GuardMode, RuleName};
use crate::store::guard::{GuardAction, GuardLog, GuardOrder, GuardResult, SharedGuardLog};
use crate::store::{Judged, Offence, TargetStatus};

/// Where the detector's task sends each target's orders, and records what
/// could not be sent.
#[derive(Debug, Default)]
pub struct GuardOutbox {
    pub senders: HashMap<String, tokio::sync::mpsc::Sender<GuardOrder>>,
    pub log: SharedGuardLog,
}

impl GuardOutbox {
    /// Hands each order to its target's poller; a full queue (the target
    /// is down or slow) or an unknown target counts as `dropped`.
    pub fn send(&self, orders: Vec<GuardOrder>, wall_s: f64) {
        for order in orders {
            let sent = self
                .senders
                .get(&order.target)
                .is_some_and(|sender| sender.try_send(order.clone()).is_ok());
            if !sent {
                tracing::warn!(
                    target_name = %order.target,
                    tenant = %order.tenant,
                    pid = order.pid,
                    "Guard action dropped: the target's queue is full"
                );
                self.log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(&order, GuardResult::Dropped, wall_s);
            }
        }
    }
}

/// How long a statement acted upon is remembered (not ordered again).
const REMEMBER: Duration = Duration::from_secs(600);

/// A statement (or idle spell) of a backend on a target: what is ordered
/// at most once. Keyed by what was judged, not by pid, so an order that
/// found the backend `changed` does not spare its next offence.
type Acted = (String, i32, Judged);

/// What the guard remembers between evaluations.
#[derive(Debug, Default)]
pub struct Guard {
    /// Statements ordered, and when.
    acted: HashMap<Acted, Instant>,
    /// When each order of the last minute was given.
    sent: VecDeque<Instant>,
    /// Statements already counted as rate-limited this minute.
    held_back: HashSet<Acted>,
    held_back_since: Option<Instant>,
}

impl Guard {
    /// The orders for this evaluation. Sessions held back by
    /// `max_actions_per_minute` are recorded (once a minute each) in `log`
    /// and ordered in a later evaluation.
    pub fn orders(
        &mut self,
        flags: &[Flag],
        targets: &[TargetStatus],
        settings: &DetectSettings,
        now: Instant,
        wall_s: f64,
        log: &mut GuardLog,
    ) -> Vec<GuardOrder> {
        let guard = &settings.guard;
        if guard.mode == GuardMode::Off {
            return Vec::new();
        }
        self.acted
            .retain(|_, at| now.saturating_duration_since(*at) < REMEMBER);
        while self
            .sent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= Duration::from_secs(60))
        {
            self.sent.pop_front();
        }
        if self
            .held_back_since
            .is_none_or(|since| now.saturating_duration_since(since) >= Duration::from_secs(60))
        {
            self.held_back.clear();
            self.held_back_since = Some(now);
        }
        let mut orders = Vec::new();
        for flag in flags {
            let Some((offence, rule)) = offence_of(flag.reason) else {
                continue;
            };
            let Some(rule_settings) = settings.rules.get(&flag.reason) else {
                continue;
            };
            let Some(action) = rule_settings.guard else {
                continue;
            };
            if wall_s - flag.since < guard.grace.as_secs_f64() {
                continue;
            }
            let Some(target) = flag.target.as_deref() else {
                continue;
            };
            let activity = targets
                .iter()
                .filter(|t| t.name == target && t.up)
                .filter_map(|t| t.activity.as_ref())
                .find_map(|a| a.tenants.get(&flag.tenant));
            let Some(activity) = activity else {
                continue;
            };
            for offender in &activity.offenders {
                let caused_it = offender.offence == offence
                    && (offence == Offence::LockBlocker
                        || offender.seconds >= rule_settings.threshold);
                let spared = offender.superuser
                    || guard
                        .exclude_applications
                        .is_match(&offender.application_name);
                // Without its timestamps a pid names no statement: never
                // signalled.
                let Some(judged) = offender.judged else {
                    continue;
                };
                let key = (target.to_owned(), offender.pid, judged);
                if !caused_it || spared || self.acted.contains_key(&key) {
                    continue;
                }
                let (action, downgraded_from) = match action {
                    GuardAction::Terminate if offender.tenant_from_client => {
                        (GuardAction::Cancel, Some(GuardAction::Terminate))
                    }
                    GuardAction::Terminate | GuardAction::Cancel => (action, None),
                };
                let order = GuardOrder {
                    target: target.to_owned(),
                    tenant: flag.tenant.clone(),
                    rule,
                    action,
                    downgraded_from,
                    pid: offender.pid,
                    judged,
                    query: guard.query_text.show(&offender.query),
                    age_seconds: offender.seconds,
                    dry_run: guard.mode == GuardMode::DryRun,
                };
                if self.sent.len() >= guard.max_actions_per_minute as usize {
                    if self.held_back.insert(key) {
                        log.record(&order, GuardResult::RateLimited, wall_s);
                        tracing::warn!(
                            target_name = target,
                            tenant = %order.tenant,
                            rule,
                            pid = order.pid,
                            max_per_minute = guard.max_actions_per_minute,
                            "Guard action held back: guard.max_actions_per_minute reached"
                        );
                    }
                    continue;
                }
                self.sent.push_back(now);
                self.acted.insert(key, now);
                orders.push(order);
            }
        }
        orders
    }
}

/// The offence a guarded rule acts on, and the rule's name.
fn offence_of(rule: RuleName) -> Option<(Offence, &'static str)> {
    match rule {
        RuleName::LongQuery => Some((Offence::LongQuery, rule.as_str())),
        RuleName::IdleInTransaction => Some((Offence::IdleInTransaction, rule.as_str())),
        RuleName::LockBlocker => Some((Offence::LockBlocker, rule.as_str())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::detect::settings::Severity;
    use crate::detect::{FlagAction, GuardSettings};
    use std::time::SystemTime;

    use crate::store::{ActivitySnapshot, JudgedActivity, Offender, TenantActivity};

    fn flag(tenant: &str, reason: RuleName, since: f64) -> Flag {
        Flag {
            tenant: tenant.into(),
            reason,
            severity: Severity::Warning,
            since,
            value: 0.0,
            threshold: 0.0,
            target: Some("main".into()),
            action: FlagAction::Guard,
        }
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// A session of backend `pid`, started at `pid` seconds; its statement
    /// (or idle spell) began at 1000 + `pid` seconds.
    fn offender(pid: i32, offence: Offence, seconds: f64) -> Offender {
        let began = at(1000 + pid as u64);
        let activity = match offence {
            Offence::IdleInTransaction => JudgedActivity::IdleTransaction {
                xact_start: began,
                state_change: began,
            },
            Offence::LongQuery | Offence::LockBlocker => {
                JudgedActivity::Statement { query_start: began }
            }
        };
        Offender {
            pid,
            offence,
            seconds,
            query: format!("SELECT {pid}"),
            superuser: false,
            application_name: "web".into(),
            judged: Some(Judged {
                backend_start: at(pid as u64),
                activity,
            }),
            tenant_from_client: false,
        }
    }

    fn target(offenders: Vec<Offender>) -> TargetStatus {
        let mut activity = ActivitySnapshot::default();
        activity.tenants.insert(
            "noisy".into(),
            TenantActivity {
                offenders,
                ..TenantActivity::default()
            },
        );
        TargetStatus {
            name: "main".into(),
            up: true,
            activity: Some(Arc::new(activity)),
            ..TargetStatus::default()
        }
    }

    fn settings(mode: GuardMode, per_minute: u32) -> DetectSettings {
        DetectSettings {
            guard: GuardSettings {
                mode,
                grace: Duration::from_secs(30),
                max_actions_per_minute: per_minute,
                ..GuardSettings::default()
            },
            ..DetectSettings::default()
        }
    }

    #[test]
    fn only_the_sessions_that_caused_the_flag_after_the_grace() {
        let mut superuser = offender(4, Offence::LongQuery, 900.0);
        superuser.superuser = true;
        let mut dump = offender(5, Offence::LongQuery, 900.0);
        dump.application_name = "pg_dump".into();
        let targets = [target(vec![
            offender(1, Offence::LongQuery, 400.0),
            offender(2, Offence::LongQuery, 20.0),
            offender(3, Offence::IdleInTransaction, 900.0),
            superuser,
            dump,
        ])];
        let flags = [flag("noisy", RuleName::LongQuery, 1000.0)];
        let s = settings(GuardMode::Enforce, 10);
        let mut guard = Guard::default();
        let mut log = GuardLog::default();
        let now = Instant::now();
        // Within the grace: nothing.
        assert!(
            guard
                .orders(&flags, &targets, &s, now, 1010.0, &mut log)
                .is_empty()
        );
        let orders = guard.orders(&flags, &targets, &s, now, 1030.0, &mut log);
        assert_eq!(orders.len(), 1, "{orders:?}");
        assert_eq!(orders[0].pid, 1);
        assert_eq!(
            Some(orders[0].judged),
            targets[0].activity.as_ref().unwrap().tenants["noisy"].offenders[0].judged
        );
        assert_eq!(orders[0].action, GuardAction::Cancel);
        assert_eq!(orders[0].rule, "long_query");
        assert!(!orders[0].dry_run);
        // Each session once.
        assert!(
            guard
                .orders(&flags, &targets, &s, now, 1040.0, &mut log)
                .is_empty()
        );
        // Idle in transaction: terminated by default.
        let idle = [flag("noisy", RuleName::IdleInTransaction, 1000.0)];
        let orders = guard.orders(&idle, &targets, &s, now, 1040.0, &mut log);
        assert_eq!(orders.len(), 1);
        assert_eq!(
            (orders[0].pid, orders[0].action),
            (3, GuardAction::Terminate)
        );
        // Off: nothing; dry run: orders marked so.
        let mut fresh = Guard::default();
        let off = settings(GuardMode::Off, 10);
        assert!(
            fresh
                .orders(&flags, &targets, &off, now, 1040.0, &mut log)
                .is_empty()
        );
        let dry = settings(GuardMode::DryRun, 10);
        let orders = fresh.orders(&flags, &targets, &dry, now, 1040.0, &mut log);
        assert!(orders[0].dry_run);
    }

    #[test]
    fn an_order_names_the_statement_and_each_statement_is_ordered_once() {
        let flags = [flag("noisy", RuleName::LongQuery, 0.0)];
        let s = settings(GuardMode::Enforce, 10);
        let mut guard = Guard::default();
        let mut log = GuardLog::default();
        let now = Instant::now();
        let first = offender(7, Offence::LongQuery, 400.0);
        let orders = guard.orders(
            &flags,
            &[target(vec![first.clone()])],
            &s,
            now,
            60.0,
            &mut log,
        );
        assert_eq!(orders.len(), 1);
        assert_eq!(Some(orders[0].judged), first.judged);
        assert!(
            guard
                .orders(
                    &flags,
                    &[target(vec![first.clone()])],
                    &s,
                    now,
                    61.0,
                    &mut log
                )
                .is_empty()
        );
        // The same backend's next statement is another offence: ordered
        // (an order that found the first one finished spares nothing).
        let mut next = first.clone();
        next.judged = Some(Judged {
            backend_start: at(7),
            activity: JudgedActivity::Statement {
                query_start: at(2000),
            },
        });
        let orders = guard.orders(
            &flags,
            &[target(vec![next.clone()])],
            &s,
            now,
            62.0,
            &mut log,
        );
        assert_eq!(orders.len(), 1);
        assert_eq!(Some(orders[0].judged), next.judged);
        // Without the timestamps a pid names no statement: never ordered.
        let mut unnamed = offender(8, Offence::LongQuery, 400.0);
        unnamed.judged = None;
        assert!(
            guard
                .orders(&flags, &[target(vec![unnamed])], &s, now, 63.0, &mut log)
                .is_empty()
        );
    }

    #[test]
    fn a_tenant_the_client_names_is_cancelled_never_terminated() {
        let flags = [flag("noisy", RuleName::IdleInTransaction, 0.0)];
        let s = settings(GuardMode::Enforce, 10);
        let mut guard = Guard::default();
        let mut log = GuardLog::default();
        let mut claimed = offender(1, Offence::IdleInTransaction, 900.0);
        claimed.tenant_from_client = true;
        let by_role = offender(2, Offence::IdleInTransaction, 900.0);
        let orders = guard.orders(
            &flags,
            &[target(vec![claimed, by_role])],
            &s,
            Instant::now(),
            60.0,
            &mut log,
        );
        let by_pid = |pid| orders.iter().find(|o| o.pid == pid).unwrap();
        assert_eq!(
            (by_pid(1).action, by_pid(1).downgraded_from),
            (GuardAction::Cancel, Some(GuardAction::Terminate))
        );
        assert_eq!(
            (by_pid(2).action, by_pid(2).downgraded_from),
            (GuardAction::Terminate, None)
        );
    }

    #[test]
    fn at_most_max_actions_per_minute() {
        let offenders = (0..5)
            .map(|pid| offender(pid, Offence::LockBlocker, 1.0))
            .collect();
        let targets = [target(offenders)];
        let flags = [flag("noisy", RuleName::LockBlocker, 0.0)];
        let s = settings(GuardMode::Enforce, 2);
        let mut guard = Guard::default();
        let mut log = GuardLog::default();
        let now = Instant::now();
        assert_eq!(
            guard
                .orders(&flags, &targets, &s, now, 60.0, &mut log)
                .len(),
            2
        );
        let held = log.counts();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0.3, GuardResult::RateLimited);
        assert_eq!(held[0].1, 3);
        // Still held within the minute (and not counted twice)...
        let later = now + Duration::from_secs(30);
        assert!(
            guard
                .orders(&flags, &targets, &s, later, 90.0, &mut log)
                .is_empty()
        );
        assert_eq!(log.counts()[0].1, 3);
        // ...ordered once the minute has passed.
        let next = now + Duration::from_secs(61);
        assert_eq!(
            guard
                .orders(&flags, &targets, &s, next, 121.0, &mut log)
                .len(),
            2
        );
    }
}
