//! Rate-limit advice: a tenant with a raised flag whose rule tightens is
//! held to a fair share of the current total query rate (never below
//! `floor_qps`, never above its configured quota); once no such flag is
//! raised, its quota grows back by `relax_factor` per evaluation.

use std::collections::{BTreeMap, HashMap};

use super::{Advice, DetectSettings, RuleName};

/// Whether a piece of advice can be enforced: its quota a finite number of
/// queries per second above zero (and its configured quota and start
/// finite). The detector only ever computes such advice; advice read back
/// from elsewhere (the state file) that is not is dropped, never enforced:
/// a NaN, negative or infinite quota would deny or admit everything.
pub fn enforceable(advice: &Advice) -> bool {
    advice.effective_qps.is_finite()
        && advice.effective_qps > 0.0
        && advice.base_qps.is_finite()
        && advice.base_qps >= 0.0
        && advice.since.is_finite()
}

/// Updates `advice` for this evaluation. `tightening` holds each tenant
/// that must be tightened (with the rule why), `rates` every tenant's query
/// rate over the window, `base_qps` each tenant's configured quota.
pub fn update(
    advice: &mut BTreeMap<String, Advice>,
    tightening: &BTreeMap<String, RuleName>,
    rates: &HashMap<&str, f64>,
    settings: &DetectSettings,
    wall_s: f64,
    base_qps: impl Fn(&str) -> f64,
) {
    let total_rate: f64 = rates.values().sum();
    let fair = if rates.is_empty() {
        f64::INFINITY
    } else {
        total_rate / rates.len() as f64
    };
    for (tenant, rule) in tightening {
        let base = base_qps(tenant);
        let mut target = fair.min(base).max(settings.floor_qps.min(base));
        if fair.is_infinite()
            && let Some(existing) = advice.get(tenant)
        {
            // No traffic to judge a fair share by (say, just after a
            // restart): hold the quota where it is.
            target = existing.effective_qps.min(base);
        }
        let entry = advice.entry(tenant.clone()).or_insert(Advice {
            tenant: tenant.clone(),
            base_qps: base,
            effective_qps: target,
            reason: *rule,
            since: wall_s,
            relaxing: false,
            instance: None,
        });
        entry.base_qps = base;
        entry.effective_qps = if entry.relaxing {
            entry.effective_qps.min(target)
        } else {
            target
        };
        entry.relaxing = false;
    }
    let relax = settings.relax_factor.max(1.01);
    advice.retain(|tenant, advice| {
        if tightening.contains_key(tenant) {
            return true;
        }
        advice.relaxing = true;
        advice.base_qps = base_qps(tenant);
        advice.effective_qps *= relax;
        advice.effective_qps < advice.base_qps
    });
}
