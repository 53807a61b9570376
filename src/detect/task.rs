//! The detector's task in the daemon: evaluates every `detect.interval`,
//! publishes flags and advice, logs each flag once when raised and once when
//! cleared, and prunes idle rate limiters.

use std::sync::{Arc, PoisonError};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{DetectSettings, Detector, Judgement, SharedJudgement, Transition};
use crate::ratelimit::RateLimits;
use crate::store::{Store, TargetStatuses};

/// Runs until `shutdown`; new settings arriving on `settings` apply from the
/// next evaluation.
pub async fn run(
    mut settings: watch::Receiver<DetectSettings>,
    store: Arc<Store>,
    statuses: TargetStatuses,
    limits: Arc<RateLimits>,
    judgement: SharedJudgement,
    shutdown: CancellationToken,
) {
    let initial = settings.borrow_and_update().clone();
    let mut interval = tokio::time::interval(initial.interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut detector = Detector::new(initial);
    // What a previous run left (the state file), published before start.
    let restored = judgement
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .clone();
    detector.restore(restored);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if settings.has_changed().unwrap_or(false) {
            let new = settings.borrow_and_update().clone();
            if new.interval != detector.settings().interval {
                interval = tokio::time::interval(new.interval);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                interval.tick().await;
            }
            detector.set_settings(new);
        }
        let snapshot = store.snapshot();
        let targets = statuses.snapshot();
        let policy = limits.policy();
        let transitions = detector.evaluate(
            std::time::Instant::now(),
            std::time::SystemTime::now(),
            &snapshot,
            &targets,
            |tenant| policy.base_quota(tenant).rate.qps,
        );
        transitions.iter().for_each(log_transition);
        let advice = detector.advice();
        limits.set_advice(
            advice
                .iter()
                .map(|a| (a.tenant.clone(), a.effective_qps))
                .collect(),
        );
        let view = Arc::new(Judgement {
            flags: detector.flags(),
            advice,
            baselines: detector.baselines(),
        });
        *judgement.write().unwrap_or_else(PoisonError::into_inner) = view;
        limits.prune();
    }
}

fn log_transition(transition: &Transition) {
    match transition {
        Transition::Raised(flag) => tracing::warn!(
            tenant = %flag.tenant,
            reason = flag.reason.as_str(),
            severity = ?flag.severity,
            value = flag.value,
            threshold = flag.threshold,
            target = ?flag.target,
            "Tenant flagged"
        ),
        Transition::Cleared(flag) => tracing::info!(
            tenant = %flag.tenant,
            reason = flag.reason.as_str(),
            "Tenant flag cleared"
        ),
    }
}
