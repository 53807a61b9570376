//! The PostgreSQL collectors against real, throwaway clusters: attribution by
//! each source, per-schema figures against direct SQL, several instances,
//! faults (down at start, restart, held locks), and secrets.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::{Exposition, TestDaemon, cluster, connect, eventually, rule};
use tenantwatch::config::TargetSettings;
use tenantwatch::demo::cluster::Cluster;

fn fast_target(name: &str, dsn: String) -> TargetSettings {
    TargetSettings {
        poll_interval: std::time::Duration::from_millis(500),
        stats_interval: std::time::Duration::from_millis(500),
        size_interval: std::time::Duration::from_secs(1),
        statement_timeout: std::time::Duration::from_secs(2),
        lock_timeout: std::time::Duration::from_millis(500),
        connect_timeout: std::time::Duration::from_secs(2),
        schema_detail: tenantwatch::store::SchemaDetail::Full,
        ..TargetSettings::new(name, dsn)
    }
}

/// A throwaway cluster with an empty `app` database, and the session that
/// made it (still open: some tests count it among the client backends).
async fn cluster_with_app_database() -> (Cluster, tokio_postgres::Client) {
    let pg = cluster().await;
    let admin = connect(&pg.dsn("postgres")).await;
    admin.batch_execute("CREATE DATABASE app").await.unwrap();
    (pg, admin)
}

/// [`cluster_with_app_database`] with `pg_stat_statements` preloaded and
/// created in `app`.
async fn cluster_with_pg_stat_statements() -> (Cluster, tokio_postgres::Client) {
    let (pg, admin) = cluster_with_app_database().await;
    let configured = tokio::task::block_in_place(|| {
        pg.configure("shared_preload_libraries = 'pg_stat_statements'")
    });
    configured.expect("pg_stat_statements preloaded (it ships with PostgreSQL's server package)");
    connect(&pg.dsn("app"))
        .await
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .unwrap();
    (pg, admin)
}

/// Bytes of the tables of `schema` as `pg_total_relation_size` counts them,
/// the figure the exact size cycle publishes.
async fn exact_schema_size(client: &tokio_postgres::Client, schema: &str) -> f64 {
    let sql = "SELECT sum(pg_total_relation_size(c.oid))::int8 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = $1 AND c.relkind = 'r'";
    client
        .query_one(sql, &[&schema])
        .await
        .unwrap()
        .get::<_, i64>(0) as f64
}

/// A daemon on `pg`'s `app` database that measures sizes one relation per
/// statement, a round every 200 ms.
async fn sizing_daemon(pg: &Cluster) -> TestDaemon {
    TestDaemon::start_with(|c| {
        let mut target = fast_target("main", pg.dsn("app"));
        target.size_batch = 1;
        target.size_interval = std::time::Duration::from_millis(200);
        c.targets.push(target);
    })
    .await
}

/// A tenant's exact schema size as the target "main" publishes it.
fn schema_size(m: &Exposition, tenant: &str) -> Option<f64> {
    tenant_value(m, "tenantwatch_tenant_schema_size_bytes", "main", tenant)
}

fn up(m: &Exposition, target: &str) -> Option<f64> {
    m.value("tenantwatch_target_up", &[("target", target)])
}

fn tenant_value(m: &Exposition, name: &str, target: &str, tenant: &str) -> Option<f64> {
    m.value(name, &[("target", target), ("tenant", tenant)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_is_attributed_by_each_source() {
    let pg = cluster().await;
    let admin = connect(&pg.dsn("postgres")).await;
    for statement in [
        "CREATE DATABASE tenant_dbt_core",
        "CREATE DATABASE app",
        "CREATE ROLE app_rolet LOGIN",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    let app = connect(&pg.dsn("app")).await;
    app.batch_execute("CREATE SCHEMA tenant_scht; CREATE TABLE tenant_scht.t (id int)")
        .await
        .unwrap();

    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(fast_target("main", pg.dsn("app")));
        c.tenants.rules = vec![
            rule("schema", "^tenant_(?P<tenant>.+)$"),
            rule("database", "^tenant_(?P<tenant>[a-z0-9]+)_[a-z]+$"),
            rule("role", "^app_(?P<tenant>.+)$"),
            rule("application_name", "^web-(?P<tenant>.+)$"),
            rule("query_comment", "^(?P<tenant>.+)$"),
        ];
    })
    .await;

    // One idle session per source.
    let by_database = connect(&pg.dsn("tenant_dbt_core")).await;
    let by_role = connect(&format!("{} user=app_rolet", pg.dsn("app"))).await;
    let by_application = connect(&format!("{} application_name=web-appt", pg.dsn("app"))).await;
    let by_comment = connect(&pg.dsn("app")).await;
    by_comment
        .batch_execute("/*tenant='cmtt'*/ SELECT 1")
        .await
        .unwrap();
    // And one that nothing attributes: it counts at target level only.
    let unattributed = connect(&pg.dsn("app")).await;
    unattributed.batch_execute("SELECT 1").await.unwrap();

    // Sessions come from the cluster task and schema statistics from the
    // detail task, each on its own timing: wait for both.
    let m = daemon
        .metrics_when(
            "sessions of three tenants, a pooled one, an unattributed one and a schema's tables",
            |m| {
                ["dbt", "rolet", "appt"].iter().all(|t| {
                    m.value(
                        "tenantwatch_tenant_connections",
                        &[("target", "main"), ("tenant", t), ("state", "idle")],
                    ) == Some(1.0)
                }) && m.value(
                    "tenantwatch_target_pooled_connections",
                    &[("target", "main")],
                ) == Some(1.0)
                    && tenant_value(m, "tenantwatch_tenant_tables", "main", "scht").is_some()
                    // A poll between the sessions' connects sees some of
                    // them: wait for the unattributed one too.
                    && m.value(
                        "tenantwatch_target_connections",
                        &[("target", "main"), ("state", "idle")],
                    )
                    .is_some_and(|idle| idle >= 7.0)
            },
        )
        .await;
    // An idle backend known only by its last query's tag is a pooled
    // connection: charged to no tenant.
    assert_eq!(
        m.value(
            "tenantwatch_tenant_connections",
            &[("target", "main"), ("tenant", "cmtt"), ("state", "idle")],
        ),
        None
    );
    // The schema rule applies to schema statistics.
    assert_eq!(
        tenant_value(&m, "tenantwatch_tenant_tables", "main", "scht"),
        Some(1.0)
    );
    assert_eq!(up(&m, "main"), Some(1.0));
    // admin, app, four tenants' sessions, one unattributed (tenantwatch's own excluded).
    let idle = m.value(
        "tenantwatch_target_connections",
        &[("target", "main"), ("state", "idle")],
    );
    assert_eq!(idle, Some(7.0));
    drop((
        by_database,
        by_role,
        by_application,
        by_comment,
        unattributed,
    ));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_figures_equal_direct_sql_and_long_transactions_show() {
    let (pg, _admin) = cluster_with_app_database().await;
    let app = connect(&pg.dsn("app")).await;
    app.batch_execute(
        "CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b; CREATE SCHEMA public_stuff;
         CREATE TABLE tenant_a.t1 (id int PRIMARY KEY, v text);
         CREATE TABLE tenant_a.t2 (id int PRIMARY KEY, v text);
         CREATE TABLE tenant_b.t1 (id int PRIMARY KEY, v text);
         CREATE TABLE public_stuff.t (id int);
         INSERT INTO tenant_a.t1 SELECT g, 'x' FROM generate_series(1, 1000) g;
         INSERT INTO tenant_a.t2 SELECT g, 'y' FROM generate_series(1, 500) g;
         UPDATE tenant_a.t1 SET v = 'z' WHERE id <= 100;
         DELETE FROM tenant_a.t2 WHERE id <= 50;
         INSERT INTO tenant_b.t1 SELECT g, 'b' FROM generate_series(1, 10) g;
         SELECT count(*) FROM tenant_a.t1;",
    )
    .await
    .unwrap();
    // A backend flushes its statistics when it exits.
    drop(app);
    // A session of tenant a sits idle in a transaction (attributed by comment).
    let idle = connect(&pg.dsn("app")).await;
    idle.batch_execute("BEGIN; SELECT 1 /*tenant='a'*/")
        .await
        .unwrap();

    let daemon =
        TestDaemon::start_with(|c| c.targets.push(fast_target("main", pg.dsn("app")))).await;
    let expected = |sql: &str| {
        let sql = sql.to_owned();
        let dsn = pg.dsn("app");
        async move {
            let client = connect(&dsn).await;
            let row = client.query_one(&sql, &[]).await.unwrap();
            row.get::<_, i64>(0) as f64
        }
    };
    // Statistics reach the views within a second or so; wait for the inserts.
    let sum = |column: &str| {
        format!(
            "SELECT COALESCE(sum({column}), 0)::int8 FROM pg_stat_user_tables WHERE schemaname = 'tenant_a'"
        )
    };
    let want_ins = expected(&sum("n_tup_ins")).await;
    let m = daemon
        .metrics_when("tenant a's inserts", |m| {
            m.value(
                "tenantwatch_tenant_tuples_total",
                &[("target", "main"), ("tenant", "a"), ("op", "inserted")],
            ) == Some(1500.0)
        })
        .await;
    assert!(
        want_ins == 1500.0 || want_ins == 0.0,
        "stats flushed partially: {want_ins}"
    );
    for (op, column) in [
        ("updated", "n_tup_upd"),
        ("deleted", "n_tup_del"),
        ("seq_read", "seq_tup_read"),
    ] {
        let want = expected(&sum(column)).await;
        let got = m.value(
            "tenantwatch_tenant_tuples_total",
            &[("target", "main"), ("tenant", "a"), ("op", op)],
        );
        assert_eq!(got, Some(want), "{op}");
    }
    let live = expected(&sum("n_live_tup")).await;
    assert_eq!(
        tenant_value(&m, "tenantwatch_tenant_live_tuples", "main", "a"),
        Some(live)
    );
    assert_eq!(live, 1450.0);
    let dead = expected(&sum("n_dead_tup")).await;
    assert_eq!(
        tenant_value(&m, "tenantwatch_tenant_dead_tuples", "main", "a"),
        Some(dead)
    );
    assert_eq!(
        tenant_value(&m, "tenantwatch_tenant_tables", "main", "a"),
        Some(2.0)
    );
    assert_eq!(
        tenant_value(&m, "tenantwatch_tenant_tables", "main", "b"),
        Some(1.0)
    );
    // public_stuff matches no rule: not a tenant.
    assert!(
        m.samples_named("tenantwatch_tenant_tables")
            .all(|s| s.labels["tenant"] != "public_stuff")
    );

    // Exact sizes replace the estimate once a size cycle completes.
    let want_size = exact_schema_size(&connect(&pg.dsn("app")).await, "tenant_a").await;
    let m = daemon
        .metrics_when("tenant a's exact size", |m| {
            tenant_value(m, "tenantwatch_tenant_schema_size_bytes", "main", "a") == Some(want_size)
        })
        .await;
    assert!(
        tenant_value(
            &m,
            "tenantwatch_tenant_schema_size_estimate_bytes",
            "main",
            "a"
        )
        .unwrap()
            > 0.0
    );

    // The idle-in-transaction session is measured from its state change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = daemon
        .metrics_when("idle in transaction", |m| {
            tenant_value(
                m,
                "tenantwatch_tenant_idle_in_transaction_max_seconds",
                "main",
                "a",
            )
            .unwrap_or(0.0)
                >= 1.0
        })
        .await;
    assert_eq!(
        m.value(
            "tenantwatch_tenant_connections",
            &[
                ("target", "main"),
                ("tenant", "a"),
                ("state", "idle_in_transaction")
            ]
        ),
        Some(1.0)
    );
    assert!(
        m.value(
            "tenantwatch_database_commits_total",
            &[("target", "main"), ("database", "app")]
        )
        .unwrap()
            > 0.0
    );
    drop(idle);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_a_database_per_tenant_and_service() {
    let services = ["identity", "core", "billing"];
    let mut clusters = Vec::new();
    for service in services {
        let pg = cluster().await;
        let admin = connect(&pg.dsn("postgres")).await;
        for tenant in ["acme", "globex"] {
            admin
                .batch_execute(&format!("CREATE DATABASE tenant_{tenant}_{service}"))
                .await
                .unwrap();
            let db = connect(&pg.dsn(&format!("tenant_{tenant}_{service}"))).await;
            db.batch_execute("CREATE TABLE accounts (id int); CREATE TABLE events (id int); INSERT INTO accounts VALUES (1), (2)")
                .await
                .unwrap();
        }
        clusters.push(pg);
    }
    let daemon = TestDaemon::start_with(|c| {
        for (service, pg) in services.iter().zip(&clusters) {
            let mut target = fast_target(service, pg.dsn("postgres"));
            target.databases = vec!["*".into()];
            c.targets.push(target);
        }
        c.tenants.rules = vec![rule("database", "^tenant_(?P<tenant>[a-z0-9]+)_[a-z]+$")];
    })
    .await;
    let m = daemon
        .metrics_when("two tenants on three targets", |m| {
            services.iter().all(|service| {
                ["acme", "globex"].iter().all(|tenant| {
                    tenant_value(m, "tenantwatch_tenant_tables", service, tenant) == Some(2.0)
                })
            })
        })
        .await;
    for service in services {
        assert_eq!(up(&m, service), Some(1.0));
        // postgres plus two tenant databases.
        assert_eq!(
            m.value(
                "tenantwatch_target_watched_databases",
                &[("target", service)]
            ),
            Some(3.0)
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_down_at_start_comes_up_and_a_restart_recovers() {
    let pg = cluster().await;
    let stop = |pg: &Cluster| pg.stop().expect("stop");
    stop(&pg);
    let daemon =
        TestDaemon::start_with(|c| c.targets.push(fast_target("main", pg.dsn("postgres")))).await;
    let m = daemon
        .metrics_when("a failed connect", |m| {
            m.value(
                "tenantwatch_poll_errors_total",
                &[
                    ("target", "main"),
                    ("collector", "connect"),
                    ("error", "connect"),
                ],
            )
            .unwrap_or(0.0)
                >= 1.0
        })
        .await;
    assert_eq!(up(&m, "main"), Some(0.0));
    assert_eq!(
        daemon.get("/healthz").await.status,
        200,
        "the daemon keeps serving"
    );

    pg.start().expect("start");
    daemon
        .metrics_when("the target up", |m| up(m, "main") == Some(1.0))
        .await;

    // Restart mid-run: up again within two poll intervals of the server
    // accepting connections (plus a margin for this shared machine).
    pg.restart().expect("restart");
    let restarted = Instant::now();
    let m = daemon
        .metrics_when("a poll after the restart", |m| {
            let last = m
                .value(
                    "tenantwatch_poll_last_success_timestamp_seconds",
                    &[("target", "main"), ("collector", "activity")],
                )
                .unwrap_or(0.0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            up(m, "main") == Some(1.0) && now - last < 0.4
        })
        .await;
    assert!(
        restarted.elapsed() < Duration::from_millis(2 * 500 + 1500),
        "took {:?}",
        restarted.elapsed()
    );
    assert_eq!(up(&m, "main"), Some(1.0));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_does_not_stall_polls() {
    let (pg, _admin) = cluster_with_app_database().await;
    let app = connect(&pg.dsn("app")).await;
    app.batch_execute("CREATE SCHEMA tenant_locked; CREATE TABLE tenant_locked.t (id int); INSERT INTO tenant_locked.t VALUES (1)")
        .await
        .unwrap();
    // DDL-style lock held for the whole test.
    app.batch_execute("BEGIN; LOCK TABLE tenant_locked.t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let daemon =
        TestDaemon::start_with(|c| c.targets.push(fast_target("main", pg.dsn("app")))).await;
    let polls_before =
        |m: &Exposition| m.value_or_zero("tenantwatch_polls_total", &[("target", "main")]);
    let m = daemon
        .metrics_when("several polls", |m| polls_before(m) >= 6.0)
        .await;
    assert_eq!(up(&m, "main"), Some(1.0));
    for collector in ["activity", "schema_stats", "sizes"] {
        let seconds = m
            .value(
                "tenantwatch_poll_duration_seconds",
                &[("target", "main"), ("collector", collector)],
            )
            .unwrap_or_else(|| panic!("{collector} ran"));
        assert!(seconds < 2.0, "{collector} took {seconds}s behind the lock");
    }
    assert_eq!(
        tenant_value(&m, "tenantwatch_tenant_tables", "main", "locked"),
        Some(1.0)
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_never_overlap() {
    let pg = cluster().await;
    // A poll interval far below what a poll takes: the loop must delay, not pile up.
    let daemon = TestDaemon::start_with(|c| {
        let mut target = fast_target("main", pg.dsn("postgres"));
        target.poll_interval = std::time::Duration::from_millis(1);
        target.stats_interval = std::time::Duration::from_millis(1);
        c.targets.push(target);
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = daemon.metrics().await;
    let polls = m.value_or_zero("tenantwatch_polls_total", &[("target", "main")]);
    assert!(polls > 3.0);
    // Our own sessions: the cluster task's and the detail task's (the
    // default max_sessions, 2), never one per poll.
    let check = connect(&pg.dsn("postgres")).await;
    let ours: i64 = check
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantwatch'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ours, 2);
    daemon.stop().await;
}

#[test]
fn the_dsn_password_never_appears_in_logs_errors_or_metrics() {
    use std::io::Read;
    let secret = "hunter2-very-secret";
    let dir = std::env::temp_dir().join(format!("tw-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = tenantwatch::demo::cluster::free_port();
    let http = tenantwatch::demo::cluster::free_port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{http}\"\n[ingest]\nudp_listen = \"\"\n\
             [[targets]]\nname = \"down\"\ndsn = \"host=127.0.0.1 port={port} user=u password={secret} dbname=app\"\npoll_interval = \"200ms\"\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenantwatch"))
        .arg("--config")
        .arg(&config)
        .env("TENANTWATCH_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let metrics = {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    };
    let _ = child.kill();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let _ = child.wait();
    assert!(
        logs.contains("Poll failed"),
        "the failing target is logged: {logs}"
    );
    assert!(
        logs.contains(&format!("127.0.0.1:{port}/app")),
        "sanitized address logged"
    );
    assert!(!logs.contains(secret), "password in logs: {logs}");
    assert!(
        metrics.contains("tenantwatch_target_up{target=\"down\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains(secret));

    // A DSN that does not parse is refused without echoing it.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!("[[targets]]\nname = \"x\"\ndsn = \"host=a password={secret} port=notaport\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantwatch"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("targets[0].dsn"), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_encrypts_and_verifies_against_a_given_ca() {
    let pg = cluster().await;
    let ca = pg
        .enable_tls()
        .expect("TLS on the test cluster (needs the openssl command)");
    let wrong_ca = {
        let other = cluster().await;
        let path = other.enable_tls().expect("a second CA");
        let copy = pg.dir().join("wrong-ca.crt");
        std::fs::copy(path, &copy).unwrap();
        copy
    };

    let daemon = TestDaemon::start_with(|c| {
        let dsn = format!("{} sslmode=require", pg.dsn("postgres"));
        c.targets.push(fast_target("encrypted", dsn.clone()));
        let mut verified = fast_target("verified", dsn.clone());
        verified.tls_ca_file = Some(ca.clone());
        c.targets.push(verified);
        let mut wrong = fast_target("wrong_ca", dsn);
        wrong.tls_ca_file = Some(wrong_ca.clone());
        c.targets.push(wrong);
    })
    .await;
    let m = daemon
        .metrics_when("two TLS targets up and one refused", |m| {
            up(m, "encrypted") == Some(1.0)
                && up(m, "verified") == Some(1.0)
                && m.value_or_zero(
                    "tenantwatch_poll_errors_total",
                    &[
                        ("target", "wrong_ca"),
                        ("collector", "connect"),
                        ("error", "connect"),
                    ],
                ) >= 1.0
        })
        .await;
    assert_eq!(up(&m, "wrong_ca"), Some(0.0));
    let check = connect(&pg.dsn("postgres")).await;
    let encrypted: i64 = check
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.application_name = 'tenantwatch' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        encrypted, 4,
        "the sessions of the up targets (two each) are encrypted"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_means_tls_or_nothing() {
    let pg = cluster().await;
    let ca = pg
        .enable_tls()
        .expect("TLS on the test cluster (needs the openssl command)");
    // No sslmode in the DSN: libpq's default `prefer` would accept a server
    // that answers "no TLS". With a CA given, the session must be TLS.
    let mut file = tenantwatch::config::Settings::default();
    let mut target = fast_target("verified", pg.dsn("postgres"));
    target.tls_ca_file = Some(ca.clone());
    file.targets.push(target.clone());
    let config = tenantwatch::Config::try_from(file).unwrap();
    assert_eq!(
        config.targets[0].pg.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    let mut file = tenantwatch::config::Settings::default();
    target.dsn = tenantwatch::collect::Dsn::new(format!("{} sslmode=disable", pg.dsn("postgres")));
    file.targets.push(target);
    let err = tenantwatch::Config::try_from(file).unwrap_err().to_string();
    assert!(err.contains("tls_ca_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_calling_itself_tenantwatch_is_still_counted() {
    let (pg, _admin) = cluster_with_app_database().await;
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(fast_target("main", pg.dsn("app")));
    })
    .await;
    let impostor = connect(&format!("{} application_name=tenantwatch", pg.dsn("app"))).await;
    // In a transaction, so that the tag keeps the session its tenant's.
    impostor.batch_execute("BEGIN").await.unwrap();
    impostor
        .batch_execute("/*tenant='sneaky'*/ SELECT 1")
        .await
        .unwrap();
    let m = daemon
        .metrics_when("the impostor's session", |m| {
            m.value(
                "tenantwatch_tenant_connections",
                &[
                    ("target", "main"),
                    ("tenant", "sneaky"),
                    ("state", "idle_in_transaction"),
                ],
            ) == Some(1.0)
        })
        .await;
    // tenantwatch's own session is still left out: admin alone is idle.
    assert_eq!(
        m.value(
            "tenantwatch_target_connections",
            &[("target", "main"), ("state", "idle")]
        ),
        Some(1.0)
    );
    drop(impostor);
    daemon.stop().await;
}

/// A relation under an ACCESS EXCLUSIVE lock (a migration) is skipped by the
/// size batch so the poll does not queue behind it; it counts with its last
/// measured size rather than dropping out of its tenant's sum, and the
/// cycle still publishes everyone else's new sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_relation_keeps_its_last_size() {
    let (pg, _admin) = cluster_with_app_database().await;
    let app = connect(&pg.dsn("app")).await;
    app.batch_execute(
        "CREATE SCHEMA tenant_grow; CREATE TABLE tenant_grow.t (id int, pad text);
         CREATE SCHEMA tenant_locked; CREATE TABLE tenant_locked.t (id int);
         INSERT INTO tenant_grow.t VALUES (1, 'x'); INSERT INTO tenant_locked.t VALUES (1)",
    )
    .await
    .unwrap();
    let daemon = sizing_daemon(&pg).await;
    let (grow_before, locked_before) = (
        exact_schema_size(&app, "tenant_grow").await,
        exact_schema_size(&app, "tenant_locked").await,
    );
    assert!(locked_before > 0.0);
    daemon
        .metrics_when("a complete size cycle", |m| {
            schema_size(m, "grow") == Some(grow_before)
                && schema_size(m, "locked") == Some(locked_before)
        })
        .await;

    let locker = connect(&pg.dsn("app")).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE tenant_locked.t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    app.batch_execute(
        "INSERT INTO tenant_grow.t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g",
    )
    .await
    .unwrap();
    let grow_after = exact_schema_size(&app, "tenant_grow").await;
    assert!(grow_after > grow_before);
    let m = daemon
        .metrics_when("a cycle completed under the lock", |m| {
            schema_size(m, "grow") == Some(grow_after)
        })
        .await;
    assert_eq!(
        schema_size(&m, "locked"),
        Some(locked_before),
        "the locked table dropped out"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    daemon.stop().await;
}

/// A size round measures only the relations whose file or write and vacuum
/// counters moved since their last measurement (counted here as calls of
/// the size query, one relation per batch); the others keep their size.
/// (Autovacuum is off on the written table: a vacuum of it, which adds its
/// free-space and visibility maps, would rightly be measured too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_round_measures_only_what_changed() {
    let (pg, _admin) = cluster_with_pg_stat_statements().await;
    let app = connect(&pg.dsn("app")).await;
    app.batch_execute(
        "CREATE SCHEMA tenant_busy;
         CREATE TABLE tenant_busy.t (id int, pad text) WITH (autovacuum_enabled = false);
         CREATE SCHEMA tenant_idle; CREATE TABLE tenant_idle.t (id int);
         CREATE TABLE tenant_idle.u (id int);
         INSERT INTO tenant_busy.t VALUES (1, 'x'); INSERT INTO tenant_idle.t VALUES (1)",
    )
    .await
    .unwrap();
    // A backend's write counters reach the shared statistics up to 10 s
    // after its transaction unless a flush is forced; wait for them, so the
    // rounds below see settled counters.
    let inserted = |table: &'static str, expected: i64| {
        let app = &app;
        async move {
            app.batch_execute("SELECT pg_stat_force_next_flush()")
                .await
                .unwrap();
            let what = format!("{table} shows {expected} inserts");
            eventually(&what, Duration::from_secs(15), || async {
                let row = app
                    .query_one(
                        "SELECT n_tup_ins FROM pg_stat_user_tables
                          WHERE schemaname || '.' || relname = $1",
                        &[&table],
                    )
                    .await
                    .unwrap();
                (row.get::<_, i64>(0) == expected).then_some(())
            })
            .await;
        }
    };
    inserted("tenant_busy.t", 1).await;
    inserted("tenant_idle.t", 1).await;
    let measured = || async {
        app.query_one(
            "SELECT COALESCE(sum(calls), 0)::int8 FROM pg_stat_statements
              WHERE query LIKE '%pg_total_relation_size(c.oid)::int8%'
                AND query NOT LIKE '%pg_stat_statements%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let daemon = sizing_daemon(&pg).await;
    let idle_size = exact_schema_size(&app, "tenant_idle").await;
    daemon
        .metrics_when("the first size round", |m| {
            schema_size(m, "idle") == Some(idle_size) && schema_size(m, "busy").is_some()
        })
        .await;
    // The first round measured all three; quiet rounds measure nothing.
    let after_first = measured().await;
    assert!(after_first >= 3, "{after_first} relations measured");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        measured().await,
        after_first,
        "unchanged relations were measured again"
    );

    app.batch_execute(
        "INSERT INTO tenant_busy.t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g",
    )
    .await
    .unwrap();
    inserted("tenant_busy.t", 5001).await;
    let busy_after = exact_schema_size(&app, "tenant_busy").await;
    let m = daemon
        .metrics_when("the written table measured again", |m| {
            schema_size(m, "busy") == Some(busy_after)
        })
        .await;
    assert_eq!(schema_size(&m, "idle"), Some(idle_size));
    assert_eq!(
        measured().await,
        after_first + 1,
        "only the written table is measured"
    );
    daemon.stop().await;
}

/// Only the first and last KiB of a session's query text are fetched (a
/// query can be up to `track_activity_query_size` long, and there can be
/// thousands): sqlcommenter's tag at the end is still read, text in the
/// middle of a long query never leaves the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_ends_of_a_long_query_are_fetched() {
    let (pg, _admin) = cluster_with_app_database().await;
    let daemon =
        TestDaemon::start_with(|c| c.targets.push(fast_target("main", pg.dsn("app")))).await;
    let pad = "x".repeat(8000);
    let tagged_at_end = format!("SELECT pg_sleep(60), '{pad}' AS pad /*tenant='tail'*/");
    let tagged_in_middle =
        format!("SELECT pg_sleep(60), '{pad}' AS a /*tenant='middle'*/, '{pad}' AS b");
    let mut sessions = Vec::new();
    for query in [tagged_at_end, tagged_in_middle] {
        let client = connect(&pg.dsn("app")).await;
        sessions.push(tokio::spawn(async move {
            let _ = client.batch_execute(&query).await;
        }));
    }
    let active = |m: &Exposition, tenant| {
        m.value(
            "tenantwatch_tenant_connections",
            &[("target", "main"), ("tenant", tenant), ("state", "active")],
        )
    };
    // Both sessions running (they start one after the other).
    let m = daemon
        .metrics_when("both long queries active", |m| {
            m.value(
                "tenantwatch_target_connections",
                &[("target", "main"), ("state", "active")],
            ) == Some(2.0)
        })
        .await;
    assert_eq!(active(&m, "tail"), Some(1.0));
    assert_eq!(
        active(&m, "middle"),
        None,
        "the middle of the query was fetched"
    );
    for session in sessions {
        session.abort();
    }
    daemon.stop().await;
}

/// A target that goes down keeps saying so, but withdraws what it last
/// reported: stale tenant and connection series would keep alerts on them
/// firing over figures nobody refreshes. They return when it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_target_withdraws_its_tenant_series() {
    let (pg, _admin) = cluster_with_app_database().await;
    let app = connect(&pg.dsn("app")).await;
    app.batch_execute("CREATE SCHEMA tenant_gone; CREATE TABLE tenant_gone.t (id int)")
        .await
        .unwrap();
    drop(app);
    let daemon =
        TestDaemon::start_with(|c| c.targets.push(fast_target("main", pg.dsn("app")))).await;
    let tables = |m: &Exposition| tenant_value(m, "tenantwatch_tenant_tables", "main", "gone");
    // The schema statistics and the activity poll publish separately:
    // wait for both before taking the target down.
    daemon
        .metrics_when("the tenant's tables and the target's connections", |m| {
            tables(m) == Some(1.0) && m.samples_named("tenantwatch_target_connections").count() > 0
        })
        .await;

    pg.stop().expect("stop");
    let m = daemon
        .metrics_when("the target down", |m| up(m, "main") == Some(0.0))
        .await;
    assert_eq!(tables(&m), None, "a down target's tenant figures stay");
    assert_eq!(m.samples_named("tenantwatch_target_connections").count(), 0);
    assert!(
        m.value("tenantwatch_target_max_connections", &[("target", "main")])
            .is_some()
    );

    pg.start().expect("start");
    daemon
        .metrics_when("the tenant's tables again", |m| tables(m) == Some(1.0))
        .await;
    daemon.stop().await;
}

/// A real `pg_dump` of a tenant's schema, run as the tenant's own role and
/// stuck behind a migration's lock for longer than `long_query` allows: with
/// `[[tenants.exclude]]` naming pg_dump it counts as maintenance and raises
/// no flag for the tenant, while the same wait in the tenant's application
/// session would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_of_a_tenant_schema_raises_no_flag() {
    let (pg, _admin) = cluster_with_app_database().await;
    let app = connect(&pg.dsn("app")).await;
    app.batch_execute(
        "CREATE ROLE app_acme LOGIN;
         CREATE SCHEMA tenant_acme AUTHORIZATION app_acme;
         CREATE TABLE tenant_acme.orders (id int PRIMARY KEY);
         ALTER TABLE tenant_acme.orders OWNER TO app_acme;",
    )
    .await
    .unwrap();
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(fast_target("main", pg.dsn("app")));
        c.tenants.rules = vec![rule("role", "^app_(?P<tenant>.+)$")];
        c.tenants.exclude = vec![tenantwatch::config::ExcludeSettings {
            source: tenantwatch::attribution::RuleSource::ApplicationName,
            pattern: "^pg_dump$".into(),
        }];
        c.detect.interval = std::time::Duration::from_millis(200);
        {
            let rule = c
                .detect
                .rule_mut(tenantwatch::detect::RuleName::parse("long_query").expect("a rule"));
            rule.threshold = 1.0;
        }
    })
    .await;

    // A migration holds the table (superuser, attributed to nobody) ...
    app.batch_execute("BEGIN; LOCK TABLE tenant_acme.orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // ... and pg_dump, as the tenant's role, waits for it.
    // Beside initdb, else on PATH (Debian's wrapper picks the server's version).
    let pg_dump = tenantwatch::demo::cluster::find_bin_dir()
        .map(|dir| dir.join("pg_dump"))
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "pg_dump".into());
    let mut dump = std::process::Command::new(&pg_dump)
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string()])
        .args([
            "-U",
            "app_acme",
            "-n",
            "tenant_acme",
            "-f",
            "/dev/null",
            "app",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (install postgresql-client)", pg_dump.display()));
    let m = daemon
        .metrics_when("pg_dump counted as maintenance", |m| {
            m.value(
                "tenantwatch_target_maintenance_connections",
                &[("target", "main")],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(
        m.value(
            "tenantwatch_tenant_connections",
            &[("target", "main"), ("tenant", "acme"), ("state", "active")]
        ),
        None,
        "pg_dump's session is charged to the tenant"
    );
    // Well past long_query's threshold: no flag for acme.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flags = daemon.get("/api/v1/flags").await.json();
    assert_eq!(flags["flags"], serde_json::json!([]), "{flags}");

    // The same wait in the tenant's application session is its own.
    let tenant_session = connect(&format!("{} user=app_acme", pg.dsn("app"))).await;
    let waiting = tokio::spawn(async move {
        tenant_session
            .batch_execute("SELECT count(*) FROM tenant_acme.orders")
            .await
    });
    support::eventually(
        "a long_query flag for acme",
        Duration::from_secs(15),
        || async {
            let flags = daemon.get("/api/v1/flags").await.json();
            flags["flags"]
                .as_array()?
                .iter()
                .any(|f| f["tenant"] == "acme" && f["reason"] == "long_query")
                .then_some(())
        },
    )
    .await;
    app.batch_execute("ROLLBACK").await.unwrap();
    waiting.await.unwrap().unwrap();
    let status = dump.wait().unwrap();
    assert!(status.success(), "pg_dump failed");
    daemon.stop().await;
}

/// A real streaming standby (`pg_basebackup -R` into a second throwaway
/// cluster): the primary reports its replay lag, in bytes while replay is
/// paused and back to 0 once it resumes; the standby says it is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_standby_reports_its_lag_and_itself() {
    let (primary, _admin) = cluster_with_app_database().await;
    let source = primary.primary();
    let standby = tokio::task::spawn_blocking(move || source.start_standby("replica1"))
        .await
        .unwrap()
        .expect("a streaming standby (pg_basebackup) starts");
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(fast_target("main", primary.dsn("app")));
        c.targets.push(fast_target("standby", standby.dsn("app")));
    })
    .await;
    let m = daemon
        .metrics_when("the standby streaming, both targets polled", |m| {
            m.value(
                "tenantwatch_target_replication_lag_bytes",
                &[("target", "main"), ("replica", "replica1")],
            )
            .is_some()
                && m.value("tenantwatch_target_in_recovery", &[("target", "standby")]) == Some(1.0)
        })
        .await;
    assert_eq!(
        m.value("tenantwatch_target_in_recovery", &[("target", "main")]),
        Some(0.0)
    );
    // A standby has no standbys of its own.
    assert_eq!(
        m.samples_named("tenantwatch_target_replication_lag_bytes")
            .filter(|s| s.labels["target"] == "standby")
            .count(),
        0
    );

    // Replay paused, the primary writes: the standby falls behind.
    let on_standby = connect(&standby.dsn("postgres")).await;
    on_standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let app = connect(&primary.dsn("app")).await;
    app.batch_execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let m = daemon
        .metrics_when("the standby's lag in bytes", |m| {
            m.value(
                "tenantwatch_target_replication_lag_bytes",
                &[("target", "main"), ("replica", "replica1")],
            )
            .is_some_and(|bytes| bytes > 1_000_000.0)
        })
        .await;
    let targets = daemon.get("/api/v1/targets").await.json();
    let main = &targets["targets"][0];
    assert_eq!(main["in_recovery"], false);
    assert_eq!(main["replicas"][0]["name"], "replica1");
    assert!(main["replicas"][0]["lag_bytes"].as_f64().unwrap() > 0.0);
    drop(m);

    on_standby
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    daemon
        .metrics_when("the standby caught up", |m| {
            m.value(
                "tenantwatch_target_replication_lag_bytes",
                &[("target", "main"), ("replica", "replica1")],
            ) == Some(0.0)
        })
        .await;
    daemon.stop().await;
}

/// `pg_stat_statements` preloaded, one role per tenant, no events at all:
/// the tenant running heavy statements is flagged `db_time_hog` from the
/// server-side figures, its detail lists its top statements, and a reset of
/// the view in the middle leaves every counter monotonic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_hog_is_flagged_from_pg_stat_statements() {
    let (pg, _admin) = cluster_with_pg_stat_statements().await;
    let app = connect(&pg.dsn("app")).await;
    for tenant in ["heavy", "a", "b", "c"] {
        app.batch_execute(&format!("CREATE ROLE app_{tenant} LOGIN"))
            .await
            .unwrap();
    }
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(TargetSettings {
            statements_text: true,
            ..fast_target("main", pg.dsn("app"))
        });
        c.tenants.rules = vec![rule("role", "^app_(?P<tenant>.+)$")];
        c.detect.interval = std::time::Duration::from_millis(200);
        c.ingest.share_window = std::time::Duration::from_secs(12);
        {
            let rule = c
                .detect
                .rule_mut(tenantwatch::detect::RuleName::parse("db_time_hog").expect("a rule"));
            rule.for_ = std::time::Duration::from_secs(0);
        }
    })
    .await;

    // Three light tenants and a heavy one, all through their own roles.
    let workload = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for (tenant, sql) in [
        ("heavy", "SELECT pg_sleep(0.2)"),
        ("a", "SELECT 1"),
        ("b", "SELECT 2"),
        ("c", "SELECT 3"),
    ] {
        let client = connect(&format!("{} user=app_{tenant}", pg.dsn("app"))).await;
        let stop = workload.clone();
        workers.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                client.batch_execute(sql).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let calls = |m: &Exposition, tenant: &str| {
        m.value(
            "tenantwatch_tenant_statement_calls_total",
            &[("target", "main"), ("tenant", tenant)],
        )
    };
    let seconds = |m: &Exposition, tenant: &str| {
        m.value(
            "tenantwatch_tenant_statement_time_seconds_total",
            &[("target", "main"), ("tenant", tenant)],
        )
    };
    daemon
        .metrics_when("statement figures for every tenant", |m| {
            ["heavy", "a", "b", "c"]
                .iter()
                .all(|t| calls(m, t).is_some_and(|c| c > 0.0))
        })
        .await;
    support::eventually(
        "a db_time_hog flag for heavy",
        Duration::from_secs(20),
        || async {
            let flags = daemon.get("/api/v1/flags").await.json();
            let flags = flags["flags"].as_array()?.clone();
            let hogs: Vec<&str> = flags
                .iter()
                .filter(|f| f["reason"] == "db_time_hog")
                .filter_map(|f| f["tenant"].as_str())
                .collect();
            if hogs != ["heavy"] {
                // Shown only if the wait times out: what was flagged instead.
                eprintln!("not yet: flags {flags:?}");
            }
            (hogs == ["heavy"]).then_some(())
        },
    )
    .await;
    let detail = daemon.get("/api/v1/tenants/heavy").await;
    assert_eq!(detail.status, 200, "{}", detail.text());
    let statements = &detail.json()["targets"][0]["statements"];
    let top = &statements["top"][0];
    assert!(top["calls"].as_u64().unwrap() >= 1, "{statements}");
    assert!(
        top["mean_seconds"].as_f64().unwrap() >= 0.19,
        "{statements}"
    );
    assert!(
        top["query"].as_str().unwrap().contains("pg_sleep"),
        "{statements}"
    );

    // A reset of the view in the middle: every counter keeps growing.
    let mut before = Vec::new();
    let m = daemon.metrics().await;
    for tenant in ["heavy", "a", "b", "c"] {
        before.push((calls(&m, tenant).unwrap(), seconds(&m, tenant).unwrap()));
    }
    app.batch_execute("SELECT pg_stat_statements_reset()")
        .await
        .unwrap();
    let mut samples = Vec::new();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push(daemon.metrics().await);
    }
    for (i, tenant) in ["heavy", "a", "b", "c"].iter().enumerate() {
        let mut last = before[i];
        for m in &samples {
            let now = (calls(m, tenant).unwrap(), seconds(m, tenant).unwrap());
            assert!(
                now.0 >= last.0 && now.1 >= last.1,
                "{tenant}: {now:?} after {last:?}"
            );
            last = now;
        }
        assert!(
            last.0 > before[i].0,
            "{tenant} stopped counting after the reset"
        );
    }
    workload.cancel();
    for worker in workers {
        worker.await.unwrap();
    }
    daemon.stop().await;
}

/// Without the extension: one `extension_missing` error, no retry storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pg_stat_statements_is_counted_once() {
    let (pg, _admin) = cluster_with_app_database().await;
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(fast_target("main", pg.dsn("app")));
    })
    .await;
    let errors = |m: &Exposition| {
        m.value(
            "tenantwatch_poll_errors_total",
            &[
                ("target", "main"),
                ("collector", "statements"),
                ("error", "extension_missing"),
            ],
        )
    };
    daemon
        .metrics_when("the missing extension counted", |m| errors(m) == Some(1.0))
        .await;
    // Many polls later (every 500 ms), still once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = daemon.metrics().await;
    assert_eq!(errors(&m), Some(1.0));
    assert!(
        m.value("tenantwatch_polls_total", &[("target", "main")])
            .is_some_and(|polls| polls >= 5.0)
    );
    assert_eq!(up(&m, "main"), Some(1.0));
    daemon.stop().await;
}

/// A migration that added a table to every tenant schema but one: that
/// tenant drifts and its detail names the table; a tenant of the expected
/// file with no schema on a target of a group is missing, and a SIGHUP-style
/// reload of the file updates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_and_missing_tenants_are_caught() {
    let (pg, _admin) = cluster_with_app_database().await;
    let app = connect(&pg.dsn("app")).await;
    for tenant in ["a", "b", "c", "d"] {
        app.batch_execute(&format!(
            "CREATE SCHEMA tenant_{tenant}; CREATE TABLE tenant_{tenant}.orders (id int)"
        ))
        .await
        .unwrap();
        // The migration that forgot tenant d.
        if tenant != "d" {
            app.batch_execute(&format!("CREATE TABLE tenant_{tenant}.invoices (id int)"))
                .await
                .unwrap();
        }
    }
    let dir = std::env::temp_dir().join(format!("tw-expected-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let expected = dir.join("tenants.txt");
    std::fs::write(&expected, "# every customer\na\nb\nc\nd\nnewco\n").unwrap();
    let configure = |c: &mut tenantwatch::config::Settings| {
        c.targets.push(TargetSettings {
            group: Some("payroll".into()),
            ..fast_target("main", pg.dsn("app"))
        });
        c.tenants.rules = vec![rule("schema", "^tenant_(?P<tenant>.+)$")];
        c.tenants.expected_file = Some(expected.clone());
    };
    let daemon = TestDaemon::start_with(configure).await;
    let drift = |m: &Exposition, tenant: &str| {
        m.value(
            "tenantwatch_tenant_schema_drift",
            &[("target", "main"), ("tenant", tenant)],
        )
    };
    let m = daemon
        .metrics_when("drift worked out", |m| drift(m, "d").is_some())
        .await;
    assert_eq!(drift(&m, "d"), Some(1.0));
    for tenant in ["a", "b", "c"] {
        assert_eq!(drift(&m, tenant), Some(0.0), "{tenant}");
    }
    let detail = daemon.get("/api/v1/tenants/d").await.json();
    let report = &detail["targets"][0]["schema_drift"];
    assert_eq!(report["drifts"], true, "{detail}");
    assert_eq!(report["missing_tables"], serde_json::json!(["invoices"]));
    assert_eq!(report["extra_tables"], serde_json::json!([]));

    // newco has no schema anywhere on the payroll target.
    assert_eq!(
        m.value(
            "tenantwatch_tenant_missing",
            &[("target", "main"), ("tenant", "newco")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.samples_named("tenantwatch_tenant_missing").count(),
        1,
        "only newco is missing"
    );
    let targets = daemon.get("/api/v1/targets").await.json();
    assert_eq!(targets["targets"][0]["group"], "payroll");
    assert_eq!(
        targets["targets"][0]["missing_tenants"],
        serde_json::json!(["newco"])
    );

    // The file changes and is re-read on reload: newco left, e is expected.
    std::fs::write(&expected, "a\nb\nc\nd\ne\n").unwrap();
    let mut file = support::file_config();
    configure(&mut file);
    let reloaded = tenantwatch::Config::try_from(file).unwrap();
    daemon.daemon.as_ref().unwrap().reload(&reloaded);
    let m = daemon.metrics().await;
    let missing: Vec<&str> = m
        .samples_named("tenantwatch_tenant_missing")
        .map(|s| s.labels["tenant"].as_str())
        .collect();
    assert_eq!(missing, ["e"]);
    daemon.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// 300 tenant databases on one instance, `databases = ["*"]`, the default
/// `max_sessions` (2): tenantwatch never holds more than two sessions
/// (sampled from `pg_stat_activity` throughout), every tenant's size and
/// statistics appear within one detail cycle, and a new tenant session
/// shows within a poll interval or two while the detail cycle runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_tenant_databases_on_two_sessions() {
    const DATABASES: usize = 300;
    let pg = cluster().await;
    let admin = connect(&pg.dsn("postgres")).await;
    // One template with a table, copied per tenant: cheap to make.
    admin
        .batch_execute("CREATE DATABASE tenant_template")
        .await
        .unwrap();
    let template = connect(&pg.dsn("tenant_template")).await;
    template
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    drop(template);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..DATABASES {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE tenant_{i} TEMPLATE tenant_template"
            ))
            .await
            .unwrap();
    }
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(TargetSettings {
            databases: vec!["*".into()],
            max_databases: 1000,
            ..fast_target("main", pg.dsn("postgres"))
        });
        c.tenants.rules = vec![rule("database", "^tenant_(?P<tenant>[0-9]+)$")];
    })
    .await;

    // Sample tenantwatch's sessions all along.
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let check = connect(&pg.dsn("postgres")).await;
        let stop = sampling.clone();
        tokio::spawn(async move {
            let (mut most, mut samples) = (0i64, 0u32);
            while !stop.is_cancelled() {
                let ours: i64 = check
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenantwatch'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                most = most.max(ours);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (most, samples)
        })
    };

    // After the first full cycle, every tenant database has its figures.
    let cycle = support::eventually("a full detail cycle", Duration::from_secs(120), || async {
        let m = daemon.metrics().await;
        m.value(
            "tenantwatch_target_detail_cycle_seconds",
            &[("target", "main")],
        )
        .map(|cycle| (cycle, m))
    })
    .await;
    let (cycle_seconds, m) = cycle;
    for i in 0..DATABASES {
        let tenant = i.to_string();
        for name in [
            "tenantwatch_tenant_schema_size_bytes",
            "tenantwatch_tenant_tables",
        ] {
            assert!(
                tenant_value(&m, name, "main", &tenant).is_some(),
                "{name} of tenant {tenant} after one cycle"
            );
        }
    }
    assert_eq!(
        m.value(
            "tenantwatch_target_watched_databases",
            &[("target", "main")]
        ),
        Some(DATABASES as f64 + 2.0),
        "the tenant databases, their template and postgres"
    );

    // pg_database_size of every database, from the cluster session in
    // batches of 100 per poll.
    daemon
        .metrics_when("every database's size", |m| {
            m.samples_named("tenantwatch_database_size_bytes").count() >= DATABASES
        })
        .await;

    // A tenant's new session shows while the detail cycle goes round.
    let opened = std::time::Instant::now();
    let session = connect(&pg.dsn("tenant_7")).await;
    let m = daemon
        .metrics_when("tenant 7's session", |m| {
            m.value(
                "tenantwatch_tenant_connections",
                &[("target", "main"), ("tenant", "7"), ("state", "idle")],
            ) == Some(1.0)
        })
        .await;
    let shown_after = opened.elapsed().as_secs_f64();
    assert!(
        shown_after < cycle_seconds.max(2.0),
        "the session showed after {shown_after:.1} s, a detail cycle takes {cycle_seconds:.1} s"
    );
    // tenantwatch's own sessions count in the target's connections.
    assert!(
        m.value(
            "tenantwatch_target_connections",
            &[("target", "main"), ("state", "tenantwatch")]
        )
        .is_some_and(|n| (1.0..=2.0).contains(&n))
    );
    drop(session);

    sampling.cancel();
    let (most, samples) = sampler.await.unwrap();
    assert!(samples > 20, "{samples} samples");
    assert!(most <= 2, "tenantwatch held {most} sessions");
    daemon.stop().await;
}

/// Statistics that restart from zero on the server (a crash of the
/// primary, a restarted standby, `pg_stat_reset()`) never make one of
/// tenantwatch's counters go down: the soak (issue 26) saw Prometheus count
/// a reset of every `tenantwatch_tenant_{tuples,scans,blocks}_total` and
/// `tenantwatch_database_*_total` series at each `kill -9` of the primary.
/// After the reset a counter grows by what the server counts anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statistics_reset_on_the_server_never_resets_a_counter() {
    let (pg, _admin) = cluster_with_app_database().await;
    let app = connect(&pg.dsn("app")).await;
    app.batch_execute(
        "CREATE SCHEMA tenant_acme; CREATE TABLE tenant_acme.t (id int);
         INSERT INTO tenant_acme.t SELECT generate_series(1, 100);
         SELECT pg_stat_force_next_flush()",
    )
    .await
    .unwrap();
    let daemon =
        TestDaemon::start_with(|c| c.targets.push(fast_target("main", pg.dsn("app")))).await;
    let inserted = |m: &Exposition| {
        m.value(
            "tenantwatch_tenant_tuples_total",
            &[("target", "main"), ("tenant", "acme"), ("op", "inserted")],
        )
    };
    let commits = |m: &Exposition| {
        m.value_or_zero(
            "tenantwatch_database_commits_total",
            &[("target", "main"), ("database", "app")],
        )
    };
    let polls = |m: &Exposition| m.value_or_zero("tenantwatch_polls_total", &[("target", "main")]);
    let before = daemon
        .metrics_when("the inserts counted", |m| {
            inserted(m) == Some(100.0) && commits(m) > 0.0
        })
        .await;
    let commits_before = commits(&before);

    app.batch_execute("SELECT pg_stat_reset(); SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let polls_at_reset = polls(&daemon.metrics().await);
    let after = daemon
        .metrics_when("polls after the reset", |m| {
            polls(m) >= polls_at_reset + 6.0
        })
        .await;
    assert_eq!(inserted(&after), Some(100.0), "the reset showed as a reset");
    assert!(
        commits(&after) >= commits_before,
        "commits went from {commits_before} to {}",
        commits(&after)
    );

    app.batch_execute(
        "INSERT INTO tenant_acme.t SELECT generate_series(1, 50); SELECT pg_stat_force_next_flush()",
    )
    .await
    .unwrap();
    daemon
        .metrics_when("the new inserts added to the old", |m| {
            inserted(m) == Some(150.0)
        })
        .await;
    daemon.stop().await;
}
