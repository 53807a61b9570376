//! The detector's task in the daemon: evaluates every `detect.interval`,
//! publishes flags and advice, logs each flag once when raised and once when
//! cleared, and prunes idle rate limiters.

use std::sync::{Arc, PoisonError};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use std::collections::HashMap;

use super::fleet::{self, Figures, FleetStatus};
use super::guard::{Guard, GuardOutbox};
use super::{Advice, DetectSettings, Detector, Judgement, SharedJudgement, Transition};
use crate::ratelimit::RateLimits;
use crate::store::{PgBouncerStatuses, Store, TargetStatuses};

/// What the detection task reads and where it publishes.
pub struct DetectTask {
    /// New settings arriving here apply from the next evaluation.
    pub settings: watch::Receiver<DetectSettings>,
    pub store: Arc<Store>,
    pub statuses: TargetStatuses,
    pub pgbouncers: PgBouncerStatuses,
    /// Advice goes to the limiters (and through them to Redis).
    pub limits: Arc<RateLimits>,
    pub judgement: SharedJudgement,
    pub guard_outbox: GuardOutbox,
    /// Told once the first judgement is published (readiness waits for it
    /// with the Redis backend).
    pub first_judgement: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Runs until `shutdown`.
pub async fn run(task: DetectTask, shutdown: CancellationToken) {
    let DetectTask {
        mut settings,
        store,
        statuses,
        pgbouncers,
        limits,
        judgement,
        guard_outbox,
        mut first_judgement,
    } = task;
    let mut guard = Guard::default();
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
    if let Some(redis) = limits.redis() {
        redis.warm_up().await;
    }
    loop {
        let tick = tokio::select! {
            _ = shutdown.cancelled() => return,
            at = interval.tick() => at,
        };
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
        let pools = pgbouncers.snapshot();
        let policy = limits.policy();
        let now = evaluation_time(
            tick.into_std(),
            std::time::Instant::now(),
            detector.settings().interval,
        );
        let own = detector.observe_events(now, &snapshot);
        let (events, fleet_status) = match limits.redis() {
            Some(redis) => exchange_figures(redis, own, detector.settings().interval).await,
            None => (own, FleetStatus::replica()),
        };
        let transitions = detector.judge(
            now,
            std::time::SystemTime::now(),
            super::Observed {
                store: &snapshot,
                targets: &targets,
                pgbouncers: &pools,
            },
            &events,
            |tenant| policy.base_quota(tenant).rate.qps,
        );
        transitions.iter().for_each(log_transition);
        let mut advice = detector.advice();
        let shared_advice = match limits.redis() {
            Some(redis) => {
                let instance = &redis.settings().instance;
                for a in &mut advice {
                    a.instance = Some(instance.clone());
                }
                exchange_advice(redis, &advice, detector.settings().interval).await
            }
            None => Vec::new(),
        };
        limits.set_advice(tightest(&advice, &shared_advice));
        let flags = detector.flags();
        let wall_s = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let orders = {
            let mut log = guard_outbox
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            guard.orders(
                &flags,
                &targets,
                detector.settings(),
                std::time::Instant::now(),
                wall_s,
                &mut log,
            )
        };
        guard_outbox.send(orders, wall_s);
        let view = Arc::new(Judgement {
            flags,
            advice,
            shared_advice,
            baselines: detector.baselines(),
            fleet: fleet_status,
            db_time_shares: Arc::new(events.db_time_shares()),
        });
        *judgement.write().unwrap_or_else(PoisonError::into_inner) = view;
        if let Some(told) = first_judgement.take() {
            // Nobody waiting any more is fine.
            let _ = told.send(());
        }
        limits.prune();
    }
}

/// Publishes this replica's window figures to Redis and returns the sum of
/// every live replica's, in fleet scope; when Redis cannot answer, this
/// replica's own figures, in replica scope. Published figures live three
/// evaluations, so a replica that stops drops out within three.
async fn exchange_figures(
    redis: &crate::ratelimit::RedisBackend,
    own: Figures,
    interval: std::time::Duration,
) -> (Figures, FleetStatus) {
    let encoded = fleet::encode(&own);
    match redis.exchange_figures(&encoded, interval * 3).await {
        Ok(shared) => {
            let (figures, mut status) = fleet::merge(&own, &redis.settings().instance, &shared);
            status.bytes_sent = encoded.len();
            (figures, status)
        }
        Err(_) => (own, FleetStatus::replica()),
    }
}

/// Most advice entries read from one other instance.
const MAX_SHARED_ADVICE: usize = 100_000;

/// Publishes this instance's advice to Redis and returns every other live
/// instance's. Published advice lives three evaluations, so an instance
/// that stops takes its advice with it; when Redis cannot answer, only this
/// instance's own advice holds.
async fn exchange_advice(
    redis: &crate::ratelimit::RedisBackend,
    own: &[Advice],
    interval: std::time::Duration,
) -> Vec<Advice> {
    let Ok(published) = serde_json::to_string(own) else {
        return Vec::new();
    };
    let Ok(instances) = redis.exchange_advice(&published, interval * 3).await else {
        return Vec::new();
    };
    let me = &redis.settings().instance;
    let mut shared = Vec::new();
    for (instance, json) in instances {
        if &instance == me {
            continue;
        }
        match serde_json::from_str::<Vec<Advice>>(&json) {
            Ok(list) => shared.extend(list.into_iter().take(MAX_SHARED_ADVICE).map(|mut a| {
                a.instance = Some(instance.clone());
                a
            })),
            Err(err) => tracing::warn!(
                instance,
                error = %err,
                "Ignoring unreadable rate-limit advice shared in Redis"
            ),
        }
    }
    shared
}

/// The quota each advised tenant is held to: the tightest of every live
/// instance's advice.
fn tightest(own: &[Advice], shared: &[Advice]) -> HashMap<String, f64> {
    let mut enforced: HashMap<String, f64> = HashMap::new();
    for advice in own.iter().chain(shared) {
        if !(advice.effective_qps.is_finite() && advice.effective_qps > 0.0) {
            continue;
        }
        enforced
            .entry(advice.tenant.clone())
            .and_modify(|qps| *qps = qps.min(advice.effective_qps))
            .or_insert(advice.effective_qps);
    }
    enforced
}

fn log_transition(transition: &Transition) {
    match transition {
        Transition::Raised(flag) => tracing::warn!(
            tenant = %flag.tenant,
            reason = flag.reason.as_str(),
            severity = flag.severity.as_str(),
            action = flag.action.as_str(),
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

/// The time an evaluation is made at: its tick's, not the clock's once the
/// snapshots are taken. `for` and `cooldown` are whole intervals on the
/// tick grid, where a clock read after a snapshot of varying cost made five
/// intervals measure 9.99 s against a 10 s cooldown, and the flag wait a
/// sixth (found by the soak, issue 26). A tick that fired late (an
/// evaluation overran it, a Redis exchange waited, the first tick before
/// Redis warmed up) carries its scheduled time: off the grid by more than
/// half an interval, the clock's time is the truer one for rates.
fn evaluation_time(
    tick: std::time::Instant,
    clock: std::time::Instant,
    interval: std::time::Duration,
) -> std::time::Instant {
    if clock.saturating_duration_since(tick) <= interval / 2 {
        tick
    } else {
        clock
    }
}

#[cfg(test)]
mod tests {
    use super::evaluation_time;
    use std::time::{Duration, Instant};

    #[test]
    fn an_evaluation_is_timed_by_its_tick_unless_the_tick_fired_late() {
        let tick = Instant::now();
        let interval = Duration::from_secs(10);
        let snapshots_taken = tick + Duration::from_millis(40);
        assert_eq!(evaluation_time(tick, snapshots_taken, interval), tick);
        let overran = tick + Duration::from_secs(7);
        assert_eq!(evaluation_time(tick, overran, interval), overran);
    }
}
