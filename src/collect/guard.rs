//! Carrying out guard orders on a target: `pg_cancel_backend` or
//! `pg_terminate_backend` over the poller's own session (so the time
//! limits and TLS of every poll apply, and tenantwatch's session is never
//! among the sessions it signals), between two polls. Each order ends in a
//! structured log line and a record (`tenantwatch_guard_actions_total`,
//! `GET /api/v1/guard`).

use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::store::PollErrorKind;
use crate::store::guard::{GuardAction, GuardOrder, GuardResult, SharedGuardLog};

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
            let sql = match order.action {
                GuardAction::Cancel => "SELECT pg_cancel_backend($1::int4)",
                GuardAction::Terminate => "SELECT pg_terminate_backend($1::int4)",
            };
            let primary = self.primary_database();
            match self.query(&primary, sql, &[&order.pid]).await {
                // false: no such backend any more (it ended on its own).
                Ok(rows) => match rows.first().map(|row| row.try_get::<_, bool>(0)) {
                    Some(Ok(true)) => GuardResult::Ok,
                    _ => GuardResult::Gone,
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
            pid = order.pid,
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
