//! Fresh figures with the shipped defaults (issue 28) and idle tenants
//! leaving the exposition (`metrics.idle_after`, issue 31), against the real
//! daemon. The other tests set `server.metrics_max_age = "0s"`
//! (`support::file_config`); these put the real default back.

use std::time::Duration;

use crate::support::{self, TestDaemon, cluster};
use tenantwatch::config::{ServerSettings, Settings, TargetSettings};

/// The shipped cache age, whatever `support::file_config` set.
fn default_cache(c: &mut Settings) {
    c.server.metrics_max_age = ServerSettings::default().metrics_max_age;
}

fn decisions(m: &support::Exposition, tenant: &str) -> f64 {
    m.value_or_zero(
        "tenantwatch_ratelimit_decisions_total",
        &[
            ("tenant", tenant),
            ("decision", "allowed"),
            ("protocol", "http"),
        ],
    )
}

/// With the defaults, rate-limit decisions made after a scrape show in the
/// scrape a second later (the old 10 s cache showed none of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_changed_by_a_request_shows_in_the_next_scrape_a_second_later() {
    let daemon = TestDaemon::start_with(default_cache).await;
    assert_eq!(decisions(&daemon.metrics().await, "fresh1"), 0.0);
    for _ in 0..150 {
        let reply = daemon
            .post(
                "/v1/ratelimit/check",
                &[("content-type", "application/json")],
                r#"{"tenant":"fresh1"}"#,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(decisions(&daemon.metrics().await, "fresh1"), 150.0);
    daemon.stop().await;
}

/// With the defaults, `tenantwatch_target_up` is 0 in the first scrape after
/// the API reports a failed poll of a stopped PostgreSQL, even though the
/// scrape before it was a few milliseconds earlier (a finished poll makes
/// the next scrape encode afresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_is_zero_in_the_first_scrape_after_a_failed_poll() {
    let pg = cluster().await;
    let daemon = TestDaemon::start_with(|c| {
        default_cache(c);
        c.targets.push(TargetSettings {
            poll_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(2),
            ..TargetSettings::new("main", pg.dsn("postgres"))
        });
    })
    .await;
    let up = |m: &support::Exposition| m.value("tenantwatch_target_up", &[("target", "main")]);
    daemon
        .metrics_when("the target up", |m| up(m) == Some(1.0))
        .await;

    tokio::task::block_in_place(|| pg.stop()).expect("stop PostgreSQL");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Keep the shared exposition young, as scrapers in a loop would.
        let _ = daemon.metrics().await;
        let targets = daemon.get("/api/v1/targets").await.json();
        if targets["targets"][0]["up"] == false {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed poll within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up(&daemon.metrics().await), Some(0.0));
    daemon.stop().await;
}

/// A tenant with no event for `metrics.idle_after` leaves `/metrics`, stays
/// in the API, and comes back with its next event, its counters continuing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenant_leaves_metrics_and_comes_back_with_its_counters() {
    // The shortest idle_after allowed: ingest.share_window's floor.
    let idle_after = Duration::from_secs(12);
    let daemon = TestDaemon::start_with(|c| {
        c.ingest.share_window = idle_after;
        c.metrics.idle_after = idle_after;
    })
    .await;
    let send = |tenant: &str, n: usize| {
        let line = format!(r#"{{"tenant":"{tenant}","kind":"read","duration_ms":2}}"#);
        vec![line; n].join("\n")
    };
    let post = |body: String| async {
        let reply = daemon.post("/v1/events", &[], body).await;
        assert!(reply.status < 300, "{}", reply.text());
    };
    post(send("sleepy", 5)).await;
    post(send("busy", 1)).await;
    let queries = |m: &support::Exposition, tenant: &str| {
        m.value(
            "tenantwatch_tenant_queries_total",
            &[("tenant", tenant), ("kind", "read")],
        )
    };
    let m = daemon.metrics().await;
    assert_eq!(queries(&m, "sleepy"), Some(5.0));
    assert_eq!(m.value("tenantwatch_tenants_exported", &[]), Some(2.0));

    // "busy" keeps sending; "sleepy" goes quiet.
    let deadline = std::time::Instant::now() + idle_after + Duration::from_secs(10);
    let m = loop {
        post(send("busy", 1)).await;
        let m = daemon.metrics().await;
        if queries(&m, "sleepy").is_none() {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sleepy still exported"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(queries(&m, "busy").is_some());
    assert!(
        m.samples
            .iter()
            .all(|s| s.labels.get("tenant").map(String::as_str) != Some("sleepy")),
        "no series of sleepy left"
    );
    assert_eq!(m.value("tenantwatch_tenants_exported", &[]), Some(1.0));
    assert_eq!(m.value("tenantwatch_tenants_tracked", &[]), Some(2.0));
    let detail = daemon.get("/api/v1/tenants/sleepy").await;
    assert_eq!(detail.status, 200, "{}", detail.text());
    assert_eq!(detail.json()["summary"]["queries"], 5.0);

    // Back: the counter continues from 5.
    post(send("sleepy", 2)).await;
    let m = daemon.metrics().await;
    assert_eq!(queries(&m, "sleepy"), Some(7.0));
    assert_eq!(m.value("tenantwatch_tenants_exported", &[]), Some(2.0));
    daemon.stop().await;
}
