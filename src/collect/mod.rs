//! PostgreSQL collectors: two tasks per target publish what they see as a
//! [`crate::store::TargetStatus`] that readers copy. The cluster task polls
//! settings, activity, `pg_stat_database`, replication and
//! `pg_stat_statements` on one session every `poll_interval`; the
//! [`detail`] task visits each watched database in turn for its schema
//! statistics, sizes and tables. [`pgbouncer`] does the same for PgBouncer
//! admin consoles.
//!
//! Discipline, because the database we watch must never suffer for it:
//! - at most `max_sessions` connections per target (2 by default: one per
//!   task), opened once and reused; a session is only replaced after it
//!   failed, or moved to the next database by the detail task;
//! - `application_name=tenantwatch`, `statement_timeout` and `lock_timeout`
//!   set on the session, plus a client deadline one second longer, after which
//!   the query is cancelled and the connection dropped;
//! - polls run one after another in each task, so one never starts while
//!   the previous is still running; the interval delays instead of bursting;
//! - a failure is data: `up` 0, a counted error kind, a rate-limited log
//!   line; reconnects back off exponentially, capped at the poll interval;
//! - readers (the `/metrics` scrape) never query PostgreSQL.

pub mod counters;
pub mod detail;
pub mod guard;
pub mod pgbouncer;
pub mod queries;
pub mod settings;
pub mod statements;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::time::MissedTickBehavior;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::attribution::Attribution;
use crate::store::targets::carry_over;
use crate::store::{CollectorName, DatabaseStats, PollErrorKind, SharedStatus, lock};
use crate::telemetry::RateLimitedWarn;
pub use settings::{
    DatabaseSelection, Dsn, PgBouncerSettings, StatementsMode, TargetConfig, TargetSettings,
};

/// The key a tenant's figures go under in a per-tenant map of at most
/// `max_tenants` keys: its own while there is room, else the overflow
/// bucket. Tenants from PostgreSQL (schemas, databases) are not admitted by
/// the event store, so their maps are capped here, like every map keyed by
/// outside data.
pub fn capped_tenant<V>(map: &BTreeMap<String, V>, tenant: String, max_tenants: usize) -> String {
    if map.len() < max_tenants || map.contains_key(&tenant) {
        tenant
    } else {
        crate::event::OVERFLOW_TENANT.to_owned()
    }
}

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

/// The process ids of every session tenantwatch holds on a target (both of
/// its tasks): its own backends are recognised by them, not by
/// `application_name`, which any client can set. A session dropped without
/// [`Session::close`] (a statement that outlived its deadline) is marked
/// with the time it was dropped: its backend may run on, and stays ours
/// until an activity read no longer lists it, or [`DROPPED_KEPT`] at most
/// (then the pid may be a new client's).
type OwnPids = Arc<std::sync::Mutex<BTreeMap<i32, Option<Instant>>>>;

/// How long a dropped session's pid stays ours at most.
const DROPPED_KEPT: Duration = Duration::from_secs(60);

/// Held (shared) by the detail task from the moment it connects until its
/// new session's pid is in [`OwnPids`], and (exclusive) by the cluster task
/// while it reads `pg_stat_activity`: a session of ours that the server
/// already lists but whose pid we do not know yet would otherwise be counted
/// as a client's idle session.
type Opening = Arc<tokio::sync::RwLock<()>>;

/// The cluster task's session, lent to the detail task to confirm that a
/// backend it closed has left the server before it opens the next one.
/// Weak: it lends nothing once the cluster task's session is gone.
type Witness = Arc<std::sync::Mutex<std::sync::Weak<Client>>>;

/// How long a closed session may take to end, on our side and then on the
/// server's.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// One open session on one database of the target.
struct Session {
    client: Arc<Client>,
    /// `None` once [`Session::close`] took it to wait for it.
    connection: Option<tokio::task::JoinHandle<()>>,
    pid: i32,
    own_pids: OwnPids,
}

impl Session {
    /// Ends an idle session the way a client should: the client goes, so
    /// its connection sends Terminate and closes the socket, and this waits
    /// for that to be done. The server then ends the backend at once,
    /// instead of logging an unexpected EOF.
    ///
    /// The backend leaves `pg_stat_activity` (and frees its connection
    /// slot) only when its process gets round to it, which on a busy server
    /// can be after a new session has started. With a `witness` session,
    /// this also waits until the old backend is gone, so that the server
    /// never counts more than `max_sessions` of ours. Both waits together
    /// last at most [`CLOSE_WAIT`].
    async fn close(mut self, witness: Option<Arc<Client>>) {
        let connection = self.connection.take();
        let pid = self.pid;
        // Ours until the server no longer lists it, not from the drop on
        // (the drop leaves the pid when the connection is taken): an
        // activity read in between would count it as a client's.
        let own_pids = self.own_pids.clone();
        drop(self);
        let ended = async {
            if let Some(connection) = connection {
                let _ = connection.await;
            }
            let Some(witness) = witness else { return };
            loop {
                let gone = witness
                    .query_one(
                        "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)",
                        &[&pid],
                    )
                    .await
                    .and_then(|row| row.try_get::<_, bool>(0));
                // An error says nothing about the old backend: stop asking.
                if gone.unwrap_or(true) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, ended).await;
        own_pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&pid);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session that `close` took keeps its pid until it has gone; one
        // dropped keeps it until the activity read sees it gone.
        if let Some(connection) = &self.connection {
            connection.abort();
            if let Some(dropped) = self
                .own_pids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(&self.pid)
            {
                *dropped = Some(Instant::now());
            }
        }
    }
}

/// Runs a target's two tasks until `shutdown`: the cluster task (one
/// session: settings, activity, `pg_stat_database`, replication,
/// statements, guard orders) every `poll_interval`, and the detail task (the
/// other `max_sessions - 1` sessions) that visits each watched database in
/// turn for its schema statistics, sizes and tables. Activity never waits
/// for per-database work.
pub async fn run_target(
    target: TargetConfig,
    attribution: Arc<Attribution>,
    status: SharedStatus,
    guard: guard::GuardInbox,
    shutdown: CancellationToken,
) {
    let tls = match tls::connector(target.settings.tls_ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(err) => {
            // Validated at start-up; only a CA file changed since can get here.
            tracing::error!(target_name = %target.settings.name, error = %err, "Target disabled: TLS set-up failed");
            lock(&status).last_error = Some(PollErrorKind::Connect);
            return;
        }
    };
    let own_pids = OwnPids::default();
    let opening = Opening::default();
    let witness = Witness::default();
    let detail_sessions = target.settings.max_sessions.saturating_sub(1).max(1);
    let shared = PollerShared {
        attribution,
        status,
        own_pids,
        opening,
        witness,
    };
    let cluster = Poller::new(tls.clone(), target.clone(), shared.clone(), Task::Cluster);
    let detail = Poller::new(
        tls,
        target,
        shared,
        Task::Detail {
            sessions: detail_sessions,
        },
    );
    tokio::join!(
        run_cluster(cluster, guard, shutdown.clone()),
        detail::run(detail, shutdown),
    );
}

/// The cluster task's loop.
async fn run_cluster(
    mut poller: Poller,
    mut guard: guard::GuardInbox,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(poller.target.settings.poll_interval);
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
            backoff = (backoff * 2).min(poller.target.settings.poll_interval);
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

struct Poller {
    /// Used unless the DSN says `sslmode=disable`.
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    target: TargetConfig,
    attribution: Arc<Attribution>,
    status: SharedStatus,
    /// Open sessions by database name, at most [`Poller::session_limit`].
    sessions: HashMap<String, Session>,
    own_pids: OwnPids,
    opening: Opening,
    witness: Witness,
    /// The cluster task lends its session as the witness; the detail task
    /// borrows it.
    task: Task,
    warn: RateLimitedWarn,
    statements: statements::StatementAccounts,
    /// Databases still to measure with `pg_database_size` in this round.
    database_size_queue: Vec<String>,
    database_size_next: Instant,
    /// `pg_stat_statements` is read again from then on (later while it is
    /// missing, so that a target without it sees no retry storm).
    statements_next_check: Instant,
    /// The extension was missing at the last check (counted and logged once).
    statements_missing: bool,
    /// `pg_stat_database` as the server last showed it (what is published
    /// is carried over its resets).
    database_raw: BTreeMap<String, DatabaseStats>,
}

/// How long a target without `pg_stat_statements` waits before it is
/// looked for again.
const STATEMENTS_RECHECK: Duration = Duration::from_secs(10 * 60);

/// Which of a target's two tasks a [`Poller`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Task {
    /// One session, on the primary database.
    Cluster,
    /// Up to `sessions` sessions, moved from database to database.
    Detail { sessions: usize },
}

/// What a target's two pollers share: the tenant rules, the status they
/// publish, and the bookkeeping of tenantwatch's own sessions.
#[derive(Clone)]
struct PollerShared {
    attribution: Arc<Attribution>,
    status: SharedStatus,
    own_pids: OwnPids,
    opening: Opening,
    witness: Witness,
}

impl Poller {
    fn new(
        tls: tokio_postgres_rustls::MakeRustlsConnect,
        target: TargetConfig,
        shared: PollerShared,
        task: Task,
    ) -> Poller {
        let PollerShared {
            attribution,
            status,
            own_pids,
            opening,
            witness,
        } = shared;
        Poller {
            tls,
            target,
            attribution,
            status,
            sessions: HashMap::new(),
            own_pids,
            opening,
            witness,
            task,
            warn: RateLimitedWarn::new(Duration::from_secs(60)),
            statements: statements::StatementAccounts::default(),
            database_size_queue: Vec::new(),
            database_size_next: Instant::now(),
            statements_next_check: Instant::now(),
            statements_missing: false,
            database_raw: BTreeMap::new(),
        }
    }

    fn session_limit(&self) -> usize {
        match self.task {
            Task::Cluster => 1,
            Task::Detail { sessions } => sessions,
        }
    }

    fn base_backoff(&self) -> Duration {
        (self.target.settings.poll_interval / 8)
            .clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    fn deadline(&self) -> Duration {
        self.target.settings.statement_timeout + Duration::from_secs(1)
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
            // At most `session_limit()` sessions: one to another database
            // closes before this one opens.
            while self.sessions.len() >= self.session_limit() {
                let Some(other) = self.sessions.keys().next().cloned() else {
                    break;
                };
                if let Some(session) = self.sessions.remove(&other) {
                    let witness = match self.task {
                        Task::Cluster => None,
                        Task::Detail { .. } => self
                            .witness
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .upgrade(),
                    };
                    session.close(witness).await;
                }
            }
            let opening = self.opening.clone();
            let _opening = match self.task {
                // The cluster task never reads activity while it connects.
                Task::Cluster => None,
                Task::Detail { .. } => Some(opening.read().await),
            };
            let mut config = self.target.pg.clone();
            config.dbname(database);
            let within = self.target.settings.connect_timeout + Duration::from_secs(1);
            let (client, connection) = connect(&config, &self.tls, within).await?;
            let setup = format!(
                "SET statement_timeout = {}; SET lock_timeout = {}; SET idle_in_transaction_session_timeout = {};",
                self.target.settings.statement_timeout.as_millis(),
                self.target.settings.lock_timeout.as_millis(),
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
            self.own_pids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(pid, None);
            let client = Arc::new(client);
            if self.task == Task::Cluster {
                *self
                    .witness
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::downgrade(&client);
            }
            let session = Session {
                client,
                connection: Some(connection),
                pid,
                own_pids: self.own_pids.clone(),
            };
            self.sessions.insert(database.to_owned(), session);
        }
        Ok(&*self.sessions[database].client)
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
                status.publish();
                drop(status);
                if let Some(suppressed) = self.warn.should_log() {
                    tracing::warn!(
                        target_name = %self.target.settings.name,
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

    /// One poll of every collector, published as a whole when it ends (the
    /// next scrape encodes afresh). Returns whether the target is up.
    async fn poll(&mut self) -> bool {
        let up = self.poll_collectors().await;
        lock(&self.status).publish();
        up
    }

    async fn poll_collectors(&mut self) -> bool {
        lock(&self.status).polls += 1;
        let primary = self.primary_database();
        let started = Instant::now();
        let connected = self.connect_primary(&primary).await;
        self.record(CollectorName::Connect, started, &connected);
        if connected.is_err() {
            let mut status = lock(&self.status);
            if status.up {
                tracing::warn!(target_name = %self.target.settings.name, target_addr = %self.target.description, "Target is down");
            }
            status.up = false;
            return false;
        }
        {
            let mut status = lock(&self.status);
            if !status.up {
                tracing::info!(target_name = %self.target.settings.name, target_addr = %self.target.description, "Target is up");
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

        if self.target.statements() && Instant::now() >= self.statements_next_check {
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

    fn own_pids(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Option<Instant>>> {
        self.own_pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn poll_activity(&mut self, primary: &str) -> Result<(), PollError> {
        self.session(primary).await?;
        // No session of ours half-registered while the server lists them.
        // Bounded: a connect that hangs (a frozen server) delays this read
        // by a deadline at most, then it goes on without the lock.
        let opening = self.opening.clone();
        let quiet = tokio::time::timeout(self.deadline(), opening.write())
            .await
            .ok();
        // Our own sessions, by process id, of both tasks: those known before
        // the read and after it (one closed meanwhile may still be listed).
        let mut own: BTreeSet<i32> = self.own_pids().keys().copied().collect();
        let rows = self.query(primary, queries::ACTIVITY_SQL, &[]).await;
        drop(quiet);
        let rows = rows?;
        let listed: BTreeSet<i32> = rows
            .iter()
            .filter_map(|row| row.try_get::<_, i32>("pid").ok())
            .collect();
        {
            let mut own_pids = self.own_pids();
            own.extend(own_pids.keys().copied());
            // A dropped session's backend is gone once it is not listed.
            own_pids.retain(|pid, dropped| {
                dropped.is_none_or(|at| listed.contains(pid) && at.elapsed() < DROPPED_KEPT)
            });
        }
        let snapshot = queries::activity_from_rows(&rows, &self.attribution, &own)
            .map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
        lock(&self.status).activity = Some(Arc::new(snapshot));
        Ok(())
    }

    async fn poll_database(&mut self, primary: &str) -> Result<(), PollError> {
        let rows = self.query(primary, queries::DATABASE_SQL, &[]).await?;
        let raw = queries::databases_from_rows(&rows)
            .map_err(|err| PollError::from_pg(err, PollErrorKind::Query))?;
        let published = {
            let status = lock(&self.status);
            let shown = status.databases.as_deref();
            raw.iter()
                .map(|(database, stats)| {
                    let last = self
                        .database_raw
                        .get(database)
                        .zip(shown.and_then(|s| s.get(database)));
                    (database.clone(), carry_over(stats, last))
                })
                .collect()
        };
        self.database_raw = raw;
        lock(&self.status).databases = Some(Arc::new(published));
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
        self.poll_database_sizes(primary).await
    }

    /// `pg_database_size` of the watched databases, rotating in batches of
    /// [`queries::DATABASE_SIZE_BATCH`] per poll, a round every
    /// `size_interval`: the database-per-tenant size from the cluster
    /// session, without visiting each database.
    async fn poll_database_sizes(&mut self, primary: &str) -> Result<(), PollError> {
        if self.database_size_queue.is_empty() {
            if Instant::now() < self.database_size_next {
                return Ok(());
            }
            let watched = lock(&self.status).watched_databases.clone();
            self.database_size_queue = if watched.is_empty() {
                vec![primary.to_owned()]
            } else {
                watched
            };
            self.database_size_next = Instant::now() + self.target.settings.size_interval;
        }
        let take = self
            .database_size_queue
            .len()
            .min(queries::DATABASE_SIZE_BATCH);
        let batch: Vec<String> = self.database_size_queue.drain(..take).collect();
        let rows = self
            .query(primary, queries::DATABASE_SIZE_SQL, &[&batch])
            .await?;
        let mut status = lock(&self.status);
        let mut sizes: BTreeMap<String, u64> = status
            .database_sizes
            .as_deref()
            .cloned()
            .unwrap_or_default();
        // Databases no longer watched leave at the start of a round.
        if take > 0 && self.database_size_queue.is_empty() {
            let watched = &status.watched_databases;
            if !watched.is_empty() {
                sizes.retain(|name, _| watched.contains(name));
            }
        }
        for row in rows {
            if let (Ok(name), Ok(bytes)) = (row.try_get::<_, String>(0), row.try_get::<_, i64>(1)) {
                sizes.insert(name, bytes.max(0) as u64);
            }
        }
        status.database_sizes = Some(Arc::new(sizes));
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

    async fn poll_statements(&mut self, primary: &str) -> Result<(), PollError> {
        let with_text = self.target.settings.statements_text;
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
                        target_name = %self.target.settings.name,
                        target_addr = %self.target.description,
                        error = %err.detail,
                        "pg_stat_statements is not available: no server-side statement figures (set statements = \"off\" to stop looking)"
                    );
                }
            }
            result => {
                if self.statements_missing && result.is_ok() {
                    tracing::info!(target_name = %self.target.settings.name, "pg_stat_statements is available");
                }
                self.statements_missing = false;
                self.record(CollectorName::Statements, started, &result);
            }
        }
    }
}
