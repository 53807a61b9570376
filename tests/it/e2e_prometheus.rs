//! End to end with the real monitoring stack: the demo's PostgreSQL,
//! PgBouncer and workload, two tenantwatch instances watching the same
//! target under the same name (a rollout, or two shards named alike), a real
//! Prometheus scraping both every second with the shipped rules, and a real
//! Alertmanager with the example configuration, all on loopback. The
//! misbehaving tenant's alert reaches Alertmanager once per instance while
//! no healthy tenant has one, no rule fails to evaluate, and every dashboard
//! panel's query returns data. Prometheus runs with native histograms
//! enabled, so it scrapes the protobuf format, and the tenant dashboard's
//! p95 panel evaluates on the native latency histograms.
//! Needs `prometheus` and `prometheus-alertmanager` (scripts/test.sh installs
//! them).

use crate::support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use serde_json::Value;
use tenantwatch::demo::cluster::free_port;
use tenantwatch::demo::{self as demo, DemoEnvironment, NOISY_TENANT};
use tenantwatch::{Config, Daemon};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: &str, package: &str, args: &[String]) -> Killed {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} is needed: apt-get install {package} (scripts/test.sh does it): {e}")
        });
    Killed(child)
}

async fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let reply = support::try_http(addr, "GET", path, &[], Vec::new())
        .await
        .ok()?;
    (reply.status == 200)
        .then(|| serde_json::from_slice(&reply.body).ok())
        .flatten()
}

async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let reply = support::try_http(addr, "GET", path, &[], Vec::new())
        .await
        .unwrap();
    (
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

/// The tenant dashboard's p95 latency panel, its native side alone (before
/// its `or` to the classic buckets), evaluates on native histograms that
/// Prometheus scraped in the protobuf format.
async fn p95_panel_reads_native_histograms(prometheus: SocketAddr) {
    let (_, p95) = dashboard_queries()
        .into_iter()
        .find(|(place, expr)| {
            place == "tenant / Latency (p50, p95, p99)" && expr.contains("histogram_quantile(0.9")
        })
        .expect("the tenant dashboard's p95 query");
    let (native, _classic) = p95.split_once(" or ").expect("native or classic");
    assert!(!native.contains("_bucket"), "{native}");
    let query = |expr: &str| format!("/api/v1/query?query={}", tenantwatch::api::url_encode(expr));
    let reply = get_json(prometheus, &query(native)).await;
    let p95 = reply
        .as_ref()
        .and_then(|r| r["data"]["result"][0]["value"][1].as_str());
    let p95: f64 = p95
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{native} -> {reply:?}"));
    assert!(p95 > 0.0 && p95.is_finite(), "{native} -> {p95}");
    // The series it reads are native histograms, not floats.
    let raw = get_json(
        prometheus,
        &query("tenantwatch_tenant_query_duration_seconds"),
    )
    .await;
    let series = raw
        .as_ref()
        .and_then(|r| r["data"]["result"].as_array())
        .filter(|result| !result.is_empty())
        .unwrap_or_else(|| panic!("no native latency histogram: {raw:?}"));
    for s in series {
        assert!(
            s["histogram"][1]["buckets"].is_array(),
            "not a native histogram: {s}"
        );
    }
}

/// Every panel expression of every dashboard, with its place.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in ["fleet", "tenant", "noisy-neighbours", "capacity", "health"] {
        let path = format!("{}/dashboards/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let board: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for panel in board["panels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] != "row")
        {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "30s")
                    .replace("$__range", "1m")
                    .replace("$job", ".+")
                    .replace("$instance", ".+")
                    .replace("$cluster", ".*")
                    .replace("$limit", "10")
                    .replace("$tenant", NOISY_TENANT)
                    .replace("$target", ".*");
                out.push((
                    format!("{name} / {}", panel["title"].as_str().unwrap()),
                    expr,
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_alertmanager_and_every_panel_has_data() {
    assert!(
        tenantwatch::demo::pgbouncer::find_binary().is_some(),
        "the PgBouncer panels need the demo's PgBouncer: install Debian's pgbouncer package (scripts/test.sh does it as root)"
    );
    let env = DemoEnvironment::start(12, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the demo environment starts");
    assert!(
        env.pgbouncer.is_some(),
        "the demo's PgBouncer did not start"
    );
    let tenantwatch = env.daemon.http_addr();
    // A second instance watching the same target under the same name, as a
    // rollout (two pods) or a mislabelled second shard does: every shipped
    // rule must keep the two apart.
    let second = Daemon::start(
        Config::try_from(demo::demo_config(
            &env.cluster,
            env.pgbouncer.as_ref(),
            &env.tenants,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap(),
    )
    .await
    .expect("a second tenantwatch starts");
    let second_addr = second.http_addr();
    let dir = env.cluster.dir().join("monitoring");
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let (prometheus_port, alertmanager_port) = (free_port(), free_port());
    let prometheus_config = dir.join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {root}/alerts/tenantwatch.rules.yml\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{alertmanager_port}']\n\
             scrape_configs:\n  - job_name: tenantwatch\n    static_configs:\n      - targets: ['{tenantwatch}', '{second_addr}']\n"
        ),
    )
    .unwrap();
    let _alertmanager = spawn(
        "prometheus-alertmanager",
        "prometheus-alertmanager",
        &[
            format!("--config.file={root}/alerts/alertmanager.example.yml"),
            format!("--storage.path={}", dir.join("alertmanager").display()),
            format!("--web.listen-address=127.0.0.1:{alertmanager_port}"),
            "--cluster.listen-address=".into(),
        ],
    );
    let _prometheus = spawn(
        "prometheus",
        "prometheus",
        &[
            format!("--config.file={}", prometheus_config.display()),
            format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
            // As deploy/prometheus/prometheus.yml says. Debian's Prometheus
            // (2.42) predates scrape_classic_histograms (2.45): it keeps
            // the native buckets of a histogram that has them, and the
            // dashboards' `or` falls back to classic ones elsewhere.
            "--enable-feature=native-histograms".into(),
        ],
    );
    let prometheus: SocketAddr = format!("127.0.0.1:{prometheus_port}").parse().unwrap();
    let alertmanager: SocketAddr = format!("127.0.0.1:{alertmanager_port}").parse().unwrap();

    // The noisy tenant's flag becomes an alert in Alertmanager, once per
    // instance: both poll the same target and see its idle transaction.
    let deadline = Instant::now() + Duration::from_secs(150);
    let alerts = loop {
        if let Some(Value::Array(alerts)) = get_json(alertmanager, "/api/v2/alerts").await {
            let instances: BTreeSet<&str> = alerts
                .iter()
                .filter(|a| {
                    a["labels"]["alertname"] == "TenantwatchTenantFlagged"
                        && a["labels"]["tenant"] == NOISY_TENANT
                        && a["labels"]["reason"] == "idle_in_transaction"
                })
                .filter_map(|a| a["labels"]["instance"].as_str())
                .collect();
            if instances.len() == 2 {
                break alerts;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no TenantwatchTenantFlagged alert for {NOISY_TENANT} from each instance in Alertmanager"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let per_instance: Vec<&Value> = alerts
        .iter()
        .filter(|a| {
            a["labels"]["alertname"] == "TenantwatchTenantFlagged"
                && a["labels"]["tenant"] == NOISY_TENANT
                && a["labels"]["reason"] == "idle_in_transaction"
        })
        .collect();
    assert_eq!(
        per_instance.len(),
        2,
        "one alert per instance: {per_instance:?}"
    );
    let healthy: Vec<&Value> = alerts
        .iter()
        .filter(|a| {
            a["labels"]["tenant"]
                .as_str()
                .is_some_and(|t| t != NOISY_TENANT)
        })
        .collect();
    assert!(healthy.is_empty(), "healthy tenants alerted: {healthy:?}");
    // Routed to the tenant owners, as the example configuration says.
    let receivers: Vec<&str> = alerts
        .iter()
        .filter(|a| a["labels"]["tenant"] == NOISY_TENANT)
        .flat_map(|a| a["receivers"].as_array().into_iter().flatten())
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(receivers.contains(&"tenant-owners"), "{receivers:?}");

    // The demo runs the guard in dry run: the noisy tenant's idle
    // transaction (flagged after 30 s) gets a would-be termination, which
    // Prometheus then scrapes twice.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let guard = get_json(tenantwatch, "/api/v1/guard").await;
        let acted = guard
            .as_ref()
            .and_then(|g| g["actions"].as_array())
            .is_some_and(|actions| {
                actions.iter().any(|a| {
                    a["tenant"] == NOISY_TENANT
                        && a["rule"] == "idle_in_transaction"
                        && a["result"] == "dry_run"
                })
            });
        if acted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dry-run guard action for {NOISY_TENANT}: {guard:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every dashboard panel's query returns data.
    let mut empty = Vec::new();
    for (place, expr) in dashboard_queries() {
        let path = format!(
            "/api/v1/query?query={}",
            tenantwatch::api::url_encode(&expr)
        );
        let reply = get_json(prometheus, &path).await;
        let has_data = reply
            .as_ref()
            .and_then(|r| r["data"]["result"].as_array())
            .is_some_and(|result| !result.is_empty());
        if !has_data {
            empty.push(format!("{place}: {expr} -> {reply:?}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    p95_panel_reads_native_histograms(prometheus).await;
    // No shipped rule failed to evaluate with two instances and one target
    // name (a many-to-many join or a duplicate series would count here), and
    // every group was evaluated.
    let (status, text) = get_text(prometheus, "/metrics").await;
    assert_eq!(status, 200);
    let mut groups = 0;
    for line in text.lines() {
        if line.starts_with("prometheus_rule_evaluation_failures_total{") {
            groups += 1;
            let failures: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert_eq!(failures, 0.0, "{line}");
        }
    }
    assert!(groups >= 5, "rule groups evaluated: {groups}\n{text}");
    second.shutdown();
    second.wait().await;
    env.stop().await.unwrap();
}
