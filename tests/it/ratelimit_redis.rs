//! The Redis rate-limit backend against a real, throwaway `redis-server`:
//! the Lua script computes exactly what the local limiter computes; two
//! daemons sharing one Redis hold one quota; each `fail_mode` while Redis
//! is gone, and the return to Redis once it is back; advice raised on one
//! instance tightens the other, and goes when that instance goes; tenant
//! names cannot reach tenantwatch's own keys, and an error about one
//! tenant's key fails that tenant's checks only.

use crate::support;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use crate::support::TestDaemon;
use crate::support::redis_server::RedisServer;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tenantwatch::config::Settings;
use tenantwatch::ratelimit::{Gcra, Rate, Verdict};

async fn check(daemon: &TestDaemon, tenant: &str) -> support::HttpReply {
    daemon
        .post(
            "/v1/ratelimit/check",
            &[("content-type", "application/json")],
            format!(r#"{{"tenant":"{tenant}"}}"#),
        )
        .await
}

fn on_redis(c: &mut Settings, redis: &RedisServer, instance: &str) {
    c.ratelimit.backend = tenantwatch::config::Backend::Redis;
    c.ratelimit.redis.url = redis.url();
    c.ratelimit.redis.instance = instance.into();
}

/// Drives the script with a given clock (ARGV[4], ARGV[5]) and the local
/// GCRA with the same one, through random quotas, quota changes, costs
/// and waits: every verdict, remaining count and wait must be identical.
#[test]
fn the_redis_script_matches_the_local_arithmetic() {
    let server = RedisServer::start();
    // The runner takes an Fn: the connection and case number are cells.
    let redis = std::cell::RefCell::new(server.connection().unwrap());
    let script = redis::Script::new(include_str!("../../src/ratelimit/gcra.lua"));
    // Quotas from 0.1/s to 30,000/s, waits from none to 2 s: most steps land
    // while the bucket is still spent, where quota changes rescale it.
    let qps = (-1.0f64..4.5).prop_map(|e| 10f64.powf(e));
    let rates = prop::collection::vec((qps, 1u32..40), 1..4);
    let wait_us = prop_oneof![0u64..1_000, 0u64..100_000, 0u64..2_000_000];
    let steps = prop::collection::vec((wait_us, 0usize..4, 1u32..8), 1..60);
    let mut runner = TestRunner::new(ProptestConfig::with_cases(64));
    let case = std::cell::Cell::new(0);
    runner
        .run(&(rates, steps), |(rates, steps)| {
            case.set(case.get() + 1);
            let key = format!("equivalence:{}", case.get());
            let mut local = Gcra::default();
            let mut spent_at: Option<Rate> = None;
            // Redis's clock starts at an arbitrary second, the local one at 1 s.
            let (start_s, mut elapsed_us) = (1_764_547_200u64, 0u64);
            for (wait_us, which, cost) in steps {
                elapsed_us += wait_us;
                let (qps, burst) = rates[which % rates.len()];
                let rate = Rate { qps, burst };
                let cost = NonZeroU32::new(cost.min(burst)).unwrap();
                let now_ns = 1_000_000_000 + elapsed_us * 1000;
                if let Some(from) = spent_at {
                    local.rescale(from, rate, now_ns);
                }
                spent_at = Some(rate);
                let expected = local.check(rate, cost, now_ns);
                let t = rate.emission_interval_ns();
                let (allowed, n): (i64, i64) = script
                    .key(&key)
                    .arg(t)
                    .arg(rate.tolerance_ns())
                    .arg(t * u64::from(cost.get() - 1))
                    .arg(start_s + 1 + elapsed_us / 1_000_000)
                    .arg(elapsed_us % 1_000_000)
                    .invoke(&mut *redis.borrow_mut())
                    .unwrap();
                let got = if allowed == 1 {
                    Verdict::Allowed {
                        remaining: n as u32,
                    }
                } else {
                    Verdict::NotUntil(Duration::from_nanos(n as u64))
                };
                prop_assert_eq!(
                    got,
                    expected,
                    "{:?} cost {} at {} us",
                    rate,
                    cost,
                    elapsed_us
                );
            }
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_sharing_one_redis_hold_one_quota() {
    let redis = RedisServer::start();
    let quota = |c: &mut Settings| {
        c.ratelimit.default_qps = 20.0;
        c.ratelimit.default_burst = 20;
        // What is shared is asserted, not how fast: with the 50 ms default,
        // a machine at load 25 (eight parallel builds on two cores) times
        // checks out and they fall back to the local limiter.
        c.ratelimit.redis.timeout = Duration::from_secs(1);
    };
    let a = TestDaemon::start_with(|c| {
        on_redis(c, &redis, "a");
        quota(c);
    })
    .await;
    let b = TestDaemon::start_with(|c| {
        on_redis(c, &redis, "b");
        quota(c);
    })
    .await;
    // Ready: connected to Redis, the script loaded.
    for daemon in [&a, &b] {
        support::eventually("ready", Duration::from_secs(10), || async {
            (daemon.get("/readyz").await.status == 200).then_some(())
        })
        .await;
    }
    // Four clients on each instance, as fast as they can, for 5 s.
    let started = Instant::now();
    let hammer = |addr| async move {
        let (mut allowed, mut denied) = (0u32, 0u32);
        while started.elapsed() < Duration::from_secs(5) {
            let body = br#"{"tenant":"hammered"}"#.to_vec();
            let headers = [("content-type", "application/json")];
            let reply = support::http(addr, "POST", "/v1/ratelimit/check", &headers, body).await;
            assert_eq!(reply.json()["backend"], "redis", "{}", reply.text());
            match reply.status {
                200 => allowed += 1,
                429 => denied += 1,
                other => panic!("status {other}: {}", reply.text()),
            }
        }
        (allowed, denied)
    };
    let clients: Vec<_> = [a.http, b.http]
        .into_iter()
        .flat_map(|addr| (0..4).map(move |_| tokio::spawn(hammer(addr))))
        .collect();
    let (mut allowed, mut denied) = (0, 0);
    for client in clients {
        let (yes, no) = client.await.unwrap();
        allowed += yes;
        denied += no;
    }
    eprintln!("two instances, one Redis: {allowed} allowed, {denied} denied in 5 s");
    // The burst, then 20/s for 5 s: 120 in all, however many instances.
    assert!(
        (114..=126).contains(&allowed),
        "allowed {allowed} (denied {denied}); one quota is 20 + 5 x 20 = 120"
    );
    assert!(
        denied > allowed,
        "the clients asked for more than the quota"
    );
    // The tenant's key lives only while its bucket is not full again.
    let mut connection = redis.connection().unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg("tenantwatch:rl:t:hammered")
        .query(&mut connection)
        .unwrap();
    assert!((1..=1100).contains(&ttl_ms), "PTTL {ttl_ms}");
    a.stop().await;
    b.stop().await;
}

/// Redis goes away mid-run: the daemon answers throughout as `fail_mode`
/// says, counts it, and decides in Redis again within a second of its
/// return.
async fn redis_goes_away_and_comes_back(fail_mode: &str) {
    let mut redis = RedisServer::start();
    let daemon = TestDaemon::start_with(|c| {
        on_redis(c, &redis, "solo");
        c.ratelimit.redis.fail_mode = toml::Value::from(fail_mode)
            .try_into()
            .expect("a fail mode");
        c.ratelimit.redis.expected_instances = 2;
        c.ratelimit.default_qps = 0.5;
        c.ratelimit.default_burst = 10;
    })
    .await;
    let reply = check(&daemon, "steady").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["backend"], "redis");

    redis.stop();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let reply = check(&daemon, "fresh").await;
        let body = reply.json();
        assert_eq!(body["backend"], "local", "{body}");
        statuses.push(reply.status);
    }
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    match fail_mode {
        "open" => assert_eq!(allowed, 12, "{statuses:?}"),
        "closed" => assert_eq!(allowed, 0, "{statuses:?}"),
        // This instance's share: a burst of 10 / 2 instances.
        _ => assert_eq!(allowed, 5, "{statuses:?}"),
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    let m = daemon.metrics().await;
    assert_eq!(
        m.value("tenantwatch_ratelimit_backend_up", &[("backend", "redis")]),
        Some(0.0)
    );
    let fell_back: f64 = m
        .samples_named("tenantwatch_ratelimit_backend_errors_total")
        .map(|s| s.value)
        .sum();
    assert!(
        fell_back >= 12.0,
        "every fallback decision is counted: {fell_back}"
    );

    redis.start_again();
    let back = Instant::now();
    let recovered = support::eventually("Redis decides again", Duration::from_secs(5), || async {
        let reply = check(&daemon, "returning").await;
        (reply.json()["backend"] == "redis").then(|| back.elapsed())
    })
    .await;
    eprintln!("fail_mode {fail_mode}: back on Redis {recovered:?} after it returned");
    assert!(
        recovered < Duration::from_secs(1),
        "back on Redis {recovered:?} after it answered again"
    );
    let m = daemon.metrics().await;
    assert_eq!(
        m.value("tenantwatch_ratelimit_backend_up", &[("backend", "redis")]),
        Some(1.0)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_fail_mode_local_limits_to_this_instances_share() {
    redis_goes_away_and_comes_back("local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_fail_mode_open_allows() {
    redis_goes_away_and_comes_back("open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_fail_mode_closed_denies() {
    redis_goes_away_and_comes_back("closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advice_raised_on_one_instance_tightens_the_other() {
    let redis = RedisServer::start();
    let configure = |c: &mut Settings, instance: &str| {
        on_redis(c, &redis, instance);
        support::tighten_on_error_storm(c);
    };
    let raiser = TestDaemon::start_with(|c| configure(c, "raiser")).await;
    // The other sees the storm too, through the fleet view: its own rule is
    // off, so what tightens it here is the raiser's advice alone.
    let other = TestDaemon::start_with(|c| {
        configure(c, "other");
        let storm = tenantwatch::detect::RuleName::parse("error_storm").expect("a rule");
        c.detect.rule_mut(storm).enabled = false;
    })
    .await;
    let events = support::error_storm_events();
    // Only the raiser judges the storm.
    support::eventually(
        "stormy tightened on the raiser",
        Duration::from_secs(20),
        || async {
            raiser.post("/v1/events", &[], events.clone()).await;
            let qps = check(&raiser, "stormy").await.json()["qps"]
                .as_f64()
                .unwrap();
            (qps < 100_000.0).then_some(())
        },
    )
    .await;
    let advice = support::eventually(
        "stormy tightened on the other",
        Duration::from_secs(5),
        || async {
            raiser.post("/v1/events", &[], events.clone()).await;
            let qps = check(&other, "stormy").await.json()["qps"]
                .as_f64()
                .unwrap();
            let advice = other.get("/api/v1/advice").await.json();
            (qps < 100_000.0).then_some(advice)
        },
    )
    .await;
    let entries = advice["advice"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{advice}");
    assert_eq!(entries[0]["tenant"], "stormy");
    assert_eq!(entries[0]["instance"], "raiser", "{advice}");
    assert_eq!(check(&other, "calm1").await.json()["qps"], 100_000.0);

    // The raiser goes: its advice expires, and the other relaxes.
    raiser.stop().await;
    support::eventually(
        "stormy relaxed on the other",
        Duration::from_secs(5),
        || async {
            let qps = check(&other, "stormy").await.json()["qps"]
                .as_f64()
                .unwrap();
            (qps == 100_000.0).then_some(())
        },
    )
    .await;
    let advice = other.get("/api/v1/advice").await.json();
    assert_eq!(advice["advice"].as_array().unwrap().len(), 0, "{advice}");
    other.stop().await;
}

/// One check's outcome, as far as a client can tell decisions apart.
fn outcome(reply: &support::HttpReply) -> (u16, serde_json::Value, serde_json::Value) {
    let body = reply.json();
    (
        reply.status,
        body["remaining"].clone(),
        body["backend"].clone(),
    )
}

/// A quota that no test outlasts: a burst of 10, then one cell per 1,000 s,
/// so a sequence of checks is decided the same however fast it runs.
fn slow_quota(c: &mut Settings) {
    c.ratelimit.default_qps = 0.001;
    c.ratelimit.default_burst = 10;
    // Advice is exchanged after each evaluation: often, so the tenants
    // below meet it.
    c.detect.interval = std::time::Duration::from_millis(100);
}

/// Tenants named like tenantwatch's own keys (`advice` was once the key of
/// the advice set, and `WRONGTYPE` from it marked the backend down) are
/// checked in a loop while advice is exchanged: another tenant's decisions
/// stay exactly what they are without them, all decided by Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_names_never_reach_tenantwatchs_own_keys() {
    let redis = RedisServer::start();
    let daemon = TestDaemon::start_with(|c| {
        on_redis(c, &redis, "solo");
        c.ratelimit.redis.fail_mode = toml::Value::from("closed").try_into().expect("a fail mode");
        slow_quota(c);
    })
    .await;
    let mut alone = Vec::new();
    for _ in 0..15 {
        alone.push(outcome(&check(&daemon, "alone").await));
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = {
        let (stop, http) = (stop.clone(), daemon.http);
        tokio::spawn(async move {
            let mut replies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for tenant in ["advice", "meta:advice", "t:x"] {
                    let body = format!(r#"{{"tenant":"{tenant}"}}"#).into_bytes();
                    let headers = [("content-type", "application/json")];
                    let reply =
                        support::http(http, "POST", "/v1/ratelimit/check", &headers, body).await;
                    replies.push((tenant, outcome(&reply)));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            replies
        })
    };
    // Several advice exchanges with those tenants' keys in Redis.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut beside = Vec::new();
    for _ in 0..15 {
        beside.push(outcome(&check(&daemon, "steady").await));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let noise = noise.await.unwrap();

    assert_eq!(beside, alone, "another tenant's decisions changed");
    assert!(noise.len() >= 40, "{} noisy checks", noise.len());
    for (tenant, (status, _, backend)) in &noise {
        assert_eq!(backend, "redis", "{tenant}: {status}");
    }
    let m = daemon.metrics().await;
    assert_eq!(
        m.value("tenantwatch_ratelimit_backend_up", &[("backend", "redis")]),
        Some(1.0)
    );
    let errors: f64 = m
        .samples_named("tenantwatch_ratelimit_backend_errors_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(errors, 0.0);
    // Each name has its own key in the tenants' namespace, and the advice
    // set is tenantwatch's own.
    let mut connection = redis.connection().unwrap();
    for tenant in ["advice", "meta:advice", "t:x"] {
        let kind: String = redis::cmd("TYPE")
            .arg(format!("tenantwatch:rl:t:{tenant}"))
            .query(&mut connection)
            .unwrap();
        assert_eq!(kind, "hash", "{tenant}");
    }
    let instances: Vec<String> = redis::cmd("SMEMBERS")
        .arg("tenantwatch:rl:meta:{advice}")
        .query(&mut connection)
        .unwrap();
    assert_eq!(instances, ["solo"]);
    daemon.stop().await;
}

/// A key of the wrong type (an operator's mistake, or the old layout)
/// makes that tenant's checks fail, each decided by `fail_mode` and
/// counted `response`; every other tenant is still decided by Redis and the
/// backend stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_typed_key_fails_only_its_tenants_checks() {
    let redis = RedisServer::start();
    let mut connection = redis.connection().unwrap();
    // The tenant's key in this layout and in the one before it.
    for key in ["tenantwatch:rl:t:broken", "tenantwatch:rl:broken"] {
        redis::cmd("SET")
            .arg(key)
            .arg("not a hash")
            .exec(&mut connection)
            .unwrap();
    }
    let daemon = TestDaemon::start_with(|c| {
        on_redis(c, &redis, "solo");
        c.ratelimit.redis.fail_mode = toml::Value::from("closed").try_into().expect("a fail mode");
        slow_quota(c);
    })
    .await;
    let mut fine = Vec::new();
    for _ in 0..8 {
        let broken = check(&daemon, "broken").await;
        let body = broken.json();
        assert_eq!(broken.status, 429, "{body}");
        assert_eq!(body["backend"], "local", "{body}");
        assert_eq!(
            body["reason"],
            "rate-limit backend error for this check (fail_mode closed: denied)"
        );
        fine.push(outcome(&check(&daemon, "fine").await));
    }
    // Batches too: the broken check fails alone.
    let batch = daemon
        .post(
            "/v1/ratelimit/check",
            &[("content-type", "application/json")],
            r#"{"checks":[{"tenant":"fine"},{"tenant":"broken"},{"tenant":"fine2"}]}"#,
        )
        .await
        .json();
    let results = batch["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{batch}"));
    assert_eq!(results[0]["backend"], "redis", "{batch}");
    assert_eq!(results[1]["backend"], "local", "{batch}");
    assert_eq!(results[2]["backend"], "redis", "{batch}");

    let expected: Vec<_> = (0..8)
        .map(|i| (200, serde_json::json!(9 - i), serde_json::json!("redis")))
        .collect();
    assert_eq!(fine, expected);
    let m = daemon.metrics().await;
    assert_eq!(
        m.value("tenantwatch_ratelimit_backend_up", &[("backend", "redis")]),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "tenantwatch_ratelimit_backend_errors_total",
            &[("error", "response")]
        ),
        Some(9.0)
    );
    let other: f64 = m
        .samples_named("tenantwatch_ratelimit_backend_errors_total")
        .filter(|s| s.labels.get("error").map(String::as_str) != Some("response"))
        .map(|s| s.value)
        .sum();
    assert_eq!(other, 0.0);
    daemon.stop().await;
}
