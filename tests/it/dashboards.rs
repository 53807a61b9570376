//! The shipped Grafana dashboards: structure (a datasource variable used by
//! every panel, stable uids, a unit on every panel, `$__rate_interval` in
//! rates, a latency heatmap, top-k instead of a line per tenant), every
//! expression parses (promtool) and reads only exported metrics.

use crate::support;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

const BOARDS: [(&str, &str); 5] = [
    ("fleet", include_str!("../../dashboards/fleet.json")),
    ("tenant", include_str!("../../dashboards/tenant.json")),
    (
        "noisy-neighbours",
        include_str!("../../dashboards/noisy-neighbours.json"),
    ),
    ("capacity", include_str!("../../dashboards/capacity.json")),
    ("health", include_str!("../../dashboards/health.json")),
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
        .replace("$__range", "1h")
        .replace("$job", ".+")
        .replace("$instance", ".+")
        .replace("$cluster", ".*")
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
        for variable in ["job", "instance"] {
            assert!(
                vars.iter().any(|v| v["name"] == variable),
                "{name}: a {variable} variable"
            );
        }
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
                    assert!(
                        panel["fieldConfig"]["defaults"]["links"][0]["url"]
                            .as_str()
                            .is_some_and(|u| u.starts_with("/d/tenantwatch-tenant/")
                                && u.contains("${__url_time_range}")),
                        "{name} / {title}: tenant lines without a link to the tenant dashboard"
                    );
                }
                // Several tenantwatch instances: every query selects them.
                if !expr.starts_with("vector(") {
                    assert!(
                        expr.contains("job=~\"$job\"") && expr.contains("instance=~\"$instance\""),
                        "{name} / {title}: {expr} does not select $job and $instance"
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
        let expr = match expr.strip_prefix("label_values(") {
            Some(inner) => substitute(inner.rsplit_once(',').unwrap().0),
            None => substitute(expr),
        };
        // A name prefix in a `__name__=~"tenantwatch_tenant_.+"` regex is
        // no metric.
        for metric in support::metric_names_in(&expr)
            .into_iter()
            .filter(|m| !m.ends_with('_'))
        {
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

/// The mixin (mixin/, jsonnet) is the one source of the dashboards, the
/// rules file and the PrometheusRule: what scripts/gen-mixin.sh writes now
/// must be what is committed.
#[test]
fn the_committed_monitoring_content_is_what_the_mixin_generates() {
    let root = env!("CARGO_MANIFEST_DIR");
    let generated = std::env::temp_dir().join(format!("tw-mixin-{}", std::process::id()));
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/gen-mixin.sh"))
        .arg(&generated)
        .output()
        .expect("bash runs scripts/gen-mixin.sh");
    assert!(
        out.status.success(),
        "scripts/gen-mixin.sh failed (it needs jsonnet: apt-get install jsonnet; scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<String> = BOARDS
        .iter()
        .map(|(name, _)| format!("dashboards/{name}.json"))
        .collect();
    files.push("alerts/tenantwatch.rules.yml".into());
    files.push("deploy/kustomize/base/prometheusrule.yaml".into());
    for file in files {
        let fresh = std::fs::read_to_string(generated.join(&file)).unwrap();
        let committed = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert!(
            fresh == committed,
            "{file} differs from what the mixin generates: edit mixin/, run scripts/gen-mixin.sh"
        );
    }
    std::fs::remove_dir_all(generated).unwrap();
}

/// Every recording rule a dashboard reads is one the rules file records.
#[test]
fn dashboards_read_only_recorded_rules() {
    let rules = include_str!("../../alerts/tenantwatch.rules.yml");
    for (place, expr) in expressions() {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.contains(':') && word.contains("tenantwatch_") {
                assert!(
                    rules.contains(&format!("record: \"{word}\"")),
                    "{place}: {word} is not a recording rule of the mixin"
                );
            }
        }
    }
}
