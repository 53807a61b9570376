//! The PgBouncer collector against a real PgBouncer (Debian's package) in
//! transaction mode in front of a throwaway cluster: pool saturation per
//! pool and per tenant, SHOW STATS against the workload, a PgBouncer that
//! dies and comes back, and pooled server connections charged to no tenant.

use crate::support;

use std::time::Duration;

use crate::support::{Exposition, TestDaemon, cluster, connect, rule};
use tenantwatch::config::TargetSettings;
use tenantwatch::demo::pgbouncer::{PgBouncer, PgBouncerSettings};

fn fast_pgbouncer(name: &str, dsn: String) -> tenantwatch::config::PgBouncerSettings {
    tenantwatch::config::PgBouncerSettings {
        poll_interval: std::time::Duration::from_millis(200),
        connect_timeout: std::time::Duration::from_secs(2),
        ..tenantwatch::config::PgBouncerSettings::new(name, dsn)
    }
}

/// Transaction pooling with 2 server connections per pool, 50 clients.
fn pool_of_two(backend_port: u16) -> PgBouncerSettings {
    PgBouncerSettings {
        backend_port,
        default_pool_size: 2,
        max_client_conn: 50,
        users: Vec::new(),
    }
}

async fn pgbouncer(settings: PgBouncerSettings) -> PgBouncer {
    tokio::task::spawn_blocking(move || PgBouncer::start_new(&settings))
        .await
        .unwrap()
        .expect("a throwaway PgBouncer starts (needs Debian's pgbouncer package: apt-get install pgbouncer; scripts/test.sh installs it)")
}

fn pool_value(m: &Exposition, name: &str, database: &str, state: Option<&str>) -> Option<f64> {
    let mut labels = vec![
        ("pgbouncer", "edge"),
        ("database", database),
        ("user", "postgres"),
    ];
    labels.extend(state.map(|s| ("state", s)));
    m.value(name, &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_shows_for_the_pool_and_its_tenant() {
    let pg = cluster().await;
    let admin = connect(&pg.dsn("postgres")).await;
    for database in ["tenant_acme", "tenant_zeta"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap();
    }
    let bouncer = pgbouncer(pool_of_two(pg.port())).await;
    let daemon = TestDaemon::start_with(|c| {
        c.pgbouncers
            .push(fast_pgbouncer("edge", bouncer.admin_dsn()));
        // The instance itself too, watching every tenant database.
        c.targets.push(TargetSettings {
            poll_interval: std::time::Duration::from_millis(200),
            databases: vec!["*".into()],
            ..TargetSettings::new("main", pg.dsn("postgres"))
        });
        c.tenants.rules = vec![rule("database", "^tenant_(?P<tenant>.+)$")];
        c.detect.interval = std::time::Duration::from_millis(200);
        {
            let rule = c
                .detect
                .rule_mut(tenantwatch::detect::RuleName::parse("pool_saturation").expect("a rule"));
            rule.for_ = std::time::Duration::from_secs(0);
            rule.threshold = 3.0;
        }
    })
    .await;
    daemon
        .metrics_when("the PgBouncer up", |m| {
            m.value("tenantwatch_pgbouncer_up", &[("pgbouncer", "edge")]) == Some(1.0)
        })
        .await;

    // Six clients of one tenant database on a pool of two: four wait.
    let mut sleepers = Vec::new();
    for _ in 0..6 {
        let client = connect(&bouncer.dsn("tenant_acme", "postgres")).await;
        sleepers.push(tokio::spawn(async move {
            client.batch_execute("SELECT pg_sleep(2)").await.unwrap();
        }));
    }
    let calm = connect(&bouncer.dsn("tenant_zeta", "postgres")).await;
    calm.batch_execute("SELECT 1").await.unwrap();
    let m = daemon
        .metrics_when("four clients waiting in acme's pool", |m| {
            pool_value(
                m,
                "tenantwatch_pgbouncer_pool_clients",
                "tenant_acme",
                Some("waiting"),
            ) == Some(4.0)
                && m.value(
                    "tenantwatch_tenant_pool_waiting_clients",
                    &[("tenant", "acme"), ("pgbouncer", "edge")],
                ) == Some(4.0)
                && pool_value(
                    m,
                    "tenantwatch_pgbouncer_pool_maxwait_seconds",
                    "tenant_acme",
                    None,
                )
                .is_some_and(|s| s > 0.0)
        })
        .await;
    assert_eq!(
        pool_value(
            &m,
            "tenantwatch_pgbouncer_pool_clients",
            "tenant_acme",
            Some("active")
        ),
        Some(2.0)
    );
    assert_eq!(
        pool_value(
            &m,
            "tenantwatch_pgbouncer_pool_servers",
            "tenant_acme",
            Some("active")
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "tenantwatch_pgbouncer_pool_size",
            &[("pgbouncer", "edge"), ("database", "tenant_acme")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "tenantwatch_tenant_pool_waiting_clients",
            &[("tenant", "zeta"), ("pgbouncer", "edge")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            "tenantwatch_pgbouncer_max_client_connections",
            &[("pgbouncer", "edge")]
        ),
        Some(50.0)
    );

    // The detector flags the tenant whose pool saturates, not the calm one.
    support::eventually(
        "a pool_saturation flag",
        Duration::from_secs(10),
        || async {
            let flags = daemon.get("/api/v1/flags").await.json();
            let flags = flags["flags"].as_array().cloned().unwrap_or_default();
            flags
                .iter()
                .any(|f| f["tenant"] == "acme" && f["reason"] == "pool_saturation")
                .then_some(())
        },
    )
    .await;
    // The tenant's detail lists its pool.
    let detail = daemon.get("/api/v1/tenants/acme").await;
    assert_eq!(detail.status, 200, "{}", detail.text());
    let pools = &detail.json()["pools"][0];
    assert_eq!(pools["pgbouncer"], "edge");
    assert_eq!(pools["pools"][0]["database"], "tenant_acme");
    assert!(pools["waiting_clients"].is_u64(), "{pools}");
    let capacity = daemon.get("/api/v1/capacity").await.json();
    let edge = &capacity["pgbouncers"][0];
    assert_eq!(edge["max_client_connections"], 50);
    assert!(
        edge["client_headroom"].as_i64().unwrap() <= 50 - 7,
        "{edge}"
    );
    let acme_pool = edge["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["database"] == "tenant_acme")
        .unwrap();
    assert_eq!(acme_pool["server_headroom"], 0);

    for sleeper in sleepers {
        sleeper.await.unwrap();
    }
    // SHOW STATS counted what the workload did: six queries in six
    // transactions on acme's database, and the waits.
    let m = daemon
        .metrics_when("acme's six queries counted", |m| {
            m.value(
                "tenantwatch_pgbouncer_queries_total",
                &[("pgbouncer", "edge"), ("database", "tenant_acme")],
            ) == Some(6.0)
        })
        .await;
    assert_eq!(
        m.value(
            "tenantwatch_pgbouncer_transactions_total",
            &[("pgbouncer", "edge"), ("database", "tenant_acme")]
        ),
        Some(6.0)
    );
    let query_seconds = m
        .value(
            "tenantwatch_pgbouncer_query_time_seconds_total",
            &[("pgbouncer", "edge"), ("database", "tenant_acme")],
        )
        .unwrap();
    assert!((11.5..30.0).contains(&query_seconds), "{query_seconds}");
    let waited = m
        .value(
            "tenantwatch_pgbouncer_client_wait_seconds_total",
            &[("pgbouncer", "edge"), ("database", "tenant_acme")],
        )
        .unwrap();
    // Two waves of two clients waited about 2 s and 4 s.
    assert!(waited > 5.0, "{waited}");
    // The tenant's wait is its database's: every pool of it is acme's
    // (summed in another order, so equal to the last bits only).
    let tenant_waited = m
        .value(
            "tenantwatch_tenant_pool_wait_seconds_total",
            &[("tenant", "acme"), ("pgbouncer", "edge")],
        )
        .unwrap();
    assert!(
        (tenant_waited - waited).abs() <= 1e-9 * waited,
        "{tenant_waited} vs {waited}"
    );
    drop(calm);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_that_dies_is_down_and_comes_back() {
    let pg = cluster().await;
    let mut bouncer = pgbouncer(pool_of_two(pg.port())).await;
    let daemon = TestDaemon::start_with(|c| {
        c.pgbouncers
            .push(fast_pgbouncer("edge", bouncer.admin_dsn()));
    })
    .await;
    let client = connect(&bouncer.dsn("postgres", "postgres")).await;
    client.batch_execute("SELECT 1").await.unwrap();
    daemon
        .metrics_when("the PgBouncer up with its pool", |m| {
            m.value("tenantwatch_pgbouncer_up", &[("pgbouncer", "edge")]) == Some(1.0)
                && pool_value(
                    m,
                    "tenantwatch_pgbouncer_pool_clients",
                    "postgres",
                    Some("active"),
                )
                .is_some()
        })
        .await;
    drop(client);

    bouncer.stop();
    let m = daemon
        .metrics_when("the PgBouncer down", |m| {
            m.value("tenantwatch_pgbouncer_up", &[("pgbouncer", "edge")]) == Some(0.0)
        })
        .await;
    // Its pools are withdrawn, its errors counted; the daemon still serves.
    assert_eq!(
        m.samples_named("tenantwatch_pgbouncer_pool_clients")
            .count(),
        0
    );
    let errors: f64 = m
        .samples_named("tenantwatch_pgbouncer_poll_errors_total")
        .map(|s| s.value)
        .sum();
    assert!(errors >= 1.0, "{errors}");
    assert_eq!(daemon.get("/healthz").await.status, 200);
    let targets = daemon.get("/api/v1/targets").await.json();
    assert_eq!(targets["pgbouncers"][0]["up"], false);

    let bouncer = tokio::task::spawn_blocking(move || {
        bouncer.start().unwrap();
        bouncer
    })
    .await
    .unwrap();
    daemon
        .metrics_when("the PgBouncer up again", |m| {
            m.value("tenantwatch_pgbouncer_up", &[("pgbouncer", "edge")]) == Some(1.0)
        })
        .await;
    let targets = daemon.get("/api/v1/targets").await.json();
    assert_eq!(targets["pgbouncers"][0]["up"], true);
    let version = targets["pgbouncers"][0]["version"].as_str().unwrap();
    assert!(version.starts_with("PgBouncer"), "{version}");
    daemon.stop().await;
    drop(bouncer);
}

/// Through a transaction-mode pool a server connection serves tenant A,
/// then tenant B: once A is done it holds no connection in tenantwatch's
/// figures; the idle server connections count as pooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_server_connections_are_charged_to_no_tenant() {
    let pg = cluster().await;
    let admin = connect(&pg.dsn("postgres")).await;
    admin.batch_execute("CREATE DATABASE app").await.unwrap();
    let bouncer = pgbouncer(pool_of_two(pg.port())).await;
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(TargetSettings {
            poll_interval: std::time::Duration::from_millis(200),
            ..TargetSettings::new("main", pg.dsn("app"))
        });
        c.tenants.rules = vec![rule("query_comment", "^(?P<tenant>.+)$")];
    })
    .await;

    // Tenant A opens both server connections (two clients at once) ...
    let a1 = connect(&bouncer.dsn("app", "postgres")).await;
    let a2 = connect(&bouncer.dsn("app", "postgres")).await;
    let (r1, r2) = tokio::join!(
        a1.batch_execute("/*tenant='a'*/ SELECT pg_sleep(0.5)"),
        a2.batch_execute("/*tenant='a'*/ SELECT pg_sleep(0.5)"),
    );
    r1.unwrap();
    r2.unwrap();
    // ... while it runs, they are its connections.
    let busy = connect(&bouncer.dsn("app", "postgres")).await;
    let running = tokio::spawn(async move {
        busy.batch_execute("/*tenant='a'*/ SELECT pg_sleep(1.5)")
            .await
            .unwrap();
    });
    daemon
        .metrics_when("tenant a's running query", |m| {
            m.value(
                "tenantwatch_tenant_connections",
                &[("target", "main"), ("tenant", "a"), ("state", "active")],
            ) == Some(1.0)
        })
        .await;
    running.await.unwrap();
    drop((a1, a2));
    // Tenant B then runs on the same server connections.
    let b = connect(&bouncer.dsn("app", "postgres")).await;
    b.batch_execute("/*tenant='b'*/ SELECT 1").await.unwrap();

    let m = daemon
        .metrics_when("both server connections pooled", |m| {
            m.value(
                "tenantwatch_target_pooled_connections",
                &[("target", "main")],
            ) == Some(2.0)
        })
        .await;
    for tenant in ["a", "b"] {
        let held: f64 = m
            .samples_named("tenantwatch_tenant_connections")
            .filter(|s| s.labels.get("tenant").map(String::as_str) == Some(tenant))
            .map(|s| s.value)
            .sum();
        assert_eq!(held, 0.0, "tenant {tenant} holds {held} connections");
    }
    drop(b);
    daemon.stop().await;
}
