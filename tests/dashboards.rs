//! The shipped Grafana dashboards: structure (a datasource variable used by
//! every panel, stable uids, a unit on every panel, `$__rate_interval` in
//! rates, a latency heatmap, top-k instead of a line per tenant), every
//! expression parses (promtool) and reads only exported metrics.

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

const BOARDS: [(&str, &str); 5] = [
    ("fleet", include_str!("../dashboards/fleet.json")),
    ("tenant", include_str!("../dashboards/tenant.json")),
    (
        "noisy-neighbours",
        include_str!("../dashboards/noisy-neighbours.json"),
    ),
    ("capacity", include_str!("../dashboards/capacity.json")),
    ("health", include_str!("../dashboards/health.json")),
];

fn boards() -> Vec<(&'static str, Value)> {
    BOARDS
        .iter()
        .map(|(name, text)| {
            (
                *name,
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        })
        .collect()
}

fn panels(board: &Value) -> impl Iterator<Item = &Value> {
    board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
}

/// Every expression with its board and panel title.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, board) in boards() {
        for panel in panels(&board) {
            for target in panel["targets"].as_array().unwrap() {
                out.push((
                    format!("{name} / {}", panel["title"]),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
        for var in board["templating"]["list"].as_array().unwrap() {
            if let Some(definition) = var["definition"].as_str() {
                out.push((format!("{name} / ${}", var["name"]), definition.to_owned()));
            }
        }
        for annotation in board["annotations"]["list"].as_array().unwrap() {
            out.push((
                format!("{name} / annotation {}", annotation["name"]),
                annotation["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Grafana's variables replaced by values that keep the expression valid.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$limit", "10")
        .replace("$tenant", "clinic1")
        .replace("$target", ".*")
}

#[test]
fn dashboards_follow_the_house_rules() {
    let mut uids = BTreeSet::new();
    for (name, board) in boards() {
        let uid = board["uid"].as_str().unwrap();
        assert_eq!(uid, format!("tenantwatch-{name}"), "stable uid");
        assert!(uids.insert(uid.to_owned()));
        let vars = board["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{name}: datasource variable"
        );
        let mut heatmaps = 0;
        for panel in panels(&board) {
            let title = panel["title"].as_str().unwrap();
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name} / {title}: datasource variable"
            );
            let unit = panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            assert!(!unit.is_empty(), "{name} / {title}: unit");
            if panel["type"] == "heatmap" {
                heatmaps += 1;
            }
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{name} / {title}: target datasource"
                );
                let expr = target["expr"].as_str().unwrap();
                for function in ["rate(", "increase("] {
                    if expr.contains(function) {
                        assert!(
                            expr.contains("[$__rate_interval]"),
                            "{name} / {title}: {function} without $__rate_interval"
                        );
                    }
                }
                // A graph with a line per tenant must be bounded.
                let per_tenant_lines = panel["type"] == "timeseries"
                    && target["legendFormat"]
                        .as_str()
                        .is_some_and(|l| l.contains("{{tenant}}"));
                if per_tenant_lines {
                    assert!(
                        expr.contains("topk("),
                        "{name} / {title}: one line per tenant without topk"
                    );
                }
            }
        }
        if name == "fleet" || name == "tenant" {
            assert!(heatmaps > 0, "{name}: a latency heatmap");
        }
    }
    assert_eq!(uids.len(), 5);
}

#[test]
fn every_expression_parses_and_reads_exported_metrics() {
    let documented = support::documented_metrics();
    let expressions = expressions();
    assert!(expressions.len() > 40);
    let mut rules = String::from("groups:\n  - name: dashboard-expressions\n    rules:\n");
    for (i, (place, expr)) in expressions.iter().enumerate() {
        // label_values(metric, label) is Grafana's; check the metric in it.
        let expr = if let Some(inner) = expr.strip_prefix("label_values(") {
            inner.split(',').next().unwrap().to_owned()
        } else {
            substitute(expr)
        };
        for metric in support::metric_names_in(&expr) {
            assert!(
                support::is_exported(&metric, &documented),
                "{place}: {metric} is not exported"
            );
        }
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = std::env::temp_dir().join(format!("tw-dashboard-exprs-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed: apt-get install prometheus (scripts/test.sh does it): {e}")
        });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(file).unwrap();
}

#[test]
fn the_committed_dashboards_are_what_the_generator_writes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/gen-dashboards.py"))
        .env(
            "TENANTWATCH_DASHBOARDS_OUT",
            std::env::temp_dir().join(format!("tw-dash-{}", std::process::id())),
        )
        .output()
        .expect("python3 runs the generator (apt-get install python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = std::env::temp_dir().join(format!("tw-dash-{}", std::process::id()));
    for (name, committed) in BOARDS {
        let fresh = std::fs::read_to_string(generated.join(format!("{name}.json"))).unwrap();
        assert_eq!(
            fresh, committed,
            "dashboards/{name}.json differs from scripts/gen-dashboards.py's output: rerun it"
        );
    }
    std::fs::remove_dir_all(generated).unwrap();
}
