//! Start-up, reload and shutdown: the one place that binds listeners,
//! starts every task and stops them again. Wiring only: what each task does
//! lives in its module.
//!
//! [`Daemon::start`] binds every listener before anything is spawned, so a bad
//! address fails start-up instead of a task. Readiness turns true once all are
//! bound. [`Daemon::shutdown`] (or the future given to [`run`]) turns
//! readiness false, stops the listeners and the UDP threads, and lets open
//! HTTP requests finish within `server.shutdown_grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::capacity::{SharedTargetHistories, SharedTenantHistories, TenantHistories};
use crate::collect;
use crate::config::Config;
use crate::detect::guard::GuardOutbox;
use crate::detect::{DetectSettings, Judgement, SharedJudgement};
use crate::http::{self, AppState};
use crate::ingest::udp::{UdpLimits, UdpListener};
use crate::ratelimit::RateLimits;
use crate::store::guard::SharedGuardLog;
use crate::store::{
    IngestStats, MonotonicClock, PgBouncerStatus, PgBouncerStatuses, Store, TargetStatus,
    TargetStatuses,
};

/// Store shards shared by HTTP requests (round robin).
const HTTP_SHARDS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("failed to bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("failed to start the UDP receive threads: {0}")]
    Spawn(std::io::Error),
    #[error("failed to set up the Redis rate-limit backend: {0}")]
    RateLimitBackend(redis::RedisError),
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    http_addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    udp_addr: Option<SocketAddr>,
    store: Arc<Store>,
    target_statuses: TargetStatuses,
    judgement: SharedJudgement,
    state: Arc<AppState>,
    /// Whether the last configuration reload applied.
    reloads: crate::metrics::ReloadMetrics,
    /// The configuration started with, to name what a reload cannot apply.
    started: Config,
    rate_limits: Arc<RateLimits>,
    detect_settings: tokio::sync::watch::Sender<DetectSettings>,
    shutdown: CancellationToken,
    supervisor: JoinHandle<()>,
}

/// The listeners, bound before anything is spawned.
struct Listeners {
    http: TcpListener,
    http_addr: SocketAddr,
    udp: Option<UdpListener>,
    /// Envoy's rate-limit service, with `ratelimit.grpc_listen`.
    grpc: Option<crate::rls::GrpcListener>,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Listeners, DaemonError> {
        let listen = config.settings.server.listen;
        let http_bind_error = |source| DaemonError::Bind {
            what: "HTTP",
            addr: listen,
            source,
        };
        let http = TcpListener::bind(listen).await.map_err(http_bind_error)?;
        let http_addr = http.local_addr().map_err(http_bind_error)?;
        let ingest = &config.settings.ingest;
        let udp = match ingest.udp_listen {
            Some(addr) => Some(
                UdpListener::bind(addr, ingest.udp_recv_buffer_bytes).map_err(|source| {
                    DaemonError::Bind {
                        what: "UDP",
                        addr,
                        source,
                    }
                })?,
            ),
            None => None,
        };
        let grpc =
            match config.settings.ratelimit.grpc_listen {
                Some(addr) => Some(crate::rls::GrpcListener::bind(addr).await.map_err(
                    |source| DaemonError::Bind {
                        what: "gRPC",
                        addr,
                        source,
                    },
                )?),
                None => None,
            };
        Ok(Listeners {
            http,
            http_addr,
            udp,
            grpc,
        })
    }
}

/// The stores and readers' shared state, built once and handed to the tasks.
struct Shared {
    store: Arc<Store>,
    stats: Arc<IngestStats>,
    targets: TargetStatuses,
    pgbouncers: PgBouncerStatuses,
    limits: Arc<RateLimits>,
    judgement: SharedJudgement,
    histories: SharedTargetHistories,
    tenant_histories: SharedTenantHistories,
    guard_log: SharedGuardLog,
    capacity_figures: crate::capacity::view::SharedCapacityFigures,
}

impl Shared {
    fn new(config: &Config, udp_receivers: usize) -> Result<Shared, DaemonError> {
        let targets = config
            .targets
            .iter()
            .map(|t| {
                let mut status =
                    TargetStatus::new(&t.settings.name, &t.description, t.settings.schema_detail);
                status.group = t.settings.group.clone();
                Arc::new(Mutex::new(status))
            })
            .collect();
        let mut limits = RateLimits::new(
            config.ratelimit.clone(),
            config.settings.ingest.max_tenants,
            config.settings.ratelimit.idle_ttl,
        );
        if let Some(settings) = &config.ratelimit_redis {
            let backend = crate::ratelimit::RedisBackend::new(settings.clone())
                .map_err(DaemonError::RateLimitBackend)?;
            limits = limits.with_redis(backend);
        }
        Ok(Shared {
            store: Arc::new(Store::new(
                udp_receivers + HTTP_SHARDS,
                config.settings.ingest.store_limits(),
                Arc::new(MonotonicClock::new()),
            )),
            stats: Arc::new(IngestStats::default()),
            targets: {
                let targets = TargetStatuses::new(targets);
                targets.set_expected(config.expected_tenants.clone());
                targets
            },
            pgbouncers: PgBouncerStatuses::new(
                config
                    .pgbouncers
                    .iter()
                    .map(|p| {
                        Arc::new(Mutex::new(PgBouncerStatus::new(
                            &p.settings.name,
                            &p.description,
                        )))
                    })
                    .collect(),
            ),
            limits: Arc::new(limits),
            judgement: Arc::default(),
            histories: Arc::default(),
            tenant_histories: Arc::new(Mutex::new(TenantHistories::new(
                config.settings.api.history_len(),
                config.settings.api.history_tenants,
            ))),
            guard_log: SharedGuardLog::default(),
            capacity_figures: Default::default(),
        })
    }

    /// What the HTTP handlers share.
    fn app_state(
        &self,
        config: &Config,
        udp_receivers: usize,
        reloads: &crate::metrics::ReloadMetrics,
    ) -> AppState {
        let settings = http::StateSettings {
            server: &config.settings.server,
            ingest: &config.settings.ingest,
            metrics: &config.settings.metrics,
            api: &config.settings.api,
            tokens: config.tokens.clone(),
            tls: config.tls.clone(),
            http_shards: (udp_receivers, HTTP_SHARDS),
        };
        let sources = http::StateSources {
            store: self.store.clone(),
            stats: self.stats.clone(),
            targets: self.targets.clone(),
            pgbouncers: self.pgbouncers.clone(),
            judgement: self.judgement.clone(),
            rate_limits: self.limits.clone(),
            guard_log: self.guard_log.clone(),
            histories: self.histories.clone(),
            tenant_histories: self.tenant_histories.clone(),
            capacity_figures: self.capacity_figures.clone(),
            reloads: reloads.clone(),
        };
        AppState::new(settings, sources)
    }
}

/// The async tasks (and their settings channel), started once.
struct Tasks {
    handles: Vec<JoinHandle<()>>,
    detect_settings: tokio::sync::watch::Sender<DetectSettings>,
    /// Fires once the detector has published its first judgement (with
    /// the Redis backend: after its first exchange with the fleet).
    first_judgement: tokio::sync::oneshot::Receiver<()>,
}

impl Tasks {
    fn spawn(config: &Config, shared: &Shared, shutdown: &CancellationToken) -> Tasks {
        let attribution = Arc::new(config.attribution.clone());
        // Guard orders go from the detector to each target's poller.
        let mut guard_outbox = GuardOutbox {
            log: shared.guard_log.clone(),
            ..GuardOutbox::default()
        };
        let mut handles: Vec<JoinHandle<()>> = config
            .targets
            .iter()
            .zip(shared.targets.handles())
            .map(|(target, status)| {
                let (sender, orders) = tokio::sync::mpsc::channel(collect::guard::ORDER_QUEUE);
                guard_outbox
                    .senders
                    .insert(target.settings.name.clone(), sender);
                let inbox = collect::guard::GuardInbox {
                    orders,
                    log: shared.guard_log.clone(),
                };
                tokio::spawn(collect::run_target(
                    target.clone(),
                    attribution.clone(),
                    status.clone(),
                    inbox,
                    shutdown.clone(),
                ))
            })
            .collect();
        handles.extend(
            config
                .pgbouncers
                .iter()
                .zip(shared.pgbouncers.handles())
                .map(|(pgbouncer, status)| {
                    tokio::spawn(collect::pgbouncer::run_pgbouncer(
                        pgbouncer.clone(),
                        attribution.clone(),
                        status.clone(),
                        shutdown.clone(),
                    ))
                }),
        );
        let sampler = crate::capacity::sampler::Sampler {
            settings: config.settings.api.clone(),
            store: shared.store.clone(),
            statuses: shared.targets.clone(),
            histories: shared.histories.clone(),
            tenant_histories: shared.tenant_histories.clone(),
            figures: shared.capacity_figures.clone(),
        };
        handles.push(tokio::spawn(crate::capacity::sampler::run(
            sampler,
            shutdown.clone(),
        )));
        let (detect_settings, detect_settings_rx) =
            tokio::sync::watch::channel(config.detect.clone());
        let (first_judgement_tx, first_judgement) = tokio::sync::oneshot::channel();
        let detect_task = crate::detect::task::DetectTask {
            settings: detect_settings_rx,
            store: shared.store.clone(),
            statuses: shared.targets.clone(),
            pgbouncers: shared.pgbouncers.clone(),
            limits: shared.limits.clone(),
            judgement: shared.judgement.clone(),
            guard_outbox,
            first_judgement: Some(first_judgement_tx),
        };
        handles.push(tokio::spawn(crate::detect::task::run(
            detect_task,
            shutdown.clone(),
        )));
        handles.push(tokio::spawn(evict_idle_tenants(
            shared.store.clone(),
            config.settings.ingest.tenant_idle_ttl,
            shutdown.clone(),
        )));
        handles.push(tokio::spawn(release_free_pages(shutdown.clone())));
        Tasks {
            handles,
            detect_settings,
            first_judgement,
        }
    }
}

/// Marks the daemon ready. With the Redis backend, not before its first
/// judgement (its first exchange with the fleet: the other replicas' figures
/// and advice are loaded, so a new pod in a rolling update never answers on
/// its own figures alone), or three detection intervals, whichever comes
/// first: a Redis that is down delays readiness, never blocks it (checks
/// then follow `ratelimit.redis.fail_mode`).
async fn hold_readiness(
    config: &Config,
    shared: &Shared,
    state: Arc<http::AppState>,
    first_judgement: tokio::sync::oneshot::Receiver<()>,
    grpc_health: Option<crate::rls::Health>,
    shutdown: &CancellationToken,
) {
    let mark_ready = |state: Arc<http::AppState>, health: Option<crate::rls::Health>| async move {
        state.listener.ready.store(true, Ordering::Relaxed);
        // Envoy's health checks of the gRPC service follow `/readyz`.
        if let Some(health) = &health {
            health.set_serving(true);
        }
    };
    if shared.limits.redis().is_none() {
        mark_ready(state, grpc_health).await;
        return;
    }
    let bound = config.detect.interval * 3;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::timeout(bound, first_judgement) => {}
        }
        if !shutdown.is_cancelled() {
            mark_ready(state, grpc_health).await;
        }
    });
}

/// Loads what the state file kept into the shared parts, and hands the
/// restored advice to the limiter so it holds from the first check, before
/// any evaluation.
fn restore_state(config: &Config, shared: &Shared) -> crate::state::Persisted {
    let persisted = crate::state::Persisted {
        judgement: shared.judgement.clone(),
        histories: shared.histories.clone(),
        tenant_histories: shared.tenant_histories.clone(),
        targets: shared.targets.clone(),
    };
    crate::state::load_into(
        &config.settings.state,
        &persisted,
        config.settings.api.history_len(),
    );
    let restored = crate::detect::read_judgement(&shared.judgement);
    shared.limits.set_advice(
        restored
            .advice
            .iter()
            .map(|a| (a.tenant.clone(), a.effective_qps))
            .collect(),
    );
    persisted
}

/// Starts Envoy's rate-limit service on its bound listener.
fn spawn_grpc(
    grpc: crate::rls::GrpcListener,
    config: &Config,
    shared: &Shared,
    state: &Arc<AppState>,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let rls = Arc::new(crate::rls::RlsState {
        limits: shared.limits.clone(),
        app: state.clone(),
        settings: config.settings.ratelimit.rls.clone(),
    });
    tokio::spawn(crate::rls::serve(grpc, rls, stop.clone()))
}

impl Daemon {
    /// Binds every listener, then starts the server, the UDP receive threads,
    /// the pollers, the detector and the housekeeping tasks.
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        let listeners = Listeners::bind(&config).await?;
        let http_addr = listeners.http_addr;
        let udp_addr = listeners.udp.as_ref().map(|u| u.local_addr);
        let udp_receivers = match listeners.udp {
            Some(_) => config.settings.ingest.udp_receivers,
            None => 0,
        };
        let shared = Shared::new(&config, udp_receivers)?;
        let persisted = restore_state(&config, &shared);
        let reloads = crate::metrics::ReloadMetrics::default();
        let state = Arc::new(shared.app_state(&config, udp_receivers, &reloads));
        // `shutdown` is the request; `stop` is what the tasks obey, once
        // readiness has been false for `server.shutdown_delay`.
        let shutdown = CancellationToken::new();
        let stop = CancellationToken::new();
        let udp_threads = match listeners.udp {
            Some(udp) => {
                udp.publish_socket_figures(&shared.stats);
                let limits = UdpLimits {
                    max_datagram_bytes: config.settings.ingest.max_datagram_bytes,
                    lines: config.settings.ingest.line_limits(),
                    sources: Arc::new(config.settings.ingest.source_filter()),
                };
                let (store, stats) = (shared.store.clone(), shared.stats.clone());
                udp.spawn(udp_receivers, 0, limits, store, stats, stop.clone())
                    .map_err(DaemonError::Spawn)?
            }
            None => Vec::new(),
        };
        let server = tokio::spawn(http::serve(listeners.http, state.clone(), stop.clone()));
        let grpc_addr = listeners.grpc.as_ref().map(|g| g.addr);
        let grpc_health = listeners.grpc.as_ref().map(|g| g.health.clone());
        let grpc_server = listeners
            .grpc
            .map(|grpc| spawn_grpc(grpc, &config, &shared, &state, &stop));
        let mut tasks = Tasks::spawn(&config, &shared, &stop);
        tasks.handles.push(tokio::spawn(crate::state::run(
            config.settings.state.clone(),
            persisted,
            stop.clone(),
        )));
        hold_readiness(
            &config,
            &shared,
            state.clone(),
            tasks.first_judgement,
            grpc_health.clone(),
            &shutdown,
        )
        .await;
        tracing::info!(
            http = %http_addr,
            grpc = ?grpc_addr,
            udp = ?udp_addr,
            targets = config.targets.len(),
            "tenantwatch is listening"
        );

        let token = shutdown.clone();
        let handles = tasks.handles;
        let state_for_reload = state.clone();
        let delay = config.settings.server.shutdown_delay;
        let supervisor = tokio::spawn(async move {
            token.cancelled().await;
            state.listener.ready.store(false, Ordering::Relaxed);
            if let Some(health) = &grpc_health {
                health.set_serving(false);
            }
            tracing::info!(delay = ?delay, "Shutting down: not ready, still serving");
            tokio::time::sleep(delay).await;
            stop.cancel();
            tracing::info!("Shutting down: draining connections");
            let _ = server.await;
            if let Some(grpc_server) = grpc_server {
                let _ = grpc_server.await;
            }
            for handle in handles {
                let _ = handle.await;
            }
            // The receive threads notice the token within their poll interval.
            let _ = tokio::task::spawn_blocking(move || {
                for thread in udp_threads {
                    let _ = thread.join();
                }
            })
            .await;
            tracing::info!("Shutdown complete");
        });

        Ok(Daemon {
            http_addr,
            grpc_addr,
            udp_addr,
            store: shared.store,
            target_statuses: shared.targets,
            judgement: shared.judgement,
            rate_limits: shared.limits,
            detect_settings: tasks.detect_settings,
            shutdown,
            supervisor,
            state: state_for_reload,
            reloads,
            started: config,
        })
    }

    /// Address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address the gRPC rate-limit service is bound to, if it is on.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// Address the UDP listener is bound to, if UDP is on.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The tenant store, for in-process readers (the demo's live table).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// What each PostgreSQL target's collectors last saw, in config order.
    pub fn target_statuses(&self) -> &TargetStatuses {
        &self.target_statuses
    }

    /// The detector's last flags and advice.
    pub fn judgement(&self) -> Arc<Judgement> {
        crate::detect::read_judgement(&self.judgement)
    }

    /// The rate limiters.
    pub fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.rate_limits
    }

    /// Applies what can change without a restart: quotas, tiers, per-tenant
    /// overrides, detection rules, the expected tenants and the write and
    /// read tokens. Listeners,
    /// targets and ingest limits keep their start-up values; a warning names
    /// each changed key that would need a restart. Returns those keys.
    pub fn reload(&self, config: &Config) -> Vec<String> {
        self.rate_limits.set_policy(config.ratelimit.clone());
        // The window is the store's (`ingest.share_window`), fixed at start.
        self.detect_settings.send_replace(DetectSettings {
            window: self.started.detect.window,
            ..config.detect.clone()
        });
        self.target_statuses
            .set_expected(config.expected_tenants.clone());
        self.state.listener.tokens.set(config.tokens.clone());
        // A renewed certificate serves from the next connection on; turning
        // TLS on or off needs a restart (clients would break mid-flight).
        if self.started.tls.is_some() == config.tls.is_some() {
            self.state.listener.tls.set(config.tls.clone());
        }
        let ignored = self.started.restart_only_changes(config);
        if !ignored.is_empty() {
            tracing::warn!(
                keys = %ignored.join(", "),
                "Reload cannot apply these changed keys; they take effect at the next restart"
            );
        }
        tracing::info!(
            tiers = config.ratelimit.tiers.len(),
            tenant_overrides = config.ratelimit.tenants.len(),
            "Configuration reloaded: quotas, detection rules and tokens"
        );
        self.reloads.succeeded();
        ignored
    }

    /// Records a reload refused for an invalid file (the running
    /// configuration stays): `tenantwatch_config_last_reload_successful` 0.
    pub fn reload_refused(&self) {
        self.reloads.failed();
    }

    /// Starts a graceful shutdown; [`Daemon::wait`] returns when it is done.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the daemon has shut down.
    pub async fn wait(self) {
        let _ = self.supervisor.await;
    }
}

/// Runs the daemon until `shutdown` completes, then shuts it down gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    run_with_reload(config, None, shutdown).await
}

/// As [`run`]; on SIGHUP, re-reads `config_path` and applies its quotas and
/// detection rules. An invalid file is refused with an error log and the
/// running configuration stays.
pub async fn run_with_reload(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    // Installed before start-up: SIGHUP's default action would kill a daemon
    // still binding its listeners. One that arrives early is served below.
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(err) => {
            tracing::warn!(error = %err, "Cannot listen for SIGHUP; reload is off");
            None
        }
    };
    let daemon = Daemon::start(config).await?;
    tokio::pin!(shutdown);
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup => {
                let Some(path) = &config_path else {
                    tracing::warn!("SIGHUP: started without --config, nothing to reload");
                    continue;
                };
                match Config::load(path) {
                    Ok(config) => {
                        daemon.reload(&config);
                    }
                    Err(err) => {
                        daemon.reload_refused();
                        tracing::error!(
                            path = %path.display(),
                            error = %err,
                            "Reload refused: the running configuration stays"
                        );
                    }
                }
            }
        }
    }
    daemon.shutdown();
    daemon.wait().await;
    Ok(())
}

/// Gives the allocator's free pages back to the kernel every
/// [`crate::heap::RELEASE_INTERVAL`], on a blocking thread (the walk locks
/// each heap in turn).
async fn release_free_pages(shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(crate::heap::RELEASE_INTERVAL);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {
                if let Ok((took, released)) =
                    tokio::task::spawn_blocking(crate::heap::release_free_pages).await
                {
                    tracing::trace!(?took, released, "Gave free heap pages back");
                }
            }
        }
    }
}

async fn evict_idle_tenants(store: Arc<Store>, ttl: Duration, shutdown: CancellationToken) {
    let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {
                let evicted = store.evict_idle();
                if evicted > 0 {
                    tracing::debug!(evicted, "Evicted idle tenants");
                }
            }
        }
    }
}
