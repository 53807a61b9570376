//! PostgreSQL collectors: one task per target polls activity, per-schema
//! statistics, `pg_stat_database` and (on a slower schedule) exact schema
//! sizes, and publishes the result as a [`crate::store::TargetStatus`] that
//! readers copy. [`pgbouncer`] does the same for PgBouncer admin consoles.
//!
//! Discipline, because the database we watch must never suffer for it:
//! - one connection per watched database, opened once and reused; the
//!   connection is only replaced after it failed;
//! - `application_name=tenantwatch`, `statement_timeout` and `lock_timeout`
//!   set on the session, plus a client deadline one second longer, after which
//!   the query is cancelled and the connection dropped;
//! - polls run one after another in the task, so one never starts while the
//!   previous is still running; the interval delays instead of bursting;
//! - a failure is data: `up` 0, a counted error kind, a rate-limited log
//!   line; reconnects back off exponentially, capped at the poll interval;
//! - readers (the `/metrics` scrape) never query PostgreSQL.

pub mod guard;
pub mod pgbouncer;
pub mod queries;
pub mod settings;
pub mod statements;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::time::MissedTickBehavior;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::attribution::Attribution;
use crate::store::{CollectorName, PollErrorKind, SharedStatus, lock};
use crate::telemetry::RateLimitedWarn;
pub use settings::{DatabaseSelection, TargetConfig};

/// Maps a driver error to a bounded kind.
pub fn error_kind(err: &tokio_postgres::Error) -> PollErrorKind {
    match err.code() {
        Some(code) if *code == SqlState::QUERY_CANCELED => PollErrorKind::StatementTimeout,
        Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => PollErrorKind::LockTimeout,
        Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => PollErrorKind::Permission,
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            PollErrorKind::Auth
        }
        Some(_) => PollErrorKind::Query,
        None if err.is_closed() => PollErrorKind::ConnectionLost,
        None => PollErrorKind::Connect,
    }
}

/// An error of one collector run.
#[derive(Debug)]
struct PollError {
    kind: PollErrorKind,
    /// Safe to log: driver messages never include the password.
    detail: String,
}

impl PollError {
    fn from_pg(err: tokio_postgres::Error, fallback: PollErrorKind) -> PollError {
        let kind = match error_kind(&err) {
            PollErrorKind::Connect => fallback,
            // Only the statements query reads an extension's view.
            _ if statements::is_extension_missing(&err) => PollErrorKind::ExtensionMissing,
            kind => kind,
        };
        PollError {
            kind,
            detail: err.to_string(),
        }
    }

    fn timeout() -> PollError {
        PollError {
            kind: PollErrorKind::Timeout,
            detail: "no answer within statement_timeout plus one second".into(),
        }
    }
}

/// Connects within `within`, over TLS unless the DSN says
/// `sslmode=disable`. Returns the client and the task that drives the
/// connection until the server or the network closes it, after which the
/// client reports `is_closed` and its owner reconnects.
async fn connect(
    config: &tokio_postgres::Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    within: Duration,
) -> Result<(Client, tokio::task::JoinHandle<()>), PollError> {
    let timed_out = |_| PollError {
        kind: PollErrorKind::Connect,
        detail: "connect timed out".into(),
    };
    // Each branch has its own stream type, hence the two spawns.
    if config.get_ssl_mode() == SslMode::Disable {
        let (client, connection) = tokio::time::timeout(within, config.connect(NoTls))
            .await
            .map_err(timed_out)?
            .map_err(|err| PollError::from_pg(err, PollErrorKind::Connect))?;
        Ok((client, tokio::spawn(async move { drop(connection.await) })))
    } else {
        let (client, connection) = tokio::time::timeout(within, config.connect(tls.clone()))
            .await
            .map_err(timed_out)?
            .map_err(|err| PollError::from_pg(err, PollErrorKind::Connect))?;
        Ok((client, tokio::spawn(async move { drop(connection.await) })))
    }
}

/// One open session on one database of the target.
struct Session {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    /// The backend's process id: our own sessions are recognised by it, not
    /// by `application_name`, which any client can set.
    pid: i32,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Runs a target's poll loop until `shutdown`.
pub async fn run_target(
    target: TargetConfig,
    attribution: Arc<Attribution>,
    status: SharedStatus,
    mut guard: guard::GuardInbox,
    shutdown: CancellationToken,
) {
    let tls = match tls::connector(target.tls_ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(err) => {
            // Validated at start-up; only a CA file changed since can get here.
            tracing::error!(target_name = %target.name, error = %err, "Target disabled: TLS set-up failed");
            lock(&status).last_error = Some(PollErrorKind::Connect);
            return;
        }
    };
    let mut poller = Poller {
        tls,
        target,
        attribution,
        status,
        sessions: HashMap::new(),
        warn: RateLimitedWarn::new(Duration::from_secs(60)),
        size_cycle: None,
        next_size_cycle: Instant::now(),
        last_relation_sizes: HashMap::new(),
        statements: statements::StatementAccounts::default(),
        statements_next_check: Instant::now(),
        statements_missing: false,
    };
    let mut interval = tokio::time::interval(poller.target.poll_interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut backoff = poller.base_backoff();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
            // Guard orders run between polls, on the poller's session.
            Some(order) = guard.orders.recv() => {
                poller.carry_out(order, &guard.log).await;
                continue;
            }
        }
        let ok = tokio::select! {
            _ = shutdown.cancelled() => return,
            ok = poller.poll() => ok,
        };
        if ok {
            backoff = poller.base_backoff();
            continue;
        }
        // Down: retry sooner than the next tick, backing off exponentially
        // but never waiting longer than a poll interval.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(poller.target.poll_interval);
            let ok = tokio::select! {
                _ = shutdown.cancelled() => return,
                ok = poller.poll() => ok,
            };
            if ok {
                backoff = poller.base_backoff();
                interval.reset();
                break;
            }
        }
    }
}

/// State of a size cycle: the relations still to measure, and the sums so far.
struct SizeCycle {
    /// (database, relation oid, schema) still to measure.
    pending: Vec<(String, i64, String)>,
    sizes: BTreeMap<String, u64>,
    /// Bytes of each relation measured (or carried over) in this cycle.
    relation_sizes: HashMap<(String, i64), u64>,
}

struct Poller {
    /// Used unless the DSN says `sslmode=disable`.
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    target: TargetConfig,
    attribution: Arc<Attribution>,
    status: SharedStatus,
    /// Open sessions by database name.
    sessions: HashMap<String, Session>,
    warn: RateLimitedWarn,
    size_cycle: Option<SizeCycle>,
    next_size_cycle: Instant,
    /// Each relation's bytes in the last complete cycle: a relation that a
    /// DDL lock keeps from being measured counts with its last size instead
    /// of silently dropping out of its tenant's sum.
    last_relation_sizes: HashMap<(String, i64), u64>,
    statements: statements::StatementAccounts,
    /// `pg_stat_statements` is read again from then on (later while it is
    /// missing, so that a target without it sees no retry storm).
    statements_next_check: Instant,
    /// The extension was missing at the last check (counted and logged once).
    statements_missing: bool,
}

/// How long a target without `pg_stat_statements` waits before it is
/// looked for again.
const STATEMENTS_RECHECK: Duration = Duration::from_secs(10 * 60);

impl Poller {
    fn base_backoff(&self) -> Duration {
        (self.target.poll_interval / 8).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    fn deadline(&self) -> Duration {
        self.target.statement_timeout + Duration::from_secs(1)
    }

    fn primary_database(&self) -> String {
        self.target
            .pg
            .get_dbname()
            .or(self.target.pg.get_user())
            .unwrap_or("postgres")
            .to_owned()
    }

    /// Opens (or reuses) the session on `database`.
    async fn session(&mut self, database: &str) -> Result<&Client, PollError> {
        let closed = self
            .sessions
            .get(database)
            .is_none_or(|s| s.client.is_closed());
        if closed {
            self.sessions.remove(database);
            let mut config = self.target.pg.clone();
            config.dbname(database);
            let within = self.target.connect_timeout + Duration::from_secs(1);
            let (client, connection) = connect(&config, &self.tls, within).await?;
            let setup = format!(
                "SET statement_timeout = {}; SET lock_timeout = {}; SET idle_in_transaction_session_timeout = {};",
                self.target.statement_timeout.as_millis(),
                self.target.lock_timeout.as_millis(),
                self.deadline().as_millis() * 2,
            );
            tokio::time::timeout(self.deadline(), client.batch_execute(&setup))
                .await
                .map_err(|_| PollError::timeout())?
                .map_err(|err| PollError::from_pg(err, PollErrorKind::Connect))?;
            let pid: i32 = tokio::time::timeout(
                self.deadline(),
                client.query_one("SELECT pg_backend_pid()", &[]),
            )
            .await
            .map_err(|_| PollError::timeout())?
            .and_then(|row| row.try_get(0))
            .map_err(|err| PollError::from_pg(err, PollErrorKind::Connect))?;
            let session = Session {
                client,
                connection,
                pid,
            };
            self.sessions.insert(database.to_owned(), session);
        }
        Ok(&self.sessions[database].client)
    }

    /// Runs `statement` with parameters on `database` under the client deadline.
    async fn query(
        &mut self,
        database: &str,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, PollError> {
        let deadline = self.deadline();
        let client = self.session(database).await?;
        let cancel = client.cancel_token();
        match tokio::time::timeout(deadline, client.query(statement, params)).await {
            Ok(result) => result.map_err(|err| PollError::from_pg(err, PollErrorKind::Query)),
            Err(_) => {
                // The server did not honour statement_timeout (or the network
                // is gone): cancel, and start the next poll on a new session.
                // The cancel request goes over TLS when the session does.
                let cancel = async {
                    if self.target.pg.get_ssl_mode() == SslMode::Disable {
                        cancel.cancel_query(NoTls).await
                    } else {
                        cancel.cancel_query(self.tls.clone()).await
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), cancel).await;
                self.sessions.remove(database);
                Err(PollError::timeout())
            }
        }
    }

    fn record(
        &mut self,
        collector: CollectorName,
        started: Instant,
        result: &Result<(), PollError>,
    ) {
        let mut status = lock(&self.status);
        status
            .poll_seconds
            .insert(collector, started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                status
                    .last_poll_success
                    .insert(collector, SystemTime::now());
            }
            Err(err) => {
                *status.poll_errors.entry((collector, err.kind)).or_default() += 1;
                status.last_error = Some(err.kind);
                drop(status);
                if let Some(suppressed) = self.warn.should_log() {
                    tracing::warn!(
                        target_name = %self.target.name,
                        target_addr = %self.target.description,
                        collector = collector.as_str(),
                        kind = err.kind.as_str(),
                        error = %err.detail,
                        suppressed,
                        "Poll failed"
                    );
                }
            }
        }
    }

    /// One poll of every collector. Returns whether the target is up.
    async fn poll(&mut self) -> bool {
        lock(&self.status).polls += 1;
        let primary = self.primary_database();
        let started = Instant::now();
        let connected = self.connect_primary(&primary).await;
        self.record(CollectorName::Connect, started, &connected);
        if connected.is_err() {
            let mut status = lock(&self.status);
            if status.up {
                tracing::warn!(target_name = %self.target.name, target_addr = %self.target.description, "Target is down");
            }
            status.up = false;
            return false;
        }
        {
            let mut status = lock(&self.status);
            if !status.up {
                tracing::info!(target_name = %self.target.name, target_addr = %self.target.description, "Target is up");
            }
            status.up = true;
            status.last_success = Some(SystemTime::now());
        }

        let started = Instant::now();
        let result = self.poll_activity(&primary).await;
        self.record(CollectorName::Activity, started, &result);

        let started = Instant::now();
        let result = self.poll_database(&primary).await;
        self.record(CollectorName::Database, started, &result);

        let started = Instant::now();
        let result = self.poll_schemas(&primary).await;
        self.record(CollectorName::SchemaStats, started, &result);

        if self.size_cycle.is_some() || Instant::now() >= self.next_size_cycle {
            let started = Instant::now();
            let result = self.poll_sizes().await;
            self.record(CollectorName::Sizes, started, &result);
        }
        if self.target.statements && Instant::now() >= self.statements_next_check {
            let started = Instant::now();
            let result = self.poll_statements(&primary).await;
            self.record_statements(started, result);
        }
        // Only a lost primary session makes the target down; a failing
        // collector is counted but the others still report.
        !self
            .sessions
            .get(&primary)
            .is_none_or(|s| s.client.is_closed())
    }

    async fn connect_primary(&mut self, primary: &str) -> Result<(), PollError> {
        let rows = self.query(primary, queries::SETTINGS_SQL, &[]).await?;
        let row = rows.first().ok_or(PollError {
            kind: PollErrorKind::Query,
            detail: "settings query returned no row".into(),
        })?;
        let read = || -> Result<(i64, i64, String, bool), tokio_postgres::Error> {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        };
        let (max, reserved, version, in_recovery) =
            read().map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
        let mut status = lock(&self.status);
        status.max_connections = Some(max.max(0) as u64);
        status.reserved_connections = Some(reserved.max(0) as u64);
        status.server_version = Some(version);
        status.in_recovery = Some(in_recovery);
        Ok(())
    }

    async fn poll_activity(&mut self, primary: &str) -> Result<(), PollError> {
        // Our own sessions, by process id (the activity query's own
        // session among them once it is open).
        self.session(primary).await?;
        let own: Vec<i32> = self.sessions.values().map(|s| s.pid).collect();
        let rows = self.query(primary, queries::ACTIVITY_SQL, &[&own]).await?;
        let snapshot = queries::activity_from_rows(&rows, &self.attribution)
            .map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
        lock(&self.status).activity = Some(Arc::new(snapshot));
        Ok(())
    }

    async fn poll_database(&mut self, primary: &str) -> Result<(), PollError> {
        let rows = self.query(primary, queries::DATABASE_SQL, &[]).await?;
        let databases = queries::databases_from_rows(&rows)
            .map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
        lock(&self.status).databases = Some(Arc::new(databases));
        // A standby has no standbys of its own to report (cascading ones
        // are reported by the standby they stream from, if watched).
        let replicas = if lock(&self.status).in_recovery == Some(true) {
            BTreeMap::new()
        } else {
            let rows = self.query(primary, queries::REPLICATION_SQL, &[]).await?;
            queries::replicas_from_rows(&rows)
                .map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?
        };
        lock(&self.status).replicas = Some(Arc::new(replicas));
        Ok(())
    }

    /// The databases to watch now.
    async fn watched_databases(&mut self, primary: &str) -> Result<Vec<String>, PollError> {
        match &self.target.databases {
            DatabaseSelection::Dsn => Ok(vec![primary.to_owned()]),
            DatabaseSelection::List(list) => Ok(list.clone()),
            DatabaseSelection::All(cap) => {
                let cap = *cap as i64;
                let rows = self
                    .query(primary, queries::DATABASE_LIST_SQL, &[&cap])
                    .await?;
                rows.iter()
                    .map(|row| row.try_get::<_, String>(0))
                    .collect::<Result<_, _>>()
                    .map_err(|err| PollError::from_pg(err, PollErrorKind::Query))
            }
        }
    }

    async fn poll_schemas(&mut self, primary: &str) -> Result<(), PollError> {
        let databases = self.watched_databases(primary).await?;
        // Close sessions on databases no longer watched (dropped, or over the cap).
        self.sessions
            .retain(|name, _| name == primary || databases.contains(name));
        let mut totals = BTreeMap::new();
        let mut first_error = None;
        for database in &databases {
            match self.query(database, queries::SCHEMA_STATS_SQL, &[]).await {
                Ok(rows) => {
                    let max = self.target.max_tenants;
                    if let Err(err) = queries::add_schema_rows(
                        &mut totals,
                        database,
                        &rows,
                        &self.attribution,
                        max,
                    ) {
                        first_error.get_or_insert(PollError::from_pg(err, PollErrorKind::Query));
                    }
                }
                // One database failing does not hide the others.
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        {
            let mut status = lock(&self.status);
            status.schemas = Some(Arc::new(totals));
            status.watched_databases = databases;
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn poll_statements(&mut self, primary: &str) -> Result<(), PollError> {
        let with_text = self.target.statements_text;
        let rows = self
            .query(primary, statements::STATEMENTS_SQL, &[&with_text])
            .await?;
        let rows = statements::rows_from(&rows)
            .map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
        let figures = self
            .statements
            .update(&rows, &self.attribution, self.target.max_tenants);
        lock(&self.status).statements = Some(Arc::new(figures));
        Ok(())
    }

    /// As [`Poller::record`], except that a missing extension is counted and
    /// logged once, and only looked for again after [`STATEMENTS_RECHECK`].
    fn record_statements(&mut self, started: Instant, result: Result<(), PollError>) {
        match result {
            Err(err) if err.kind == PollErrorKind::ExtensionMissing => {
                self.statements_next_check = Instant::now() + STATEMENTS_RECHECK;
                if !self.statements_missing {
                    self.statements_missing = true;
                    let mut status = lock(&self.status);
                    *status
                        .poll_errors
                        .entry((CollectorName::Statements, err.kind))
                        .or_default() += 1;
                    status.statements = None;
                    drop(status);
                    tracing::info!(
                        target_name = %self.target.name,
                        target_addr = %self.target.description,
                        error = %err.detail,
                        "pg_stat_statements is not available: no server-side statement figures (set statements = \"off\" to stop looking)"
                    );
                }
            }
            result => {
                if self.statements_missing && result.is_ok() {
                    tracing::info!(target_name = %self.target.name, "pg_stat_statements is available");
                }
                self.statements_missing = false;
                self.record(CollectorName::Statements, started, &result);
            }
        }
    }

    /// Measures the next batch of exact sizes. A cycle lists every relation
    /// once, then measures `size_batch` of them per poll, so no poll stats
    /// every relation file; the per-tenant sums are published when the
    /// cycle completes.
    async fn poll_sizes(&mut self) -> Result<(), PollError> {
        if self.size_cycle.is_none() {
            let databases = lock(&self.status).watched_databases.clone();
            let mut pending = Vec::new();
            // The same listing gives each tenant's tables, for drift.
            let mut tables = queries::TableSets::default();
            for database in databases {
                let rows = self
                    .query(&database, queries::SIZE_RELATIONS_SQL, &[])
                    .await?;
                for row in rows {
                    let read = || -> Result<(i64, String, String), tokio_postgres::Error> {
                        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                    };
                    let (oid, schema, table) =
                        read().map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
                    if self.attribution.schema_tenant(&database, &schema).is_some() {
                        tables.add(&self.attribution, &database, &schema, &table);
                        pending.push((database.clone(), oid, schema));
                    }
                }
            }
            lock(&self.status).schema_drift = Some(Arc::new(tables.drift()));
            pending.reverse();
            self.size_cycle = Some(SizeCycle {
                pending,
                sizes: BTreeMap::new(),
                relation_sizes: HashMap::new(),
            });
            self.next_size_cycle = Instant::now() + self.target.size_interval;
        }
        let Some(mut cycle) = self.size_cycle.take() else {
            return Ok(());
        };
        // One batch per poll, from one database.
        let Some(database) = cycle.pending.last().map(|(db, _, _)| db.clone()) else {
            self.last_relation_sizes = cycle.relation_sizes;
            lock(&self.status).exact_sizes = Some(Arc::new(cycle.sizes));
            return Ok(());
        };
        let mut batch: Vec<(i64, String)> = Vec::new();
        while batch.len() < self.target.size_batch {
            match cycle.pending.last() {
                Some((db, _, _)) if *db == database => {
                    let (_, oid, schema) = cycle.pending.pop().unwrap_or_default();
                    batch.push((oid, schema));
                }
                _ => break,
            }
        }
        let oids: Vec<i64> = batch.iter().map(|(oid, _)| *oid).collect();
        let result = self
            .query(&database, queries::SIZE_BATCH_SQL, &[&oids])
            .await;
        match result {
            Ok(rows) => {
                let mut measured: HashMap<i64, u64> = HashMap::with_capacity(rows.len());
                for row in rows {
                    if let (Ok(oid), Ok(bytes)) =
                        (row.try_get::<_, i64>(0), row.try_get::<_, i64>(1))
                    {
                        measured.insert(oid, bytes.max(0) as u64);
                    }
                }
                for (oid, schema) in &batch {
                    let key = (database.clone(), *oid);
                    // Not measured: under an ACCESS EXCLUSIVE lock (skipped
                    // so that the poll does not queue behind it) or dropped
                    // since the listing. Either way its last known size
                    // stands in: a dropped relation leaves the next listing,
                    // a locked one is measured again once the lock goes.
                    let Some(bytes) = measured
                        .get(oid)
                        .or_else(|| self.last_relation_sizes.get(&key))
                        .copied()
                    else {
                        continue;
                    };
                    cycle.relation_sizes.insert(key, bytes);
                    if let Some(tenant) = self.attribution.schema_tenant(&database, schema) {
                        let tenant =
                            queries::capped_tenant(&cycle.sizes, tenant, self.target.max_tenants);
                        *cycle.sizes.entry(tenant).or_default() += bytes;
                    }
                }
            }
            Err(err) => {
                // Locked or slow relations: this cycle's sums would miss the
                // batch and undercount, so the cycle is abandoned and the
                // last complete one stays published; the error is counted
                // (`collector="sizes"`) and the next cycle starts on time.
                drop(cycle);
                return Err(err);
            }
        }
        if cycle.pending.is_empty() {
            self.last_relation_sizes = cycle.relation_sizes;
            lock(&self.status).exact_sizes = Some(Arc::new(cycle.sizes));
        } else {
            self.size_cycle = Some(cycle);
        }
        Ok(())
    }
}
