//! tenantwatch: an observability sidecar and metrics daemon for multi-tenant
//! PostgreSQL.
//!
//! Data flows one way: **sources → stores → readers**. The folders say which
//! is which:
//!
//! ```text
//! shared vocabulary  event        the typed tenant query event, reject reasons
//!                    attribution  which tenant a schema, session or query is
//!                    telemetry    logging set-up, rate-limited warnings
//!                    redact       query text with its literals replaced by $n
//! sources            ingest/      UDP datagrams and event bodies -> tenant store
//!                    collect/     one poller per PostgreSQL target -> target statuses
//! stores             store/       tenant aggregates, target statuses, ingest counters
//! readers            detect/      rules, hysteresis, advice
//!                    ratelimit/   GCRA decisions per tenant, tightened by advice (local or Redis)
//!                    capacity/    history, growth, headroom, placement
//!                    api/         typed views for the planners' API
//!                    metrics/     the Prometheus exposition, one collector per area
//! edges and wiring   http/        the listener: endpoints, auth, handlers
//!                    rls/         Envoy's rate-limit service over gRPC (ratelimit.grpc_listen)
//!                    config/      the TOML file; assembles each module's settings
//!                    daemon       bind, spawn, reload, drain
//!                    state        flags, quotas, baselines, history across restarts
//!                    demo/        the embedded demo and throwaway clusters
//! ```
//!
//! Sources write to the stores and read nothing else; readers read the
//! stores through snapshots and never import a source, talk to PostgreSQL or
//! touch a socket. Each module owns its types and settings; [`config`] only
//! reads the file and assembles them. `tests/it/architecture.rs` keeps the
//! layering true: no import cycle between top-level modules, no reader
//! importing a source.
//!
//! `main.rs` only parses the command line and calls [`daemon::run`], so tests
//! run the real daemon in-process with [`daemon::Daemon::start`].

// Denied, not forbidden: `heap` allows itself its one FFI call, isolated
// and measured (the soak's RSS).
#![deny(unsafe_code)]

pub mod api;
pub mod attribution;
pub mod capacity;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod detect;
pub mod event;
pub mod heap;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod ratelimit;
pub mod redact;
pub mod rls;
pub mod settings;
pub mod state;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use daemon::{Daemon, run};
