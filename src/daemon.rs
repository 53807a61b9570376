//! Start-up and shutdown: the one place that binds listeners, starts every
//! task and stops them again.
//!
//! [`Daemon::start`] binds every listener before anything is spawned, so a bad
//! address fails start-up instead of a task. Readiness turns true once all are
//! bound. [`Daemon::shutdown`] (or the future given to [`run`]) turns
//! readiness false, stops the listeners and the UDP threads, and lets open
//! HTTP requests finish within `server.shutdown_grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::capacity::{
    History, SharedTargetHistories, SharedTenantHistories, TargetSample, TenantHistories,
    TenantSample,
};
use crate::collect::{self, SharedStatus, TargetStatus};
use crate::config::Config;
use crate::detect::{DetectSettings, Detector, Judgement, SharedJudgement, Transition};
use crate::ingest::IngestStats;
use crate::ingest::udp::{UdpLimits, UdpListener};
use crate::metrics::{HttpMetrics, UdpSocketInfo};
use crate::ratelimit::RateLimits;
use crate::server::{self, AppState, HttpLimits};
use crate::store::{MonotonicClock, Store, StoreLimits};

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
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    http_addr: SocketAddr,
    udp_addr: Option<SocketAddr>,
    store: Arc<Store>,
    target_statuses: Vec<SharedStatus>,
    judgement: SharedJudgement,
    rate_limits: Arc<RateLimits>,
    detect_settings: tokio::sync::watch::Sender<DetectSettings>,
    shutdown: CancellationToken,
    supervisor: JoinHandle<()>,
}

impl Daemon {
    /// Binds every listener, then starts the server, the UDP receive threads
    /// and the housekeeping task.
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                what: "HTTP",
                addr: config.server.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| DaemonError::Bind {
            what: "HTTP",
            addr: config.server.listen,
            source,
        })?;
        let ingest = &config.ingest;
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
        let udp_addr = udp.as_ref().map(|u| u.local_addr);

        let udp_receivers = if udp.is_some() {
            ingest.udp_receivers
        } else {
            0
        };
        let store = Arc::new(Store::new(
            udp_receivers + HTTP_SHARDS,
            StoreLimits {
                max_tenants: ingest.max_tenants,
                tenant_idle_ttl: ingest.tenant_idle_ttl,
                share_window: ingest.share_window,
            },
            Arc::new(MonotonicClock::new()),
        ));
        let stats = Arc::new(IngestStats::default());
        let http_metrics = HttpMetrics::default();
        let udp_info = udp.as_ref().map(|u| UdpSocketInfo {
            granted_recv_buffer_bytes: u.granted_recv_buffer_bytes,
            inode: u.inode,
        });
        let target_statuses: Vec<SharedStatus> = config
            .targets
            .iter()
            .map(|target| {
                Arc::new(Mutex::new(TargetStatus {
                    name: target.name.clone(),
                    description: target.description.clone(),
                    schema_detail: target.schema_detail,
                    ..TargetStatus::default()
                }))
            })
            .collect();
        let limits = Arc::new(RateLimits::new(
            config.ratelimit.clone(),
            ingest.max_tenants,
            config.ratelimit_idle_ttl,
        ));
        let judgement: SharedJudgement = Arc::default();
        let history_len = (config.api.history.as_secs_f64()
            / config.api.history_resolution.as_secs_f64().max(0.001))
        .ceil() as usize;
        let tenant_histories: SharedTenantHistories = Arc::new(Mutex::new(TenantHistories::new(
            history_len,
            config.api.history_tenants,
        )));
        let histories: SharedTargetHistories = Arc::default();
        let mut registry = crate::metrics::registry(
            store.clone(),
            stats.clone(),
            udp_info,
            &http_metrics,
            target_statuses.clone(),
        );
        registry.register_collector(Box::new(crate::metrics::DetectCollector {
            judgement: judgement.clone(),
            limits: limits.clone(),
        }));
        let state = Arc::new(AppState {
            registry,
            store: store.clone(),
            stats: stats.clone(),
            http_metrics,
            ready: AtomicBool::new(false),
            limits: HttpLimits {
                max_connections: config.server.max_connections,
                header_read_timeout: config.server.header_read_timeout,
                body_read_timeout: config.server.body_read_timeout,
                max_body_bytes: ingest.max_body_bytes,
                max_line_bytes: ingest.max_line_bytes,
                shutdown_grace: config.server.shutdown_grace,
            },
            auth_token: config.server.auth_token.clone(),
            http_shards: (udp_receivers, HTTP_SHARDS),
            rate_limits: limits.clone(),
            judgement: judgement.clone(),
            targets: target_statuses.clone(),
            histories: histories.clone(),
            tenant_histories: tenant_histories.clone(),
            api: config.api.clone(),
            next_shard: AtomicUsize::new(0),
        });

        let shutdown = CancellationToken::new();
        let udp_threads = match udp {
            Some(udp) => udp
                .spawn(
                    udp_receivers,
                    0,
                    UdpLimits {
                        max_datagram_bytes: ingest.max_datagram_bytes,
                        max_line_bytes: ingest.max_line_bytes,
                    },
                    store.clone(),
                    stats,
                    shutdown.clone(),
                )
                .map_err(DaemonError::Spawn)?,
            None => Vec::new(),
        };
        let server = tokio::spawn(server::serve(listener, state.clone(), shutdown.clone()));
        let attribution = Arc::new(config.attribution.clone());
        let pollers: Vec<JoinHandle<()>> = config
            .targets
            .iter()
            .zip(target_statuses.iter())
            .map(|(target, status)| {
                tokio::spawn(collect::run_target(
                    target.clone(),
                    attribution.clone(),
                    status.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        let store_for_readers = store.clone();
        let sampler = tokio::spawn(sample_history(
            config.api.clone(),
            store.clone(),
            target_statuses.clone(),
            (histories.clone(), tenant_histories.clone()),
            shutdown.clone(),
        ));
        let (detect_settings, detect_settings_rx) =
            tokio::sync::watch::channel(config.detect.clone());
        let detector = tokio::spawn(run_detector(
            detect_settings_rx,
            store.clone(),
            target_statuses.clone(),
            limits.clone(),
            judgement.clone(),
            shutdown.clone(),
        ));
        let housekeeping = tokio::spawn(evict_idle_tenants(
            store,
            ingest.tenant_idle_ttl,
            shutdown.clone(),
        ));
        state.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            http = %http_addr,
            udp = ?udp_addr,
            targets = config.targets.len(),
            "tenantwatch is listening"
        );

        let token = shutdown.clone();
        let supervisor = tokio::spawn(async move {
            token.cancelled().await;
            state.ready.store(false, Ordering::Relaxed);
            tracing::info!("Shutting down: draining connections");
            let _ = server.await;
            let _ = housekeeping.await;
            let _ = detector.await;
            let _ = sampler.await;
            for poller in pollers {
                let _ = poller.await;
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
            udp_addr,
            store: store_for_readers,
            target_statuses,
            judgement,
            rate_limits: limits,
            detect_settings,
            shutdown,
            supervisor,
        })
    }

    /// Address the HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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
    pub fn target_statuses(&self) -> &[SharedStatus] {
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
    /// overrides and detection rules. Listeners, targets and ingest limits
    /// keep their start-up values (a warning names what would need a
    /// restart).
    pub fn reload(&self, config: &Config) {
        self.rate_limits.set_policy(config.ratelimit.clone());
        self.detect_settings.send_replace(config.detect.clone());
        tracing::info!(
            tiers = config.ratelimit.tiers.len(),
            tenant_overrides = config.ratelimit.tenants.len(),
            "Configuration reloaded: quotas and detection rules"
        );
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
    let daemon = Daemon::start(config).await?;
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(err) => {
            tracing::warn!(error = %err, "Cannot listen for SIGHUP; reload is off");
            None
        }
    };
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
                    Ok(config) => daemon.reload(&config),
                    Err(err) => tracing::error!(
                        path = %path.display(),
                        error = %err,
                        "Reload refused: the running configuration stays"
                    ),
                }
            }
        }
    }
    daemon.shutdown();
    daemon.wait().await;
    Ok(())
}

/// Evaluates the detection rules every interval, publishes the flags and
/// advice, logs each flag once when raised and once when cleared, and prunes
/// idle rate limiters.
async fn run_detector(
    mut settings: tokio::sync::watch::Receiver<DetectSettings>,
    store: Arc<Store>,
    statuses: Vec<SharedStatus>,
    limits: Arc<RateLimits>,
    judgement: SharedJudgement,
    shutdown: CancellationToken,
) {
    let initial = settings.borrow_and_update().clone();
    let mut interval = tokio::time::interval(initial.interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut detector = Detector::new(initial);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if settings.has_changed().unwrap_or(false) {
            let new = settings.borrow_and_update().clone();
            if new.interval != detector.settings().interval {
                interval = tokio::time::interval(new.interval);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                interval.tick().await;
            }
            detector.set_settings(new);
        }
        let snapshot = store.snapshot();
        let targets: Vec<TargetStatus> =
            statuses.iter().map(|s| collect::lock(s).clone()).collect();
        let policy = limits.policy();
        let transitions = detector.evaluate(
            std::time::Instant::now(),
            std::time::SystemTime::now(),
            &snapshot,
            &targets,
            |tenant| policy.base_quota(tenant).rate.qps,
        );
        for transition in transitions {
            match transition {
                Transition::Raised(flag) => tracing::warn!(
                    tenant = %flag.tenant,
                    reason = flag.reason.as_str(),
                    severity = ?flag.severity,
                    value = flag.value,
                    threshold = flag.threshold,
                    target = ?flag.target,
                    "Tenant flagged"
                ),
                Transition::Cleared(flag) => tracing::info!(
                    tenant = %flag.tenant,
                    reason = flag.reason.as_str(),
                    "Tenant flag cleared"
                ),
            }
        }
        let advice = detector.advice();
        limits.set_advice(
            advice
                .iter()
                .map(|a| (a.tenant.clone(), a.effective_qps))
                .collect(),
        );
        let view = Arc::new(Judgement {
            flags: detector.flags(),
            advice,
        });
        *judgement
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = view;
        limits.prune();
    }
}

/// Records each target's connections and size every `history_resolution`,
/// keeping `history` of them, for the capacity view.
async fn sample_history(
    api: crate::config::ApiConfig,
    store: Arc<Store>,
    statuses: Vec<SharedStatus>,
    (histories, tenant_histories): (SharedTargetHistories, SharedTenantHistories),
    shutdown: CancellationToken,
) {
    let capacity = (api.history.as_secs_f64() / api.history_resolution.as_secs_f64().max(0.001))
        .ceil() as usize;
    let mut interval = tokio::time::interval(api.history_resolution);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let statuses: Vec<TargetStatus> =
            statuses.iter().map(|s| collect::lock(s).clone()).collect();
        if api.history_tenants > 0 {
            let snapshot = store.snapshot();
            let mut samples: std::collections::HashMap<String, TenantSample> = snapshot
                .tenants
                .iter()
                .map(|t| {
                    let queries = t.kinds.iter().flatten().map(|k| k.queries).sum();
                    let sample = TenantSample {
                        unix,
                        queries,
                        db_time_share: t.db_time_share as f32,
                        connections: 0.0,
                        size_bytes: 0.0,
                    };
                    (t.tenant.clone(), sample)
                })
                .collect();
            let empty = || TenantSample {
                unix,
                queries: 0.0,
                db_time_share: 0.0,
                connections: 0.0,
                size_bytes: 0.0,
            };
            for status in &statuses {
                if let Some(activity) = &status.activity {
                    for (tenant, a) in &activity.tenants {
                        let sample = samples.entry(tenant.clone()).or_insert_with(empty);
                        sample.connections += a.connections.values().sum::<u64>() as f32;
                    }
                }
                if let Some(schemas) = &status.schemas {
                    for (tenant, totals) in schemas.iter() {
                        let size = status
                            .exact_sizes
                            .as_ref()
                            .and_then(|e| e.get(tenant).copied())
                            .unwrap_or(totals.estimated_bytes);
                        samples
                            .entry(tenant.clone())
                            .or_insert_with(empty)
                            .size_bytes += size as f64;
                    }
                }
            }
            let mut samples: Vec<(String, TenantSample)> = samples.into_iter().collect();
            // The first tenants by name keep their slots when over the cap.
            samples.sort_by(|a, b| a.0.cmp(&b.0));
            tenant_histories
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(samples);
        }
        for status in &statuses {
            if !status.up {
                continue;
            }
            let connections = status
                .activity
                .as_ref()
                .map(|a| a.by_state.values().sum::<u64>())
                .unwrap_or(0) as f64;
            let size_bytes: f64 = status
                .schemas
                .as_ref()
                .map(|schemas| {
                    schemas
                        .iter()
                        .map(|(tenant, s)| {
                            status
                                .exact_sizes
                                .as_ref()
                                .and_then(|e| e.get(tenant).copied())
                                .unwrap_or(s.estimated_bytes) as f64
                        })
                        .sum()
                })
                .unwrap_or(0.0);
            let mut histories = histories
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            histories
                .entry(status.name.clone())
                .or_insert_with(|| History::new(capacity))
                .push(TargetSample {
                    unix,
                    connections,
                    size_bytes,
                });
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
