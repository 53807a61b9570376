//! The capacity planners' read API against a live daemon with a PostgreSQL
//! target: tenants from events and schemas, sorting and cursor paging that
//! is stable across pages, CSV with the same rows as JSON, one tenant's
//! detail, targets, and problem details for bad requests.

use crate::support;

use std::collections::BTreeSet;

use crate::support::{TestDaemon, cluster, connect};
use tenantwatch::config::TargetSettings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_targets_and_detail() {
    let pg = cluster().await;
    let admin = connect(&pg.dsn("postgres")).await;
    admin.batch_execute("CREATE DATABASE app").await.unwrap();
    let app = connect(&pg.dsn("app")).await;
    for i in 0..5 {
        app.batch_execute(&format!(
            "CREATE SCHEMA tenant_s{i}; CREATE TABLE tenant_s{i}.t (id int); INSERT INTO tenant_s{i}.t VALUES (1)"
        ))
        .await
        .unwrap();
    }
    let daemon = TestDaemon::start_with(|c| {
        let mut target = TargetSettings::new("main", pg.dsn("app"));
        target.poll_interval = std::time::Duration::from_millis(200);
        target.stats_interval = std::time::Duration::from_millis(200);
        c.targets.push(target);
        c.api.history_resolution = std::time::Duration::from_millis(200);
        c.api.size_budget_bytes = 1 << 40;
    })
    .await;
    // 37 tenants from events, with distinct and tied query counts.
    let mut body = String::new();
    for i in 0..37 {
        for _ in 0..(i % 6 + 1) {
            body.push_str(&format!(
                "tenantwatch.query:5|ms|#tenant:e{i:02},kind:read\n"
            ));
        }
    }
    assert_eq!(daemon.post("/v1/events", &[], body).await.status, 202);
    daemon
        .metrics_when("the schemas", |m| {
            m.value("tenantwatch_target_up", &[("target", "main")]) == Some(1.0)
                && m.samples_named("tenantwatch_tenant_live_tuples").count() == 5
        })
        .await;

    // All 42 tenants, paged by 10 in query order, stable and complete.
    let mut seen = Vec::new();
    let mut path = "/api/v1/tenants?sort=queries&order=desc&limit=10".to_string();
    loop {
        let reply = daemon.get(&path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page = reply.json();
        assert_eq!(page["total"], 42);
        for t in page["tenants"].as_array().unwrap() {
            seen.push((
                t["queries"].as_f64().unwrap(),
                t["tenant"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/v1/tenants?sort=queries&order=desc&limit=10&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 42);
    let mut expected = seen.clone();
    expected.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    assert_eq!(seen, expected);
    assert_eq!(
        seen.iter().map(|(_, t)| t).collect::<BTreeSet<_>>().len(),
        42
    );

    // CSV: the same rows as JSON.
    let json = daemon
        .get("/api/v1/tenants?sort=tenant&limit=1000")
        .await
        .json();
    let csv = support::http(
        daemon.http,
        "GET",
        "/api/v1/tenants?sort=tenant&limit=1000",
        &[("accept", "text/csv")],
        Vec::new(),
    )
    .await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let csv_tenants: Vec<String> = csv
        .text()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    let json_tenants: Vec<String> = json["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(csv_tenants, json_tenants);
    assert_eq!(
        daemon
            .get("/api/v1/tenants?format=csv&sort=tenant&limit=1000")
            .await
            .text(),
        csv.text()
    );

    // Filter by target: the five schema tenants.
    let on_main = daemon
        .get("/api/v1/tenants?target=main&sort=tenant")
        .await
        .json();
    let names: Vec<&str> = on_main["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
    assert_eq!(
        daemon.get("/api/v1/tenants?flagged=true").await.json()["total"],
        0
    );

    // One tenant; an unknown one; bad parameters.
    let detail = daemon.get("/api/v1/tenants/e05").await;
    assert_eq!(detail.status, 200);
    let detail = detail.json();
    assert_eq!(detail["summary"]["queries"], 6.0);
    assert_eq!(detail["quota"]["policy"], "default");
    // History: one sample per api.history_resolution (200 ms here).
    let history = support::eventually(
        "tenant history",
        std::time::Duration::from_secs(10),
        || async {
            let d = daemon.get("/api/v1/tenants/e05").await.json();
            (d["history"].as_array().map_or(0, Vec::len) >= 2).then_some(d["history"].clone())
        },
    )
    .await;
    assert_eq!(history[0]["queries"], 6.0);
    assert!(history[1]["unix"].as_f64().unwrap() > history[0]["unix"].as_f64().unwrap());
    let schema_tenant = daemon.get("/api/v1/tenants/s3").await.json();
    assert_eq!(schema_tenant["targets"][0]["target"], "main");
    assert_eq!(schema_tenant["targets"][0]["tables"], 1);
    let missing = daemon.get("/api/v1/tenants/nobody").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    let bad = daemon.get("/api/v1/tenants?sort=colour").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("parameter sort:")
    );
    assert_eq!(bad.header("x-invalid-parameter"), Some("sort"));
    let wrong_method = daemon.post("/api/v1/tenants", &[], "").await;
    assert_eq!(wrong_method.status, 405);

    // Capacity: headroom, size, history, heaviest tenants, fleet projection.
    let capacity = support::eventually(
        "two history samples",
        std::time::Duration::from_secs(10),
        || async {
            let c = daemon.get("/api/v1/capacity").await.json();
            (c["targets"][0]["history_samples"].as_u64().unwrap_or(0) >= 2).then_some(c)
        },
    )
    .await;
    let main = &capacity["targets"][0];
    assert_eq!(main["target"], "main");
    assert_eq!(main["max_connections"], 100);
    assert!(main["connection_headroom"].as_f64().unwrap() > 0.0);
    assert!(main["size_bytes"].as_f64().unwrap() > 0.0);
    assert_eq!(main["heaviest"]["size_bytes"].as_array().unwrap().len(), 5);
    assert!(main["growth_bytes_per_day"].is_number());
    assert!(
        capacity["placement"].is_null(),
        "one target: nothing to balance"
    );
    assert_eq!(capacity["fleet"]["tenants"], 42);
    assert!(capacity["fleet"]["more_tenants_fit"].as_f64().unwrap() > 0.0);
    // The same figures as gauges, from the sampler's last pass.
    let m = daemon
        .metrics_when("capacity gauges", |m| {
            m.value("tenantwatch_fleet_tenants_fit", &[]).is_some()
        })
        .await;
    let headroom = m
        .value(
            "tenantwatch_target_connection_headroom",
            &[("target", "main")],
        )
        .unwrap();
    assert!(headroom > 0.0 && headroom <= 97.0, "{headroom}");
    assert!(m.value("tenantwatch_fleet_tenants_fit", &[]).unwrap() > 0.0);

    let targets = daemon.get("/api/v1/targets").await.json();
    let main = &targets["targets"][0];
    assert_eq!(main["name"], "main");
    assert_eq!(main["up"], true);
    assert_eq!(main["tenants"], 5);
    assert!(main["server_version"].as_str().unwrap().starts_with("15"));
    assert!(main["address"].as_str().unwrap().ends_with("/app"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_in_bounded_pages_with_10000_tenants() {
    let daemon = TestDaemon::start().await;
    for batch in 0..10 {
        let body: String = (0..1000)
            .map(|i| {
                format!(
                    "tenantwatch.query:{}|ms|#tenant:big{:05}\n",
                    1 + i % 7,
                    batch * 1000 + i
                )
            })
            .collect();
        assert_eq!(daemon.post("/v1/events", &[], body).await.status, 202);
    }
    let page = daemon.get("/api/v1/tenants?limit=25&sort=queries").await;
    assert_eq!(page.status, 200);
    let page = page.json();
    assert_eq!(page["total"], 10_000);
    assert_eq!(page["tenants"].as_array().unwrap().len(), 25);
    assert!(page["next_cursor"].is_string());
    // A page's size depends on the limit, not on the fleet.
    let csv = daemon.get("/api/v1/tenants?limit=25&format=csv").await;
    assert_eq!(csv.text().lines().count(), 26);
    assert!(csv.body.len() < 10_000);
    assert_eq!(daemon.get("/api/v1/tenants/big09999").await.status, 200);
    let capacity = daemon.get("/api/v1/capacity").await.json();
    assert_eq!(capacity["fleet"]["tenants"], 10_000);
    let flagged = daemon
        .get("/api/v1/tenants?flagged=true&limit=1000")
        .await
        .json();
    assert_eq!(flagged["total"], 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_advice_balances_three_targets() {
    // Shard "a" holds nine tenants of real data; "b" and "c" one small each.
    let mut clusters = Vec::new();
    for (shard, tenants) in [("a", 9), ("b", 1), ("c", 1)] {
        let pg = cluster().await;
        let db = connect(&pg.dsn("postgres")).await;
        for i in 0..tenants {
            let rows = if shard == "a" { 3000 + 500 * i } else { 10 };
            db.batch_execute(&format!(
                "CREATE SCHEMA tenant_{shard}{i}; CREATE TABLE tenant_{shard}{i}.t (id int, v text);
                 INSERT INTO tenant_{shard}{i}.t SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g;"
            ))
            .await
            .unwrap();
        }
        clusters.push((shard, pg));
    }
    let daemon = TestDaemon::start_with(|c| {
        for (shard, pg) in &clusters {
            let mut target = TargetSettings::new(*shard, pg.dsn("postgres"));
            target.poll_interval = std::time::Duration::from_millis(200);
            target.stats_interval = std::time::Duration::from_millis(200);
            c.targets.push(target);
        }
        c.api.balance_tolerance = 0.2;
    })
    .await;
    let capacity = support::eventually(
        "exact sizes on three targets",
        std::time::Duration::from_secs(15),
        || async {
            let c = daemon.get("/api/v1/capacity").await.json();
            let sized = c["targets"]
                .as_array()?
                .iter()
                .filter(|t| t["size_bytes"].as_f64().unwrap_or(0.0) > 0.0)
                .count();
            (sized == 3 && c["fleet"]["tenants"] == 11).then_some(c)
        },
    )
    .await;
    let placement = &capacity["placement"];
    assert_eq!(placement["balanced_before"], false, "{placement}");
    assert_eq!(placement["balanced_after"], true, "{placement}");
    let moves = placement["moves"].as_array().unwrap();
    assert!(!moves.is_empty());
    assert!(
        moves
            .iter()
            .all(|m| m["tenant"].as_str().unwrap().starts_with('a')),
        "{moves:?}"
    );
    for (target, shares) in placement["shares_after"].as_object().unwrap() {
        let size = shares["size_bytes"].as_f64().unwrap();
        assert!(size <= 1.0 / 3.0 * 1.2 + 1e-9, "{target}: {size}");
    }
    // Each move states its effect on both ends.
    let effect = &moves[0]["effect"]["size_bytes"];
    assert!(effect[1].as_f64().unwrap() < effect[0].as_f64().unwrap());
    assert!(effect[3].as_f64().unwrap() > effect[2].as_f64().unwrap());
    daemon.stop().await;
}
