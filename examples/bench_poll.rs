//! Poll benchmark for `scripts/bench-poll.sh`: a throwaway PostgreSQL with
//! SCHEMAS tenant schemas of 5 tables each, watched side by side by
//! tenantwatch and by prometheus-postgres-exporter with its example
//! queries.yaml (per-table statistics, the way users get per-schema numbers
//! today). The database time each spends per minute is read from
//! `pg_stat_statements` (preloaded in the cluster), each tool running alone.
//!
//! ```text
//! bench_poll TENANTWATCH_BIN EXPORTER_BIN QUERIES_YAML SCHEMAS
//! ```

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenantwatch::collect::queries::{ACTIVITY_SQL, SCHEMA_STATS_SQL};
use tenantwatch::demo::cluster::{Cluster, free_port};
use tokio_postgres::NoTls;

mod common;
use common::{Killed, get, median, rss_mib, scrape};

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Seconds of the steady stretch over which tenantwatch's database time is
/// read (three rounds of schema statistics at the default 60 s).
const STEADY_SECONDS: u64 = 180;
/// The size round's interval in the bench: 60 s, five times the default's
/// rate, so that the steady stretch holds three rounds.
const SIZE_INTERVAL_SECONDS: u64 = 60;
/// Share of the schemas that get a write every 20 s of the steady stretch.
const WRITTEN_SHARE: f64 = 0.1;

async fn reset_statements(client: &tokio_postgres::Client) {
    client
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await
        .expect("reset pg_stat_statements");
}

/// Execution and planning seconds of every statement since the last reset,
/// the benchmark's own reads of pg_stat_statements left out.
async fn statement_seconds(client: &tokio_postgres::Client) -> f64 {
    client
        .query_one(
            "SELECT COALESCE(sum(total_exec_time + total_plan_time), 0)::float8 / 1000
               FROM pg_stat_statements
              WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%bench-writes%'",
            &[],
        )
        .await
        .expect("read pg_stat_statements")
        .get(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tenantwatch, exporter, queries, schemas] = args.as_slice() else {
        eprintln!("usage: bench_poll TENANTWATCH_BIN EXPORTER_BIN QUERIES_YAML SCHEMAS");
        std::process::exit(2);
    };
    let schemas: usize = schemas.parse().expect("SCHEMAS is a number");

    let cluster = Cluster::start_new().expect("start PostgreSQL");
    cluster
        .configure("shared_preload_libraries = 'pg_stat_statements'")
        .expect("preload pg_stat_statements");
    let (admin, connection) = tokio_postgres::connect(&cluster.dsn("postgres"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    admin
        .batch_execute("CREATE DATABASE app")
        .await
        .expect("create database");
    let (app, connection) = tokio_postgres::connect(&cluster.dsn("app"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    app.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .expect("pg_stat_statements");

    let started = Instant::now();
    let batch = 100;
    for first in (0..schemas).step_by(batch) {
        let last = (first + batch).min(schemas) - 1;
        app.batch_execute(&format!(
            "DO $$ BEGIN FOR i IN {first}..{last} LOOP
               EXECUTE format('CREATE SCHEMA tenant_t%s', i);
               EXECUTE format('CREATE TABLE tenant_t%s.users (id bigint PRIMARY KEY, name text)', i);
               EXECUTE format('CREATE TABLE tenant_t%s.orders (id bigint PRIMARY KEY, user_id bigint, total numeric)', i);
               EXECUTE format('CREATE TABLE tenant_t%s.items (id bigint PRIMARY KEY, order_id bigint, sku text)', i);
               EXECUTE format('CREATE TABLE tenant_t%s.events (id bigint PRIMARY KEY, at timestamptz, payload text)', i);
               EXECUTE format('CREATE TABLE tenant_t%s.settings (key text PRIMARY KEY, value text)', i);
               EXECUTE format('INSERT INTO tenant_t%s.users VALUES (1, ''a''), (2, ''b'')', i);
             END LOOP; END $$"
        ))
        .await
        .expect("create schemas");
    }
    app.batch_execute("ANALYZE").await.expect("analyze");
    // Let autovacuum's reaction to 50,000 new tables pass before measuring.
    tokio::time::sleep(Duration::from_secs(20)).await;
    println!(
        "created {schemas} schemas x 5 tables in {:.0}s",
        started.elapsed().as_secs_f64()
    );

    // Database-side time of tenantwatch's per-poll queries.
    for (name, sql) in [
        ("schema_stats", SCHEMA_STATS_SQL),
        ("activity", ACTIVITY_SQL),
    ] {
        let mut times = Vec::new();
        // The activity query takes our own backends' pids: none here.
        for _ in 0..5 {
            let rows = app
                .query(&format!("EXPLAIN (ANALYZE, TIMING OFF) {sql}"), &[])
                .await
                .expect("explain");
            let line: String = rows.last().map(|r| r.get(0)).unwrap_or_default();
            let ms: f64 = line
                .split_whitespace()
                .find_map(|w| w.parse().ok())
                .unwrap_or(f64::NAN);
            times.push(ms);
        }
        println!(
            "database-side time of the {name} query: {:.0} ms (median of 5, EXPLAIN ANALYZE)",
            median(times)
        );
    }

    // tenantwatch.
    let http = free_port();
    let config = cluster.dir().join("tenantwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{http}\"\n[ingest]\nudp_listen = \"\"\n\
             [[targets]]\nname = \"bench\"\ndsn = \"{}\"\nstatement_timeout = \"30s\"\n\
             size_interval = \"{SIZE_INTERVAL_SECONDS}s\"\n",
            cluster.dsn("app")
        ),
    )
    .expect("write config");
    // Everything the daemon runs from its start (the first round of schema
    // statistics and of sizes included), then a steady stretch.
    reset_statements(&app).await;
    let daemon = Killed(
        Command::new(tenantwatch)
            .args(["run", "--config"])
            .arg(&config)
            .env("TENANTWATCH_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start tenantwatch"),
    );
    let url = format!("http://127.0.0.1:{http}/metrics");
    let deadline = Instant::now() + Duration::from_secs(120);
    let text = loop {
        if let Some(text) = get(&url)
            && text.contains("collector=\"schema_stats\"")
            && text.contains("tenantwatch_tenant_live_tuples{")
        {
            break text;
        }
        assert!(Instant::now() < deadline, "tenantwatch did not poll");
        std::thread::sleep(Duration::from_millis(500));
    };
    for collector in ["connect", "activity", "schema_stats", "database", "sizes"] {
        if let Some(seconds) = metric(
            &text,
            &format!(
                "tenantwatch_poll_duration_seconds{{target=\"bench\",collector=\"{collector}\"}}"
            ),
        ) {
            println!("tenantwatch {collector} poll: {:.0} ms", seconds * 1000.0);
        }
    }
    // Until the first detail cycle (schema statistics and the first size
    // round of every relation) is over.
    let deadline = Instant::now() + Duration::from_secs(600);
    while get(&url).is_none_or(|t| !t.contains("tenantwatch_target_detail_cycle_seconds{")) {
        assert!(Instant::now() < deadline, "no detail cycle");
        std::thread::sleep(Duration::from_millis(500));
    }
    let first_round = statement_seconds(&app).await;
    reset_statements(&app).await;
    let steady = Instant::now();
    // Tenants at work: a row into one table of WRITTEN_SHARE of the
    // schemas every 20 s, so each size round finds that many changed.
    let writer = {
        let (writes, connection) = tokio_postgres::connect(&cluster.dsn("app"), NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let written = (schemas as f64 * WRITTEN_SHARE) as usize;
        tokio::spawn(async move {
            for round in 0i64.. {
                writes
                    .batch_execute(&format!(
                        "/* bench-writes */ DO $$ BEGIN FOR i IN 0..{} LOOP
                           EXECUTE format('INSERT INTO tenant_t%s.events VALUES ({round}, now(), ''x'')', i);
                         END LOOP; END $$",
                        written.max(1) - 1
                    ))
                    .await
                    .expect("tenant writes");
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(STEADY_SECONDS)).await;
    writer.abort();
    let steady_seconds = statement_seconds(&app).await;
    let steady_minutes = steady.elapsed().as_secs_f64() / 60.0;
    // The steady stretch ran a size round every SIZE_INTERVAL_SECONDS (the
    // default is 5 minutes: an upper bound); every relation is measured
    // again once an hour whatever changed, as the first round did.
    let tw_per_minute = steady_seconds / steady_minutes + first_round / 60.0;
    println!(
        "tenantwatch database time: first round (statistics + every relation's size) {:.2} s, \
         then {:.2} s over {:.1} min (a size round every {SIZE_INTERVAL_SECONDS} s, \
         {:.0}% of the schemas written every 20 s)",
        first_round,
        steady_seconds,
        steady_minutes,
        WRITTEN_SHARE * 100.0
    );
    let (tw_seconds, tw_bytes, tw_samples) = scrape(&url, 5);
    // The last size round: the relations written since the one before.
    let text = get(&url).unwrap_or_default();
    if let Some(seconds) = metric(
        &text,
        "tenantwatch_poll_duration_seconds{target=\"bench\",collector=\"sizes\"}",
    ) {
        println!(
            "tenantwatch last size round (the relations written since the one before): {:.0} ms",
            seconds * 1000.0
        );
    }
    let tw_rss = rss_mib(daemon.0.id(), "VmRSS:");
    let tw_hwm = rss_mib(daemon.0.id(), "VmHWM:");
    drop(daemon);

    // prometheus-postgres-exporter 0.11 with its example queries.
    let exporter_port = free_port();
    let exporter = Killed(
        Command::new(exporter)
            .arg(format!("--extend.query-path={queries}"))
            .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "postgresql://postgres@127.0.0.1:{}/app?sslmode=disable",
                    cluster.port()
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-postgres-exporter"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let exporter_url = format!("http://127.0.0.1:{exporter_port}/metrics");
    // Scraped every 15 s for a minute, as a Prometheus would.
    reset_statements(&app).await;
    let mut pe_times = Vec::new();
    let (mut pe_bytes, mut pe_samples) = (0, 0);
    for _ in 0..4 {
        let scraped = Instant::now();
        let (seconds, bytes, samples) = scrape(&exporter_url, 1);
        pe_times.push(seconds);
        (pe_bytes, pe_samples) = (bytes, samples);
        let rest = Duration::from_secs(15).saturating_sub(scraped.elapsed());
        tokio::time::sleep(rest).await;
    }
    let pe_seconds = median(pe_times);
    let pe_per_minute = statement_seconds(&app).await;
    let pe_rss = rss_mib(exporter.0.id(), "VmRSS:");
    let pe_hwm = rss_mib(exporter.0.id(), "VmHWM:");
    drop(exporter);

    println!();
    println!(
        "{:<28} {:>14} {:>14} {:>8}",
        "", "exporter", "tenantwatch", "ratio"
    );
    println!(
        "{:<28} {:>14.3} {:>14.3} {:>7.0}x",
        "scrape seconds (median)",
        pe_seconds,
        tw_seconds,
        pe_seconds / tw_seconds
    );
    println!(
        "{:<28} {:>14} {:>14} {:>7.0}x",
        "samples",
        pe_samples,
        tw_samples,
        pe_samples as f64 / tw_samples as f64
    );
    println!(
        "{:<28} {:>14.1} {:>14.1} {:>7.0}x",
        "exposition MiB",
        pe_bytes as f64 / 1048576.0,
        tw_bytes as f64 / 1048576.0,
        pe_bytes as f64 / tw_bytes as f64
    );
    println!(
        "{:<28} {:>14.2} {:>14.2} {:>7.1}x",
        "database seconds per minute",
        pe_per_minute,
        tw_per_minute,
        pe_per_minute / tw_per_minute
    );
    println!(
        "{:<28} {:>14.0} {:>14.0} {:>7.0}x",
        "RSS MiB",
        pe_rss,
        tw_rss,
        pe_rss / tw_rss
    );
    println!(
        "{:<28} {:>14.0} {:>14.0} {:>7.0}x",
        "peak RSS MiB",
        pe_hwm,
        tw_hwm,
        pe_hwm / tw_hwm
    );
}
