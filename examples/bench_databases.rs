//! Database-per-tenant benchmark for `scripts/bench-databases.sh`: a
//! throwaway PostgreSQL with DATABASES tenant databases (one table each),
//! watched in the same run by tenantwatch (`databases = ["*"]`, default
//! `max_sessions`) and by prometheus-postgres-exporter with
//! `--auto-discover-databases`: connections held on the instance, scrape
//! time, samples, RSS, and tenantwatch's full detail cycle.
//!
//! ```text
//! bench_databases TENANTWATCH_BIN EXPORTER_BIN DATABASES
//! ```

// Tests and benches may unwrap: a failure there is the report.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenantwatch::demo::cluster::{Cluster, free_port};
use tokio_postgres::{Client, NoTls};

mod common;
use common::{Killed, get, rss_mib, scrape};

/// Client backends other than the asking session.
async fn connections(admin: &Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tenantwatch, exporter, databases] = args.as_slice() else {
        eprintln!("usage: bench_databases TENANTWATCH_BIN EXPORTER_BIN DATABASES");
        std::process::exit(2);
    };
    let databases: usize = databases.parse().expect("DATABASES is a number");
    // The exporter opens a connection per database.
    let cluster =
        Cluster::start_new_with_max_connections(databases as u32 + 100).expect("start PostgreSQL");
    let (admin, connection) = tokio_postgres::connect(&cluster.dsn("postgres"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let started = Instant::now();
    admin
        .batch_execute("CREATE DATABASE tenant_template")
        .await
        .unwrap();
    {
        let (template, connection) =
            tokio_postgres::connect(&cluster.dsn("tenant_template"), NoTls)
                .await
                .unwrap();
        let driver = tokio::spawn(connection);
        template
            .batch_execute(
                "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric);
                 INSERT INTO orders SELECT g, g FROM generate_series(1, 100) g; ANALYZE",
            )
            .await
            .unwrap();
        drop(template);
        let _ = driver.await;
    }
    for i in 0..databases {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE tenant_{i} TEMPLATE tenant_template"
            ))
            .await
            .unwrap();
    }
    println!(
        "created {databases} tenant databases in {:.0}s",
        started.elapsed().as_secs_f64()
    );

    // tenantwatch: every database, default max_sessions (2).
    let http = free_port();
    let config = cluster.dir().join("tenantwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{http}\"\n[ingest]\nudp_listen = \"\"\n\
             [[targets]]\nname = \"bench\"\ndsn = \"{}\"\ndatabases = [\"*\"]\nmax_databases = {}\n\
             [[tenants.rules]]\nsource = \"database\"\npattern = \"^tenant_(?P<tenant>[0-9]+)$\"\n",
            cluster.dsn("postgres"),
            databases + 10,
        ),
    )
    .unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut most_connections = 0;
    let cycle = loop {
        most_connections = most_connections.max(connections(&admin).await);
        if let Some(cycle) = get(&url).and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("tenantwatch_target_detail_cycle_seconds{"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        }) {
            break cycle;
        }
        assert!(Instant::now() < deadline, "no detail cycle in 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Sample the sessions through a second cycle too.
    let until = Instant::now() + Duration::from_secs_f64(cycle.max(5.0));
    while Instant::now() < until {
        most_connections = most_connections.max(connections(&admin).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (tw_seconds, _, tw_samples) = scrape(&url, 5);
    let tw_rss = rss_mib(daemon.0.id(), "VmHWM:");
    drop(daemon);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // prometheus-postgres-exporter, discovering every database.
    let exporter_port = free_port();
    let exporter = Killed(
        Command::new(exporter)
            .arg("--auto-discover-databases")
            .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable",
                    cluster.port()
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-postgres-exporter"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let exporter_url = format!("http://127.0.0.1:{exporter_port}/metrics");
    let (pe_seconds, _, pe_samples) = scrape(&exporter_url, 3);
    let pe_connections = connections(&admin).await;
    let pe_rss = rss_mib(exporter.0.id(), "VmHWM:");
    drop(exporter);

    println!();
    println!(
        "{:<36} {:>12} {:>12} {:>8}",
        "", "exporter", "tenantwatch", "ratio"
    );
    println!(
        "{:<36} {:>12} {:>12} {:>7.0}x",
        "connections held on the instance",
        pe_connections,
        most_connections,
        pe_connections as f64 / most_connections.max(1) as f64
    );
    println!(
        "{:<36} {:>12.3} {:>12.3} {:>7.0}x",
        "scrape seconds (median)",
        pe_seconds,
        tw_seconds,
        pe_seconds / tw_seconds
    );
    println!(
        "{:<36} {:>12} {:>12} {:>7.1}x",
        "samples",
        pe_samples,
        tw_samples,
        pe_samples as f64 / tw_samples as f64
    );
    println!(
        "{:<36} {:>12.0} {:>12.0} {:>7.1}x",
        "peak RSS MiB",
        pe_rss,
        tw_rss,
        pe_rss / tw_rss
    );
    println!(
        "{:<36} {:>12} {:>12.1}",
        "tenantwatch detail cycle seconds", "-", cycle
    );
}
