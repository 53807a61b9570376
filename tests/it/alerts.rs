//! The shipped Prometheus rules: promtool checks and unit-tests them, every
//! alert has a severity, a summary, a description and a runbook that exists,
//! and every metric the rules use is one tenantwatch exports (per
//! docs/metrics.md, which another test keeps equal to /metrics). Needs
//! `promtool` (Debian's prometheus package; scripts/test.sh installs it).

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const RULES: &str = include_str!("../../alerts/tenantwatch.rules.yml");

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed: apt-get install prometheus (scripts/test.sh does it): {e}")
        });
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    promtool(&["check", "rules", "alerts/tenantwatch.rules.yml"]);
    promtool(&["test", "rules", "alerts/tests/tenantwatch.test.yml"]);
}

fn alert_names() -> Vec<String> {
    RULES
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|name| name.trim_matches('"').to_owned())
        .collect()
}

/// Where alerts link their runbooks: absolute, since a relative link is dead
/// in Slack or PagerDuty.
const RUNBOOKS: &str = "https://github.com/tenantwatch/tenantwatch/blob/main/docs/runbooks/";

#[test]
fn every_alert_is_labelled_annotated_tested_and_has_a_runbook() {
    let tests = include_str!("../../alerts/tests/tenantwatch.test.yml");
    let alerts = alert_names();
    assert!(alerts.len() >= 11);
    // Each alert's block runs to the next "- alert:" or group.
    for (i, name) in alerts.iter().enumerate() {
        let start = RULES.find(&format!("- alert: \"{name}\"\n")).unwrap();
        let end = alerts
            .get(i + 1)
            .and_then(|next| RULES.find(&format!("- alert: \"{next}\"\n")))
            .unwrap_or(RULES.len());
        let block = &RULES[start..end];
        for needle in [
            "severity: ",
            "summary: ",
            "description: ",
            &format!("runbook_url: \"{RUNBOOKS}{name}.md\""),
        ] {
            assert!(block.contains(needle), "{name} lacks {needle}");
        }
        let runbook =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("docs/runbooks/{name}.md"));
        let text = std::fs::read_to_string(&runbook)
            .unwrap_or_else(|_| panic!("missing {}", runbook.display()));
        for section in ["## Meaning", "## Impact", "## Diagnose", "## Mitigate"] {
            assert!(text.contains(section), "{name}'s runbook lacks {section}");
        }
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool test"
        );
        // ... and one with two tenantwatch instances (shards, or a rollout's
        // two pods), where a rule that aggregates or joins carelessly fails.
        let two_instances = tests.split("\n  - name: ").any(|group| {
            group.contains("instance=\"a\"")
                && group.contains("instance=\"b\"")
                && group.contains(&format!("alertname: {name}\n"))
        });
        assert!(
            two_instances,
            "{name} has no promtool test with two instances"
        );
    }
}

#[test]
fn rules_use_only_exported_metrics() {
    let documented = support::documented_metrics();
    let used: BTreeSet<String> = RULES
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| {
            !["summary:", "description:", "runbook_url:"]
                .iter()
                .any(|k| l.contains(k))
        })
        .flat_map(support::metric_names_in)
        .collect();
    assert!(used.len() > 10, "{used:?}");
    let unknown: Vec<_> = used
        .iter()
        .filter(|name| !support::is_exported(name, &documented))
        .collect();
    assert!(
        unknown.is_empty(),
        "the rules use metrics tenantwatch does not export: {unknown:?}"
    );
}

fn amtool(args: &[&str]) -> std::process::Output {
    Command::new("amtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("amtool is needed: apt-get install prometheus-alertmanager (scripts/test.sh does it): {e}"))
}

#[test]
fn the_example_alertmanager_config_routes_pages_and_tenant_warnings() {
    let config = "alerts/alertmanager.example.yml";
    let out = amtool(&["check-config", config]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let file_flag = format!("--config.file={config}");
    for (receiver, labels) in [
        (
            "pager",
            &[
                "severity=critical",
                "alertname=TenantwatchTargetDown",
                "target=shard1",
            ][..],
        ),
        (
            "pager",
            &[
                "severity=critical",
                "alertname=TenantwatchTargetConnectionsNearMax",
                "target=shard2",
            ],
        ),
        (
            "tenant-owners",
            &[
                "severity=warning",
                "alertname=TenantwatchTenantFlagged",
                "tenant=clinic7",
                "reason=db_time_hog",
            ],
        ),
        (
            "tenant-owners",
            &[
                "severity=warning",
                "alertname=TenantwatchTenantFlagged",
                "reason=idle_in_transaction",
                "tenant=clinic7",
                "target=shard1",
            ],
        ),
        (
            "platform",
            &[
                "severity=warning",
                "alertname=TenantwatchPollsSlow",
                "target=shard1",
            ],
        ),
        (
            "platform",
            &["severity=warning", "alertname=TenantwatchTenantOverflow"],
        ),
    ] {
        let verify = format!("--verify.receivers={receiver}");
        let mut args = vec!["config", "routes", "test", &file_flag, &verify];
        args.extend_from_slice(labels);
        let out = amtool(&args);
        assert!(
            out.status.success(),
            "{labels:?} should reach {receiver}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Target down inhibits its tenants' alerts and its poll alerts.
    let config_text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(config)).unwrap();
    assert!(config_text.contains("source_matchers: ['alertname=\"TenantwatchTargetDown\"']"));
    assert!(config_text.contains("equal: [target]"));
}
