//! tenantwatch: an observability sidecar and metrics daemon for multi-tenant
//! PostgreSQL.
//!
//! Data flows one way: **sources → tenant store → readers**.
//!
//! - sources: [`ingest`] turns UDP datagrams and `POST /v1/events` bodies
//!   (NDJSON and DogStatsD lines) into typed [`event::Event`]s; [`collect`]
//!   polls each PostgreSQL target (one task per target) into a
//!   [`collect::TargetStatus`], attributing sessions and schemas to tenants
//!   with the rules of [`attribution`];
//! - [`store`] aggregates events per tenant and kind, sharded per writer and
//!   bounded by `max_tenants`;
//! - readers: [`metrics`] and [`metrics_pg`] expose the store and the target
//!   statuses on `/metrics`; [`detect`] flags problematic tenants and
//!   advises [`ratelimit`], which answers `/v1/ratelimit/check`; [`api`]
//!   (with [`capacity`]) serves the planners' JSON and CSV. Readers never
//!   touch a socket or the database.
//!
//! [`pg_cluster`] starts throwaway PostgreSQL clusters for `tenantwatch
//! demo` and the tests.
//!
//! [`config`] owns the TOML file and its validation, [`daemon`] owns start-up
//! and graceful shutdown, [`server`] the HTTP listener, [`telemetry`] logging.
//! `main.rs` only parses the command line and calls [`daemon::run`], so tests
//! run the real daemon in-process with [`daemon::Daemon::start`].

#![forbid(unsafe_code)]

pub mod api;
pub mod attribution;
pub mod capacity;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod detect;
pub mod event;
pub mod ingest;
pub mod metrics;
pub mod metrics_pg;
pub mod pg_cluster;
pub mod ratelimit;
pub mod server;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use daemon::{Daemon, run};
