//! Guard actions against a real throwaway PostgreSQL: in `dry_run` a long
//! query is logged and counted but keeps running; a role without
//! `pg_signal_backend` gets a counted `permission` result; in `enforce` the
//! long query is cancelled and the session idle in its transaction is
//! terminated, while a superuser's long query and tenantwatch's own
//! sessions are never touched.

use crate::support;

use std::time::Duration;

use crate::support::{TestDaemon, cluster, connect};
use tenantwatch::config::{FileConfig, FileRule, FileRuleSettings, FileTarget};
use tokio_postgres::error::SqlState;

/// Watches `dsn` as a target `main`, attributing sessions by their
/// sqlcommenter tag, with long_query and idle_in_transaction raised after
/// one second and the guard in `mode` with no grace.
fn guarded(c: &mut FileConfig, dsn: String, mode: &str) {
    c.targets.push(FileTarget {
        poll_interval: "300ms".into(),
        stats_interval: "300ms".into(),
        size_interval: "1h".into(),
        statement_timeout: "2s".into(),
        connect_timeout: "2s".into(),
        ..FileTarget::new("main", dsn)
    });
    c.tenants.rules = vec![FileRule {
        source: "query_comment".into(),
        pattern: "^(?P<tenant>.+)$".into(),
        key: None,
    }];
    c.detect.interval = "200ms".into();
    for rule in ["long_query", "idle_in_transaction"] {
        c.detect.rules.insert(
            rule.into(),
            FileRuleSettings {
                threshold: Some(1.0),
                for_: Some("0s".into()),
                ..Default::default()
            },
        );
    }
    c.guard.mode = mode.into();
    c.guard.grace = "0s".into();
}

/// The `result` of each guard action recorded for `tenant`.
async fn results(daemon: &TestDaemon, tenant: &str) -> Vec<String> {
    let guard = daemon.get("/api/v1/guard").await.json();
    guard["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["tenant"] == tenant)
        .map(|a| a["result"].as_str().unwrap().to_owned())
        .collect()
}

async fn still_running(admin: &tokio_postgres::Client, tag: &str) -> bool {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1";
    let n: i64 = admin
        .query_one(sql, &[&format!("/*tenant='{tag}'*/%")])
        .await
        .unwrap()
        .get(0);
    n == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_ends_only_the_sessions_that_caused_the_flag() {
    let pg = cluster().await;
    let admin = connect(&pg.dsn("postgres")).await;
    admin
        .batch_execute(
            "CREATE ROLE app LOGIN;
             CREATE ROLE watcher LOGIN IN ROLE pg_monitor, pg_signal_backend;
             CREATE ROLE weak LOGIN IN ROLE pg_monitor;",
        )
        .await
        .unwrap();
    let as_role = |role: &str| format!("{} user={role}", pg.dsn("postgres"));

    // A tenant's long query, a tenant's session idle in its transaction,
    // and a superuser's long query tagged as a tenant.
    let slow = connect(&as_role("app")).await;
    let long_query = tokio::spawn(async move {
        slow.batch_execute("/*tenant='slow'*/ SELECT pg_sleep(60)")
            .await
    });
    let idler = connect(&as_role("app")).await;
    idler.batch_execute("BEGIN").await.unwrap();
    idler
        .batch_execute("/*tenant='idler'*/ SELECT 1")
        .await
        .unwrap();
    let boss = connect(&pg.dsn("postgres")).await;
    let boss_query = tokio::spawn(async move {
        boss.batch_execute("/*tenant='boss'*/ SELECT pg_sleep(60)")
            .await
    });

    // Dry run: logged and counted, nothing touched.
    let dry = TestDaemon::start_with(|c| guarded(c, as_role("watcher"), "dry_run")).await;
    support::eventually("a dry-run action", Duration::from_secs(15), || async {
        (results(&dry, "slow").await == ["dry_run"]).then_some(())
    })
    .await;
    let flags = dry.get("/api/v1/flags").await.json();
    let slow_flag = flags["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["tenant"] == "slow")
        .unwrap();
    assert_eq!(slow_flag["action"], "guard", "{flags}");
    let m = dry.metrics().await;
    let dry_runs = m.value(
        "tenantwatch_guard_actions_total",
        &[
            ("tenant", "slow"),
            ("rule", "long_query"),
            ("action", "cancel"),
            ("result", "dry_run"),
        ],
    );
    assert_eq!(dry_runs, Some(1.0));
    assert!(still_running(&admin, "slow").await);
    dry.stop().await;

    // A role without pg_signal_backend: refused, counted, nothing touched.
    let weak = TestDaemon::start_with(|c| guarded(c, as_role("weak"), "enforce")).await;
    support::eventually("a refused action", Duration::from_secs(15), || async {
        (results(&weak, "slow").await == ["permission"]).then_some(())
    })
    .await;
    assert!(still_running(&admin, "slow").await);
    weak.stop().await;

    // Enforce: the long query is cancelled, the idle transaction ended.
    let enforcing = TestDaemon::start_with(|c| guarded(c, as_role("watcher"), "enforce")).await;
    let cancelled = tokio::time::timeout(Duration::from_secs(15), long_query)
        .await
        .expect("the long query is cancelled")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        cancelled.code(),
        Some(&SqlState::QUERY_CANCELED),
        "{cancelled}"
    );
    support::eventually(
        "the idle session ended",
        Duration::from_secs(15),
        || async {
            // Asking would reset its idle time: watch the connection instead.
            idler.is_closed().then_some(())
        },
    )
    .await;
    assert_eq!(results(&enforcing, "slow").await, ["ok"]);
    assert_eq!(results(&enforcing, "idler").await, ["ok"]);
    let guard = enforcing.get("/api/v1/guard").await.json();
    let idle_action = guard["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["tenant"] == "idler")
        .unwrap();
    assert_eq!(idle_action["action"], "terminate");
    assert_eq!(idle_action["rule"], "idle_in_transaction");
    assert!(
        idle_action["query"]
            .as_str()
            .unwrap()
            .contains("tenant='idler'")
    );

    // The superuser's query runs on, flagged but never acted upon, and
    // tenantwatch's own sessions were never among the targets.
    let flags = enforcing.get("/api/v1/flags").await.json();
    assert!(
        flags["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["tenant"] == "boss" && f["reason"] == "long_query"),
        "{flags}"
    );
    assert!(results(&enforcing, "boss").await.is_empty());
    assert!(still_running(&admin, "boss").await);
    let m = enforcing.metrics().await;
    assert_eq!(
        m.value("tenantwatch_target_up", &[("target", "main")]),
        Some(1.0)
    );
    let acted: f64 = m
        .samples_named("tenantwatch_guard_actions_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(acted, 2.0, "only the two tenant sessions");
    enforcing.stop().await;
    admin
        .batch_execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '/*tenant=''boss''*/%'",
        )
        .await
        .unwrap();
    let _ = boss_query.await;
}
