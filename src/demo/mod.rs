//! `tenantwatch demo`: the embedded default. Starts a throwaway PostgreSQL,
//! creates tenant schemas with data, runs a workload in which one tenant
//! misbehaves while the applications send events, runs the daemon on it, and
//! prints a live table of the top tenants until Ctrl-C (or `--duration`).
//!
//! [`cluster`] starts the throwaway PostgreSQL clusters, for the demo and
//! for the tests.

pub mod cluster;
pub mod pgbouncer;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::config::{
    Config, PgBouncerSettings, RuleSettings, Settings, TargetSettings, TenantOverride, TierSettings,
};
use crate::daemon::Daemon;
use cluster::{Cluster, ClusterError};

/// The tenant that misbehaves: heavy queries, many connections, and a
/// session left idle in a transaction.
pub const NOISY_TENANT: &str = "clinic7";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("demo database set-up failed: {0}")]
    Setup(#[from] tokio_postgres::Error),
    #[error("demo configuration is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error("the demo's PostgreSQL helper thread failed")]
    Join,
}

/// Options of `tenantwatch demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub tenants: usize,
    pub listen: SocketAddr,
    pub duration: Option<Duration>,
    /// Seconds between two live tables.
    pub report_every: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            tenants: 40,
            listen: SocketAddr::from(([127, 0, 0, 1], 9645)),
            duration: None,
            report_every: Duration::from_secs(5),
        }
    }
}

fn tenant_names(count: usize) -> Vec<String> {
    (1..=count.max(8)).map(|i| format!("clinic{i}")).collect()
}

async fn connect(dsn: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn create_schemas(
    cluster: &Cluster,
    tenants: &[String],
) -> Result<(), tokio_postgres::Error> {
    let admin = connect(&cluster.dsn("postgres")).await?;
    admin.batch_execute("CREATE DATABASE app").await?;
    admin
        .batch_execute(&format!("CREATE ROLE {DEMO_APP_ROLE} LOGIN"))
        .await?;
    let app = connect(&cluster.dsn("app")).await?;
    app.batch_execute("CREATE EXTENSION pg_stat_statements")
        .await?;
    for (i, tenant) in tenants.iter().enumerate() {
        let rows = 2_000 + 500 * (i % 7);
        app.batch_execute(&format!(
            "CREATE SCHEMA tenant_{tenant};
             CREATE TABLE tenant_{tenant}.patients (id bigserial PRIMARY KEY, name text NOT NULL, born date);
             CREATE TABLE tenant_{tenant}.appointments (id bigserial PRIMARY KEY, patient_id bigint NOT NULL,
                 at timestamptz NOT NULL, notes text);
             CREATE INDEX ON tenant_{tenant}.appointments (patient_id);
             INSERT INTO tenant_{tenant}.patients (name, born)
               SELECT 'patient ' || g, date '1950-01-01' + (g % 20000) FROM generate_series(1, {rows}) g;
             INSERT INTO tenant_{tenant}.appointments (patient_id, at, notes)
               SELECT 1 + g % {rows}, now() - (g || ' minutes')::interval, repeat('note ', 10)
                 FROM generate_series(1, {rows} * 3) g;
             GRANT USAGE ON SCHEMA tenant_{tenant} TO {DEMO_APP_ROLE};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tenant_{tenant} TO {DEMO_APP_ROLE};"
        ))
        .await?;
        // Outside a transaction block, so one statement per call: the
        // vacuum and analyze times are on the dashboards from the start.
        for table in ["patients", "appointments"] {
            app.batch_execute(&format!("VACUUM ANALYZE tenant_{tenant}.{table}"))
                .await?;
        }
    }
    // The noisy tenant's reporting service logs in as its own role, through
    // the demo's PgBouncer: a role-per-tenant pool.
    admin
        .batch_execute(&format!("CREATE ROLE {NOISY_TENANT_ROLE} LOGIN"))
        .await?;
    app.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA tenant_{NOISY_TENANT} TO {NOISY_TENANT_ROLE};
         GRANT SELECT ON ALL TABLES IN SCHEMA tenant_{NOISY_TENANT} TO {NOISY_TENANT_ROLE};"
    ))
    .await?;
    Ok(())
}

/// The noisy tenant's own role (attributed by the demo's role rule).
const NOISY_TENANT_ROLE: &str = "app_clinic7";

/// The demo's PgBouncer pool size: smaller than the noisy tenant's six
/// reporting workers, so its pool saturates and clients wait.
const DEMO_POOL_SIZE: u32 = 3;

/// The application role of the demo's idle session: not a superuser, so
/// the guard (in dry run) may act on it, as on any application's session.
const DEMO_APP_ROLE: &str = "demo_app";

/// Sends tenant query events the way an application would: NDJSON over
/// UDP, batched, each with the endpoint that ran it and the sending
/// instance (as a pod would).
struct EventSender {
    socket: std::net::UdpSocket,
    batch: String,
    lines: usize,
    instance: String,
}

/// One query's event.
struct QueryEvent<'a> {
    tenant: &'a str,
    kind: &'a str,
    endpoint: &'a str,
    duration: Duration,
    rows: usize,
    error: bool,
}

impl EventSender {
    fn new(daemon_udp: SocketAddr, instance: String) -> std::io::Result<EventSender> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(daemon_udp)?;
        Ok(EventSender {
            socket,
            batch: String::new(),
            lines: 0,
            instance,
        })
    }

    fn add(&mut self, e: QueryEvent<'_>) {
        let _ = writeln!(
            self.batch,
            r#"{{"tenant":"{}","kind":"{}","duration_ms":{:.3},"rows":{},"error":{},"endpoint":"{}","instance":"{}"}}"#,
            e.tenant,
            e.kind,
            e.duration.as_secs_f64() * 1000.0,
            e.rows,
            e.error,
            e.endpoint,
            self.instance
        );
        self.line_added();
    }

    /// The time it took to switch the session to the tenant.
    fn add_schema_switch(&mut self, tenant: &str, duration: Duration) {
        let _ = writeln!(
            self.batch,
            r#"{{"tenant":"{tenant}","kind":"schema_switch","duration_ms":{:.3},"instance":"{}"}}"#,
            duration.as_secs_f64() * 1000.0,
            self.instance
        );
        self.line_added();
    }

    /// Sends a datagram every 20 lines.
    fn line_added(&mut self) {
        self.lines += 1;
        if self.lines >= 20 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let _ = self.socket.send(self.batch.as_bytes());
        }
        self.batch.clear();
        self.lines = 0;
    }
}

/// Asks tenantwatch before running a tenant's work, as applications should:
/// `POST /v1/ratelimit/check` on one keep-alive connection. Fails open.
struct CheckClient {
    addr: SocketAddr,
    stream: Option<tokio::io::BufReader<tokio::net::TcpStream>>,
}

impl CheckClient {
    fn new(addr: SocketAddr) -> CheckClient {
        CheckClient { addr, stream: None }
    }

    async fn allowed(&mut self, tenant: &str) -> bool {
        match self.try_check(tenant).await {
            Ok(allowed) => allowed,
            Err(_) => {
                self.stream = None;
                true
            }
        }
    }

    async fn try_check(&mut self, tenant: &str) -> std::io::Result<bool> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        if self.stream.is_none() {
            let stream = tokio::net::TcpStream::connect(self.addr).await?;
            self.stream = Some(tokio::io::BufReader::new(stream));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(true);
        };
        let body = format!(r#"{{"tenant":"{tenant}","cost":1}}"#);
        let request = format!(
            "POST /v1/ratelimit/check HTTP/1.1\r\nHost: tenantwatch\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut reply = vec![0; length];
        stream.read_exact(&mut reply).await?;
        Ok(status != 429)
    }
}

/// Where the demo's applications reach the daemon.
#[derive(Debug, Clone, Copy)]
struct DaemonAddrs {
    /// The rate-limit check.
    http: SocketAddr,
    /// The event socket.
    udp: SocketAddr,
}

/// What an application worker talks to: tenantwatch's rate limiter (HTTP),
/// the database, and tenantwatch's event socket (UDP). `None` if the
/// database or the socket cannot be reached (the worker then does nothing).
async fn app_clients(
    daemon: DaemonAddrs,
    dsn: &str,
    instance: String,
) -> Option<(CheckClient, Client, EventSender)> {
    let client = connect(dsn).await.ok()?;
    let events = EventSender::new(daemon.udp, instance).ok()?;
    Some((CheckClient::new(daemon.http), client, events))
}

/// The application's switch of its session to `tenant`, timed and sent as
/// a `schema_switch` event.
async fn switch_to(client: &Client, events: &mut EventSender, tenant: &str) {
    let switching = Instant::now();
    let switched = client
        .batch_execute(&format!("SET search_path TO tenant_{tenant}"))
        .await;
    if switched.is_ok() {
        events.add_schema_switch(tenant, switching.elapsed());
    }
}

/// A well-behaved application worker: short, tagged queries for tenants
/// picked by weight (a few big tenants, a long tail).
async fn healthy_worker(
    dsn: String,
    tenants: Arc<Vec<String>>,
    daemon: DaemonAddrs,
    seed: u64,
    shutdown: CancellationToken,
) {
    let instance = format!("web-{seed}");
    let Some((mut limits, client, mut events)) = app_clients(daemon, &dsn, instance).await else {
        return;
    };
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while !shutdown.is_cancelled() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Squaring a uniform number favours the first tenants.
        let u = (rng >> 33) as f64 / (1u64 << 31) as f64;
        let index = ((u * u) * tenants.len() as f64) as usize % tenants.len();
        let tenant = &tenants[index];
        if tenant == NOISY_TENANT {
            continue;
        }
        if !limits.allowed(tenant).await {
            continue;
        }
        let write = rng.is_multiple_of(5);
        let sql = if write {
            format!(
                "/*tenant='{tenant}'*/ INSERT INTO tenant_{tenant}.appointments (patient_id, at, notes) VALUES ({}, now(), 'checkup')",
                1 + rng % 1000
            )
        } else {
            format!(
                "/*tenant='{tenant}'*/ SELECT a.id, a.at FROM tenant_{tenant}.appointments a WHERE a.patient_id = {} ORDER BY a.at DESC LIMIT 20",
                1 + rng % 1000
            )
        };
        switch_to(&client, &mut events, tenant).await;
        let started = Instant::now();
        let result = client.query(&sql, &[]).await;
        let rows = result.as_ref().map(|r| r.len()).unwrap_or(0);
        events.add(QueryEvent {
            tenant,
            kind: if write { "write" } else { "read" },
            endpoint: if write {
                "POST /appointments"
            } else {
                "GET /patients/{id}/appointments"
            },
            duration: started.elapsed(),
            rows: if write { 1 } else { rows },
            error: result.is_err(),
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    events.flush();
}

/// The misbehaving tenant's worker: a heavy query in a loop. It asks for
/// permission and backs off when denied, so the tightened quota shows.
async fn noisy_worker(daemon: DaemonAddrs, dsn: String, shutdown: CancellationToken) {
    let Some((mut limits, client, mut events)) =
        app_clients(daemon, &dsn, "reports-1".into()).await
    else {
        return;
    };
    let tenant = NOISY_TENANT;
    let sql = format!(
        "/*tenant='{tenant}'*/ SELECT count(*), max(a.notes) FROM tenant_{tenant}.appointments a
           JOIN tenant_{tenant}.appointments b ON a.patient_id = b.patient_id
          WHERE a.at > b.at"
    );
    while !shutdown.is_cancelled() {
        if !limits.allowed(tenant).await {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        switch_to(&client, &mut events, tenant).await;
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            // The simple query protocol: through a transaction-mode pool
            // a prepared statement may land on another server connection.
            result = client.simple_query(&sql) => result,
        };
        events.add(QueryEvent {
            tenant,
            kind: "read",
            endpoint: "GET /reports/overlaps",
            duration: started.elapsed(),
            rows: 1,
            error: result.is_err(),
        });
        events.flush();
    }
}

/// Holds one of the noisy tenant's sessions idle in a transaction.
async fn idle_in_transaction(dsn: String, shutdown: CancellationToken) {
    let Ok(client) = connect(&dsn).await else {
        return;
    };
    let tenant = NOISY_TENANT;
    let _ = client
        .batch_execute(&format!(
            "BEGIN; UPDATE tenant_{tenant}.patients SET name = name WHERE id = 1 /*tenant='{tenant}'*/"
        ))
        .await;
    shutdown.cancelled().await;
    let _ = client.batch_execute("ROLLBACK").await;
}

/// The demo's database, daemon and workload, without the printing: what
/// [`run`] shows and what the end-to-end tests drive.
pub struct DemoEnvironment {
    pub cluster: Cluster,
    /// A streaming standby of the cluster (its lag shows on the primary).
    pub standby: Option<Cluster>,
    /// In front of the cluster when the `pgbouncer` binary is installed.
    pub pgbouncer: Option<pgbouncer::PgBouncer>,
    pub daemon: Daemon,
    pub tenants: Arc<Vec<String>>,
    workload: CancellationToken,
    tasks: JoinSet<()>,
}

impl DemoEnvironment {
    /// Starts PostgreSQL, creates `tenants` tenant schemas, starts the
    /// daemon on `listen` and the workload.
    pub async fn start(tenants: usize, listen: SocketAddr) -> Result<DemoEnvironment, DemoError> {
        // pg_stat_statements preloaded, so that per-tenant statement figures
        // (the noisy tenant's own role) show without any event.
        let cluster = tokio::task::spawn_blocking(|| {
            let cluster = Cluster::start_new()?;
            cluster.configure("shared_preload_libraries = 'pg_stat_statements'")?;
            Ok::<_, ClusterError>(cluster)
        })
        .await
        .map_err(|_| DemoError::Join)??;
        // A streaming standby, taken while the cluster is still empty (so
        // the base backup is quick); replication then carries the schemas.
        let standby = start_standby(&cluster).await;
        let tenants = Arc::new(tenant_names(tenants));
        create_schemas(&cluster, &tenants).await?;
        let pgbouncer = start_pgbouncer(&cluster).await;

        let file = demo_config(&cluster, pgbouncer.as_ref(), &tenants, listen);
        let config = Config::try_from(file)?;
        let daemon = Daemon::start(config).await?;
        let udp = daemon
            .udp_addr()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8125)));
        let addrs = DaemonAddrs {
            http: daemon.http_addr(),
            udp,
        };

        let workload = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for seed in 0..6 {
            tasks.spawn(healthy_worker(
                cluster.dsn("app"),
                tenants.clone(),
                addrs,
                seed + 1,
                workload.clone(),
            ));
        }
        // The noisy tenant's six reporting workers, through PgBouncer when
        // there is one.
        let noisy_dsn = match &pgbouncer {
            Some(pgbouncer) => pgbouncer.dsn("app", NOISY_TENANT_ROLE),
            None => format!("{} user={NOISY_TENANT_ROLE}", cluster.dsn("app")),
        };
        for _ in 0..6 {
            tasks.spawn(noisy_worker(addrs, noisy_dsn.clone(), workload.clone()));
        }
        tasks.spawn(idle_in_transaction(
            format!("{} user={DEMO_APP_ROLE}", cluster.dsn("app")),
            workload.clone(),
        ));
        Ok(DemoEnvironment {
            cluster,
            standby,
            pgbouncer,
            daemon,
            tenants,
            workload,
            tasks,
        })
    }

    /// Stops the workload, the daemon and PostgreSQL (removing its files).
    pub async fn stop(mut self) -> Result<(), DemoError> {
        self.workload.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.daemon.shutdown();
        self.daemon.wait().await;
        let (cluster, standby, pgbouncer) = (self.cluster, self.standby, self.pgbouncer);
        tokio::task::spawn_blocking(move || drop((pgbouncer, standby, cluster)))
            .await
            .map_err(|_| DemoError::Join)
    }
}

/// The daemon's configuration in the demo: the cluster (and PgBouncer) as
/// targets, detection tuned to show within a minute, two tiers. Public so
/// that a test can start a second instance watching the same target under
/// the same name, as a rollout or a second shard does.
pub fn demo_config(
    cluster: &Cluster,
    pgbouncer: Option<&pgbouncer::PgBouncer>,
    tenants: &[String],
    listen: SocketAddr,
) -> Settings {
    use crate::attribution::RuleSource;
    use crate::detect::{GuardMode, RuleName};
    let mut file = Settings::default();
    file.server.listen = listen;
    // Nothing routes to the demo: stop at once on Ctrl-C.
    file.server.shutdown_delay = Duration::ZERO;
    file.ingest.udp_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    file.targets.push(TargetSettings {
        poll_interval: Duration::from_secs(2),
        // Schema statistics every 10 s: the dashboards move in a demo.
        stats_interval: Duration::from_secs(10),
        size_interval: Duration::from_secs(30),
        // Every schema series, so that every dashboard panel has data.
        schema_detail: crate::store::SchemaDetail::Full,
        ..TargetSettings::new("demo", cluster.dsn("app"))
    });
    if let Some(pgbouncer) = pgbouncer {
        file.pgbouncers.push(PgBouncerSettings {
            poll_interval: Duration::from_secs(2),
            ..PgBouncerSettings::new("demo", pgbouncer.admin_dsn())
        });
    }
    // The default rules (schemas, query comments), with the noisy
    // tenant's role between them: its pooled sessions are its own.
    let rule = |source, pattern: &str| RuleSettings {
        source,
        pattern: pattern.into(),
        key: None,
    };
    file.tenants.rules = vec![
        rule(RuleSource::Schema, "^tenant_(?P<tenant>.+)$"),
        rule(RuleSource::Role, "^app_(?P<tenant>.+)$"),
        rule(RuleSource::QueryComment, "^(?P<tenant>.+)$"),
    ];
    // Detection tuned to show within the demo's first minute what the
    // shipped defaults (2m for db_time_hog, 60s idle in transaction) show
    // in two.
    file.detect.interval = Duration::from_secs(5);
    // History every 10 s, so the API's history and growth fit show data
    // within the demo's first minutes.
    file.api.history_resolution = Duration::from_secs(10);
    // A size budget, so capacity shows days until it and tenants that fit.
    file.api.size_budget_bytes = 10 << 30;
    if let Some(rule) = file.detect.rules.get_mut(&RuleName::DbTimeHog) {
        rule.for_ = Duration::from_secs(30);
    }
    if let Some(rule) = file.detect.rules.get_mut(&RuleName::IdleInTransaction) {
        rule.threshold = 30.0;
    }
    // The guard in dry run: the idle transaction's would-be termination
    // is logged, counted and annotated, and the session stays.
    file.guard.mode = GuardMode::DryRun;
    file.guard.grace = Duration::ZERO;
    // Two tiers with the default quotas, so dashboards group by tier
    // while every tenant keeps the same limits.
    for tier in ["gold", "standard"] {
        file.ratelimit.tiers.insert(
            tier.into(),
            TierSettings {
                qps: file.ratelimit.default_qps,
                burst: file.ratelimit.default_burst,
                shadow: false,
            },
        );
    }
    for (i, tenant) in tenants.iter().enumerate() {
        let tier = if i % 3 == 0 { "gold" } else { "standard" };
        file.ratelimit.tenants.insert(
            tenant.clone(),
            TenantOverride {
                tier: Some(tier.into()),
                ..Default::default()
            },
        );
    }
    file
}

/// A streaming standby of the demo's cluster, named `demo-replica`; `None`
/// (and a line saying so) when it cannot be made.
async fn start_standby(cluster: &Cluster) -> Option<Cluster> {
    let primary = cluster.primary();
    match tokio::task::spawn_blocking(move || primary.start_standby("demo-replica")).await {
        Ok(Ok(standby)) => Some(standby),
        Ok(Err(err)) => {
            println!("The demo's standby did not start ({err}): it runs without one.");
            None
        }
        Err(_) => None,
    }
}

/// A PgBouncer in transaction mode in front of the cluster, when the
/// `pgbouncer` binary is installed; `None` (and a line saying so) when not.
async fn start_pgbouncer(cluster: &Cluster) -> Option<pgbouncer::PgBouncer> {
    if pgbouncer::find_binary().is_none() {
        println!(
            "pgbouncer is not installed: the demo runs without a PgBouncer, and the PgBouncer panels stay empty (apt-get install pgbouncer)."
        );
        return None;
    }
    let settings = pgbouncer::PgBouncerSettings {
        backend_port: cluster.port(),
        default_pool_size: DEMO_POOL_SIZE,
        max_client_conn: 100,
        users: vec![NOISY_TENANT_ROLE.into()],
    };
    match tokio::task::spawn_blocking(move || pgbouncer::PgBouncer::start_new(&settings)).await {
        Ok(Ok(pgbouncer)) => Some(pgbouncer),
        Ok(Err(err)) => {
            println!("PgBouncer did not start ({err}): the demo runs without one.");
            None
        }
        Err(_) => None,
    }
}

/// Runs the demo until `shutdown` (Ctrl-C) or the configured duration.
pub async fn run(options: DemoOptions, shutdown: CancellationToken) -> Result<(), DemoError> {
    println!(
        "Starting a throwaway PostgreSQL cluster with {} tenant schemas...",
        options.tenants.max(8)
    );
    let env = DemoEnvironment::start(options.tenants, options.listen).await?;
    let http = env.daemon.http_addr();
    let udp = env
        .daemon
        .udp_addr()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8125)));
    println!(
        "PostgreSQL is up on 127.0.0.1:{} ({})",
        env.cluster.port(),
        env.cluster.dir().display()
    );
    if let Some(standby) = &env.standby {
        println!(
            "A streaming standby (demo-replica) is up on 127.0.0.1:{}; its replay lag shows on the primary.",
            standby.port()
        );
    }
    if let Some(pgbouncer) = &env.pgbouncer {
        println!(
            "PgBouncer (transaction mode, pool size {DEMO_POOL_SIZE}) is up on 127.0.0.1:{}; {NOISY_TENANT}'s reporting workers go through it.",
            pgbouncer.port()
        );
    }

    println!(
        "\ntenantwatch is running on the demo database. Open:\n  \
         http://{http}/metrics       the Prometheus exposition\n  \
         http://{http}/readyz        readiness\n\
         Events go to udp://{udp}. Tenant {NOISY_TENANT} misbehaves: heavy queries on 6 connections and a session idle in transaction.\n\
         Press Ctrl-C to stop; the cluster is removed on exit.\n"
    );

    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let mut report = tokio::time::interval(options.report_every);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    report.tick().await;
    loop {
        let until_deadline = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(until_deadline.unwrap_or(Duration::MAX)), if until_deadline.is_some() => break,
            _ = report.tick() => print!("{}", live_table(&env.daemon, started.elapsed())),
        }
    }

    println!("Stopping the workload, the daemon and PostgreSQL...");
    env.stop().await?;
    println!("Done.");
    Ok(())
}

/// The top tenants by database-time share, with their connections.
pub fn live_table(daemon: &Daemon, elapsed: Duration) -> String {
    let snapshot = daemon.store().snapshot();
    let statuses = daemon.target_statuses();
    let activity = statuses
        .handles()
        .first()
        .and_then(|s| crate::store::lock(s).activity.clone());
    let mut tenants: Vec<_> = snapshot.tenants.iter().collect();
    tenants.sort_by(|a, b| b.db_time_share.total_cmp(&a.db_time_share));
    let judgement = daemon.judgement();
    let mut out = format!(
        "\n[{:>4}s] top tenants by share of database time (last {}s)\n{:<12} {:>7} {:>8} {:>6} {:>16} {:>8}  {}\n",
        elapsed.as_secs(),
        60,
        "tenant",
        "share",
        "queries",
        "conns",
        "idle in txn (s)",
        "qps cap",
        "flags"
    );
    for tenant in tenants.iter().take(8) {
        let queries: f64 = tenant.kinds.iter().flatten().map(|k| k.queries).sum();
        let pg = activity
            .as_ref()
            .and_then(|a| a.tenants.get(&tenant.tenant));
        let connections: u64 = pg.map(|a| a.connections.values().sum()).unwrap_or(0);
        let idle = pg.map(|a| a.idle_in_transaction_max_seconds).unwrap_or(0.0);
        let flags: Vec<&str> = judgement
            .flags
            .iter()
            .filter(|f| f.tenant == tenant.tenant)
            .map(|f| f.reason.as_str())
            .collect();
        let cap = daemon.rate_limits().effective(&tenant.tenant).1.qps;
        let _ = writeln!(
            out,
            "{:<12} {:>6.1}% {:>8.0} {:>6} {:>16.0} {:>8.0}  {}",
            tenant.tenant,
            tenant.db_time_share * 100.0,
            queries,
            connections,
            idle,
            cap,
            flags.join(",")
        );
    }
    out
}
