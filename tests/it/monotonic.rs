//! Series a real Prometheus can trust through what happens to a tenant's
//! tables and to the daemon: per-tenant schema counters never go down when
//! a busy table is dropped or statistics are reset (`resets()` is 0), and a
//! restarted daemon exports the sizes it exported before instead of the
//! `relpages` estimate. Needs `prometheus` (scripts/test.sh installs it).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tenantwatch::config::TargetSettings;
use tenantwatch::demo::cluster::{Cluster, free_port};

use crate::support::{self, Exposition, TestDaemon, cluster, connect, eventually, rule};

/// A Prometheus scraping one address every second, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn scraping(pg: &Cluster, tag: &str, target: SocketAddr) -> Prometheus {
        let dir = pg.dir().join(format!("prometheus-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n\
                 scrape_configs:\n  - job_name: tenantwatch\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .args([
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus is needed: apt-get install prometheus (scripts/test.sh does it): {e}")
            });
        Prometheus {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }

    /// The values of an instant query's vector result (empty until
    /// Prometheus answers).
    async fn query(&self, expr: &str) -> Vec<f64> {
        let path = format!("/api/v1/query?query={}", tenantwatch::api::url_encode(expr));
        let Ok(reply) = support::try_http(self.addr, "GET", &path, &[], Vec::new()).await else {
            return Vec::new();
        };
        let Ok(body) = serde_json::from_slice::<Value>(&reply.body) else {
            return Vec::new();
        };
        body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["value"][1].as_str()?.parse().ok())
            .collect()
    }

    /// Waits until `expr` has exactly the one value `want`: Prometheus has
    /// scraped what the daemon shows.
    async fn scraped(&self, expr: &str, want: f64) {
        eventually(
            &format!("Prometheus to read {expr} = {want}"),
            Duration::from_secs(30),
            || async { (self.query(expr).await == [want]).then_some(()) },
        )
        .await;
    }
}

fn fast_target(dsn: String) -> TargetSettings {
    TargetSettings {
        poll_interval: Duration::from_millis(500),
        stats_interval: Duration::from_millis(500),
        size_interval: Duration::from_millis(500),
        statement_timeout: Duration::from_secs(2),
        lock_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(2),
        schema_detail: tenantwatch::store::SchemaDetail::Full,
        ..TargetSettings::new("main", dsn)
    }
}

async fn app_cluster() -> (Cluster, tokio_postgres::Client) {
    let pg = cluster().await;
    connect(&pg.dsn("postgres"))
        .await
        .batch_execute("CREATE DATABASE app")
        .await
        .unwrap();
    let app = connect(&pg.dsn("app")).await;
    (pg, app)
}

fn inserted(m: &Exposition) -> Option<f64> {
    m.value(
        "tenantwatch_tenant_tuples_total",
        &[("target", "main"), ("tenant", "a"), ("op", "inserted")],
    )
}

/// Runs `sql` and makes its statistics visible at once (they otherwise
/// reach the shared statistics up to a second later).
async fn run_flushed(app: &tokio_postgres::Client, sql: &str) {
    app.batch_execute(sql).await.unwrap();
    app.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_counters_never_go_down_through_a_drop_and_resets() {
    let (pg, app) = app_cluster().await;
    run_flushed(
        &app,
        "CREATE SCHEMA tenant_a;
         CREATE TABLE tenant_a.busy (id int PRIMARY KEY);
         CREATE TABLE tenant_a.steady (id int);
         INSERT INTO tenant_a.busy SELECT generate_series(1, 5000);
         INSERT INTO tenant_a.steady SELECT generate_series(1, 100);
         SELECT count(*) FROM tenant_a.busy WHERE id = 7",
    )
    .await;
    let daemon = TestDaemon::start_with(|c| {
        c.targets.push(fast_target(pg.dsn("app")));
        c.tenants.rules = vec![rule("schema", "^tenant_(?P<tenant>.+)$")];
    })
    .await;
    let prometheus = Prometheus::scraping(&pg, "counters", daemon.http);
    let series = r#"tenantwatch_tenant_tuples_total{tenant="a",op="inserted"}"#;
    // Each step: the daemon shows the figure, then Prometheus has read it.
    let step = |what: &'static str, want: f64| {
        let (daemon, prometheus) = (&daemon, &prometheus);
        async move {
            daemon
                .metrics_when(what, |m| inserted(m) == Some(want))
                .await;
            prometheus.scraped(series, want).await;
        }
    };
    step("the first figures", 5100.0).await;

    // The busy table goes while the other goes on: its 5,000 inserts stay.
    run_flushed(
        &app,
        "DROP TABLE tenant_a.busy; INSERT INTO tenant_a.steady SELECT generate_series(1, 10)",
    )
    .await;
    step("the drop", 5110.0).await;

    // Every counter of the database starts again from zero.
    run_flushed(
        &app,
        "SELECT pg_stat_reset(); INSERT INTO tenant_a.steady SELECT generate_series(1, 20)",
    )
    .await;
    step("pg_stat_reset()", 5130.0).await;

    // One table's counters start again.
    run_flushed(
        &app,
        "SELECT pg_stat_reset_single_table_counters('tenant_a.steady'::regclass);
         INSERT INTO tenant_a.steady SELECT generate_series(1, 5)",
    )
    .await;
    step("a single table's reset", 5135.0).await;

    // Prometheus saw no counter reset in any of the tenant's counters.
    let resets = prometheus
        .query(r#"resets({__name__=~"tenantwatch_tenant_(tuples|scans|blocks|maintenance)_total",tenant="a"}[5m])"#)
        .await;
    assert!(resets.len() >= 10, "the tenant's counters: {resets:?}");
    assert!(
        resets.iter().all(|r| *r == 0.0),
        "counter resets seen by Prometheus: {resets:?}"
    );
}

/// The size of `schema`'s tables as the exact size cycle counts them.
async fn exact_size(app: &tokio_postgres::Client, schema: &str) -> f64 {
    app.query_one(
        "SELECT sum(pg_total_relation_size(c.oid))::int8 FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind = 'r'",
        &[&schema],
    )
    .await
    .unwrap()
    .get::<_, i64>(0) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_exports_the_sizes_it_exported_before() {
    let (pg, app) = app_cluster().await;
    // Never analyzed: relpages says 0 while the table holds 10,000 rows.
    app.batch_execute(
        "CREATE SCHEMA tenant_a;
         CREATE TABLE tenant_a.t (id int PRIMARY KEY, pad text) WITH (autovacuum_enabled = false);
         INSERT INTO tenant_a.t SELECT i, repeat('x', 100) FROM generate_series(1, 10000) i",
    )
    .await
    .unwrap();
    let exact = exact_size(&app, "tenant_a").await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let state_file = pg.dir().join("tenantwatch-state.json");
    let start = || {
        let (dsn, state_file) = (pg.dsn("app"), state_file.clone());
        TestDaemon::start_with(move |c| {
            c.server.listen = listen;
            c.targets.push(fast_target(dsn));
            c.tenants.rules = vec![rule("schema", "^tenant_(?P<tenant>.+)$")];
            c.state.file = Some(state_file);
        })
    };
    let size = |m: &Exposition| {
        m.value(
            "tenantwatch_tenant_schema_size_bytes",
            &[("target", "main"), ("tenant", "a")],
        )
    };
    let daemon = start().await;
    let prometheus = Prometheus::scraping(&pg, "sizes", listen);
    daemon
        .metrics_when("the exact size", |m| size(m) == Some(exact))
        .await;
    let series = r#"tenantwatch_tenant_schema_size_bytes{tenant="a"}"#;
    prometheus.scraped(series, exact).await;
    daemon.stop().await;

    // A REINDEX holds its index while the new daemon starts: every size
    // round fails on the lock, and no exact size is measured.
    let reindex = connect(&pg.dsn("app")).await;
    reindex
        .batch_execute("BEGIN; REINDEX INDEX tenant_a.t_pkey")
        .await
        .unwrap();
    let daemon = start().await;
    let restarted = daemon
        .metrics_when("the restarted daemon's size", |m| size(m).is_some())
        .await;
    assert_eq!(
        size(&restarted),
        Some(exact),
        "the size right after the restart"
    );
    // Several failed size rounds and scrapes later, still the same figure.
    daemon
        .metrics_when("a failed size round", |m| {
            m.value(
                "tenantwatch_poll_errors_total",
                &[
                    ("target", "main"),
                    ("collector", "sizes"),
                    ("error", "lock_timeout"),
                ],
            )
            .is_some_and(|errors| errors >= 2.0)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flat = prometheus
        .query(&format!(
            "max_over_time({series}[5m]) - min_over_time({series}[5m])"
        ))
        .await;
    assert_eq!(flat, [0.0], "the size stepped at the restart");
    assert_eq!(size(&daemon.metrics().await), Some(exact));
    reindex.batch_execute("COMMIT").await.unwrap();
}
