//! Carrying out guard orders on a target: `pg_cancel_backend` or
//! `pg_terminate_backend` over the poller's own session (so the time
//! limits and TLS of every poll apply, and tenantwatch's session is never
//! among the sessions it signals), between two polls. Each order ends in a
//! structured log line and a record (`tenantwatch_guard_actions_total`,
//! `GET /api/v1/guard`).
//!
//! An order reaches the poller up to a poll and a detection interval after
//! the poll that judged it; by then the pid may run the next statement,
//! maybe another tenant's (behind a pooler, or a client alternating
//! tenants). So the signal is one statement that re-checks, on the server,
//! the backend and the statement or idle transaction the order names, and
//! signals only on a match: `changed` (the backend does something else) or
//! `gone` (it ended, or its pid is another backend's) are recorded and
//! nothing is sent. `pg_stat_activity` is read afresh by each statement
//! (the poller runs in autocommit), so only the instant between that read
//! and the signal is left.

use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::store::guard::{GuardAction, GuardOrder, GuardResult, SharedGuardLog};
use crate::store::{JudgedActivity, PollErrorKind};

/// Orders queued per target; beyond, the detector counts them `dropped`.
pub const ORDER_QUEUE: usize = 64;

/// What a target's poller receives guard orders on and records them in.
pub struct GuardInbox {
    pub orders: mpsc::Receiver<GuardOrder>,
    pub log: SharedGuardLog,
}

impl super::Poller {
    /// Carries out one order (a dry run only logs it) and records the result.
    pub(super) async fn carry_out(&mut self, order: GuardOrder, log: &SharedGuardLog) {
        let result = if order.dry_run {
            GuardResult::DryRun
        } else {
            let primary = self.primary_database();
            let judged = &order.judged;
            let rows = match judged.activity {
                JudgedActivity::Statement { query_start } => {
                    let sql = signal_sql(order.action, judged.activity);
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                        [&order.pid, &judged.backend_start, &query_start];
                    self.query(&primary, sql, &params).await
                }
                JudgedActivity::IdleTransaction {
                    xact_start,
                    state_change,
                } => {
                    let sql = signal_sql(order.action, judged.activity);
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
                        &order.pid,
                        &judged.backend_start,
                        &xact_start,
                        &state_change,
                    ];
                    self.query(&primary, sql, &params).await
                }
            };
            match rows {
                Ok(rows) => match rows.first() {
                    // No such pid any more: it ended on its own.
                    None => GuardResult::Gone,
                    Some(row) => match (
                        row.try_get::<_, Option<bool>>("same_backend"),
                        row.try_get::<_, Option<bool>>("signalled"),
                    ) {
                        (Ok(Some(true)), Ok(Some(true))) => GuardResult::Ok,
                        // The backend is there, doing something else.
                        (Ok(Some(true)), Ok(None)) => GuardResult::Changed,
                        // Another backend under the same pid, or the
                        // signal found the process gone (`false`).
                        _ => GuardResult::Gone,
                    },
                },
                Err(err) if err.kind == PollErrorKind::Permission => {
                    tracing::warn!(
                        target_name = %self.target.settings.name,
                        tenant = %order.tenant,
                        pid = order.pid,
                        detail = %err.detail,
                        "Guard action refused: tenantwatch's role needs the pg_signal_backend role \
                         (GRANT pg_signal_backend TO <tenantwatch's role>)"
                    );
                    GuardResult::Permission
                }
                Err(err) => {
                    tracing::warn!(
                        target_name = %self.target.settings.name,
                        tenant = %order.tenant,
                        pid = order.pid,
                        error = err.kind.as_str(),
                        detail = %err.detail,
                        "Guard action failed"
                    );
                    GuardResult::Error
                }
            }
        };
        tracing::info!(
            target_name = %self.target.settings.name,
            tenant = %order.tenant,
            rule = order.rule,
            action = order.action.as_str(),
            downgraded_from = order.downgraded_from.map(GuardAction::as_str),
            pid = order.pid,
            backend_start = ?order.judged.backend_start,
            activity = ?order.judged.activity,
            age_seconds = order.age_seconds,
            query = %order.query,
            dry_run = order.dry_run,
            result = result.as_str(),
            "Guard action"
        );
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(&order, result, at);
    }
}

/// The one statement that signals a backend only if it still runs the
/// statement (or sits in the idle transaction) that was judged. Parameters:
/// `$1` pid, `$2` `backend_start`, then `$3` `query_start`, or `$3`
/// `xact_start` and `$4` `state_change`. One row per pid still there:
/// `same_backend` (false: the pid is another backend's now) and
/// `signalled` (NULL: nothing sent, the backend does something else).
fn signal_sql(action: GuardAction, activity: JudgedActivity) -> &'static str {
    match (action, activity) {
        (GuardAction::Cancel, JudgedActivity::Statement { .. }) => {
            "SELECT backend_start = $2 AS same_backend,
                    CASE WHEN backend_start = $2 AND state = 'active' AND query_start = $3
                         THEN pg_cancel_backend(pid) END AS signalled
               FROM pg_stat_activity WHERE pid = $1::int4"
        }
        (GuardAction::Terminate, JudgedActivity::Statement { .. }) => {
            "SELECT backend_start = $2 AS same_backend,
                    CASE WHEN backend_start = $2 AND state = 'active' AND query_start = $3
                         THEN pg_terminate_backend(pid) END AS signalled
               FROM pg_stat_activity WHERE pid = $1::int4"
        }
        (GuardAction::Cancel, JudgedActivity::IdleTransaction { .. }) => {
            "SELECT backend_start = $2 AS same_backend,
                    CASE WHEN backend_start = $2
                              AND state IN ('idle in transaction', 'idle in transaction (aborted)')
                              AND xact_start = $3 AND state_change = $4
                         THEN pg_cancel_backend(pid) END AS signalled
               FROM pg_stat_activity WHERE pid = $1::int4"
        }
        (GuardAction::Terminate, JudgedActivity::IdleTransaction { .. }) => {
            "SELECT backend_start = $2 AS same_backend,
                    CASE WHEN backend_start = $2
                              AND state IN ('idle in transaction', 'idle in transaction (aborted)')
                              AND xact_start = $3 AND state_change = $4
                         THEN pg_terminate_backend(pid) END AS signalled
               FROM pg_stat_activity WHERE pid = $1::int4"
        }
    }
}
