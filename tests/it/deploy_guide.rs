//! docs/deploy.md followed step by step on a fresh, throwaway PostgreSQL 15
//! and PgBouncer: the role is created by the guide's own SQL (read from the
//! page, so the page cannot drift from what works), `pg_stat_statements` is
//! enabled as it says, PgBouncer lists tenantwatch in `stats_users` as it
//! says; then every collector of the target polls successfully, the
//! PgBouncer is up, and the guard's action on a runaway query ends `ok`
//! thanks to `pg_signal_backend`.

use std::time::Duration;

use crate::support::{self, TestDaemon, cluster, connect};
use tenantwatch::config::TargetSettings;
use tenantwatch::demo::pgbouncer::{PgBouncer, PgBouncerSettings};
use tenantwatch::store::CollectorName;

const GUIDE: &str = include_str!("../../docs/deploy.md");

/// The fenced blocks of `language` in the guide's section `heading`.
fn blocks(heading: &str, language: &str) -> Vec<String> {
    let section = GUIDE
        .split(heading)
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_else(|| panic!("docs/deploy.md has no section {heading:?}"));
    section
        .split(&format!("```{language}\n"))
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_guide_works_on_a_fresh_database() {
    let pg = cluster().await;
    // Step 1: the role, exactly as the guide creates it.
    let sql = blocks("## 1. The database role", "sql");
    assert_eq!(sql.len(), 2, "the role's SQL, then pg_stat_statements'");
    let admin = connect(&pg.dsn("postgres")).await;
    admin
        .batch_execute(&sql[0])
        .await
        .expect("the guide's role SQL runs");
    let role_grants: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
             JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = 'tenantwatch'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        role_grants, 2,
        "pg_monitor and pg_signal_backend, nothing else"
    );
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'tenantwatch'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser);
    // pg_stat_statements: preloaded (a restart), then the guide's SQL.
    assert!(sql[1].contains("shared_preload_libraries = 'pg_stat_statements'"));
    drop(admin);
    let dir = pg.dir().to_path_buf();
    let port = pg.port();
    let pg = tokio::task::spawn_blocking(move || {
        pg.configure("shared_preload_libraries = 'pg_stat_statements'")
            .map(|()| pg)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("restarting {} on {port}: {e}", dir.display()));
    let admin = connect(&pg.dsn("postgres")).await;
    admin
        .batch_execute(&sql[1])
        .await
        .expect("the guide's extension SQL runs");

    // PgBouncer with tenantwatch in stats_users, as the guide says.
    let ini = blocks("### PgBouncer (optional)", "ini");
    assert!(ini.iter().any(|b| b.contains("stats_users = tenantwatch")));
    let backend_port = pg.port();
    let bouncer = tokio::task::spawn_blocking(move || {
        PgBouncer::start_new(&PgBouncerSettings {
            backend_port,
            default_pool_size: 2,
            max_client_conn: 20,
            users: vec!["app".into()],
        })
    })
    .await
    .unwrap()
    .expect("a throwaway PgBouncer (apt-get install pgbouncer; scripts/test.sh installs it)");

    // A tenant's runaway query for the guard to end.
    admin
        .batch_execute("CREATE ROLE t_runaway LOGIN")
        .await
        .unwrap();
    let runaway = connect(&format!("{} user=t_runaway", pg.dsn("postgres"))).await;
    let query = tokio::spawn(async move { runaway.batch_execute("SELECT pg_sleep(60)").await });

    // Step 2: tenantwatch as the guide configures it, as role tenantwatch.
    let dsn = format!("{} user=tenantwatch", pg.dsn("postgres"));
    let admin_dsn = bouncer.admin_dsn();
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(TargetSettings {
            poll_interval: Duration::from_millis(300),
            stats_interval: Duration::from_millis(300),
            size_interval: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(2),
            ..TargetSettings::new("main", dsn)
        });
        c.pgbouncers.push(tenantwatch::config::PgBouncerSettings {
            poll_interval: Duration::from_millis(300),
            ..tenantwatch::config::PgBouncerSettings::new("edge", admin_dsn)
        });
        c.tenants.rules = vec![
            support::rule("schema", "^tenant_(?P<tenant>.+)$"),
            support::rule("role", "^t_(?P<tenant>.+)$"),
        ];
        c.detect.interval = Duration::from_millis(200);
        let rule = c
            .detect
            .rule_mut(tenantwatch::detect::RuleName::parse("long_query").unwrap());
        rule.threshold = 1.0;
        rule.for_ = Duration::ZERO;
        c.guard.mode = toml::Value::from("enforce").try_into().unwrap();
        c.guard.grace = Duration::ZERO;
    })
    .await;

    // Every collector up, the PgBouncer up.
    support::eventually(
        "every collector polled",
        Duration::from_secs(20),
        || async {
            let m = daemon.metrics().await;
            let up = m.value("tenantwatch_target_up", &[("target", "main")]) == Some(1.0)
                && m.value("tenantwatch_pgbouncer_up", &[("pgbouncer", "edge")]) == Some(1.0);
            let collected = CollectorName::ALL.iter().all(|c| {
                m.value_or_zero(
                    "tenantwatch_poll_last_success_timestamp_seconds",
                    &[("target", "main"), ("collector", c.as_str())],
                ) > 0.0
            });
            (up && collected).then_some(())
        },
    )
    .await;
    let m = daemon.metrics().await;
    let errors: f64 = m
        .samples_named("tenantwatch_poll_errors_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(errors, 0.0, "no collector failed with the guide's grants");

    // The guard cancels the runaway query: `ok`, thanks to pg_signal_backend.
    support::eventually("the guard's action ok", Duration::from_secs(20), || async {
        let guard = daemon.get("/api/v1/guard").await.json();
        let results: Vec<String> = guard["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["tenant"] == "runaway")
            .filter_map(|a| a["result"].as_str().map(str::to_owned))
            .collect();
        results.iter().any(|r| r == "ok").then_some(())
    })
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the runaway query ended")
        .unwrap();
    assert!(ended.is_err(), "cancelled, not finished");
    daemon.stop().await;
    drop(bouncer);
}
