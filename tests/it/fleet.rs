//! The fleet view with three real daemons sharing one real, throwaway
//! Redis: a tenant heavy on one replica but light in the fleet is not
//! flagged (while a lone replica with the same events flags it); a hog
//! whose events are split evenly is flagged on every replica; a replica
//! that stops drops out of the others' figures, which are then exactly the
//! survivors'.

use std::time::Duration;

use crate::support::redis_server::RedisServer;
use crate::support::{self, TestDaemon};
use tenantwatch::config::Settings;
use tenantwatch::detect::RuleName;

/// Evaluates every 200 ms; `db_time_hog` raises at once, on shares alone
/// (the events here are a few milliseconds, far under its load floor). A
/// ten-minute window: a replica's first window is extrapolated from at
/// least a quarter of it, so the replicas of a test (all younger than 150
/// s) weigh alike, and their one-off events stay in it.
fn fast_hog_rule(c: &mut Settings) {
    c.detect.interval = Duration::from_millis(200);
    c.ingest.share_window = Duration::from_secs(600);
    let rule = c.detect.rule_mut(RuleName::DbTimeHog);
    rule.for_ = Duration::from_secs(0);
    rule.factor = 0.0;
}

fn on_redis(c: &mut Settings, redis: &RedisServer, instance: &str) {
    fast_hog_rule(c);
    c.ratelimit.backend = tenantwatch::config::Backend::Redis;
    c.ratelimit.redis.url = redis.url();
    c.ratelimit.redis.instance = instance.into();
}

/// One NDJSON event per `(tenant, milliseconds)`.
fn events(tenants: &[(String, f64)]) -> String {
    tenants
        .iter()
        .map(|(t, ms)| format!("{{\"tenant\":\"{t}\",\"kind\":\"read\",\"duration_ms\":{ms}}}\n"))
        .collect()
}

/// `n` tenants `<prefix>0`.. of `ms` each.
fn spread(prefix: &str, n: usize, ms: f64) -> Vec<(String, f64)> {
    (0..n).map(|i| (format!("{prefix}{i}"), ms)).collect()
}

async fn send(daemon: &TestDaemon, tenants: &[(String, f64)]) {
    let reply = daemon.post("/v1/events", &[], events(tenants)).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
}

fn flagged(flags: &serde_json::Value, tenant: &str) -> bool {
    flags["flags"]
        .as_array()
        .expect("a flags array")
        .iter()
        .any(|f| f["tenant"] == tenant && f["reason"] == "db_time_hog")
}

/// A tenant's `db_time_share` in `/api/v1/tenants`, 0 without a row.
async fn share(daemon: &TestDaemon, tenant: &str) -> f64 {
    let page = daemon.get("/api/v1/tenants?limit=1000").await.json();
    page["tenants"]
        .as_array()
        .expect("a tenants array")
        .iter()
        .find(|row| row["tenant"] == tenant)
        .and_then(|row| row["db_time_share"].as_f64())
        .unwrap_or(0.0)
}

/// Waits until every daemon's fleet view holds `replicas` replicas.
async fn until_replicas(daemons: &[&TestDaemon], replicas: f64) {
    for daemon in daemons {
        support::eventually(
            "the fleet view's replicas",
            Duration::from_secs(10),
            || async {
                let m = daemon.metrics().await;
                let view = m.value("tenantwatch_fleet_view_up", &[]);
                let count = m.value("tenantwatch_fleet_replicas", &[]);
                (view == Some(1.0) && count == Some(replicas)).then_some(())
            },
        )
        .await;
    }
}

/// The skewed split of the issue: `skewed` is 30% of replica A's database
/// time but 10% of the fleet's. A lone daemon given A's events flags it;
/// the fleet does not, on any replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_heavy_on_one_replica_but_light_in_the_fleet_is_not_flagged() {
    let redis = RedisServer::start();
    let a = TestDaemon::start_with(|c| on_redis(c, &redis, "a")).await;
    let b = TestDaemon::start_with(|c| on_redis(c, &redis, "b")).await;
    let c = TestDaemon::start_with(|c| on_redis(c, &redis, "c")).await;
    let lone = TestDaemon::start_with(fast_hog_rule).await;
    until_replicas(&[&a, &b, &c], 3.0).await;

    // B and C first, and A only once its view holds their figures, so no
    // evaluation of A ever sees its own events alone.
    send(&b, &spread("b", 10, 100.0)).await;
    send(&c, &spread("c", 10, 100.0)).await;
    support::eventually(
        "A sees B's and C's tenants",
        Duration::from_secs(10),
        || async { (share(&a, "b0").await > 0.0 && share(&a, "c0").await > 0.0).then_some(()) },
    )
    .await;
    let mut on_a = spread("a", 14, 50.0);
    on_a.push(("skewed".into(), 300.0));
    send(&a, &on_a).await;
    send(&lone, &on_a).await;

    // The lone replica judges 30% against a fair share of 5%: flagged.
    support::eventually(
        "the lone replica flags skewed",
        Duration::from_secs(10),
        || async { flagged(&lone.get("/api/v1/flags").await.json(), "skewed").then_some(()) },
    )
    .await;
    let lone_flags = lone.get("/api/v1/flags").await.json();
    assert_eq!(lone_flags["scope"], "replica", "{lone_flags}");
    assert_eq!(lone_flags["replicas"], 1, "{lone_flags}");

    // Every replica sees 10% of the fleet, for ten evaluations: never flagged.
    support::eventually(
        "A's share is the fleet's",
        Duration::from_secs(10),
        || async { ((share(&a, "skewed").await - 0.1).abs() < 1e-3).then_some(()) },
    )
    .await;
    for _ in 0..10 {
        for (name, daemon) in [("a", &a), ("b", &b), ("c", &c)] {
            let flags = daemon.get("/api/v1/flags").await.json();
            assert_eq!(flags["scope"], "fleet", "{name}: {flags}");
            assert_eq!(flags["replicas"], 3, "{name}: {flags}");
            assert!(!flagged(&flags, "skewed"), "{name} flagged skewed: {flags}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for daemon in [&a, &b, &c] {
        assert!((share(daemon, "skewed").await - 0.1).abs() < 1e-3);
        let capacity = daemon.get("/api/v1/capacity").await.json();
        assert_eq!(capacity["scope"], "fleet", "{capacity}");
        let tenants = daemon.get("/api/v1/tenants").await.json();
        assert_eq!(tenants["scope"], "fleet", "{tenants}");
        assert_eq!(tenants["total"], 35, "every replica's tenants: {tenants}");
    }
    for daemon in [a, b, c, lone] {
        daemon.stop().await;
    }
}

/// A hog whose events are split evenly over the replicas is 60% of each
/// replica's database time and of the fleet's: flagged on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hog_split_evenly_is_flagged_on_every_replica() {
    let redis = RedisServer::start();
    let a = TestDaemon::start_with(|c| on_redis(c, &redis, "a")).await;
    let b = TestDaemon::start_with(|c| on_redis(c, &redis, "b")).await;
    let c = TestDaemon::start_with(|c| on_redis(c, &redis, "c")).await;
    until_replicas(&[&a, &b, &c], 3.0).await;
    for (prefix, daemon) in [("a", &a), ("b", &b), ("c", &c)] {
        let mut split = spread(prefix, 4, 100.0);
        split.push(("hog".into(), 600.0));
        send(daemon, &split).await;
    }
    // 1800 ms of the fleet's 3000 ms.
    let hog_share = |flags: &serde_json::Value| {
        flags["flags"].as_array().and_then(|flags| {
            flags
                .iter()
                .find(|f| f["tenant"] == "hog" && f["reason"] == "db_time_hog")
                .and_then(|f| f["value"].as_f64())
        })
    };
    for (name, daemon) in [("a", &a), ("b", &b), ("c", &c)] {
        let flags = support::eventually("hog flagged at 60%", Duration::from_secs(10), || async {
            let flags = daemon.get("/api/v1/flags").await.json();
            let at_60 = hog_share(&flags).is_some_and(|v| (v - 0.6).abs() < 1e-3);
            at_60.then_some(flags)
        })
        .await;
        assert_eq!(flags["scope"], "fleet", "{name}: {flags}");
        assert_eq!(flags["replicas"], 3, "{name}: {flags}");
    }
    for daemon in [a, b, c] {
        daemon.stop().await;
    }
}

/// A replica stopped mid-run drops out of the others' view (its figures
/// expire after three intervals), and their shares are then exactly the
/// survivors' figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_drops_out_of_the_others_figures() {
    let redis = RedisServer::start();
    let a = TestDaemon::start_with(|c| on_redis(c, &redis, "a")).await;
    let b = TestDaemon::start_with(|c| on_redis(c, &redis, "b")).await;
    let c = TestDaemon::start_with(|c| on_redis(c, &redis, "c")).await;
    until_replicas(&[&a, &b, &c], 3.0).await;
    send(&a, &[("x".into(), 100.0), ("y".into(), 100.0)]).await;
    send(&b, &[("x".into(), 100.0), ("z".into(), 200.0)]).await;
    send(&c, &[("doomed".into(), 500.0)]).await;
    // The fleet: x 200, y 100, z 200, doomed 500 of 1000 ms.
    support::eventually(
        "the three-replica fleet",
        Duration::from_secs(10),
        || async {
            let doomed = share(&a, "doomed").await;
            let x = share(&b, "x").await;
            ((doomed - 0.5).abs() < 1e-3 && (x - 0.2).abs() < 1e-3).then_some(())
        },
    )
    .await;

    c.stop().await;
    until_replicas(&[&a, &b], 2.0).await;
    // The survivors: x 200, y 100, z 200 of 500 ms, on both.
    for daemon in [&a, &b] {
        support::eventually("the survivors' figures", Duration::from_secs(5), || async {
            let (x, y, z) = (
                share(daemon, "x").await,
                share(daemon, "y").await,
                share(daemon, "z").await,
            );
            let doomed = share(daemon, "doomed").await;
            let exact = (x - 0.4).abs() < 1e-3 && (y - 0.2).abs() < 1e-3;
            (exact && (z - 0.4).abs() < 1e-3 && doomed == 0.0).then_some(())
        })
        .await;
    }
    for daemon in [a, b] {
        daemon.stop().await;
    }
}

/// A new replica turns ready only once its first judgement holds the
/// fleet's figures (a rolling update never routes checks to a pod that
/// judges alone); with Redis unreachable it turns ready all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_is_ready_once_it_holds_the_fleets_figures() {
    let redis = RedisServer::start();
    let old = TestDaemon::start_with(|c| on_redis(c, &redis, "old")).await;
    until_replicas(&[&old], 1.0).await;
    let new = TestDaemon::start_with(|c| on_redis(c, &redis, "new")).await;
    support::eventually("the new replica ready", Duration::from_secs(10), || async {
        (new.get("/readyz").await.status == 200).then_some(())
    })
    .await;
    let flags = new.get("/api/v1/flags").await.json();
    assert_eq!(flags["scope"], "fleet", "{flags}");
    assert_eq!(flags["replicas"], 2, "{flags}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let alone = TestDaemon::start_with(|c| {
        on_redis(c, &redis, "alone");
        c.ratelimit.redis.url = format!("redis://{closed}");
    })
    .await;
    support::eventually("ready without Redis", Duration::from_secs(10), || async {
        (alone.get("/readyz").await.status == 200).then_some(())
    })
    .await;
    let flags = alone.get("/api/v1/flags").await.json();
    assert_eq!(flags["scope"], "replica", "{flags}");
    assert_eq!(
        alone
            .metrics()
            .await
            .value("tenantwatch_fleet_view_up", &[]),
        Some(0.0)
    );
    for daemon in [old, new, alone] {
        daemon.stop().await;
    }
}
